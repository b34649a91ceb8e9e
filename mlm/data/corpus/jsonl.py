"""JSON records: `.jsonl` (JSON Lines) and `.json` (JSON Lines, or an array of objects).

One document per record, taken from its `text_column` key. JSON Lines stream
line by line; an array is read whole.
"""

import json
from collections.abc import Iterator

from mlm.data.corpus.common import CHUNK_BYTES, HEAD_BYTES, as_text
from mlm.errors import MlmError


def read_lines(
    path: str, *, text_column: str, errors: str, boundary: str, limit: int
) -> Iterator[tuple[str, bool]]:
    """`(text, True)` for each record of a JSON Lines file; blank lines are skipped."""
    del boundary, limit  # One document per record, cut later if too long.
    for text in _records_of_lines(path, text_column=text_column, errors=errors):
        yield text, True


def read(
    path: str, *, text_column: str, errors: str, boundary: str, limit: int
) -> Iterator[tuple[str, bool]]:
    """`(text, True)` for each record of a `.json` file: JSON Lines, or an array (read whole)."""
    del boundary, limit  # One document per record, cut later if too long.
    with open(path, encoding="utf-8-sig", errors=errors) as f:
        is_array = f.read(HEAD_BYTES).lstrip().startswith("[")
    records = _records_of_array if is_array else _records_of_lines
    for text in records(path, text_column=text_column, errors=errors):
        yield text, True


def columns(path: str, *, errors: str) -> list[str] | None:
    """The keys of the first record; None if there is none, or it is past the first MB."""
    record = _first_record(path, errors=errors)
    return None if record is None else list(_as_object(record, where=f"'{path}'"))


def _records_of_lines(path: str, *, text_column: str, errors: str) -> Iterator[str]:
    with open(path, encoding="utf-8-sig", errors=errors) as f:
        for number, line in enumerate(f, start=1):
            if line.isspace():
                continue
            yield text_of_line(line, text_column=text_column, where=f"'{path}' line {number}")


def text_of_line(line: str, *, text_column: str, where: str) -> str:
    """The text of the record on one line of JSON Lines; `where` names the line in errors."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise MlmError(f"{where} is not valid JSON ({e}); fix that line.") from e
    return _text_of(_as_object(record, where=where), text_column=text_column, where=where)


def _records_of_array(path: str, *, text_column: str, errors: str) -> Iterator[str]:
    with open(path, encoding="utf-8-sig", errors=errors) as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as e:
            raise MlmError(f"'{path}' is not valid JSON ({e}); fix the file.") from e
    for index, record in enumerate(records):
        where = f"'{path}' item {index}"
        yield _text_of(_as_object(record, where=where), text_column=text_column, where=where)


def _first_record(path: str, *, errors: str) -> object | None:
    """The first record of JSON Lines or of a JSON array; None if past the first MB."""
    with open(path, encoding="utf-8-sig", errors=errors) as f:
        head = f.read(CHUNK_BYTES).lstrip()
    body = head[1:].lstrip() if head.startswith("[") else head
    if body.startswith("]"):
        return None  # An empty array: no record, no columns.
    try:
        record, _ = json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError as e:
        if len(head) >= CHUNK_BYTES - 1:
            return None  # A first record over 1 MB: checked while reading instead.
        raise MlmError(f"'{path}' is not valid JSON ({e}); fix the file.") from e
    return record


def _as_object(record: object, *, where: str) -> dict:
    if not isinstance(record, dict):
        raise MlmError(
            f"{where} is a JSON {type(record).__name__}, not an object; write one object "
            f'per record, e.g. {{"text": "..."}}.'
        )
    return record


def _text_of(record: dict, *, text_column: str, where: str) -> str:
    return as_text(record.get(text_column), where=f"{where} column '{text_column}'")
