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

Each family is one module, holding its own constants and its word
boundaries (`is_word_start`, `word_starts`, `detokenize`): `wordpiece`,
`sentencepiece` and `byte_bpe`. Each offers the same functions (`train`,
`keras_hub_tokenizer`, `hf_tokenizer`, the word boundaries) and names its
assets (`ASSETS`, the main one first) and its default architecture row
(`ARCHITECTURE`); this module picks the family by name and writes the assets.

Example:

```python
from pathlib import Path
from mlm.data.vocab import build_tokenizer, detokenize, train_vocabulary, word_starts

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

# Word boundaries, one flag per token id (for whole-word masking).
vocabulary = [tokenizer.id_to_token(i) for i in range(tokenizer.vocabulary_size())]
starts = word_starts(vocabulary, family="wordpiece", special_tokens=tokenizer.special_tokens)
starts[tokenizer("the fox")]  # [True, True]: does each token begin a word?
detokenize(["the", "fox", "##es"], family="wordpiece")  # "the foxes"

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

import contextlib
import itertools
import types
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlm import atomic
from mlm.architectures import get_architecture
from mlm.data.vocab import byte_bpe, sentencepiece, wordpiece
from mlm.data.vocab.common import DOCUMENTS_PER_BATCH
from mlm.data.vocab.sentencepiece import xlm_roberta_ids
from mlm.data.vocab.wordpiece import read_vocabulary
from mlm.errors import MlmError

if TYPE_CHECKING:
    import keras_hub

__all__ = [
    "build_tokenizer", "detokenize", "families", "hf_tokenizer", "is_word_start",
    "read_vocabulary", "train_vocabulary", "vocabulary_files", "vocabulary_path",
    "word_starts", "xlm_roberta_ids",
]

# The family modules by name, in the order `families()` lists them.
_FAMILIES = {"wordpiece": wordpiece, "sentencepiece": sentencepiece, "byte_bpe": byte_bpe}


def train_vocabulary(
    documents: Iterable[str],
    *,
    family: str,
    size: int,
    lowercase: bool,
    min_frequency: int,
    out_dir: Path,
    special_tokens: tuple[str, ...] | None = None,
    byte_fallback: bool = sentencepiece.BYTE_FALLBACK,
    word_counts: dict[str, int] | None = None,
) -> Path:
    """Learns a vocabulary from `documents` and writes it into `out_dir`.

    The documents are streamed to the trainer in batches, never all held in
    memory whole (the sentencepiece trainer keeps at most
    `sentencepiece.MAX_SENTENCES` sentences of them). Re-running with the same
    inputs rewrites byte-identical files. Nothing is written until the
    vocabulary is learned, and a failure leaves `out_dir` as it was: a
    missing or empty `out_dir`, or one holding only this family's assets, is
    replaced whole; in a folder holding other files (which are kept) each
    asset replaces its namesake once all are written, the main asset last.

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
            missing. Other files in it are kept.
        special_tokens: The special tokens in id order, from the
            architecture's row (`mlm.architectures`); they take ids 0, 1, ...
            Defaults to those of the family's first row: BERT, ALBERT or
            RoBERTa.
        byte_fallback: "sentencepiece" only: spell characters left out of
            the vocabulary as UTF-8 byte pieces (256 entries) instead of the
            unknown token.
        word_counts: "wordpiece" only: the words of the documents, already
            counted by `wordpiece.count_words` (in parts, added up);
            `documents` is then not read.

    Returns:
        The path of the written asset: `out_dir / "vocabulary.txt"`
        (wordpiece), `out_dir / "vocabulary.spm"` (sentencepiece) or
        `out_dir / "vocabulary.json"` with `merges.txt` beside it (byte_bpe).
    """
    module = _family(family)
    if isinstance(documents, str):
        raise MlmError(
            "documents must be an iterable of strings, but received a single "
            f"string of {len(documents)} characters; wrap it in a list."
        )
    if min_frequency < 1:
        raise MlmError(
            f"min_frequency must be at least 1, but received min_frequency={min_frequency}."
        )
    special_tokens = _checked_special_tokens(special_tokens, module)
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
    if word_counts is not None:
        if family != "wordpiece":
            raise MlmError(f"word_counts needs the wordpiece family, but received "
                           f"family='{family}'; pass the documents instead.")
        options["counts"] = word_counts
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MlmError(f"out_dir {out_dir} is a file; pass a folder for the vocabulary.")
    assets = module.train(
        _batches(documents, batch_size=DOCUMENTS_PER_BATCH),
        size=size,
        lowercase=lowercase,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        **options,
    )
    _write_assets(assets, out_dir=out_dir, names=module.ASSETS)
    return out_dir / module.ASSETS[0]



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
            row, e.g. `"AlbertTokenizer"`. Defaults to that of the family's
            first row: `BertTokenizer`, `AlbertTokenizer` or `RobertaTokenizer`.

    Returns:
        An instance of `keras_hub.models.<tokenizer>`.
    """
    module = _family(family)
    default = get_architecture(module.ARCHITECTURE).tokenizer
    cls = _keras_hub_class(tokenizer or default, family=family, module=module)
    return module.keras_hub_tokenizer(
        _existing(vocab_path, module=module), lowercase=lowercase, cls=cls
    )


def hf_tokenizer(vocab_path: Path, *, family: str, lowercase: bool):
    """Returns the trainer library's own tokenizer for a learned vocabulary.

    Like the keras-hub tokenizer, it adds no start or end tokens, and reads
    "[MASK]" in text as plain characters (but RoBERTa's "<s>", "</s>",
    "<pad>" and "<mask>" as those tokens, as `RobertaTokenizer` does).

    - "wordpiece" and "byte_bpe": a `tokenizers.Tokenizer` giving the ids of
      the keras-hub tokenizer (of its `tf.data` path for "byte_bpe", see
      `byte_bpe`), up to the rare characters listed in the family
      modules; `.encode(text).ids` are the token ids.
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
    module = _family(family)
    return module.hf_tokenizer(_existing(vocab_path, module=module), lowercase=lowercase)


def vocabulary_path(out_dir: Path, *, family: str) -> Path:
    """Where `train_vocabulary(..., out_dir=out_dir)` writes the asset of `family`."""
    return Path(out_dir) / _family(family).ASSETS[0]


def vocabulary_files(out_dir: Path, *, family: str) -> tuple[Path, ...]:
    """Every file `train_vocabulary(..., out_dir=out_dir)` writes, the main asset first."""
    return tuple(Path(out_dir) / name for name in _family(family).ASSETS)


def families() -> tuple[str, ...]:
    """The names of the tokenizer families that can be learned."""
    return tuple(_FAMILIES)


def is_word_start(token: str, *, family: str) -> bool:
    """Whether `token` of a `family` vocabulary begins a word wherever it stands.

    WordPiece marks continuations ("##ing"), SentencePiece ("▁the") and
    byte-level BPE ("Ġthe") mark word starts. The first token of a text also
    begins a word, though byte-level BPE leaves it unmarked: count it by
    position.
    """
    return _family(family).is_word_start(token)


def word_starts(
    vocabulary: list[str], *, family: str, special_tokens: Iterable[str] = ()
) -> np.ndarray:
    """One bool per token id of `vocabulary`: whether that token begins a word.

    The vectorised `is_word_start`, for gathering by id inside `tf.data`
    (whole-word masking). `special_tokens` are flagged too, each a word of
    its own.

    Args:
        vocabulary: The tokens in id order (`tokenizer.id_to_token(i)` for
            every id; a byte-level BPE's `get_vocabulary()` is not in id order).
        family: The tokenizer family of the vocabulary.
        special_tokens: Tokens that always begin a word, e.g.
            `tokenizer.special_tokens`.
    """
    return _family(family).word_starts(vocabulary, special_tokens=tuple(special_tokens))


def detokenize(tokens: list[str], *, family: str) -> str:
    """The text `tokens` of a `family` vocabulary spell, subword marks resolved."""
    return _family(family).detokenize(list(tokens))


def _family(name: str) -> types.ModuleType:
    if name not in _FAMILIES:
        raise MlmError(f"unknown tokenizer family '{name}'; choose one of: {', '.join(_FAMILIES)}.")
    return _FAMILIES[name]


def _checked_special_tokens(special_tokens, module: types.ModuleType) -> tuple[str, ...]:
    if special_tokens is None:
        return get_architecture(module.ARCHITECTURE).special_tokens
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


def _keras_hub_class(name: str, *, family: str, module: types.ModuleType):
    """The `keras_hub.models` class `name`, checked to load this family's assets."""
    # Imported here: learning a vocabulary needs neither keras-hub nor the
    # TensorFlow it loads.
    import keras_hub

    cls = getattr(keras_hub.models, name, None)
    base = getattr(keras_hub.tokenizers, module.KERAS_HUB_BASE)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise MlmError(
            f"tokenizer '{name}' is not a keras_hub.models {module.KERAS_HUB_BASE} "
            f"and cannot load a {family} vocabulary; pass the tokenizer class of "
            "the architecture's row, e.g. "
            f"'{get_architecture(module.ARCHITECTURE).tokenizer}'."
        )
    return cls


def _existing(vocab_path: Path, *, module: types.ModuleType) -> Path:
    path = Path(vocab_path)
    beside = module.ASSETS[1:]
    for name in (path.name, *beside):
        if not (path.parent / name).is_file():
            also = f", with {', '.join(beside)} beside it" if beside else ""
            raise MlmError(
                f"vocabulary file not found: {path.parent / name}; pass the file written by "
                f"train_vocabulary() (e.g. the run folder's {module.ASSETS[0]}{also})."
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


def _write_assets(assets: dict[str, bytes], *, out_dir: Path, names: tuple[str, ...]) -> None:
    """Writes the learned assets into `out_dir`, leaving it as it was on a failure."""
    others = [p for p in out_dir.iterdir() if p.name not in names] if out_dir.exists() else []
    if not others:
        # The folder is the vocabulary's alone: replace it whole, so no reader
        # sees a new `vocabulary.json` beside an old `merges.txt`.
        with atomic.writing_dir(out_dir.resolve()) as tmp:
            for name in names:
                (tmp / name).write_bytes(assets[name])
        return
    # The caller's folder holds other files, which must stay: every asset is
    # written to a temporary first, and only once all are written does each
    # replace its namesake. The stack renames in reverse, the main asset last,
    # so that its presence means the set is complete.
    with contextlib.ExitStack() as stack:
        temporaries = {name: stack.enter_context(atomic.writing_file(out_dir / name))
                       for name in names}
        for name, tmp in temporaries.items():
            tmp.write_bytes(assets[name])
