"""WordPiece (BERT, DistilBERT, RoFormerV2): learn and load `vocabulary.txt`; its word boundaries.

Learned with the `tokenizers` WordPiece trainer on the words keras-hub's
`BertTokenizer` splits text into, so the learned vocabulary is the one
keras-hub will use. A word is a run of letters and digits, or a single
punctuation or CJK character; a token that continues a word starts with "##".
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from mlm.data.vocab.common import DOCUMENTS_PER_BATCH, NO_WORDS, encode_lines, word_start_flags
from mlm.errors import MlmError

if TYPE_CHECKING:
    import keras_hub

# The architecture row whose special tokens and tokenizer are the defaults.
ARCHITECTURE = "bert"
# The `keras_hub.tokenizers` class every tokenizer of this family derives from.
KERAS_HUB_BASE = "WordPieceTokenizer"
# The asset `keras_hub.tokenizers.WordPieceTokenizer` saves and loads.
VOCABULARY_FILE = "vocabulary.txt"
ASSETS = (VOCABULARY_FILE,)
# What marks a token that continues a word ("##ing").
CONTINUATION = "##"
# The token keras-hub's WordPieceTokenizer maps unknown words to (`oov_token`).
_UNKNOWN = "[UNK]"

# keras-hub maps words longer than this many UTF-8 bytes to [UNK]
# (`MAX_BYTES_PER_WORD` in keras_hub/src/tokenizers/word_piece_tokenizer.py).
_MAX_BYTES_PER_WORD = 100
# Longest run of one word in a text replayed to the trainer (see `_replay`),
# and what separates the words there: keras-hub splits on it, and case folding
# never creates it, so no word holds it.
_REPEATS_PER_TEXT = 10_000
_REPLAY_SEPARATOR = "\n"

# How this module mirrors keras-hub's `BertTokenizer` (`pretokenize()` and its
# Python twin `pretokenize_python()` in keras_hub/src/tokenizers/
# word_piece_tokenizer.py, with `strip_accents=False`, `split=True`,
# `split_on_cjk=True`):
#
# keras-hub first splits text into words, dropping ASCII whitespace, control
# (Cc) and format (Cf) characters and keeping each punctuation and CJK
# character as a word of its own; only then, when lowercasing, does it apply
# NFKC_Casefold to each word: NFKC, full case folding, NFKC, and removal of
# default ignorable code points. `tokenizers` normalizes before it splits, and
# NFKC can create split points: "…" becomes "..." (keras-hub keeps the word
# "..."), a no-break space a space inside a word, "´" the pair " ́".
# - Learning: the pre-tokenizer splits the raw text, and unique words are
#   then case-folded in Python exactly as keras-hub's Python path does it.
# - `hf_tokenizer()` with `lowercase=True`: the normalizer first marks the
#   split points of the raw text with `_WORD_BREAK` (inserted zero-width
#   around kept characters, replacing dropped ones), then case-folds, and the
#   pre-tokenizer splits on the marks alone. `tokenizers` has no case folding,
#   so `Lowercase` is followed by the characters where folding differs
#   (ß -> ss, final sigma, Greek iota subscript, Cherokee, ...).
#
# Known differences left (found by comparing every code point; none occurs in
# ordinary text):
# - Characters newer than the Unicode tables of one of the libraries (Python's
#   `regex` and `unicodedata`, TensorFlow's ICU and RE2, the Rust crates of
#   `tokenizers`), e.g. U+2E60-U+2E63 or U+1FBF0-U+1FBF9, may be split or
#   normalized differently. Such differences also exist between keras-hub's
#   own Python path (eager calls) and TensorFlow path (`tf.data`), which
#   besides ends a text at a NUL character and composes a Greek iota
#   subscript followed by an accent differently.
# - keras-hub's limit on word length counts UTF-8 bytes, `tokenizers` counts
#   characters: a word of at most 100 characters but more than 100 bytes is
#   [UNK] in keras-hub only.
# - With `lowercase=True`, a text holding `_WORD_BREAK` itself (a Unicode
#   noncharacter) is split there by `hf_tokenizer()` only.
_WORD_BREAK = "\ufdd0"
# Split points that keras-hub drops: RE2's `\s` (ASCII only), Cc and Cf.
_DROPPED_SPLITS = r"[ \t\n\r\f\p{Cc}\p{Cf}]+"
# Split points that keras-hub keeps as one-character words: ASCII symbols,
# Unicode punctuation (P*), and the CJK ideograph blocks of google-research/bert.
_KEPT_SPLITS = (
    r"[!-/:-@\[-`{-~\p{P}"
    r"\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}"
    r"\x{2B740}-\x{2B81F}\x{2B820}-\x{2CEAF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}]"
)
# Unicode's Default_Ignorable_Code_Point, which NFKC_Casefold removes.
_DEFAULT_IGNORABLE_RANGES = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
    (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)  # fmt: skip


def train(
    batches: Iterator[list[str]],
    *,
    size: int,
    lowercase: bool,
    min_frequency: int,
    special_tokens: tuple[str, ...],
    counts: dict[str, int] | None = None,
) -> dict[str, bytes]:
    """Learns a BERT WordPiece vocabulary: the contents of `vocabulary.txt`.

    `counts`: the words of the documents already counted (`count_words`, e.g.
    per range of the corpus in worker processes, and added up); `batches` is
    then not read.
    """
    if _UNKNOWN not in special_tokens:
        raise MlmError(
            f"a wordpiece vocabulary needs the {_UNKNOWN} token keras-hub maps "
            f"unknown words to, but special_tokens={special_tokens!r}; add it."
        )
    counts = count_words(batches) if counts is None else counts
    if lowercase:
        counts = _casefold_counts(counts)
    if not counts:
        raise MlmError(NO_WORDS)
    tokens = _learn_wordpieces(
        counts, size=size, min_frequency=min_frequency, special_tokens=special_tokens
    )
    return {VOCABULARY_FILE: encode_lines(tokens)}


def read_vocabulary(vocab_path: Path) -> list[str]:
    """Reads a vocabulary file exactly as keras-hub's WordPieceTokenizer does."""
    with open(vocab_path, encoding="utf-8") as file:
        return [line.rstrip() for line in file]


def is_word_start(token: str) -> bool:
    """Whether `token` begins a word: every token but a "##" continuation.

    keras-hub's words are runs of letters and digits, and each punctuation or
    CJK character on its own, so "," after "hello" starts a word too.
    """
    return not token.startswith(CONTINUATION)


def word_starts(vocabulary: list[str], *, special_tokens: tuple[str, ...] = ()) -> np.ndarray:
    """One flag per token id: whether it begins a word (see `is_word_start`)."""
    return word_start_flags(vocabulary, is_word_start, special_tokens=special_tokens)


def detokenize(tokens: list[str]) -> str:
    """The text of `tokens` as keras-hub's `detokenize()` gives it: words joined by spaces."""
    return _decoder().decode(tokens)


def _decoder() -> decoders.Decoder:
    # keras-hub's detokenize() joins words with single spaces, no clean-up.
    return decoders.WordPiece(prefix=CONTINUATION, cleanup=False)


def count_words(batches: Iterable[list[str]]) -> dict[str, int]:
    """Counts the words keras-hub splits the documents into, before case folding.

    Counts add up: the sum of the counts of parts of the documents is the
    count of them all, whatever the order.
    """
    counter = tokenizers.Tokenizer(models.WordLevel(unk_token="[UNK]"))
    counter.pre_tokenizer = _keras_hub_word_splitter()
    # No bar of its own: it would draw over the caller's (`mlm.progress.track`).
    trainer = trainers.WordLevelTrainer(vocab_size=0, show_progress=False)
    counter.train_from_iterator(batches, trainer=trainer)
    # `tokenizers` exposes the counts it gathered only in the trainer's
    # pickled state.
    return json.loads(trainer.__getstate__())["WordLevelTrainer"]["words"]


def _casefold_counts(counts: dict[str, int]) -> dict[str, int]:
    """Case-folds each word as keras-hub does and adds up the counts."""
    ranges = (f"{re.escape(chr(lo))}-{re.escape(chr(hi))}" for lo, hi in _DEFAULT_IGNORABLE_RANGES)
    ignorable = re.compile(f"[{''.join(ranges)}]")
    folded = collections.Counter()
    for word, count in counts.items():
        # NFKC_Casefold(x) = NFKC(casefold(NFKC(x))) minus default ignorables,
        # as keras_hub.src.utils.tensor_utils.casefold_utf8.
        word = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", word).casefold())
        word = ignorable.sub("", word)
        if word:
            folded[word] += count
    return dict(folded)


def _learn_wordpieces(
    counts: dict[str, int], *, size: int, min_frequency: int, special_tokens: tuple[str, ...]
) -> list[str]:
    """Learns at most `size` WordPiece tokens that survive the vocabulary file."""
    alphabet, continuations = set(), set()
    for word in counts:
        alphabet.update(word)
        continuations.update(word[1:])
    specials = len(special_tokens)
    if specials + len(alphabet) + len(continuations) >= size:
        # No room for a single merge: keep the most used characters.
        units = filter(_survives_vocabulary_file, _most_used_characters(counts))
        return [*special_tokens, *itertools.islice(units, size - specials)]
    suffixes = sorted(f"##{char}" for char in continuations)
    target = size
    while True:
        learned = _merge_wordpieces(
            counts,
            suffixes,
            size=target,
            min_frequency=min_frequency,
            special_tokens=special_tokens,
        )
        tokens = list(filter(_survives_vocabulary_file, learned))
        if len(tokens) >= size or len(learned) < target:
            return tokens[:size]
        # Learn on past the tokens that had to be dropped: merges come in the
        # same order whatever the size, so this extends the list.
        target += size - len(tokens)


def _merge_wordpieces(
    counts: dict[str, int],
    suffixes: list[str],
    *,
    size: int,
    min_frequency: int,
    special_tokens: tuple[str, ...],
) -> list[str]:
    """Learns WordPiece tokens from word counts, deterministically.

    `tokenizers` numbers each "##c" token in the iteration order of a randomly
    seeded hash map and breaks ties between equally frequent merges by number,
    so two runs over the same text can learn different vocabularies.
    Registering every "##c" (`suffixes`) up front, in sorted order, fixes all
    numbers; since that needs the words first, they are counted first and
    replayed here.
    """
    learner = tokenizers.Tokenizer(models.WordPiece(unk_token=_UNKNOWN))
    learner.pre_tokenizer = pre_tokenizers.Split(_REPLAY_SEPARATOR, behavior="removed")
    trainer = trainers.WordPieceTrainer(
        vocab_size=size,
        min_frequency=min_frequency,
        # `normalized=True`: never matched in the replayed text, where "#",
        # "[" and "]" always stand alone between separators.
        special_tokens=[
            tokenizers.AddedToken(token, special=True, normalized=True)
            for token in (*special_tokens, *suffixes)
        ],
        continuing_subword_prefix=CONTINUATION,
        show_progress=False,  # its bar would show under --quiet; the caller shows progress
    )
    learner.train_from_iterator(_replay(counts), trainer=trainer)
    learned = learner.get_vocab(with_added_tokens=False)
    return sorted(learned, key=learned.__getitem__)


def _replay(counts: dict[str, int]) -> Iterator[list[str]]:
    """Yields texts that split on `_REPLAY_SEPARATOR` into each word `count` times."""
    batch = []
    for word, count in counts.items():
        for start in range(0, count, _REPEATS_PER_TEXT):
            repeats = min(_REPEATS_PER_TEXT, count - start)
            batch.append(_REPLAY_SEPARATOR.join(itertools.repeat(word, repeats)))
        if len(batch) >= DOCUMENTS_PER_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _most_used_characters(counts: dict[str, int]) -> list[str]:
    """Word-initial characters and "##" continuations, most used first."""
    usage = collections.Counter()
    for word, count in counts.items():
        usage[word[0]] += count
        for char in word[1:]:
            usage[f"##{char}"] += count
    return sorted(usage, key=lambda unit: (-usage[unit], unit))


def _survives_vocabulary_file(token: str) -> bool:
    # keras-hub reads the file line by line and strips trailing whitespace, so
    # a token ending in e.g. a no-break space could not be read back; dropping
    # it keeps keras-hub and `tokenizers` on the same vocabulary.
    return bool(token) and token == token.rstrip() and not {"\n", "\r"} & set(token)


def keras_hub_tokenizer(
    vocab_path: Path, *, lowercase: bool, cls: type
) -> keras_hub.tokenizers.WordPieceTokenizer:
    return cls(vocabulary=str(vocab_path), lowercase=lowercase)


def hf_tokenizer(vocab_path: Path, *, lowercase: bool) -> tokenizers.Tokenizer:
    # Built from the lines keras-hub reads rather than by `WordPiece.from_file`,
    # whose line splitting and stripping differ slightly; a repeated token
    # keeps its last id, as in keras-hub's token-to-id map.
    vocabulary = {token: i for i, token in enumerate(read_vocabulary(vocab_path))}
    model = models.WordPiece(
        vocabulary, unk_token=_UNKNOWN, max_input_chars_per_word=_MAX_BYTES_PER_WORD
    )
    tokenizer = tokenizers.Tokenizer(model)
    if lowercase:
        tokenizer.normalizer = _casefolding_normalizer(vocabulary)
        tokenizer.pre_tokenizer = pre_tokenizers.Split(_WORD_BREAK, behavior="removed")
    else:
        tokenizer.pre_tokenizer = _keras_hub_word_splitter()
    tokenizer.decoder = _decoder()
    return tokenizer


def _keras_hub_word_splitter() -> pre_tokenizers.PreTokenizer:
    """Splits raw text into keras-hub's words."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(tokenizers.Regex(_DROPPED_SPLITS), behavior="removed"),
            pre_tokenizers.Split(tokenizers.Regex(_KEPT_SPLITS), behavior="isolated"),
        ]
    )


def _casefolding_normalizer(vocabulary: dict[str, int]) -> normalizers.Normalizer:
    """Marks keras-hub's split points, then applies NFKC_Casefold (see top)."""
    ignorable = "".join(f"\\x{{{lo:X}}}-\\x{{{hi:X}}}" for lo, hi in _DEFAULT_IGNORABLE_RANGES)
    kept = _KEPT_SPLITS
    return normalizers.Sequence(
        [
            # A zero-width insertion at the very start corrupts the alignments
            # of `tokenizers` 0.23 and makes the following NFKC panic.
            normalizers.Prepend(_WORD_BREAK),
            normalizers.Replace(tokenizers.Regex(_DROPPED_SPLITS), _WORD_BREAK),
            normalizers.Replace(tokenizers.Regex(f"(?={kept})|(?<={kept})"), _WORD_BREAK),
            normalizers.NFKC(),
            normalizers.Lowercase(),
            *(normalizers.Replace(lower, folded) for lower, folded in _casefold_fixups(vocabulary)),
            normalizers.NFKC(),
            normalizers.Replace(tokenizers.Regex(f"[{ignorable}]"), ""),
        ]
    )


def _casefold_fixups(vocabulary: dict[str, int]) -> list[tuple[str, str]]:
    """The (lowercase, case-folded) pairs that can change an id for `vocabulary`.

    A word holding a character that no token contains is [UNK] whatever else
    it holds. So a pair, each one more pass over the text, can be left out
    when no token holds a character of the pair's scripts (named by the first
    word of the Unicode name, e.g. "CHEROKEE"), which any character composed
    from them by NFKC shares.
    """
    chars = set("".join(vocabulary).replace("##", ""))
    scripts = {_script(char) for char in chars}
    return [
        (lower, folded)
        for lower, folded in _all_casefold_fixups()
        if any(_script(char) in scripts for char in lower + folded)
    ]


def _script(char: str) -> str:
    return unicodedata.name(char, "").partition(" ")[0]


@functools.cache
def _all_casefold_fixups() -> tuple[tuple[str, str], ...]:
    """Pairs (lowercase character, its NFKC case folding) where the two differ.

    `Lowercase` and then these replacements give full case folding: "ß" ->
    "ss", "ς" -> "σ", "ᾳ" -> "αι", Cherokee small letters -> capitals (134
    pairs). Computed once from `unicodedata`, in about 0.5 s.
    """
    pairs = []
    for code_point in range(0x110000):
        char = chr(code_point)
        if char.casefold() == char.lower() or char.lower() != char:
            continue
        folded = unicodedata.normalize("NFKC", char.casefold())
        if unicodedata.normalize("NFKC", char) == char and folded != char:
            pairs.append((char, folded))
    return tuple(pairs)

