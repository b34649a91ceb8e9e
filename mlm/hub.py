"""Load keras-hub presets (local folders or hub handles) with clear errors."""

from pathlib import Path

from mlm.errors import MlmError


def load_masked_lm(preset: str):
    """`keras_hub.models.MaskedLM.from_preset(preset)`, with one-line errors.

    Args:
        preset: a local keras-hub preset folder, or a handle keras-hub
            downloads (`bert_tiny_en_uncased`, `kaggle://...`, `hf://...`).
    """
    import keras_hub

    return _load(keras_hub.models.MaskedLM.from_preset, preset)


def load_tokenizer(preset: str):
    """`keras_hub.tokenizers.Tokenizer.from_preset(preset)`, with one-line errors."""
    import keras_hub

    return _load(keras_hub.tokenizers.Tokenizer.from_preset, preset)


def _load(from_preset, preset: str):
    local = Path(preset)
    if local.exists():
        if not (local / "config.json").is_file():
            raise MlmError(
                f"{preset} is not a keras-hub preset folder (no config.json); pass the "
                f"preset/ folder of a run or a folder written by save_to_preset."
            )
    elif _looks_like_path(preset):
        raise MlmError(f"preset folder not found: {preset}; check the path.")
    try:
        return from_preset(str(preset))
    except OSError as e:  # requests' ConnectionError is an OSError
        if local.exists():
            raise MlmError(f"could not read preset {preset} ({e}); check the folder.") from None
        raise MlmError(
            f"could not download preset {preset}: no network or no such preset; "
            f"pass a local directory."
        ) from None
    except ValueError as e:
        first_line = str(e).strip().splitlines()[0]
        raise MlmError(f"cannot load preset {preset}: {first_line}") from None


def _looks_like_path(preset: str) -> bool:
    # Built-in handles have no slash; other handles carry a scheme (kaggle://, hf://).
    return "://" not in preset and ("/" in preset or preset.startswith((".", "~")))


def preset_has_masked_lm_head(preset: str) -> bool:
    """Whether `preset` carries a MaskedLM task (head weights), not just a backbone."""
    import keras_hub

    # keras-hub's own test of the same question in `KerasPresetLoader.load_task`.
    from keras_hub.src.utils.preset_utils import (
        TASK_CONFIG_FILE,
        check_config_class,
        check_file_exists,
        load_json,
    )

    try:
        if not check_file_exists(preset, TASK_CONFIG_FILE):
            return False
        config_class = check_config_class(load_json(preset, TASK_CONFIG_FILE))
    except (OSError, ValueError):
        return False
    return issubclass(config_class, keras_hub.models.MaskedLM)
