import gzip
import json
import os
import time
import tracemalloc

import pyarrow
import pyarrow.parquet
import pytest

from mlm.config import CorpusConfig
from mlm.data.corpus import (
    count_documents,
    iter_documents,
    resolve_corpus,
    sample_corpus_path,
)
from mlm.errors import MlmError
from tests.conftest import run_mlm

# Blank lines, whitespace-only lines and Windows line ends all separate documents.
TEXT = "first doc\nsecond line\n\n\n  second doc  \n \t \nthird doc\r\n\r\nfourth doc\n"
TEXT_DOCUMENTS = ["first doc\nsecond line", "second doc", "third doc", "fourth doc"]
ROWS = ["alpha beta", "gamma", "delta epsilon"]


def documents(paths, **kwargs):
    """All documents of a corpus in train order, with nothing held out."""
    kwargs.setdefault("held_out_fraction", 0.0)
    corpus = resolve_corpus(CorpusConfig(paths=tuple(map(str, paths)), **kwargs))
    return list(iter_documents(corpus, split="train"))


def write_table(path, column, values):
    """Writes `values` as `column` of a .jsonl, .json, .csv or .parquet file."""
    rows = [{"id": i, column: v} for i, v in enumerate(values)]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        body = "".join(f'{r["id"]},"{r[column]}"\n' for r in rows)
        path.write_text(f"id,{column}\n{body}")
    else:
        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    return path


def test_text_file_splits_documents_on_blank_lines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text(TEXT, newline="")
    assert documents([path]) == TEXT_DOCUMENTS


def test_gzipped_text_file_splits_documents_on_blank_lines(tmp_path):
    path = tmp_path / "a.txt.gz"
    path.write_bytes(gzip.compress(TEXT.encode()))
    assert documents([path]) == TEXT_DOCUMENTS


def test_directory_is_read_recursively_in_sorted_order(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "b.txt").write_text("doc b")
    (tmp_path / "sub" / "a.txt").write_text("doc sub a\n\ndoc sub a2")
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(b"doc a"))
    (tmp_path / "README.md").write_text("not corpus")
    (tmp_path / ".git" / "x.txt").write_text("hidden")
    write_table(tmp_path / "sub" / "c.jsonl", "text", ["doc c"])
    assert documents([tmp_path]) == ["doc a", "doc b", "doc sub a", "doc sub a2", "doc c"]


def test_glob_selects_matching_files(tmp_path):
    for name in ["x1.txt", "x2.txt", "y.txt"]:
        (tmp_path / name).write_text(f"doc {name}")
    assert documents([tmp_path / "x*.txt"]) == ["doc x1.txt", "doc x2.txt"]


def test_file_listed_twice_is_read_once(tmp_path):
    (tmp_path / "a.txt").write_text("only once")
    assert documents([tmp_path / "a.txt", tmp_path, tmp_path / "*.txt"]) == ["only once"]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
@pytest.mark.parametrize("column", ["text", "body"])
def test_tabular_file_yields_text_column(tmp_path, suffix, column):
    path = write_table(tmp_path / f"data{suffix}", column, ROWS)
    assert documents([path], text_column=column) == ROWS


def test_tabular_files_skip_empty_values_and_keep_na_strings(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('text,id\n"multi\nline",1\n,2\nNA,3\n  ,4\n')
    records = [{"text": "x"}, {"other": 1}, {"text": None}, {"text": " y "}, {"text": "z", "k": 2}]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    json_lines = tmp_path / "lines.json"  # A .json file may hold JSON Lines too.
    json_lines.write_text('{"text": "j1"}\n{"text": "j2"}\n')
    assert documents([path, jsonl, json_lines]) == ["multi\nline", "NA", "x", "y", "z", "j1", "j2"]


def test_held_out_split_is_deterministic_disjoint_and_complete(tmp_path):
    texts = [f"document number {i}" for i in range(3000)]
    (tmp_path / "a.txt").write_text("\n\n".join(texts))
    corpus = resolve_corpus(CorpusConfig(paths=(str(tmp_path / "a.txt"),), held_out_fraction=0.1))
    train = list(iter_documents(corpus, split="train"))
    held_out = list(iter_documents(corpus, split="held_out"))
    assert not set(train) & set(held_out)
    assert sorted(train + held_out) == sorted(texts)
    assert 0.085 < len(held_out) / len(texts) < 0.115
    assert list(iter_documents(corpus, split="held_out")) == held_out
    assert count_documents(corpus, split="held_out") == len(held_out)

    # Other files, another order, duplicates: each text keeps its side.
    (tmp_path / "b.txt").write_text("\n\n".join(texts[::-1] + held_out[:5] + train[:5]))
    reordered = resolve_corpus(
        CorpusConfig(paths=(str(tmp_path / "b.txt"),), held_out_fraction=0.1)
    )
    assert list(iter_documents(reordered, split="held_out")) == held_out[::-1] + held_out[:5]
    assert list(iter_documents(reordered, split="train")) == train[::-1] + train[:5]


def test_counting_shows_a_progress_line_only_where_it_takes_time(tmp_path, capsys,
                                                                 monkeypatch):
    import mlm.data.corpus as corpus_module

    (tmp_path / "a.txt").write_text("\n\n".join(f"document {i}" for i in range(50)))
    config = CorpusConfig(paths=(str(tmp_path / "a.txt"),), held_out_fraction=0.1)
    monkeypatch.setattr(corpus_module, "_COUNTS", {})
    # A count that takes no time leaves no line (a small corpus).
    train = count_documents(resolve_corpus(config), split="train", progress=True)
    assert "counting documents" not in capsys.readouterr().err
    # A long one ends its line with both splits' documents, read in one pass.
    monkeypatch.setattr(corpus_module, "_COUNTS", {})
    monkeypatch.setattr(corpus_module, "_COUNT_LINE_SECONDS", 0.0)
    corpus = resolve_corpus(config)
    assert count_documents(corpus, split="train", progress=True) == train
    assert "counting documents: 50 documents, done in" in capsys.readouterr().err
    # Counted once: the other split and a second call print nothing and read nothing.
    assert count_documents(corpus, split="held_out", progress=True) == 50 - train
    assert capsys.readouterr().err == ""
    # Quiet by default.
    monkeypatch.setattr(corpus_module, "_COUNTS", {})
    assert count_documents(corpus, split="train") == train
    assert capsys.readouterr().err == ""


def test_held_out_files_replace_the_hashed_split(tmp_path):
    (tmp_path / "train.txt").write_text("t1\n\nt2\n\nt3")
    (tmp_path / "eval.jsonl").write_text('{"text": "e1"}\n{"text": "e2"}\n')
    config = CorpusConfig(
        paths=(str(tmp_path / "train.txt"),),
        held_out_paths=(str(tmp_path / "eval.jsonl"),),
        held_out_fraction=0.5,
    )
    corpus = resolve_corpus(config)
    assert corpus.held_out_files == (str(tmp_path / "eval.jsonl"),)
    assert list(iter_documents(corpus, split="train")) == ["t1", "t2", "t3"]
    assert list(iter_documents(corpus, split="held_out")) == ["e1", "e2"]


def test_sample_corpus_has_1189_documents():
    corpus = resolve_corpus(CorpusConfig())
    assert corpus.train_files == (str(sample_corpus_path()),)
    train = count_documents(corpus, split="train")
    held_out = count_documents(corpus, split="held_out")
    assert train + held_out == 1189
    assert 0 < held_out < 60  # held_out_fraction=0.02 of 1189 is about 24.


def test_fingerprint_follows_content_not_mtime_or_location(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("some text")

    def fingerprint(*paths, **kwargs):
        config = CorpusConfig(paths=tuple(map(str, paths)), **kwargs)
        return resolve_corpus(config).fingerprint

    before = fingerprint(path)
    os.utime(path, (1, 1))
    assert fingerprint(path) == before
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "b.txt").write_text("some text")
    assert fingerprint(tmp_path / "moved" / "b.txt") == before
    assert fingerprint(path, held_out_fraction=0.5) != before
    assert fingerprint(path, text_column="body") != before
    path.write_text("some text!")
    assert fingerprint(path) != before


def test_fingerprint_includes_held_out_files(tmp_path):
    (tmp_path / "train.txt").write_text("train")
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("held out")
    config = CorpusConfig(paths=(str(tmp_path / "train.txt"),), held_out_paths=(str(held_out),))
    before = resolve_corpus(config).fingerprint
    held_out.write_text("held out, edited")
    assert resolve_corpus(config).fingerprint != before


def test_documents_stream_with_bounded_memory(tmp_path):
    path = tmp_path / "big.txt"
    paragraph = "lorem ipsum dolor sit amet " * 40  # 1080 characters.
    with open(path, "w") as f:
        for i in range(28_000):
            f.write(f"{i} {paragraph}\n\n")
    size = path.stat().st_size
    assert size > 30_000_000
    tracemalloc.start()
    try:
        corpus = resolve_corpus(CorpusConfig(paths=(str(path),)))
        count = count_documents(corpus, split="train") + count_documents(
            corpus, split="held_out"
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 28_000
    # Files are read in 1 MiB chunks: a few MB at most, whatever the file size.
    assert peak < size / 5


def expect_error(config, *fragments):
    with pytest.raises(MlmError) as info:
        resolve_corpus(config)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message
    return message


def test_missing_path_is_an_error(tmp_path):
    missing = tmp_path / "nope.txt"
    expect_error(CorpusConfig(paths=(str(missing),)), missing, "does not exist")


def test_glob_without_supported_match_is_an_error(tmp_path):
    (tmp_path / "a.md").write_text("markdown")
    pattern = str(tmp_path / "*.md")
    expect_error(CorpusConfig(paths=(pattern,)), pattern, "matched no")


def test_directory_without_supported_files_is_an_error(tmp_path):
    (tmp_path / "a.md").write_text("markdown")
    expect_error(CorpusConfig(paths=(str(tmp_path),)), tmp_path, "holds no")


def test_unsupported_extension_is_an_error(tmp_path):
    path = tmp_path / "a.docx"
    path.write_text("text")
    expect_error(CorpusConfig(paths=(str(path),)), path, "unsupported extension", ".txt.gz")


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"text\x00\x01\x02", "NUL byte at offset 4"),
        (bytes(range(1, 32)) * 10, "control characters"),
        (b"hello world\n" + "caf\xe9".encode("latin-1"), "byte 0xe9 at offset 15"),
        ("é".encode()[:1], "byte 0xc3 at offset 0"),
    ],
)
def test_binary_or_non_utf8_file_is_an_error(tmp_path, content, fragment):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    expect_error(CorpusConfig(paths=(str(path),)), path, fragment)


def test_non_utf8_offset_counts_across_read_chunks(tmp_path):
    path = tmp_path / "bad.txt.gz"
    # The 2-byte "é" straddles the first 1 MiB chunk; the bad byte follows it.
    content = b"a" * ((1 << 20) - 1) + "é".encode() + b"\xff"
    path.write_bytes(gzip.compress(content))
    expect_error(CorpusConfig(paths=(str(path),)), path, f"byte 0xff at offset {(1 << 20) + 1}")


def test_corrupt_gzip_is_an_error(tmp_path):
    path = tmp_path / "a.txt.gz"
    path.write_bytes(b"plain text, not gzip")
    expect_error(CorpusConfig(paths=(str(path),)), path, "not a valid gzip file")


@pytest.mark.parametrize("content", ["", " \n\t\n\n"])
def test_empty_corpus_is_an_error(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_text(content)
    expect_error(CorpusConfig(paths=(str(path),)), path, "holds no text")


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_missing_text_column_is_an_error(tmp_path, suffix):
    path = write_table(tmp_path / f"data{suffix}", "body", ROWS)
    expect_error(CorpusConfig(paths=(str(path),)), path, "no column 'text'", "id, body")


def test_malformed_json_line_is_an_error_while_reading(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "ok"}\n{"text": broken}\n')
    corpus = resolve_corpus(CorpusConfig(paths=(str(path),), held_out_fraction=0.0))
    with pytest.raises(MlmError, match="line 2 is not valid JSON"):
        list(iter_documents(corpus, split="train"))


def test_non_string_text_is_an_error_while_reading(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": 5}\n')
    corpus = resolve_corpus(CorpusConfig(paths=(str(path),), held_out_fraction=0.0))
    with pytest.raises(MlmError, match="line 1 column 'text' must be a string, but received int"):
        list(iter_documents(corpus, split="train"))


def test_held_out_file_also_in_train_is_an_error(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("text")
    config = CorpusConfig(paths=(str(tmp_path),), held_out_paths=(str(path),))
    expect_error(config, path, "also in corpus.paths")


def test_unknown_split_is_an_error():
    corpus = resolve_corpus(CorpusConfig())
    with pytest.raises(MlmError, match="received split='test'"):
        iter_documents(corpus, split="test")


def test_train_split_without_documents_is_an_error_while_reading(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "  "}\n')
    corpus = resolve_corpus(CorpusConfig(paths=(str(path),)))
    with pytest.raises(MlmError, match="no non-blank document"):
        list(iter_documents(corpus, split="train"))


def test_unreachable_hub_dataset_fails_fast():
    # Without network this fails at the connection probe; with network the
    # hub answers that the dataset does not exist. Both are one-line errors.
    name = "mlm-tests-no-such-owner/no-such-dataset"
    start = time.monotonic()
    expect_error(CorpusConfig(paths=(name,)), f"could not download dataset '{name}'")
    assert time.monotonic() - start < 15


def test_one_document_per_line_when_asked(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text(TEXT, newline="")
    assert documents([path], document_boundary="line") == [
        "first doc", "second line", "second doc", "third doc", "fourth doc"]
    gz = tmp_path / "b.txt.gz"
    gz.write_bytes(gzip.compress(b"no newline at the end\nlast"))
    assert documents([gz], document_boundary="line") == ["no newline at the end", "last"]


def test_a_line_longer_than_one_read_is_still_one_document(tmp_path, monkeypatch):
    from mlm.data import corpus

    monkeypatch.setattr(corpus, "MAX_DOCUMENT_CHARS", 8)  # readline(8) splits every line
    path = tmp_path / "a.txt"
    path.write_text("short\nabcdefghijkl\n\nend\n")
    got = documents([path], document_boundary="line")
    # The 12-character line is cut at the limit, as a long paragraph is; no line is merged
    # with the next one.
    assert got == ["short", "abcdefgh", "ijkl", "end"]


def test_lines_mode_holds_out_lines_and_changes_the_cache_key(tmp_path):
    path = tmp_path / "dictionary.txt"
    path.write_text("".join(f"entry {i}: a definition of word {i}\n" for i in range(400)))
    as_paragraphs = resolve_corpus(CorpusConfig(paths=(str(path),), held_out_fraction=0.1))
    as_lines = resolve_corpus(CorpusConfig(paths=(str(path),), held_out_fraction=0.1,
                                           document_boundary="line"))
    assert count_documents(as_paragraphs, split="train") == 1
    assert list(iter_documents(as_paragraphs, split="held_out")) == []  # the one is in train
    held_out = list(iter_documents(as_lines, split="held_out"))
    assert 20 <= len(held_out) <= 60  # about 10% of 400 lines, by a hash of each line
    assert len(held_out) + count_documents(as_lines, split="train") == 400
    assert as_lines.fingerprint != as_paragraphs.fingerprint


def test_unknown_document_boundary_value_is_a_recipe_error():
    from mlm.config import apply_overrides, load_recipe

    with pytest.raises(MlmError, match="document_boundary' must be 'blank_line' or 'line' or "):
        apply_overrides(load_recipe("bert_test"), ["corpus.document_boundary=words"])


def test_one_document_per_file_when_asked(tmp_path):
    (tmp_path / "a.txt").write_text("first paragraph\n\nsecond paragraph\n")
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress(b"\n\nonly one\n\n"))
    (tmp_path / "c.txt").write_text("last file, no newline")
    got = documents([tmp_path / n for n in ("a.txt", "b.txt.gz", "c.txt")],
                    document_boundary="file")
    assert [d.strip() for d in got] == [
        "first paragraph\n\nsecond paragraph", "only one", "last file, no newline"]
    as_paragraphs = documents([tmp_path / "a.txt"])
    assert as_paragraphs == ["first paragraph", "second paragraph"]


def test_a_large_text_file_without_blank_lines_gets_a_hint(tmp_path):
    from mlm.data.corpus import UNBROKEN_HINT_BYTES

    lines = tmp_path / "lines.txt"
    line = "entry: a definition of a word, one per line\n"
    lines.write_text(line * (UNBROKEN_HINT_BYTES // len(line) + 10))
    small = tmp_path / "small.txt"
    small.write_text(line * 10)
    paragraphs = tmp_path / "paragraphs.txt"
    paragraphs.write_text((line * 40 + "\n") * (UNBROKEN_HINT_BYTES // (40 * len(line)) + 2))
    (hint,) = resolve_corpus(CorpusConfig(paths=(str(lines), str(small)))).hints
    assert "has no blank line in 1.0 MB" in hint and str(lines) in hint
    assert "corpus.document_boundary=line" in hint and "\n" not in hint
    assert resolve_corpus(CorpusConfig(paths=(str(lines),),
                                       document_boundary="line")).hints == ()
    assert resolve_corpus(CorpusConfig(paths=(str(paragraphs), str(small)))).hints == ()


def test_a_hub_dataset_fingerprint_holds_its_revision(monkeypatch):
    import huggingface_hub

    from mlm.data.corpus import hf_datasets

    monkeypatch.setattr(hf_datasets, "check", lambda *a, **k: None)  # no network here
    commits = {"owner/texts": "1111"}

    class Hub:  # what huggingface_hub.HfApi answers for the dataset's newest commit
        def dataset_info(self, name):
            if name not in commits:
                raise OSError("no network")
            return type("Info", (), {"sha": commits[name]})()

    monkeypatch.setattr(huggingface_hub, "HfApi", Hub)
    config = CorpusConfig(paths=("owner/texts:en",))
    first = resolve_corpus(config).fingerprint
    assert resolve_corpus(config).fingerprint == first  # same commit: tokens are reused
    commits["owner/texts"] = "2222"  # the dataset changed on the hub
    changed = resolve_corpus(config).fingerprint
    assert changed != first
    assert hf_datasets.revision("owner/texts:en") == "2222"
    assert hf_datasets.revision("owner/unknown") == ""  # the hub does not say: no revision


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """Hub dataset `owner/texts` at commit "1111", 300 rows, with a count of its reads."""
    import huggingface_hub

    from mlm.data.corpus import hf_datasets

    monkeypatch.setenv("MLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hf_datasets, "check", lambda *a, **k: None)  # no network here
    hub = {"sha": "1111", "reads": 0}
    rows = [{"text": f"Row {i}: the {'quick ' * (i % 7)}brown fox jumps over dog {i % 13}."}
            for i in range(300)]

    class Api:
        def dataset_info(self, name):
            return type("Info", (), {"sha": hub["sha"]})()

    def load(name, *, split):
        hub["reads"] += 1
        return iter(rows)

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(hf_datasets, "_load", load)
    hub["texts"] = [r["text"] for r in rows]
    return hub


def test_a_hub_dataset_is_read_from_the_hub_once_per_commit(fake_hub):
    corpus = resolve_corpus(CorpusConfig(paths=("owner/texts",)))
    assert corpus.hub_revision == "1111"
    docs = iter_documents(corpus, split="train")
    next(docs)
    docs.close()  # a read stopped early keeps no copy
    assert fake_hub["reads"] == 1
    train = list(iter_documents(corpus, split="train"))
    held = list(iter_documents(corpus, split="held_out"))
    again = list(iter_documents(corpus, split="train"))
    assert fake_hub["reads"] == 2  # the first complete read; then the machine cache's copy
    assert again == train and sorted(train + held) == sorted(fake_hub["texts"])
    assert 0 < len(held) < 30
    fake_hub["sha"] = "2222"  # the dataset changed on the hub: read it again
    assert list(iter_documents(resolve_corpus(CorpusConfig(paths=("owner/texts",))),
                               split="train")) == train
    assert fake_hub["reads"] == 3


def test_preparing_a_hub_dataset_reads_the_hub_once(fake_hub, tmp_path):
    run_mlm("prepare", "--recipe", "bert_test", "--corpus", "owner/texts", "--out",
            tmp_path / "prepared", in_process=True, check=True)
    assert fake_hub["reads"] == 1  # vocabulary, count and tokenizing passes
    assert (tmp_path / "prepared" / "manifest.json").is_file()
