"""Training throughput of one process against two on JAX's distributed runtime.

Run on demand, e.g.

    python benchmarks/distributed_speed.py                       # tiny recipe, 60 steps
    python benchmarks/distributed_speed.py --recipe bert_test --steps 200

Runs `mlm pretrain` on the shipped sample corpus with the same recipe and the
same global batch:

- TensorFlow, one process (the single-machine default), for reference;
- JAX, one process;
- JAX, two processes on 127.0.0.1 joined by `jax.distributed`, each feeding
  half of every batch.

It prints one row per setting: the training throughput in non-padding tokens
per second over the logged windows after the first (which holds tracing and
XLA compilation), and the seconds per step. Two processes on one machine
share its cores: a correctness setting, not a way to train faster.
"""

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    settings = (("tensorflow", 1), ("jax", 1), ("jax", 2))
    print(f"recipe {args.recipe}, {args.steps} steps, logged every {args.log_every}")
    print("| backend | processes | tokens/s (steady) | s/step |")
    print("|---|---|---|---|")
    for backend, processes in settings:
        with tempfile.TemporaryDirectory() as tmp:
            rates, step_seconds = run(Path(tmp) / "run", backend=backend, processes=processes,
                                      args=args)
        print(f"| {backend} | {processes} | {rates:,.0f} | {step_seconds:.3f} |", flush=True)


def run(run_dir: Path, *, backend: str, processes: int, args) -> tuple[float, float]:
    """Trains once; returns the median steady tokens/s and the seconds per step."""
    command = [
        sys.executable, "-m", "mlm", "pretrain", "--recipe", args.recipe, "--backend", backend,
        "--run-dir", str(run_dir), "--steps", str(args.steps), "--quiet",
        "--set", f"train.log_every={args.log_every}", "train.eval_batches=1",
        f"train.eval_every={args.steps}", f"train.checkpoint_every={args.steps}",
    ]
    if processes > 1:
        port = _free_port()
        commands = [
            [*command, "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
             "--process-id", str(i)]
            for i in range(processes)
        ]
    else:
        commands = [command]
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL) for c in commands]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit(f"{backend} with {processes} process(es) failed")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if r["split"] == "train"][1:]
    rate = statistics.median(r["tokens_per_second"] for r in windows)
    batch = json.loads((run_dir / "config.json").read_text())["train"]["batch_size"]
    length = json.loads((run_dir / "config.json").read_text())["model"]["sequence_length"]
    return rate, batch * length / rate  # windows are full: tokens per step = batch * length


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="bert_tiny_en_uncased")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--log-every", type=int, default=10)
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
