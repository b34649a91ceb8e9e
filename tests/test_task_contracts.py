"""The conventions mlm drives keras-hub tasks by, held in code: inputs and the preprocessor."""

import types

import numpy as np
import pytest
import tensorflow as tf

from mlm.architectures import (
    ARCHITECTURES,
    get_architecture,
    preprocessor_attached,
    preprocessor_detached,
)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_model_inputs_are_the_backbones_inputs_from_numpy_or_tf(name):
    arch = get_architecture(name)
    ids = np.array([[2, 7, 9, 3, 0, 0]], dtype=np.int32)
    positions = np.array([[1, 2]], dtype=np.int32)
    from_numpy = arch.model_inputs(ids, positions, pad_id=0)
    from_tf = arch.model_inputs(tf.constant(ids), tf.constant(positions), pad_id=0)
    assert sorted(from_numpy) == sorted(["token_ids", "mask_positions", *arch.inputs])
    assert sorted(from_tf) == sorted(from_numpy)
    for key, value in from_numpy.items():
        assert value.dtype == np.int32, key
        np.testing.assert_array_equal(from_tf[key].numpy(), value)
    if "padding_mask" in arch.inputs:
        assert from_numpy["padding_mask"].tolist() == [[1, 1, 1, 1, 0, 0]]
    if "segment_ids" in arch.inputs:
        assert not from_numpy["segment_ids"].any()


def test_the_preprocessor_is_put_back_after_training_and_saving_even_on_errors():
    preprocessor, other = object(), object()
    task = types.SimpleNamespace(preprocessor=preprocessor)
    with pytest.raises(RuntimeError):
        with preprocessor_detached(task) as detached:
            assert detached is preprocessor and task.preprocessor is None
            with preprocessor_attached(task, other):
                assert task.preprocessor is other
            assert task.preprocessor is None  # what it was before, not a fixed value
            raise RuntimeError("a failed step")
    assert task.preprocessor is preprocessor
    with preprocessor_attached(task, other):
        assert task.preprocessor is other
    assert task.preprocessor is preprocessor
