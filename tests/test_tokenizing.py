"""The vocabulary a run learns: from every training document, or a bounded seeded sample."""

import dataclasses

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
        kept = sample_documents(iter(documents), size=10, seed=seed)
        assert len(kept) == 10 and len(set(kept)) == 10
        # In corpus order.
        assert kept == sorted(kept, key=documents.index)
        counts[[documents.index(d) for d in kept]] += 1
    # Each is kept with probability 10/100: 2000 draws give 200 +- 13 (one s.d.).
    frequencies = counts / 2000
    assert np.all(np.abs(frequencies - 0.1) < 0.035), frequencies
    # The first and last documents are not favoured (a reservoir's classic bug).
    assert abs(frequencies[:10].mean() - frequencies[-10:].mean()) < 0.02


def test_a_sample_is_a_function_of_its_seed_and_a_small_corpus_is_kept_whole():
    documents = [f"d{i}" for i in range(50)]
    assert sample_documents(documents, size=5, seed=3) == sample_documents(documents, size=5,
                                                                           seed=3)
    assert sample_documents(documents, size=5, seed=3) != sample_documents(documents, size=5,
                                                                           seed=4)
    assert sample_documents(documents, size=80, seed=0) == documents


def test_the_vocabulary_is_learned_from_the_sample_only(tmp_path):
    # 40 documents of common words, one of a word no other document has.
    texts = ["the cat sat on the mat and the dog sat on the log"] * 40
    texts.insert(17, "zebra zebra zebra zebra")
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    source = corpus.resolve_corpus(CorpusConfig(paths=(str(path),), held_out_fraction=0.0))
    said = []

    def learn(config, folder):
        vocabulary = learn_vocabulary(source, config=config, arch=get_architecture("bert"),
                                      out_dir=tmp_path / folder, say=said.append, quiet=True)
        return vocabulary.read_text(encoding="utf-8").split()

    config = VocabConfig(size=100, min_frequency=2)
    assert "zebra" in learn(config, "all")
    # A sample of 5 documents that leaves the zebra document out (seed 0 does).
    kept = sample_documents(texts, size=5, seed=0)
    assert "zebra zebra zebra zebra" not in kept
    assert "zebra" not in learn(dataclasses.replace(config, sample=5, sample_seed=0), "sample")
    assert said[-1].endswith("on a sample of at most 5 documents")


def test_a_negative_sample_is_refused():
    with pytest.raises(MlmError, match="'vocab.sample' must be at least 0"):
        small_recipe(overrides=["vocab.sample=-1"])
