"""keras-hub's `TextClassifier` for a preset's encoder: pretrained, or freshly initialised.

The classifier class of each architecture is named in its row of
`mlm.architectures`; its preprocessor is the class's `preprocessor_cls`.
Nothing here re-implements a layer: mlm only chooses the sequence length and
turns labelled examples into the preprocessor's arrays once.
"""

import math

import keras
import numpy as np

from mlm.architectures import architecture_of_backbone, preprocessor_detached
from mlm.errors import MlmError
from mlm.preset_loading import load_masked_lm

# "random:PRESET" names PRESET's architecture and tokenizer with fresh weights.
RANDOM_PREFIX = "random:"


def parse_encoder(spec: str) -> tuple[str, bool]:
    """`(preset, fresh)` of an encoder spec: `PRESET` or `random:PRESET`."""
    if spec.startswith(RANDOM_PREFIX):
        return spec[len(RANDOM_PREFIX):], True
    return spec, False


def load_encoder(preset: str, *, fresh: bool, seed: int):
    """`(backbone, tokenizer)` of `preset`; `fresh` re-initialises the backbone's weights.

    A fresh backbone is rebuilt from the preset's backbone config, so it has
    the same architecture, sizes and vocabulary, and weights drawn from `seed`.
    """
    task = load_masked_lm(preset)
    if task.preprocessor is None or getattr(task.preprocessor, "tokenizer", None) is None:
        raise MlmError(
            f"preset {preset} has no tokenizer; pass a preset saved with its preprocessor."
        )
    backbone, tokenizer = task.backbone, task.preprocessor.tokenizer
    if fresh:
        keras.utils.set_random_seed(seed)
        backbone = type(backbone).from_config(backbone.get_config())
    return backbone, tokenizer


def max_sequence_length(backbone) -> int | None:
    """The longest input the backbone's position embeddings allow (None: no limit)."""
    return backbone.get_config().get("max_sequence_length")


def choose_sequence_length(tokenizer, texts, pairs=None, *, requested: int,
                           maximum: int | None, cap: int | None = None) -> int:
    """`requested`, or (when 0) what the longest example needs, capped at `cap` and at
    `maximum` (the backbone's)."""
    if maximum is not None and requested > maximum:
        raise MlmError(
            f"sequence_length must be at most the backbone's max_sequence_length={maximum}, "
            f"but received sequence_length={requested}; lower it or set it to 0 (what the "
            f"data needs)."
        )
    if requested:
        return requested
    lengths = token_counts(tokenizer, texts)
    specials = 2  # [CLS] text [SEP]
    if pairs is not None:
        lengths = lengths + token_counts(tokenizer, pairs)
        specials = 4  # [CLS] a [SEP] b [SEP]; RoBERTa puts two separators between
    needed = 8 * math.ceil((int(lengths.max()) + specials) / 8)
    limits = [limit for limit in (maximum, cap) if limit is not None]
    return min(needed, *limits) if limits else needed


def token_counts(tokenizer, texts, *, batch_size: int = 1024) -> np.ndarray:
    """`(n,)` number of tokens of each text."""
    counts = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[start:start + batch_size]))
        # keras-hub returns a list of lists for a list of strings.
        counts.append(np.array([len(ids) for ids in tokens], dtype=np.int64))
    return np.concatenate(counts)


def build_classifier(backbone, tokenizer, *, num_classes: int, sequence_length: int,
                     dropout: float, seed: int):
    """The architecture's keras-hub `TextClassifier` with its preprocessor."""
    arch = architecture_of_backbone(backbone)
    if not arch.text_classifier:
        raise MlmError(f"architecture {arch.name} has no text classifier in mlm.")
    cls = arch.cls("text_classifier")
    preprocessor = cls.preprocessor_cls(tokenizer=tokenizer, sequence_length=sequence_length)
    keras.utils.set_random_seed(seed)  # the classification head and dropout
    return cls(backbone=backbone, num_classes=num_classes, preprocessor=preprocessor,
               dropout=dropout)


def preprocess(preprocessor, texts, pairs=None, *, batch_size: int = 256) -> dict:
    """The preprocessor's arrays (`token_ids`, `padding_mask`, ...) of all examples."""
    import tensorflow as tf

    inputs = (list(texts),) if pairs is None else (list(texts), list(pairs))
    data = tf.data.Dataset.from_tensor_slices(inputs).batch(batch_size)
    # By keyword: keras-hub reads a positional 2-tuple as (x, y), not as a pair.
    data = data.map(lambda *x: preprocessor(x=x))
    parts: dict[str, list] = {}
    for batch in data:
        for key, value in batch.items():
            parts.setdefault(key, []).append(np.asarray(value))
    return {key: np.concatenate(values) for key, values in parts.items()}


def take(features: dict, indices: np.ndarray) -> dict:
    """The rows `indices` of each array."""
    return {key: value[indices] for key, value in features.items()}


def predict_probabilities(classifier, features: dict, *, batch_size: int) -> np.ndarray:
    """`(n, num_classes)` class probabilities of preprocessed examples."""
    with preprocessor_detached(classifier):
        logits = classifier.predict(features, batch_size=batch_size, verbose=0)
    return np.asarray(keras.ops.softmax(keras.ops.convert_to_tensor(logits, "float32")))
