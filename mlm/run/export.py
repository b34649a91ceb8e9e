"""The preset a run hands over: a checkpoint's preset folder and its model card."""

import json
import shutil
from pathlib import Path

from mlm import atomic
from mlm.errors import MlmError
from mlm.run import checkpoints
from mlm.run.directory import RunDir

MODEL_CARD = "README.md"


def export_checkpoint(run_dir: Path, *, out: Path, step: int | None = None) -> Path:
    """Copies the preset of checkpoint `step` (newest if None) to `out`, atomically."""
    source = checkpoints.preset_of(checkpoints.find_checkpoint(run_dir, step=step))
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MlmError(f"output {out} already exists and is not empty; choose another --out.")
    # The final preset's model card comes along; a checkpoint's preset has none.
    card = RunDir(run_dir).preset / MODEL_CARD
    with atomic.writing_dir(out) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        if card.is_file() and not (tmp / MODEL_CARD).exists():
            shutil.copy(card, tmp / MODEL_CARD)
    return out


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
    atomic.write_text(Path(preset_dir) / MODEL_CARD, "\n".join(lines))
