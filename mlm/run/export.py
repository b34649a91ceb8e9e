"""What a run shows: the preset directory, its model card, curves, TensorBoard scalars."""

import json
import os
import shutil
from pathlib import Path

from mlm.errors import MlmError
from mlm.run import checkpoints

MODEL_CARD = "README.md"


def export_checkpoint(run_dir: Path, *, out: Path, step: int | None = None) -> Path:
    """Copies the preset of checkpoint `step` (newest if None) to `out`, atomically."""
    source = checkpoints.find_checkpoint(run_dir, step=step) / "preset"
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MlmError(f"output {out} already exists and is not empty; choose another --out.")
    copy_atomic(source, out)
    card = Path(run_dir) / "preset" / MODEL_CARD
    if card.is_file() and not (out / MODEL_CARD).exists():
        shutil.copy(card, out / MODEL_CARD)
    return out


def copy_atomic(source: Path, dest: Path) -> None:
    """Copies folder `source` to `dest` through a temporary sibling and a rename."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, tmp)
    if dest.is_dir():
        dest.rmdir()  # only ever an empty folder here
    os.replace(tmp, dest)


def write_model_card(preset_dir: Path, *, recipe: dict, summary: dict) -> None:
    """A short README in the preset: what it is, how it was trained, how to load it."""
    held_out = summary.get("held_out", {})
    lines = [
        f"# {recipe.get('name', 'mlm')} masked language model",
        "",
        "Pretrained with `mlm` (masked language modeling with dynamic 80/10/10",
        "masking). Load it with keras-hub alone:",
        "",
        "```python",
        "import keras_hub",
        f'masked_lm = keras_hub.models.MaskedLM.from_preset("{Path(preset_dir).name}")',
        "classifier = keras_hub.models.TextClassifier.from_preset(",
        f'    "{Path(preset_dir).name}", num_classes=2)',
        "```",
        "",
        "## Training",
        "",
        f"- architecture: {recipe['model']['architecture']}, backbone: "
        f"`{json.dumps(recipe['model']['backbone'])}`",
        f"- sequence length {recipe['model']['sequence_length']}, "
        f"{summary.get('steps')} steps of batch {recipe['train']['batch_size']}",
        f"- training tokens: {summary.get('train_tokens')}, padding fraction "
        f"{summary.get('padding_fraction', 0):.4%}",
        f"- held-out masked accuracy {held_out.get('accuracy', float('nan')):.4f}, "
        f"masked loss {held_out.get('loss', float('nan')):.4f}, "
        f"perplexity {held_out.get('perplexity', float('nan')):.2f}",
        "",
    ]
    (Path(preset_dir) / MODEL_CARD).write_text("\n".join(lines))


# Both plots are 1000 x 400 pixels: figsize (10, 4) inches at 100 dpi.
PLOT_SIZE, PLOT_DPI = (10, 4), 100


def plot_curves(records: list[dict], out: Path) -> None:
    """Writes training and held-out loss/accuracy against step as a PNG."""
    _plot_pair(
        records, out,
        panels=(("loss", "masked loss", "cross-entropy"),
                ("accuracy", "masked-token accuracy", "accuracy")),
        splits=(("train", "-"), ("held_out", "o-")),
    )


def plot_schedule(records: list[dict], out: Path) -> None:
    """Writes the learning rate and the training throughput against step as a PNG."""
    _plot_pair(
        records, out,
        panels=(("learning_rate", "learning rate", "learning rate"),
                ("tokens_per_second", "throughput", "non-padding tokens / s")),
        splits=(("train", "-"),),
    )


def _plot_pair(records: list[dict], out: Path, *, panels, splits) -> None:
    """Two side-by-side panels of `(field, title, ylabel)` against step, one line per split."""
    # A bare Figure, not pyplot: no global backend switch (a notebook keeps
    # drawing inline) and nothing to close.
    from matplotlib.figure import Figure

    fig = Figure(figsize=PLOT_SIZE, dpi=PLOT_DPI)
    axes = fig.subplots(1, 2)
    for ax, (field, title, ylabel) in zip(axes, panels, strict=True):
        for split, style in splits:
            rows = [r for r in records if r.get("split") == split and field in r]
            ax.plot([r["step"] for r in rows], [r[field] for r in rows], style,
                    label=split.replace("_", "-"))
        ax.set(title=title, xlabel="step", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = Path(out).with_name(Path(out).name + ".tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, out)


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

    def rebuild(self, metrics_path: Path) -> None:
        """Rewrites every event from the records of `metrics_path`.

        For a resumed run, after `mlm.run.directory.trim_metrics`: the steps after the
        checkpoint it resumes from are written again, and TensorBoard would
        draw both versions of them (it purges only on a session-start event,
        which `tf.summary` cannot write). Wall times become the rebuild's.
        """
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
        shutil.rmtree(self.logdir, ignore_errors=True)
        for line in Path(metrics_path).read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            self.write(record)

    def _writer(self, split: str):
        import tensorflow as tf

        if split not in self._writers:
            self._writers[split] = tf.summary.create_file_writer(str(self.logdir / split))
        return self._writers[split]

