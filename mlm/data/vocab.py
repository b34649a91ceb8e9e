"""Learn a vocabulary for a tokenizer family and build its keras-hub tokenizer.

Each family learns with the library that writes exactly the assets its
keras-hub tokenizers load, and splits text the way they do, so the learned
vocabulary is the one keras-hub will actually use, and `hf_tokenizer()` (the
trainer's own tokenizer) gives the ids of `build_tokenizer()`:

| family | architectures | trainer | assets |
|---|---|---|---|
| wordpiece | BERT, DistilBERT, RoFormerV2 | `tokenizers` WordPiece | vocabulary.txt |
| sentencepiece | ALBERT, DeBERTaV3, FNet, XLM-R | `sentencepiece` unigram | vocabulary.spm |
| byte_bpe | RoBERTa | `tokenizers` byte-level BPE | vocabulary.json, merges.txt |

The `tokenizers` trainers (Rust, multi-threaded) are many times faster than
`keras_hub.tokenizers.compute_word_piece_vocabulary`. The special tokens come
first, at the ids the architecture's keras-hub tokenizer expects; they are
the `special_tokens` of its row in `mlm.architectures`.

Each family is one row of `_FAMILIES`: how to learn it, and how to load the
keras-hub and the trainer's tokenizer from what was learned.

Example:

```python
from pathlib import Path
from mlm.data.vocab import build_tokenizer, train_vocabulary

path = train_vocabulary(
    ["The quick brown fox.", "The lazy dog."],
    family="wordpiece",
    size=100,
    lowercase=True,
    min_frequency=1,
    out_dir=Path("run/vocab"),
)
tokenizer = build_tokenizer(path, family="wordpiece", lowercase=True)
tokenizer("the fox")

# ALBERT: a sentencepiece model with ALBERT's special tokens at ids 0-4.
path = train_vocabulary(
    ["The quick brown fox.", "The lazy dog."] * 10,
    family="sentencepiece",
    size=30,
    lowercase=True,
    min_frequency=1,
    out_dir=Path("run/albert_vocab"),
    special_tokens=("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"),
)
tokenizer = build_tokenizer(
    path, family="sentencepiece", lowercase=True, tokenizer="AlbertTokenizer"
)
```
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import itertools
import json
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import sentencepiece
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from mlm.errors import MlmError

if TYPE_CHECKING:
    import keras_hub

# BERT's special tokens. [PAD] must be id 0: keras-hub pads token ids with 0.
WORDPIECE_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# The asset `keras_hub.tokenizers.WordPieceTokenizer` saves and loads.
WORDPIECE_VOCABULARY_FILE = "vocabulary.txt"
# The token keras-hub's WordPieceTokenizer maps unknown words to (`oov_token`).
_WORDPIECE_UNKNOWN = "[UNK]"

# ALBERT's special tokens, as AlbertTokenizer and FNetTokenizer look them up.
ALBERT_SPECIAL_TOKENS = ("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]")
# The asset `keras_hub.tokenizers.SentencePieceTokenizer` saves and loads.
SENTENCEPIECE_MODEL_FILE = "vocabulary.spm"
# At most this many sentences (of up to `_SENTENCE_CHARS` characters, in
# practice a few hundred) are sampled from a larger corpus for the
# sentencepiece trainer, which holds them in memory; about 1 GB of text at
# most.
SENTENCEPIECE_MAX_SENTENCES = 2_000_000
_SENTENCE_CHARS = 1000
_SENTENCEPIECE_SEED = 1
_SENTENCEPIECE_THREADS = 16
# By default no byte pieces for characters left out of the vocabulary: they
# read as the unknown token, as in the reference ALBERT, DeBERTaV3, FNet and
# XLM-R models. Byte fallback (`train_vocabulary(byte_fallback=True)`) spends
# 256 entries of the vocabulary on bytes.
_SENTENCEPIECE_BYTE_FALLBACK = False
# The special tokens the sentencepiece model holds as its own unknown,
# padding, begin and end pieces; the others become control symbols.
_SENTENCEPIECE_ROLES = {
    "unk": ("<unk>", "[UNK]"),
    "pad": ("<pad>", "[PAD]"),
    "bos": ("<s>",),
    "eos": ("</s>",),
}

# RoBERTa's special tokens, in the fairseq order of its vocabulary.
ROBERTA_SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
# The assets `keras_hub.tokenizers.BytePairTokenizer` saves and loads.
BYTE_BPE_VOCABULARY_FILE = "vocabulary.json"
BYTE_BPE_MERGES_FILE = "merges.txt"
# The first line of GPT-2's and RoBERTa's merges files; keras-hub and
# `tokenizers` skip it.
_BPE_MERGES_HEADER = "#version: 0.2"
# The special tokens RobertaTokenizer keeps whole in text.
_ROBERTA_UNSPLITTABLE = ("<s>", "<pad>", "</s>", "<mask>")
# keras-hub's `tf.data` path of BytePairTokenizer (see "Byte-level BPE"
# below): RE2's `\s`, the spaces it adds to it, its marker, and its pattern
# (`SPLIT_PATTERN_1`) with those spelled out for Oniguruma.
_RE2_SPACE = "\t\n\f\r "
_BPE_SPECIAL_SPACES = "\u00a0\u2009\u202f\u3000"
_BPE_MARK = "\u096c"
_KERAS_HUB_BPE_SPLIT = (
    f"'s|'t|'re|'ve|'m|'ll|'d"
    f"|[{_RE2_SPACE}{_BPE_SPECIAL_SPACES}]+[\n\r\t\f{_BPE_MARK}{_BPE_SPECIAL_SPACES}]"
    f"| ?\\p{{L}}+| ?\\p{{N}}+| ?[^{_RE2_SPACE}\\p{{L}}\\p{{N}}{_BPE_SPECIAL_SPACES}]+"
)

_NO_WORDS = (
    "the corpus gave no words to learn a vocabulary from (received only "
    "empty or whitespace documents); check the corpus paths and text column."
)
# Documents handed to the Rust trainer per call, so a streamed corpus is never
# held in memory whole.
DOCUMENTS_PER_BATCH = 1000

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


@dataclasses.dataclass(frozen=True)
class _Family:
    """How to learn one tokenizer family's vocabulary and load it again."""

    # File names of the assets the keras-hub tokenizer loads. The first is the
    # path `train_vocabulary()` returns; the others lie beside it.
    assets: tuple[str, ...]
    # The special tokens, in id order, when the caller names none.
    special_tokens: tuple[str, ...]
    # The `keras_hub.models` tokenizer class built when the caller names none.
    tokenizer: str
    # The `keras_hub.tokenizers` class every tokenizer of this family derives from.
    keras_hub_base: str
    # (batches, *, size, lowercase, min_frequency, special_tokens, out_dir) -> asset path.
    train: Callable[..., Path]
    # (asset path, *, lowercase, cls) -> an instance of the keras-hub class `cls`.
    keras_hub_tokenizer: Callable[..., keras_hub.tokenizers.Tokenizer]
    # (asset path, *, lowercase) -> the trainer library's own tokenizer.
    hf_tokenizer: Callable[..., object]


def train_vocabulary(
    documents: Iterable[str],
    *,
    family: str,
    size: int,
    lowercase: bool,
    min_frequency: int,
    out_dir: Path,
    special_tokens: tuple[str, ...] | None = None,
    byte_fallback: bool = _SENTENCEPIECE_BYTE_FALLBACK,
) -> Path:
    """Learns a vocabulary from `documents` and writes it into `out_dir`.

    The documents are streamed to the trainer in batches, never all held in
    memory whole (the sentencepiece trainer keeps at most
    `SENTENCEPIECE_MAX_SENTENCES` sentences of them). Re-running with the same
    inputs rewrites byte-identical files.

    Args:
        documents: The raw training text, one string per document; may be a
            generator over a corpus larger than memory.
        family: The tokenizer family: `"wordpiece"` (BERT, DistilBERT,
            RoFormerV2), `"sentencepiece"` (ALBERT, DeBERTaV3, FNet,
            XLM-RoBERTa) or `"byte_bpe"` (RoBERTa).
        size: The largest vocabulary to learn, special tokens included. A
            small corpus may give fewer entries: ask the tokenizer for the
            real size.
        lowercase: Whether to case-fold text first: an "uncased" vocabulary.
            Must be False for "byte_bpe", whose keras-hub tokenizer cannot
            lowercase.
        min_frequency: How often a pair of subwords must occur to be merged
            ("wordpiece", "byte_bpe"); the unigram trainer of "sentencepiece"
            has no such threshold and ignores it.
        out_dir: The folder to write the vocabulary assets into; created if
            missing.
        special_tokens: The special tokens in id order, from the
            architecture's row (`mlm.architectures`); they take ids 0, 1, ...
            Defaults to the family's BERT, ALBERT or RoBERTa tokens.
        byte_fallback: "sentencepiece" only: spell characters left out of
            the vocabulary as UTF-8 byte pieces (256 entries) instead of the
            unknown token.

    Returns:
        The path of the written asset: `out_dir / "vocabulary.txt"`
        (wordpiece), `out_dir / "vocabulary.spm"` (sentencepiece) or
        `out_dir / "vocabulary.json"` with `merges.txt` beside it (byte_bpe).
    """
    spec = _family(family)
    if isinstance(documents, str):
        raise MlmError(
            "documents must be an iterable of strings, but received a single "
            f"string of {len(documents)} characters; wrap it in a list."
        )
    if min_frequency < 1:
        raise MlmError(
            f"min_frequency must be at least 1, but received min_frequency={min_frequency}."
        )
    special_tokens = _checked_special_tokens(special_tokens, spec)
    if size <= len(special_tokens):
        raise MlmError(
            f"the vocabulary size must exceed the {len(special_tokens)} "
            f"special tokens, but received size={size}; raise it."
        )
    options = {}
    if byte_fallback:
        if family != "sentencepiece":
            raise MlmError(
                f"byte_fallback needs the sentencepiece family, but received "
                f"family='{family}'; remove byte_fallback."
            )
        if size <= len(special_tokens) + 256:
            raise MlmError(
                f"byte fallback takes 256 entries besides the {len(special_tokens)} special "
                f"tokens, but received size={size}; raise it above {len(special_tokens) + 256}."
            )
        options["byte_fallback"] = True
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return spec.train(
        _batches(documents, batch_size=DOCUMENTS_PER_BATCH),
        size=size,
        lowercase=lowercase,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        out_dir=out_dir,
        **options,
    )


def build_tokenizer(
    vocab_path: Path, *, family: str, lowercase: bool, tokenizer: str | None = None
) -> keras_hub.tokenizers.Tokenizer:
    """Returns the keras-hub tokenizer for a learned vocabulary.

    Args:
        vocab_path: The asset written by `train_vocabulary()`.
        family: The tokenizer family the asset was learned for.
        lowercase: Whether the vocabulary was learned with `lowercase=True`.
            A sentencepiece model records its own normalization: a mismatch
            raises `MlmError`.
        tokenizer: The `keras_hub.models` class name, from the architecture's
            row, e.g. `"AlbertTokenizer"`. Defaults to the family's
            `BertTokenizer`, `AlbertTokenizer` or `RobertaTokenizer`.

    Returns:
        An instance of `keras_hub.models.<tokenizer>`.
    """
    spec = _family(family)
    cls = _keras_hub_class(tokenizer or spec.tokenizer, family=family, spec=spec)
    return spec.keras_hub_tokenizer(_existing(vocab_path, spec=spec), lowercase=lowercase, cls=cls)


def hf_tokenizer(vocab_path: Path, *, family: str, lowercase: bool):
    """Returns the trainer library's own tokenizer for a learned vocabulary.

    Like the keras-hub tokenizer, it adds no start or end tokens, and reads
    "[MASK]" in text as plain characters (but RoBERTa's "<s>", "</s>",
    "<pad>" and "<mask>" as those tokens, as `RobertaTokenizer` does).

    - "wordpiece" and "byte_bpe": a `tokenizers.Tokenizer` giving the ids of
      the keras-hub tokenizer (of its `tf.data` path for "byte_bpe", see
      `_KERAS_HUB_BPE_SPLIT`), up to the rare characters listed in this
      module's comments; `.encode(text).ids` are the token ids.
      `.encode_batch(texts)` is several times faster than eager calls of the
      keras-hub tokenizer, though slower than mapping that over a
      `tf.data.Dataset` (on 2 cores, 1-1.6 s against 0.4 s for the 4 MB
      sample, wordpiece).
    - "sentencepiece": a `sentencepiece.SentencePieceProcessor`;
      `.encode(text)` is a list of ids, `.encode(texts)` one list per text.
      `AlbertTokenizer`, `DebertaV3Tokenizer` and `FNetTokenizer` give these
      ids; `XLMRobertaTokenizer` gives `3` for the unknown id `0` and `id + 1`
      for every other id (the fairseq layout, see `xlm_roberta_ids()`).

    Args:
        vocab_path: The asset written by `train_vocabulary()`.
        family: The tokenizer family the asset was learned for.
        lowercase: Whether the vocabulary was learned with `lowercase=True`.
    """
    spec = _family(family)
    return spec.hf_tokenizer(_existing(vocab_path, spec=spec), lowercase=lowercase)


def xlm_roberta_ids(ids: Iterable[int]) -> list[int]:
    """Maps sentencepiece ids to `XLMRobertaTokenizer` ids.

    keras-hub's tokenizer follows fairseq: "<s>", "<pad>", "</s>", "<unk>"
    take ids 0-3, the model's unknown piece (id 0) becomes 3, every other
    piece moves up by one, and "<mask>" is appended after the last piece.
    """
    return [3 if i == 0 else i + 1 for i in ids]


def vocabulary_path(out_dir: Path, *, family: str) -> Path:
    """Where `train_vocabulary(..., out_dir=out_dir)` writes the asset of `family`."""
    return Path(out_dir) / _family(family).assets[0]


def vocabulary_files(out_dir: Path, *, family: str) -> tuple[Path, ...]:
    """Every file `train_vocabulary(..., out_dir=out_dir)` writes, the main asset first."""
    return tuple(Path(out_dir) / name for name in _family(family).assets)


def families() -> tuple[str, ...]:
    """The names of the tokenizer families that can be learned."""
    return tuple(_FAMILIES)


def read_vocabulary(vocab_path: Path) -> list[str]:
    """Reads a vocabulary file exactly as keras-hub's WordPieceTokenizer does."""
    with open(vocab_path, encoding="utf-8") as file:
        return [line.rstrip() for line in file]


def _family(name: str) -> _Family:
    if name not in _FAMILIES:
        raise MlmError(f"unknown tokenizer family '{name}'; choose one of: {', '.join(_FAMILIES)}.")
    return _FAMILIES[name]


def _checked_special_tokens(special_tokens, spec: _Family) -> tuple[str, ...]:
    if special_tokens is None:
        return spec.special_tokens
    if isinstance(special_tokens, str):
        raise MlmError(
            f"special_tokens must be a tuple of strings, but received the string "
            f"{special_tokens!r}; wrap it in a tuple."
        )
    special_tokens = tuple(special_tokens)
    if not special_tokens or not all(isinstance(t, str) and t.strip() for t in special_tokens):
        raise MlmError(
            f"special_tokens must be non-empty strings, but received {special_tokens!r}."
        )
    if len(set(special_tokens)) != len(special_tokens):
        raise MlmError(f"special_tokens must be distinct, but received {special_tokens!r}.")
    return special_tokens


def _keras_hub_class(name: str, *, family: str, spec: _Family):
    """The `keras_hub.models` class `name`, checked to load this family's assets."""
    # Imported here: learning a vocabulary needs neither keras-hub nor the
    # TensorFlow it loads.
    import keras_hub

    cls = getattr(keras_hub.models, name, None)
    base = getattr(keras_hub.tokenizers, spec.keras_hub_base)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise MlmError(
            f"tokenizer '{name}' is not a keras_hub.models {spec.keras_hub_base} "
            f"and cannot load a {family} vocabulary; pass the tokenizer class of "
            "the architecture's row, e.g. "
            f"'{spec.tokenizer}'."
        )
    return cls


def _existing(vocab_path: Path, *, spec: _Family) -> Path:
    path = Path(vocab_path)
    beside = spec.assets[1:]
    for name in (path.name, *beside):
        if not (path.parent / name).is_file():
            also = f", with {', '.join(beside)} beside it" if beside else ""
            raise MlmError(
                f"vocabulary file not found: {path.parent / name}; pass the file written by "
                f"train_vocabulary() (e.g. the run folder's {spec.assets[0]}{also})."
            )
    return path


def _batches(documents: Iterable[str], *, batch_size: int) -> Iterator[list[str]]:
    """Yields lists of `batch_size` documents, checking that each is a string."""
    iterator = iter(documents)
    while batch := list(itertools.islice(iterator, batch_size)):
        for document in batch:
            if not isinstance(document, str):
                raise MlmError(
                    "every document must be a string, but received "
                    f"{type(document).__name__} {document!r:.60}; decode or "
                    "convert the corpus to text."
                )
        yield batch


def _write_lines(lines: list[str], path: Path) -> None:
    """Writes one line per entry, UTF-8 with "\\n" endings, through `_write_bytes`."""
    _write_bytes("".join(f"{line}\n" for line in lines).encode("utf-8"), path)


def _write_bytes(data: bytes, path: Path) -> None:
    """Writes `data` through a temporary file, so no half file is left."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


# --- WordPiece (BERT) ---------------------------------------------------------


def _train_wordpiece(
    batches: Iterator[list[str]],
    *,
    size: int,
    lowercase: bool,
    min_frequency: int,
    special_tokens: tuple[str, ...],
    out_dir: Path,
) -> Path:
    """Learns a BERT WordPiece vocabulary and writes `vocabulary.txt`."""
    if _WORDPIECE_UNKNOWN not in special_tokens:
        raise MlmError(
            f"a wordpiece vocabulary needs the {_WORDPIECE_UNKNOWN} token keras-hub maps "
            f"unknown words to, but special_tokens={special_tokens!r}; add it."
        )
    counts = _count_words(batches)
    if lowercase:
        counts = _casefold_counts(counts)
    if not counts:
        raise MlmError(_NO_WORDS)
    tokens = _learn_wordpieces(
        counts, size=size, min_frequency=min_frequency, special_tokens=special_tokens
    )
    path = out_dir / WORDPIECE_VOCABULARY_FILE
    _write_lines(tokens, path)
    return path


def _count_words(batches: Iterator[list[str]]) -> dict[str, int]:
    """Counts the words keras-hub splits the documents into, before case folding."""
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
    learner = tokenizers.Tokenizer(models.WordPiece(unk_token=_WORDPIECE_UNKNOWN))
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
        continuing_subword_prefix="##",
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


def _wordpiece_keras_hub_tokenizer(
    vocab_path: Path, *, lowercase: bool, cls: type
) -> keras_hub.tokenizers.WordPieceTokenizer:
    return cls(vocabulary=str(vocab_path), lowercase=lowercase)


def _wordpiece_hf_tokenizer(vocab_path: Path, *, lowercase: bool) -> tokenizers.Tokenizer:
    # Built from the lines keras-hub reads rather than by `WordPiece.from_file`,
    # whose line splitting and stripping differ slightly; a repeated token
    # keeps its last id, as in keras-hub's token-to-id map.
    vocabulary = {token: i for i, token in enumerate(read_vocabulary(vocab_path))}
    model = models.WordPiece(
        vocabulary, unk_token=_WORDPIECE_UNKNOWN, max_input_chars_per_word=_MAX_BYTES_PER_WORD
    )
    tokenizer = tokenizers.Tokenizer(model)
    if lowercase:
        tokenizer.normalizer = _casefolding_normalizer(vocabulary)
        tokenizer.pre_tokenizer = pre_tokenizers.Split(_WORD_BREAK, behavior="removed")
    else:
        tokenizer.pre_tokenizer = _keras_hub_word_splitter()
    # keras-hub's detokenize() joins words with single spaces, no clean-up.
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
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


# --- SentencePiece unigram (ALBERT, DeBERTaV3, FNet, XLM-RoBERTa) ------------
#
# The asset is the sentencepiece model proto; keras-hub's SentencePieceTokenizer
# runs it with TensorFlow Text's op inside `tf.data` and with the
# `sentencepiece` library in eager calls, so learning it with `sentencepiece`
# makes all three agree by construction. Each keras-hub tokenizer looks its
# special tokens up by piece (ALBERT, FNet, DeBERTaV3) or at fixed ids
# (XLM-R); `special_tokens` puts them at ids 0, 1, ... as the architecture
# row lists them: the unknown, padding, "<s>" and "</s>" tokens as the model's
# own unk/pad/bos/eos pieces, every other one (e.g. "[CLS]", "[MASK]") as a
# control symbol, which encoding never produces from text: like keras-hub's
# BertTokenizer, text holding "[MASK]" is read as characters, not as the mask.


def _train_sentencepiece(
    batches: Iterator[list[str]],
    *,
    size: int,
    lowercase: bool,
    min_frequency: int,
    special_tokens: tuple[str, ...],
    out_dir: Path,
    byte_fallback: bool = _SENTENCEPIECE_BYTE_FALLBACK,
) -> Path:
    """Learns a unigram sentencepiece model and writes `vocabulary.spm`."""
    del min_frequency  # The unigram trainer prunes by likelihood, not by count.
    sentences = _Sentences(batches)
    model = io.BytesIO()
    # Only used to sample `SENTENCEPIECE_MAX_SENTENCES` of a larger corpus;
    # fixed so that a re-run keeps the same sample.
    sentencepiece.set_random_generator_seed(_SENTENCEPIECE_SEED)
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type="unigram",
            vocab_size=size,
            # A corpus too small for `size` gives a smaller vocabulary.
            hard_vocab_limit=False,
            # The NFKC and whitespace rules of the reference models; "_cf"
            # adds Unicode case folding.
            normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
            # Characters rarer than this share of the text are left out and
            # read as the unknown token, as in the reference models, or as
            # their bytes with `byte_fallback`.
            character_coverage=0.9995,
            byte_fallback=byte_fallback,
            input_sentence_size=SENTENCEPIECE_MAX_SENTENCES,
            shuffle_input_sentence=True,
            max_sentence_length=4 * _SENTENCE_CHARS,
            # The learned model depends on the number of threads (partial
            # sums), not on the machine's cores: a fixed count gives the same
            # file everywhere.
            num_threads=_SENTENCEPIECE_THREADS,
            minloglevel=2,
            **_sentencepiece_special_pieces(special_tokens),
        )
    except RuntimeError as error:
        if sentences.error is not None:
            raise sentences.error from None
        if sentences.count == 0 or "all_chars_count" in str(error):
            raise MlmError(_NO_WORDS) from None
        reason = str(error).splitlines()[0].rpartition("] ")[2]
        raise MlmError(
            f"sentencepiece could not learn a vocabulary of size={size}: {reason}"
        ) from None
    proto = model.getvalue()
    _check_special_pieces(proto, special_tokens)
    path = out_dir / SENTENCEPIECE_MODEL_FILE
    _write_bytes(proto, path)
    return path


class _Sentences:
    """The documents as sentencepiece training sentences.

    A document is cut at line breaks, and lines longer than `_SENTENCE_CHARS`
    at the last space before it: the trainer skips longer sentences, and since
    no piece spans a space, cutting there changes nothing it learns. An error
    raised while reading is kept, as the trainer turns it into a RuntimeError.
    """

    def __init__(self, batches: Iterator[list[str]]):
        self.batches = batches
        self.count = 0
        self.error: Exception | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            for batch in self.batches:
                for document in batch:
                    for line in document.split("\n"):
                        for sentence in _cut(line, limit=_SENTENCE_CHARS):
                            if not sentence.isspace():
                                self.count += 1
                                yield sentence
        except Exception as error:
            self.error = error
            raise


def _cut(line: str, *, limit: int) -> Iterator[str]:
    """Yields pieces of `line` of at most `limit` characters, cut before spaces."""
    while len(line) > limit:
        cut = line.rfind(" ", 1, limit + 1)
        cut = cut if cut > 0 else limit  # no space: cut inside the word
        yield line[:cut]
        line = line[cut:]
    if line:
        yield line


def _sentencepiece_special_pieces(special_tokens: tuple[str, ...]) -> dict:
    """Trainer options that put `special_tokens` at ids 0, 1, ... in order."""
    options = {f"{role}_id": -1 for role in _SENTENCEPIECE_ROLES}
    control = []
    for i, token in enumerate(special_tokens):
        role = next((r for r, names in _SENTENCEPIECE_ROLES.items() if token in names), None)
        if role is None or options[f"{role}_id"] != -1:
            # The trainer gives control symbols the free ids in order.
            control.append(token)
        else:
            options[f"{role}_id"] = i
            options[f"{role}_piece"] = token
    if options["unk_id"] == -1:
        raise MlmError(
            "a sentencepiece vocabulary needs an unknown token (one of "
            f"{', '.join(_SENTENCEPIECE_ROLES['unk'])}) among special_tokens, but "
            f"received {special_tokens!r}; add it."
        )
    return {**options, "control_symbols": control}


def _check_special_pieces(proto: bytes, special_tokens: tuple[str, ...]) -> None:
    processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
    pieces = tuple(processor.id_to_piece(i) for i in range(len(special_tokens)))
    if pieces != special_tokens:
        raise MlmError(
            f"sentencepiece put the special tokens {pieces!r} first instead of "
            f"{special_tokens!r}; reorder special_tokens."
        )


def _sentencepiece_keras_hub_tokenizer(
    model_path: Path, *, lowercase: bool, cls: type
) -> keras_hub.tokenizers.SentencePieceTokenizer:
    _check_normalization(model_path, lowercase=lowercase)
    return cls(proto=str(model_path))


def _sentencepiece_hf_tokenizer(model_path: Path, *, lowercase: bool):
    _check_normalization(model_path, lowercase=lowercase)
    return sentencepiece.SentencePieceProcessor(model_file=str(model_path))


def _check_normalization(model_path: Path, *, lowercase: bool) -> None:
    """Checks that the model case-folds exactly when `lowercase` says so."""
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(model_path.read_bytes())
    folds = model.normalizer_spec.name.endswith("_cf")
    if folds != lowercase:
        learned = "uncased (lowercase=True)" if folds else "cased (lowercase=False)"
        raise MlmError(
            f"the sentencepiece model {model_path} was learned {learned}, but "
            f"received lowercase={lowercase}; pass lowercase={folds} or learn it again."
        )


# --- Byte-level BPE (RoBERTa) -------------------------------------------------
#
# keras-hub's BytePairTokenizer has two paths that split text differently:
# - `tf.data` (TensorFlow) path: the GPT-2 pattern, rewritten for RE2, which
#   has no lookahead (`split_strings_for_bpe()` in keras_hub/src/tokenizers/
#   byte_pair_tokenizer.py). It inserts "६" before each space followed by a
#   non-space, splits with `_KERAS_HUB_BPE_SPLIT`, splits the last whitespace
#   character (or "६") off each piece, and drops the pieces "६". Unlike GPT-2
#   it keeps "\n\n" and "\r\n" whole, splits trailing spaces one by one, and
#   counts only ASCII whitespace and four special spaces as whitespace.
# - eager (Python) path: in keras-hub 0.32 it hands its Llama-3 pattern to
#   `tokenizers.pre_tokenizers.Split` as a plain `str`, which `tokenizers`
#   matches literally (huggingface/tokenizers#1565), so BPE runs over the
#   whole text unsplit. Its ids differ from the `tf.data` path's wherever a
#   learned merge spans a split point, e.g. "ĠĠ" (two spaces, learned from
#   indented text) before "Ġword".
# This module learns and mirrors the `tf.data` path, which tokenizes every
# training example (`mlm.data.token_cache`, and keras-hub's own `fit`/`predict` on
# strings). Known differences left: characters newer than the Unicode tables
# of RE2 or Oniguruma (`tokenizers`), e.g. Unicode 16's U+1C89, U+A7CD, the
# Egyptian hieroglyphs from U+13460 and the Garay digits (a sweep of every
# code point below U+3100 and 1 in 37 above, each in 7 contexts of letters,
# digits and spaces, found no other difference); text holding keras-hub's
# placeholders "ĴA"-"ĴD" for special tokens; and text ending in a whitespace
# character followed by the four special spaces in a row.


def _train_byte_bpe(
    batches: Iterator[list[str]],
    *,
    size: int,
    lowercase: bool,
    min_frequency: int,
    special_tokens: tuple[str, ...],
    out_dir: Path,
) -> Path:
    """Learns byte-level BPE merges and writes `vocabulary.json` and `merges.txt`."""
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
    learner = _byte_bpe_tokenizer(models.BPE())
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
        raise MlmError(_NO_WORDS)
    model = json.loads(learner.to_str())["model"]
    vocabulary = dict(sorted(model["vocab"].items(), key=lambda item: item[1]))
    merges = [_BPE_MERGES_HEADER, *(" ".join(pair) for pair in model["merges"])]
    # Merges first: a vocabulary file present means the run is complete.
    _write_lines(merges, out_dir / BYTE_BPE_MERGES_FILE)
    path = out_dir / BYTE_BPE_VOCABULARY_FILE
    _write_lines([json.dumps(vocabulary, ensure_ascii=False)], path)
    return path


class _Seen:
    """Passes batches of documents on, noting whether any held non-space text."""

    def __init__(self, batches: Iterator[list[str]]):
        self.batches = batches
        self.text = False

    def __iter__(self) -> Iterator[list[str]]:
        for batch in self.batches:
            self.text = self.text or any(not d.isspace() for d in batch if d)
            yield batch


def _byte_bpe_tokenizer(model: models.Model) -> tokenizers.Tokenizer:
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


def _byte_bpe_keras_hub_tokenizer(
    vocab_path: Path, *, lowercase: bool, cls: type
) -> keras_hub.tokenizers.BytePairTokenizer:
    _check_cased(lowercase)
    return cls(vocabulary=str(vocab_path), merges=str(vocab_path.parent / BYTE_BPE_MERGES_FILE))


def _byte_bpe_hf_tokenizer(vocab_path: Path, *, lowercase: bool) -> tokenizers.Tokenizer:
    _check_cased(lowercase)
    with open(vocab_path, encoding="utf-8") as file:
        vocabulary = json.load(file)
    with open(vocab_path.parent / BYTE_BPE_MERGES_FILE, encoding="utf-8") as file:
        lines = [line.rstrip() for line in file]
    # Split as keras-hub splits them; byte-level tokens hold no spaces.
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version:")]
    tokenizer = _byte_bpe_tokenizer(models.BPE(vocabulary, merges))
    # RobertaTokenizer reads its start, end, padding and mask tokens in text
    # as those tokens (`unsplittable_tokens`), but not "<unk>".
    tokenizer.add_special_tokens([t for t in _ROBERTA_UNSPLITTABLE if t in vocabulary])
    return tokenizer


def _check_cased(lowercase: bool) -> None:
    if lowercase:
        raise MlmError(
            "the byte_bpe family (RoBERTa) is cased: keras-hub's RobertaTokenizer "
            "cannot lowercase text; pass lowercase=False."
        )


_FAMILIES = {
    "wordpiece": _Family(
        assets=(WORDPIECE_VOCABULARY_FILE,),
        special_tokens=WORDPIECE_SPECIAL_TOKENS,
        tokenizer="BertTokenizer",
        keras_hub_base="WordPieceTokenizer",
        train=_train_wordpiece,
        keras_hub_tokenizer=_wordpiece_keras_hub_tokenizer,
        hf_tokenizer=_wordpiece_hf_tokenizer,
    ),
    "sentencepiece": _Family(
        assets=(SENTENCEPIECE_MODEL_FILE,),
        special_tokens=ALBERT_SPECIAL_TOKENS,
        tokenizer="AlbertTokenizer",
        keras_hub_base="SentencePieceTokenizer",
        train=_train_sentencepiece,
        keras_hub_tokenizer=_sentencepiece_keras_hub_tokenizer,
        hf_tokenizer=_sentencepiece_hf_tokenizer,
    ),
    "byte_bpe": _Family(
        assets=(BYTE_BPE_VOCABULARY_FILE, BYTE_BPE_MERGES_FILE),
        special_tokens=ROBERTA_SPECIAL_TOKENS,
        tokenizer="RobertaTokenizer",
        keras_hub_base="BytePairTokenizer",
        train=_train_byte_bpe,
        keras_hub_tokenizer=_byte_bpe_keras_hub_tokenizer,
        hf_tokenizer=_byte_bpe_hf_tokenizer,
    ),
}
