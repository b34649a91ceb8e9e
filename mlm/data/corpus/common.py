"""What the corpus readers share: decoding errors, cleaning, long documents, messages.

Every reader yields `(text, ends_document)` parts; `assemble` joins them into
documents and cuts any that is too long, and `clean` makes each document safe
to tokenize.
"""

import codecs
import collections
import re
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from mlm.errors import MlmError

# With on_decode_error="replace", each undecodable byte is read as this
# noncharacter, which `clean` turns into U+FFFD and counts. Unlike the lone
# surrogates of Python's "surrogateescape" it is valid UTF-8, which pandas'
# CSV parser needs; noncharacters do not occur in text.
_INVALID_BYTE = "\ufdd1"
_MARK_INVALID = "mlm.mark_invalid_bytes"
# NUL, marked bytes and lone surrogates: replaced in every document.
_UNSAFE_CHARS = re.compile("[\x00\ufdd1\ud800-\udfff]")
# How much of a file is read at a time when hashing or peeking at it.
CHUNK_BYTES = 1 << 20
# How much of a file's start decides what it holds: binary or text, a JSON
# array or JSON Lines.
HEAD_BYTES = 1 << 16


class Scan(NamedTuple):
    """What one full read of a file found (see `mlm.data.corpus.sources.scan_files`)."""

    # Hex digest of the content (of a `.txt.gz`, decompressed).
    digest: str
    # Whether the file holds any non-blank text (for Parquet: any row).
    has_text: bool
    # Size in bytes, decompressed (0 for Parquet).
    size: int
    # Whether the file has a blank line (False for Parquet).
    blank_line: bool


def codec_errors(on_decode_error: str) -> str:
    """The codec error handler that reads files for `on_decode_error`."""
    if on_decode_error == "error":
        return "strict"
    codecs.register_error(_MARK_INVALID, _mark_invalid)  # again: the same function
    return _MARK_INVALID


def _mark_invalid(error: UnicodeDecodeError) -> tuple[str, int]:
    return _INVALID_BYTE * (error.end - error.start), error.end


def clean(text: str) -> tuple[str, dict]:
    """`text` with NUL as spaces and marked bytes and lone surrogates as U+FFFD, and how
    many of each it had."""
    if not _UNSAFE_CHARS.search(text):
        return text, {}
    nul = text.count("\x00")
    invalid = len(_UNSAFE_CHARS.findall(text)) - nul
    text = _UNSAFE_CHARS.sub(lambda m: " " if m.group() == "\x00" else "\ufffd", text)
    return text, {"nul_replaced": nul, "invalid_replaced": invalid}


def assemble(
    parts: Iterable[tuple[str, bool]], *, limit: int, events: collections.Counter
) -> Iterator[str]:
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
            *pieces, rest = cut_pieces("".join(buffer), limit=limit)
            yield from (piece for piece in pieces if not piece.isspace())
            buffer, size, cut = [rest], len(rest), True
        if ends:
            document = "".join(buffer)
            if not (cut and document.isspace()):
                yield document
            if cut:
                events["long_cut"] += 1
            buffer, size, cut = [], 0, False


def cut_pieces(text: str, *, limit: int) -> list[str]:
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


def as_text(value: object, *, where: str) -> str:
    """A text cell as a string; missing values are empty documents."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MlmError(
            f"{where} must be a string, but received {type(value).__name__} "
            f"{str(value)[:40]!r}; set corpus.text_column to the column that holds the text."
        )
    return value


def one_line(error: Exception) -> str:
    """The first line of an exception's message, for one-line errors."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
