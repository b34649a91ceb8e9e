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


EVAL_SUMS_CODE = """
import json
import numpy as np
from mlm.architectures import architecture_of_backbone, preprocessor_detached
from mlm.config import MaskingConfig
from mlm.data.pipeline import TokenIds, evaluation_dataset
from mlm.evaluate import _sums_on_device, _sums_on_host
from mlm.preset_loading import load_masked_lm

task = load_masked_lm(PRESET)
with preprocessor_detached(task) as pre:  # windows arrive tokenized and masked
    ids = TokenIds.from_tokenizer(pre.tokenizer)
    length = pre.sequence_length
    text = open(HELD_OUT, encoding="utf-8").read()
    tokens = np.resize(np.asarray(pre.tokenizer(text)), 21 * (length - 2)).astype(np.uint16)
    ds = evaluation_dataset(tokens, sequence_length=length, batch_size=8,
                            masking=MaskingConfig(), ids=ids, seed=3,
                            arch=architecture_of_backbone(task.backbone))
    # Half the rows' labels replaced by the model's own predictions, so that the counts
    # of correct predictions are neither 0 nor all (this short run predicts few right).
    class Batches(list):
        def as_numpy_iterator(self):
            return iter(self)

    batches = Batches()
    for x, y, w in ds.as_numpy_iterator():
        y = y.copy()
        y[::2] = np.asarray(task.predict_on_batch(x)).argmax(axis=-1)[::2]
        batches.append((x, y, w))
    print(json.dumps({"device": _sums_on_device(task, batches, split=2),
                      "host": _sums_on_host(task, batches)}))
"""


@pytest.mark.slow
def test_held_out_sums_on_the_devices_equal_the_sums_of_the_logits(
    jax_run, jax_env, held_out_corpus
):
    # 21 windows of held-out text in batches of 8: two full batches and a short one
    # (a second program).
    import json

    code = f'PRESET, HELD_OUT = "{jax_run / "preset"}", "{held_out_corpus}"' + EVAL_SUMS_CODE
    out = json.loads(run_python(code, env={**jax_env, "KERAS_BACKEND": "jax"}))
    device, host = out["device"], out["host"]
    assert 21 < host[1] < host[2]  # masked tokens, some predicted right
    assert device[1:] == host[1:]  # correct and masked: counts, exact
    assert device[0] == pytest.approx(host[0], rel=1e-5)  # cross-entropy
