"""The JAX backend: backend choice, and presets that load on either backend."""

import numpy as np
import pytest

from mlm.errors import MlmError
from mlm.training import distributed
from tests.conftest import LOGITS_CODE, read_metrics, run_python


def test_backend_defaults_to_tensorflow_and_follows_keras_backend(monkeypatch):
    import keras  # noqa: F401  (imported with TensorFlow, as in the rest of the suite)

    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert distributed.select_backend(None) == "tensorflow"
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    with pytest.raises(MlmError, match="must be one of tensorflow, jax.*backend='torch'"):
        distributed.select_backend(None)


def test_backend_cannot_change_once_keras_is_imported(monkeypatch):
    import keras

    assert keras.backend.backend() == "tensorflow"
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    with pytest.raises(MlmError, match="already imported with the tensorflow backend"):
        distributed.select_backend("jax")
    import os

    assert os.environ["KERAS_BACKEND"] == "tensorflow"


@pytest.mark.slow
def test_preset_trained_on_jax_gives_the_same_logits_on_tensorflow(jax_run, jax_env, tmp_path):
    assert [r["step"] for r in read_metrics(jax_run) if r["split"] == "held_out"] == [0, 24]
    code = f'PRESET, OUT = "{jax_run / "preset"}", "{tmp_path / "tf.npy"}"' + LOGITS_CODE
    run_python(code, env={**jax_env, "KERAS_BACKEND": "tensorflow"})
    on_jax, on_tf = np.load(jax_run.parent / "jax_logits.npy"), np.load(tmp_path / "tf.npy")
    assert on_jax.shape == (2, 5, 600)
    # Same float32 weights; the backends' kernels (matmul, gelu, layer norm) round
    # differently: measured 1e-7 apart on logits below 1.
    np.testing.assert_allclose(on_tf, on_jax, rtol=1e-5, atol=1e-5)
    assert np.abs(on_jax).max() > 0.1  # real logits, not zeros
