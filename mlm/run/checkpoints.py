"""Atomic, verified checkpoints: a keras-hub preset plus the training state beside it.

`run_dir/checkpoints/step-N/` holds
- `preset/`, written by `save_to_preset` and loadable by
  `keras_hub.models.MaskedLM.from_preset`;
- `optimizer.npz`, every optimizer variable, the step counter included;
- `random.npz`, the state of every `keras.random.SeedGenerator` of the model
  (dropout), which the preset does not hold: a resumed run draws the dropout
  masks an uninterrupted one would;
- `state.json`, the step and facts about the run;
- `manifest.json`, written last: every other file with its size and SHA-256.

A checkpoint is written into `.step-N.tmp/`, fsynced, then renamed to
`step-N/` (`mlm.atomic.writing_dir`), so a crash never leaves a folder that
looks complete; old ones are renamed to `.step-N.old/` before they are
deleted (`mlm.atomic.remove_dir`), so a crash mid-delete never leaves a
half-deleted `step-N/`. `remove_partial` clears both leftovers.
Resuming takes the newest checkpoint whose manifest verifies: one whose files
changed since they were written (a bad disk, a partial copy) is reported and
skipped for the previous one.
"""

import contextlib
import hashlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mlm import atomic
from mlm.architectures import preprocessor_attached
from mlm.errors import MlmError
from mlm.faults import fault_point
from mlm.training.distributed import outside_distribution
from mlm.training.step_settings import float32_for_saving

MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_PARTIAL_DIR = re.compile(r"^\.step-\d+\.(tmp|old)$")
_HASH_CHUNK = 1 << 20
# `keras.random.SeedGenerator` names its state variable so (keras/src/random/seed_generator.py).
_SEED_STATE_NAME = "seed_generator_state"


def checkpoint_root(run_dir: Path) -> Path:
    """`run_dir/checkpoints`, also `mlm.run.directory.RunDir.checkpoints`."""
    return Path(run_dir) / "checkpoints"


def preset_of(checkpoint: Path) -> Path:
    """The keras-hub preset folder inside `checkpoint`."""
    return Path(checkpoint) / "preset"


def list_checkpoints(run_dir: Path) -> dict[int, Path]:
    """Complete checkpoints of a run (those with a manifest), by step; not verified."""
    root = checkpoint_root(run_dir)
    found = {}
    if root.is_dir():
        for child in root.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and (child / MANIFEST).is_file():
                found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def verify_checkpoint(path: Path) -> str | None:
    """What is wrong with checkpoint `path` (a file missing or changed), or None."""
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable {MANIFEST} ({e})"
    for name, expected in files.items():
        file = Path(path) / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["size"]:
            return f"{name} has {file.stat().st_size} bytes, the manifest says {expected['size']}"
        if _sha256(file) != expected["sha256"]:
            return f"{name} does not match its SHA-256 in the manifest"
    return None


def latest_checkpoint(run_dir: Path, *, report: Callable[[str], None] | None = None):
    """The newest checkpoint that verifies, or None when there is no checkpoint.

    Each newer one that fails verification is passed to `report` (one line)
    and skipped.

    Raises:
        MlmError: checkpoints exist but none of them verifies.
    """
    found = list_checkpoints(run_dir)
    problems = []
    for step in reversed(found):
        problem = verify_checkpoint(found[step])
        if problem is None:
            return found[step]
        problems.append(f"step-{step}: {problem}")
        if report is not None:
            report(f"checkpoint {found[step]} is corrupt ({problem}); skipping it")
    if problems:
        raise MlmError(
            f"no checkpoint in {checkpoint_root(run_dir)} verifies ({'; '.join(problems)}); "
            f"start the run again with --overwrite."
        )
    return None


def find_checkpoint(run_dir: Path, *, step: int | None) -> Path:
    """The verified checkpoint at `step` (the newest when None); `MlmError` if absent or corrupt."""
    found = list_checkpoints(run_dir)
    if not found:
        raise MlmError(f"no complete checkpoint in {run_dir}; train first or check the path.")
    if step is None:
        step = max(found)
    if step not in found:
        raise MlmError(
            f"no checkpoint at step {step} in {run_dir}; available steps: "
            f"{', '.join(map(str, found))}."
        )
    problem = verify_checkpoint(found[step])
    if problem is not None:
        others = [str(s) for s in found if s != step]
        hint = f"pass --step with another of: {', '.join(others)}" if others else "retrain"
        raise MlmError(f"checkpoint {found[step]} is corrupt ({problem}); {hint}.")
    return found[step]


def last_checkpoint_note(run_dir: Path) -> str:
    """Names the newest checkpoint of a run, for error messages."""
    found = list_checkpoints(run_dir)
    if not found:
        return "no checkpoint was written before"
    return f"the last checkpoint is {found[max(found)]}"


def remove_partial(run_dir: Path) -> list[Path]:
    """Deletes what interrupted checkpoint writes and deletions left; returns it.

    Call only while holding the run's lock: a `.step-N.tmp` of a live process
    would be deleted from under it.
    """
    root = checkpoint_root(run_dir)
    removed = []
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if _PARTIAL_DIR.match(child.name):
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    return removed


def save_checkpoint(
    task, *, preprocessor, run_dir: Path, step: int, state: dict, keep: int
) -> Path:
    """Writes `task` (with `preprocessor`) and its training state at `step`.

    Training runs with `task.preprocessor = None` (batches come preprocessed
    from `mlm.data.pipeline`); the preprocessor is attached only while saving, so
    the preset loads as a complete keras-hub task. Keeps the newest `keep`.

    Raises:
        MlmError: the weights or optimizer state hold NaN or infinity (nothing
            is written), or a write failed (the earlier checkpoints are left
            as they were and the partial one is removed).
    """
    _check_finite(task, step=step, run_dir=run_dir)
    root = checkpoint_root(run_dir)
    try:
        # Written as `.step-N.tmp/`; replaces an earlier save of the same step
        # (after a signal) through `.step-N.old/`.
        with atomic.writing_dir(root / f"step-{step}") as tmp, outside_distribution():
            _write_checkpoint(task, preprocessor=preprocessor, folder=tmp, step=step, state=state)
    except OSError as e:
        raise MlmError(
            f"could not write the checkpoint of step {step} in {root} ({_reason(e)}); "
            f"{last_checkpoint_note(run_dir)}, left intact: free disk space or fix the "
            f"folder, then resume with --resume."
        ) from e
    fault_point("checkpoint_commit", step=step)
    for path in list(list_checkpoints(run_dir).values())[:-keep]:
        atomic.remove_dir(path)
    return root / f"step-{step}"


@contextlib.contextmanager
def optimizer_left_out(model):
    """Runs the block (a `save_to_preset`) with a fresh Adam in place of the model's optimizer.

    Keras saves a compiled model's optimizer into `task.weights.h5`. The fresh Adam
    is the one keras-hub's default `compile()` creates, so the preset is what
    keras-hub itself writes: no training state shipped, no load warnings.
    """
    import keras

    optimizer = model.optimizer
    model.optimizer = keras.optimizers.Adam(5e-5)
    try:
        yield
    finally:
        model.optimizer = optimizer


def _write_checkpoint(task, *, preprocessor, folder: Path, step: int, state: dict) -> None:
    optimizer = task.optimizer
    # See mlm.training.step_settings: keras-hub loads no mixed policy.
    with optimizer_left_out(task), preprocessor_attached(task, preprocessor), \
            float32_for_saving(task):
        task.save_to_preset(str(preset_of(folder)))
    fault_point("checkpoint_write", step=step)
    arrays = {f"v{i}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)}
    np.savez(folder / "optimizer.npz", **arrays)
    seeds = {f"v{i}": np.asarray(v.numpy()) for i, v in enumerate(seed_states(task))}
    np.savez(folder / "random.npz", **seeds)
    atomic.write_json(folder / "state.json", {"step": step, **state})
    _write_manifest(folder, step=step)  # last: marks the checkpoint complete


def _write_manifest(folder: Path, *, step: int) -> None:
    """Lists every file with its size and SHA-256 in `manifest.json`."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        files[name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    atomic.write_json(folder / MANIFEST, {"step": step, "files": files})


def restore_training_state(task, checkpoint: Path) -> int:
    """Restores the optimizer and random state saved beside `checkpoint`; returns the step."""
    step = restore_optimizer(task, checkpoint)
    restore_random_state(task, checkpoint)
    return step


def restore_optimizer(task, checkpoint: Path) -> int:
    """Loads the optimizer variables saved beside `checkpoint`; returns the step."""
    optimizer = task.optimizer
    optimizer.build(task.trainable_variables)
    _assign(optimizer.variables, checkpoint / "optimizer.npz", checkpoint=checkpoint)
    return int(json.loads((checkpoint / "state.json").read_text())["step"])


def restore_random_state(task, checkpoint: Path) -> None:
    """Sets every SeedGenerator of `task` to its state at `checkpoint`.

    Matched by position: layer names are numbered per process
    (`seed_generator_4`), but the model's structure fixes the order.
    """
    _assign(seed_states(task), checkpoint / "random.npz", checkpoint=checkpoint)


def seed_states(model) -> list:
    """The state of every `keras.random.SeedGenerator` (dropout), which weights omit.

    Saved and restored so that resumed steps draw the dropout masks an
    uninterrupted run would; matched by position.
    """
    return [v for v in model.variables if v.name == _SEED_STATE_NAME]


def _assign(variables: list, path: Path, *, checkpoint: Path) -> None:
    with np.load(path) as saved:
        arrays = [saved[f"v{i}"] for i in range(len(saved.files))]
    if len(arrays) != len(variables) or any(
        tuple(a.shape) != tuple(v.shape) for a, v in zip(arrays, variables, strict=False)
    ):
        raise MlmError(
            f"the {path.stem} state in {checkpoint} does not match the model; "
            f"resume with the recipe the run was started with."
        )
    for variable, array in zip(variables, arrays, strict=True):
        variable.assign(array)


def _check_finite(task, *, step: int, run_dir: Path) -> None:
    for variable in [*task.weights, *task.optimizer.variables]:
        if not np.all(np.isfinite(np.asarray(variable.numpy()))):
            raise MlmError(
                f"the model holds NaN or infinite values after step {step} (in "
                f"{variable.path}), so no checkpoint was written; "
                f"{last_checkpoint_note(run_dir)}. Lower train.learning_rate and train again."
            )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _reason(error: OSError) -> str:
    reason = error.strerror or str(error)
    return f"{reason}: {error.filename}" if error.filename else reason


class RunCheckpoints:
    """A run directory's checkpoints as the training loop sees them (`mlm.training.loop`).

    The loop imports nothing of `mlm.run`: `mlm.pretraining` hands it this
    object, which saves checkpoints (with the detached `preprocessor`, keeping
    the newest `keep`), lists them, reads a checkpoint's training state, and
    names the files and commands its messages need.
    """

    def __init__(self, run_dir: Path, *, preprocessor, keep: int):
        self.run_dir, self.preprocessor, self.keep = Path(run_dir), preprocessor, keep

    def save(self, task, *, step: int, state: dict) -> Path:
        return save_checkpoint(task, preprocessor=self.preprocessor, run_dir=self.run_dir,
                               step=step, state=state, keep=self.keep)

    def steps(self) -> list[int]:
        return sorted(list_checkpoints(self.run_dir))

    def state(self, step: int) -> dict:
        """The training state saved with the checkpoint of `step` (its `state.json`)."""
        path = find_checkpoint(self.run_dir, step=step) / "state.json"
        return json.loads(path.read_text())

    def note(self) -> str:
        return last_checkpoint_note(self.run_dir)

    @property
    def step_settings(self) -> Path:
        """The run's record of the train step's precision and XLA setting."""
        from mlm.run.directory import RunDir

        return RunDir(self.run_dir).step_settings

    def write_plan(self, plan) -> None:
        """Records the run plan (with its step settings) as `run_dir/plan.json`."""
        from mlm.run.directory import RunDir

        atomic.write_json(RunDir(self.run_dir).plan, plan.to_dict())

    @property
    def resume_command(self) -> str:
        return f"mlm pretrain --run-dir {self.run_dir} --resume"
