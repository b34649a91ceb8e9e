"""Times learning a WordPiece vocabulary: `mlm` against keras-hub.

Run on demand, e.g.

    python benchmarks/vocab_speed.py                      # the shipped sample
    python benchmarks/vocab_speed.py --corpus my.txt.gz --size 8000 --repeats 1

Every method learns a vocabulary of at most `--size` tokens from the same
documents (a text or `.gz` file, documents separated by blank lines):

- `mlm.data.vocab.train_vocabulary`: what `mlm` uses; `tokenizers` in Rust with
  keras-hub's splitting and case folding, made deterministic.
- `tokenizers, BERT pipeline`: plain `tokenizers` with its own BERT
  normalizer and pre-tokenizer; the raw speed of the library, for reference
  (its vocabulary does not exactly match what keras-hub's tokenizer splits).
- `keras_hub.tokenizers.compute_word_piece_vocabulary`: keras-hub's own
  trainer (TensorFlow Text's vocabulary learner), slow on large corpora.

It prints one row per method: the median wall time over `--repeats` runs, the
size of the vocabulary produced, and the speedup over keras-hub.
"""

import argparse
import gzip
import importlib.resources
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import keras_hub
import tensorflow as tf
import tokenizers

from mlm.architectures import get_architecture
from mlm.data import vocab

# BERT's special tokens, from its architecture row.
BERT_SPECIAL_TOKENS = get_architecture("bert").special_tokens


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    documents = read_documents(args.corpus)
    print(
        f"corpus: {args.corpus} ({len(documents)} documents, "
        f"{sum(map(len, documents)) / 1e6:.1f} M characters); size={args.size}, "
        f"lowercase={not args.cased}, repeats={args.repeats}",
        file=sys.stderr,
    )
    methods = {
        "mlm.data.vocab.train_vocabulary": train_mlm,
        "tokenizers, BERT pipeline": train_tokenizers_bert,
        "keras_hub compute_word_piece_vocabulary": train_keras_hub,
    }
    results = {}
    for name, train in methods.items():
        results[name] = time_method(
            name,
            train,
            documents,
            size=args.size,
            lowercase=not args.cased,
            repeats=args.repeats,
        )
    print_table(results, reference="keras_hub compute_word_piece_vocabulary")
    print_overlap(results)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--corpus",
        type=Path,
        default=importlib.resources.files("mlm.data") / "kjv.txt.gz",
        help="text or .gz file, documents separated by blank lines (default: the sample)",
    )
    parser.add_argument("--size", type=int, default=30522, help="vocabulary size")
    parser.add_argument("--repeats", type=int, default=3, help="runs per method")
    parser.add_argument("--cased", action="store_true", help="learn a cased vocabulary")
    return parser.parse_args(argv)


def read_documents(path: Path) -> list[str]:
    """Reads a text or gzipped text file; documents are separated by blank lines."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as file:
        text = file.read()
    return [document for document in text.split("\n\n") if document.strip()]


def time_method(
    name: str,
    train: Callable[..., list[str]],
    documents: list[str],
    *,
    size: int,
    lowercase: bool,
    repeats: int,
) -> tuple[float, list[str]]:
    """Returns the median seconds of `repeats` runs and the last vocabulary."""
    seconds = []
    for repeat in range(repeats):
        print(f"{name}: run {repeat + 1}/{repeats}", file=sys.stderr)
        start = time.perf_counter()
        tokens = train(documents, size=size, lowercase=lowercase)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), tokens


def train_mlm(documents: list[str], *, size: int, lowercase: bool) -> list[str]:
    with tempfile.TemporaryDirectory() as out_dir:
        path = vocab.train_vocabulary(
            iter(documents),
            family="wordpiece",
            size=size,
            lowercase=lowercase,
            min_frequency=2,
            out_dir=Path(out_dir),
        )
        return vocab.read_vocabulary(path)


def train_tokenizers_bert(documents: list[str], *, size: int, lowercase: bool) -> list[str]:
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = tokenizers.normalizers.BertNormalizer(
        lowercase=lowercase, strip_accents=False
    )
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    trainer = tokenizers.trainers.WordPieceTrainer(
        vocab_size=size,
        min_frequency=2,
        special_tokens=list(BERT_SPECIAL_TOKENS),
        show_progress=False,
    )
    batches = (documents[i : i + 1000] for i in range(0, len(documents), 1000))
    tokenizer.train_from_iterator(batches, trainer=trainer)
    learned = tokenizer.get_vocab()
    return sorted(learned, key=learned.__getitem__)


def train_keras_hub(documents: list[str], *, size: int, lowercase: bool) -> list[str]:
    dataset = tf.data.Dataset.from_tensor_slices(documents)
    return keras_hub.tokenizers.compute_word_piece_vocabulary(
        dataset,
        vocabulary_size=size,
        lowercase=lowercase,
        strip_accents=False,
        reserved_tokens=list(BERT_SPECIAL_TOKENS),
    )


def print_table(results: dict[str, tuple[float, list[str]]], *, reference: str) -> None:
    reference_seconds = results[reference][0]
    print(f"| {'method':<40} | {'seconds (median)':>16} | {'vocab size':>10} | {'speedup':>8} |")
    print(f"|{'-' * 42}|{'-' * 17}:|{'-' * 11}:|{'-' * 9}:|")
    for name, (seconds, tokens) in results.items():
        speedup = reference_seconds / seconds
        print(f"| {name:<40} | {seconds:>16.2f} | {len(tokens):>10} | {speedup:>7.1f}x |")


def print_overlap(results: dict[str, tuple[float, list[str]]]) -> None:
    """Prints how many tokens each vocabulary shares with mlm's."""
    ours = set(results["mlm.data.vocab.train_vocabulary"][1])
    for name, (_, tokens) in results.items():
        shared = len(ours & set(tokens))
        print(f"{name}: {shared} of {len(tokens)} tokens also in mlm's vocabulary")


if __name__ == "__main__":
    main()
