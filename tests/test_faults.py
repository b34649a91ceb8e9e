"""Fault injection: kill, stop, starve and poison real runs; resume them exactly.

The kill tests start real `python -m mlm pretrain` processes and make them
die at exact points through the test-only `MLM_FAULT` hook (`mlm.faults`).
"""

import json
import os
import re
import signal
import subprocess
import sys

import h5py
import keras
import keras_hub
import numpy as np
import pytest

from mlm.cli import main
from mlm.errors import MlmError
from mlm.hub import load_masked_lm
from mlm.run import checkpoints
from mlm.run.directory import RunDir
from tests.conftest import tensorboard_scalars

STEPS = 8
# Dropout on, so that the dropout seeds must be restored too; a checkpoint
# every 2 steps, evaluation only at the start and the end.
SETTINGS = ["model.backbone.dropout=0.1", "train.checkpoint_every=2", "train.log_every=1",
            "train.eval_every=100", "train.keep_checkpoints=2"]


def _command(run_dir, *, corpus=None, fault=None):
    """`mlm pretrain` and its environment: a new run when `corpus` is given, else --resume."""
    env = {k: v for k, v in os.environ.items() if k != "MLM_FAULT"}
    if fault:
        env["MLM_FAULT"] = fault
    command = [sys.executable, "-m", "mlm", "pretrain", "--run-dir", str(run_dir),
               "--steps", str(STEPS)]
    if corpus is None:
        command.append("--resume")
    else:
        command += ["--recipe", "bert_test", "--corpus", str(corpus), "--deterministic",
                    "--set", *SETTINGS]
    return command, env


def _pretrain(run_dir, *, corpus=None, fault=None):
    command, env = _command(run_dir, corpus=corpus, fault=fault)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _h5_arrays(path):
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: arrays.__setitem__(name, obj[()])
            if isinstance(obj, h5py.Dataset) else None
        )
    return arrays


def _max_difference(run_a, run_b) -> float:
    """Largest absolute difference between the final weights and training state of two runs."""
    pairs = []
    for name in ("model.weights.h5", "task.weights.h5"):
        a, b = _h5_arrays(run_a / "preset" / name), _h5_arrays(run_b / "preset" / name)
        assert sorted(a) == sorted(b) and a
        pairs += [(a[k], b[k]) for k in a]
    for name in ("optimizer.npz", "random.npz"):
        with np.load(run_a / "checkpoints" / f"step-{STEPS}" / name) as a, \
                np.load(run_b / "checkpoints" / f"step-{STEPS}" / name) as b:
            assert a.files == b.files
            pairs += [(a[k], b[k]) for k in a.files]
    return max(float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
               for x, y in pairs)


def _train_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"], r["accuracy"]) for r in map(json.loads, lines)
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
    command, env = _command(reference, corpus=small_corpus)
    with open(tmp_path / "reference.log", "w") as log:
        uninterrupted = subprocess.Popen(command, env=env, stdout=log, stderr=log)

    # 1. SIGKILL mid-tokenization: the vocabulary is learned, the token cache half-written.
    killed = _pretrain(run, corpus=small_corpus, fault="read_document:split=held_out:index=3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not checkpoints.list_checkpoints(run)
    assert [p.startswith("cache/.") for p in _leftovers(run)] == [True]

    # 2. SIGKILL mid-step 3: the lock of the killed process does not block the resume.
    killed = _pretrain(run, fault="train_step:step=3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "removed what an interrupted run left half-written: cache/." in killed.stderr
    assert list(checkpoints.list_checkpoints(run)) == [2]

    # 3. SIGKILL mid-checkpoint-write at step 6: the preset is written, the rest not.
    killed = _pretrain(run, fault="checkpoint_write:step=6")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert f"resuming from {run / 'checkpoints' / 'step-2'} (step 2)" in killed.stderr
    assert list(checkpoints.list_checkpoints(run)) == [2, 4]
    assert _leftovers(run) == ["checkpoints/.step-6.tmp"]

    # 4. A bit flips in the newest checkpoint; then SIGTERM during step 5.
    weights = run / "checkpoints" / "step-4" / "preset" / "model.weights.h5"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    stopped = _pretrain(run, fault="train_step:step=5:action=term")
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert (
        f"checkpoint {run / 'checkpoints' / 'step-4'} is corrupt (preset/model.weights.h5 "
        f"does not match its SHA-256 in the manifest); skipping it"
    ) in stopped.stderr
    assert f"resuming from {run / 'checkpoints' / 'step-2'} (step 2)" in stopped.stderr
    assert f"mlm: stopped by SIGTERM at step 5 of {STEPS}; resume with: mlm pretrain " \
           f"--run-dir {run} --resume" in stopped.stderr
    assert list(checkpoints.list_checkpoints(run)) == [4, 5]

    # 5. Resume to the end.
    finished = _pretrain(run)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"resuming from {run / 'checkpoints' / 'step-5'} (step 5)" in finished.stderr
    assert "Traceback" not in finished.stderr

    assert uninterrupted.wait(timeout=600) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    # Bit for bit: weights, optimizer and dropout seeds; the same batches and
    # masks step by step (equal losses), one record per step, nothing left over.
    assert _max_difference(reference, run) == 0.0
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
    killed = _pretrain(run, corpus=small_corpus, fault="metrics_write:step=5:split=train")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    metrics = RunDir(run).metrics
    torn = metrics.read_text().splitlines()[-1]
    assert torn.startswith('{"step": 5') and not metrics.read_text().endswith("\n")

    reported = subprocess.run([sys.executable, "-m", "mlm", "report", str(run)],
                              capture_output=True, text=True, timeout=600)
    assert reported.returncode == 0, reported.stderr[-3000:]
    assert reported.stderr.count("cut short by an interrupted write") == 1
    assert RunDir(run).report.is_file()

    finished = _pretrain(run)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"the torn last line of {metrics.name}" in finished.stderr
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records if r.get("split") == "train"] == list(range(1, STEPS + 1))
    assert RunDir(run).read_metrics(say=pytest.fail) == records


@pytest.mark.slow
def test_a_nan_loss_stops_with_the_step_and_the_last_checkpoint(tmp_path, capsys, small_corpus):
    run_dir = tmp_path / "run"
    code = main(["pretrain", "--recipe", "bert_test", "--corpus", str(small_corpus),
                 "--run-dir", str(run_dir), "--steps", "8", "--learning-rate", "1e30",
                 "--set", "train.checkpoint_every=2", "train.eval_every=100"])
    err = capsys.readouterr().err
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
    tmp_path, capsys, monkeypatch, small_corpus
):
    run_dir = tmp_path / "run"
    monkeypatch.setenv("MLM_FAULT", "checkpoint_write:step=4:action=enospc")
    code = main(["pretrain", "--recipe", "bert_test", "--corpus", str(small_corpus),
                 "--run-dir", str(run_dir), "--steps", "6",
                 "--set", "train.checkpoint_every=2", "train.eval_every=100"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    previous = run_dir / "checkpoints" / "step-2"
    assert err.strip().splitlines()[-1] == (
        f"mlm: error: could not write the checkpoint of step 4 in {run_dir / 'checkpoints'} "
        f"(No space left on device: <MLM_FAULT at checkpoint_write>); the last checkpoint is "
        f"{previous}, left intact: free disk space or fix the folder, then resume with --resume."
    )
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-2"]
    assert checkpoints.verify_checkpoint(previous) is None


# Untrusted presets.

_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "."]


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    """A tiny BertMaskedLM preset folder."""
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=_VOCAB, lowercase=True)
    preprocessor = keras_hub.models.BertMaskedLMPreprocessor(tokenizer, sequence_length=8)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(_VOCAB), num_layers=1, num_heads=1, hidden_dim=8,
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


def test_the_clean_preset_loads_and_predict_refuses_a_doctored_one(preset, tmp_path, capsys):
    assert isinstance(load_masked_lm(str(preset)), keras_hub.models.BertMaskedLM)
    doctored = _doctored(preset, tmp_path, _set_backbone(_lambda_layer(tmp_path / "ran")))
    code = main(["predict", str(doctored), "the [MASK] sat"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"mlm: error: refused to load preset {doctored}")
