"""Atomic checkpoints: a keras-hub preset plus the training state beside it.

`run_dir/checkpoints/step-N/` holds `preset/` (written by `save_to_preset`,
loadable by `keras_hub.models.MaskedLM.from_preset`), `optimizer.npz` (every
optimizer variable, the step counter included) and `state.json`. A
checkpoint is written under a temporary name and renamed when complete, so a
crash mid-save never leaves a folder that looks complete; `state.json` is the
last file written and marks completeness.
"""

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

from mlm.errors import MlmError

_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> dict[int, Path]:
    """Complete checkpoints of a run, by step."""
    root = checkpoint_root(run_dir)
    found = {}
    if root.is_dir():
        for child in root.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and (child / "state.json").is_file():
                found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(run_dir)
    return found[max(found)] if found else None


def find_checkpoint(run_dir: Path, *, step: int | None) -> Path:
    """The checkpoint at `step` (the newest when None); `MlmError` if absent."""
    found = list_checkpoints(run_dir)
    if not found:
        raise MlmError(f"no complete checkpoint in {run_dir}; train first or check the path.")
    if step is None:
        return found[max(found)]
    if step not in found:
        raise MlmError(
            f"no checkpoint at step {step} in {run_dir}; available steps: "
            f"{', '.join(map(str, found))}."
        )
    return found[step]


def save_checkpoint(
    task, *, preprocessor, run_dir: Path, step: int, state: dict, keep: int
) -> Path:
    """Writes `task` (with `preprocessor`) and its optimizer at `step`.

    Training runs with `task.preprocessor = None` (batches come preprocessed
    from `mlm.pipeline`); the preprocessor is attached only while saving, so
    the preset loads as a complete keras-hub task. Keeps the newest `keep`.
    """
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with _outside_distribution():
            _write_checkpoint(task, preprocessor=preprocessor, folder=tmp, step=step, state=state)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for path in list(list_checkpoints(run_dir).values())[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    return final


def _write_checkpoint(task, *, preprocessor, folder: Path, step: int, state: dict) -> None:
    import keras

    # Keras saves a compiled model's optimizer into task.weights.h5. Swap in the
    # fresh Adam that keras-hub's default `MaskedLM.compile()` creates, so the preset
    # is what keras-hub itself writes: no training state shipped, no load warnings.
    optimizer = task.optimizer
    task.preprocessor, task.optimizer = preprocessor, keras.optimizers.Adam(5e-5)
    try:
        task.save_to_preset(str(folder / "preset"))
    finally:
        task.preprocessor, task.optimizer = None, optimizer
    arrays = {f"v{i}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)}
    np.savez(folder / "optimizer.npz", **arrays)
    write_json_atomic(folder / "state.json", {"step": step, **state})  # last: marks complete
    _fsync_tree(folder)


@contextlib.contextmanager
def _outside_distribution():
    """No `keras.distribution` while saving (set in multi-process JAX runs).

    Only process 0 saves, but keras creates variables while saving (the fresh
    Adam of `_write_checkpoint`, a reference optimizer in `saving_lib`), and
    creating a distributed variable is a collective every process must join.
    """
    import keras

    distribution = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(distribution)


def restore_optimizer(task, checkpoint: Path) -> int:
    """Loads the optimizer variables saved beside `checkpoint`; returns the step."""
    optimizer = task.optimizer
    optimizer.build(task.trainable_variables)
    with np.load(checkpoint / "optimizer.npz") as saved:
        arrays = [saved[f"v{i}"] for i in range(len(saved.files))]
    variables = optimizer.variables
    if len(arrays) != len(variables) or any(
        tuple(a.shape) != tuple(v.shape) for a, v in zip(arrays, variables, strict=False)
    ):
        raise MlmError(
            f"the optimizer state in {checkpoint} does not match the model; "
            f"resume with the recipe the run was started with."
        )
    for variable, array in zip(variables, arrays, strict=False):
        variable.assign(array)
    return int(json.loads((checkpoint / "state.json").read_text())["step"])


def write_json_atomic(path: Path, data) -> None:
    """Writes JSON to `path` through a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
