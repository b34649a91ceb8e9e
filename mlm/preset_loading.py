"""Load keras-hub presets (local folders or hub handles) with clear errors."""

import contextlib
import json
import re
import tempfile
from pathlib import Path

import numpy as np

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

    from mlm.hf_head import port_masked_lm_head

    task = _load(keras_hub.models.MaskedLM.from_preset, preset)
    # keras-hub's converters port a HuggingFace folder's backbone, not its head.
    port_masked_lm_head(task, preset)
    return task


def load_tokenizer(preset: str):
    """`keras_hub.tokenizers.Tokenizer.from_preset(preset)`, with one-line errors."""
    import keras_hub

    return _load(keras_hub.tokenizers.Tokenizer.from_preset, preset)


def load_text_classifier(preset: str):
    """`keras_hub.models.TextClassifier.from_preset(preset)`, with one-line errors."""
    import keras_hub

    return _load(keras_hub.models.TextClassifier.from_preset, preset)


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
        with _safe_mode(), _with_pooler(preset) as readable:
            return from_preset(readable)
    except OSError as e:  # requests' ConnectionError is an OSError
        if local.exists():
            raise MlmError(f"could not read preset {preset} ({e}); check the folder.") from None
        raise MlmError(
            f"could not download preset {preset}: no network or no such preset; "
            f"pass a local directory."
        ) from None
    except (ValueError, TypeError) as e:
        raise MlmError(_load_error(preset, e)) from None
    except Exception as e:  # a converter's failure on a HuggingFace folder (safetensors, keys)
        if not (local / "config.json").is_file():
            raise
        raise MlmError(
            f"cannot convert the checkpoint in {preset} to keras-hub: "
            f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}; pass a checkpoint of "
            f"an architecture keras-hub converts, with its config.json and safetensors weights."
        ) from None


# Pooler weights that keras-hub's HuggingFace converters port, by `model_type`, and
# their shape's config field. transformers builds `BertForMaskedLM` and
# `AlbertForMaskedLM` without the pooler, so their checkpoints lack them.
_POOLERS = {
    "bert": (("pooler.dense.weight", "pooler.dense.bias"), "hidden_size"),
    "albert": (("pooler.weight", "pooler.bias"), "hidden_size"),
}


@contextlib.contextmanager
def _with_pooler(preset: str):
    """Yields `preset`, or a copy of a local HuggingFace masked-LM folder with a pooler.

    keras-hub's BERT and ALBERT converters need the pooler (the classifier's
    dense layer over [CLS]), which a `*ForMaskedLM` checkpoint does not have.
    The copy (links to every file but the weights) gets one initialised as
    transformers initialises a missing pooler: normal(0, initializer_range)
    weights and zero biases. Masked-LM training never uses it.
    """
    folder = Path(preset)
    weights = folder / "model.safetensors"
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    names, size_field = _POOLERS.get(config.get("model_type"), ((), ""))
    if not names or not weights.is_file():
        yield str(preset)
        return
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(weights))
    if any(key.endswith(names[0]) for key in tensors):
        yield str(preset)
        return
    embeddings = next(k for k in tensors if k.endswith("word_embeddings.weight"))
    prefix = embeddings[: -len("embeddings.word_embeddings.weight")]
    hidden, dtype = int(config[size_field]), tensors[embeddings].dtype
    rng = np.random.default_rng(0)
    std = float(config.get("initializer_range", 0.02))
    tensors[prefix + names[0]] = (rng.standard_normal((hidden, hidden)) * std).astype(dtype)
    tensors[prefix + names[1]] = np.zeros(hidden, dtype)
    with tempfile.TemporaryDirectory(prefix="mlm_hf_") as tmp:
        for path in folder.iterdir():
            if path.name != weights.name:
                (Path(tmp) / path.name).symlink_to(path.absolute())
        save_file(tensors, str(Path(tmp) / weights.name), metadata={"format": "pt"})
        yield tmp


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

    from mlm.hf_head import head_tensors

    if Path(preset).is_dir() and head_tensors(preset) is not None:
        return True  # a HuggingFace `*ForMaskedLM` folder (see `load_masked_lm`)
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
