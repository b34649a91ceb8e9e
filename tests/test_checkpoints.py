"""Checkpoints: loadable presets, retention, crash safety, verification and exact resume."""

import errno
import json

import keras_hub
import numpy as np
import pytest

from mlm.errors import MlmError
from mlm.run.checkpoints import (
    find_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    remove_partial,
    restore_optimizer,
    restore_training_state,
    save_checkpoint,
    verify_checkpoint,
)
from mlm.run.export import export_checkpoint
from mlm.training.task import compile_task
from tests.conftest import TINY_TEXT, TINY_VOCABULARY, small_recipe, tiny_task

SEQUENCE_LENGTH = 16
# One layer, dropout 0.1 (keras-hub's default) so that the dropout seeds are state
# to restore, and every token selected for masking.
OVERRIDES = ["model.sequence_length=16",
             "model.backbone.intermediate_dim=32", "model.backbone.dropout=0.1",
             "masking.selection_rate=1.0"]


def _task(*, hidden_dim=16, steps=0):
    """(task, preprocessor): a compiled one-layer BertMaskedLM, detached from its
    preprocessor as in training."""
    return tiny_task(overrides=[*OVERRIDES, f"model.backbone.hidden_dim={hidden_dim}"],
                     steps=steps)


@pytest.fixture(scope="module")
def trained():
    """(task, preprocessor) after two optimizer steps."""
    return _task(steps=2)


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    """A checkpoint of the trained task at step 2."""
    task, preprocessor = trained
    run_dir = tmp_path_factory.mktemp("run")
    path = save_checkpoint(
        task, preprocessor=preprocessor, run_dir=run_dir, step=2, state={"epoch": 0}, keep=3
    )
    return run_dir, path


def _fake_checkpoint(run_dir, name, *, complete=True):
    """A checkpoint folder; `manifest.json` is what marks it complete."""
    folder = run_dir / "checkpoints" / name
    folder.mkdir(parents=True)
    (folder / "state.json").write_text('{"step": 0}')
    if complete:
        (folder / "manifest.json").write_text('{"step": 0, "files": {}}')
    return folder


def _save(trained, run_dir, step, *, keep=3):
    task, preprocessor = trained
    return save_checkpoint(
        task, preprocessor=preprocessor, run_dir=run_dir, step=step, state={}, keep=keep
    )


def test_checkpoint_holds_preset_optimizer_and_state(trained, saved):
    task, _ = trained
    run_dir, path = saved
    assert path == run_dir / "checkpoints" / "step-2"
    assert sorted(p.name for p in path.iterdir()) == [
        "manifest.json", "optimizer.npz", "preset", "random.npz", "state.json"
    ]
    assert json.loads((path / "state.json").read_text()) == {"step": 2, "epoch": 0}
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-2"]
    assert task.preprocessor is None


def test_checkpoint_preset_loads_with_preprocessor_and_exact_weights(trained, saved):
    task, _ = trained
    _, path = saved
    loaded = keras_hub.models.MaskedLM.from_preset(str(path / "preset"))
    assert isinstance(loaded, keras_hub.models.BertMaskedLM)
    assert isinstance(loaded.preprocessor, keras_hub.models.BertMaskedLMPreprocessor)
    assert loaded.preprocessor.sequence_length == SEQUENCE_LENGTH
    assert loaded.preprocessor.tokenizer.get_vocabulary() == TINY_VOCABULARY
    expected, actual = task.get_weights(), loaded.get_weights()
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(a, e)


def test_retention_keeps_the_newest_steps_by_number(trained, tmp_path):
    for step in (2, 9, 10):
        _save(trained, tmp_path, step, keep=2)
    assert list(list_checkpoints(tmp_path)) == [9, 10]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-10", "step-9"]
    _save(trained, tmp_path, 11, keep=1)
    assert list_checkpoints(tmp_path) == {11: tmp_path / "checkpoints" / "step-11"}


def test_incomplete_checkpoints_are_ignored(tmp_path):
    complete = _fake_checkpoint(tmp_path, "step-3")
    _fake_checkpoint(tmp_path, ".step-7.tmp")  # a crash before the final rename
    _fake_checkpoint(tmp_path, "step-9", complete=False)  # no manifest: never renamed so
    _fake_checkpoint(tmp_path, "step-x")
    assert list_checkpoints(tmp_path) == {3: complete}
    assert latest_checkpoint(tmp_path) == complete
    assert find_checkpoint(tmp_path, step=None) == complete


def test_no_checkpoints_gives_none_and_find_raises(tmp_path):
    assert list_checkpoints(tmp_path) == {}
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(MlmError, match="no complete checkpoint"):
        find_checkpoint(tmp_path, step=None)


def test_find_checkpoint_returns_the_step_or_lists_the_available_steps(tmp_path):
    for step in (12, 3, 6):
        _fake_checkpoint(tmp_path, f"step-{step}")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-12"
    assert find_checkpoint(tmp_path, step=6) == tmp_path / "checkpoints" / "step-6"
    with pytest.raises(MlmError) as excinfo:
        find_checkpoint(tmp_path, step=5)
    assert "step 5" in str(excinfo.value)
    assert "available steps: 3, 6, 12." in str(excinfo.value)


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_save_failing_in_numpy_savez_keeps_previous_checkpoints(trained, tmp_path, monkeypatch):
    first = _save(trained, tmp_path, 1)
    before = _snapshot(first)

    def failing_savez(path, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(np, "savez", failing_savez)
    for step in (2, 1):  # a new step, and a re-save over the existing one
        with pytest.raises(MlmError) as excinfo:
            _save(trained, tmp_path, step)
        message = str(excinfo.value)
        assert f"could not write the checkpoint of step {step}" in message
        assert "No space left on device" in message and "optimizer.npz" in message
        assert f"the last checkpoint is {first}, left intact" in message
        assert "\n" not in message
        assert list_checkpoints(tmp_path) == {1: first}
        assert verify_checkpoint(first) is None
        assert _snapshot(first) == before
        assert trained[0].preprocessor is None
    monkeypatch.undo()

    second = _save(trained, tmp_path, 2)
    assert list_checkpoints(tmp_path) == {1: first, 2: second}
    assert second == tmp_path / "checkpoints" / "step-2"
    assert not (tmp_path / "checkpoints" / ".step-2.tmp").exists()


def test_save_failing_in_save_to_preset_keeps_previous_and_detaches(
    trained, tmp_path, monkeypatch
):
    task, _ = trained
    first = _save(trained, tmp_path, 1)
    before = _snapshot(first)

    def failing_save_to_preset(self, preset_dir, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(task), "save_to_preset", failing_save_to_preset)
    with pytest.raises(MlmError, match="No space left on device"):
        _save(trained, tmp_path, 2)
    monkeypatch.undo()
    assert task.preprocessor is None
    assert list_checkpoints(tmp_path) == {1: first}
    assert latest_checkpoint(tmp_path) == first
    assert _snapshot(first) == before


def _seed_states(task):
    return [v.numpy() for v in task.variables if v.name == "seed_generator_state"]


def test_restored_training_state_continues_bit_for_bit(trained, saved):
    """Optimizer and dropout seeds come back exactly: the next step is the uninterrupted one.

    Trains `trained` one step further: later tests must not compare it with `saved`.
    """
    task, preprocessor = trained
    _, path = saved
    fresh = keras_hub.models.MaskedLM.from_preset(str(path / "preset"))
    compile_task(fresh, small_recipe().train)
    fresh.preprocessor = None
    # The preset alone does not hold the dropout seeds: a load draws new ones.
    assert len(_seed_states(task)) == 4
    assert all(not np.array_equal(a, e) for a, e in zip(_seed_states(fresh), _seed_states(task),
                                                        strict=True))

    assert restore_training_state(fresh, path) == 2
    expected = task.optimizer.variables
    actual = fresh.optimizer.variables
    # Same variables in the same order; only the optimizer's own name differs.
    assert [v.path.split("/", 1)[1] for v in actual] == [
        v.path.split("/", 1)[1] for v in expected
    ]
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(a.numpy(), e.numpy())
    for a, e in zip(_seed_states(fresh), _seed_states(task), strict=True):
        np.testing.assert_array_equal(a, e)

    x, y, w = preprocessor(TINY_TEXT)
    fresh.train_on_batch(x, y, sample_weight=w)
    task.train_on_batch(x, y, sample_weight=w)
    assert int(fresh.optimizer.iterations.numpy()) == 3
    for a, e in zip(fresh.get_weights(), task.get_weights(), strict=True):
        np.testing.assert_array_equal(a, e)


def test_restore_optimizer_into_a_different_model_raises(saved):
    _, path = saved
    other, _ = _task(hidden_dim=8)
    with pytest.raises(MlmError) as excinfo:
        restore_optimizer(other, path)
    assert str(path) in str(excinfo.value)
    assert "does not match the model" in str(excinfo.value)


def test_manifest_lists_every_file_with_its_size_and_sha256(saved):
    import hashlib

    _, path = saved
    manifest = json.loads((path / "manifest.json").read_text())
    files = sorted(
        p.relative_to(path).as_posix() for p in path.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    )
    assert sorted(manifest["files"]) == files
    assert "preset/model.weights.h5" in files and "random.npz" in files
    for name, entry in manifest["files"].items():
        data = (path / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert verify_checkpoint(path) is None


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_corrupt_checkpoint_is_reported_and_the_previous_one_used(trained, tmp_path):
    first, second = _save(trained, tmp_path, 1), _save(trained, tmp_path, 2)
    _flip_a_byte(second / "preset" / "model.weights.h5")
    reports = []
    assert latest_checkpoint(tmp_path, report=reports.append) == first
    assert reports == [
        f"checkpoint {second} is corrupt (preset/model.weights.h5 does not match its SHA-256 "
        f"in the manifest); skipping it"
    ]
    with pytest.raises(MlmError) as excinfo:
        find_checkpoint(tmp_path, step=None)
    assert str(excinfo.value) == (
        f"checkpoint {second} is corrupt (preset/model.weights.h5 does not match its SHA-256 "
        f"in the manifest); pass --step with another of: 1."
    )
    assert find_checkpoint(tmp_path, step=1) == first
    out = tmp_path / "exported"
    with pytest.raises(MlmError, match="is corrupt"):
        export_checkpoint(tmp_path, out=out, step=2)
    assert not out.exists()


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda p: (p / "optimizer.npz").unlink(), "optimizer.npz is missing"),
        (lambda p: (p / "random.npz").write_bytes(b""), "random.npz has 0 bytes"),
        (lambda p: (p / "manifest.json").write_text("{"), "unreadable manifest.json"),
    ],
)
def test_truncated_missing_or_unreadable_files_fail_verification(
    trained, tmp_path, damage, problem
):
    path = _save(trained, tmp_path, 3)
    damage(path)
    assert problem in verify_checkpoint(path)
    with pytest.raises(MlmError) as excinfo:
        latest_checkpoint(tmp_path)
    assert f"no checkpoint in {tmp_path / 'checkpoints'} verifies (step-3: {problem}" in str(
        excinfo.value
    )


def test_partial_checkpoint_folders_are_removed(tmp_path):
    kept = _fake_checkpoint(tmp_path, "step-3")
    partial = [
        _fake_checkpoint(tmp_path, ".step-7.tmp"),  # killed while writing
        _fake_checkpoint(tmp_path, ".step-1.old"),  # killed while deleting
    ]
    assert remove_partial(tmp_path) == sorted(partial)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [kept.name]


def test_nan_weights_are_never_written(trained, tmp_path):
    task, _ = trained
    first = _save(trained, tmp_path, 1)
    variable = task.backbone.trainable_weights[0]
    saved = variable.numpy()
    poisoned = saved.copy()
    poisoned.flat[0] = np.nan
    variable.assign(poisoned)
    try:
        with pytest.raises(MlmError) as excinfo:
            _save(trained, tmp_path, 2)
    finally:
        variable.assign(saved)
    message = str(excinfo.value)
    assert "NaN or infinite values after step 2" in message and variable.path in message
    assert f"the last checkpoint is {first}" in message
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-1"]
