"""`classify()`: each text's label and probability from a fine-tuned classifier preset."""

import json
from pathlib import Path

import numpy as np

from mlm.errors import MlmError
from mlm.finetuning.classifier import predict_probabilities, preprocess
from mlm.preset_loading import load_text_classifier

LABELS_FILE = "labels.json"


def classify(preset: str, texts, *, pairs=None, batch_size: int = 32) -> list[dict]:
    """The most probable label of each text (or text pair), with its probability.

    Args:
        preset: a classifier preset folder written by `mlm finetune` (its
            `labels.json` names the classes) or any keras-hub TextClassifier
            preset (classes are then named by their ids).
        texts: the texts to classify.
        pairs: the second texts of sentence pairs, one per text, or None.
        batch_size: texts per forward pass.

    Example:
    ```python
    mlm.classify("runs/cls/preset", ["Blessed are the meek."])
    # [{"text": "Blessed are the meek.", "label": "new", "probability": 0.93}]
    ```
    """
    texts = [str(t) for t in texts]
    if not texts or any(not t.strip() for t in texts):
        raise MlmError("classify needs non-empty texts; received an empty text or none.")
    if pairs is not None and len(pairs) != len(texts):
        raise MlmError(
            f"each text needs one pair text, but received {len(texts)} texts and "
            f"{len(pairs)} pairs."
        )
    model = load_text_classifier(preset)
    names = label_names(preset, num_classes=model.num_classes)
    features = preprocess(model.preprocessor, texts, pairs)
    probabilities = predict_probabilities(model, features, batch_size=batch_size)
    best = probabilities.argmax(axis=1)
    return [
        {"text": text, "label": names[i], "probability": float(p[i])}
        for text, i, p in zip(texts, best, probabilities, strict=True)
    ]


def label_names(preset: str, *, num_classes: int) -> list[str]:
    """The class names saved beside a classifier preset, else `"0"`, `"1"`, ..."""
    path = Path(preset) / LABELS_FILE
    if path.is_file():
        names = json.loads(path.read_text())
        if len(names) == num_classes:
            return [str(n) for n in names]
    return [str(i) for i in np.arange(num_classes)]
