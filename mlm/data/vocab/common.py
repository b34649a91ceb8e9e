"""What the tokenizer families share: the batch size, the empty-corpus error, word-start flags."""

from collections.abc import Callable

import numpy as np

# Documents handed to a trainer per call, so a streamed corpus is never held
# in memory whole.
DOCUMENTS_PER_BATCH = 1000

NO_WORDS = (
    "the corpus gave no words to learn a vocabulary from (received only "
    "empty or whitespace documents); check the corpus paths and text column."
)


def encode_lines(lines: list[str]) -> bytes:
    """One line per entry, UTF-8 with "\\n" endings: the text assets' format."""
    return "".join(f"{line}\n" for line in lines).encode("utf-8")


def word_start_flags(
    vocabulary: list[str],
    is_word_start: Callable[[str], bool],
    *,
    special_tokens: tuple[str, ...] = (),
) -> np.ndarray:
    """One flag per id: whether that token starts a word; special tokens always do.

    A special token is a word of its own, so that whole-word masking never
    glues it to the word before it.
    """
    special = set(special_tokens)
    return np.array([t in special or is_word_start(t) for t in vocabulary], dtype=bool)
