"""The fine-tuning report: `report.md` with a per-class table and `confusion.png`."""

from pathlib import Path

import numpy as np

from mlm import atomic


def write_finetune_report(run_dir: Path, *, summary: dict, names: tuple[str, ...],
                          history: list[dict]) -> Path:
    """Writes `run_dir/report.md` and `run_dir/confusion.png`; returns the report's path."""
    run_dir = Path(run_dir)
    best = summary["validation"]
    plot_confusion(np.array(best["confusion"]), names=names, path=run_dir / "confusion.png")
    lines = [
        f"# Fine-tuning report: {summary['encoder']}",
        "",
        f"- classifier preset: `{summary['preset']}` (loads with "
        f"`keras_hub.models.TextClassifier.from_preset`)",
        f"- examples: {summary['train_examples']} training, "
        f"{summary['validation_examples']} validation ({summary['validation_source']})",
        f"- sequence length {summary['sequence_length']}, {summary['epochs']} epoch(s), "
        f"best epoch {summary['best_epoch']}, {summary['seconds']:.0f} s",
        "",
        "## Validation at the best epoch",
        "",
        "| accuracy | macro-F1 | loss |",
        "|---:|---:|---:|",
        f"| {best['accuracy']:.4f} | {best['macro_f1']:.4f} | {best['loss']:.4f} |",
        "",
        "## Per class",
        "",
        "| label | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    per_class = best["per_class"]
    for i, name in enumerate(names):
        lines.append(
            f"| {name} | {per_class['precision'][i]:.3f} | {per_class['recall'][i]:.3f} | "
            f"{per_class['f1'][i]:.3f} | {per_class['support'][i]} |"
        )
    lines += ["", "## Epochs", "", "| epoch | train loss | val accuracy | val macro-F1 |",
              "|---:|---:|---:|---:|"]
    for record in history:
        lines.append(
            f"| {record['epoch']} | {record['train_loss']:.4f} | "
            f"{record['val_accuracy']:.4f} | {record['val_macro_f1']:.4f} |"
        )
    lines += ["", "![confusion matrix](confusion.png)", ""]
    path = run_dir / "report.md"
    atomic.write_text(path, "\n".join(lines))
    return path


def plot_confusion(matrix: np.ndarray, *, names: tuple[str, ...], path: Path) -> None:
    """A confusion-matrix heat map with counts, rows true and columns predicted."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    size = max(3.0, 0.6 * len(names) + 1.5)
    figure, axes = pyplot.subplots(figsize=(size + 1, size))
    image = axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    limit = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(column, row, str(count), ha="center", va="center",
                  color="white" if count > limit else "black")
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    with atomic.writing_file(path) as tmp:
        figure.savefig(tmp, dpi=100)
    pyplot.close(figure)
