"""A seeded sample of a corpus's training documents found by seeking, not by reading.

`vocab.sample` learns the vocabulary from a bounded sample of the training
documents. Drawing it by document position needs the number of documents
first (a full read of the corpus) and then streams the corpus up to the last
position drawn (another): two reads of every byte that each host of a
several-host preparation repeated (benchmarks/RESULTS.md, "A bounded
vocabulary sample": about 40% of the work every host repeated at 1 GB).

Here the draw is of byte offsets instead, uniform over the bytes of the
training files, and each offset takes the document that starts after the
first document boundary at or after it (a blank line, or a newline for
one-document-per-line text and JSON Lines). Each draw reads a few kilobytes
around its offset, so a sample of 100,000 documents reads about as many
kilobytes as documents, whatever the corpus's size. A document's chance is
the length of the text before it (back to the boundary before that), not of
its own text, so the sample is uniform over the documents whenever their
lengths do not depend on their neighbours'. Held-out documents (drawn by
hash) and empty ones are passed over; a document drawn twice counts once.
Its leanings: a document after a line of Unicode whitespace alone (a blank
line to the reader, not to the byte pattern) is never drawn; one after a
document longer than `_SEEK_BYTES` is drawn less often; a document cut at
`MAX_DOCUMENT_CHARS` offers only its first piece.

Only files that can be entered at any byte are sampled this way: plain `.txt`
with `document_boundary` "blank_line" or "line", and `.jsonl`. A corpus with
other files (compressed, tables, a hub dataset, `"file"` documents) returns
None from `seekable_files`, and `mlm.data.tokenizing` draws by position.

Each document found is exactly one of `iter_documents`'s: its bytes decoded as
its reader decodes them (newlines as text mode reads them, its first line
that is whitespace only ending it, cut to its first `MAX_DOCUMENT_CHARS`
piece, cleaned and stripped).
"""

import codecs
import os
import re
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

from mlm.data.corpus import jsonl
from mlm.data.corpus.common import clean, codec_errors, cut_pieces
from mlm.data.corpus.formats import format_of
from mlm.data.corpus.sources import is_held_out

# A blank line, as `text.read` sees one in bytes (a line of ASCII whitespace).
_BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")
_NEWLINE = re.compile(rb"\n")
# Blank lines (of ASCII whitespace) before a document's first line.
_BLANK_LINES = re.compile(rb"(?:[ \t\r\f\v]*\n)*")
# Bytes read at a time around an offset: most documents end inside the first read.
_READ_BYTES = 1 << 12
# Draws made at a time (the same for every host, so every host draws the same offsets).
_DRAWS_PER_BATCH = 4096
# How far from an offset a document boundary is looked for: a draw that finds none
# (inside a long document) is a miss.
_SEEK_BYTES = 1 << 18
# What `_Reader.position_after` returns for a miss.
MISS = -1
# Bytes kept from one read to the next, so that a boundary cut between them is found.
_CARRY_BYTES = 1 << 10


class Position(NamedTuple):
    """Where a sampled document starts: the file's index and the byte of its first
    character."""

    file: int
    start: int


def seekable_files(corpus) -> tuple[str, ...] | None:
    """The training files if every one can be entered at any byte, else None."""
    if corpus.hub_name or not corpus.train_files:
        return None
    for path in corpus.train_files:
        fmt = format_of(path)
        if fmt == "jsonl":
            continue
        if fmt == "text" and not path.lower().endswith(".gz") and (
                corpus.document_boundary in ("blank_line", "line")):
            continue
        return None
    return corpus.train_files


class Draw(NamedTuple):
    """What `draw` found: the positions of the sample, in corpus order; or none, with
    `every` True if the corpus has too few documents for the sample (then learn from
    every document) and False if it cannot be sampled by offset (`seekable_files`, or
    documents too long to seek between: then draw by position)."""

    positions: list[Position] | None
    every: bool = False


def draw(corpus, *, size: int, seed: int, limit: int,
         progress: Callable[[int], None] = lambda found: None) -> Draw:
    """`size` distinct training documents drawn at seeded byte offsets.

    The draws stop when `size` distinct documents are found; or, as a corpus too
    small for the sample shows itself, once half of the documents drawn were drawn
    before, or after `3 size` documents drawn (about 1.5 `size` documents or fewer:
    `every`); or once more than half of 100 or more draws found no boundary within
    `_SEEK_BYTES` of their offset (documents of hundreds of kilobytes, such as books:
    not sampled by offset). `progress` is given the documents found so far.
    """
    files = seekable_files(corpus)
    if files is None:
        return Draw(None)
    with _Reader(corpus, files=files, limit=limit) as reader:
        rng = np.random.default_rng(seed)
        found: set[Position] = set()
        hits = misses = draws = 0  # hits: draws that found a training document
        while len(found) < size:
            progress(len(found))
            for offset in rng.integers(0, reader.total, size=_DRAWS_PER_BATCH):
                draws += 1
                position = reader.position_after(int(offset))
                if position == MISS:
                    misses += 1
                elif position is not None:
                    hits += 1
                    found.add(position)
                if len(found) >= size:
                    break
                if draws >= 100 and misses > draws // 2:
                    return Draw(None)
                if (hits >= 3 * size or draws >= 10 * size + 1000
                        or (hits >= 100 and len(found) <= hits // 2)):
                    return Draw(None, every=True)
    return Draw(sorted(found))


def estimate(corpus, *, draws: int, seed: int, limit: int) -> int | None:
    """About how many documents the training files hold (both splits, when the held-out
    split is drawn by hash), from `draws` seeded offsets: the files' bytes over the mean
    distance from a document's start to the next one's among the documents drawn (a
    document's chance does not depend on its own length, so their mean is the
    corpus's). None if the files cannot be entered at any byte, or hold documents too
    long to seek between."""
    files = seekable_files(corpus)
    if files is None:
        return None
    spans = []
    with _Reader(corpus, files=files, limit=limit) as reader:
        for offset in np.random.default_rng(seed).integers(0, reader.total, size=draws):
            span = reader.span_after(int(offset))
            if span is None:
                return None
            spans.append(span)
    return max(1, round(reader.total / float(np.mean(spans))))


def read(corpus, positions: list[Position], *, limit: int) -> Iterator[str]:
    """The documents at `positions` (from `draw`), in their order."""
    files = seekable_files(corpus)
    with _Reader(corpus, files=files, limit=limit) as reader:
        for position in positions:
            yield reader.document_at(position)


class _Reader:
    """Documents of the training files found by byte offset (`os.pread`: no file
    position is kept between draws)."""

    def __init__(self, corpus, *, files: tuple[str, ...], limit: int):
        self.corpus = corpus
        self.files = files
        self.limit = limit
        self.errors = codec_errors(corpus.on_decode_error)
        self.sizes = [os.path.getsize(path) for path in files]
        self.ends = np.cumsum(self.sizes)
        self.total = int(self.ends[-1]) if files else 0
        self.fds: list[int] = []

    def __enter__(self):
        self.fds = [os.open(path, os.O_RDONLY) for path in self.files]
        return self

    def __exit__(self, *exc):
        for fd in self.fds:
            os.close(fd)

    def position_after(self, offset: int) -> Position | None | int:
        """The training document after the first boundary at or after byte `offset` of the
        files laid end to end (the next file's first document past a file's last); None
        if that document is held out, `MISS` if no boundary is within `_SEEK_BYTES`."""
        found = self._document_after(offset, skip_empty=True)
        if found is None or found == MISS:
            return found
        position, text, _ = found[1]
        return None if self._held_out(text) else position

    def span_after(self, offset: int) -> int | None:
        """The bytes from the start of the document after the first boundary at or after
        `offset` to the start of the next one (or the end of its file); None if no boundary
        is within `_SEEK_BYTES`. Documents that read as empty count too."""
        found = self._document_after(offset, skip_empty=False)
        if found is None or found == MISS:
            return None
        file, (position, _, end) = found
        after = self._boundary_after(file, end) if end < self.sizes[file] else None
        return (self.sizes[file] if after in (None, -1) else after) - position.start

    def _document_after(self, offset: int, *, skip_empty: bool) -> tuple | int | None:
        """`(file, (position, text, end))` of the document after the first boundary at or
        after byte `offset` of the files laid end to end (the next file's first document
        past a file's last; past documents that read as empty if `skip_empty`); `MISS` if
        no boundary is within `_SEEK_BYTES`; None if no file holds a document (the corpus
        scan refuses that before)."""
        file = int(np.searchsorted(self.ends, offset, side="right"))
        start = self._boundary_after(file, offset - (int(self.ends[file]) - self.sizes[file]))
        for _ in range(len(self.files) + 1):
            while start is not None:
                if start == -1:
                    return MISS
                found = self._document_from(file, start)
                if found is None:
                    break
                if found[1] or not skip_empty:
                    return file, found
                end = found[2]  # an empty document: the next one
                start = self._boundary_after(file, end) if end < self.sizes[file] else None
            file, start = (file + 1) % len(self.files), 0
        return None

    def document_at(self, position: Position) -> str:
        """The text of the document at `position`."""
        found = self._document_from(position.file, position.start)
        return "" if found is None else found[1]

    def _held_out(self, text: str) -> bool:
        return not self.corpus.held_out_files and is_held_out(
            text, fraction=self.corpus.held_out_fraction)

    def _pread(self, file: int, start: int, size: int) -> bytes:
        return os.pread(self.fds[file], size, start)

    def _find(self, file: int, start: int, pattern: re.Pattern,
              within: int) -> tuple[int, int] | None:
        """The file offsets (start, end) of the first match of `pattern` at or after byte
        `start` and starting within `within` bytes of it, read in growing pieces; None if
        there is none."""
        size, carry, stop = _READ_BYTES, b"", start + within
        while start < stop:
            data = self._pread(file, start, min(size, stop - start + _CARRY_BYTES))
            match = pattern.search(carry + data)
            if match:
                base = start - len(carry)
                if base + match.start() >= stop:
                    return None
                return base + match.start(), base + match.end()
            if not data:
                return None
            carry = (carry + data)[-_CARRY_BYTES:]  # a boundary cut between two reads
            start += len(data)
            size = min(size * 2, 1 << 20)
        return None

    def _boundary_after(self, file: int, offset: int) -> int | None:
        """The byte after the first document boundary at or after `offset`; None past the
        file's last one, and -1 if none is within `_SEEK_BYTES` (a long document)."""
        pattern = _BLANK_LINE if self._blank_lines(file) else _NEWLINE
        match = self._find(file, offset, pattern, within=_SEEK_BYTES)
        if match is None:
            return -1 if offset + _SEEK_BYTES < self.sizes[file] else None
        return match[1]

    def _blank_lines(self, file: int) -> bool:
        return (format_of(self.files[file]) == "text"
                and self.corpus.document_boundary == "blank_line")

    def _document_from(self, file: int, start: int) -> tuple[Position, str, int] | None:
        """The document of the first non-blank line at or after `start` (a document
        boundary or a file's start): its position, its text ("" if it reads as empty)
        and the byte where it ends; None at the end of the file."""
        if start == 0 and self._pread(file, 0, len(codecs.BOM_UTF8)) == codecs.BOM_UTF8:
            start = len(codecs.BOM_UTF8)
        while True:  # past the blank lines before the document, however many
            head = self._pread(file, start, _READ_BYTES)
            if not head:
                return None
            skipped = _BLANK_LINES.match(head).end()
            start += skipped
            if skipped < len(head):
                head = head[skipped:]
                break
        # A document longer than the reader's cut is read only to its first piece.
        most = 4 * self.limit + 4
        pattern = _BLANK_LINE if self._blank_lines(file) else _NEWLINE
        match = pattern.search(head)
        if match:
            end = start + match.start()
        elif start + len(head) >= self.sizes[file]:
            end = self.sizes[file]
        else:  # it goes on past the first read
            found = self._find(file, start, pattern, within=most)
            end = found[0] if found else min(self.sizes[file], start + most + 1)
        cut = end - start > most
        end = min(end, start + most)
        raw = head[:end - start] if end - start <= len(head) else self._pread(
            file, start, end - start)
        decoder = codecs.getincrementaldecoder("utf-8")(self.errors)
        # Cut inside a character only where the document goes on past `most` bytes.
        text = decoder.decode(raw, final=not cut)
        text = self._text_of(file, start, text)
        return Position(file, start), text, end

    def _text_of(self, file: int, start: int, text: str) -> str:
        """A document's text as `iter_documents` gives it, from its decoded bytes."""
        if format_of(self.files[file]) == "jsonl":
            text = jsonl.text_of_line(text, text_column=self.corpus.text_column,
                                      where=f"'{self.files[file]}' at byte {start}")
        else:
            # Text mode's newlines; past the lines of whitespace alone (Unicode's too,
            # which `_BLANK_LINES` leaves), the first such line ends the document, or in
            # "line" mode the first newline does.
            lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
            lines = lines[next((i for i, line in enumerate(lines) if line.strip()),
                               len(lines)):] or [""]
            if self._blank_lines(file):
                blank = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
                text = "\n".join(lines[:blank])
            else:
                text = lines[0]
        if len(text) > self.limit:
            text = cut_pieces(text, limit=self.limit)[0]
        return clean(text)[0].strip()
