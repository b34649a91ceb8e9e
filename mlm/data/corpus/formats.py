"""The file formats: extension -> format name -> its reader's functions.

Every reader offers the same three functions:
- `read(path, *, text_column, errors, boundary, limit)` yields
  `(text, ends_document)` parts of the file's documents, in file order;
- `scan(path, *, errors)` reads the file once in full, checks it and returns
  a `Scan` (its digest, whether it holds text);
- `columns(path, *, errors)` gives the columns of a tabular file, or None.
"""

from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from mlm.data.corpus import csv_table, jsonl, parquet, text
from mlm.data.corpus.common import Scan

# File name endings we read, longest first so `.txt.gz` wins over `.gz`.
_FORMATS = {
    ".txt.gz": "text",
    ".txt": "text",
    ".jsonl": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}
SUPPORTED = ", ".join(_FORMATS)


class Reader(NamedTuple):
    """The functions that read one file format."""

    read: Callable[..., Iterator[tuple[str, bool]]]
    scan: Callable[..., Scan]
    columns: Callable[..., list[str] | None]


# Text, JSON and CSV files are hashed and checked as UTF-8 text alike.
READERS = {
    "text": Reader(read=text.read, scan=text.scan, columns=text.columns),
    "jsonl": Reader(read=jsonl.read_lines, scan=text.scan, columns=jsonl.columns),
    "json": Reader(read=jsonl.read, scan=text.scan, columns=jsonl.columns),
    "csv": Reader(read=csv_table.read, scan=text.scan, columns=csv_table.columns),
    "parquet": Reader(read=parquet.read, scan=parquet.scan, columns=parquet.columns),
}


def format_of(name: str) -> str | None:
    """The format of a file name, from its extension; None if it is not one we read."""
    lowered = name.lower()
    return next((fmt for ext, fmt in _FORMATS.items() if lowered.endswith(ext)), None)


def read_files(
    files: Iterable[str], *, text_column: str, errors: str, boundary: str, limit: int
) -> Iterator[tuple[str, bool]]:
    """`(text, ends_document)` parts of the documents of `files`, in their order."""
    for path in files:
        yield from READERS[format_of(path)].read(
            path, text_column=text_column, errors=errors, boundary=boundary, limit=limit
        )
