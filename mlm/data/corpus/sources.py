"""Local sources: finding and checking files, the held-out hash, the fingerprint.

Paths, directories and globs expand to sorted files of the formats in
`mlm.data.corpus.formats`; each file is then read once in full to check it
and hash its content into the fingerprint that keys the token cache.
"""

import glob
import hashlib
import json
from pathlib import Path

from mlm.data.corpus.formats import READERS, SUPPORTED, format_of
from mlm.errors import MlmError

# Bumped when the way documents are cut out of files changes, so that token
# caches built by an older version are not reused.
_FORMAT_VERSION = 2
# A text file larger than this without a blank line gets a hint: it reads as
# one document, and was probably meant as one document per line.
UNBROKEN_HINT_BYTES = 1 << 20


def expand_paths(paths: tuple[str, ...], *, field: str) -> tuple[str, ...]:
    """Absolute, sorted, distinct files named by paths, directories and globs."""
    files = set()
    for spec in paths:
        files.update(_expand_one(spec, field=field))
    return tuple(sorted(files))


def _expand_one(spec: str, *, field: str) -> list[str]:
    path = Path(spec).expanduser()
    if glob.has_magic(spec):
        matches = glob.glob(str(path), recursive=True)
        files = [f for m in matches for f in _supported_files(Path(m))]
        if not files:
            raise MlmError(
                f"{field} pattern '{spec}' matched no {SUPPORTED} file; check the pattern."
            )
        return files
    if path.is_dir():
        files = _supported_files(path)
        if not files:
            raise MlmError(
                f"{field} directory '{spec}' holds no {SUPPORTED} file; "
                f"pass a directory with text files, or the files themselves."
            )
        return files
    if not path.is_file():
        raise MlmError(f"{field} file '{spec}' does not exist; check the path.")
    if not format_of(path.name):
        raise MlmError(
            f"{field} file '{spec}' has an unsupported extension; "
            f"pass {SUPPORTED} files."
        )
    return [str(path.resolve())]


def _supported_files(path: Path) -> list[str]:
    """`path` itself, or the files under a directory, that have a supported extension."""
    if path.is_file():
        candidates = [path]
    else:
        # Hidden files and folders (`.git`, `.cache`) are not corpus content.
        candidates = [
            p for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]
    return [str(p.resolve()) for p in candidates if format_of(p.name)]


def check_disjoint(train_files: tuple[str, ...], held_out_files: tuple[str, ...]) -> None:
    """Refuses a file that is both a train and a held-out file."""
    both = sorted(set(train_files) & set(held_out_files))
    if both:
        raise MlmError(
            f"held-out file '{both[0]}' is also in corpus.paths; held-out text must not "
            f"be trained on, so remove it from one of corpus.paths, corpus.held_out_paths."
        )


def scan_files(
    files: tuple[str, ...], *, text_column: str, field: str, errors: str
) -> tuple[list[list[str]], list[tuple[str, int]]]:
    """Validates files in one full read each.

    Returns:
        `[format, content digest]` for each file; and `(path, bytes)` for every
        text file of more than `UNBROKEN_HINT_BYTES` without a blank line.
    """
    scans, unbroken, has_text = [], [], False
    for path in files:
        fmt = format_of(path)
        reader = READERS[fmt]
        scan = reader.scan(path, errors=errors)
        if fmt == "text" and scan.size > UNBROKEN_HINT_BYTES and not scan.blank_line:
            unbroken.append((path, scan.size))
        if scan.has_text:
            _check_text_column(reader.columns(path, errors=errors), path=path,
                               text_column=text_column)
        has_text = has_text or scan.has_text
        scans.append([fmt, scan.digest])
    if files and not has_text:
        shown = ", ".join(f"'{f}'" for f in files[:3]) + (", ..." if len(files) > 3 else "")
        raise MlmError(
            f"{field} holds no text: {shown} (empty or whitespace only); "
            f"pass files with at least one non-blank document."
        )
    return scans, unbroken


def _check_text_column(columns: list[str] | None, *, path: str, text_column: str) -> None:
    """Refuses a tabular file without the text column; `columns` is None for plain text."""
    if columns is not None and text_column not in columns:
        raise MlmError(
            f"'{path}' has no column '{text_column}' (columns found: "
            f"{', '.join(map(str, columns)) or 'none'}); set corpus.text_column "
            f"to the column that holds the text."
        )


def is_held_out(document: str, *, fraction: float) -> bool:
    """Whether a document is held out, from a stable hash of its text alone."""
    digest = hashlib.blake2b(document.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def fingerprint(sources: dict, *, settings: dict) -> str:
    """Hex digest of file contents (not names or times) and the settings that matter."""
    record = {"version": _FORMAT_VERSION, "sources": sources, "settings": settings}
    payload = json.dumps(record, sort_keys=True).encode("utf-8")
    return hashlib.blake2b(payload, digest_size=16).hexdigest()
