"""Tests for `mlm.vocab`: learning a vocabulary and building its tokenizers."""

import gzip
import importlib.resources

import pytest
import tensorflow as tf

from mlm import vocab
from mlm.errors import MlmError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Learned beside a slice of the sample corpus so that the hand-written
# strings below are not all [UNK]: accents, ß, Greek (with iota subscripts),
# Cyrillic, CJK, Hangul, other scripts, digits, symbols, compatibility
# characters that NFKC rewrites (ﬁ, ＦＵＬＬＷＩＤＴＨ, …, ´), and characters that
# keras-hub drops (tab, zero width space, soft hyphen).
MULTILINGUAL = [
    "Straße und Fußgänger: Die Größe der Übung ist groß. Ärger, Öl und Übel.",
    "Le café est très naïve; où est l'hôtel? Élève, garçon, œuvre, façade.",
    "El niño comió piñas en España. ¿Dónde está la estación? ¡Olé!",
    "Ο Σίσυφος κυλούσε την πέτρα. ΣΊΣΥΦΟΣ, σοφός λόγος, ᾠδή καὶ τῷ θεῷ.",
    "Москва — столица России. Привет, мир! Ёлка и ЁЖИК.",
    "東京は日本の首都です。中文字符测试，北京大学。",
    "서울은 한국의 수도입니다. 안녕하세요!",
    "The price is $3.14 (or 2,718.28 €) — 50% off; e-mail: info@example.com #tag",
    "İstanbul, ǅemal, ﬁne ﬂour, ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ, Ⅻ chapters, ① ② ③, x² and H₂O.",
    "Wait… what?! He said «bonjour» and ‘hello’ and “quotes” — then left.",
    "Tabs\tand\nnewlines,\u00a0no-break\u00a0spaces, zero\u200bwidth, soft\u00adhyphen, don´t.",
    "हिन्दी भाषा, العربية لغة, עברית שפה, ไทย ภาษา.",
    "Emoji 😀👍🏽 and symbols ™ © ® ° ± × ÷ → ∞.",
]

# Held out: never seen in training, in new combinations.
HAND_WRITTEN = [
    "STRASSE straße Straße GRÖSSE größer",
    "L'élève naïve à l'hôtel: œuvre, façade!",
    "ΣΊΣΥΦΟΣ σοφός; ᾠδή τῷ λόγῳ",
    "東京大学で中文を勉強する。北京！",
    "ＡＢＣ ｄｅｆ ﬁﬂ Ⅻ ① x² H₂O",
    "Wait…really?! 3.14159, 1,000,000 and -42% ($7)",
    "no\u00a0break\u00a0here, zero\u200bwidth and soft\u00adhyphen",
    "don´t ¨umlaut ¸cedilla",
    "[MASK] [CLS] text ##ing [SEP] [UNK]",
    "İSTANBUL istanbul İ",
    "Ёлка ЁЖИК ёжик Москва",
    "안녕하세요 서울은",
    "😀 emoji👍🏽!",
    "tabs\tnew\nlines\r\nand\x0bvertical\x0cfeed",
    "UPPER lower MiXeD CaSe",
    "Ǆ ǅ ǆ ﬀ ﬃ",
    "a" * 150,
    "",
    "   ",
]


@pytest.fixture(scope="module")
def kjv():
    """The sample corpus, one string per chapter."""
    path = importlib.resources.files("mlm.data") / "kjv.txt.gz"
    with gzip.open(path, "rt", encoding="utf-8") as file:
        return file.read().split("\n\n")


@pytest.fixture(scope="module")
def learned(kjv, tmp_path_factory):
    """Vocabularies of 3000 from 300 chapters and `MULTILINGUAL`, by `lowercase`."""

    def learn(lowercase):
        return vocab.train_vocabulary(
            (document for document in kjv[:300] + MULTILINGUAL * 3),
            family="wordpiece",
            size=3000,
            lowercase=lowercase,
            min_frequency=2,
            out_dir=tmp_path_factory.mktemp("cased" if not lowercase else "uncased"),
        )

    return {True: learn(True), False: learn(False)}


def train(documents, out_dir, *, size=100, lowercase=True, min_frequency=1, family="wordpiece"):
    path = vocab.train_vocabulary(
        documents,
        family=family,
        size=size,
        lowercase=lowercase,
        min_frequency=min_frequency,
        out_dir=out_dir,
    )
    return vocab.read_vocabulary(path)


def graph_ids(keras_hub_tokenizer, texts):
    """Token ids from keras-hub's TensorFlow path, used inside `tf.data`.

    Eager calls take keras-hub's other, pure Python, implementation.
    """
    dataset = tf.data.Dataset.from_tensor_slices(texts).batch(64).map(keras_hub_tokenizer)
    return [ids for batch in dataset for ids in batch.to_list()]


def test_special_tokens_have_ids_0_to_4(learned):
    for path in learned.values():
        assert vocab.read_vocabulary(path)[:5] == SPECIAL_TOKENS


def test_keras_hub_reports_the_special_token_ids(learned):
    tokenizer = vocab.build_tokenizer(learned[True], family="wordpiece", lowercase=True)
    assert tokenizer.pad_token_id == 0
    assert tokenizer.token_to_id("[UNK]") == 1
    assert tokenizer.cls_token_id == 2
    assert tokenizer.sep_token_id == 3
    assert tokenizer.mask_token_id == 4
    assert tokenizer.vocabulary_size() == 3000


def test_rich_corpus_fills_the_requested_size(learned):
    path = learned[True]
    assert path == vocab.vocabulary_path(path.parent, family="wordpiece")
    assert path.name == "vocabulary.txt"
    for path in learned.values():
        tokens = vocab.read_vocabulary(path)
        assert len(tokens) == 3000
        assert len(set(tokens)) == 3000


def test_exact_vocabulary_of_a_tiny_corpus(tmp_path):
    tokens = train(["bat sat pat mat rat"], tmp_path, size=100)
    # Specials, the "##" continuations, the alphabet, then merges by count.
    assert tokens == SPECIAL_TOKENS + [
        "##a", "##t", "a", "b", "m", "p", "r", "s", "t", "##at", "bat", "mat", "pat", "rat", "sat",
    ]  # fmt: skip


def test_small_corpus_gives_a_smaller_vocabulary(tmp_path):
    tokens = train(["bat sat pat mat rat"] * 2, tmp_path, size=100, min_frequency=3)
    # "bat" and the others occur twice, below min_frequency: no more merges.
    assert tokens == SPECIAL_TOKENS + ["##a", "##t", "a", "b", "m", "p", "r", "s", "t", "##at"]


def test_size_is_an_upper_bound(tmp_path):
    tokens = train(["bat sat pat mat rat"], tmp_path, size=16)
    assert tokens == SPECIAL_TOKENS + [
        "##a", "##t", "a", "b", "m", "p", "r", "s", "t", "##at", "bat",
    ]  # fmt: skip


def test_size_below_the_alphabet_keeps_the_most_used_characters(tmp_path):
    tokens = train(["bat sat pat mat rat"], tmp_path, size=10)
    assert tokens == SPECIAL_TOKENS + ["##a", "##t", "b", "m", "p"]


def test_lowercase_folds_case_like_keras_hub(tmp_path):
    tokens = train(["The CAT sat.", "the cat Sat!", "Straße ΣΊΣΥΦΟΣ"], tmp_path)
    assert "the" in tokens and "cat" in tokens
    assert not [token for token in tokens[5:] if token != token.lower()]
    # Full case folding, not lowercasing: ß -> ss and final sigma -> σ.
    assert "ß" not in tokens and "ς" not in tokens
    assert "strasse" in tokens and "σίσυφοσ" in tokens


def test_cased_keeps_case(tmp_path):
    tokens = train(["The CAT sat.", "the cat Sat!", "Straße ΣΊΣΥΦΟΣ"], tmp_path, lowercase=False)
    for token in ["The", "the", "CAT", "cat", "##ß", "Σ", "##Σ"]:
        assert token in tokens
    assert "strasse" not in tokens


@pytest.mark.parametrize("lowercase", [True, False], ids=["uncased", "cased"])
def test_keras_hub_gives_the_ids_of_the_hf_tokenizer(lowercase, learned, kjv):
    texts = kjv[-250:] + HAND_WRITTEN
    keras_hub_tokenizer = vocab.build_tokenizer(
        learned[lowercase], family="wordpiece", lowercase=lowercase
    )
    hf_tokenizer = vocab.hf_tokenizer(learned[lowercase], family="wordpiece", lowercase=lowercase)
    expected = [e.ids for e in hf_tokenizer.encode_batch(texts, add_special_tokens=False)]
    eager = keras_hub_tokenizer(texts)
    in_graph = graph_ids(keras_hub_tokenizer, texts)
    for text, ids, from_eager, from_graph in zip(texts, expected, eager, in_graph, strict=True):
        assert from_eager == ids, text
        assert from_graph == ids, text


def test_scripts_absent_from_the_vocabulary_still_agree(kjv, tmp_path):
    # The hf tokenizer leaves out case-folding passes for scripts that no
    # token holds (here Greek, Cherokee and Cyrillic): such words are [UNK].
    path = vocab.train_vocabulary(
        kjv[:50],
        family="wordpiece",
        size=1000,
        lowercase=True,
        min_frequency=2,
        out_dir=tmp_path,
    )
    texts = ["ᾳ ᾼ ᾠδή ΐ ς the", "STRAẞE straße", "ꭰᎠ Ꭰꭰ and", "ᲀ в Ё", "τῷ ᾧ"]
    keras_hub_tokenizer = vocab.build_tokenizer(path, family="wordpiece", lowercase=True)
    hf_tokenizer = vocab.hf_tokenizer(path, family="wordpiece", lowercase=True)
    expected = [hf_tokenizer.encode(text).ids for text in texts]
    assert expected[0][-1] != 1 and expected[2][-1] != 1
    assert keras_hub_tokenizer(texts) == expected
    assert graph_ids(keras_hub_tokenizer, texts) == expected


@pytest.mark.parametrize("lowercase", [True, False], ids=["uncased", "cased"])
def test_hand_written_text_is_mostly_known(lowercase, learned):
    # Guards the test above against comparing strings of [UNK].
    tokenizer = vocab.hf_tokenizer(learned[lowercase], family="wordpiece", lowercase=lowercase)
    for text in ["ΣΊΣΥΦΟΣ σοφός", "東京大学", "Ёлка Москва", "naïve élève", "x² Ⅻ", "50%"]:
        assert 1 not in tokenizer.encode(text).ids, text
    assert tokenizer.encode("a" * 150).ids == [1]


def test_uncased_tokenizer_folds_compatibility_characters(learned):
    tokenizer = vocab.build_tokenizer(learned[True], family="wordpiece", lowercase=True)

    def ids(text):
        return tokenizer(text).tolist()

    assert ids("Straße") == ids("STRASSE") == ids("strasse")
    assert ids("ﬁne") == ids("FINE")
    # "…" is one punctuation word, folded to "..." only afterwards.
    assert ids("wait…") == ids("wait") + ids("...")[:1] + [tokenizer.token_to_id("##.")] * 2


@pytest.mark.parametrize("lowercase", [True, False], ids=["uncased", "cased"])
def test_tokens_that_cannot_be_read_back_are_dropped(lowercase, tmp_path):
    # keras-hub does not split on a no-break space, which NFKC turns into a
    # space, and strips whitespace from the end of each vocabulary line: the
    # learned "\u00a0", "##\u00a0" and "a\u00a0" cannot be stored.
    path = vocab.train_vocabulary(
        ["a\u00a0b a\u00a0c a\u00a0b"] * 2,
        family="wordpiece",
        size=100,
        lowercase=lowercase,
        min_frequency=1,
        out_dir=tmp_path,
    )
    space = " " if lowercase else "\u00a0"
    assert vocab.read_vocabulary(path) == SPECIAL_TOKENS + [
        "##b", "##c", "a", "b", "c", f"a{space}b", f"a{space}c",
    ]  # fmt: skip
    keras_hub_tokenizer = vocab.build_tokenizer(path, family="wordpiece", lowercase=lowercase)
    hf_tokenizer = vocab.hf_tokenizer(path, family="wordpiece", lowercase=lowercase)
    for text, ids in [("a\u00a0b", [10]), ("a\u00a0c b", [11, 8]), ("a\u00a0 b", [1, 8])]:
        assert keras_hub_tokenizer(text).tolist() == ids
        assert graph_ids(keras_hub_tokenizer, [text]) == [ids]
        assert hf_tokenizer.encode(text).ids == ids


def test_rerun_writes_a_byte_identical_file(kjv, tmp_path):
    # `tokenizers` alone numbers "##" tokens in a random order on every run.
    documents = kjv[300:400] + MULTILINGUAL
    paths = [
        vocab.train_vocabulary(
            documents,
            family="wordpiece",
            size=2000,
            lowercase=True,
            min_frequency=2,
            out_dir=tmp_path / str(run),
        )
        for run in range(3)
    ]
    assert paths[0].read_bytes() == paths[1].read_bytes() == paths[2].read_bytes()
    # Re-running into the same folder replaces the file.
    again = vocab.train_vocabulary(
        documents,
        family="wordpiece",
        size=2000,
        lowercase=True,
        min_frequency=2,
        out_dir=tmp_path / "0",
    )
    assert again.read_bytes() == paths[1].read_bytes()
    assert sorted(p.name for p in (tmp_path / "0").iterdir()) == ["vocabulary.txt"]


def test_a_generator_gives_the_same_vocabulary_as_a_list(kjv, tmp_path):
    documents = kjv[:1500]  # more than one batch of documents
    from_list = train(documents, tmp_path / "list", size=500)
    from_generator = train((d for d in documents), tmp_path / "generator", size=500)
    assert from_generator == from_list


def test_unknown_family_raises(tmp_path):
    with pytest.raises(MlmError, match=r"unknown tokenizer family 'bpe'; choose one of: wordpiece"):
        train(["a b"], tmp_path, family="bpe")
    with pytest.raises(MlmError, match=r"unknown tokenizer family 'bpe'"):
        vocab.build_tokenizer(tmp_path / "vocabulary.txt", family="bpe", lowercase=True)
    with pytest.raises(MlmError, match=r"unknown tokenizer family 'bpe'"):
        vocab.hf_tokenizer(tmp_path / "vocabulary.txt", family="bpe", lowercase=True)
    with pytest.raises(MlmError, match=r"unknown tokenizer family 'bpe'"):
        vocab.vocabulary_path(tmp_path, family="bpe")
    assert vocab.families() == ("wordpiece",)


def test_bad_inputs_raise_one_line_errors(tmp_path):
    with pytest.raises(MlmError, match=r"received a single string of 9 characters"):
        train("some text", tmp_path)
    with pytest.raises(MlmError, match=r"must be a string, but received bytes b'raw'"):
        train(["text", b"raw"], tmp_path)
    with pytest.raises(MlmError, match=r"received size=5"):
        train(["text"], tmp_path, size=5)
    with pytest.raises(MlmError, match=r"received min_frequency=0"):
        train(["text"], tmp_path, min_frequency=0)
    with pytest.raises(MlmError, match=r"no words to learn a vocabulary from"):
        train(["", " \t\n", "\u200b"], tmp_path)
    with pytest.raises(MlmError, match=r"vocabulary file not found: .*missing.txt"):
        vocab.build_tokenizer(tmp_path / "missing.txt", family="wordpiece", lowercase=True)
