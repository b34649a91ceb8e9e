"""Parquet files (`.parquet`): one document per row, from `text_column`, read with pyarrow."""

import hashlib
from collections.abc import Iterator

import pyarrow
import pyarrow.parquet

from mlm.data.corpus.common import CHUNK_BYTES, Scan, as_text, one_line
from mlm.errors import MlmError

_ROWS_PER_BATCH = 1024


def read(
    path: str, *, text_column: str, errors: str, boundary: str, limit: int
) -> Iterator[tuple[str, bool]]:
    """`(text, True)` for each row; a null is an empty document."""
    del errors  # Parquet strings are UTF-8 by the format.
    del boundary, limit  # One document per row, cut later if too long.
    reader = pyarrow.parquet.ParquetFile(path)
    for batch in reader.iter_batches(batch_size=_ROWS_PER_BATCH, columns=[text_column]):
        for index, value in enumerate(batch.column(0).to_pylist()):
            yield as_text(value, where=f"'{path}' column '{text_column}' value {index}"), True


def scan(path: str, *, errors: str) -> Scan:
    """Hashes the file's bytes and checks that it is Parquet with at least one row."""
    del errors  # Parquet strings are UTF-8 by the format.
    try:
        rows = pyarrow.parquet.ParquetFile(path).metadata.num_rows
    except pyarrow.ArrowException as e:
        raise MlmError(
            f"'{path}' is not a valid Parquet file ({one_line(e)}); rewrite it."
        ) from e
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return Scan(digest.hexdigest(), rows > 0, 0, False)


def columns(path: str, *, errors: str) -> list[str]:
    """The column names of the schema."""
    del errors
    return pyarrow.parquet.ParquetFile(path).schema_arrow.names
