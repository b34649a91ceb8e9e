"""The vocabulary's sample drawn at byte offsets: the reader's own documents, spread evenly,
seeded, found without reading the corpus."""

import gzip
import json

import numpy as np
import pytest

import mlm.data.corpus as corpus_module
from mlm.config import CorpusConfig
from mlm.data import corpus
from mlm.data.corpus import offsets


def resolve(*paths, **settings):
    return corpus.resolve_corpus(CorpusConfig(paths=tuple(map(str, paths)), **settings))


def union_of_samples(source, *, size, seeds):
    found = set()
    for seed in seeds:
        drawn = corpus.draw_sample(source, size=size, seed=seed)
        assert drawn.positions is not None and len(drawn.positions) == size
        texts = list(corpus.sampled_documents(source, drawn.positions))
        assert len(set(texts)) == size  # distinct documents
        found.update(texts)
    return found


def test_each_document_drawn_is_one_the_reader_gives_and_every_one_can_be_drawn(
        tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_module, "MAX_DOCUMENT_CHARS", 200)
    plain = [f"document {i} says something about item {i * 7}." for i in range(60)]
    # A BOM, CRLF and lone CR line ends, runs of blank lines and of spaces, a NUL, a
    # document longer than the cut (200 characters), a line of Unicode space that the
    # text reader takes for a blank line, so that "after the ideographic space" is a
    # document only the reader finds (it follows no blank line of ASCII whitespace).
    first = ("\ufeffThe first line of the file\r\nand its second line.\r\n\r\n"
             "A CR file's line\rand its next.\r\r   \n\n\n  indented start\x00with a NUL.\n \t\n"
             + "long " * 80 + "\n\n"
             + "before the ideographic space\n\u3000\nafter the ideographic space\n\n")
    (tmp_path / "a.txt").write_bytes(first.encode("utf-8"))
    (tmp_path / "b.txt").write_text("\n\n".join(plain) + "\n", encoding="utf-8")
    source = resolve(tmp_path, held_out_fraction=0.2)
    train = set(corpus.iter_documents(source, split="train"))
    held_out = set(corpus.iter_documents(source, split="held_out"))
    assert held_out and "after the ideographic space" in train | held_out
    found = union_of_samples(source, size=len(train) // 2, seeds=range(40))
    # Every document drawn is a training document, exactly as the reader gives it (the
    # long one cut to its first 200-character piece) ...
    assert found <= train
    # ... and every training document can be drawn, but the one after a Unicode blank line
    # (the long one's two pieces are the same text).
    assert train - found <= {"after the ideographic space"}
    for text in ("The first line of the file\nand its second line.",
                 "A CR file's line\nand its next.", "indented start with a NUL.",
                 ("long " * 40).strip()):
        assert text in found or text in held_out


@pytest.mark.parametrize("kind", ["line", "jsonl"])
def test_one_document_per_line_is_drawn_line_by_line(tmp_path, kind):
    lines = [f"line {i} " + "word " * (i % 5) for i in range(80)]
    if kind == "jsonl":
        path = tmp_path / "records.jsonl"
        path.write_text("".join(json.dumps({"text": t, "n": i}) + "\n"
                                for i, t in enumerate(lines)) + "\n", encoding="utf-8")
        source = resolve(path, held_out_fraction=0.0)
    else:
        path = tmp_path / "lines.txt"
        path.write_text("\n".join(lines) + "\n   \n", encoding="utf-8")
        source = resolve(path, held_out_fraction=0.0, document_boundary="line")
    train = set(corpus.iter_documents(source, split="train"))
    assert len(train) == 80
    assert union_of_samples(source, size=30, seeds=range(30)) == train


def test_documents_of_equal_length_are_drawn_with_equal_chances(tmp_path):
    texts = [f"document number {i:03d} of the corpus" for i in range(100)]
    path = tmp_path / "equal.txt"
    path.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    source = resolve(path, held_out_fraction=0.0)
    counts = np.zeros(100)
    for seed in range(1000):
        drawn = corpus.draw_sample(source, size=10, seed=seed).positions
        kept = list(corpus.sampled_documents(source, drawn))
        assert kept == sorted(kept)  # in corpus order
        counts[[texts.index(text) for text in kept]] += 1
    frequencies = counts / 1000
    # Kept with probability 10/100 each: 1000 samples give 100 +- 9.5 (one s.d.) per
    # document, but the first: it follows the end of the corpus, a boundary-less tail.
    assert np.all(np.abs(frequencies[1:] - 0.1) < 0.045), frequencies
    assert abs(frequencies[1:50].mean() - frequencies[50:].mean()) < 0.015


def test_a_draw_is_a_function_of_its_seed_and_a_small_corpus_is_read_whole(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("\n\n".join(f"text {i}" for i in range(300)) + "\n", encoding="utf-8")
    source = resolve(path, held_out_fraction=0.0)

    def positions(size, seed):
        return corpus.draw_sample(source, size=size, seed=seed).positions

    assert positions(50, 1) == positions(50, 1) != positions(50, 2)
    # More than the corpus holds, or nearly as many: every document instead.
    for size in (100_000, 290):
        drawn = corpus.draw_sample(source, size=size, seed=0)
        assert drawn.positions is None and drawn.every


def test_files_that_cannot_be_entered_anywhere_are_drawn_by_position(tmp_path, monkeypatch):
    texts = [f"text {i} " + "x" * 500 for i in range(300)]
    packed = tmp_path / "packed.txt.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write("\n\n".join(texts))
    whole = tmp_path / "whole.txt"
    whole.write_text("\n\n".join(texts), encoding="utf-8")
    for source in (resolve(packed), resolve(whole, document_boundary="file")):
        drawn = corpus.draw_sample(source, size=10, seed=0)
        assert drawn.positions is None and not drawn.every
    # Documents longer than the seek's reach (books): by position too.
    monkeypatch.setattr(offsets, "_SEEK_BYTES", 32)
    path = tmp_path / "books.txt"
    path.write_text("\n\n".join(texts), encoding="utf-8")
    drawn = corpus.draw_sample(resolve(path, held_out_fraction=0.0), size=100, seed=0)
    assert drawn.positions is None and not drawn.every


def test_a_draw_reads_only_around_its_offsets(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    words = np.array(["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"])
    texts = [" ".join(rng.choice(words, size=150)) + f" {i}." for i in range(8_000)]
    path = tmp_path / "big.txt"
    path.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    source = resolve(path, held_out_fraction=0.0)
    read = []
    real_pread = offsets.os.pread
    monkeypatch.setattr(offsets.os, "pread",
                        lambda fd, n, at: read.append(n) or real_pread(fd, n, at))
    kept = list(corpus.sampled_documents(
        source, corpus.draw_sample(source, size=50, seed=0).positions))
    assert len(kept) == 50 and set(kept) <= set(texts)
    size = path.stat().st_size
    assert size > 6_000_000
    # Two reads of 4 kB per draw and one per document read: under a tenth of the file.
    assert sum(read) < size / 10, (sum(read), size)


def test_the_documents_are_estimated_from_offsets_within_a_few_percent(tmp_path):
    rng = np.random.default_rng(1)
    # 3,000 documents of 1 to 30 words: lengths vary, independently of their neighbours.
    texts = [" ".join(["word"] * int(n)) + f" {i}" for i, n in enumerate(rng.integers(1, 31, 3000))]
    path = tmp_path / "varied.txt"
    path.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    source = resolve(path, held_out_fraction=0.1)
    estimate = corpus.estimate_documents(source)
    assert abs(estimate["train"] + estimate["held_out"] - 3000) < 0.05 * 3000, estimate
    assert estimate["held_out"] == round(0.1 * (estimate["train"] + estimate["held_out"]))
    # Files that cannot be sought in are counted instead.
    packed = tmp_path / "varied.txt.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write(path.read_text(encoding="utf-8"))
    assert corpus.estimate_documents(resolve(packed)) is None
