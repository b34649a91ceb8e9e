"""Shared fixtures: small slices of the shipped sample corpus."""

import gzip
import importlib.resources
import os
import subprocess
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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


# The JAX runs of tests/test_jax.py and tests/test_distributed.py: the test recipe
# for enough steps that a worker can be killed mid-run, evaluating only at the ends.
JAX_RUN_ARGS = (
    "--recipe", "bert_test", "--steps", "40", "--set", "train.eval_batches=1",
    "train.eval_every=1000", "train.checkpoint_every=5", "train.log_every=5",
)


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
    """A one-process JAX run of `JAX_RUN_ARGS` on the small corpus (its run dir)."""
    run_dir = tmp_path_factory.mktemp("jax") / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "mlm", "pretrain", "--backend", "jax", *JAX_RUN_ARGS,
         "--corpus", str(small_corpus), "--held-out", str(held_out_corpus),
         "--run-dir", str(run_dir), "--quiet"],
        env=jax_env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir
