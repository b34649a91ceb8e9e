"""Hostile text: the reader, vocabulary training and tokenize-pack-mask never crash,
and whatever they repair or skip is counted, never dropped silently."""

import collections
import json
import re
import tempfile
import tracemalloc
from pathlib import Path
from unittest import mock

import keras_hub
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mlm.architectures import get_architecture
from mlm.config import CorpusConfig, MaskingConfig
from mlm.data import corpus
from mlm.data.corpus import describe_tally, iter_documents, resolve_corpus
from mlm.data.pipeline import TokenIds, num_windows, training_dataset
from mlm.data.token_cache import load_or_build_cache
from mlm.data.vocab import build_tokenizer, train_vocabulary
from mlm.errors import MlmError

# Small and fast: a few seconds each on two cores. No example database: the
# tests stay the same from run to run, and leave no folder behind.
_QUIET = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
FEW = settings(max_examples=40, deadline=None, database=None, suppress_health_check=_QUIET)
VERY_FEW = settings(max_examples=4, deadline=None, database=None, suppress_health_check=_QUIET)

_SURROGATES = re.compile("[\ud800-\udfff]")
# What the reader turns into U+FFFD: lone surrogates and the noncharacter
# that marks undecodable bytes.
_INVALID = re.compile("[\ud800-\udfff\ufdd1]")


def _read(path, *, replace=True, tally=None):
    source = resolve_corpus(CorpusConfig(
        paths=(str(path),), held_out_fraction=0.0,
        on_decode_error="replace" if replace else "error",
    ))
    return list(iter_documents(source, split="train", tally=tally))


def _non_space(text: str) -> str:
    return "".join(ch for ch in text if not ch.isspace())


# What a file can hold: any text but control characters, and the hostile bits.
_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30)
_HOSTILE = st.sampled_from([
    b"\x00", b"\xff", b"\xe2\x82", b"\xed\xa0\x80", b"\xc3", b"\xef\xbf\xbd", b"\xef\xbb\xbf",
    b"\r\n", b"\r", b"\n", b"\n\n", b"\r\n\r\n", b"\n \t\n", b"\t", b"\x0c", b"  ",
])


@FEW
@given(st.lists(st.one_of(_TEXT, _HOSTILE), max_size=40), st.sampled_from([6, 64]))
def test_the_text_reader_keeps_every_character_and_counts_repairs(parts, limit):
    raw = b"".join(p.encode("utf-8") if isinstance(p, str) else p for p in parts)
    # The reference: decoded as the reader decodes, each undecodable byte a
    # lone surrogate. Every non-space character must come out, repaired.
    decoded = raw.decode("utf-8-sig", "surrogateescape")
    expected = _INVALID.sub("\ufffd", _non_space(decoded)).replace("\x00", "")
    tally = collections.Counter()
    with tempfile.TemporaryDirectory() as folder, \
            mock.patch.object(corpus, "MAX_DOCUMENT_CHARS", limit):
        path = Path(folder) / "hostile.txt"
        path.write_bytes(raw)
        try:
            documents = _read(path, tally=tally)
        except MlmError as e:
            # A head of mostly control bytes is binary; a file of spaces has no text.
            assert "looks binary" in str(e) or ("holds no" in str(e) and not expected), str(e)
            return
    assert "".join(_non_space(d) for d in documents) == expected
    for document in documents:
        assert document and document == document.strip() and len(document) <= limit
        assert "\x00" not in document and not _INVALID.search(document)
        document.encode("utf-8")  # strict: TensorFlow gets valid UTF-8
    assert tally["invalid_replaced"] == len(_INVALID.findall(decoded))
    assert tally["nul_replaced"] <= decoded.count("\x00")
    assert tally["documents"] == len(documents)


def test_invalid_utf8_is_an_error_by_default_and_counted_when_replaced(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e.\n\nPlain text.\n".encode("latin-1"))
    with pytest.raises(MlmError, match="not valid UTF-8.*corpus.on_decode_error=replace"):
        _read(path, replace=False)
    tally = collections.Counter()
    assert _read(path, tally=tally) == ["Caf\ufffd cr\ufffdme br\ufffdl\ufffde.", "Plain text."]
    assert tally["invalid_replaced"] == 4
    assert describe_tally(tally) == "4 undecodable bytes or lone surrogates replaced by U+FFFD"


def test_csv_with_invalid_bytes_nul_and_crlf_is_repaired_and_counted(tmp_path):
    path = tmp_path / "rows.csv"
    filler = b"".join(b"%d,filler text %d\r\n" % (i, i) for i in range(40))
    path.write_bytes(b"id,text\r\n1,caf\xe9 \xff\xfe\r\n2,\"two\r\nlines\x00\"\r\n3,\r\n" + filler)
    with pytest.raises(MlmError, match="not valid UTF-8: byte 0xe9 at offset 14"):
        _read(path, replace=False)
    tally = collections.Counter()
    documents = _read(path, tally=tally)
    assert documents[:2] == ["caf\ufffd \ufffd\ufffd", "two\r\nlines"]
    assert len(documents) == 42
    assert tally["invalid_replaced"] == 3 and tally["nul_replaced"] == 1
    assert tally["empty_skipped"] == 1


def test_nul_bytes_become_spaces_and_are_counted(tmp_path):
    # Enough text that the head is not mostly control bytes (that is binary).
    body = "\n\n".join(f"Document {i} has some ordinary words in it." for i in range(50))
    path = tmp_path / "nul.txt"
    path.write_bytes(f"a\x00b c\x00\x00d\n\n\x00\x00\n\n{body}\n".encode())
    tally = collections.Counter()
    documents = _read(path, replace=False, tally=tally)
    assert documents[0] == "a b c  d" and len(documents) == 51
    assert tally["nul_replaced"] == 3 and tally["empty_skipped"] == 1
    assert describe_tally(tally) == (
        "3 NUL characters replaced by spaces; 1 empty documents skipped"
    )


def test_a_mostly_nul_file_is_binary(tmp_path):
    path = tmp_path / "utf16.txt"
    path.write_bytes("Some text in UTF-16.\n".encode("utf-16-le"))
    with pytest.raises(MlmError, match="looks binary .*a NUL byte at offset 1.*UTF-16"):
        _read(path)


def test_crlf_and_cr_line_ends_read_as_lf(tmp_path):
    path = tmp_path / "windows.txt"
    path.write_bytes(b"first line\r\nsecond\r\n\r\nthird\rfourth\r\r\nfifth\r\n")
    assert _read(path) == ["first line\nsecond", "third\nfourth", "fifth"]


def test_empty_documents_are_skipped_and_counted(tmp_path):
    rows = [{"text": ""}, {"text": "  \n "}, {"text": None}, {"text": "kept"}, {"text": "\x00"}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tally = collections.Counter()
    assert _read(path, tally=tally) == ["kept"]
    assert tally["empty_skipped"] == 4 and tally["documents"] == 1


def test_json_escapes_of_nul_and_lone_surrogates_are_repaired(tmp_path):
    path = tmp_path / "escapes.jsonl"
    path.write_text('{"text": "a\\u0000b \\ud800 c"}\n', encoding="utf-8")
    tally = collections.Counter()
    assert _read(path, replace=False, tally=tally) == ["a b \ufffd c"]
    assert tally["nul_replaced"] == 1 and tally["invalid_replaced"] == 1


def test_a_50_mb_line_without_a_newline_reads_in_bounded_memory(tmp_path):
    path = tmp_path / "one-line.txt"
    words = b"lorem ipsum dolor sit amet, consectetur adipiscing elit "  # 56 bytes
    repeats = (50 << 20) // len(words)
    with open(path, "wb") as f:
        for _ in range(50):
            f.write(words * (repeats // 50))
    size = path.stat().st_size
    assert size > 49 << 20
    tally = collections.Counter()
    tracemalloc.start()
    try:
        lengths, letters = [], 0
        source = resolve_corpus(CorpusConfig(paths=(str(path),), held_out_fraction=0.0))
        for document in iter_documents(source, split="train", tally=tally):
            lengths.append(len(document))
            letters += len(_non_space(document))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB line"
    assert max(lengths) <= corpus.MAX_DOCUMENT_CHARS and len(lengths) >= 50
    assert letters == size - words.count(b" ") * (repeats // 50) * 50  # nothing lost
    assert tally["long_cut"] == 1 and tally["documents"] == len(lengths)
    assert describe_tally(tally) == (
        f"1 documents over {corpus.MAX_DOCUMENT_CHARS:,} characters cut into pieces"
    )


def test_two_thousand_tiny_files(tmp_path):
    folder = tmp_path / "tiny"
    for i in range(2000):
        sub = folder / f"{i // 100:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:04d}.txt").write_text(f"document {i}\n" if i % 7 else "\n")
    source = resolve_corpus(CorpusConfig(paths=(str(folder),), held_out_fraction=0.0))
    assert len(source.train_files) == 2000
    documents = list(iter_documents(source, split="train"))
    assert documents == [f"document {i}" for i in range(2000) if i % 7]


# Vocabulary training and tokenize-pack-mask.

_ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
_WORDS = st.text(st.sampled_from(list("ab cde\u00e9\u00df\u4e2d!.\n\t\x00")), max_size=60)
_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@FEW
@given(st.lists(st.one_of(_ANY_TEXT, _WORDS), min_size=1, max_size=12))
def test_vocabulary_training_never_crashes(documents):
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = train_vocabulary(documents, family="wordpiece", size=120, lowercase=True,
                                    min_frequency=1, out_dir=Path(folder))
        except MlmError as e:
            assert "gave no words" in str(e), str(e)
            event("no words")
            return
        event("learned a vocabulary")
        tokens = path.read_text(encoding="utf-8").split("\n")
        assert tokens[-1] == "" and tokens[:5] == _SPECIALS
        tokens = tokens[:-1]
        assert len(set(tokens)) == len(tokens) <= 120 and all(tokens)
        tokenizer = build_tokenizer(path, family="wordpiece", lowercase=True)
        for ids in tokenizer(documents):
            assert all(0 <= int(i) < len(tokens) for i in np.asarray(ids).ravel())


_VOCAB = [*_SPECIALS, "a", "b", "c", "d", "e", "!", ".", "##a", "##b", "##c", "##d", "##e"]


@pytest.fixture(scope="module")
def tokenizer():
    return keras_hub.models.BertTokenizer(vocabulary=_VOCAB, lowercase=True)


@pytest.mark.slow
@VERY_FEW
@given(documents=st.lists(st.one_of(_ANY_TEXT, _WORDS), min_size=4, max_size=16))
def test_tokenize_pack_mask_never_crashes_and_keeps_its_invariants(tokenizer, documents):
    ids = TokenIds.from_tokenizer(tokenizer)
    length, batch = 12, 2
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "docs.jsonl"
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
        try:
            source = resolve_corpus(CorpusConfig(paths=(str(path),), held_out_fraction=0.0))
            cache = load_or_build_cache(
                {"train": lambda: iter_documents(source, split="train"), "held_out": list},
                tokenizer, cache_root=Path(folder) / "cache", key="k", progress=False,
            )
            tokens = np.asarray(cache.tokens("train"))
            data = training_dataset(tokens, sequence_length=length, batch_size=batch,
                                    masking=MaskingConfig(), ids=ids, seed=0,
                                    arch=get_architecture("bert"))
        except MlmError as e:
            assert re.search(r"holds no|no documents|too small for one batch", str(e)), str(e)
            event(re.search(r"holds no|no documents|too small for one batch", str(e)).group())
            return
        event("masked a batch")
        x, y, w = next(iter(data))
    # Every document was tokenized, [SEP] after each; ids are in the vocabulary.
    assert np.count_nonzero(tokens == ids.end_id) == cache.stats["train"]["documents"]
    assert tokens.max() < len(_VOCAB)
    token_ids, positions = x["token_ids"].numpy(), x["mask_positions"].numpy()
    y, w = y.numpy(), w.numpy()
    assert token_ids.shape == (batch, length) and num_windows(len(tokens), length) >= batch
    assert (token_ids[:, 0] == ids.start_id).all()
    for row in range(batch):
        chosen = positions[row][w[row] > 0]
        assert len(set(chosen)) == len(chosen)  # no position masked twice
        assert all(0 < p < length for p in chosen)
        # Labels are never special tokens; masked positions hold [MASK], a word or the label.
        assert not set(y[row][w[row] > 0]) & set(ids.special_ids)
        padding = x["padding_mask"].numpy()[row]
        assert all(padding[p] for p in chosen)


def test_the_run_log_reports_what_was_repaired(tmp_path, tokenizer, capsys):
    from mlm.pretraining import tokenize_corpus
    from mlm.run.log import MetricsLog

    path = tmp_path / "hostile.txt"
    body = "\n\n".join("a b c d e ." for _ in range(40))
    path.write_bytes(b"a\x00b \xff c\n\n" + body.encode() + b"\n")
    source = resolve_corpus(CorpusConfig(paths=(str(path),), held_out_fraction=0.0,
                                         on_decode_error="replace"))
    log = MetricsLog(tmp_path, quiet=False)
    cache = tokenize_corpus(source, tokenizer, run_dir=tmp_path, log=log)
    # The text after the NUL is tokenized (TensorFlow would end the text at a NUL).
    assert cache.stats["train"]["tokens"] == (4 + 1) + 40 * (6 + 1)  # [SEP] after each
    err = capsys.readouterr().err
    assert ("corpus text (train): 1 undecodable bytes or lone surrogates replaced by U+FFFD; "
            "1 NUL characters replaced by spaces") in err
    records = [{k: v for k, v in r.items() if k != "time"} for r in log.read()]
    assert records == [{"split": "corpus", "part": "train", "invalid_replaced": 1,
                        "nul_replaced": 1, "documents": 41},
                       {"split": "corpus", "part": "tokens", "path": str(cache.path)}]
