"""Benchmarks `mlm` against the keras-hub guide recipe and HuggingFace, side by side.

Run on demand (never in the test suite), after `pip install -e ".[bench]"`:

    python benchmarks/compare.py                               # the sample corpus, tiny shape
    python benchmarks/compare.py --corpus my.txt --shape small --budget-seconds 600

For one corpus, model shape, sequence length, batch size and number of steps
it runs each contender (see `benchmarks/contenders.py`) in its own process,
twice: a speed phase (timed steps, median of `--repeats` blocks of `--steps`)
and a budget phase (train `--budget-seconds` of wall-clock from scratch, then
held-out masked accuracy on the same windows with the same fixed masks). It
prints one table with non-padding tokens/s, padding fraction, s/step, peak
resident memory, held-out accuracy and model FLOPs utilisation against a
matmul peak measured in the same run; then the input pipelines alone, and
vocabulary training against keras-hub's `compute_word_piece_vocabulary`.

All contenders share one vocabulary, learned once with `mlm.data.vocab` from the
training split. A corpus too small for `--vocab-size` entries (the sample
gives about 13.3k) is padded with `[unusedN]` entries, as BERT's own
vocabulary is, so that every model has the output layer of the size asked
for (`--no-pad-vocab` keeps what was learned).
"""

import argparse
import contextlib
import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

RECIPES = {"tiny": "bert_tiny_en_uncased", "small": "bert_small_en_uncased"}
NAMES = {
    "mlm": "mlm",
    "keras_hub_guide": "keras-hub guide recipe",
    "hf": "HuggingFace transformers",
}
MASK_RATE = 0.15  # masked fraction of the non-padding tokens, for the FLOP count


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if "hf" in args.contenders and missing and not args.report:
        print(f"compare.py: error: the HuggingFace contender needs {' and '.join(missing)}, "
              f"which the [bench] extra installs: pip install -e \".[bench]\" (or pass "
              f"--contenders mlm,keras_hub_guide).", file=sys.stderr)
        sys.exit(2)
    if args.report:
        # Several reports of one corpus (contenders run apart, say with budgets of their
        # own) print as one: the first report's machine and data, every contender.
        reports = [json.loads(path.read_text()) for path in args.report]
        report = {**reports[0], "contenders": {
            name: result for r in reports for name, result in r["contenders"].items()}}
        print_report(report, spec=report["spec"])
        return
    with contextlib.ExitStack() as stack:
        work = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        report = {"machine": machine_summary(), "args": {k: str(v) for k, v in vars(args).items()}}
        say(f"work dir {work}; load average {os.getloadavg()}")
        spec, report["data"] = prepare(args, work=work)
        report["spec"] = spec
        first = matmul_peak()
        say(f"matmul peak: {first}")
        report["contenders"] = {
            name: run_contender(name, spec=_budget_for(name, spec, args.budget_fraction),
                                work=work)
            for name in args.contenders
        }
        # Read again at the end: one reading on a shared machine can come out
        # low (73.8 against a typical 111 GFLOP/s once), which inflates MFU.
        last = matmul_peak()
        say(f"matmul peak at the end: {last}")
        report["matmul_peak_readings"] = [first, last]
        report["matmul_peak"] = {
            **{k: max(first[k], last[k]) for k in ("float32", "bfloat16")},
            "load_average": first["load_average"],
        }
        if args.vocab_repeats:
            report["vocab"] = vocab_speed(work / "train.txt", size=args.vocab_size,
                                          repeats=args.vocab_repeats)
    print_report(report, spec=spec)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default="", help="corpus file or folder (default: the sample)")
    parser.add_argument("--shape", choices=sorted(RECIPES), default="tiny",
                        help="model shape: the backbone of bert_tiny/small_en_uncased")
    parser.add_argument("--lines", choices=["file", "sentences"], default="file",
                        help="what the line-by-line guide recipe sees as a line: the file's "
                             "lines, or one sentence per line (as BookCorpus is laid out)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks (median)")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed first steps")
    parser.add_argument("--curve-points", type=int, default=6,
                        help="held-out evaluations along the budget, for the time to accuracy")
    parser.add_argument("--budget-seconds", type=float, default=120.0,
                        help="training wall-clock per contender before the held-out evaluation")
    parser.add_argument("--budget-fraction", action="append", default=[], metavar="NAME=F",
                        help="train contender NAME for F of --budget-seconds (repeatable): "
                             "mlm=0.25 checks whether mlm reaches the reference's accuracy "
                             "in a quarter of its time")
    parser.add_argument("--vocab-size", type=int, default=30522)
    parser.add_argument("--no-pad-vocab", action="store_true",
                        help="keep the learned vocabulary when it is smaller than --vocab-size")
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-windows", type=int, default=1024,
                        help="held-out windows evaluated (at most)")
    parser.add_argument("--pipeline-batches", type=int, default=100)
    parser.add_argument("--contenders", type=lambda s: s.split(","),
                        default=["mlm", "keras_hub_guide", "hf"])
    parser.add_argument("--mlm-set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="recipe override for the mlm contender only (repeatable)")
    parser.add_argument("--vocab-repeats", type=int, default=1,
                        help="runs of the vocabulary-training comparison (0 skips it)")
    parser.add_argument("--work-dir", type=Path, help="keep the shared files here")
    parser.add_argument("--json", type=Path, help="also write the full report here")
    parser.add_argument("--report", type=Path, action="append",
                        help="print the tables of a saved --json report (repeatable: the "
                             "contenders of several runs on the same corpus in one table)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def say(message: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- shared data


def prepare(args, *, work: Path) -> tuple[dict, dict]:
    """Writes the shared corpus split, vocabulary and held-out windows; returns the spec."""
    from mlm.config import load_recipe

    recipe = load_recipe(RECIPES[args.shape])
    train_docs, held_docs = split_corpus(args.corpus, lines=args.lines)
    (work / "train.txt").write_text("\n\n".join(train_docs) + "\n")
    vocab_path, learned = shared_vocabulary(
        train_docs, size=args.vocab_size, pad=not args.no_pad_vocab, work=work
    )
    data = {"train_documents": len(train_docs), "held_out_documents": len(held_docs),
            "vocabulary_learned": learned}
    data.update(tokenize_and_hold_out(
        train_docs, held_docs, vocab_path=vocab_path, recipe=recipe, args=args, work=work,
    ))
    say(f"data: {data}")
    t = recipe.train
    spec = {
        "work_dir": str(work), "train_documents": str(work / "train.txt"),
        "train_lines": str(work / "train.txt"), "vocab_path": str(vocab_path),
        "held_out_npz": str(work / "held_out.npz"), "recipe": RECIPES[args.shape],
        "backbone": recipe.model.backbone, "vocabulary_size": args.vocab_size
        if not args.no_pad_vocab else learned,
        "sequence_length": args.sequence_length, "batch_size": args.batch_size,
        "steps": args.steps, "repeats": args.repeats, "warmup_steps": args.warmup_steps,
        "budget_seconds": args.budget_seconds, "pipeline_batches": args.pipeline_batches,
        "curve_points": args.curve_points,
        "seed": args.seed, "mlm_overrides": args.mlm_set,
        "optimizer": {
            "learning_rate": t.learning_rate, "warmup_fraction": t.warmup_fraction,
            "weight_decay": t.weight_decay, "beta_1": t.beta_1, "beta_2": t.beta_2,
            "epsilon": t.epsilon, "clip_norm": t.clip_norm,
        },
    }
    return spec, data


def split_corpus(corpus_path: str, *, lines: str) -> tuple[list[str], list[str]]:
    """mlm's own train/held-out split of the corpus (2% of documents by hash)."""
    from mlm.config import CorpusConfig
    from mlm.data import corpus

    source = corpus.resolve_corpus(CorpusConfig(paths=(corpus_path,) if corpus_path else ()))
    train = list(corpus.iter_documents(source, split="train"))
    held = list(corpus.iter_documents(source, split="held_out"))
    if lines == "sentences":
        train = [one_sentence_per_line(d) for d in train]
    return train, held


def one_sentence_per_line(document: str) -> str:
    """Breaks a document after each sentence end followed by a capital letter."""
    return re.sub(r"(?<=[.!?])\s+(?=[A-Z])", "\n", " ".join(document.split()))


def shared_vocabulary(documents, *, size: int, pad: bool, work: Path) -> tuple[Path, int]:
    """Learns the WordPiece vocabulary once; pads it with `[unusedN]` up to `size`."""
    from mlm.data import vocab

    path = vocab.train_vocabulary(
        iter(documents), family="wordpiece", size=size, lowercase=True, min_frequency=2,
        out_dir=work / "vocab",
    )
    tokens = vocab.read_vocabulary(path)
    learned = len(tokens)
    if pad and learned < size:
        tokens = tokens + [f"[unused{i}]" for i in range(size - learned)]
    out = work / "shared_vocab" / "vocab.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(tokens) + "\n")
    return out, learned


def tokenize_and_hold_out(train_docs, held_docs, *, vocab_path, recipe, args, work) -> dict:
    """Builds mlm's token cache (timed: tokenize throughput) and the held-out windows."""
    from mlm.architectures import get_architecture
    from mlm.data import token_cache, vocab
    from mlm.data.pipeline import TokenIds, evaluation_dataset, padding_fraction

    tokenizer = vocab.build_tokenizer(vocab_path, family="wordpiece", lowercase=True)
    start = time.perf_counter()
    cache = token_cache.load_or_build_cache(
        {"train": lambda: iter(train_docs), "held_out": lambda: iter(held_docs)}, tokenizer,
        cache_root=work / "mlm_cache", key="train", progress=False,
    )
    seconds = time.perf_counter() - start
    ds = evaluation_dataset(
        cache.tokens("held_out"), sequence_length=args.sequence_length,
        batch_size=args.batch_size, masking=recipe.masking,
        ids=TokenIds.from_tokenizer(tokenizer), seed=args.seed,
        max_batches=math.ceil(args.eval_windows / args.batch_size),
        arch=get_architecture("bert"),
    )
    parts = {"token_ids": [], "padding_mask": [], "mask_positions": [], "labels": [],
             "weights": []}
    for x, y, w in ds:
        for key in ("token_ids", "padding_mask", "mask_positions"):
            parts[key].append(x[key].numpy())
        parts["labels"].append(y.numpy())
        parts["weights"].append(w.numpy())
    np.savez(work / "held_out.npz", **{k: np.concatenate(v) for k, v in parts.items()})
    tokens = cache.stats["train"]["tokens"]
    return {
        "train_tokens": tokens,
        "held_out_windows": int(sum(len(v) for v in parts["labels"])),
        "mlm_tokenize_tokens_per_second": tokens / seconds,
        "mlm_padding_fraction": padding_fraction(tokens, args.sequence_length),
    }


# ---------------------------------------------------------------- measurements


def matmul_peak(size: int = 2048, runs: int = 10) -> dict:
    """Best GFLOP/s of a `size`-cubed `tf.matmul`, float32 and bfloat16."""
    import tensorflow as tf

    peak = {}
    for dtype in (tf.float32, tf.bfloat16):
        a = tf.cast(tf.random.normal((size, size)), dtype)
        b = tf.cast(tf.random.normal((size, size)), dtype)
        matmul = tf.function(tf.linalg.matmul)
        matmul(a, b).numpy()
        best = min(_seconds(matmul, a, b) for _ in range(runs))
        peak[dtype.name] = 2 * size**3 / best / 1e9
    peak["load_average"] = os.getloadavg()[0]
    return peak


def _seconds(matmul, a, b) -> float:
    start = time.perf_counter()
    matmul(a, b).numpy()
    return time.perf_counter() - start


def model_flops_per_step(*, backbone: dict, vocab_size: int, sequence_length: int,
                         tokens: float) -> float:
    """Training FLOPs one step needs ("model FLOPs", as in PaLM's MFU).

    Every matmul weight costs 2 FLOPs per token forward and 4 backward: 6 in all.
    With d = hidden, f = intermediate, n = layers, L = sequence length, V = vocabulary:

        per non-padding token:  n * (6 * (4 d^2 + 2 d f)   # Q, K, V, output; feed-forward
                                     + 12 L d)             # QK^T and AV: 4 L d forward, x3
        per masked token:       6 * (d^2 + d V)            # head transform and output layer

    with masked tokens = 15% of the non-padding ones. Embedding lookups,
    LayerNorm, softmax and GELU are not counted. Work a recipe does beyond
    this (logits at unmasked positions or empty mask slots, attention over
    padding) is not model FLOPs, so it lowers MFU.
    """
    d, f, n = backbone["hidden_dim"], backbone["intermediate_dim"], backbone["num_layers"]
    per_token = n * (6 * (4 * d * d + 2 * d * f) + 12 * sequence_length * d)
    per_masked = 6 * (d * d + d * vocab_size)
    return tokens * per_token + MASK_RATE * tokens * per_masked


def _budget_for(name: str, spec: dict, fractions: list[str]) -> dict:
    """`spec` with `budget_seconds` scaled by `--budget-fraction NAME=F` if given for `name`."""
    for item in fractions:
        who, _, value = item.partition("=")
        if who == name:
            return {**spec, "budget_seconds": spec["budget_seconds"] * float(value)}
    return spec


def run_contender(name: str, *, spec: dict, work: Path) -> dict:
    """The speed phase, then the budget phase, each in a fresh process."""
    speed = run_phase(name, "speed", spec=spec, work=work)
    say(f"{name} speed: {speed['seconds_per_step']:.3f} s/step, "
        f"blocks {[round(b, 3) for b in speed['seconds_per_step_blocks']]}")
    steps = math.ceil(spec["budget_seconds"] / speed["seconds_per_step"])
    budget = run_phase(name, "budget", spec={**spec, "budget_steps": steps}, work=work)
    say(f"{name} budget: {budget['budget_steps_done']} steps, held-out {budget['held_out']}")
    return {"speed": speed, "budget": budget}


def run_phase(name: str, phase: str, *, spec: dict, work: Path) -> dict:
    spec_path, out = work / f"spec-{name}-{phase}.json", work / f"result-{name}-{phase}.json"
    spec_path.write_text(json.dumps(spec))
    say(f"{name} {phase} (load {os.getloadavg()[0]:.2f})")
    command = [sys.executable, str(HERE / "contenders.py"), "--contender", name,
               "--phase", phase, "--spec", str(spec_path), "--out", str(out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.exit(f"{name} {phase} failed:\n{completed.stderr[-4000:]}")
    return json.loads(out.read_text())


def vocab_speed(train_file: Path, *, size: int, repeats: int) -> dict:
    """mlm's vocabulary trainer against keras-hub's, via benchmarks/vocab_speed.py."""
    import vocab_speed as vs

    documents = vs.read_documents(train_file)
    result = {}
    for name, fn in {"mlm": vs.train_mlm, "keras_hub": vs.train_keras_hub}.items():
        seconds, tokens = vs.time_method(name, fn, documents, size=size, lowercase=True,
                                         repeats=repeats)
        result[name] = {"seconds": seconds, "size": len(tokens)}
    return result


def machine_summary() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {
        "cpu": fields.get("Model name", "?").strip(), "cores": os.cpu_count(),
        "bf16_flags": [f for f in flags if "bf16" in f or f.startswith("amx")],
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


# ---------------------------------------------------------------- report


def print_report(report: dict, *, spec: dict) -> None:
    peak = report["matmul_peak"]
    m, data = report["machine"], report["data"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, bf16 flags {m['bf16_flags'] or 'none'}; "
          f"{m['date']}")
    print(f"shape {spec['recipe']} {spec['backbone']}, vocabulary {spec['vocabulary_size']} "
          f"(learned {data['vocabulary_learned']}), sequence {spec['sequence_length']}, "
          f"batch {spec['batch_size']}; {data['train_tokens']:,} training tokens")
    when = "best at start and end" if "matmul_peak_readings" in report else "at start"
    print(f"matmul peak (2048^3 tf.matmul, {when}): "
          f"float32 {peak['float32']:.1f} GFLOP/s, "
          f"bfloat16 {peak['bfloat16']:.1f} GFLOP/s (load {peak['load_average']:.2f})\n")
    rows, mlm_rate = [], None
    print("| contender | non-padding tokens/s | padding | s/step (median; blocks) | peak RSS "
          "| held-out masked acc (steps in budget) | MFU (fp32 peak) | first steps | load |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, result in report["contenders"].items():
        row = summarize(result, spec=spec, peak=peak["float32"])
        rows.append((name, row))
        mlm_rate = row["tokens_per_second"] if name == "mlm" else mlm_rate
        s = result["speed"]
        blocks = ", ".join(f"{b:.3f}" for b in s["seconds_per_step_blocks"])
        print(f"| {NAMES[name]} | {row['tokens_per_second']:,.0f} | "
              f"{s['padding_fraction']:.1%} | {s['seconds_per_step']:.3f} ({blocks}) | "
              f"{row['peak_rss_mb']:,.0f} MB | {row['accuracy']:.4f} "
              f"({result['budget']['budget_steps_done']}) | {row['mfu']:.1%} | "
              f"{s['warmup_seconds']:.0f} s | {s['load_average']:.1f} |")
    if mlm_rate:
        print()
        for name, row in rows:
            if name != "mlm":
                print(f"mlm / {NAMES[name]}: {mlm_rate / row['tokens_per_second']:.2f}x "
                      f"non-padding tokens/s")
    print_time_to_accuracy(report["contenders"])
    print("\ninput pipelines alone (no model):")
    print(f"- mlm tokenize into the cache: {data['mlm_tokenize_tokens_per_second']:,.0f} "
          f"tokens/s (once per corpus)")
    for name, row in rows:
        pipe = report["contenders"][name]["speed"]["pipeline"]["tokens_per_second"]
        print(f"- {NAMES[name]}: {pipe:,.0f} tokens/s per batch stream, "
              f"{pipe / row['tokens_per_second']:.0f}x what its training consumes")
    if "vocab" in report:
        v = report["vocab"]
        print(f"\nvocabulary training, size {spec['vocabulary_size']}: mlm "
              f"{v['mlm']['seconds']:.2f} s ({v['mlm']['size']} tokens), keras-hub "
              f"compute_word_piece_vocabulary {v['keras_hub']['seconds']:.2f} s "
              f"({v['keras_hub']['size']} tokens): "
              f"{v['keras_hub']['seconds'] / v['mlm']['seconds']:.1f}x")


def time_to_accuracy(curve: list[dict], target: float) -> float | None:
    """Training seconds at which `curve` first reaches `target`, linearly interpolated
    between its points (from 0 s at accuracy 0); None if it never does."""
    previous = {"seconds": 0.0, "accuracy": 0.0}
    for point in curve:
        if point["accuracy"] >= target:
            rise = point["accuracy"] - previous["accuracy"]
            share = (target - previous["accuracy"]) / rise if rise > 0 else 1.0
            return previous["seconds"] + share * (point["seconds"] - previous["seconds"])
        previous = point
    return None


def print_time_to_accuracy(contenders: dict) -> None:
    """The time each contender took to reach the accuracy the reference reached at the end
    of its budget (the HuggingFace contender when it ran, else the first)."""
    curves = {n: r["budget"].get("curve") for n, r in contenders.items()}
    if not all(curves.values()):
        return  # a report saved before the curves were measured
    reference = "hf" if "hf" in contenders else next(iter(contenders))
    target = contenders[reference]["budget"]["held_out"]["accuracy"]
    base = time_to_accuracy(curves[reference], target)
    print(f"\ntime to {NAMES[reference]}'s held-out masked accuracy at the end of its budget "
          f"({target:.4f}; training time, evaluations excluded):")
    print("| contender | trained | accuracy at its end | time to accuracy | vs reference "
          "| curve (s: accuracy) |")
    print("|---|---:|---:|---:|---:|---|")
    for name, curve in curves.items():
        seconds = time_to_accuracy(curve, target)
        shown = "not reached" if seconds is None else f"{seconds:.0f} s"
        ratio = "" if seconds is None or not base else f"{base / seconds:.2f}x sooner"
        points = ", ".join(f"{p['seconds']:.0f}: {p['accuracy']:.3f}" for p in curve)
        budget = contenders[name]["budget"]
        print(f"| {NAMES[name]} | {budget.get('budget_seconds_used', 0):.0f} s | "
              f"{budget['held_out']['accuracy']:.4f} | {shown} | {ratio} | {points} |")


def summarize(result: dict, *, spec: dict, peak: float) -> dict:
    s = result["speed"]
    tokens = (1.0 - s["padding_fraction"]) * spec["batch_size"] * spec["sequence_length"]
    flops = model_flops_per_step(
        backbone=spec["backbone"], vocab_size=spec["vocabulary_size"],
        sequence_length=spec["sequence_length"], tokens=tokens,
    )
    return {
        "tokens_per_second": tokens / s["seconds_per_step"],
        "mfu": flops / s["seconds_per_step"] / (peak * 1e9),
        "peak_rss_mb": max(s["peak_rss_mb"], result["budget"]["peak_rss_mb"]),
        "accuracy": result["budget"]["held_out"]["accuracy"],
        "median_block": statistics.median(s["seconds_per_step_blocks"]),
    }


if __name__ == "__main__":
    main()
