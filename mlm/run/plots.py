"""The run's PNG plots: loss and accuracy curves, learning rate and throughput."""

from pathlib import Path

from mlm import atomic

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
    with atomic.writing_file(out) as tmp:
        fig.savefig(tmp)
