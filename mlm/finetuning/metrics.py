"""Classification metrics from labels and predicted probabilities (numpy only)."""

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, *, num_classes: int
                     ) -> np.ndarray:
    """`(num_classes, num_classes)` counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """Accuracy, macro-F1, mean cross-entropy, per-class precision/recall/F1, confusion.

    Args:
        labels: `(n,)` true class ids.
        probabilities: `(n, num_classes)` predicted class probabilities.
    """
    num_classes = probabilities.shape[1]
    predictions = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predictions, num_classes=num_classes)
    true_positives = np.diag(matrix).astype(np.float64)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(true_positives, predicted, out=np.zeros(num_classes),
                          where=predicted > 0)
    recall = np.divide(true_positives, actual, out=np.zeros(num_classes), where=actual > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(num_classes), where=both > 0)
    picked = probabilities[np.arange(len(labels)), labels]
    return {
        "accuracy": float((predictions == labels).mean()),
        # Over the classes present in the labels, as scikit-learn's "macro" does
        # when every class occurs.
        "macro_f1": float(f1[actual > 0].mean()),
        "loss": float(-np.log(np.clip(picked, 1e-12, 1.0)).mean()),
        "per_class": {
            "precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "support": actual.tolist(),
        },
        "confusion": matrix.tolist(),
    }
