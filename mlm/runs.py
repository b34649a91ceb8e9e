"""The run directory: create, refuse, overwrite, resume, and clean up on failure.

A run directory holds everything needed to resume or reproduce the run:
`config.json` (the resolved recipe), `vocab/`, `cache/` (token cache),
`checkpoints/`, `metrics.jsonl`, `curves.png` and the final `preset/`.
"""

import contextlib
import json
import shutil
from pathlib import Path

from mlm import checkpoints
from mlm.config import Recipe, recipe_from_dict
from mlm.errors import MlmError

CONFIG_FILE = "config.json"


def load_run_recipe(run_dir: Path) -> Recipe:
    """The resolved recipe saved in an existing run directory (for `--resume`)."""
    saved = Path(run_dir) / CONFIG_FILE
    if not saved.is_file():
        raise MlmError(
            f"cannot resume: {run_dir} is not a run directory (no {CONFIG_FILE}); "
            f"start a new run without --resume."
        )
    return recipe_from_dict(json.loads(saved.read_text()))


def create_run_dir(run_dir: Path, *, recipe: Recipe, overwrite: bool) -> None:
    """Creates a fresh run directory holding the resolved recipe."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise MlmError(f"run directory {run_dir} is a file; pass a directory path.")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise MlmError(
                f"run directory {run_dir} already exists; pass --resume to continue it, "
                f"--overwrite to replace it, or choose another --run-dir."
            )
        with run_lock(run_dir):  # never delete a run another process is training
            pass
        shutil.rmtree(run_dir)
    _check_writable(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_run_recipe(run_dir, recipe)


def save_run_recipe(run_dir: Path, recipe: Recipe) -> None:
    checkpoints.write_json_atomic(Path(run_dir) / CONFIG_FILE, recipe.to_dict())


def _check_writable(run_dir: Path) -> None:
    parent = run_dir.resolve().parent
    while not parent.exists():
        parent = parent.parent
    probe = parent / ".mlm-write-probe"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise MlmError(
            f"cannot write to {parent} ({e.strerror}); choose another --run-dir."
        ) from None


@contextlib.contextmanager
def removed_on_failure(run_dir: Path, *, fresh: bool):
    """Removes a fresh run directory if setup fails before any checkpoint exists."""
    try:
        yield
    except BaseException:
        if fresh and checkpoints.latest_checkpoint(run_dir) is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def with_steps(recipe: Recipe, steps: int) -> Recipe:
    """`recipe` with `train.steps` replaced, to extend a resumed run."""
    data = recipe.to_dict()
    data["train"]["steps"] = steps
    return recipe_from_dict(data)


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Holds `run_dir/.lock` so that one process at a time trains in a run directory.

    The lock is an `flock` on that file: the operating system releases it when
    the process exits in any way, SIGKILL included, so a stale lock from a dead
    process never blocks a resume.
    """
    import fcntl
    import os

    path = Path(run_dir) / ".lock"
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise MlmError(
            f"run directory {run_dir} is in use by {owner}; wait for it to finish or stop "
            f"it, or choose another --run-dir."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}")
    handle.flush()
    try:
        yield
    finally:
        handle.close()
