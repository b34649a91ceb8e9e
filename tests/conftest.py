"""Shared fixtures and helpers: slices of the shipped sample corpus, a shrunk recipe,
a tiny task, running the CLI, reading a run's metrics, and comparing weights."""

import contextlib
import dataclasses
import gzip
import importlib.resources
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True, scope="session")
def _session_machine_cache(tmp_path_factory):
    """The machine cache (`mlm.machine_cache`) of the session-scoped fixtures' runs, not
    the user's."""
    os.environ["MLM_CACHE_DIR"] = str(new_machine_cache(tmp_path_factory))
    return Path(os.environ["MLM_CACHE_DIR"])


def new_machine_cache(tmp_path_factory) -> Path:
    """A fresh machine cache folder whose `step_settings/` is the session's, so that no
    test finds a vocabulary or tokens that another test's run left, while the measured
    step settings (`mlm.training.step_settings`) are measured once per session."""
    from mlm import machine_cache

    root = tmp_path_factory.mktemp("mlm_cache")
    shared = tmp_path_factory.getbasetemp() / "session_step_settings"
    shared.mkdir(exist_ok=True)
    (root / machine_cache.STEP_SETTINGS).symlink_to(shared, target_is_directory=True)
    return root


@contextlib.contextmanager
def own_machine_cache(tmp_path_factory):
    """`$MLM_CACHE_DIR` a new machine cache while inside: for the module- and
    session-scoped fixtures that learn and tokenize (a function-scoped
    monkeypatch cannot reach them)."""
    before = os.environ.get("MLM_CACHE_DIR")
    os.environ["MLM_CACHE_DIR"] = str(new_machine_cache(tmp_path_factory))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLM_CACHE_DIR", None)
        else:
            os.environ["MLM_CACHE_DIR"] = before


@pytest.fixture(autouse=True)
def _private_machine_cache(_session_machine_cache, tmp_path_factory, monkeypatch):
    """Each test's own machine cache (`new_machine_cache`)."""
    root = new_machine_cache(tmp_path_factory)
    monkeypatch.setenv("MLM_CACHE_DIR", str(root))
    return root


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


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """A finished run: its folder and what `mlm pretrain` printed (stderr is no terminal)."""

    run_dir: Path
    out: str
    err: str


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, small_corpus, held_out_corpus) -> TrainedRun:
    """The one trained `bert_test` run (6 steps on the small corpus, held-out file) that
    every test reading a finished run shares: report, export, predict, evaluate,
    fine-tuning, classify. Trained once per session through the real CLI, in this
    process. Read it, never change it: copy it first (`shutil.copytree`)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    with own_machine_cache(tmp_path_factory):  # it learns and tokenizes, as a first run does
        _, out, err = run_mlm("pretrain", "--recipe", "bert_test", "--corpus", small_corpus,
                              "--held-out", held_out_corpus, "--run-dir", run_dir,
                              in_process=True, check=True)
    return TrainedRun(run_dir, out, err)


def corpus_overrides(corpus, held_out=None) -> list[str]:
    """`--set` overrides that point a recipe at the `corpus` file (and `held_out`)."""
    overrides = [f"corpus.paths={json.dumps([str(corpus)])}"]
    if held_out is not None:
        overrides.append(f"corpus.held_out_paths={json.dumps([str(held_out)])}")
    return overrides


def small_recipe(corpus=None, held_out=None, *, name="bert_test", overrides=()):
    """The `name` recipe on `corpus` (and `held_out`) with `overrides` applied after."""
    from mlm.config import apply_overrides, load_recipe

    on_corpus = corpus_overrides(corpus, held_out) if corpus is not None else []
    return apply_overrides(load_recipe(name), [*on_corpus, *overrides])


# The tiny task's vocabulary and text: every word known, so its assertions are exact.
TINY_VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on",
                   "mat", "."]
TINY_TEXT = ["the cat sat on the mat ."] * 2


def tiny_task(*, vocabulary=TINY_VOCABULARY, overrides=(), seed=0, steps=0, texts=TINY_TEXT):
    """A compiled `bert_test` BertMaskedLM trained `steps` steps on `texts`.

    Built as `mlm.pretrain` builds it (recipe -> `build_task` -> `compile_task`),
    with its preprocessor detached as in training.

    Args:
        vocabulary: the WordPiece vocabulary, a list of tokens or a file's path.
        overrides: `--set` overrides of the `bert_test` recipe (model, masking, train).
        seed: the Keras seed set before the weights are drawn.
        steps: optimizer steps taken, each on the one batch `preprocessor(texts)`.
        texts: the documents of that batch.

    Returns:
        `(task, preprocessor)`.
    """
    import keras
    import keras_hub

    from mlm.architectures import get_architecture
    from mlm.data.masking import resolve_masking
    from mlm.training.task import build_task, compile_task

    recipe = small_recipe(overrides=overrides)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    keras.utils.set_random_seed(seed)
    task = build_task(recipe.model, arch=get_architecture("bert"), tokenizer=tokenizer,
                      masking=resolve_masking(recipe.masking, evaluation=True))
    compile_task(task, recipe.train)
    preprocessor, task.preprocessor = task.preprocessor, None
    if steps:
        x, y, w = preprocessor(texts)
        for _ in range(steps):
            task.train_on_batch(x, y, sample_weight=w)
    return task, preprocessor


def run_mlm(*args, in_process=False, env=None, check=False) -> tuple[int, str, str]:
    """Runs `mlm *args`: `(exit status, stdout, stderr)`.

    In a fresh `python -m mlm` process (`env` its environment), or with
    `in_process=True` through `mlm.cli.main` in this one, which is faster.
    `check=True` fails the test, with the end of stderr, unless the status is 0.
    """
    args = [str(a) for a in args]
    if in_process:
        from mlm.cli import main

        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(args)
        out, err = stdout.getvalue(), stderr.getvalue()
    else:
        proc = subprocess.run([sys.executable, "-m", "mlm", *args], env=env,
                              capture_output=True, text=True, timeout=600)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    if check and code != 0:
        raise AssertionError(f"mlm {' '.join(args)} exited {code}:\n{err[-3000:]}")
    return code, out, err


def pretrain_arguments(run_dir, *, corpus=None, steps=None, settings=(), extra=(),
                       fault=None, deterministic=True) -> tuple[list[str], dict]:
    """`mlm pretrain`'s arguments and environment for `pretrain_process`."""
    env = {k: v for k, v in os.environ.items() if k != "MLM_FAULT"}
    if fault:
        env["MLM_FAULT"] = fault
    args = ["pretrain", "--run-dir", str(run_dir)]
    if steps is not None:
        args += ["--steps", str(steps)]
    if corpus is None:
        args.append("--resume")
    else:
        args += ["--recipe", "bert_test", "--corpus", str(corpus), *map(str, extra)]
        args += ["--deterministic"] if deterministic else []
        args += ["--set", *settings] if settings else []
    return args, env


def pretrain_process(run_dir, **kwargs) -> tuple[int, str, str]:
    """The kill-and-resume helper of the crash tests: `mlm pretrain` in a fresh process.

    With `corpus`, a new `bert_test` run (`--deterministic` unless told not,
    `--set settings`, `extra` arguments); without, `--resume` of `run_dir`.
    `fault` is an `MLM_FAULT` spec (`mlm.faults`) that kills, stops or fails the
    process at an exact point. Returns `(exit status, stdout, stderr)`.
    """
    args, env = pretrain_arguments(run_dir, **kwargs)
    return run_mlm(*args, env=env)


def run_python(code: str, *, env=None) -> str:
    """Runs `code` (dedented) in a fresh interpreter; fails unless it exits 0; its stdout."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def token_entry(run_dir) -> Path:
    """The token cache entry a run recorded reading (in the machine cache)."""
    (path,) = {r["path"] for r in read_metrics(run_dir) if r.get("part") == "tokens"}
    return Path(path)


def assert_same_held_out(run_dir, one_process_run):
    """The held-out evaluations of a data-parallel run (the processes and devices split
    each batch, summing on the devices) match those of one process on one device."""
    split = {r["step"]: r for r in read_metrics(run_dir) if r["split"] == "held_out"}
    whole = {r["step"]: r for r in read_metrics(one_process_run) if r["split"] == "held_out"}
    assert 24 in split and split.keys() <= whole.keys()
    for step, record in split.items():
        assert record["windows"] == whole[step]["windows"] == 8  # eval_batches=1
        assert record["masked_tokens"] == whole[step]["masked_tokens"]  # the same masks
        assert record["loss"] == pytest.approx(whole[step]["loss"], abs=1e-4)
        # The same predictions, give or take one token whose top two logits tie within
        # the float32 rounding that separates the runs' weights.
        assert record["accuracy"] == pytest.approx(whole[step]["accuracy"],
                                                   abs=1.01 / record["masked_tokens"])


def read_metrics(run_dir) -> list[dict]:
    """The records of `run_dir/metrics.jsonl`, in order, through the run directory's reader;
    a torn line fails the test."""
    from mlm.run.directory import RunDir

    return RunDir(run_dir).read_metrics(say=pytest.fail)


def saved_arrays(folder) -> dict[str, np.ndarray]:
    """Every array in the `*.weights.h5` and `*.npz` files under `folder`, by file and name.

    A preset folder gives its weights; a checkpoint folder also its optimizer
    state and dropout seeds.
    """
    import h5py

    folder, arrays = Path(folder), {}
    for path in sorted(folder.rglob("*.weights.h5")):
        prefix = path.relative_to(folder).as_posix()
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj, prefix=prefix: arrays.__setitem__(
                f"{prefix}/{name}", obj[()]) if isinstance(obj, h5py.Dataset) else None)
    for path in sorted(folder.rglob("*.npz")):
        prefix = path.relative_to(folder).as_posix()
        with np.load(path) as npz:
            arrays.update({f"{prefix}/{key}": npz[key] for key in npz.files})
    return arrays


def max_weight_difference(a, b) -> float:
    """Largest absolute difference, in float64, between two models' weights.

    `a` and `b` are Keras models, preset or checkpoint folders (`saved_arrays`),
    or dicts of arrays; both must hold the same arrays.
    """
    def arrays(source):
        if isinstance(source, (str, Path)):
            return saved_arrays(source)
        if hasattr(source, "get_weights"):
            return dict(enumerate(source.get_weights()))
        return source

    a, b = arrays(a), arrays(b)
    assert a and sorted(a) == sorted(b), (sorted(a), sorted(b))
    return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64))))
               for k in a)


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
    overrides = [*JAX_RUN_OVERRIDES, *corpus_overrides(small_corpus, held_out_corpus)]
    code = f"""
import mlm
recipe = mlm.apply_overrides(mlm.load_recipe("bert_test"), {overrides!r})
mlm.pretrain(recipe, run_dir="{run_dir}", quiet=True)
PRESET, OUT = "{run_dir / 'preset'}", "{run_dir.parent / 'jax_logits.npy'}"
""" + LOGITS_CODE
    run_python(code, env={**jax_env, "KERAS_BACKEND": "jax"})
    return run_dir
