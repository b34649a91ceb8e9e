"""Plain text files (`.txt`, `.txt.gz`): document boundaries, UTF-8 decoding, binary check.

`scan` is also how `.jsonl`, `.json` and `.csv` files are hashed and checked
to be UTF-8 text.
"""

import codecs
import gzip
import hashlib
import re
import zlib
from collections.abc import Iterator

from mlm.data.corpus.common import CHUNK_BYTES, HEAD_BYTES, Scan, one_line
from mlm.errors import MlmError

# A blank line: a newline, optional whitespace, a newline.
_BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")
# Control bytes that do not occur in text; above this share of the head, the
# file is binary. Tabs, newlines, form feed, backspace and escape are text.
_BINARY_SHARE = 0.1
_TEXT_BYTES = bytes(b for b in range(256) if b >= 0x20 and b != 0x7F or b in b"\t\n\v\f\r\b\x1b")


def read(
    path: str, *, text_column: str, errors: str, boundary: str, limit: int
) -> Iterator[tuple[str, bool]]:
    """`(text, ends_document)` parts of a text file's documents: runs of lines
    between blank lines (`boundary="blank_line"`), each non-blank line
    (`"line"`), or the whole file (`"file"`, blank lines kept as text).

    Lines are read at most `limit` characters at a time, so that a file
    without newlines reads in bounded memory.
    """
    del text_column  # Plain text has no columns.
    opener = gzip.open if path.lower().endswith(".gz") else open
    # Text mode turns "\r\n" and "\r" into "\n"; "-sig" drops a leading BOM.
    with opener(path, "rt", encoding="utf-8-sig", errors=errors) as f:
        in_document, line_start = False, True
        lines, whole = boundary == "line", boundary == "file"
        while chunk := f.readline(limit):
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


def scan(path: str, *, errors: str) -> Scan:
    """Hashes a file in one read, checking that it is (UTF-8) text.

    A `.txt.gz` is hashed decompressed, so the digest does not depend on how
    it was compressed.
    """
    digest = hashlib.blake2b(digest_size=16)
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    offset, has_text, blank, tail = 0, False, False, b""
    for chunk in _read_chunks(path):
        if offset == 0:
            _check_not_binary(chunk[:HEAD_BYTES], path=path)
        text = _decode(decoder, chunk, path=path, offset=offset)
        has_text = has_text or (bool(text) and not text.isspace())
        blank = blank or _BLANK_LINE.search(tail + chunk) is not None
        tail = chunk[-64:]
        digest.update(chunk)
        offset += len(chunk)
    # A file may end inside a multi-byte sequence: with errors replaced, that is text too.
    text = _decode(decoder, b"", path=path, offset=offset, final=True)
    has_text = has_text or (bool(text) and not text.isspace())
    return Scan(digest.hexdigest(), has_text, offset, blank)


def columns(path: str, *, errors: str) -> None:
    """Plain text has no columns."""
    del path, errors


def _read_chunks(path: str) -> Iterator[bytes]:
    """The bytes of a file, decompressed if `.gz`, in chunks."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                yield chunk
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise MlmError(
            f"'{path}' is not a valid gzip file ({one_line(e)}); re-compress it with gzip, "
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
