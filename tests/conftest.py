"""Shared fixtures: small slices of the shipped sample corpus."""

import gzip
import importlib.resources
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True, scope="session")
def _private_settings_cache(tmp_path_factory):
    """Measured step settings (`mlm.training.precision`) cached per test session, not per user."""
    os.environ["MLM_CACHE_DIR"] = str(tmp_path_factory.mktemp("mlm_cache"))


def sample_documents(count: int, *, start: int = 0) -> list[str]:
    """Documents `start..start+count` of the shipped KJV sample corpus."""
    path = importlib.resources.files("mlm.data") / "kjv.txt.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        docs = [d.strip() for d in f.read().split("\n\n") if d.strip()]
    return docs[start : start + count]


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """A 60-document text file (blank lines between documents)."""
    path = tmp_path_factory.mktemp("corpus") / "kjv60.txt"
    path.write_text("\n\n".join(sample_documents(60)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def held_out_corpus(tmp_path_factory):
    """Ten documents the small corpus does not contain."""
    path = tmp_path_factory.mktemp("held") / "kjv_held.txt"
    path.write_text("\n\n".join(sample_documents(10, start=1000)) + "\n", encoding="utf-8")
    return path


def tensorboard_scalars(logdir) -> list[tuple[str, int, str, float]]:
    """(split, step, tag, value) of every scalar event under `logdir/<split>/`, sorted."""
    import tensorflow as tf

    found = []
    for path in sorted(Path(logdir).glob("*/events.out.tfevents.*")):
        for raw in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            for value in event.summary.value:
                assert value.metadata.plugin_data.plugin_name in ("", "scalars")
                found.append((path.parent.name, event.step, value.tag,
                              float(tf.make_ndarray(value.tensor))))
    return sorted(found)


# The JAX runs of tests/test_jax.py and tests/test_distributed.py: the test recipe
# for enough steps that a worker can be killed mid-run, evaluating only at the ends.
JAX_RUN_OVERRIDES = (
    "train.steps=24", "train.eval_batches=1", "train.eval_every=1000",
    "train.checkpoint_every=4", "train.log_every=4",
)

# Logits of the trained preset on fixed inputs, written by `jax_run`'s process and
# compared with TensorFlow's in tests/test_jax.py.
LOGITS_CODE = """
import keras, keras_hub, numpy as np
m = keras_hub.models.MaskedLM.from_preset(PRESET)
m.preprocessor = None
ids = np.arange(2 * 32, dtype="int32").reshape(2, 32) % 600
x = {"token_ids": ids, "padding_mask": np.ones_like(ids), "segment_ids": 0 * ids,
     "mask_positions": np.tile(np.arange(1, 31, 6, dtype="int32"), (2, 1))}
np.save(OUT, np.asarray(m.predict_on_batch(x)))
"""


@pytest.fixture(scope="session")
def jax_env(tmp_path_factory):
    """Environment for `mlm` subprocesses on JAX.

    They share a persistent compilation cache, and XLA compiles for CPU with
    cheap optimisation: compiling dominates these short runs (halves it).
    """
    env = dict(os.environ)
    env.pop("KERAS_BACKEND", None)
    env.update({
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
    })
    return env


@pytest.fixture(scope="session")
def jax_run(tmp_path_factory, jax_env, small_corpus, held_out_corpus):
    """A one-process JAX run of `JAX_RUN_OVERRIDES` on the small corpus (its run dir).

    The same process writes its preset's logits to `run_dir/../jax_logits.npy`.
    """
    run_dir = tmp_path_factory.mktemp("jax") / "run"
    code = f"""
import mlm
recipe = mlm.apply_overrides(mlm.load_recipe("bert_test"), [
    *{list(JAX_RUN_OVERRIDES)!r},
    'corpus.paths=["{small_corpus}"]', 'corpus.held_out_paths=["{held_out_corpus}"]'])
mlm.pretrain(recipe, run_dir="{run_dir}", quiet=True)
PRESET, OUT = "{run_dir / 'preset'}", "{run_dir.parent / 'jax_logits.npy'}"
""" + LOGITS_CODE
    proc = subprocess.run([sys.executable, "-c", code], env={**jax_env, "KERAS_BACKEND": "jax"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir
