"""Atomic writes: a reader sees the old file or folder or the new one, never a part.

Every writer in mlm goes through here. The new content goes to a hidden
temporary sibling (`.NAME.tmp`), is fsynced, and is renamed over the target
(atomic on POSIX within one file system); the parent folder is then fsynced
so the rename survives a power cut. A failure removes the temporary and
leaves the target as it was.

```python
from mlm import atomic
atomic.write_json(run_dir / "summary.json", summary)
with atomic.writing_file(out / "loss.png") as tmp:   # tmp keeps the suffix
    figure.savefig(tmp)
with atomic.writing_dir(out / "vocab") as tmp:        # a folder, all or nothing
    (tmp / "vocab.txt").write_text(...)
```
"""

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def temporary_sibling(path: Path) -> Path:
    """`.NAME.tmp` beside `path`, keeping its suffix (`.loss.tmp.png` for `loss.png`)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


def is_temporary(path: Path) -> bool:
    """Whether `path` is a leftover temporary of this module (a write that was killed)."""
    name = Path(path).name
    return name.startswith(".") and ".tmp" in name


@contextlib.contextmanager
def writing_file(path: Path) -> Iterator[Path]:
    """Yields a temporary path to write; on success it replaces `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes(path: Path, data: bytes) -> None:
    """Writes `data` to `path` atomically."""
    with writing_file(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    """Writes UTF-8 `text` to `path` atomically (no newline translation)."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data, *, indent: int = 2) -> None:
    """Writes `data` as JSON to `path` atomically."""
    write_text(path, json.dumps(data, indent=indent) + "\n")


@contextlib.contextmanager
def writing_dir(path: Path) -> Iterator[Path]:
    """Yields an empty temporary folder to fill; on success it replaces `path`.

    `path` may be missing, an empty folder, or a complete earlier version
    (which is renamed away, then deleted, so no reader sees a mix). Every file
    in the new folder is fsynced before the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        if path.exists():
            remove_dir(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)


def copy_dir(source: Path, dest: Path) -> None:
    """Copies folder `source` to `dest` atomically."""
    with writing_dir(dest) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)


def remove_dir(path: Path) -> None:
    """Deletes a folder, renaming it to `.NAME.old` first so it is never seen half gone."""
    path = Path(path)
    doomed = path.with_name(f".{path.name}.old")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def fsync_file(path: Path) -> None:
    """Flushes a written file to disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Makes a rename or new entry in `path` durable (POSIX: fsync the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Fsyncs every file and folder under `root`, then `root` itself."""
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and not path.is_symlink():
            fsync_file(path)
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(root)
