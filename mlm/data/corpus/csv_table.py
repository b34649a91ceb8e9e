"""CSV files (`.csv`, with a header row): one document per row, from `text_column`.

Read with pandas in chunks of rows, as `datasets` reads CSV itself.
"""

import csv
from collections.abc import Iterator

from mlm.data.corpus.common import one_line
from mlm.errors import MlmError

_ROWS_PER_CHUNK = 1024


def read(
    path: str, *, text_column: str, errors: str, boundary: str, limit: int
) -> Iterator[tuple[str, bool]]:
    """`(text, True)` for each row; an empty cell is an empty document."""
    del boundary, limit  # One document per row, cut later if too long.
    # Imported here: pandas takes a second to import and only CSV needs it.
    import pandas

    try:
        # No NA parsing: a document reading "NA" or "null" is text, not missing.
        chunks = pandas.read_csv(
            path, usecols=[text_column], dtype={text_column: str}, keep_default_na=False,
            encoding="utf-8-sig", encoding_errors=errors, chunksize=_ROWS_PER_CHUNK,
        )
        for chunk in chunks:
            for text in chunk[text_column]:
                yield text, True
    except ValueError as e:  # pandas' ParserError is a ValueError.
        raise MlmError(f"'{path}' is not valid CSV ({one_line(e)}); fix the file.") from e


def columns(path: str, *, errors: str) -> list[str]:
    """The column names of the header row."""
    with open(path, encoding="utf-8-sig", errors=errors, newline="") as f:
        return next(csv.reader(f), [])
