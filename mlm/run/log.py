"""A run's log: records to `metrics.jsonl` and TensorBoard, messages to the console.

`MetricsLog` is the one object training writes through; `quiet` and the
process's place in a distributed run are honoured here and nowhere else.
"""

import contextlib
import shutil
import sys
import time
from pathlib import Path

from mlm.progress import Progress
from mlm.run.directory import RunDir


class MetricsLog:
    """Appends records to `run_dir/metrics.jsonl` and prints messages to stderr.

    Each record is stamped with its wall-clock `time` (Unix seconds) and, with
    `tensorboard=True`, also written under `run_dir/tensorboard` as
    TensorBoard scalars. With `record=False` (processes other than 0 of a
    distributed run) it neither writes nor prints.

    Args:
        run_dir: the run directory.
        quiet: print nothing (errors are raised, not printed).
        tensorboard: also write TensorBoard scalars.
        record: write and print at all.
    """

    def __init__(self, run_dir: str | Path | RunDir, *, quiet: bool, tensorboard: bool = False,
                 record: bool = True):
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.quiet = quiet or not record
        self.record = record
        self.tensorboard = TensorBoardLog(self.run.tensorboard) if tensorboard and record else None
        self._bar = None  # the live progress line, which messages must not garble

    @property
    def path(self) -> Path:
        return self.run.metrics

    def write(self, record: dict) -> None:
        if not self.record:
            return
        record = {**record, "time": record.get("time", time.time())}
        self.run.append_metrics(record)
        if self.tensorboard is not None:
            self.tensorboard.write(record)

    def say(self, message: str) -> None:
        if self._bar is not None:
            self._bar.say(message)
        elif not self.quiet:
            print(message, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def progress(self, label: str, **kwargs):
        """A `mlm.progress.Progress` line (silent when quiet) that `say` prints above."""
        self._bar = Progress(label, enabled=not self.quiet, **kwargs)
        try:
            yield self._bar
        except BaseException:
            self._bar.clear()
            raise
        else:
            self._bar.finish()
        finally:
            self._bar = None

    def read(self) -> list[dict]:
        """The records written so far (`RunDir.read_metrics`)."""
        return self.run.read_metrics(say=self.say)

    def trim(self, *, step: int) -> None:
        """Drops the records after `step`, which a resumed run writes again, and their events."""
        if self.record and self.run.trim_metrics(step=step) and self.tensorboard:
            self.tensorboard.rebuild(self.run.read_metrics())


def tensorboard_hint(logdir: Path) -> str:
    """The command that shows the scalars under `logdir` live."""
    import importlib.util

    missing = "" if importlib.util.find_spec("tensorboard") else " (after pip install tensorboard)"
    return f"curves live in TensorBoard{missing}: tensorboard --logdir {logdir}"


class TensorBoardLog:
    """Writes metrics records as TensorBoard scalars, one TensorBoard run per split.

    `logdir/train/` and `logdir/held_out/` hold scalars of the same names
    (`loss`, `accuracy`, ...), so TensorBoard draws both splits in one chart.
    Every number in a record except `step` and `time` becomes a scalar.

    Only TensorFlow is needed: `tf.summary.scalar` lives in the `tensorboard`
    package, but `tf.summary.write` with the scalars plugin's metadata (what
    `tf.summary.scalar` writes) does not. Viewing needs `pip install tensorboard`.
    """

    def __init__(self, logdir: Path):
        self.logdir = Path(logdir)
        self._writers = {}

    def write(self, record: dict) -> None:
        import tensorflow as tf

        split, step = record.get("split"), record.get("step")
        scalars = {
            name: value for name, value in record.items()
            if name not in ("step", "time") and isinstance(value, int | float)
            and not isinstance(value, bool)
        }
        if split is None or step is None or not scalars:
            return
        metadata = tf.compat.v1.SummaryMetadata(
            plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars")
        )
        writer = self._writer(split)
        with writer.as_default():
            for name, value in scalars.items():
                tf.summary.write(name, tf.constant(value, tf.float32), step=step,
                                 metadata=metadata)
        # Flushed per record (a few per log interval), so a crash loses nothing.
        writer.flush()

    def rebuild(self, records: list[dict]) -> None:
        """Rewrites every event from `records` (those of `metrics.jsonl`).

        For a resumed run, after `RunDir.trim_metrics`: the steps after the
        checkpoint it resumes from are written again, and TensorBoard would
        draw both versions of them (it purges only on a session-start event,
        which `tf.summary` cannot write). Wall times become the rebuild's.
        """
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
        shutil.rmtree(self.logdir, ignore_errors=True)
        for record in records:
            self.write(record)

    def _writer(self, split: str):
        import tensorflow as tf

        if split not in self._writers:
            self._writers[split] = tf.summary.create_file_writer(str(self.logdir / split))
        return self._writers[split]

