"""SentencePiece unigram (ALBERT, DeBERTaV3, FNet, XLM-R): `vocabulary.spm`; its word boundaries.

The asset is the sentencepiece model proto; keras-hub's SentencePieceTokenizer
runs it with TensorFlow Text's op inside `tf.data` and with the
`sentencepiece` library in eager calls, so learning it with `sentencepiece`
makes all three agree by construction. Each keras-hub tokenizer looks its
special tokens up by piece (ALBERT, FNet, DeBERTaV3) or at fixed ids
(XLM-R); `special_tokens` puts them at ids 0, 1, ... as the architecture
row lists them: the unknown, padding, "<s>" and "</s>" tokens as the model's
own unk/pad/bos/eos pieces, every other one (e.g. "[CLS]", "[MASK]") as a
control symbol, which encoding never produces from text: like keras-hub's
BertTokenizer, text holding "[MASK]" is read as characters, not as the mask.

Word boundaries: the model replaces spaces by "▁" and marks the start of the
text with one too, so a piece starting with "▁" begins a word and any other
piece continues one (a punctuation mark after a word included).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import sentencepiece

from mlm.data.vocab.common import NO_WORDS, word_start_flags
from mlm.errors import MlmError

if TYPE_CHECKING:
    import keras_hub

# The architecture row whose special tokens and tokenizer are the defaults.
ARCHITECTURE = "albert"
# The `keras_hub.tokenizers` class every tokenizer of this family derives from.
KERAS_HUB_BASE = "SentencePieceTokenizer"
# The asset `keras_hub.tokenizers.SentencePieceTokenizer` saves and loads.
MODEL_FILE = "vocabulary.spm"
ASSETS = (MODEL_FILE,)
# What the model puts for a space, and at the start of a text: a word start.
WORD_START = "\u2581"
# A byte-fallback piece, e.g. "<0xE2>".
_BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")
# At most this many sentences (of up to `_SENTENCE_CHARS` characters, in
# practice a few hundred) are sampled from a larger corpus for the
# sentencepiece trainer, which holds them in memory; about 1 GB of text at
# most.
MAX_SENTENCES = 2_000_000
_SENTENCE_CHARS = 1000
_SEED = 1
_THREADS = 16
# By default no byte pieces for characters left out of the vocabulary: they
# read as the unknown token, as in the reference ALBERT, DeBERTaV3, FNet and
# XLM-R models. Byte fallback (`train_vocabulary(byte_fallback=True)`) spends
# 256 entries of the vocabulary on bytes.
BYTE_FALLBACK = False
# The special tokens the sentencepiece model holds as its own unknown,
# padding, begin and end pieces; the others become control symbols.
_ROLES = {
    "unk": ("<unk>", "[UNK]"),
    "pad": ("<pad>", "[PAD]"),
    "bos": ("<s>",),
    "eos": ("</s>",),
}


def train(
    batches: Iterator[list[str]],
    *,
    size: int,
    lowercase: bool,
    min_frequency: int,
    special_tokens: tuple[str, ...],
    byte_fallback: bool = BYTE_FALLBACK,
) -> dict[str, bytes]:
    """Learns a unigram sentencepiece model: the contents of `vocabulary.spm`."""
    del min_frequency  # The unigram trainer prunes by likelihood, not by count.
    sentences = _Sentences(batches)
    model = io.BytesIO()
    # Only used to sample `MAX_SENTENCES` of a larger corpus;
    # fixed so that a re-run keeps the same sample.
    sentencepiece.set_random_generator_seed(_SEED)
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
            input_sentence_size=MAX_SENTENCES,
            shuffle_input_sentence=True,
            max_sentence_length=4 * _SENTENCE_CHARS,
            # The learned model depends on the number of threads (partial
            # sums), not on the machine's cores: a fixed count gives the same
            # file everywhere.
            num_threads=_THREADS,
            minloglevel=2,
            **_special_pieces(special_tokens),
        )
    except RuntimeError as error:
        if sentences.error is not None:
            raise sentences.error from None
        if sentences.count == 0 or "all_chars_count" in str(error):
            raise MlmError(NO_WORDS) from None
        reason = str(error).splitlines()[0].rpartition("] ")[2]
        raise MlmError(
            f"sentencepiece could not learn a vocabulary of size={size}: {reason}"
        ) from None
    proto = model.getvalue()
    _check_special_pieces(proto, special_tokens)
    return {MODEL_FILE: proto}


def xlm_roberta_ids(ids: Iterable[int]) -> list[int]:
    """Maps sentencepiece ids to `XLMRobertaTokenizer` ids.

    keras-hub's tokenizer follows fairseq: "<s>", "<pad>", "</s>", "<unk>"
    take ids 0-3, the model's unknown piece (id 0) becomes 3, every other
    piece moves up by one, and "<mask>" is appended after the last piece.
    """
    return [3 if i == 0 else i + 1 for i in ids]


def is_word_start(token: str) -> bool:
    """Whether `token` begins a word: it starts with "▁" (a space, or the start of the text)."""
    return token.startswith(WORD_START)


def word_starts(vocabulary: list[str], *, special_tokens: tuple[str, ...] = ()) -> np.ndarray:
    """One flag per token id: whether it begins a word (see `is_word_start`)."""
    return word_start_flags(vocabulary, is_word_start, special_tokens=special_tokens)


def detokenize(tokens: list[str]) -> str:
    """The text of `tokens`: "▁" read as a space, byte pieces as their UTF-8 bytes.

    The space the model puts at the start of a text is dropped, as
    `SentencePieceProcessor.decode` does.
    """
    pieces = []
    for token in tokens:
        byte = _BYTE_PIECE.fullmatch(token)
        pieces.append(bytes([int(byte[1], 16)]) if byte else token.encode("utf-8"))
    text = b"".join(pieces).decode("utf-8", errors="replace").replace(WORD_START, " ")
    return text.removeprefix(" ")


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


def _special_pieces(special_tokens: tuple[str, ...]) -> dict:
    """Trainer options that put `special_tokens` at ids 0, 1, ... in order."""
    options = {f"{role}_id": -1 for role in _ROLES}
    control = []
    for i, token in enumerate(special_tokens):
        role = next((r for r, names in _ROLES.items() if token in names), None)
        if role is None or options[f"{role}_id"] != -1:
            # The trainer gives control symbols the free ids in order.
            control.append(token)
        else:
            options[f"{role}_id"] = i
            options[f"{role}_piece"] = token
    if options["unk_id"] == -1:
        raise MlmError(
            "a sentencepiece vocabulary needs an unknown token (one of "
            f"{', '.join(_ROLES['unk'])}) among special_tokens, but "
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


def keras_hub_tokenizer(
    model_path: Path, *, lowercase: bool, cls: type
) -> keras_hub.tokenizers.SentencePieceTokenizer:
    _check_normalization(model_path, lowercase=lowercase)
    return cls(proto=str(model_path))


def hf_tokenizer(model_path: Path, *, lowercase: bool):
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

