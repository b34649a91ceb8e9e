"""Token cache: exact ids on disk, statistics, keys, reuse and crash safety."""

import keras_hub
import numpy as np
import pytest

from mlm.data.token_cache import cache_key, load_or_build_cache, tokenizer_fingerprint
from mlm.errors import MlmError
from tests.conftest import TINY_VOCABULARY

VOCAB = TINY_VOCABULARY
UNK, SEP = 1, 3
THE, CAT, SAT, ON, MAT, DOT = 5, 6, 7, 8, 9, 10


def _tokenizer(vocabulary=VOCAB, *, lowercase=True, name="tokenizer"):
    # A fixed name: keras gives each unnamed layer a new one (bert_tokenizer_1, ...).
    return keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=lowercase, name=name)


@pytest.fixture(scope="module")
def tokenizer():
    return _tokenizer()


def _build(tokenizer, root, *, train, held_out=(), key="k", batch_size=256):
    return load_or_build_cache(
        {"train": lambda: list(train), "held_out": lambda: list(held_out)},
        tokenizer, cache_root=root, key=key, batch_size=batch_size, progress=False,
    )


def _never_called():
    raise AssertionError("a cached split was tokenized again")


@pytest.fixture(scope="module")
def cat_cache(tokenizer, tmp_path_factory):
    """The cache of two documents and an empty held-out split, under key "k"."""
    return _build(tokenizer, tmp_path_factory.mktemp("cache"), train=["the cat sat.", "on the mat"])


def test_documents_are_written_with_one_sep_after_each(cat_cache):
    np.testing.assert_array_equal(
        cat_cache.tokens("train"), [THE, CAT, SAT, DOT, SEP, ON, THE, MAT, SEP]
    )
    assert cat_cache.tokens("train").dtype == np.uint16
    assert isinstance(cat_cache.tokens("train"), np.memmap)


def test_stats_count_documents_tokens_and_unknown_tokens(tokenizer, tmp_path):
    # batch_size=2: the [SEP] joins must not depend on where tokenizer batches end.
    cache = _build(
        tokenizer, tmp_path,
        train=["the dog sat.", "On the Mat", "a dog"],
        held_out=["the cat"],
        batch_size=2,
    )
    np.testing.assert_array_equal(
        cache.tokens("train"),
        [THE, UNK, SAT, DOT, SEP, ON, THE, MAT, SEP, UNK, UNK, SEP],
    )
    np.testing.assert_array_equal(cache.tokens("held_out"), [THE, CAT, SEP])
    assert cache.stats == {
        "train": {"documents": 3, "tokens": 12, "unknown_tokens": 3, "dtype": "uint16"},
        "held_out": {"documents": 1, "tokens": 3, "unknown_tokens": 0, "dtype": "uint16"},
    }


@pytest.mark.slow
def test_vocabulary_of_65536_entries_fits_uint16(tmp_path):
    vocab = VOCAB + [f"w{i}" for i in range(65536 - len(VOCAB) - 1)] + ["zebra"]
    cache = _build(_tokenizer(vocab), tmp_path, train=["zebra the"])
    assert cache.stats["train"]["dtype"] == "uint16"
    np.testing.assert_array_equal(cache.tokens("train"), [65535, THE, SEP])
    assert cache.tokens("train").dtype == np.uint16


@pytest.mark.slow
def test_vocabulary_above_65536_entries_is_written_as_uint32(tmp_path):
    vocab = VOCAB + [f"w{i}" for i in range(65537 - len(VOCAB) - 1)] + ["zebra"]
    cache = _build(_tokenizer(vocab), tmp_path, train=["zebra the"], held_out=["zebra"])
    assert cache.stats["train"]["dtype"] == "uint32"
    assert cache.tokens("train").dtype == np.uint32
    np.testing.assert_array_equal(cache.tokens("train"), [65536, THE, SEP])
    np.testing.assert_array_equal(cache.tokens("held_out"), [65536, SEP])


def test_second_call_with_the_same_key_reads_the_cache(tokenizer, cat_cache):
    second = load_or_build_cache(
        {"train": _never_called, "held_out": _never_called},
        tokenizer, cache_root=cat_cache.path.parent, key="k", progress=False,
    )
    assert second.path == cat_cache.path
    assert cat_cache.path.name == "k"
    assert second.stats == cat_cache.stats
    np.testing.assert_array_equal(second.tokens("train"), cat_cache.tokens("train"))
    np.testing.assert_array_equal(second.tokens("held_out"), cat_cache.tokens("held_out"))
    assert sorted(p.name for p in cat_cache.path.parent.iterdir()) == ["k"]


def test_cache_key_changes_with_the_corpus_and_the_tokenizer_only(tokenizer):
    key = cache_key("corpus-a", tokenizer)
    assert key == cache_key("corpus-a", tokenizer)
    assert key == cache_key("corpus-a", _tokenizer())
    assert key != cache_key("corpus-b", tokenizer)
    assert key != cache_key("corpus-a", _tokenizer(VOCAB + ["dog"]))
    assert key != cache_key("corpus-a", _tokenizer(VOCAB[:-1] + ["!"]))
    assert key != cache_key("corpus-a", _tokenizer(lowercase=False))


def test_tokenizer_fingerprint_covers_vocabulary_order(tokenizer):
    swapped = VOCAB[:5] + [VOCAB[6], VOCAB[5]] + VOCAB[7:]
    assert tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(_tokenizer())
    assert tokenizer_fingerprint(tokenizer) != tokenizer_fingerprint(_tokenizer(swapped))


def test_cache_key_is_the_same_for_identical_unnamed_tokenizers():
    first = keras_hub.models.BertTokenizer(vocabulary=VOCAB, lowercase=True)
    second = keras_hub.models.BertTokenizer(vocabulary=VOCAB, lowercase=True)
    assert cache_key("corpus-a", first) == cache_key("corpus-a", second)


@pytest.mark.slow
def test_interrupted_build_leaves_no_entry_and_a_later_build_succeeds(tokenizer, tmp_path):
    def failing_documents():
        yield "the cat sat."
        raise RuntimeError("disk on fire")

    # The generator's own error, not TensorFlow's wrapper around it.
    with pytest.raises(RuntimeError, match="disk on fire"):
        load_or_build_cache(
            {"train": failing_documents, "held_out": list},
            tokenizer, cache_root=tmp_path, key="k", batch_size=1, progress=False,
        )
    assert list(tmp_path.iterdir()) == []

    cache = _build(tokenizer, tmp_path, train=["the cat sat."])
    np.testing.assert_array_equal(cache.tokens("train"), [THE, CAT, SAT, DOT, SEP])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_failure_in_the_held_out_split_leaves_no_entry(tokenizer, tmp_path):
    def failing_held_out():
        raise OSError("held-out file vanished")

    with pytest.raises(OSError, match="held-out file vanished"):
        load_or_build_cache(
            {"train": lambda: ["the cat"], "held_out": failing_held_out},
            tokenizer, cache_root=tmp_path, key="k", progress=False,
        )
    assert list(tmp_path.iterdir()) == []


def test_empty_held_out_split_gives_a_zero_length_array(cat_cache):
    held_out = cat_cache.tokens("held_out")
    assert held_out.shape == (0,)
    assert held_out.dtype == np.uint16
    assert cat_cache.stats["held_out"] == {
        "documents": 0, "tokens": 0, "unknown_tokens": 0, "dtype": "uint16",
    }


def test_empty_train_split_raises_mlm_error(tokenizer, tmp_path):
    with pytest.raises(MlmError, match="training split has no documents"):
        _build(tokenizer, tmp_path, train=[], held_out=["the cat"])


def test_empty_train_split_raises_again_on_the_next_call(tokenizer, tmp_path):
    with pytest.raises(MlmError):
        _build(tokenizer, tmp_path, train=[])
    with pytest.raises(MlmError):
        _build(tokenizer, tmp_path, train=[])
