"""Labelled examples: read from `.csv`, `.jsonl` or `.parquet` files or a hub task.

Everything is checked before a run folder is created, so bad input fails
with one line and leaves nothing behind: a missing column (the columns found
are named), empty text, a single class, validation labels that training lacks.
"""

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np

from mlm.errors import MlmError

FORMATS = (".csv", ".jsonl", ".parquet")


@dataclasses.dataclass(frozen=True)
class Examples:
    """Labelled texts: `texts[i]` (and `pairs[i]`, for sentence pairs) has `labels[i]`."""

    texts: tuple[str, ...]
    # Second texts of sentence pairs, or None.
    pairs: tuple[str, ...] | None
    # Label names, as strings (integers in the file become "0", "1", ...).
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices) -> "Examples":
        pick = [int(i) for i in indices]
        return Examples(
            texts=tuple(self.texts[i] for i in pick),
            pairs=None if self.pairs is None else tuple(self.pairs[i] for i in pick),
            labels=tuple(self.labels[i] for i in pick),
        )


def read_examples(path, *, text_column: str, label_column: str,
                  text_pair_column: str = "") -> Examples:
    """Reads labelled examples from one `.csv`, `.jsonl` or `.parquet` file."""
    path = Path(path)
    if not path.is_file():
        raise MlmError(f"labelled data file not found: {path}; check the path.")
    if path.suffix not in FORMATS:
        raise MlmError(
            f"cannot read labelled data from {path}: its suffix is '{path.suffix}'; "
            f"pass a {', '.join(FORMATS)} file."
        )
    rows, columns = _read_rows(path)
    wanted = [("text", text_column), ("label", label_column)]
    if text_pair_column:
        wanted.append(("text pair", text_pair_column))
    for role, column in wanted:
        if column not in columns:
            raise MlmError(
                f"{path} has no {role} column '{column}' (columns found: "
                f"{', '.join(columns) or 'none'}); pass --{role.replace(' ', '-')}-column NAME."
            )
    if not rows:
        raise MlmError(f"{path} holds no examples; pass a file with labelled rows.")
    texts = _texts(rows, text_column, path=path)
    pairs = _texts(rows, text_pair_column, path=path) if text_pair_column else None
    labels = tuple(_label(row[label_column], where=f"{path} row {i + 1}")
                   for i, row in enumerate(rows))
    return Examples(texts=texts, pairs=pairs, labels=labels)


def _read_rows(path: Path) -> tuple[list[dict], list[str]]:
    """Rows as dictionaries, and the column names found."""
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            return rows, list(reader.fieldnames or [])
    if path.suffix == ".parquet":
        import pyarrow.parquet

        table = pyarrow.parquet.read_table(path)
        return table.to_pylist(), list(table.column_names)
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise MlmError(f"{path} line {number} is not JSON ({e}); fix the file.") from None
            if not isinstance(row, dict):
                raise MlmError(f"{path} line {number} is not a JSON object; fix the file.")
            rows.append(row)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return rows, columns


def _texts(rows: list[dict], column: str, *, path: Path) -> tuple[str, ...]:
    texts = []
    for number, row in enumerate(rows, start=1):
        value = row.get(column)
        if not isinstance(value, str) or not value.strip():
            raise MlmError(
                f"{path} row {number} has empty text in column '{column}' (received "
                f"{value!r}); remove the row or fill in its text."
            )
        texts.append(value)
    return tuple(texts)


def _label(value, *, where: str) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (float, list, dict)):
        raise MlmError(
            f"{where} has label {value!r}; labels must be strings or integers."
        )
    label = str(value).strip()
    if not label:
        raise MlmError(f"{where} has an empty label; remove the row or fill in its label.")
    return label


def label_names(train: Examples) -> tuple[str, ...]:
    """The classes of the training data, sorted (numerically when all are integers)."""
    names = set(train.labels)
    if len(names) < 2:
        raise MlmError(
            f"the training data has a single class ({', '.join(sorted(names))}); a classifier "
            f"needs at least two labels."
        )
    if all(_is_int(n) for n in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def check_validation_labels(validation: Examples, *, names: tuple[str, ...]) -> None:
    """Every validation label must be one the classifier learns from training."""
    missing = sorted(set(validation.labels) - set(names))
    if missing:
        raise MlmError(
            f"the validation data has label(s) {', '.join(map(repr, missing[:5]))} that the "
            f"training data lacks (training labels: {', '.join(names)}); add examples of them "
            f"to the training data or remove them from validation."
        )


def label_ids(examples: Examples, *, names: tuple[str, ...]) -> np.ndarray:
    """`(n,)` int32 class ids of the examples' labels."""
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[label] for label in examples.labels], dtype=np.int32)


def stratified_split(examples: Examples, *, fraction: float, seed: int
                     ) -> tuple[Examples, Examples]:
    """Holds out `fraction` of each class (at least one example where a class has two)."""
    rng = np.random.default_rng(seed)
    labels = np.array(examples.labels)
    train, held = [], []
    for name in sorted(set(examples.labels)):
        members = rng.permutation(np.flatnonzero(labels == name))
        count = min(int(round(fraction * len(members))) or 1, len(members) - 1)
        held.extend(members[:count])
        train.extend(members[count:])
    if not held:
        raise MlmError(
            "the training data is too small to hold out validation examples; pass "
            "--validation FILE."
        )
    return examples.subset(sorted(train)), examples.subset(sorted(held))
