"""`train.accumulation_steps`: one batch of B equals the same batch in k parts."""

import numpy as np
import pytest
import tensorflow as tf

from mlm.errors import MlmError
from tests.conftest import TINY_TEXT, max_weight_difference, small_recipe, tiny_task

TEXTS = TINY_TEXT * 4 + ["the mat sat on the cat ."] * 4  # 16 windows, uneven masks
NO_DROPOUT = ("model.backbone.dropout=0.0", "train.batch_size=16", "masking.selection_rate=0.3")


def _trained(accumulation_steps, *, steps, clip_norm=1.0, record=None):
    task, preprocessor = tiny_task(overrides=(
        *NO_DROPOUT, f"train.accumulation_steps={accumulation_steps}",
        f"train.clip_norm={clip_norm}", "train.learning_rate=1e-3", "train.warmup_fraction=0",
        "train.mixed_precision=float32", "train.jit_compile=false",
    ))
    if record is not None:  # the gradients handed to the optimizer, read eagerly
        task.run_eagerly = True
        apply = task.optimizer.apply_gradients

        def recorded(pairs):
            pairs = list(pairs)
            record.append([None if g is None else np.asarray(tf.convert_to_tensor(g))
                           for g, _ in pairs])
            return apply(pairs)

        task.optimizer.apply_gradients = recorded
    x, y, w = preprocessor(TEXTS)
    logs = [task.train_on_batch(x, y, sample_weight=w, return_dict=True) for _ in range(steps)]
    return task, logs, w


def test_the_update_is_the_whole_batch_gradient():
    whole, parts = [], []
    _, _, weights = _trained(1, steps=1, record=whole)
    _trained(4, steps=1, record=parts)
    # The parts' masked-token counts differ, so an unweighted mean of their losses
    # (keras' gradient_accumulation_steps) would not give the whole batch's gradient.
    counts = np.asarray(weights).reshape(4, -1).sum(axis=1)
    assert len(set(counts.tolist())) > 1
    (whole,), (parts,) = whole, parts
    used = [(a, b) for a, b in zip(whole, parts, strict=True) if a is not None]
    assert len(used) > 10 and all(b is not None for _, b in used)
    scale = max(float(np.abs(a).max()) for a, _ in used)
    worst = max(float(np.abs(a - b).max()) for a, b in used)
    assert scale > 1e-3 and worst < 1e-6 * scale, (worst, scale)
    assert np.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2)) for a, _ in used)) > 0.1


# The gradient's global norm is above 0.1 (see above): with 0.1 every update is clipped.
@pytest.mark.parametrize("clip_norm", [1.0, 0.1])
def test_parts_train_as_the_whole_batch(clip_norm):
    whole, whole_logs, _ = _trained(1, steps=3, clip_norm=clip_norm)
    parts, part_logs, _ = _trained(4, steps=3, clip_norm=clip_norm)
    # Adam divides by the gradient's running scale, so float noise in components
    # near zero moves weights by up to ~lr; 1e-5 is well under the updates (1e-3).
    difference = max_weight_difference(whole, parts)
    assert difference < 1e-5, difference
    assert int(whole.optimizer.iterations) == int(parts.optimizer.iterations) == 3
    for a, b in zip(whole_logs, part_logs, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=2e-5)
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)
    # Training moved the weights, so the comparison is not of two untouched models.
    untouched, _ = tiny_task(overrides=NO_DROPOUT)
    assert max_weight_difference(whole, untouched) > 1e-4


def test_accumulation_must_divide_the_batch():
    with pytest.raises(MlmError, match="accumulation_steps.*divide train.batch_size=32"):
        small_recipe(overrides=["train.batch_size=32", "train.accumulation_steps=3"])
    with pytest.raises(MlmError, match="accumulation_steps"):
        small_recipe(overrides=["train.accumulation_steps=0"])
