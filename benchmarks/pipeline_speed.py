"""Tokens per second of mlm's training input pipeline alone (no model), against threads.

Run on demand:

    python benchmarks/pipeline_speed.py                      # this checkout's pipeline
    python benchmarks/pipeline_speed.py --baseline 05e61f9   # and the one at a git commit
    python benchmarks/pipeline_speed.py --tokens 8000000 --seconds 5 --rounds 5

Writes a synthetic token cache (`--tokens` uint16 ids, documents of random
length joined by [SEP], as `mlm.data.token_cache` stores it) to a temporary file and
memory-maps it, as `cache.tokens("train")` does. For each batch shape (the
bert_tiny shape, sequence 128 x batch 32, and sequence 128 x batch 256) and
each thread budget (1, 2 and `os.cpu_count()`), it iterates
`training_dataset` with the tf.data private thread pool set to that many
threads (`tf.data.Options().threading.private_threadpool_size`, one thread
per op: `max_intra_op_parallelism=1`) and counts the non-padding tokens of
the windows of the batches it yields per second of wall time. The first
`--warmup` seconds of each dataset (tracing, autotuning, filling the
prefetch buffer) are not timed.

With `--baseline REF`, `mlm/data/pipeline.py` as of git commit `REF` is loaded
beside this checkout's and both are measured in alternation, round after
round, so that both see the same machine load (a shared machine is noisy);
the table gives the median over the rounds of each.
"""

import argparse
import importlib.util
import inspect
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = ((128, 32), (128, 256))  # (sequence length, batch size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", metavar="REF",
                        help="also measure mlm/data/pipeline.py as of this git commit")
    parser.add_argument("--tokens", type=int, default=4_000_000, help="synthetic cache size")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds a measure")
    parser.add_argument("--warmup", type=float, default=1.5, help="untimed seconds first")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="*",
                        help="thread budgets (default: 1, 2 and os.cpu_count())")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from mlm.data import pipeline

    versions = {"after": pipeline}
    if args.baseline:
        versions = {"before": load_pipeline_at(args.baseline), **versions}
    threads = sorted(set(args.threads or (1, 2, os.cpu_count() or 1)))
    with tempfile.TemporaryDirectory() as tmp:
        tokens, ids = synthetic_cache(Path(tmp) / "train.bin", args.tokens)
        results = {}  # (shape, threads, version) -> [tokens/s per round]
        for _ in range(args.rounds):
            for shape in SHAPES:
                for n in threads:
                    for name, module in versions.items():
                        rate = measure(module, tokens, ids, shape=shape, threads=n,
                                       seconds=args.seconds, warmup=args.warmup)
                        results.setdefault((shape, n, name), []).append(rate)
        print_table(results, versions=list(versions), threads=threads)
    print(f"(cache {args.tokens:,} tokens; median of {args.rounds} rounds of "
          f"{args.seconds:g} s; load {os.getloadavg()[0]:.1f}; {os.cpu_count()} CPUs)")


def load_pipeline_at(ref: str):
    """The input pipeline as of git commit `ref`, imported as a module of its own."""
    for where in ("mlm/data/pipeline.py", "mlm/pipeline.py"):  # the latter before the move
        shown = subprocess.run(["git", "show", f"{ref}:{where}"], cwd=ROOT, capture_output=True,
                               text=True)
        if shown.returncode == 0:
            break
    else:
        raise SystemExit(f"no mlm/data/pipeline.py (or mlm/pipeline.py) at commit {ref}")
    source = shown.stdout
    path = Path(tempfile.mkdtemp()) / f"pipeline_{ref}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"pipeline_{ref}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_cache(path: Path, count: int):
    """A memory-mapped uint16 token cache of BERT-like ids, and the `TokenIds` of it."""
    from mlm.data.pipeline import TokenIds

    ids = TokenIds(vocabulary_size=30522, start_id=101, end_id=102, pad_id=0, mask_id=103,
                   special_ids=(0, 100, 101, 102, 103))
    rng = np.random.default_rng(0)
    tokens = rng.integers(1000, ids.vocabulary_size, count).astype(np.uint16)
    # Documents of 50 to 2,000 tokens, each closed by [SEP] as mlm.data.token_cache joins them.
    ends = np.cumsum(rng.integers(50, 2000, count // 50))
    tokens[ends[ends < count]] = ids.end_id
    tokens.tofile(path)
    return np.memmap(path, dtype=np.uint16, mode="r"), ids


def measure(module, tokens, ids, *, shape, threads, seconds, warmup) -> float:
    """Non-padding tokens per second of `module.training_dataset`'s batches."""
    import tensorflow as tf

    from mlm.architectures import get_architecture
    from mlm.config import MaskingConfig

    sequence_length, batch_size = shape
    # Commits before the architecture became a required argument took `inputs`.
    takes_arch = "arch" in inspect.signature(module.training_dataset).parameters
    which = {"arch": get_architecture("bert")} if takes_arch else {}
    ds = module.training_dataset(tokens, sequence_length=sequence_length,
                                 batch_size=batch_size, masking=MaskingConfig(), ids=ids,
                                 seed=0, **which)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    iterator = iter(ds.with_options(options))
    began = time.perf_counter()
    while time.perf_counter() - began < warmup:
        next(iterator)
    count, began = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - began) < seconds:
        x, _, _ = next(iterator)
        count += int(np.sum(x["padding_mask"].numpy()))  # (B, L) int32, 1 on tokens
    return count / elapsed


def print_table(results, *, versions: list[str], threads: list[int]) -> None:
    """A markdown table: tokens/s per shape and thread budget, per version."""
    header = "| sequence x batch | threads | " + " | ".join(f"tokens/s, {v}" for v in versions)
    if len(versions) == 2:
        header += " | after / before"
    print(header + " |")
    print("|---|---:|" + "---:|" * (len(versions) + (len(versions) == 2)))
    for shape in SHAPES:
        for n in threads:
            rates = [statistics.median(results[shape, n, v]) for v in versions]
            row = f"| {shape[0]} x {shape[1]} | {n} | " + " | ".join(f"{r:,.0f}" for r in rates)
            if len(versions) == 2:
                row += f" | {rates[1] / rates[0]:.1f}x"
            print(row + " |", flush=True)


if __name__ == "__main__":
    main()
