"""The run directory: its paths (`RunDir`), and create, refuse, overwrite, resume, clean up.

A run directory holds everything needed to resume or reproduce the run:
`config.json` (the resolved recipe), `vocab/`, `cache/` (token cache),
`checkpoints/`, `metrics.jsonl`, `step_settings.json`, `tensorboard/`, and
once finished the final `preset/`, `report.md` and its PNG plots. `RunDir`
names them all; nothing else spells their names.
"""

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from mlm import atomic
from mlm.config import Recipe, recipe_from_dict
from mlm.errors import MlmError
from mlm.faults import fault_point
from mlm.run import checkpoints
from mlm.training import step_settings

CONFIG_FILE = "config.json"


class RunDir:
    """Typed paths for the contents of a run directory, and its `metrics.jsonl`.

    The one place that names the files of a run, and the only reader and
    writer of `metrics.jsonl` (one JSON record a line, appended as training
    goes). A write killed mid-line leaves a torn last line: readers skip it
    and say so once; a resume trims it (`clean_interrupted`).

    Example:
    ```python
    run = RunDir("runs/demo")
    records = run.read_metrics(say=print)
    run.preset / "config.json"
    ```
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # The resolved recipe the run trains (and resumes) with.
    @property
    def recipe(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    # A token process 0 writes at each session's start; the other processes of a
    # multi-process run read it to learn whether they share its run directory.
    @property
    def session(self) -> Path:
        return self.root / ".session"

    @property
    def plan(self) -> Path:
        """The run plan (`mlm.training.plan.RunPlan.to_dict`), rewritten by each session."""
        return self.root / "plan.json"

    # The measured precision and XLA settings of the train step (`mlm.training.step_settings`).
    @property
    def step_settings(self) -> Path:
        return self.root / step_settings.RUN_FILE

    @property
    def vocab(self) -> Path:
        return self.root / "vocab"

    # Token cache entries, one folder per corpus and tokenizer (`mlm.data.token_cache`).
    @property
    def cache(self) -> Path:
        return self.root / "cache"

    # `step-N/` folders; `mlm.run.checkpoints` owns what is inside them.
    @property
    def checkpoints(self) -> Path:
        return checkpoints.checkpoint_root(self.root)

    # The final keras-hub preset, copied from the newest checkpoint.
    @property
    def preset(self) -> Path:
        return self.root / "preset"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    # The PNGs the report shows, written beside it.
    @property
    def curves_plot(self) -> Path:
        return self.root / "curves.png"

    @property
    def schedule_plot(self) -> Path:
        return self.root / "schedule.png"

    def native_log(self, process: int | str) -> Path:
        """The C++ output of JAX, XLA and gloo of one process of a multi-process run.

        `mlm.training.supervisor` moves it here when the process ends.
        """
        return self.root / f"jax-process-{process}.log"

    # Held with flock by the one process training in the directory (`run_lock`).
    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def append_metrics(self, record: dict) -> None:
        """Appends one record to `metrics.jsonl` as one line."""
        line = json.dumps(record) + "\n"
        with open(self.metrics, "a") as f:
            # In two parts, so that the fault tests can kill a write mid-line.
            f.write(line[: len(line) // 2])
            f.flush()
            fault_point("metrics_write", step=record.get("step"), split=record.get("split"))
            f.write(line[len(line) // 2 :])

    def read_metrics(self, *, say: Callable[[str], None] | None = None) -> list[dict]:
        """The records of `metrics.jsonl` in order; a torn last line is skipped.

        Args:
            say: told, in one line, when a torn last line was skipped.

        Raises:
            MlmError: a line other than the last is not a JSON record.
        """
        records, torn = self._parse_metrics()
        if torn and say is not None:
            say(f"{self.metrics}: skipped its last line, cut short by an interrupted write")
        return records

    def trim_metrics(self, *, step: int) -> int:
        """Drops the metrics records a resumed run will write again; returns how many.

        Records up to `step` (the checkpoint resumed from) stay; later ones, and a
        torn last line, go. At step 0 the run restarts, so every record with a
        step goes. Records without a step (corpus reports, session starts) stay.
        """
        records, torn = self._parse_metrics()
        kept = [r for r in records if "step" not in r or (step > 0 and r["step"] <= step)]
        dropped = len(records) - len(kept) + torn
        if dropped:
            atomic.write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))
        return dropped

    def drop_torn_metrics_line(self) -> bool:
        """Cuts a torn last line off `metrics.jsonl`, so appending starts a new line.

        Returns whether there was one. Also ends a last record that lost only
        its newline, which the next record would otherwise be glued to.
        """
        records, torn = self._parse_metrics()
        unterminated = bool(records) and not self.metrics.read_bytes().endswith(b"\n")
        if torn or unterminated:
            atomic.write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in records))
        return torn

    def _parse_metrics(self) -> tuple[list[dict], bool]:
        """The records, and whether a torn last line was left out."""
        if not self.metrics.is_file():
            return [], False
        lines = self.metrics.read_text().splitlines()
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                if number == len(lines):
                    return records, True
                raise MlmError(
                    f"{self.metrics} line {number} is not a JSON record, but received "
                    f"{line[:40]!r}; delete that line and run again."
                ) from None
        return records, False


def load_run_recipe(run_dir: Path) -> Recipe:
    """The resolved recipe saved in an existing run directory (for `--resume`)."""
    saved = RunDir(run_dir).recipe
    if not saved.is_file():
        raise MlmError(
            f"cannot resume: {run_dir} is not a run directory (no {CONFIG_FILE}); "
            f"start a new run without --resume."
        )
    return recipe_from_dict(json.loads(saved.read_text()))


def create_run_dir(run_dir: Path, *, recipe: Recipe, overwrite: bool) -> None:
    """Creates a fresh run directory holding the resolved recipe."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise MlmError(f"run directory {run_dir} is a file; pass a directory path.")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise MlmError(
                f"run directory {run_dir} already exists; pass --resume to continue it, "
                f"--overwrite to replace it, or choose another --run-dir."
            )
        with run_lock(run_dir):  # never delete a run another process is training
            pass
        shutil.rmtree(run_dir)
    _check_writable(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_run_recipe(run_dir, recipe)


def save_run_recipe(run_dir: Path, recipe: Recipe) -> None:
    atomic.write_json(RunDir(run_dir).recipe, recipe.to_dict())


def _check_writable(run_dir: Path) -> None:
    """Refuses a run directory that cannot be written, before any work is done."""
    folder = Path(run_dir).resolve()
    while not folder.exists():
        folder = folder.parent
    probe = folder / f".mlm-write-probe-{os.getpid()}"
    try:
        with open(probe, "w") as f:
            f.write("probe")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise MlmError(
            f"cannot write to {folder} ({e.strerror or e}); fix its permissions or free "
            f"space, or choose another --run-dir."
        ) from None


def clean_interrupted(run_dir: Path, *, say: Callable[[str], None]) -> None:
    """Deletes the half-written files a killed process left in `run_dir`.

    Partial checkpoints (`checkpoints/.step-N.tmp`, `.step-N.old`), partial
    token caches (`cache/.KEY.tmp`), a partial final preset (`.preset.tmp`),
    and a torn last line of `metrics.jsonl`. Call only while holding `run_lock`.
    """
    run = RunDir(run_dir)
    removed = checkpoints.remove_partial(run_dir)
    leftovers = [p for p in (*_children(run.cache), *_children(run.root))
                 if p.is_dir() and atomic.is_temporary(p)]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    names = [str(p.relative_to(run.root)) for p in (*removed, *leftovers)]
    if run.drop_torn_metrics_line():
        names.append(f"the torn last line of {run.metrics.name}")
    if names:
        say(f"removed what an interrupted run left half-written: {', '.join(names)}")


def _children(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.is_dir() else []


@contextlib.contextmanager
def removed_on_failure(run_dir: Path, *, fresh: bool, list_checkpoints=None):
    """Removes a fresh run directory if setup fails before any checkpoint exists.

    `list_checkpoints(run_dir)` finds the run's checkpoints (default: a
    pretraining run's; fine-tuning passes its own).
    """
    list_checkpoints = list_checkpoints or checkpoints.list_checkpoints
    try:
        yield
    except BaseException:
        if fresh and not list_checkpoints(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def with_steps(recipe: Recipe, steps: int, budget: str | None = None) -> Recipe:
    """`recipe` with `train.steps` (and `train.budget`) replaced, to extend a resumed run."""
    data = recipe.to_dict()
    data["train"]["steps"] = steps
    if budget is not None:
        data["train"]["budget"] = budget
    return recipe_from_dict(data)


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Holds `run_dir/.lock` so that one process at a time trains in a run directory.

    The lock is an `flock` on that file: the operating system releases it when
    the process exits in any way, SIGKILL included, so a stale lock from a dead
    process never blocks a resume. (On NFS, flock needs a server that supports
    it.) Holding the lock, it checks that the directory can be written, so a
    resume into a read-only directory fails before any training.
    """
    import fcntl

    _check_writable(run_dir)
    path = RunDir(run_dir).lock
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise MlmError(
            f"run directory {run_dir} is in use by {owner}; wait for it to finish or stop "
            f"it, or choose another --run-dir."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}")
    handle.flush()
    try:
        yield
    finally:
        handle.close()
