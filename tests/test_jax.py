"""The JAX backend: backend choice, and presets that load on either backend."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mlm import distributed
from mlm.errors import MlmError


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


def _logits(preset, backend: str, env: dict, out) -> subprocess.Popen:
    """Starts a process that writes the preset's logits on fixed inputs to `out`."""
    code = textwrap.dedent(f"""
        import keras, keras_hub, numpy as np
        assert keras.backend.backend() == "{backend}"
        m = keras_hub.models.MaskedLM.from_preset("{preset}")
        m.preprocessor = None
        ids = np.arange(2 * 32, dtype="int32").reshape(2, 32) % 600
        x = {{"token_ids": ids, "padding_mask": np.ones_like(ids), "segment_ids": 0 * ids,
              "mask_positions": np.tile(np.arange(1, 31, 6, dtype="int32"), (2, 1))}}
        np.save("{out}", np.asarray(m.predict_on_batch(x)))
    """)
    return subprocess.Popen([sys.executable, "-c", code], env={**env, "KERAS_BACKEND": backend},
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_preset_trained_on_jax_gives_the_same_logits_on_tensorflow(jax_run, jax_env, tmp_path):
    records = [json.loads(line) for line in (jax_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "held_out"] == [0, 40]
    procs = {b: _logits(jax_run / "preset", b, jax_env, tmp_path / f"{b}.npy")
             for b in ("jax", "tensorflow")}
    for backend, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{backend}: {err[-3000:]}"
    on_jax, on_tf = np.load(tmp_path / "jax.npy"), np.load(tmp_path / "tensorflow.npy")
    assert on_jax.shape == (2, 5, 600)
    # Same float32 weights; the backends' kernels (matmul, softmax, gelu) round
    # differently, by about 1e-6 on logits of order 1.
    np.testing.assert_allclose(on_tf, on_jax, rtol=1e-4, atol=1e-4)
    assert np.abs(on_jax).max() > 0.1  # real logits, not zeros
