"""`mlm prepare --workers N`: the same prepared corpus, byte for byte, from N processes."""

import functools
import json
import math

import pytest

from tests.conftest import run_mlm, sample_documents
from tests.test_cli import assert_one_line_error

run_main = functools.partial(run_mlm, in_process=True)


def test_ranges_cover_the_documents_in_order_without_empty_parts():
    from mlm.data.workers import ranges

    assert ranges(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert ranges(2, 4) == [(0, 1), (1, 2)]
    assert ranges(0, 2) == [(0, 0)]
    for total in range(1, 40):
        for parts in range(1, 6):
            spans = ranges(total, parts)
            assert [i for start, stop in spans for i in range(start, stop)] == list(range(total))
            sizes = [stop - start for start, stop in spans]
            assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_run_returns_results_in_task_order_and_raises_a_task_error():
    from mlm.data import workers
    from mlm.errors import MlmError

    assert workers.run(math.factorial, [5, 1, 3, 4], processes=2) == [120, 1, 6, 24]
    # `resolve(0)` raises the user-facing error in the worker; it comes back whole.
    with pytest.raises(MlmError, match="--workers must be at least 1, but received 0"):
        workers.run(workers.resolve, [2, 0, 3], processes=2)


def test_the_default_is_one_process():
    from mlm.data import workers

    assert workers.resolve(None) == 1
    assert workers.resolve(3) == 3


@pytest.fixture(scope="module")
def messy_corpus(tmp_path_factory):
    """60 documents, one with a NUL character, and a paragraph of a NUL alone, empty once
    cleaned (the reader's tally counts both); its held-out split drawn by hash."""
    documents = sample_documents(60)
    documents[41] = documents[41].replace(" ", "\0", 1)
    path = tmp_path_factory.mktemp("messy") / "messy.txt"
    path.write_text("\n\n".join(documents[:30] + ["\0"] + documents[30:]) + "\n")
    return path


def prepare(out, corpus, *extra, recipe="bert_test"):
    return run_main("prepare", "--recipe", recipe, "--corpus", corpus, "--out", out, *extra)


def files_of(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow  # spawned processes importing TensorFlow
@pytest.mark.parametrize(("recipe", "extra"), [
    # WordPiece, words counted in 2 processes, one host's share, word labels.
    ("bert_test", ("--hosts", "2", "--host", "1", "--set", "masking.unit=word",
                   "masking.segmenter=jieba")),
    # Byte-level BPE: each worker tokenizes with the fast `tokenizers` encoder, and checks
    # that it rebuilt the parent's tokenizer (whose unsplittable tokens came in a per-process
    # order, so its fingerprint differed from process to process).
    ("roberta_tiny", ("--set", "vocab.size=400", "model.backbone.num_layers=1")),
])
def test_workers_prepare_the_folder_one_process_prepares(recipe, extra, messy_corpus, tmp_path,
                                                         monkeypatch):
    for workers in (1, 2):
        # Each its own machine cache: each learns the vocabulary itself.
        monkeypatch.setenv("MLM_CACHE_DIR", str(tmp_path / f"cache{workers}"))
        _, printed, err = prepare(tmp_path / f"w{workers}", messy_corpus, "--workers",
                                  str(workers), *extra, recipe=recipe)
        assert "prepared corpus written" in printed, err
    assert "2 worker processes (--workers)" in err
    assert "tokenizing in 2 processes" in err
    if recipe == "bert_test":
        assert "vocabulary: counting words in 2 processes" in err
    one, two = files_of(tmp_path / "w1"), files_of(tmp_path / "w2")
    assert sorted(one) == sorted(two)  # no piece left behind
    for name in one:
        assert one[name] == two[name], name
    # The reader's tallies (what it repaired or skipped), equal above, are of whole splits.
    tallies = json.loads(one["manifest.json"])["repaired_or_skipped"].values()
    assert [sum(t.get(key, 0) for t in tallies)
            for key in ("documents", "nul_replaced", "empty_skipped")] == [60, 1, 1]


@pytest.mark.parametrize("fault", [
    "read_document:split=train:index=50:action=enospc",   # in a word-counting worker
    pytest.param("read_document:split=held_out:index=0:action=enospc",  # a tokenizing worker
                 marks=pytest.mark.slow),
])
def test_a_failing_worker_fails_the_prepare_in_one_line_leaving_nothing(fault, messy_corpus,
                                                                       tmp_path, monkeypatch):
    monkeypatch.setenv("MLM_FAULT", fault)
    code, _, err = prepare(tmp_path / "out", messy_corpus, "--workers", "2")
    assert_one_line_error(code, err, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_a_bad_worker_count_is_refused_before_any_work(small_corpus, tmp_path):
    code, _, err = prepare(tmp_path / "out", small_corpus, "--workers", "0")
    assert_one_line_error(code, err, "--workers must be at least 1, but received 0")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # spawned processes importing TensorFlow
def test_a_sentencepiece_tokenizer_is_rebuilt_in_the_workers_from_its_assets(messy_corpus,
                                                                            tmp_path):
    """`tokenize(processes=2)` with any keras-hub tokenizer (here ALBERT's sentencepiece, as a
    run's preset would bring): the workers rebuild it from its config and saved assets."""
    from mlm.architectures import get_architecture
    from mlm.config import CorpusConfig
    from mlm.data import corpus, tokenizing, vocab

    arch = get_architecture("albert")
    source = corpus.resolve_corpus(CorpusConfig(paths=(str(messy_corpus),)))
    path = vocab.train_vocabulary(corpus.iter_documents(source, split="train"),
                                  family="sentencepiece", size=300, lowercase=True,
                                  min_frequency=1, out_dir=tmp_path / "vocab",
                                  special_tokens=arch.special_tokens)
    tokenizer = tokenizing.load_tokenizer(path, family="sentencepiece", lowercase=True,
                                          arch=arch)
    entries = []
    for processes in (1, 2):
        cache, tallies = tokenizing.tokenize(
            source, tokenizer, cache_root=tmp_path / f"p{processes}", key="entry",
            segmenter="", say=print, quiet=True, processes=processes)
        entries.append((files_of(cache.path), tallies))
    assert entries[0] == entries[1]
    assert sorted(entries[0][0]) == ["held_out.bin", "meta.json", "train.bin"]
