"""The run directory: create, refuse, overwrite, resume, and clean up on failure.

A run directory holds everything needed to resume or reproduce the run:
`config.json` (the resolved recipe), `vocab/`, `cache/` (token cache),
`checkpoints/`, `metrics.jsonl`, `curves.png` and the final `preset/`.
"""

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from mlm.config import Recipe, recipe_from_dict
from mlm.errors import MlmError
from mlm.run import checkpoints

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
    """Refuses a run directory that cannot be written, before any work is done."""
    folder = Path(run_dir).resolve()
    while not folder.exists():
        folder = folder.parent
    probe = folder / f".mlm-write-probe-{os.getpid()}"
    try:
        with open(probe, "w") as f:
            f.write("probe")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise MlmError(
            f"cannot write to {folder} ({e.strerror or e}); fix its permissions or free "
            f"space, or choose another --run-dir."
        ) from None


def clean_interrupted(run_dir: Path, *, say: Callable[[str], None]) -> None:
    """Deletes the half-written folders a killed process left in `run_dir`.

    Partial checkpoints (`checkpoints/.step-N.tmp`, `.step-N.old`), partial
    token caches (`cache/.KEY.tmp-PID`) and a partial final preset
    (`.preset.tmp`). Call only while holding `run_lock`.
    """
    run_dir = Path(run_dir)
    removed = checkpoints.remove_partial(run_dir)
    leftovers = [*run_dir.glob("cache/.*.tmp-*"), *run_dir.glob(".preset.tmp")]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    removed += leftovers
    if removed:
        names = ", ".join(str(p.relative_to(run_dir)) for p in removed)
        say(f"removed what an interrupted run left half-written: {names}")


def trim_metrics(path: Path, *, step: int) -> int:
    """Drops the metrics records a resumed run will write again; returns how many.

    Records up to `step` (the checkpoint resumed from) stay; later ones, and a
    last line cut short by a crash, go. At step 0 the run restarts, so every
    record with a step goes. Records without a step (corpus reports) stay.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if "step" not in record or (step > 0 and record["step"] <= step):
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, path)
    return dropped


@contextlib.contextmanager
def removed_on_failure(run_dir: Path, *, fresh: bool):
    """Removes a fresh run directory if setup fails before any checkpoint exists."""
    try:
        yield
    except BaseException:
        if fresh and not checkpoints.list_checkpoints(run_dir):
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
    process never blocks a resume. (On NFS, flock needs a server that supports
    it.) Holding the lock, it checks that the directory can be written, so a
    resume into a read-only directory fails before any training.
    """
    import fcntl

    _check_writable(run_dir)
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
