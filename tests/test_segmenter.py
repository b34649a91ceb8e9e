"""`masking.segmenter=jieba`: Chinese words, found by jieba, are masked whole.

The Chinese sentences below were written for these tests (no outside text).
"""

import unicodedata

import numpy as np
import pytest
import tensorflow as tf

from mlm.architectures import get_architecture
from mlm.config import MaskingConfig
from mlm.data import vocab
from mlm.data.masking import resolve_masking
from mlm.data.masking_ops import select_whole_words
from mlm.data.pipeline import TokenIds
from mlm.data.segmenter import CONTINUATION, FAMILY, START, Segmenter

jieba = pytest.importorskip("jieba", reason="jieba is the `chinese` extra")

SENTENCES = [
    "我们在北京大学学习中文。", "今天天气很好，我们去公园散步。", "图书馆里有很多学生在看书。",
    "他每天早上坐地铁去公司上班。", "这家饭馆的饺子非常好吃。", "老师告诉我们明天要考试。",
    "我的朋友喜欢在周末爬山。", "火车站离我家不远，走路十分钟。", "妈妈在厨房里做晚饭。",
    "春天来了，公园里的花都开了。", "我们明天上午九点在学校门口见面。",
    "这本书讲的是一个小孩子的故事。", "北京的冬天很冷，但是很少下雨。",
    "他用电脑写了一封很长的信。", "学生们在操场上踢足球。", "医生说我需要多休息。",
]
HELD_OUT = "我们明天去北京大学的图书馆看书，在公园里散步。"
ROWS = ("bert", "albert", "roberta")


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    built = {}

    def build(name):
        if name not in built:
            arch = get_architecture(name)
            path = vocab.train_vocabulary(
                SENTENCES * 20, family=arch.tokenizer_family, size=400, lowercase=False,
                min_frequency=1, out_dir=tmp_path_factory.mktemp(name),
                special_tokens=arch.special_tokens)
            tokenizer = vocab.build_tokenizer(path, family=arch.tokenizer_family,
                                              lowercase=False, tokenizer=arch.tokenizer)
            vocabulary = [tokenizer.id_to_token(i) for i in range(tokenizer.vocabulary_size())]
            segmenter = Segmenter("jieba", vocabulary=vocabulary, family=arch.tokenizer_family,
                                  special_tokens=tokenizer.special_tokens)
            built[name] = (tokenizer, segmenter)
        return built[name]

    return build


def _word_starts_by_character(text):
    """For every character of `text`: whether it begins a jieba word."""
    starts = []
    for word in jieba.lcut(text):
        starts += [True] + [False] * (len(word) - 1)
    return starts


def _token_offsets(segmenter, ids):
    """Character offset where each token begins, from the bytes the tokens spell."""
    offsets, spelled = [], b""
    for token in ids:
        offsets.append(len(spelled.decode("utf-8", "ignore")))
        spelled += segmenter.surfaces[token]
    return offsets, spelled.decode("utf-8")


def test_wordpiece_labels_are_jieba_words_exactly(tokenizers):
    tokenizer, segmenter = tokenizers("bert")
    ids = np.asarray(tokenizer(HELD_OUT))
    labels = segmenter.labels(HELD_OUT, ids)
    # WordPiece splits Chinese into characters: one token per character here.
    assert len(ids) == len(HELD_OUT)
    expected = [START if s else CONTINUATION for s in _word_starts_by_character(HELD_OUT)]
    # Punctuation is left to the family's marks; so are unknown characters ([UNK] is a
    # special token, never masked).
    unknown = tokenizer.token_to_id("[UNK]")
    for i, c in enumerate(HELD_OUT):
        if c in "，。" or ids[i] == unknown:
            expected[i] = FAMILY
    assert labels.tolist() == expected
    assert (labels == CONTINUATION).sum() >= 8  # 北京大学, 图书馆, 明天, 公园, 散步, ...


@pytest.mark.parametrize("name", ROWS)
def test_every_start_label_is_a_word_start_in_every_family(tokenizers, name):
    tokenizer, segmenter = tokenizers(name)
    ids = np.asarray(tokenizer(HELD_OUT))
    labels = segmenter.labels(HELD_OUT, ids)
    offsets, spelled = _token_offsets(segmenter, ids)
    # SentencePiece normalises full-width punctuation (NFKC): one character for one.
    nfkc = unicodedata.normalize
    assert nfkc("NFKC", spelled.replace(" ", "")) == nfkc("NFKC", HELD_OUT)
    starts = _word_starts_by_character(HELD_OUT)
    for offset, label in zip(offsets, labels, strict=True):
        if label == START:
            assert starts[offset], (name, offset, HELD_OUT[offset:])
    # Whole words found: tokens labelled as continuing a word exist in every family.
    assert (labels == CONTINUATION).any() and (labels == START).sum() >= 5


@pytest.mark.parametrize("name", ROWS)
def test_jieba_words_are_never_partly_masked(tokenizers, name):
    tokenizer, segmenter = tokenizers(name)
    arch = get_architecture(name)
    ids = TokenIds.from_tokenizer(tokenizer, family=arch.tokenizer_family)
    body = np.asarray(tokenizer(HELD_OUT), dtype=np.int32)
    labels = segmenter.labels(HELD_OUT, body)
    window = np.concatenate([[ids.start_id], body, [ids.end_id]]).astype(np.int32)
    window_labels = np.concatenate([[0], labels, [0]]).astype(np.uint8)
    maskable = ~np.isin(window, ids.special_ids)
    # The words as the segmenter says: a word begins at START (and at tokens the family
    # marks, outside Chinese text), and CONTINUATION tokens belong to the word before.
    family_starts = np.asarray(ids.word_starts)[window]
    starts = np.where(window_labels == START, True,
                      np.where(window_labels == CONTINUATION, False, family_starts))
    words = np.cumsum(starts | ~maskable) - 1
    masking = MaskingConfig(unit="word", selection_rate=0.3, segmenter="jieba")
    count = int(round(maskable.sum() * 0.3))
    selected_total = 0
    for seed in range(300):
        chosen, _, _ = select_whole_words(
            tf.constant(window), tf.constant(maskable), tf.constant(count),
            tf.constant([seed, 7], tf.int64), masking=resolve_masking(masking), ids=ids,
            word_labels=tf.constant(window_labels))
        chosen = chosen.numpy()
        selected_total += chosen.sum()
        for word in np.unique(words[chosen]):
            assert chosen[words == word].all(), (name, seed, window[words == word])
    assert abs(selected_total / (300 * maskable.sum()) - 0.3) < 0.05


def test_the_cache_keeps_labels_beside_the_tokens(tokenizers, tmp_path):
    from mlm.data import token_cache

    tokenizer, segmenter = tokenizers("bert")
    documents = {"train": lambda: iter(SENTENCES), "held_out": lambda: iter([HELD_OUT])}
    key = token_cache.cache_key("fingerprint", tokenizer, segmenter="jieba")
    assert key != token_cache.cache_key("fingerprint", tokenizer)
    cache = token_cache.load_or_build_cache(documents, tokenizer, cache_root=tmp_path, key=key,
                                            progress=False, segmenter=segmenter)
    tokens, labels = cache.tokens("held_out"), cache.word_labels("held_out")
    assert len(tokens) == len(labels)
    body = np.asarray(tokenizer(HELD_OUT))
    np.testing.assert_array_equal(labels[:-1], segmenter.labels(HELD_OUT, body))
    assert labels[-1] == 0 and tokens[-1] == tokenizer.end_token_id
    plain = token_cache.load_or_build_cache(
        documents, tokenizer, cache_root=tmp_path, key="plain", progress=False)
    assert plain.word_labels("train") is None
    np.testing.assert_array_equal(plain.tokens("train"), cache.tokens("train"))
