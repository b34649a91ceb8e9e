"""Raw documents from local files or a hub dataset, validated and split.

`resolve_corpus` turns a `CorpusConfig` into a `Corpus`: it expands paths,
directories and globs, checks every file in one full read (it exists, is
UTF-8 text, holds some text, has the text column) and hashes the content into
a fingerprint that keys the token cache. `iter_documents` then streams the
documents of one split with memory that does not grow with the corpus.

Formats:
- `.txt`, `.txt.gz`: blank lines (empty or whitespace only) separate documents;
  with `document_boundary="line"` every non-blank line is a document, with
  `"file"` the whole file is one.
- `.jsonl` (one JSON object per line), `.json` (JSON Lines, or an array of
  objects, which is read whole), `.csv` (with a header row), `.parquet`: one
  document per row, taken from `text_column`.
- one hub dataset name, `owner/name` or `owner/name:config`, streamed through
  `datasets.load_dataset(..., streaming=True)`.

Local files are read with the standard library, pandas (CSV) and pyarrow
(Parquet), the engines `datasets` uses itself, rather than through
`datasets.load_dataset`: in `datasets` 5.2 that call sends a download-count
request to the network for every local load, its text loader splits
paragraphs only on an exact "\\n\\n", and its JSON loader fails with a
`CastError` when a key first appears past the first 10 MB of a file.

Hostile text never stops a run and is never dropped silently: NUL
characters become spaces (TensorFlow's tokenizer would end a text at one),
lone surrogates become U+FFFD (they cannot be encoded to UTF-8), documents
longer than `MAX_DOCUMENT_CHARS` are cut into pieces at whitespace (a text
file is read at most that many characters at a time, so a 50 MB line without
a newline reads in bounded memory), and empty documents are skipped; each
is counted in the `tally` of `iter_documents` for the run log. Bytes that are
not UTF-8 are an error, or with `on_decode_error="replace"` each becomes
U+FFFD and is counted. CRLF and CR line ends read as LF.

The held-out split is either the files of `held_out_paths` or, without them,
the documents whose text hashes under `held_out_fraction`: it does not depend
on file order or on the run, and duplicated documents land on the same side.
"""

import codecs
import collections
import csv
import dataclasses
import glob
import gzip
import hashlib
import importlib.resources
import json
import re
import socket
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow
import pyarrow.parquet

from mlm.config import CorpusConfig
from mlm.errors import MlmError
from mlm.faults import fault_point

SPLITS = ("train", "held_out")

# File name endings we read, longest first so `.txt.gz` wins over `.gz`.
_FORMATS = {
    ".txt.gz": "text",
    ".txt": "text",
    ".jsonl": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}
_SUPPORTED = ", ".join(_FORMATS)
# Bumped when the way documents are cut out of files changes, so that token
# caches built by an older version are not reused.
_FORMAT_VERSION = 2
# Longest document handed on; longer ones are cut into pieces at whitespace,
# and text files are read this many characters at a time at most.
MAX_DOCUMENT_CHARS = 1 << 20
# A text file larger than this without a blank line gets a hint: it reads as
# one document, and was probably meant as one document per line.
UNBROKEN_HINT_BYTES = 1 << 20
# A blank line: a newline, optional whitespace, a newline.
_BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")
# With on_decode_error="replace", each undecodable byte is read as this
# noncharacter, which `_clean` turns into U+FFFD and counts. Unlike the lone
# surrogates of Python's "surrogateescape" it is valid UTF-8, which pandas'
# CSV parser needs; noncharacters do not occur in text.
_INVALID_BYTE = "\ufdd1"
_MARK_INVALID = "mlm.mark_invalid_bytes"
# NUL, marked bytes and lone surrogates: replaced in every document.
_UNSAFE_CHARS = re.compile("[\x00\ufdd1\ud800-\udfff]")
_CHUNK_BYTES = 1 << 20
# How much of a file decides whether it is binary.
_HEAD_BYTES = 1 << 16
# Control bytes that do not occur in text; above this share of the head, the
# file is binary. Tabs, newlines, form feed, backspace and escape are text.
_BINARY_SHARE = 0.1
_TEXT_BYTES = bytes(b for b in range(256) if b >= 0x20 and b != 0x7F or b in b"\t\n\v\f\r\b\x1b")
# `owner/name` or `name`, optionally `:config`, as on huggingface.co.
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?(:[\w.-]+)?")
_HUB_PROBE_TIMEOUT_S = 5.0


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A validated corpus: where its documents come from and how they split.

    Build it with `resolve_corpus`; read it with `iter_documents`.

    Attributes:
        train_files: Absolute paths of the local files, sorted; empty for a
            hub dataset.
        held_out_files: Absolute paths of separate held-out files, sorted.
            When empty, held-out documents are drawn from the train sources
            by a hash of their text.
        hub_name: The hub dataset (`owner/name[:config]`), or None.
        hub_split: The split of the hub dataset to read.
        text_column: Column holding the text in tabular files and hub data.
        held_out_fraction: Fraction of documents held out when there are no
            held-out files.
        on_decode_error: `"error"` or `"replace"`: what bytes that are not
            UTF-8 do.
        document_boundary: `"blank_line"`, `"line"` or `"file"`: what ends a
            document in a `.txt` file.
        hints: One-line hints for the user about the sources (a large text
            file without blank lines, which reads as one document).
        fingerprint: Hex digest of the content and of the settings that
            change the documents; the key of the token cache.
    """

    train_files: tuple[str, ...] = ()
    held_out_files: tuple[str, ...] = ()
    hub_name: str | None = None
    hub_split: str = "train"
    text_column: str = "text"
    held_out_fraction: float = 0.02
    on_decode_error: str = "error"
    document_boundary: str = "blank_line"
    fingerprint: str = ""
    hints: tuple[str, ...] = ()


def resolve_corpus(config: CorpusConfig) -> Corpus:
    """Validates the sources of `config` and fingerprints their content.

    Every local file is read once in full: to check it is UTF-8 text with at
    least one non-blank document and, for tabular files, the text column, and
    to hash it. A hub dataset is opened (not downloaded) to check it exists.

    Args:
        config: The corpus section of a recipe. Empty `paths` means the
            sample corpus shipped in `mlm.data`.

    Returns:
        The validated `Corpus`.

    Raises:
        MlmError: A path is missing, matches no supported file or has an
            unsupported extension; a file is binary, not UTF-8, empty, or
            lacks the text column; or the hub dataset cannot be opened.

    Example:

    >>> corpus = resolve_corpus(CorpusConfig())
    >>> next(iter_documents(corpus, split="train"))[:34]
    'In the beginning God created the h'
    """
    hub_name = _hub_name(config.paths)
    paths = config.paths or (str(sample_corpus_path()),)
    train_files = () if hub_name else _expand_paths(paths, field="corpus.paths")
    held_out_files = _expand_paths(config.held_out_paths, field="corpus.held_out_paths")
    _check_disjoint(train_files, held_out_files)
    if hub_name:
        _check_hub(hub_name, split=config.hub_split, text_column=config.text_column)
    errors = _codec_errors(config.on_decode_error)
    unbroken = []  # text files over 1 MB without a blank line
    sources = {
        "train": _scan_files(
            train_files, text_column=config.text_column, field="corpus.paths", errors=errors,
            unbroken=unbroken,
        ),
        "held_out": _scan_files(
            held_out_files, text_column=config.text_column, field="corpus.held_out_paths",
            errors=errors, unbroken=unbroken,
        ),
        "hub": [hub_name, config.hub_split] if hub_name else None,
    }
    fraction = None if held_out_files else config.held_out_fraction
    settings = {
        "text_column": config.text_column,
        "held_out_fraction": fraction,
        "on_decode_error": config.on_decode_error,
    }
    if config.document_boundary != "blank_line":
        # Only when set, so that the token caches of earlier runs keep their keys.
        settings["document_boundary"] = config.document_boundary
    hints = ()
    if unbroken and config.document_boundary == "blank_line":
        path, size = unbroken[0]
        more = f" (and {len(unbroken) - 1} more)" if len(unbroken) > 1 else ""
        hints = (f"hint: '{path}'{more} has no blank line in {size / 1e6:.1f} MB, so it reads "
                 f"as one document; if it holds one document per line, set "
                 f"corpus.document_boundary=line",)
    return Corpus(
        train_files=train_files,
        held_out_files=held_out_files,
        hub_name=hub_name,
        hub_split=config.hub_split,
        text_column=config.text_column,
        held_out_fraction=config.held_out_fraction,
        on_decode_error=config.on_decode_error,
        document_boundary=config.document_boundary,
        fingerprint=_fingerprint(sources, settings=settings),
        hints=hints,
    )


def iter_documents(
    corpus: Corpus, *, split: str, tally: collections.Counter | None = None
) -> Iterator[str]:
    """Streams the stripped, non-blank documents of one split.

    Documents come in file order (sorted paths), then in order within a file.
    Memory stays bounded by `MAX_DOCUMENT_CHARS` (and, for JSON and CSV, by
    the longest record), whatever the corpus size.

    Args:
        corpus: A corpus from `resolve_corpus`.
        split: `"train"` or `"held_out"`.
        tally: Receives what was repaired or skipped (see `describe_tally`):
            `"invalid_replaced"` (undecodable bytes or lone surrogates, now
            U+FFFD) and `"nul_replaced"` (NUL characters, now spaces) in the
            documents of this split; `"empty_skipped"` and `"long_cut"`
            (documents cut into pieces) among the documents read, counted
            once, in the train split, when the held-out split is drawn by hash;
            and `"documents"`, the documents yielded.

    Yields:
        Each document's text, stripped of surrounding whitespace, with no NUL
        or lone surrogate and at most `MAX_DOCUMENT_CHARS` long.

    Raises:
        MlmError: `split` is unknown, the train split turns out to hold no
            document, or a record is malformed.
    """
    if split not in SPLITS:
        raise MlmError(f"split must be one of {', '.join(SPLITS)}, but received split={split!r}.")
    # Checked above, not in the generator, so a bad split fails at the call.
    return _iter_split(corpus, split=split, tally=collections.Counter() if tally is None else tally)


def _iter_split(corpus: Corpus, *, split: str, tally: collections.Counter) -> Iterator[str]:
    by_hash = not corpus.held_out_files
    want_held_out = split == "held_out"
    # With a hashed split both splits read the same files: count what is not
    # any one document's (empty, cut) in the train pass only.
    events = collections.Counter() if by_hash and want_held_out else tally
    found = False
    for raw in _iter_sources(corpus, split=split, events=events):
        document, fixes = _clean(raw)
        document = document.strip()
        if not document:
            events["empty_skipped"] += 1
            continue
        if by_hash and _is_held_out(document, fraction=corpus.held_out_fraction) != want_held_out:
            continue
        tally.update(fixes)
        fault_point("read_document", split=split, index=tally["documents"])
        tally["documents"] += 1
        found = True
        yield document
    if split == "train" and not found:
        raise MlmError(
            f"the train split of the corpus holds no non-blank document "
            f"(held_out_fraction={corpus.held_out_fraction}); add text or lower "
            f"corpus.held_out_fraction."
        )


def describe_tally(tally: collections.Counter) -> str:
    """One line on what `iter_documents` repaired or skipped; empty if nothing."""
    parts = [
        f"{tally[key]:,} {what}"
        for key, what in (
            ("invalid_replaced", "undecodable bytes or lone surrogates replaced by U+FFFD"),
            ("nul_replaced", "NUL characters replaced by spaces"),
            ("empty_skipped", "empty documents skipped"),
            ("long_cut", f"documents over {MAX_DOCUMENT_CHARS:,} characters cut into pieces"),
        )
        if tally[key]
    ]
    return "; ".join(parts)


def count_documents(corpus: Corpus, *, split: str) -> int:
    """Counts the documents of one split by streaming through them."""
    return sum(1 for _ in iter_documents(corpus, split=split))


def sample_corpus_path() -> Path:
    """The sample corpus shipped in the package: the King James Bible, 1189 chapters."""
    return Path(str(importlib.resources.files("mlm.data") / "kjv.txt.gz"))


# Resolving paths.


def _hub_name(paths: tuple[str, ...]) -> str | None:
    """The hub dataset named by `paths`, if it is one name that is no local path."""
    if len(paths) != 1:
        return None
    name = paths[0]
    if glob.has_magic(name) or _format_of(name) or Path(name).expanduser().exists():
        return None
    return name if _HUB_NAME.fullmatch(name) else None


def _expand_paths(paths: tuple[str, ...], *, field: str) -> tuple[str, ...]:
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
                f"{field} pattern '{spec}' matched no {_SUPPORTED} file; check the pattern."
            )
        return files
    if path.is_dir():
        files = _supported_files(path)
        if not files:
            raise MlmError(
                f"{field} directory '{spec}' holds no {_SUPPORTED} file; "
                f"pass a directory with text files, or the files themselves."
            )
        return files
    if not path.is_file():
        raise MlmError(f"{field} file '{spec}' does not exist; check the path.")
    if not _format_of(path.name):
        raise MlmError(
            f"{field} file '{spec}' has an unsupported extension; "
            f"pass {_SUPPORTED} files."
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
    return [str(p.resolve()) for p in candidates if _format_of(p.name)]


def _format_of(name: str) -> str | None:
    lowered = name.lower()
    return next((fmt for ext, fmt in _FORMATS.items() if lowered.endswith(ext)), None)


def _check_disjoint(train_files: tuple[str, ...], held_out_files: tuple[str, ...]) -> None:
    both = sorted(set(train_files) & set(held_out_files))
    if both:
        raise MlmError(
            f"held-out file '{both[0]}' is also in corpus.paths; held-out text must not "
            f"be trained on, so remove it from one of corpus.paths, corpus.held_out_paths."
        )


# Validating and hashing files.


def _scan_files(
    files: tuple[str, ...], *, text_column: str, field: str, errors: str,
    unbroken: list | None = None,
) -> list[list[str]]:
    """Validates files; returns `[format, content digest]` for each.

    Appends `(path, bytes)` to `unbroken` for every text file of more than
    `UNBROKEN_HINT_BYTES` without a blank line.
    """
    scans, has_text = [], False
    for path in files:
        fmt = _format_of(path)
        digest, file_has_text, size, blank = _scan_file(path, fmt=fmt, errors=errors)
        if unbroken is not None and fmt == "text" and size > UNBROKEN_HINT_BYTES and not blank:
            unbroken.append((path, size))
        if file_has_text:
            _check_text_column(path, fmt=fmt, text_column=text_column, errors=errors)
        has_text = has_text or file_has_text
        scans.append([fmt, digest])
    if files and not has_text:
        shown = ", ".join(f"'{f}'" for f in files[:3]) + (", ..." if len(files) > 3 else "")
        raise MlmError(
            f"{field} holds no text: {shown} (empty or whitespace only); "
            f"pass files with at least one non-blank document."
        )
    return scans


def _scan_file(path: str, *, fmt: str, errors: str) -> tuple[str, bool, int, bool]:
    """Hashes a file in one read; checks that text formats are (UTF-8) text.

    Returns:
        The content digest; whether the file holds any non-blank text (for
        Parquet: any row); its size in bytes (decompressed); whether it has a
        blank line. A `.txt.gz` is hashed decompressed, so the digest does not
        depend on how it was compressed.
    """
    if fmt == "parquet":
        return (*_scan_parquet(path), 0, False)
    digest = hashlib.blake2b(digest_size=16)
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    offset, has_text, blank, tail = 0, False, False, b""
    for chunk in _read_chunks(path):
        if offset == 0:
            _check_not_binary(chunk[:_HEAD_BYTES], path=path)
        text = _decode(decoder, chunk, path=path, offset=offset)
        has_text = has_text or (bool(text) and not text.isspace())
        blank = blank or _BLANK_LINE.search(tail + chunk) is not None
        tail = chunk[-64:]
        digest.update(chunk)
        offset += len(chunk)
    # A file may end inside a multi-byte sequence: with errors replaced, that is text too.
    text = _decode(decoder, b"", path=path, offset=offset, final=True)
    has_text = has_text or (bool(text) and not text.isspace())
    return digest.hexdigest(), has_text, offset, blank


def _read_chunks(path: str) -> Iterator[bytes]:
    """The bytes of a file, decompressed if `.gz`, in chunks."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            while chunk := f.read(_CHUNK_BYTES):
                yield chunk
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise MlmError(
            f"'{path}' is not a valid gzip file ({_one_line(e)}); re-compress it with gzip, "
            f"or pass the uncompressed .txt."
        ) from e


def _check_not_binary(head: bytes, *, path: str) -> None:
    """Refuses a file whose head is mostly control bytes (NUL included): binary or UTF-16.

    A few stray NUL bytes in text are replaced and counted when reading instead.
    """
    control = len(head.translate(None, delete=_TEXT_BYTES))
    if control > _BINARY_SHARE * len(head):
        nul = head.find(b"\x00")
        where = f", a NUL byte at offset {nul}" if nul >= 0 else ""
        raise MlmError(
            f"'{path}' looks binary ({control} of its first {len(head)} bytes are control "
            f"characters{where}), not text; pass UTF-8 text files (convert UTF-16 text "
            f"to UTF-8)."
        )


def _decode(decoder, chunk: bytes, *, path: str, offset: int, final: bool = False) -> str:
    """Decodes a chunk as UTF-8, naming the file and byte offset on failure."""
    pending = len(decoder.getstate()[0])
    try:
        return decoder.decode(chunk, final=final)
    except UnicodeDecodeError as e:
        where = offset - pending + e.start
        raise MlmError(
            f"'{path}' is not valid UTF-8: byte 0x{e.object[e.start]:02x} at offset {where} "
            f"({e.reason}); re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8), or "
            f"set corpus.on_decode_error=replace to replace such bytes."
        ) from e


def _scan_parquet(path: str) -> tuple[str, bool]:
    try:
        rows = pyarrow.parquet.ParquetFile(path).metadata.num_rows
    except pyarrow.ArrowException as e:
        raise MlmError(
            f"'{path}' is not a valid Parquet file ({_one_line(e)}); rewrite it."
        ) from e
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest(), rows > 0


def _check_text_column(path: str, *, fmt: str, text_column: str, errors: str) -> None:
    columns = _columns_of(path, fmt=fmt, errors=errors)
    if columns is not None and text_column not in columns:
        raise MlmError(
            f"'{path}' has no column '{text_column}' (columns found: "
            f"{', '.join(map(str, columns)) or 'none'}); set corpus.text_column "
            f"to the column that holds the text."
        )


def _columns_of(path: str, *, fmt: str, errors: str) -> list[str] | None:
    """The columns of a tabular file, from its header; None for plain text."""
    if fmt == "parquet":
        return pyarrow.parquet.ParquetFile(path).schema_arrow.names
    if fmt == "csv":
        with open(path, encoding="utf-8-sig", errors=errors, newline="") as f:
            return next(csv.reader(f), [])
    if fmt in ("jsonl", "json"):
        record = _first_json_record(path, errors=errors)
        return None if record is None else list(_as_object(record, where=f"'{path}'"))
    return None


def _first_json_record(path: str, *, errors: str) -> object | None:
    """The first record of JSON Lines or of a JSON array; None if past the first MB."""
    with open(path, encoding="utf-8-sig", errors=errors) as f:
        head = f.read(_CHUNK_BYTES).lstrip()
    body = head[1:].lstrip() if head.startswith("[") else head
    if body.startswith("]"):
        return None  # An empty array: no record, no columns.
    try:
        record, _ = json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError as e:
        if len(head) >= _CHUNK_BYTES - 1:
            return None  # A first record over 1 MB: checked while reading instead.
        raise MlmError(f"'{path}' is not valid JSON ({e}); fix the file.") from e
    return record


# Reading documents.


def _iter_sources(
    corpus: Corpus, *, split: str, events: collections.Counter
) -> Iterator[str]:
    """The raw documents (at most `MAX_DOCUMENT_CHARS` long) of the sources feeding `split`."""
    errors = _codec_errors(corpus.on_decode_error)
    boundary = corpus.document_boundary
    if split == "held_out" and corpus.held_out_files:
        parts = _iter_files(corpus.held_out_files, text_column=corpus.text_column, errors=errors,
                            boundary=boundary)
    elif corpus.hub_name:
        texts = _read_hub(corpus.hub_name, split=corpus.hub_split, text_column=corpus.text_column)
        parts = ((text, True) for text in texts)
    else:
        parts = _iter_files(corpus.train_files, text_column=corpus.text_column, errors=errors,
                            boundary=boundary)
    return _assemble(parts, limit=MAX_DOCUMENT_CHARS, events=events)


def _iter_files(files: Iterable[str], *, text_column: str, errors: str, boundary: str):
    """`(text, ends_document)` parts of the documents of `files`."""
    readers = {
        "jsonl": _read_json_lines,
        "json": _read_json,
        "csv": _read_csv,
        "parquet": _read_parquet,
    }
    for path in files:
        fmt = _format_of(path)
        if fmt == "text":
            yield from _read_paragraphs(path, errors=errors, boundary=boundary)
        else:
            for text in readers[fmt](path, text_column=text_column, errors=errors):
                yield text, True


def _assemble(parts, *, limit: int, events: collections.Counter) -> Iterator[str]:
    """Joins `(text, ends_document)` parts into documents, cutting any over `limit`.

    Holds at most about two pieces of a document at a time. Every document is
    yielded, empty ones too, so that the caller can count them; pieces of a
    cut document that are only whitespace are not.
    """
    buffer, size, cut = [], 0, False
    for text, ends in parts:
        if text:
            buffer.append(text)
            size += len(text)
        if size > limit:
            *pieces, rest = _pieces("".join(buffer), limit=limit)
            yield from (piece for piece in pieces if not piece.isspace())
            buffer, size, cut = [rest], len(rest), True
        if ends:
            document = "".join(buffer)
            if not (cut and document.isspace()):
                yield document
            if cut:
                events["long_cut"] += 1
            buffer, size, cut = [], 0, False


def _pieces(text: str, *, limit: int) -> list[str]:
    """`text` cut into pieces of at most `limit` characters, after a whitespace if one is
    in the second half of the piece."""
    pieces, start = [], 0
    while len(text) - start > limit:
        end = max(text.rfind(c, start + limit // 2, start + limit) for c in " \n\t") + 1
        end = end if end > start else start + limit
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return pieces


def _codec_errors(on_decode_error: str) -> str:
    """The codec error handler that reads files for `on_decode_error`."""
    if on_decode_error == "error":
        return "strict"
    codecs.register_error(_MARK_INVALID, _mark_invalid)  # again: the same function
    return _MARK_INVALID


def _mark_invalid(error: UnicodeDecodeError) -> tuple[str, int]:
    return _INVALID_BYTE * (error.end - error.start), error.end


def _clean(text: str) -> tuple[str, dict]:
    """`text` with NUL as spaces and marked bytes and lone surrogates as U+FFFD, and how
    many of each it had."""
    if not _UNSAFE_CHARS.search(text):
        return text, {}
    nul = text.count("\x00")
    invalid = len(_UNSAFE_CHARS.findall(text)) - nul
    text = _UNSAFE_CHARS.sub(lambda m: " " if m.group() == "\x00" else "\ufffd", text)
    return text, {"nul_replaced": nul, "invalid_replaced": invalid}


def _read_paragraphs(path: str, *, errors: str, boundary: str) -> Iterator[tuple[str, bool]]:
    """`(text, ends_document)` parts of a text file's documents: runs of lines
    between blank lines (`boundary="blank_line"`), each non-blank line
    (`"line"`), or the whole file (`"file"`, blank lines kept as text).

    Lines are read at most `MAX_DOCUMENT_CHARS` characters at a time, so that
    a file without newlines reads in bounded memory.
    """
    opener = gzip.open if path.lower().endswith(".gz") else open
    # Text mode turns "\r\n" and "\r" into "\n"; "-sig" drops a leading BOM.
    with opener(path, "rt", encoding="utf-8-sig", errors=errors) as f:
        in_document, line_start = False, True
        lines, whole = boundary == "line", boundary == "file"
        while chunk := f.readline(MAX_DOCUMENT_CHARS):
            if whole:
                yield chunk, False
                in_document = True
            elif line_start and chunk.isspace():
                if in_document:
                    yield "", True
                in_document = False
            elif lines and chunk.endswith("\n"):
                yield chunk, True  # the end of a line (perhaps read in pieces) ends its document
                in_document = False
            else:
                yield chunk, False
                in_document = True
            line_start = chunk.endswith("\n")
        if in_document:
            yield "", True


def _read_json_lines(path: str, *, text_column: str, errors: str) -> Iterator[str]:
    with open(path, encoding="utf-8-sig", errors=errors) as f:
        for number, line in enumerate(f, start=1):
            if line.isspace():
                continue
            where = f"'{path}' line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise MlmError(f"{where} is not valid JSON ({e}); fix that line.") from e
            yield _text_of(_as_object(record, where=where), text_column=text_column, where=where)


def _read_json(path: str, *, text_column: str, errors: str) -> Iterator[str]:
    """Documents of a `.json` file: JSON Lines, or an array of objects (read whole)."""
    with open(path, encoding="utf-8-sig", errors=errors) as f:
        is_array = f.read(_HEAD_BYTES).lstrip().startswith("[")
    if not is_array:
        yield from _read_json_lines(path, text_column=text_column, errors=errors)
        return
    with open(path, encoding="utf-8-sig", errors=errors) as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as e:
            raise MlmError(f"'{path}' is not valid JSON ({e}); fix the file.") from e
    for index, record in enumerate(records):
        where = f"'{path}' item {index}"
        yield _text_of(_as_object(record, where=where), text_column=text_column, where=where)


def _read_csv(path: str, *, text_column: str, errors: str) -> Iterator[str]:
    # Imported here: pandas takes a second to import and only CSV needs it.
    import pandas

    try:
        # No NA parsing: a document reading "NA" or "null" is text, not missing.
        chunks = pandas.read_csv(
            path, usecols=[text_column], dtype={text_column: str}, keep_default_na=False,
            encoding="utf-8-sig", encoding_errors=errors, chunksize=1024,
        )
        for chunk in chunks:
            yield from chunk[text_column]
    except ValueError as e:  # pandas' ParserError is a ValueError.
        raise MlmError(f"'{path}' is not valid CSV ({_one_line(e)}); fix the file.") from e


def _read_parquet(path: str, *, text_column: str, errors: str) -> Iterator[str]:
    del errors  # Parquet strings are UTF-8 by the format.
    reader = pyarrow.parquet.ParquetFile(path)
    for batch in reader.iter_batches(batch_size=1024, columns=[text_column]):
        for index, value in enumerate(batch.column(0).to_pylist()):
            yield _as_text(value, where=f"'{path}' column '{text_column}' value {index}")


def _as_object(record: object, *, where: str) -> dict:
    if not isinstance(record, dict):
        raise MlmError(
            f"{where} is a JSON {type(record).__name__}, not an object; write one object "
            f'per record, e.g. {{"text": "..."}}.'
        )
    return record


def _text_of(record: dict, *, text_column: str, where: str) -> str:
    return _as_text(record.get(text_column), where=f"{where} column '{text_column}'")


def _as_text(value: object, *, where: str) -> str:
    """A text cell as a string; missing values are empty documents."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MlmError(
            f"{where} must be a string, but received {type(value).__name__} "
            f"{str(value)[:40]!r}; set corpus.text_column to the column that holds the text."
        )
    return value


# Hub datasets.


def _check_hub(name: str, *, split: str, text_column: str) -> None:
    """Fails fast, with one line, when a hub dataset cannot be opened."""
    check_hub_reachable(name)
    features = _load_hub(name, split=split).features
    if features is not None and text_column not in features:
        raise MlmError(
            f"hub dataset '{name}' has no column '{text_column}' (columns found: "
            f"{', '.join(features)}); set corpus.text_column to the column that holds the text."
        )


def check_hub_reachable(name: str) -> None:
    """Probes the hub host: offline, `datasets` would retry for about 25 s first."""
    import datasets
    from huggingface_hub import constants

    url = urllib.parse.urlsplit(constants.ENDPOINT)
    # In offline mode `datasets` reads its local cache; behind a proxy a direct
    # connection may fail where `datasets` would succeed.
    if datasets.config.HF_HUB_OFFLINE or url.scheme in urllib.request.getproxies():
        return
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=_HUB_PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise MlmError(
            f"could not download dataset '{name}': no network ({url.hostname}: {e}), or it "
            f"does not exist, and no local file or directory has that name; pass local "
            f"files instead."
        ) from e


def _load_hub(name: str, *, split: str):
    """Opens a hub dataset for streaming; nothing is downloaded yet."""
    # Imported here: `datasets` takes a second to import and only the hub needs it.
    import datasets

    path, _, config_name = name.partition(":")
    try:
        return datasets.load_dataset(path, config_name or None, split=split, streaming=True)
    except (OSError, ValueError) as e:
        # OSError covers no network (ConnectionError), no such dataset
        # (DatasetNotFoundError) and hub HTTP errors; ValueError a bad split or config.
        raise MlmError(
            f"could not download dataset '{name}' (split '{split}'): {_one_line(e)}; check the "
            f"name and split, or pass local files instead."
        ) from e


def _read_hub(name: str, *, split: str, text_column: str) -> Iterator[str]:
    for index, row in enumerate(_load_hub(name, split=split)):
        if text_column not in row:
            raise MlmError(
                f"hub dataset '{name}' has no column '{text_column}' (columns found: "
                f"{', '.join(row)}); set corpus.text_column to the column that holds the text."
            )
        yield _as_text(row[text_column], where=f"hub dataset '{name}' row {index}")


# Splitting, fingerprinting, messages.


def _is_held_out(document: str, *, fraction: float) -> bool:
    """Whether a document is held out, from a stable hash of its text alone."""
    digest = hashlib.blake2b(document.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def _fingerprint(sources: dict, *, settings: dict) -> str:
    """Hex digest of file contents (not names or times) and the settings that matter."""
    record = {"version": _FORMAT_VERSION, "sources": sources, "settings": settings}
    payload = json.dumps(record, sort_keys=True).encode("utf-8")
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def _one_line(error: Exception) -> str:
    """The first line of an exception's message, for one-line errors."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
