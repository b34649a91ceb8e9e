"""Peak resident memory of `mlm pretrain` on a large corpus, phase by phase.

Run on demand (never in the test suite):

    python benchmarks/memory.py                       # 1 GB corpus under /tmp, 5 steps
    python benchmarks/memory.py --gigabytes 0.05 --steps 3

It writes a corpus of `--gigabytes` of text by repeating the shipped sample's
documents in a fresh shuffled order each round (under `--work-dir`, default a
folder in /tmp that is deleted afterwards), runs the real command
`mlm pretrain --recipe bert_tiny_en_uncased --corpus FILE --steps N` in a
child process, samples the child's resident memory (VmRSS) every 0.1 s and
attributes each sample to the phase its log was in: reading and hashing the
corpus, learning the vocabulary, building the model, tokenizing into the
cache, then training (with evaluation, checkpoint and export). It prints
the peak of each phase and the child's overall peak (`ru_maxrss`), and
exits 1 when that peak is not under `--limit-gb`.
"""

import argparse
import gzip
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent / "mlm" / "data" / "kjv.txt.gz"

# A pattern of the first log line of each phase (`mlm pretrain`'s own
# messages), in order. "vocabulary: N entries in ..." ends the vocabulary
# phase; its progress lines ("vocabulary: counting words: ...") do not.
PHASES = [
    ("read and hash the corpus", ""),
    ("learn the vocabulary", r"training a \w+ vocabulary"),
    ("build the model", r"vocabulary: [\d,]+ entries in "),
    ("tokenize into the cache", r"tokenizing"),
    ("train, evaluate, checkpoint, export", r"corpus:"),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gigabytes", type=float, default=1.0, help="corpus size")
    parser.add_argument("--steps", type=int, default=5, help="training steps")
    parser.add_argument("--limit-gb", type=float, default=3.0, help="resident memory limit")
    parser.add_argument("--work-dir", type=Path, help="keep the corpus and run here")
    args = parser.parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="mlm-memory-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        corpus = work / "corpus.txt"
        if not corpus.is_file() or corpus.stat().st_size < args.gigabytes * 1e9 * 0.99:
            write_corpus(corpus, size=int(args.gigabytes * 1e9))
        peaks, overall, seconds = run_pretrain(corpus, run_dir=work / "run", steps=args.steps)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\ncorpus {args.gigabytes:g} GB, {args.steps} steps, {seconds:.0f} s in all")
    print("| phase | peak resident memory | seconds |")
    print("|---|---:|---:|")
    for phase, (peak, phase_seconds) in peaks.items():
        print(f"| {phase} | {peak / 1e9:.2f} GB | {phase_seconds:.0f} |")
    print(f"| whole run (ru_maxrss) | {overall / 1e9:.2f} GB | {seconds:.0f} |")
    sys.exit(0 if overall < args.limit_gb * 1e9 else 1)


def write_corpus(path: Path, *, size: int) -> None:
    """Repeats the sample's documents, shuffled each round, until `size` bytes."""
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        documents = [d.strip() for d in f.read().split("\n\n") if d.strip()]
    rng, written, rounds = random.Random(0), 0, 0
    with open(path, "w", encoding="utf-8") as out:
        while written < size:
            rng.shuffle(documents)
            rounds += 1
            for document in documents:
                # A round number makes each copy a distinct document (no held-out overlap).
                text = f"{document} ({rounds})\n\n"
                out.write(text)
                written += len(text.encode())
                if written >= size:
                    break
    print(f"wrote {path}: {written / 1e9:.2f} GB, {rounds} rounds", file=sys.stderr)


def run_pretrain(corpus: Path, *, run_dir: Path, steps: int):
    """Runs `mlm pretrain` and samples its resident memory per phase."""
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [
        sys.executable, "-m", "mlm", "pretrain", "--recipe", "bert_tiny_en_uncased",
        "--corpus", str(corpus), "--run-dir", str(run_dir), "--steps", str(steps),
        "--set", f"train.log_every={steps}", f"train.eval_every={steps}",
        "train.eval_batches=5", f"train.checkpoint_every={steps}",
    ]
    start = time.perf_counter()
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    state = {"phase": PHASES[0][0], "began": start}
    peaks: dict[str, list[float]] = {PHASES[0][0]: [0, 0]}
    sampler = threading.Thread(target=_sample, args=(child, state, peaks), daemon=True)
    sampler.start()
    for line in child.stderr:
        print(line, end="", file=sys.stderr)
        for phase, marker in PHASES[1:]:
            if marker and re.match(marker, line) and phase not in peaks:
                now = time.perf_counter()
                peaks[state["phase"]][1] = now - state["began"]
                state.update(phase=phase, began=now)
                peaks[phase] = [0, 0]
    code = child.wait()
    sampler.join()
    seconds = time.perf_counter() - start
    peaks[state["phase"]][1] = time.perf_counter() - state["began"]
    if code != 0:
        sys.exit(f"mlm pretrain failed with exit status {code}")
    overall = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {k: tuple(v) for k, v in peaks.items()}, overall, seconds


def _sample(child, state: dict, peaks: dict) -> None:
    status = Path(f"/proc/{child.pid}/status")
    while child.poll() is None:
        try:
            text = status.read_text()
        except OSError:
            break
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
                peak = peaks[state["phase"]]
                peak[0] = max(peak[0], rss)
        time.sleep(0.1)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
