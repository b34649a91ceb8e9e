r"""Byte-level BPE (RoBERTa): learn and load `vocabulary.json` and `merges.txt`; word boundaries.

keras-hub's BytePairTokenizer has two paths that split text differently:
- `tf.data` (TensorFlow) path: the GPT-2 pattern, rewritten for RE2, which
  has no lookahead (`split_strings_for_bpe()` in keras_hub/src/tokenizers/
  byte_pair_tokenizer.py). It inserts "६" before each space followed by a
  non-space, splits with `_KERAS_HUB_BPE_SPLIT`, splits the last whitespace
  character (or "६") off each piece, and drops the pieces "६". Unlike GPT-2
  it keeps "\n\n" and "\r\n" whole, splits trailing spaces one by one, and
  counts only ASCII whitespace and four special spaces as whitespace.
- eager (Python) path: in keras-hub 0.32 it hands its Llama-3 pattern to
  `tokenizers.pre_tokenizers.Split` as a plain `str`, which `tokenizers`
  matches literally (huggingface/tokenizers#1565), so BPE runs over the
  whole text unsplit. Its ids differ from the `tf.data` path's wherever a
  learned merge spans a split point, e.g. "ĠĠ" (two spaces, learned from
  indented text) before "Ġword".
This module learns and mirrors the `tf.data` path, which tokenizes every
training example (`mlm.data.token_cache`, and keras-hub's own `fit`/`predict` on
strings). Known differences left: characters newer than the Unicode tables
of RE2 or Oniguruma (`tokenizers`), e.g. Unicode 16's U+1C89, U+A7CD, the
Egyptian hieroglyphs from U+13460 and the Garay digits (a sweep of every
code point below U+3100 and 1 in 37 above, each in 7 contexts of letters,
digits and spaces, found no other difference); text holding keras-hub's
placeholders "ĴA"-"ĴD" for special tokens; and text ending in a whitespace
character followed by the four special spaces in a row.


Word boundaries: a space before a word is folded into its first token, as
"Ġ", so a token starting with "Ġ" begins a word. The first word of a text has
no space before it: its first token is unmarked, and callers count the first
token of a text (and one after a special token) as a word start by position.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from mlm.architectures import get_architecture
from mlm.data.vocab.common import NO_WORDS, encode_lines, word_start_flags
from mlm.errors import MlmError

if TYPE_CHECKING:
    import keras_hub

# The architecture row whose special tokens and tokenizer are the defaults.
ARCHITECTURE = "roberta"
# The `keras_hub.tokenizers` class every tokenizer of this family derives from.
KERAS_HUB_BASE = "BytePairTokenizer"
# What the byte-level alphabet writes for a space: the mark of a word start.
WORD_START = "\u0120"
# The token RobertaTokenizer does not read whole in text, unlike its other
# special tokens (`unsplittable_tokens`).
_UNKNOWN = "<unk>"
# The assets `keras_hub.tokenizers.BytePairTokenizer` saves and loads.
VOCABULARY_FILE = "vocabulary.json"
MERGES_FILE = "merges.txt"
ASSETS = (VOCABULARY_FILE, MERGES_FILE)
# The first line of GPT-2's and RoBERTa's merges files; keras-hub and
# `tokenizers` skip it.
_BPE_MERGES_HEADER = "#version: 0.2"
# keras-hub's `tf.data` path of BytePairTokenizer (see the top): RE2's `\s`,
# the spaces it adds to it, its marker, and its pattern (`SPLIT_PATTERN_1`)
# with those spelled out for Oniguruma.
_RE2_SPACE = "\t\n\f\r "
_BPE_SPECIAL_SPACES = "\u00a0\u2009\u202f\u3000"
_BPE_MARK = "\u096c"
_KERAS_HUB_BPE_SPLIT = (
    f"'s|'t|'re|'ve|'m|'ll|'d"
    f"|[{_RE2_SPACE}{_BPE_SPECIAL_SPACES}]+[\n\r\t\f{_BPE_MARK}{_BPE_SPECIAL_SPACES}]"
    f"| ?\\p{{L}}+| ?\\p{{N}}+| ?[^{_RE2_SPACE}\\p{{L}}\\p{{N}}{_BPE_SPECIAL_SPACES}]+"
)


def train(
    batches: Iterator[list[str]],
    *,
    size: int,
    lowercase: bool,
    min_frequency: int,
    special_tokens: tuple[str, ...],
) -> dict[str, bytes]:
    """Learns byte-level BPE merges: the contents of `merges.txt` and `vocabulary.json`."""
    if lowercase:
        raise MlmError(
            "the byte_bpe family (RoBERTa) is cased: keras-hub's RobertaTokenizer "
            "cannot lowercase text; set lowercase to false (vocab.lowercase)."
        )
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if size < len(special_tokens) + len(alphabet):
        raise MlmError(
            f"a byte_bpe vocabulary holds the {len(special_tokens)} special tokens and "
            f"all {len(alphabet)} bytes, but received size={size}; raise it to at "
            f"least {len(special_tokens) + len(alphabet)}."
        )
    learner = base_tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=alphabet,
        show_progress=False,  # the caller shows progress (mlm.progress)
    )
    seen = _Seen(batches)
    learner.train_from_iterator(seen, trainer=trainer)
    if not seen.text:
        raise MlmError(NO_WORDS)
    model = json.loads(learner.to_str())["model"]
    vocabulary = dict(sorted(model["vocab"].items(), key=lambda item: item[1]))
    merges = [_BPE_MERGES_HEADER, *(" ".join(pair) for pair in model["merges"])]
    return {
        VOCABULARY_FILE: encode_lines([json.dumps(vocabulary, ensure_ascii=False)]),
        MERGES_FILE: encode_lines(merges),
    }


def is_word_start(token: str) -> bool:
    """Whether `token` begins a word after a space: it starts with "Ġ".

    The first token of a text has no space before it and is unmarked; count
    it by position.
    """
    return token.startswith(WORD_START)


def word_starts(vocabulary: list[str], *, special_tokens: tuple[str, ...] = ()) -> np.ndarray:
    """One flag per token id: whether it begins a word (see `is_word_start`)."""
    return word_start_flags(vocabulary, is_word_start, special_tokens=special_tokens)


def detokenize(tokens: list[str]) -> str:
    """The text of `tokens`: each byte-level character read back as its byte."""
    return decoders.ByteLevel().decode(tokens)


class _Seen:
    """Passes batches of documents on, noting whether any held non-space text."""

    def __init__(self, batches: Iterator[list[str]]):
        self.batches = batches
        self.text = False

    def __iter__(self) -> Iterator[list[str]]:
        for batch in self.batches:
            self.text = self.text or any(not d.isspace() for d in batch if d)
            yield batch


def base_tokenizer(model: models.Model) -> tokenizers.Tokenizer:
    """A `tokenizers.Tokenizer` that splits text as keras-hub's `tf.data` path."""
    tokenizer = tokenizers.Tokenizer(model)
    # The lookahead stands for RE2's replacement of " X" by "६ X".
    tokenizer.normalizer = normalizers.Replace(
        tokenizers.Regex(f" (?=[^{_RE2_SPACE}{_BPE_SPECIAL_SPACES}])"), f"{_BPE_MARK} "
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(tokenizers.Regex(_KERAS_HUB_BPE_SPLIT), behavior="isolated"),
            pre_tokenizers.Split(
                tokenizers.Regex(f"[ \t\r\f\v{_BPE_MARK}{_BPE_SPECIAL_SPACES}]\\z"),
                behavior="isolated",
            ),
            pre_tokenizers.Split(tokenizers.Regex(f"\\A{_BPE_MARK}\\z"), behavior="removed"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def keras_hub_tokenizer(
    vocab_path: Path, *, lowercase: bool, cls: type
) -> keras_hub.tokenizers.BytePairTokenizer:
    _check_cased(lowercase)
    return cls(vocabulary=str(vocab_path), merges=str(vocab_path.parent / MERGES_FILE))


def hf_tokenizer(vocab_path: Path, *, lowercase: bool) -> tokenizers.Tokenizer:
    _check_cased(lowercase)
    with open(vocab_path, encoding="utf-8") as file:
        vocabulary = json.load(file)
    with open(vocab_path.parent / MERGES_FILE, encoding="utf-8") as file:
        lines = [line.rstrip() for line in file]
    # Split as keras-hub splits them; byte-level tokens hold no spaces.
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version:")]
    tokenizer = base_tokenizer(models.BPE(vocabulary, merges))
    # RobertaTokenizer reads its start, end, padding and mask tokens in text
    # as those tokens (`unsplittable_tokens`), but not "<unk>".
    specials = get_architecture(ARCHITECTURE).special_tokens
    tokenizer.add_special_tokens([t for t in specials if t != _UNKNOWN and t in vocabulary])
    return tokenizer


def hf_tokenizer_of(tokenizer) -> tokenizers.Tokenizer:
    """`hf_tokenizer` of a keras-hub byte-level BPE tokenizer's own vocabulary and merges.

    It gives the ids of that tokenizer's `tf.data` path (up to the known
    differences above) from Rust, batches spread over every core.
    """
    vocabulary = {str(token): int(i) for token, i in dict(tokenizer.vocabulary).items()}
    # keras-hub keeps merges.txt's lines, its "#version:" header among them.
    merges = [tuple(str(merge).split(" ")) for merge in tokenizer.merges
              if merge and not str(merge).startswith("#version:")]
    fast = base_tokenizer(models.BPE(vocabulary, merges))
    specials = get_architecture(ARCHITECTURE).special_tokens
    fast.add_special_tokens([t for t in specials if t != _UNKNOWN and t in vocabulary])
    return fast


def _check_cased(lowercase: bool) -> None:
    if lowercase:
        raise MlmError(
            "the byte_bpe family (RoBERTa) is cased: keras-hub's RobertaTokenizer "
            "cannot lowercase text; pass lowercase=False."
        )

