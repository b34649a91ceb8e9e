"""Tests for `mlm.data.vocab`: learning a vocabulary and building its tokenizers."""

import gzip
import importlib.resources
import pathlib
import re

import numpy as np
import pytest
import sentencepiece
import tensorflow as tf
import tokenizers
from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode, split_strings_for_bpe

from mlm.architectures import ARCHITECTURES
from mlm.data import token_cache, vocab
from mlm.data.vocab import byte_bpe
from mlm.errors import MlmError
from tests.conftest import sample_documents

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
    path = train_path(
        documents, out_dir, size=size, lowercase=lowercase, min_frequency=min_frequency,
        family=family,
    )  # fmt: skip
    return vocab.read_vocabulary(path)


def train_path(documents, out_dir, *, size, lowercase, min_frequency=1, family):
    return vocab.train_vocabulary(
        documents,
        family=family,
        size=size,
        lowercase=lowercase,
        min_frequency=min_frequency,
        out_dir=out_dir,
    )


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
    assert vocab.families() == ("wordpiece", "sentencepiece", "byte_bpe")


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


# --- Every architecture's tokenizer family -------------------------------------

ROWS = [pytest.param(arch, id=arch.name) for arch in ARCHITECTURES.values()]
# Chapters of the sample corpus beside `MULTILINGUAL`, so that hand-written
# text is not all unknown; and chapters never learned from.
ROW_TRAINING = sample_documents(100) + MULTILINGUAL * 3
UNKNOWN = "the \u2603 and \U0001f9c0"  # a snowman and a cheese wedge, never learned
ROW_HELD_OUT = (
    sample_documents(6, start=1100)
    + HAND_WRITTEN
    + [
        "<s>a <mask> b</s><pad> <unk>",
        "x<mask>y  <mask>\n\n<s>",
        "[CLS] ▁The [MASK]▁ ⁇ ",
        "and\n\nthe  LORD\r\nsaid \u3000 unto\u00a0him\u2009 \t",
        UNKNOWN,
    ]
)
# XLM-RoBERTa's fairseq layout: fixed ids for four tokens, whatever the
# sentencepiece model holds, and "<mask>" after the last piece.
FAIRSEQ_IDS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}


@pytest.fixture(scope="module")
def row_vocabulary(tmp_path_factory):
    """The learned asset for a row, cased; rows with equal tokens share one."""
    learned = {}

    def learn(arch):
        key = (arch.tokenizer_family, arch.special_tokens)
        if key not in learned:
            learned[key] = vocab.train_vocabulary(
                ROW_TRAINING,
                family=arch.tokenizer_family,
                size=700,
                lowercase=False,
                min_frequency=2,
                out_dir=tmp_path_factory.mktemp(arch.name),
                special_tokens=arch.special_tokens,
            )
        return learned[key]

    return learn


def keras_hub_tokenizer(arch, path):
    return vocab.build_tokenizer(
        path, family=arch.tokenizer_family, lowercase=False, tokenizer=arch.tokenizer
    )


def trainer_ids(arch, path, texts):
    """Ids from the trainer's own tokenizer, in keras-hub's numbering."""
    tokenizer = vocab.hf_tokenizer(path, family=arch.tokenizer_family, lowercase=False)
    if arch.tokenizer_family == "sentencepiece":
        ids = tokenizer.encode(texts)
        if arch.tokenizer == "XLMRobertaTokenizer":
            return [vocab.xlm_roberta_ids(row) for row in ids]
        return ids
    return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


@pytest.fixture(scope="module")
def row_ids(row_vocabulary):
    """`ROW_HELD_OUT` tokenized three ways for a row: {"trainer", "eager", "graph"}.

    Computed once per row: keras-hub's `tf.data` path takes seconds to trace.
    """
    results = {}

    def tokenize(arch):
        if arch.name not in results:
            path = row_vocabulary(arch)
            tokenizer = keras_hub_tokenizer(arch, path)
            results[arch.name] = {
                "trainer": trainer_ids(arch, path, ROW_HELD_OUT),
                "eager": [list(map(int, ids)) for ids in tokenizer(ROW_HELD_OUT)],
                "graph": graph_ids(tokenizer, ROW_HELD_OUT),
            }
        return results[arch.name]

    return tokenize


@pytest.mark.parametrize("arch", ROWS)
def test_keras_hub_and_the_trainer_agree_on_held_out_text(arch, row_vocabulary, row_ids):
    path = row_vocabulary(arch)
    assert path == vocab.vocabulary_path(path.parent, family=arch.tokenizer_family)
    tokenizer = keras_hub_tokenizer(arch, path)
    assert type(tokenizer) is arch.cls("tokenizer")
    ids = row_ids(arch)
    for i, text in enumerate(ROW_HELD_OUT):
        assert ids["eager"][i] == ids["trainer"][i], text
        assert ids["graph"][i] == ids["trainer"][i], text
    # Guards against comparing strings of unknown tokens: held-out chapters
    # are almost all known, and learned pieces are longer than characters.
    unknown = tokenizer.token_to_id("<unk>" if "<unk>" in arch.special_tokens else "[UNK]")
    chapters = [i for row in ids["trainer"][:6] for i in row]
    assert chapters.count(unknown) < 0.001 * len(chapters)
    assert len(chapters) < 0.5 * sum(len(text) for text in ROW_HELD_OUT[:6])


@pytest.mark.parametrize("arch", ROWS)
def test_special_tokens_have_the_ids_the_preprocessor_uses(arch, row_vocabulary):
    tokenizer = keras_hub_tokenizer(arch, row_vocabulary(arch))
    preprocessor = arch.cls("preprocessor")(
        tokenizer=tokenizer,
        sequence_length=12,
        mask_selection_rate=1.0,
        mask_selection_length=12,
        mask_token_rate=1.0,
        random_token_rate=0.0,
    )
    x, y, weights = preprocessor("And God said")
    roles = ("start", "end", "pad", "mask")
    ids = {role: getattr(preprocessor.tokenizer, f"{role}_token_id") for role in roles}
    size = tokenizer.vocabulary_size()
    assert len(set(ids.values())) == 4 and all(0 <= i < size for i in ids.values())
    if arch.tokenizer == "XLMRobertaTokenizer":
        assert size == len(tokenizer.get_vocabulary()) == 700 + 2
        assert ids == {"start": 0, "end": 2, "pad": 1, "mask": size - 1}
        assert tokenizer.token_to_id("<unk>") == FAIRSEQ_IDS["<unk>"]
        assert tokenizer.id_to_token(size - 1) == "<mask>"
        # keras-hub leaves the mask out of special_token_ids; masking never
        # meets it, as no text encodes to it.
        assert sorted(tokenizer.special_token_ids) == [0, 1, 2, 3]
    else:
        assert size == len(tokenizer.get_vocabulary()) == 700
        for role, i in ids.items():
            # The learned vocabulary puts the row's tokens at the row's ids.
            token = getattr(tokenizer, f"{role}_token")
            assert arch.special_tokens.index(token) == i, role
            assert tokenizer.id_to_token(i) == token
            assert i in tokenizer.special_token_ids
    for i in ids.values():
        assert tokenizer.token_to_id(tokenizer.id_to_token(i)) == i
    # Packed and masked with exactly those ids: every token is masked.
    learned = list(map(int, tokenizer("And God said")))
    words = len(learned)
    assert 3 <= words <= 8
    assert np.asarray(x["token_ids"]).tolist() == [
        ids["start"], *[ids["mask"]] * words, ids["end"], *[ids["pad"]] * (12 - words - 2),
    ]  # fmt: skip
    assert np.asarray(y).tolist()[:words] == learned
    assert np.asarray(weights).tolist()[:words] == [1.0] * words


@pytest.mark.parametrize("arch", ROWS)
def test_unknown_characters_are_the_unknown_token_or_bytes(arch, row_vocabulary, row_ids):
    tokenizer = keras_hub_tokenizer(arch, row_vocabulary(arch))
    ids = row_ids(arch)["graph"][ROW_HELD_OUT.index(UNKNOWN)]
    if arch.tokenizer_family == "byte_bpe":
        # Every byte is in the vocabulary: nothing is unknown.
        assert tokenizer.token_to_id("<unk>") not in ids
        assert tokenizer.detokenize(ids) == UNKNOWN
    else:
        unknown = next(t for t in arch.special_tokens if t in ("[UNK]", "<unk>"))
        unknown_id = tokenizer.token_to_id(unknown)
        assert ids.count(unknown_id) == 2
        # What the token cache and the report count as unknown.
        assert token_cache.unknown_token_id(tokenizer) == unknown_id


@pytest.mark.parametrize(
    "arch",
    [ARCHITECTURES["deberta_v3"], ARCHITECTURES["roberta"]],
    ids=["sentencepiece", "byte_bpe"],
)
def test_retraining_writes_byte_identical_files(arch, row_vocabulary, tmp_path):
    first = row_vocabulary(arch)
    again = vocab.train_vocabulary(
        (document for document in ROW_TRAINING),
        family=arch.tokenizer_family,
        size=700,
        lowercase=False,
        min_frequency=2,
        out_dir=tmp_path,
        special_tokens=arch.special_tokens,
    )
    files = vocab.vocabulary_files(first.parent, family=arch.tokenizer_family)
    assert [p.name for p in files] == sorted(p.name for p in tmp_path.iterdir())[::-1]
    for path in files:
        assert (tmp_path / path.name).read_bytes() == path.read_bytes()
    assert again == tmp_path / first.name


def test_text_never_spells_sentencepiece_control_tokens(row_vocabulary):
    arch = ARCHITECTURES["albert"]
    tokenizer = keras_hub_tokenizer(arch, row_vocabulary(arch))
    ids = list(map(int, tokenizer("[MASK] [CLS] [SEP] <pad>")))
    assert not set(ids) & set(tokenizer.special_token_ids)
    assert len(ids) > 4


def test_roberta_special_tokens_in_text_are_read_as_tokens(row_vocabulary):
    # As keras-hub's RobertaTokenizer does (its `unsplittable_tokens`).
    arch = ARCHITECTURES["roberta"]
    tokenizer = keras_hub_tokenizer(arch, row_vocabulary(arch))
    ids = list(map(int, tokenizer("<s>a<mask></s><pad><unk>")))
    assert ids[:4] == [0, tokenizer.token_to_id("a"), 4, 2]
    assert ids[4] == 1 and 3 not in ids


def test_uncased_sentencepiece_folds_case(kjv, tmp_path):
    arch = ARCHITECTURES["albert"]
    path = vocab.train_vocabulary(
        kjv[:40], family="sentencepiece", size=500, lowercase=True, min_frequency=1,
        out_dir=tmp_path, special_tokens=arch.special_tokens,
    )  # fmt: skip
    tokenizer = vocab.build_tokenizer(
        path, family="sentencepiece", lowercase=True, tokenizer="FNetTokenizer"
    )
    processor = vocab.hf_tokenizer(path, family="sentencepiece", lowercase=True)
    # NFKC, then case folding: full-width letters too.
    texts = ["AND GOD SAID", "and god said", "And God Said", "ＧＯＤ", "god"]
    ids = [list(map(int, row)) for row in tokenizer(texts)]
    assert ids[0] == ids[1] == ids[2] and ids[3] == ids[4]
    assert processor.encode(texts) == ids == graph_ids(tokenizer, texts)
    with pytest.raises(MlmError, match=r"learned uncased .*, but received lowercase=False"):
        vocab.build_tokenizer(path, family="sentencepiece", lowercase=False)


def test_sentencepiece_learns_from_documents_longer_than_a_sentence(tmp_path):
    # One line of 60,000 characters: the trainer skips sentences over 4192
    # bytes by default, so the document is cut at spaces.
    document = "quokka zebra " * 4000 + "x" * 3000
    path = vocab.train_vocabulary(
        [document], family="sentencepiece", size=40, lowercase=False, min_frequency=1,
        out_dir=tmp_path,
    )  # fmt: skip
    processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
    assert processor.encode("quokka zebra", out_type=str) == ["▁quokka", "▁zebra"]
    assert processor.id_to_piece(list(range(5))) == list(ARCHITECTURES["albert"].special_tokens)


def test_byte_bpe_splits_text_like_keras_hubs_tf_data_path():
    # Compares the words BPE runs on, whatever the vocabulary: keras-hub's
    # RE2 rewrite of the GPT-2 pattern keeps "\n\n" and "\r\n" whole, splits
    # trailing spaces one by one, and knows only ASCII and four other spaces.
    texts = [
        "def g(y):\n  return   y \n\n\n\tpass  ",
        "x  \n\n  y\r\n\r\n z\u00a0\u00a0w\u3000 v\u2003u \x0bt\x85s\u2028r",
        "It's 1,234,567 $5 don't DON'T we'll I'm 'tis ''s x'sy",
        "  lead and trail  ",
        "tab\t\t \tend\f\r",
        "ΣΊΣΥΦΟΣ 東京大学 안녕 हिन्दी x²Ⅻ①😀👍🏽 ‘q’ «g»",
        " ",
        "",
    ]
    keras_hub_words = split_strings_for_bpe(tf.constant(texts)).to_list()
    splitter = byte_bpe.base_tokenizer(tokenizers.models.BPE())
    bytes_of = {char: byte for byte, char in zip(*bytes_to_unicode(), strict=True)}
    for text, expected in zip(texts, keras_hub_words, strict=True):
        words = splitter.pre_tokenizer.pre_tokenize_str(splitter.normalizer.normalize_str(text))
        assert [b"".join(bytes_of[char] for char in word) for word, _ in words] == expected, text


def test_keras_hubs_eager_roberta_tokenizer_does_not_split_text(tmp_path):
    # keras-hub 0.32's eager (Python) path hands its split pattern to
    # `tokenizers` as a plain string, which matches it literally, and so runs
    # BPE over unsplit text: a learned "ĠĠ" then merges across the split point
    # before "Ġdog" that the `tf.data` path (and GPT-2) respects. When this
    # fails after a keras-hub upgrade, drop the caveat in `mlm/data/vocab/byte_bpe.py`.
    documents = ["def f():\n        return  x\n    if   y:\n        pass"] * 50
    documents += ["The dog sat. It is here."] * 5
    path = vocab.train_vocabulary(
        documents, family="byte_bpe", size=300, lowercase=False, min_frequency=2,
        out_dir=tmp_path,
    )  # fmt: skip
    tokenizer = vocab.build_tokenizer(path, family="byte_bpe", lowercase=False)
    hf = vocab.hf_tokenizer(path, family="byte_bpe", lowercase=False)
    assert hf.encode("The  dog sat.").tokens == ["The", "Ġ", "Ġdog", "Ġsat", "."]
    assert tokenizer.tokenize("The  dog sat.").tolist() != hf.encode("The  dog sat.").ids


def test_xlm_roberta_ids_follow_fairseq():
    assert vocab.xlm_roberta_ids([0, 3, 4, 1, 2]) == [3, 4, 5, 2, 3]


def test_family_errors_are_one_line(tmp_path, kjv):
    with pytest.raises(MlmError, match=r"byte_bpe family \(RoBERTa\) is cased"):
        train(kjv[:5], tmp_path / "b", family="byte_bpe", size=500, lowercase=True)
    assert not (tmp_path / "b" / "vocabulary.json").exists()
    with pytest.raises(MlmError, match=r"all 256 bytes, but received size=200; .* least 261"):
        train(kjv[:5], tmp_path, family="byte_bpe", size=200, lowercase=False)
    with pytest.raises(MlmError, match=r"needs an unknown token .*\('\[PAD\]', '\[MASK\]'\)"):
        vocab.train_vocabulary(
            kjv[:5], family="sentencepiece", size=300, lowercase=False, min_frequency=1,
            out_dir=tmp_path, special_tokens=("[PAD]", "[MASK]"),
        )  # fmt: skip
    with pytest.raises(MlmError, match=r"special_tokens must be distinct"):
        vocab.train_vocabulary(
            kjv[:5], family="byte_bpe", size=300, lowercase=False, min_frequency=1,
            out_dir=tmp_path, special_tokens=("<s>", "<s>"),
        )  # fmt: skip
    for family in ("sentencepiece", "byte_bpe"):
        with pytest.raises(MlmError, match=r"no words to learn a vocabulary from"):
            train(["", " \t\n"], tmp_path, family=family, size=300, lowercase=False)
        with pytest.raises(MlmError, match=r"must be a string, but received bytes b'raw'"):
            train(["text"] * 1001 + [b"raw"], tmp_path, family=family, size=300, lowercase=False)
    with pytest.raises(MlmError, match=r"sentencepiece could not learn a vocabulary of size=8: "):
        train(kjv[:5], tmp_path, family="sentencepiece", size=8, lowercase=False)
    path = train_path(kjv[:20], tmp_path / "r", family="byte_bpe", size=300, lowercase=False)
    with pytest.raises(MlmError, match=r"'AlbertTokenizer' is not a keras_hub.models BytePair"):
        vocab.build_tokenizer(path, family="byte_bpe", lowercase=False, tokenizer="AlbertTokenizer")
    with pytest.raises(MlmError, match=r"tokenizer 'NoSuchTokenizer' is not"):
        vocab.build_tokenizer(path, family="byte_bpe", lowercase=False, tokenizer="NoSuchTokenizer")
    (tmp_path / "r" / "merges.txt").unlink()
    with pytest.raises(MlmError, match=r"vocabulary file not found: .*merges.txt"):
        vocab.build_tokenizer(path, family="byte_bpe", lowercase=False)


@pytest.mark.parametrize(
    "arch", [ARCHITECTURES["albert"], ARCHITECTURES["xlm_roberta"]], ids=["albert", "xlm_roberta"]
)
def test_byte_fallback_spells_unknown_characters_as_bytes(arch, tmp_path):
    path = vocab.train_vocabulary(
        ROW_TRAINING, family="sentencepiece", size=700, lowercase=False, min_frequency=2,
        out_dir=tmp_path, special_tokens=arch.special_tokens, byte_fallback=True,
    )
    tokenizer = keras_hub_tokenizer(arch, path)
    unknown_id = token_cache.unknown_token_id(tokenizer)
    assert unknown_id is not None
    texts = [UNKNOWN, *HAND_WRITTEN]
    eager = [list(map(int, ids)) for ids in tokenizer(texts)]
    assert graph_ids(tokenizer, texts) == eager
    # The snowman and the cheese wedge are 3 + 4 UTF-8 bytes, not 2 unknown tokens.
    pieces = [tokenizer.id_to_token(i) for i in eager[0]]
    assert [p for p in pieces if p.startswith("<0x")] == [
        "<0xE2>", "<0x98>", "<0x83>", "<0xF0>", "<0x9F>", "<0xA7>", "<0x80>",
    ]
    assert all(unknown_id not in ids for ids in eager)
    assert tokenizer.detokenize(eager[0]) == UNKNOWN
    # Without it, the same characters read as the unknown token.
    plain = keras_hub_tokenizer(arch, vocab.train_vocabulary(
        ROW_TRAINING, family="sentencepiece", size=700, lowercase=False, min_frequency=2,
        out_dir=tmp_path / "plain", special_tokens=arch.special_tokens,
    ))
    assert list(map(int, plain([UNKNOWN])[0])).count(token_cache.unknown_token_id(plain)) == 2


def test_byte_fallback_needs_sentencepiece_and_room_for_bytes(tmp_path):
    with pytest.raises(MlmError, match="byte_fallback needs the sentencepiece family.*wordpiece"):
        vocab.train_vocabulary(ROW_TRAINING, family="wordpiece", size=700, lowercase=False,
                               min_frequency=2, out_dir=tmp_path, byte_fallback=True)
    with pytest.raises(MlmError, match=r"256 entries besides the 5 special tokens.*size=200"):
        vocab.train_vocabulary(ROW_TRAINING, family="sentencepiece", size=200, lowercase=False,
                               min_frequency=2, out_dir=tmp_path, byte_fallback=True)


# Word boundaries, per family: (family, the architecture row, lowercase).
FAMILY_ROWS = [("wordpiece", "bert", True), ("sentencepiece", "albert", True),
               ("byte_bpe", "roberta", False)]  # fmt: skip


@pytest.fixture(scope="module")
def family_vocabulary(kjv, tmp_path_factory):
    """A small vocabulary learned from 150 chapters, for each family."""
    learned = {}

    def learn(family, architecture, lowercase):
        if family not in learned:
            learned[family] = vocab.train_vocabulary(
                kjv[:150], family=family, size=800, lowercase=lowercase, min_frequency=2,
                out_dir=tmp_path_factory.mktemp(family),
                special_tokens=ARCHITECTURES[architecture].special_tokens,
            )  # fmt: skip
        return learned[family]

    return learn


def held_out_sentences(kjv):
    """Sentences of unseen chapters, punctuation dropped so that words are whitespace-separated."""
    text = " ".join(kjv[1100:1102])
    sentences = [" ".join(re.sub(r"[^\w\s]", " ", s).split()) for s in text.split(". ")]
    return [s for s in sentences if s][:20]


def tokens_and_spans(processor, family, text):
    """The trainer's tokens of `text` and each token's character span in it."""
    if family == "sentencepiece":
        pieces = processor.encode(text, return_type="proto").pieces
        return [p.piece for p in pieces], [(p.begin, p.end) for p in pieces]
    encoding = processor.encode(text)
    return encoding.tokens, encoding.offsets


def begins_word(text, spans, i):
    """Whether token `i` is the first of a whitespace-separated word, by character spans.

    It is when whitespace lies between the previous token and token i's first
    non-space character (a "▁" or "Ġ" token holding only the space counts as
    the word's first token).
    """
    if i == 0:
        return True
    begin = spans[i][0]
    while begin < len(text) and text[begin].isspace():
        begin += 1
    return any(char.isspace() for char in text[spans[i - 1][1] : begin])


@pytest.mark.parametrize("family, architecture, lowercase", FAMILY_ROWS)
def test_word_starts_flag_the_first_token_of_each_word(
    kjv, family_vocabulary, family, architecture, lowercase
):
    path = family_vocabulary(family, architecture, lowercase)
    processor = vocab.hf_tokenizer(path, family=family, lowercase=lowercase)
    tokenizer = vocab.build_tokenizer(path, family=family, lowercase=lowercase)
    vocabulary = [tokenizer.id_to_token(i) for i in range(tokenizer.vocabulary_size())]
    starts = vocab.word_starts(vocabulary, family=family, special_tokens=tokenizer.special_tokens)
    assert starts.dtype == bool and starts.shape == (len(vocabulary),)
    # keras-hub's special tokens (its unknown token not among them) are words of their own.
    assert all(starts[tokenizer.token_to_id(t)] for t in tokenizer.special_tokens)
    continued = 0
    for text in held_out_sentences(kjv):
        tokens, spans = tokens_and_spans(processor, family, text)
        expected = [begins_word(text, spans, i) for i in range(len(tokens))]
        flags = [vocab.is_word_start(t, family=family) for t in tokens]
        # The first token of a text starts a word; byte-level BPE leaves it unmarked.
        assert flags[0] == (family != "byte_bpe")
        assert [True, *flags[1:]] == expected, text
        ids = [int(i) for i in tokenizer.tokenize(text)]
        assert [vocabulary[i] for i in ids] == tokens
        assert [True, *starts[ids][1:]] == expected, text
        assert expected.count(True) == len(text.split())
        continued += expected.count(False)
    assert continued > 20  # the vocabulary is small enough to split words


@pytest.mark.parametrize("family, architecture, lowercase", FAMILY_ROWS)
def test_detokenize_gives_back_the_normalised_text(
    kjv, family_vocabulary, family, architecture, lowercase
):
    path = family_vocabulary(family, architecture, lowercase)
    processor = vocab.hf_tokenizer(path, family=family, lowercase=lowercase)
    for text in held_out_sentences(kjv):
        tokens, _ = tokens_and_spans(processor, family, text)
        assert vocab.detokenize(tokens, family=family) == (text.lower() if lowercase else text)


def test_word_boundary_rules_of_each_family():
    assert [vocab.is_word_start(t, family="wordpiece") for t in ["the", "##ing", ",", "[CLS]"]] \
        == [True, False, True, True]  # fmt: skip
    assert [vocab.is_word_start(t, family="sentencepiece") for t in ["▁the", "ing", "▁", ","]] \
        == [True, False, True, False]  # fmt: skip
    assert [vocab.is_word_start(t, family="byte_bpe") for t in ["Ġthe", "ing", "The", "Ġ"]] \
        == [True, False, False, True]  # fmt: skip
    starts = vocab.word_starts(["<s>", "▁a", "b", "[MASK]"], family="sentencepiece",
                               special_tokens=("<s>", "[MASK]"))  # fmt: skip
    assert starts.tolist() == [True, True, False, True]
    assert vocab.detokenize(["▁caf", "<0xC3>", "<0xA9>", "▁au", "▁lait"],
                            family="sentencepiece") == "café au lait"  # fmt: skip
    assert vocab.detokenize(["The", "Ġcaf", "Ã©"], family="byte_bpe") == "The café"
    assert vocab.detokenize(["the", "caf", "##e", ","], family="wordpiece") == "the cafe ,"
    with pytest.raises(MlmError, match="unknown tokenizer family 'bpe'"):
        vocab.word_starts(["a"], family="bpe")


def fail_on_write(monkeypatch, *, after):
    """Makes `Path.write_bytes` raise once `after` files are written."""
    written = []
    original = pathlib.Path.write_bytes

    def write_bytes(path, data):
        if len(written) >= after:
            raise OSError(28, "No space left on device")
        written.append(path)
        return original(path, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)


def test_interrupted_training_leaves_out_dir_as_it_was(kjv, tmp_path, monkeypatch):
    def learn(out_dir):
        return vocab.train_vocabulary(kjv[:20], family="byte_bpe", size=400, lowercase=False,
                                      min_frequency=2, out_dir=out_dir)  # fmt: skip

    # A new folder: absent after a failure between byte_bpe's two files.
    with monkeypatch.context() as patch:
        fail_on_write(patch, after=1)
        with pytest.raises(OSError, match="No space left"):
            learn(tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # A complete earlier vocabulary: kept whole.
    earlier = learn(tmp_path / "new").parent
    before = {p.name: p.read_bytes() for p in earlier.iterdir()}
    with monkeypatch.context() as patch:
        fail_on_write(patch, after=1)
        with pytest.raises(OSError, match="No space left"):
            vocab.train_vocabulary(kjv[20:40], family="byte_bpe", size=400, lowercase=False,
                                   min_frequency=2, out_dir=earlier)  # fmt: skip
    assert {p.name: p.read_bytes() for p in earlier.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]
    # A folder the caller shares with other files: theirs and the old assets kept.
    (earlier / "notes.txt").write_text("mine")
    with monkeypatch.context() as patch:
        fail_on_write(patch, after=1)  # one asset written, the other fails
        with pytest.raises(OSError, match="No space left"):
            vocab.train_vocabulary(kjv[20:40], family="byte_bpe", size=400, lowercase=False,
                                   min_frequency=2, out_dir=earlier)  # fmt: skip
    assert {p.name: p.read_bytes() for p in earlier.iterdir()} == {**before, "notes.txt": b"mine"}
    # And once it succeeds there, only the assets change.
    path = vocab.train_vocabulary(kjv[20:40], family="byte_bpe", size=400, lowercase=False,
                                  min_frequency=2, out_dir=earlier)  # fmt: skip
    assert sorted(p.name for p in earlier.iterdir()) == ["merges.txt", "notes.txt",
                                                         "vocabulary.json"]  # fmt: skip
    assert path.read_bytes() != before["vocabulary.json"]


def test_out_dir_that_is_a_file_raises(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(MlmError, match=r"out_dir .*file is a file; pass a folder"):
        train(["some words here"], tmp_path / "file")
