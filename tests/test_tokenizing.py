"""The vocabulary a run learns: from every training document, or a bounded seeded sample."""

import dataclasses
import gzip

import numpy as np
import pytest

from mlm.architectures import get_architecture
from mlm.config import CorpusConfig, VocabConfig
from mlm.data import corpus
from mlm.data.tokenizing import learn_vocabulary, sample_documents
from mlm.errors import MlmError
from tests.conftest import small_recipe


def test_a_sample_keeps_every_document_with_the_same_probability():
    documents = [f"document {i}" for i in range(100)]
    counts = np.zeros(100)
    for seed in range(2000):
        kept = list(sample_documents(iter(documents), size=10, seed=seed, total=100))
        assert len(kept) == 10 and len(set(kept)) == 10
        # In corpus order.
        assert kept == sorted(kept, key=documents.index)
        counts[[documents.index(d) for d in kept]] += 1
    # Each is kept with probability 10/100: 2000 draws give 200 +- 13 (one s.d.).
    frequencies = counts / 2000
    assert np.all(np.abs(frequencies - 0.1) < 0.035), frequencies
    # The first and last documents are not favoured.
    assert abs(frequencies[:10].mean() - frequencies[-10:].mean()) < 0.02


def test_a_sample_is_a_function_of_its_seed_and_a_small_corpus_is_kept_whole():
    documents = [f"d{i}" for i in range(50)]

    def sample(size, seed):
        return list(sample_documents(iter(documents), size=size, seed=seed, total=50))

    assert sample(5, 3) == sample(5, 3)
    assert sample(5, 3) != sample(5, 4)
    assert sample(80, 0) == sample(50, 0) == documents


def test_a_sample_reads_no_further_than_its_last_document():
    read = []

    def documents():
        for i in range(1000):
            read.append(i)
            yield f"d{i}"

    kept = list(sample_documents(documents(), size=3, seed=0, total=1000))
    assert len(kept) == 3
    assert read[-1] == int(kept[-1][1:])  # stopped at the last one kept


def test_the_vocabulary_is_learned_from_the_sample_only(tmp_path):
    # 40 documents of common words, one of a word no other document has.
    texts = ["the cat sat on the mat and the dog sat on the log"] * 40
    texts.insert(17, "zebra zebra zebra zebra")
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    packed = tmp_path / "corpus.txt.gz"  # cannot be entered at any byte: drawn by position
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write(path.read_text(encoding="utf-8"))
    said = []

    def learn(source, config, folder):
        vocabulary = learn_vocabulary(source, config=config, arch=get_architecture("bert"),
                                      out_dir=tmp_path / folder, say=said.append, quiet=True)
        return vocabulary.read_text(encoding="utf-8").split()

    config = VocabConfig(size=100, min_frequency=2)
    plain, gz = (corpus.resolve_corpus(CorpusConfig(paths=(str(p),), held_out_fraction=0.0))
                 for p in (path, packed))
    # The default sample is larger than this corpus: it learns from every document,
    # the vocabulary of no sample at all.
    assert config.sample > len(texts)
    assert "zebra" in learn(plain, config, "all")
    assert learn(plain, config, "all") == learn(plain, dataclasses.replace(config, sample=0),
                                                "every")
    assert not said[0].endswith("documents")  # the default sample kept every one
    # A sample of 5 documents drawn at byte offsets, with a seed that leaves the zebra
    # document out, and one that keeps it.
    seeds = {}
    for seed in range(40):
        kept = list(corpus.sampled_documents(
            plain, corpus.draw_sample(plain, size=5, seed=seed).positions))
        seeds.setdefault("zebra zebra zebra zebra" in kept, seed)
    for has_zebra, seed in seeds.items():
        vocabulary = learn(plain, dataclasses.replace(config, sample=5, sample_seed=seed),
                           f"offsets{seed}")
        assert ("zebra" in vocabulary) == has_zebra
    assert len(seeds) == 2
    assert said[-1].endswith("on a sample of 5 training documents drawn at seeded byte offsets")
    # Drawn by position from the compressed copy (seed 0 leaves the zebra document out).
    kept = list(sample_documents(iter(texts), size=5, seed=0, total=len(texts)))
    assert "zebra zebra zebra zebra" not in kept
    assert "zebra" not in learn(gz, dataclasses.replace(config, sample=5, sample_seed=0),
                                "positions")
    assert said[-1].endswith("on a sample of 5 of the 41 training documents")


def test_a_negative_sample_is_refused():
    with pytest.raises(MlmError, match="'vocab.sample' must be at least 0"):
        small_recipe(overrides=["vocab.sample=-1"])


# Held-out text that tests the byte-level splits: accents, CJK, emoji, long words, runs
# of spaces, tabs and newlines, punctuation glued to words, digits.
HOSTILE = [
    "Café naïve résumé: Ångström coöperate, façade déjà vu.",
    "中文文本没有空格，日本語のテキスト、한국어 텍스트。",
    "Emoji 😀👍🏽 and flags 🇫🇷🇩🇪, zero-width\u200bjoiner 👨\u200d👩\u200d👧.",
    "a" * 300 + " " + "Pneumonoultramicroscopicsilicovolcanoconiosis" * 3,
    "  leading spaces,   runs   of  spaces\tand\ttabs\n\nand\r\nnewlines  ",
    "It's 3.14159 o'clock; don't (won't) [can't] {shan't} <isn't>!?",
    "And God said, Let there be light: and there was light.",
]


@pytest.fixture(scope="module")
def roberta_tokenizer(tmp_path_factory):
    from mlm.data import vocab
    from tests.conftest import sample_documents

    arch = get_architecture("roberta")
    path = vocab.train_vocabulary(
        sample_documents(200), family="byte_bpe", size=800, lowercase=False, min_frequency=2,
        out_dir=tmp_path_factory.mktemp("roberta"), special_tokens=arch.special_tokens)
    return vocab.build_tokenizer(path, family="byte_bpe", lowercase=False,
                                 tokenizer=arch.tokenizer)


def test_the_fast_byte_level_bpe_gives_keras_hubs_ids(roberta_tokenizer):
    from mlm.data.tokenizing import bulk_encoder, keras_hub_ids
    from tests.conftest import sample_documents

    said = []
    held_out = sample_documents(40, start=1100)  # chapters the vocabulary never saw
    encode = bulk_encoder(roberta_tokenizer, probe=held_out[:8], say=said.append)
    assert encode is not None and said == []
    texts = HOSTILE + held_out
    assert encode(texts) == keras_hub_ids(roberta_tokenizer, texts)


def test_wordpiece_and_sentencepiece_keep_keras_hubs_own_path():
    import keras_hub

    from mlm.data.tokenizing import bulk_encoder
    from tests.conftest import TINY_VOCABULARY

    tokenizer = keras_hub.models.BertTokenizer(vocabulary=TINY_VOCABULARY)
    assert bulk_encoder(tokenizer, probe=["the cat"], say=print) is None


def test_a_fast_tokenizer_that_differs_on_the_probe_is_not_used(roberta_tokenizer, monkeypatch):
    from mlm.data import tokenizing
    from mlm.data.vocab import byte_bpe

    real = byte_bpe.hf_tokenizer_of

    def without_merges(tokenizer):
        fast = real(tokenizer)
        from tokenizers import models

        vocabulary = {str(t): int(i) for t, i in dict(tokenizer.vocabulary).items()}
        fast.model = models.BPE(vocabulary, [])  # bytes only: other ids
        return fast

    monkeypatch.setattr(byte_bpe, "hf_tokenizer_of", without_merges)
    said = []
    assert tokenizing.bulk_encoder(roberta_tokenizer, probe=HOSTILE[-1:], say=said.append) is None
    assert said and "tokenizing with keras-hub" in said[0]


def test_a_token_cache_is_the_same_whichever_path_built_it(roberta_tokenizer, tmp_path):
    from mlm.data import token_cache
    from mlm.data.tokenizing import bulk_encoder
    from tests.conftest import sample_documents

    documents = {"train": lambda: HOSTILE + sample_documents(30, start=500),
                 "held_out": lambda: sample_documents(5, start=900)}
    encode = bulk_encoder(roberta_tokenizer, probe=HOSTILE, say=print)
    built = {name: token_cache.load_or_build_cache(
        documents, roberta_tokenizer, cache_root=tmp_path, key=name, progress=False, bulk=bulk)
        for name, bulk in (("keras_hub", None), ("fast", encode))}
    for split in token_cache.SPLITS:
        np.testing.assert_array_equal(built["fast"].tokens(split),
                                      built["keras_hub"].tokens(split))
    assert built["fast"].stats == built["keras_hub"].stats


def test_preparing_with_progress_reads_the_text_twice_or_three_times(small_corpus, tmp_path,
                                                                     monkeypatch):
    """Progress lines need the number of documents: in plain text it is estimated by
    seeking, in a compressed file one read counts both splits; then the vocabulary reads
    the text once (this corpus is smaller than its sample), and one read tokenizes both
    splits."""
    from mlm.preparing import prepare

    reads = []
    original = corpus._iter_sources

    def counted(source, *, split, events):
        reads.append(split)
        return original(source, split=split, events=events)

    monkeypatch.setattr(corpus, "_iter_sources", counted)
    monkeypatch.setattr(corpus, "_COUNTS", {})
    packed = tmp_path / "kjv60.txt.gz"
    with gzip.open(packed, "wb") as f:
        f.write(small_corpus.read_bytes())
    manifests = {}
    for path, expected in ((small_corpus, ["train", "train"]),  # vocabulary, tokenize
                           (packed, ["train", "train", "train"])):  # count, vocabulary, tokenize
        reads.clear()
        manifests[path.name] = prepare(small_recipe(path), out=tmp_path / f"{path.name}.out",
                                       quiet=False)
        assert reads == expected, path.name
    counts = {split: corpus.count_documents(corpus.resolve_corpus(small_recipe(
        packed).corpus), split=split) for split in corpus.SPLITS}
    assert reads == ["train", "train", "train"]  # the counts were kept
    for manifest in manifests.values():
        assert counts == {split: manifest["splits"][split]["documents"]
                          for split in corpus.SPLITS}
    assert counts["train"] + counts["held_out"] == 60
