"""`mlm prepare` and `--data`: a corpus prepared once, trained from by several runs.

The commands run in this process (`run_mlm(..., in_process=True)`); a fresh
process only where a kill is what is tested.
"""

import functools
import json
import shutil

import numpy as np
import pytest

from tests.conftest import (
    max_weight_difference,
    own_machine_cache,
    read_metrics,
    run_mlm,
    small_recipe,
    token_entry,
)
from tests.test_cli import assert_one_line_error

run_main = functools.partial(run_mlm, in_process=True)


def prepare_args(out, corpus, held_out=None, *extra):
    held = ("--held-out", held_out) if held_out is not None else ()
    return ("prepare", "--recipe", "bert_test", "--corpus", corpus, *held, "--out", out, *extra)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, small_corpus, held_out_corpus):
    """The small corpus and its held-out file prepared for `bert_test`: (folder, stderr)."""
    out = tmp_path_factory.mktemp("prepared") / "kjv"
    with own_machine_cache(tmp_path_factory):  # it learns the vocabulary itself
        _, _, err = run_main(*prepare_args(out, small_corpus, held_out_corpus), check=True)
    return out, err


@pytest.fixture(scope="module")
def data_run(tmp_path_factory, prepared):
    """A `bert_test` run from the prepared corpus, as `trained_run` is from the text."""
    run_dir = tmp_path_factory.mktemp("data_run") / "run"
    run_main("pretrain", "--recipe", "bert_test", "--data", prepared[0], "--run-dir", run_dir,
             check=True)
    return run_dir


def tokenizer_of(folder):
    """The `bert_test` tokenizer on the vocabulary in `folder`."""
    import keras_hub

    return keras_hub.models.BertTokenizer(vocabulary=str(folder / "vocabulary.txt"),
                                          lowercase=True)


def token_arrays(entry) -> dict:
    """The bytes of each split's token array in a token cache entry."""
    return {split: (entry / f"{split}.bin").read_bytes() for split in ("train", "held_out")}


def test_prepare_writes_a_vocabulary_tokens_and_a_manifest_of_their_numbers(
        prepared, small_corpus, held_out_corpus):
    from mlm.data.corpus import resolve_corpus
    from mlm.data.token_cache import tokenizer_fingerprint

    out, err = prepared
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "tokens", "vocab"]
    assert not list(out.parent.glob(".*"))  # no temporary left beside it
    manifest = json.loads((out / "manifest.json").read_text())
    tokenizer = tokenizer_of(out / "vocab")
    meta = json.loads((out / "tokens" / "meta.json").read_text())
    for split in ("train", "held_out"):
        tokens = np.fromfile(out / "tokens" / f"{split}.bin", dtype=meta[split]["dtype"])
        assert manifest["splits"][split] == {
            "documents": int(np.count_nonzero(tokens == tokenizer.end_token_id)),
            "tokens": len(tokens),
            "unknown_tokens": int(np.count_nonzero(tokens == tokenizer.token_to_id("[UNK]"))),
        }
    assert manifest["splits"]["train"]["documents"] == 60
    assert manifest["splits"]["held_out"]["documents"] == 10
    recipe = small_recipe(small_corpus, held_out_corpus)
    assert manifest["corpus_fingerprint"] == resolve_corpus(recipe.corpus).fingerprint
    assert manifest["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer)
    assert (manifest["architecture"], manifest["tokenizer_family"], manifest["lowercase"],
            manifest["segmenter"]) == ("bert", "wordpiece", True, "")
    assert manifest["vocabulary_size"] == tokenizer.vocabulary_size() == 600
    assert manifest["recipe"]["corpus"]["held_out_paths"] == [str(held_out_corpus)]
    assert manifest["recipe"]["vocab"]["size"] == 600
    assert manifest["repaired_or_skipped"]["train"] == {"documents": 60}
    assert "training a wordpiece vocabulary" in err and "tokenizing train" in err


def documents_of(folder, split="train") -> list[tuple[int, ...]]:
    """The documents of a prepared corpus's `split`, as token ids (each ends with [SEP])."""
    from mlm.data.token_cache import load_cache

    tokens = np.asarray(load_cache(folder / "tokens").tokens(split))
    ends = np.flatnonzero(tokens == tokenizer_of(folder / "vocab").end_token_id) + 1
    return [tuple(doc.tolist()) for doc in np.split(tokens, ends)[:-1]]


def test_host_shares_partition_the_training_documents_and_keep_vocabulary_and_held_out(
        prepared, small_corpus, held_out_corpus, tmp_path, monkeypatch):
    full, _ = prepared
    shares = [tmp_path / "host0", tmp_path / "host1"]
    for host, out in enumerate(shares):
        # Each host its own machine cache: each learns the vocabulary itself, as hosts do.
        monkeypatch.setenv("MLM_CACHE_DIR", str(tmp_path / f"cache{host}"))
        _, printed, err = run_main(*prepare_args(out, small_corpus, held_out_corpus, "--hosts",
                                                 "2", "--host", str(host)), check=True)
        assert "training a wordpiece vocabulary" in err
        assert f"host {host} of 2: its share of the training documents" in err
        assert f"host {host}'s share of 2: 30 training documents" in printed
    everything = documents_of(full)
    assert len(everything) == 60
    full_manifest = json.loads((full / "manifest.json").read_text())
    for host, out in enumerate(shares):
        # Documents i with i % 2 == host, in corpus order, as split_dataset_by_node keeps them.
        assert documents_of(out) == everything[host::2]
        assert documents_of(out, "held_out") == documents_of(full, "held_out")
        assert (out / "vocab" / "vocabulary.txt").read_bytes() == (
            full / "vocab" / "vocabulary.txt").read_bytes()
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["share"] == {"host": host, "hosts": 2}
        assert manifest["splits"]["train"]["documents"] == 30
        for key in ("corpus_fingerprint", "tokenizer_fingerprint"):
            assert manifest[key] == full_manifest[key]
    assert full_manifest["share"] == {"host": 0, "hosts": 1}


@pytest.mark.parametrize("share", [(0, 1), (1, 2)])
def test_both_splits_come_from_one_read_of_the_corpus(share, tmp_path, monkeypatch):
    import collections

    import keras_hub

    import mlm.data.corpus as corpus_module
    from mlm.config import CorpusConfig
    from mlm.data import token_cache, tokenizing
    from tests.conftest import TINY_VOCABULARY

    text = tmp_path / "hostile.txt"
    body = "\n\n".join(f"the cat sat on the mat number {i} ." for i in range(200))
    text.write_bytes(b"a\x00b c\n\n\x00\x00\n\n" + body.encode() + b"\n")  # an empty one
    source = corpus_module.resolve_corpus(CorpusConfig(paths=(str(text),),
                                                       held_out_fraction=0.2))
    tokenizer = keras_hub.tokenizers.BertTokenizer(vocabulary=TINY_VOCABULARY)
    reads = []
    iter_sources = corpus_module._iter_sources
    monkeypatch.setattr(corpus_module, "_iter_sources",
                        lambda *a, **k: reads.append(k["split"]) or iter_sources(*a, **k))
    cache, tallies = tokenizing.tokenize(
        source, tokenizer, cache_root=tmp_path / "one", key="k", segmenter="", say=print,
        quiet=True, share=share)
    assert reads == ["train"]  # one read of the corpus, both splits from it
    assert sorted(p.name for p in (tmp_path / "one").rglob("*")) == [
        "held_out.bin", "k", "meta.json", "train.bin"]  # its held-out text file removed
    # The entry and the tallies of one read per split.
    expected = {split: collections.Counter() for split in ("train", "held_out")}
    two_reads = token_cache.load_or_build_cache(
        {split: functools.partial(tokenizing._read, source, split=split, share=share,
                                  tally=expected[split]) for split in expected},
        tokenizer, cache_root=tmp_path / "two", key="k", progress=False)
    assert token_arrays(tmp_path / "one" / "k") == token_arrays(tmp_path / "two" / "k")
    assert cache.stats == two_reads.stats
    assert tallies == expected
    assert sum(tally["nul_replaced"] for tally in tallies.values()) == 1
    assert tallies["train"]["empty_skipped"] == 1
    assert 20 < tallies["held_out"]["documents"] < 70


def test_one_read_gives_each_split_the_documents_of_its_own_read(tmp_path):
    import mlm.data.corpus as corpus_module
    from mlm.config import CorpusConfig
    from mlm.data import tokenizing

    # Carriage returns, tabs and non-ASCII inside the records' text, as JSON allows.
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps({"text": f"line {i}\r\nnext\rré\t{i}"}) + "\n"
                            for i in range(300)), encoding="utf-8")
    source = corpus_module.resolve_corpus(CorpusConfig(paths=(str(path),),
                                                       held_out_fraction=0.3))
    by_split = tokenizing._one_read(source, share=(1, 3), tallies={},
                                    spill=tmp_path / "held_out.txt")
    train, held_out = list(by_split["train"]()), list(by_split["held_out"]())
    assert train == list(corpus_module.iter_documents(source, split="train"))[1::3]
    assert held_out == list(corpus_module.iter_documents(source, split="held_out"))
    assert 50 < len(held_out) < 130 and "\r" in held_out[0]
    assert not (tmp_path / "held_out.txt").exists()


@pytest.mark.parametrize(("hosts", "host", "needle"), [
    ("2", "2", "--host must be from 0 to 1 with --hosts 2, but received 2"),
    ("0", "0", "--hosts must be at least 1, but received 0"),
    ("3", "-1", "--host must be from 0 to 2 with --hosts 3, but received -1"),
])
def test_a_host_outside_the_hosts_is_refused(hosts, host, needle, small_corpus, tmp_path):
    code, _, err = run_main(*prepare_args(tmp_path / "out", small_corpus, None, "--hosts", hosts,
                                          "--host", host))
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "out").exists()


def test_a_share_is_read_only_by_its_own_process(prepared, tmp_path):
    from mlm.data.prepared import PreparedCorpus, check_share
    from mlm.errors import MlmError

    manifest = json.loads((prepared[0] / "manifest.json").read_text())
    whole = PreparedCorpus(path=prepared[0], manifest=manifest)
    for index, count in ((0, 1), (1, 2), (3, 4)):  # every process reads the whole corpus
        check_share(whole, process_index=index, process_count=count)
    share = PreparedCorpus(path=tmp_path / "s1", manifest={**manifest,
                                                             "share": {"host": 1, "hosts": 2}})
    check_share(share, process_index=1, process_count=2)
    for index, count in ((0, 2), (1, 3), (0, 1)):
        with pytest.raises(MlmError) as caught:
            check_share(share, process_index=index, process_count=count)
        assert str(caught.value) == (
            f"prepared corpus {tmp_path / 's1'} is host 1's share of 2 hosts, but this is "
            f"process {index} of {count}; give each process the share prepared with "
            f"`mlm prepare --hosts {count} --host {index}`.")


def test_pretrain_from_a_prepared_corpus_trains_the_weights_of_one_from_the_text(
        data_run, trained_run, prepared):
    # `trained_run` is the same recipe on the same text, read, learned and tokenized.
    assert max_weight_difference(data_run / "preset", trained_run.run_dir / "preset") == 0.0
    config = json.loads((data_run / "config.json").read_text())
    assert config["corpus"]["prepared"] == str(prepared[0])
    assert config["corpus"]["paths"] == []
    # The run keeps its vocabulary and reads the tokens in place: no cache of its own.
    assert ((data_run / "vocab" / "vocabulary.txt").read_bytes()
            == (trained_run.run_dir / "vocab" / "vocabulary.txt").read_bytes())
    assert not (data_run / "cache").exists()
    records = [r for r in read_metrics(data_run) if r.get("part") == "prepared"]
    assert [r["path"] for r in records] == [str(prepared[0])]
    assert "Token cache: `" + str(prepared[0] / "tokens") in (data_run / "report.md").read_text()


def test_resume_of_a_run_from_a_prepared_corpus_needs_no_data(data_run, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(data_run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-6")
    shutil.rmtree(resumed / "preset")
    _, _, err = run_main("pretrain", "--run-dir", resumed, "--resume", check=True)
    assert "resuming from" in err and "tokens read in place from prepared corpus" in err
    assert max_weight_difference(resumed / "preset", data_run / "preset") == 0.0


def test_a_resume_refuses_a_prepared_corpus_that_changed(data_run, prepared, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(prepared[0], changed)
    manifest = json.loads((changed / "manifest.json").read_text())
    (changed / "manifest.json").write_text(json.dumps({**manifest, "corpus_fingerprint": "0"}))
    resumed = tmp_path / "resumed"
    shutil.copytree(data_run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-6")
    config = json.loads((resumed / "config.json").read_text())
    config["corpus"]["prepared"] = str(changed)
    (resumed / "config.json").write_text(json.dumps(config))
    code, _, err = run_main("pretrain", "--run-dir", resumed, "--resume")
    assert_one_line_error(code, err, "changed since this run started", "corpus_fingerprint")
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["step-3"]


def test_prepare_with_the_vocabulary_of_a_run_gives_its_token_arrays(trained_run, tmp_path,
                                                                    small_corpus,
                                                                    held_out_corpus):
    out = tmp_path / "prepared"
    run_main(*prepare_args(out, small_corpus, held_out_corpus, "--vocab",
                           trained_run.run_dir / "vocab"), check=True)
    entry = token_entry(trained_run.run_dir)
    assert token_arrays(out / "tokens") == token_arrays(entry)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["vocabulary"] == str(trained_run.run_dir / "vocab")


def test_prepare_counts_what_the_reader_repaired(tmp_path):
    import mlm

    text = tmp_path / "hostile.txt"
    body = "\n\n".join(f"the cat sat on the mat number {i} ." for i in range(60))
    text.write_bytes(b"a\x00b c\n\n" + body.encode() + b"\n")
    recipe = small_recipe(text, overrides=["vocab.min_frequency=1"])
    manifest = mlm.prepare(recipe, out=tmp_path / "prepared", quiet=True)
    repaired = manifest["repaired_or_skipped"]
    assert repaired["train"]["nul_replaced"] + repaired["held_out"].get("nul_replaced", 0) == 1
    assert manifest == json.loads((tmp_path / "prepared" / "manifest.json").read_text())


def test_a_folder_that_is_not_a_prepared_corpus_is_refused(tmp_path):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("some text\n")
    code, _, err = run_main("pretrain", "--recipe", "bert_test", "--data", tmp_path / "texts",
                            "--run-dir", tmp_path / "run")
    assert_one_line_error(code, err, "not a prepared corpus", "mlm prepare")
    assert not (tmp_path / "run").exists()


def test_a_prepared_corpus_of_another_tokenizer_family_is_refused(prepared, tmp_path):
    code, _, err = run_main("pretrain", "--recipe", "albert_tiny", "--data", prepared[0],
                            "--run-dir", tmp_path / "run")
    assert_one_line_error(code, err, "wordpiece", "'albert' reads sentencepiece")
    assert not (tmp_path / "run").exists()


def test_a_preset_of_another_tokenizer_is_refused_with_the_prepare_command(
        data_run, prepared, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(prepared[0], other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "tokenizer_fingerprint": "0"}))
    code, _, err = run_main("continue", "--preset", data_run / "preset", "--data", other,
                            "--run-dir", tmp_path / "run", "--sequence-length", "32")
    assert_one_line_error(code, err, "another tokenizer than preset",
                          f"mlm prepare --vocab {data_run / 'preset' / 'assets' / 'tokenizer'}")
    assert not (tmp_path / "run").exists()


def test_data_and_corpus_together_are_refused(prepared, small_corpus, tmp_path):
    code, _, err = run_main("pretrain", "--recipe", "bert_test", "--data", prepared[0],
                            "--corpus", small_corpus, "--run-dir", tmp_path / "run")
    assert_one_line_error(code, err, "corpus.prepared", "not both")
    assert not (tmp_path / "run").exists()


def test_an_existing_prepared_corpus_needs_overwrite(prepared, small_corpus):
    out, _ = prepared
    before = (out / "manifest.json").read_bytes()
    code, _, err = run_main(*prepare_args(out, small_corpus))
    assert_one_line_error(code, err, "already exists", "--overwrite")
    assert (out / "manifest.json").read_bytes() == before
    assert not list(out.parent.glob(".*"))


def test_overwrite_never_replaces_a_folder_that_is_not_a_prepared_corpus(small_corpus, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = run_main(*prepare_args(out, small_corpus, None, "--overwrite"))
    assert_one_line_error(code, err, "not a prepared corpus")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("files", [("vocabulary.spm",), ()])
def test_a_vocab_folder_without_the_family_file_is_refused(files, small_corpus, tmp_path):
    folder = tmp_path / "vocab"
    folder.mkdir()
    for name in files:
        (folder / name).write_bytes(b"\0")
    code, _, err = run_main(*prepare_args(tmp_path / "out", small_corpus, None,
                                          "--vocab", folder))
    assert_one_line_error(code, err, "vocabulary.txt", "wordpiece")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [None, b"", bytes(range(256)) * 100])
def test_a_missing_empty_or_binary_corpus_is_refused(content, tmp_path):
    corpus = tmp_path / "corpus.txt"
    if content is not None:
        corpus.write_bytes(content)
    code, _, err = run_main(*prepare_args(tmp_path / "out", corpus))
    assert_one_line_error(code, err, "corpus.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == (["corpus.txt"] if content is not None
                                                          else [])


def test_a_failed_prepare_leaves_the_earlier_folder_whole(prepared, small_corpus,
                                                         held_out_corpus, tmp_path,
                                                         monkeypatch):
    out = tmp_path / "kjv"
    shutil.copytree(prepared[0], out)
    # A full disk while reading the held-out text, long after the vocabulary is learned.
    monkeypatch.setenv("MLM_FAULT", "read_document:split=held_out:index=5:action=enospc")
    code, _, err = run_main(*prepare_args(out, small_corpus, held_out_corpus, "--overwrite"))
    assert_one_line_error(code, err, "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kjv"]
    assert (out / "manifest.json").read_bytes() == (prepared[0] / "manifest.json").read_bytes()
    assert token_arrays(out / "tokens") == token_arrays(prepared[0] / "tokens")


@pytest.mark.slow  # a fresh process, killed
def test_a_killed_prepare_leaves_nothing_that_looks_complete(small_corpus, held_out_corpus,
                                                            tmp_path):
    import os

    out = tmp_path / "kjv"
    env = {**os.environ, "MLM_FAULT": "read_document:split=held_out:index=5"}
    code, _, _ = run_mlm(*prepare_args(out, small_corpus, held_out_corpus), env=env)
    assert code == -9
    assert not out.exists()
    code, _, err = run_main("pretrain", "--recipe", "bert_test", "--data", out,
                            "--run-dir", tmp_path / "run")
    assert_one_line_error(code, err, "prepared corpus not found")
    # The next prepare removes what the killed one left.
    run_main(*prepare_args(out, small_corpus, held_out_corpus), check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kjv"]
