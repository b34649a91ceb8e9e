"""Times `mlm.data.vocab.train_vocabulary` for every tokenizer family.

Run on demand, e.g.

    python benchmarks/vocab_families.py                    # sizes 8000 and 30000
    python benchmarks/vocab_families.py --sizes 8000 --repeats 1 --corpus my.txt.gz

Each family learns from the same documents (a text or `.gz` file, documents
separated by blank lines) with the special tokens of one architecture row:
BERT for "wordpiece", ALBERT for "sentencepiece", RoBERTa for "byte_bpe".
It prints one row per family and size: the median wall time over `--repeats`
runs and the size of the vocabulary the keras-hub tokenizer reports.
"""

import argparse
import gzip
import importlib.resources
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mlm.architectures import ARCHITECTURES
from mlm.data import vocab

ROWS = {"wordpiece": "bert", "sentencepiece": "albert", "byte_bpe": "roberta"}


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    documents = read_documents(args.corpus)
    print(
        f"corpus: {args.corpus} ({len(documents)} documents, "
        f"{sum(map(len, documents)) / 1e6:.1f} M characters), cased, "
        f"min_frequency=2, repeats={args.repeats}",
        file=sys.stderr,
    )
    print("| family (row) | size asked | wall time (median) | vocabulary size |")
    print("|---|---|---|---|")
    for family, row in ROWS.items():
        arch = ARCHITECTURES[row]
        for size in args.sizes:
            times = []
            for _ in range(args.repeats):
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    path = vocab.train_vocabulary(
                        documents, family=family, size=size, lowercase=False, min_frequency=2,
                        out_dir=Path(tmp), special_tokens=arch.special_tokens,
                    )  # fmt: skip
                    times.append(time.perf_counter() - start)
                    learned = vocab.build_tokenizer(
                        path, family=family, lowercase=False, tokenizer=arch.tokenizer
                    ).vocabulary_size()
            print(
                f"| {family} ({row}) | {size:,} | {statistics.median(times):.1f} s | {learned:,} |",
                flush=True,
            )


def read_documents(path: str | None) -> list[str]:
    """Documents of a text or `.gz` file, separated by blank lines."""
    source = path or importlib.resources.files("mlm.data") / "kjv.txt.gz"
    opener = gzip.open if str(source).endswith(".gz") else open
    with opener(source, "rt", encoding="utf-8") as file:
        return [d.strip() for d in file.read().split("\n\n") if d.strip()]


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=None, help="default: the shipped KJV sample")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8000, 30000])
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
