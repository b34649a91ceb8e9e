"""The exported preset directory, its model card, and the curves plot."""

import json
import os
import shutil
from pathlib import Path

from mlm import checkpoints
from mlm.errors import MlmError

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


def plot_curves(records: list[dict], out: Path) -> None:
    """Writes training and held-out loss/accuracy against step as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for split, style in (("train", "-"), ("held_out", "o-")):
        rows = [r for r in records if r.get("split") == split]
        steps = [r["step"] for r in rows]
        ax_loss.plot(steps, [r["loss"] for r in rows], style, label=split.replace("_", "-"))
        ax_acc.plot(steps, [r["accuracy"] for r in rows], style, label=split.replace("_", "-"))
    ax_loss.set(title="masked loss", xlabel="step", ylabel="cross-entropy")
    ax_acc.set(title="masked-token accuracy", xlabel="step", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = Path(out).with_name(Path(out).name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)
