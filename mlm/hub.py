"""Load keras-hub presets (local folders or hub handles) with clear errors."""

import contextlib
import re
from pathlib import Path

from mlm.errors import MlmError


def load_masked_lm(preset: str):
    """`keras_hub.models.MaskedLM.from_preset(preset)`, with one-line errors.

    Loads in Keras safe mode (see `_safe_mode`): a preset whose config would
    run code (a `Lambda` layer, a lambda function, a class that is neither
    keras's, keras-hub's nor registered) is refused with an `MlmError`.

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
        with _safe_mode():
            return from_preset(str(preset))
    except OSError as e:  # requests' ConnectionError is an OSError
        if local.exists():
            raise MlmError(f"could not read preset {preset} ({e}); check the folder.") from None
        raise MlmError(
            f"could not download preset {preset}: no network or no such preset; "
            f"pass a local directory."
        ) from None
    except (ValueError, TypeError) as e:
        raise MlmError(_load_error(preset, e)) from None


@contextlib.contextmanager
def _safe_mode():
    """Keras' default safe mode for the load, even after `enable_unsafe_deserialization()`.

    A preset is a config that Keras turns into objects. In safe mode
    `keras.saving.deserialize_keras_object` refuses what would run Python code
    from the file: a `Lambda` layer or lambda function (marshalled bytecode),
    and classes from modules other than keras and keras-hub; and a tokenizer
    refuses a vocabulary path named in the config. keras-hub's `from_preset`
    relies on that default. The global flag is reset to "unset" (None), not to
    True: keras-hub loads the preset's own assets (`assets/tokenizer/...`)
    after deserialization and refuses them under an explicit True.
    """
    from keras.src.saving.serialization_lib import SafeModeScope

    with SafeModeScope(safe_mode=None):
        yield


def _load_error(preset: str, error: Exception) -> str:
    """One line for a preset that does not load, saying why it was refused."""
    message = str(error).strip()
    first_line = message.splitlines()[0] if message else type(error).__name__
    if "outside of the model archive" in message:
        return (
            f"refused to load preset {preset}: its config names a file outside the preset "
            f"folder ({message.rsplit(': ', 1)[-1]}), which Keras safe mode does not read; "
            f"use a preset whose assets are inside it."
        )
    if "safe_mode" in message or "arbitrary code" in message:
        return (
            f"refused to load preset {preset}: its config holds Python code (a Lambda layer "
            f"or lambda function), which would run on load; mlm loads presets in Keras safe "
            f"mode. Use a preset without Lambda layers."
        )
    unknown = re.search(r"(?:locate|registered with Keras for) (?:class )?'?([\w.>]+)", message)
    if unknown:
        return (
            f"refused to load preset {preset}: it needs the custom object "
            f"'{unknown.group(1).rstrip('.')}', which is not registered with Keras (and mlm does "
            f"not import code named by a preset); use a preset of keras-hub's own classes."
        )
    return f"cannot load preset {preset}: {first_line}"


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
