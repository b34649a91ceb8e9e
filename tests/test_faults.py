"""Fault injection: kill, stop, starve and poison real runs; resume them exactly.

The kill tests start real `python -m mlm pretrain` processes and make them
die at exact points through the test-only `MLM_FAULT` hook (`mlm.faults`).
"""

import json
import re
import signal
import subprocess
import sys

import keras
import keras_hub
import numpy as np
import pytest

from mlm import atomic, machine_cache
from mlm.errors import MlmError
from mlm.preset_loading import load_masked_lm
from mlm.run import checkpoints
from mlm.run.directory import RunDir
from tests.conftest import (
    TINY_VOCABULARY,
    max_weight_difference,
    pretrain_arguments,
    pretrain_process,
    read_metrics,
    run_mlm,
    saved_arrays,
    tensorboard_scalars,
)

STEPS = 8
# Dropout on, so that the dropout seeds must be restored too; a checkpoint
# every 2 steps, evaluation only at the start and the end.
SETTINGS = ["model.backbone.dropout=0.1", "train.checkpoint_every=2", "train.log_every=1",
            "train.eval_every=100", "train.keep_checkpoints=2"]


def _arguments(run_dir, *, corpus=None, fault=None):
    return pretrain_arguments(run_dir, corpus=corpus, fault=fault, steps=STEPS, settings=SETTINGS)


def _pretrain(run_dir, *, corpus=None, fault=None):
    return pretrain_process(run_dir, corpus=corpus, fault=fault, steps=STEPS, settings=SETTINGS)


def _final_state(run_dir):
    """The final preset's weights; the last checkpoint's weights, optimizer state and seeds."""
    return (saved_arrays(run_dir / "preset")
            | saved_arrays(run_dir / "checkpoints" / f"step-{STEPS}"))


def _train_records(run_dir):
    return [(r["step"], r["loss"], r["accuracy"]) for r in read_metrics(run_dir)
            if r.get("split") == "train"]


def _board_losses(run_dir):
    """(step, loss) of every training-loss event in the run's TensorBoard folder."""
    scalars = tensorboard_scalars(run_dir / "tensorboard")
    return [(step, value) for split, step, tag, value in scalars
            if split == "train" and tag == "loss"]


def _leftovers(run_dir):
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob(".*") if p.is_dir())


@pytest.mark.slow
def test_killed_stopped_and_corrupted_run_resumes_to_the_exact_weights(tmp_path, small_corpus):
    reference, run = tmp_path / "reference", tmp_path / "run"
    # The uninterrupted run, beside the faulty ones (the machine may have a spare core).
    args, env = _arguments(reference, corpus=small_corpus)
    # Its own machine cache: it must not tokenize for the run below, which is killed doing so.
    env["MLM_CACHE_DIR"] = str(tmp_path / "reference_cache")
    with open(tmp_path / "reference.log", "w") as log:
        uninterrupted = subprocess.Popen([sys.executable, "-m", "mlm", *args], env=env,
                                         stdout=log, stderr=log)

    # 1. SIGKILL mid-tokenization: the vocabulary is learned, the token cache half-written.
    code, _, err = _pretrain(run, corpus=small_corpus, fault="read_document:split=held_out:index=3")
    assert code == -signal.SIGKILL, err[-3000:]
    assert not checkpoints.list_checkpoints(run)
    tokens = machine_cache.root() / machine_cache.TOKENS
    assert [atomic.is_temporary(p) for p in tokens.iterdir() if p.is_dir()] == [True]
    assert _leftovers(run) == []

    # 2. SIGKILL mid-step 3: the locks of the killed process (the run's, the machine
    # cache entry's) do not block the resume, which tokenizes again in place of the
    # half-written entry.
    code, _, err = _pretrain(run, fault="train_step:step=3")
    assert code == -signal.SIGKILL, err[-3000:]
    assert "tokenizing" in err
    assert [atomic.is_temporary(p) for p in tokens.iterdir() if p.is_dir()] == [False]
    assert list(checkpoints.list_checkpoints(run)) == [2]

    # 3. SIGKILL mid-checkpoint-write at step 6: the preset is written, the rest not.
    code, _, err = _pretrain(run, fault="checkpoint_write:step=6")
    assert code == -signal.SIGKILL, err[-3000:]
    assert f"resuming from {run / 'checkpoints' / 'step-2'} (step 2)" in err
    assert list(checkpoints.list_checkpoints(run)) == [2, 4]
    assert _leftovers(run) == ["checkpoints/.step-6.tmp"]

    # 4. A bit flips in the newest checkpoint; then SIGTERM during step 5.
    weights = run / "checkpoints" / "step-4" / "preset" / "model.weights.h5"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    code, _, err = _pretrain(run, fault="train_step:step=5:action=term")
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert (
        f"checkpoint {run / 'checkpoints' / 'step-4'} is corrupt (preset/model.weights.h5 "
        f"does not match its SHA-256 in the manifest); skipping it"
    ) in err
    assert f"resuming from {run / 'checkpoints' / 'step-2'} (step 2)" in err
    assert f"mlm: stopped by SIGTERM at step 5 of {STEPS}; resume with: mlm pretrain " \
           f"--run-dir {run} --resume" in err
    assert list(checkpoints.list_checkpoints(run)) == [4, 5]

    # 5. Resume to the end.
    code, _, err = _pretrain(run)
    assert code == 0, err[-3000:]
    assert f"resuming from {run / 'checkpoints' / 'step-5'} (step 5)" in err
    assert "Traceback" not in err

    assert uninterrupted.wait(timeout=600) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    # Bit for bit: weights, optimizer and dropout seeds; the same batches and
    # masks step by step (equal losses), one record per step, nothing left over.
    assert max_weight_difference(_final_state(reference), _final_state(run)) == 0.0
    assert _train_records(run) == _train_records(reference)
    assert [r[0] for r in _train_records(run)] == list(range(1, STEPS + 1))
    # TensorBoard too: one loss per step, none left from before the kills.
    assert _board_losses(run) == _board_losses(reference)
    assert [step for step, _ in _board_losses(run)] == list(range(1, STEPS + 1))
    assert _leftovers(run) == []
    for path in checkpoints.list_checkpoints(run).values():
        assert checkpoints.verify_checkpoint(path) is None


@pytest.mark.slow
def test_a_metrics_line_cut_by_a_kill_is_skipped_by_report_and_trimmed_by_resume(
    tmp_path, small_corpus
):
    run = tmp_path / "run"
    # SIGKILL with half of step 5's training record written; the newest checkpoint is step 4.
    code, _, err = _pretrain(run, corpus=small_corpus, fault="metrics_write:step=5:split=train")
    assert code == -signal.SIGKILL, err[-3000:]
    metrics = RunDir(run).metrics
    torn = metrics.read_text().splitlines()[-1]
    assert torn.startswith('{"step": 5') and not metrics.read_text().endswith("\n")

    code, _, err = run_mlm("report", str(run), in_process=True)
    assert code == 0, err[-3000:]
    assert err.count("cut short by an interrupted write") == 1
    assert RunDir(run).report.is_file()

    code, _, err = _pretrain(run)
    assert code == 0, err[-3000:]
    assert f"the torn last line of {metrics.name}" in err
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records if r.get("split") == "train"] == list(range(1, STEPS + 1))
    assert RunDir(run).read_metrics(say=pytest.fail) == records


@pytest.mark.slow
def test_a_nan_loss_stops_with_the_step_and_the_last_checkpoint(tmp_path, small_corpus):
    run_dir = tmp_path / "run"
    code, _, err = run_mlm("pretrain", "--recipe", "bert_test", "--corpus", small_corpus,
                           "--run-dir", run_dir, "--steps", "8", "--learning-rate", "1e30",
                           "--set", "train.checkpoint_every=2", "train.eval_every=100",
                           in_process=True)
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    match = re.fullmatch(
        r"mlm: error: the loss became (nan|inf) (?:at step|in steps \d+-)(\d+); training "
        r"stopped without a checkpoint of (?:that step|those steps) \(the last checkpoint is "
        r"(\S+)\)\. Lower "
        r"train.learning_rate and train again\.", last,
    )
    assert match, last
    step = int(match.group(2))
    found = checkpoints.list_checkpoints(run_dir)
    assert found and max(found) < step
    assert match.group(3) == str(found[max(found)])
    for path in found.values():  # every checkpoint written holds finite numbers only
        task = load_masked_lm(str(path / "preset"))
        assert all(np.isfinite(w).all() for w in task.get_weights())


@pytest.mark.slow
def test_a_full_disk_mid_checkpoint_keeps_the_previous_one(
    tmp_path, monkeypatch, small_corpus
):
    run_dir = tmp_path / "run"
    monkeypatch.setenv("MLM_FAULT", "checkpoint_write:step=4:action=enospc")
    code, _, err = run_mlm("pretrain", "--recipe", "bert_test", "--corpus", small_corpus,
                           "--run-dir", run_dir, "--steps", "6",
                           "--set", "train.checkpoint_every=2", "train.eval_every=100",
                           in_process=True)
    assert code == 2 and "Traceback" not in err
    previous = run_dir / "checkpoints" / "step-2"
    assert err.strip().splitlines()[-1] == (
        f"mlm: error: could not write the checkpoint of step 4 in {run_dir / 'checkpoints'} "
        f"(No space left on device: <MLM_FAULT at checkpoint_write>); the last checkpoint is "
        f"{previous}, left intact: free disk space or fix the folder, then resume with --resume."
    )
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-2"]
    assert checkpoints.verify_checkpoint(previous) is None


@pytest.mark.slow
def test_a_run_that_fails_before_its_first_checkpoint_leaves_its_vocabulary_and_tokens(
    tmp_path, monkeypatch, small_corpus
):
    """The run directory goes, but the machine cache keeps what took long: the next run
    of the same corpus and recipe neither learns a vocabulary nor tokenizes."""
    run_dir = tmp_path / "run"
    args = ("pretrain", "--recipe", "bert_test", "--corpus", small_corpus, "--run-dir", run_dir,
            "--steps", "4", "--set", "train.checkpoint_every=2", "train.eval_every=100")
    monkeypatch.setenv("MLM_FAULT", "checkpoint_write:step=2:action=enospc")
    code, _, err = run_mlm(*args, in_process=True)
    assert code == 2 and "Traceback" not in err
    assert "training a wordpiece vocabulary" in err and "tokenizing train" in err
    assert not run_dir.exists()
    monkeypatch.delenv("MLM_FAULT")
    code, _, err = run_mlm(*args, in_process=True)
    assert code == 0, err[-3000:]
    assert "training a wordpiece vocabulary" not in err and "tokenizing" not in err
    assert "vocabulary: learned before from this corpus and vocab section" in err
    cache = machine_cache.root()
    (vocabulary,) = (cache / machine_cache.VOCAB).glob("*/vocabulary.txt")
    assert (run_dir / "vocab" / "vocabulary.txt").read_bytes() == vocabulary.read_bytes()
    (entry,) = [p for p in (cache / machine_cache.TOKENS).iterdir() if p.is_dir()]
    assert {r["path"] for r in read_metrics(run_dir) if r.get("part") == "tokens"} == {str(entry)}


# Untrusted presets.




@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    """A tiny BertMaskedLM preset folder."""
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=TINY_VOCABULARY, lowercase=True)
    preprocessor = keras_hub.models.BertMaskedLMPreprocessor(tokenizer, sequence_length=8)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(TINY_VOCABULARY), num_layers=1, num_heads=1, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=8,
    )
    path = tmp_path_factory.mktemp("presets") / "clean"
    keras_hub.models.BertMaskedLM(backbone, preprocessor=preprocessor).save_to_preset(str(path))
    return path


def _doctored(preset, tmp_path, edit):
    import shutil

    path = tmp_path / "doctored"
    shutil.copytree(preset, path)
    config = json.loads((path / "task.json").read_text())
    edit(config)
    (path / "task.json").write_text(json.dumps(config))
    return path


def _lambda_layer(marker):
    """The config of a Lambda layer whose function would create `marker` when run."""
    # Built from source so that the path is a constant in its code, not a closure.
    function = eval(f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]")  # noqa: S307
    layer = keras.layers.Lambda(function)
    return keras.saving.serialize_keras_object(layer)


def _set_backbone(value):
    return lambda config: config["config"].__setitem__("backbone", value)


def _set_vocabulary(value):
    def edit(config):
        config["config"]["preprocessor"]["config"]["tokenizer"]["config"]["vocabulary"] = value
    return edit


@pytest.mark.parametrize("unsafe_globally", [False, True])
@pytest.mark.parametrize(
    "edit, message",
    [
        ("lambda", "its config holds Python code (a Lambda layer or lambda function), which "
                   "would run on load; mlm loads presets in Keras safe mode"),
        (_set_backbone({"module": "evil.models", "class_name": "Backdoor", "config": {},
                        "registered_name": "evil>Backdoor"}),
         "it needs the custom object 'Backdoor', which is not registered with Keras"),
        (_set_backbone({"module": "os", "class_name": "system", "config": {"command": "x"},
                        "registered_name": None}),
         "it needs the custom object 'system', which is not registered with Keras"),
        (lambda config: config.__setitem__("registered_name", "evil>MaskedLM"),
         "it needs the custom object 'evil>MaskedLM', which is not registered with Keras"),
        (_set_vocabulary("/etc/passwd"),
         "its config names a file outside the preset folder ('/etc/passwd')"),
    ],
    ids=["lambda", "unregistered", "os-system", "unregistered-task", "outside-file"],
)
def test_a_preset_that_would_run_code_is_refused(
    preset, tmp_path, edit, message, unsafe_globally
):
    from keras.src.backend.common import global_state

    marker = tmp_path / "code-ran"
    if edit == "lambda":
        edit = _set_backbone(_lambda_layer(marker))
    doctored = _doctored(preset, tmp_path, edit)
    if unsafe_globally:  # what a careless notebook cell might have done
        keras.config.enable_unsafe_deserialization()
    try:
        with pytest.raises(MlmError) as excinfo:
            load_masked_lm(str(doctored))
    finally:
        global_state.set_global_attribute("safe_mode_saving", None)
    assert str(excinfo.value).startswith(f"refused to load preset {doctored}: {message}")
    assert "\n" not in str(excinfo.value)
    assert not marker.exists()


def test_the_clean_preset_loads_and_predict_refuses_a_doctored_one(preset, tmp_path):
    assert isinstance(load_masked_lm(str(preset)), keras_hub.models.BertMaskedLM)
    doctored = _doctored(preset, tmp_path, _set_backbone(_lambda_layer(tmp_path / "ran")))
    code, _, err = run_mlm("predict", doctored, "the [MASK] sat", in_process=True)
    assert code == 2 and err.startswith(f"mlm: error: refused to load preset {doctored}")
