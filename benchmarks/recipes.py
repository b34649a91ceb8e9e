"""Recipe options at equal training time or equal steps: held-out masked accuracy side by side.

Run on demand (never in the test suite):

    python benchmarks/recipes.py                                  # 6 variants, 150 s each
    python benchmarks/recipes.py --budget 120s --work-dir /tmp/recipes --json recipes.json
    python benchmarks/recipes.py --variants token15,token30 --seeds 3
    python benchmarks/recipes.py --steps 600 --seeds 3 --variants token15,dropout0,lr5e-4
    python benchmarks/recipes.py --report recipes.json            # reprint a saved report
    python -m doctest benchmarks/recipes.py                       # the statistics' self-check

Two protocols. With `--budget` (the default), every run trains for the same
wall-clock time: the fair comparison for options that change the cost of a
step (selection rate, masking unit, sequence length), but on a shared machine
the load, not the recipe, decides how many steps fit. With `--steps N`, every
run trains exactly N steps, whatever the machine's load: the protocol for
options that leave the cost of a step alone (dropout, learning rate, warmup),
whose differences are then paired by seed against the reference `token15`.

Each variant is one `mlm pretrain` subprocess of the same recipe (default
`bert_tiny_en_uncased`) on the same corpus (default: the shipped sample), with
its own run directory under `--work-dir`, and differs from the default recipe
only in the overrides listed in `VARIANTS`. Every run trains for the same
wall-clock training budget (`train.budget`: evaluation and checkpoint time do
not count), except the ones with `train.phases`, which the config bounds by
steps: they train for the number of steps the `token15` run of the same seed
did in its budget, and their training time is reported as measured. With
`--steps N`, every run, these included, trains N steps.

All runs are scored on the same task: the held-out split, masked as
`masking.eval_selection_rate=0.15` and `masking.eval_unit=token` set it, with
the held-out masks of the run's seed. Evaluation and checkpoints happen only at
the start and the end (`--eval-every`), and the step settings are fixed
(fp32 without XLA, `--precision`), not probed per run, so that every run
spends its budget the same way. With `--seeds N`, each variant runs with
`train.seed` 0..N-1 (seed by seed, all variants of a seed in turn) and the
table gives mean ± standard error over the seeds.

The table reports, per variant: the steps done; the training time on mlm's
budget clock (`trained_seconds`: device calls only, the first call counted as
long as the second, so that tracing is left out) and on its log-window clock
(wall time between log lines, evaluation and checkpoints excluded, tracing and
the time between device calls included); the non-padding tokens per second
after the first log window (as mlm's run summary counts them); the final
held-out masked accuracy and loss; the accuracy gap to `token15`, paired by
seed (each seed's gap to the reference run of the same seed, which shares its
initialisation, data order and held-out masks), as mean ± standard error of
the per-seed gaps; and a verdict: "better" or "worse" where the mean gap is
beyond 2 standard errors, else "within noise".
"""

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# BERT's and NVIDIA's recipe: 90% of the steps at 128 tokens, 10% at 512 (the
# tiny backbone's max_sequence_length).
BERT_PHASES = [{"fraction": 0.9, "sequence_length": 128},
               {"fraction": 0.1, "sequence_length": 512}]

# Every run, every variant: the same evaluation task and the same step settings.
EVALUATION = ("masking.eval_selection_rate=0.15", "masking.eval_unit=token")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One recipe variant: `--set` overrides of the recipe, and how its length is bounded."""

    label: str
    overrides: tuple[str, ...] = ()
    # Train for as many steps as this variant's run of the same seed did in its
    # budget, instead of the budget (for options the config bounds by steps).
    steps_of: str = ""
    # Round that step count to the nearest multiple of this.
    steps_multiple: int = 1


VARIANTS = {
    "token15": Variant("token 15% (recipe default)"),
    "word15": Variant("word 15%", ("masking.unit=word",)),
    "token30": Variant("token 30%", ("masking.selection_rate=0.3",)),
    "word30": Variant("word 30%", ("masking.unit=word", "masking.selection_rate=0.3")),
    "span15": Variant("span 15%", ("masking.unit=span",)),
    # Options that leave the cost of a step alone: for `--steps`.
    "dropout0": Variant("dropout 0 (recipe 0.1)", ("model.backbone.dropout=0.0",)),
    "lr5e-4": Variant("learning rate 5e-4 (recipe 1e-3)", ("train.learning_rate=5e-4",)),
    "lr2e-3": Variant("learning rate 2e-3 (recipe 1e-3)", ("train.learning_rate=2e-3",)),
    "warmup02": Variant("warmup 2% (recipe 10%)", ("train.warmup_fraction=0.02",)),
    "warmup30": Variant("warmup 30% (recipe 10%)", ("train.warmup_fraction=0.3",)),
    # mmBERT's decreasing rate, 30% to 15% over the steps (each step at the 30% cost:
    # the mask slots are sized for the highest rate); `--steps` only.
    "sched30to15": Variant("token 30% -> 15% over the steps", (
        "masking.selection_rate=0.3", "masking.final_selection_rate=0.15")),
    "phases": Variant("token 15%, phases 128 then 512",
                      (f"train.phases={json.dumps(BERT_PHASES)}",), steps_of="token15",
                      # mlm cuts steps into device calls that divide the log interval
                      # (50), the last step and the phase boundary (0.9 of the steps):
                      # a multiple of 100 keeps the 10-step calls of the budget runs,
                      # where 470 steps would get calls of 1 step.
                      steps_multiple=100),
    # Not run by default.
    "token40": Variant("token 40%", ("masking.selection_rate=0.4",)),
    "span30": Variant("span 30%", ("masking.unit=span", "masking.selection_rate=0.3")),
    # Model shapes at equal time (the step costs differ): 4 layers of 256
    # (BERT-mini's shape) and of 512 (BERT-small's) against the recipe's 2 of 128.
    "shape4x256": Variant("4 layers x 256 (recipe 2 x 128)", (
        "model.backbone.num_layers=4", "model.backbone.num_heads=4",
        "model.backbone.hidden_dim=256", "model.backbone.intermediate_dim=1024")),
    "shape4x512": Variant("4 layers x 512 (recipe 2 x 128)", (
        "model.backbone.num_layers=4", "model.backbone.num_heads=8",
        "model.backbone.hidden_dim=512", "model.backbone.intermediate_dim=2048")),
}
DEFAULT_VARIANTS = ("token15", "word15", "token30", "word30", "span15", "phases")
REFERENCE = "token15"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report:
        print_report(json.loads(args.report.read_text()))
        return
    with contextlib.ExitStack() as stack:
        work = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        report = {"machine": machine_summary(), "command": " ".join(sys.argv),
                  "commit": git_commit(), "budget": None if args.steps else args.budget,
                  "steps": args.steps, "recipe": args.recipe, "seeds": args.seeds, "runs": [],
                  "settings": list(common_overrides(args))}
        length = f"{args.steps} steps" if args.steps else f"budget {args.budget}"
        say(f"work dir {work}; {len(args.variants)} variants x {args.seeds} seed(s), "
            f"{length} each; load average {os.getloadavg()[0]:.2f}")
        began = time.perf_counter()
        for seed in range(args.seeds):
            steps_done = {}
            for name in run_order(args.variants):
                run = run_named(name, args=args, seed=seed, steps_done=steps_done, work=work)
                steps_done[name] = run.get("steps")
                report["runs"].append({"variant": name, "seed": seed, **run})
                if args.json:  # after every run, so that a killed benchmark keeps its results
                    args.json.write_text(json.dumps(report, indent=1))
        report["total_seconds"] = time.perf_counter() - began
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
        print_report(report)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", default="150s",
                        help="training time of each run, as train.budget reads it (150s, 3m)")
    parser.add_argument("--steps", type=int,
                        help="train every run exactly this many steps instead of the budget "
                             "(for options that do not change the cost of a step)")
    parser.add_argument("--variants", type=lambda s: s.split(","), default=list(DEFAULT_VARIANTS),
                        help=f"comma list of {', '.join(VARIANTS)} "
                             f"(default: {','.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--seeds", type=int, default=1, help="runs of each variant, seeds 0..N-1")
    parser.add_argument("--recipe", default="bert_tiny_en_uncased")
    parser.add_argument("--corpus", nargs="+", default=[],
                        help="corpus of every run (default: the shipped sample)")
    parser.add_argument("--eval-every", type=int, default=1_000_000,
                        help="train.eval_every and train.checkpoint_every of every run (default: "
                             "only at the start and the end)")
    parser.add_argument("--precision", default="float32",
                        help="train.mixed_precision of every run (auto probes per run)")
    parser.add_argument("--jit-compile", default="false", help="train.jit_compile of every run")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE",
                        help="more overrides for every variant")
    parser.add_argument("--work-dir", type=Path, help="keep the run directories here")
    parser.add_argument("--json", type=Path, help="also write the full report here")
    parser.add_argument("--report", type=Path, help="print the table of a saved --json report")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, but received {args.steps}")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    return args


def run_order(names: list[str]) -> list[str]:
    """The variants asked, in `VARIANTS` order, with the references of step-matched ones.

    References come first in `VARIANTS`, so each runs before the variants
    that take its step count.
    """
    wanted = {*names, *(VARIANTS[n].steps_of for n in names if VARIANTS[n].steps_of)}
    return [name for name in VARIANTS if name in wanted]


def run_named(name: str, *, args: argparse.Namespace, seed: int, steps_done: dict,
              work: Path) -> dict:
    """Runs one variant of one seed, bounded by `--steps`, the budget or its reference's steps."""
    variant = VARIANTS[name]
    steps = args.steps
    if variant.steps_of and not steps:
        reference = steps_done.get(variant.steps_of)
        if not reference:
            return {"error": f"no step count: the {variant.steps_of} run failed"}
        multiple = variant.steps_multiple
        steps = max(multiple, round(reference / multiple) * multiple)
    return run_variant(variant, args=args, seed=seed, steps=steps,
                       run_dir=work / f"{name}-seed{seed}")


def common_overrides(args: argparse.Namespace) -> tuple[str, ...]:
    """The overrides every variant's run shares, its seed aside."""
    return (
        *EVALUATION,
        f"train.eval_every={args.eval_every}", f"train.checkpoint_every={args.eval_every}",
        f"train.mixed_precision={args.precision}", f"train.jit_compile={args.jit_compile}",
        *args.set,
    )


def run_variant(variant: Variant, *, args: argparse.Namespace, seed: int, steps: int | None,
                run_dir: Path) -> dict:
    """Trains one variant in its own `mlm pretrain` process; its results, or its error."""
    length = ["--steps", str(steps)] if steps else ["--budget", args.budget]
    command = [
        sys.executable, "-m", "mlm", "pretrain", "--recipe", args.recipe,
        "--run-dir", str(run_dir), "--overwrite", *length,
        *(["--corpus", *args.corpus] if args.corpus else []),
        "--set", *common_overrides(args), f"train.seed={seed}", *variant.overrides,
    ]
    log = run_dir.with_suffix(".log")
    say(f"{variant.label}, seed {seed}: {' '.join(length)} -> {run_dir} (log {log.name})")
    # The repository's own mlm, whatever the environment has installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    load_before, began = os.getloadavg()[0], time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - began
    lines = log.read_text(errors="replace").splitlines()
    if done.returncode != 0:
        error = next((line for line in reversed(lines) if line.strip()), "")
        say(f"  failed (exit {done.returncode}): {error}")
        return {"error": f"exit {done.returncode}: {error}", "command": command}
    result = {**summarize(run_dir, budgeted=not steps), "run_seconds": wall,
              "load_average": [load_before, os.getloadavg()[0]], "command": command}
    say(f"  {result['steps']} steps, held-out masked accuracy {result['accuracy']:.4f}, "
        f"{wall:.0f} s in all; load average {load_before:.2f} before, "
        f"{result['load_average'][1]:.2f} after")
    return result


def summarize(run_dir: Path, *, budgeted: bool) -> dict:
    """Steps, training time, throughput and final held-out metrics of a finished run."""
    from mlm.run.directory import RunDir

    records = RunDir(run_dir).read_metrics(say=say)
    train = [r for r in records if r.get("split") == "train"]
    held_out = [r for r in records if r.get("split") == "held_out"]
    config = json.loads((run_dir / "config.json").read_text())
    # Log-window seconds: the window's non-padding tokens over its tokens/s.
    tokens = window_tokens(config, steps=[r["step"] for r in train])
    seconds = [t / r["tokens_per_second"] for t, r in zip(tokens, train, strict=True)]
    steady = slice(1, None) if len(train) > 1 else slice(None)
    last = held_out[-1]
    return {
        "steps": train[-1]["step"],
        "trained_seconds": train[-1]["trained_seconds"] if budgeted else None,
        "window_seconds": sum(seconds),
        "tokens_per_second": sum(tokens[steady]) / sum(seconds[steady]),
        "accuracy": last["accuracy"],
        "loss": last["loss"],
        "held_out_step": last["step"],
        "held_out_masked_tokens": last["masked_tokens"],
        "held_out_start": held_out[0]["accuracy"] if len(held_out) > 1 else None,
    }


def window_tokens(config: dict, *, steps: list[int]) -> list[float]:
    """Tokens of each log window (the steps after the previous logged step up to this one).

    Window length times batch size, per segment of `train.phases`; padding,
    under 0.01% of the sample's packed windows, cancels against mlm's
    tokens/s, which leaves it out.
    """
    from mlm.training import schedule

    train, model = config["train"], config["model"]
    # A budget run is bounded by time, not train.steps: its logged steps bound it.
    total = train["steps"] if not train.get("budget") else max(steps)
    plan = schedule.segments(
        steps=total, sequence_length=model["sequence_length"], batch_size=train["batch_size"],
        phases=train.get("phases") or (), batch_warmup=train.get("batch_warmup", 0.0),
        batch_multiple=train.get("accumulation_steps", 1),
    )
    out, previous = [], 0
    for step in steps:
        out.append(sum(
            max(0, min(step, s.end) - max(previous, s.start)) * s.batch_size * s.sequence_length
            for s in plan
        ))
        previous = step
    return out


# ---------------------------------------------------------------- report


def print_report(report: dict) -> None:
    m = report["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, avx512_bf16 {m['avx512_bf16']}, "
          f"amx {m['amx']}; {m['date']}; commit {report.get('commit', '?')}")
    length = (f"equal steps: {report['steps']} per run" if report.get("steps")
              else f"budget {report['budget']} of training per run")
    print(f"recipe {report['recipe']}, {length}; {report['seeds']} seed(s), mean ± standard "
          f"error over seeds; every run: --set {' '.join(report['settings'])}")
    by_variant: dict[str, list[dict]] = {}
    for run in report["runs"]:
        by_variant.setdefault(run["variant"], []).append(run)
    reference = {r["seed"]: r["accuracy"] for r in by_variant.get(REFERENCE, [])
                 if "error" not in r}
    print("\n| variant | steps | training s (budget clock) | training s (wall) | tokens/s "
          "| held-out masked acc (15%, token) | vs token 15%, paired by seed | verdict "
          "| held-out loss | load |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for name, runs in by_variant.items():
        print(table_row(VARIANTS[name], runs, reference=reference,
                        equal_steps=bool(report.get("steps"))))
    ok = [r for r in report["runs"] if "error" not in r]
    if ok:
        masked = ok[0]["held_out_masked_tokens"]
        accuracy = ok[0]["accuracy"]
        print(f"\nheld-out: {masked:,} masked tokens per evaluation; the binomial standard "
              f"error of an accuracy near {accuracy:.3f} is "
              f"{(accuracy * (1 - accuracy) / masked) ** 0.5:.4f} (masks fixed per seed, so "
              f"variants of one seed share them)")
    if "total_seconds" in report:
        print(f"total {report['total_seconds'] / 60:.1f} min")
    for run in report["runs"]:
        if "error" in run:
            print(f"ERROR {run['variant']} seed {run['seed']}: {run['error']}")


def table_row(variant: Variant, runs: list[dict], *, reference: dict[int, float],
              equal_steps: bool = False) -> str:
    """One variant's row: mean ± s.e. over its seeds; its accuracy gap paired by seed."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return f"| {variant.label} | error | | | | | | | | |"

    def cell(key: str, fmt: str) -> str:
        values = [r[key] for r in ok if r.get(key) is not None]
        if not values:
            return "—"
        return mean_and_error(values, fmt)

    delta, call = "—", "—"
    gaps = [r["accuracy"] - reference[r["seed"]] for r in ok if r["seed"] in reference]
    if gaps and variant is not VARIANTS[REFERENCE]:
        delta, call = mean_and_error(gaps, "+.4f"), verdict(gaps)
    label = variant.label + (f" ({variant.steps_of}'s steps to the {variant.steps_multiple})"
                             if variant.steps_of and not equal_steps else "")
    loads = "-".join(f"{r['load_average'][1]:.1f}" for r in ok)
    return (f"| {label} | {cell('steps', ',.0f')} | {cell('trained_seconds', '.1f')} "
            f"| {cell('window_seconds', '.1f')} | {cell('tokens_per_second', ',.0f')} "
            f"| {cell('accuracy', '.4f')} | {delta} | {call} | {cell('loss', '.3f')} | {loads} |")


def standard_error(values: list[float]) -> float:
    """The standard error of the mean of `values`: their sample stdev over sqrt(n).

    >>> round(standard_error([0.01, 0.02, 0.03]), 6)
    0.005774
    """
    return statistics.stdev(values) / len(values) ** 0.5


def mean_and_error(values: list[float], fmt: str) -> str:
    """`mean ± standard error` of `values`, or the one value alone.

    >>> mean_and_error([0.01, 0.02, 0.03], "+.4f")
    '+0.0200 ± 0.0058'
    >>> mean_and_error([0.5], ".2f")
    '0.50'
    """
    if len(values) == 1:
        return format(values[0], fmt)
    error = format(standard_error(values), fmt.lstrip("+"))
    return f"{format(statistics.mean(values), fmt)} ± {error}"


def verdict(gaps: list[float]) -> str:
    """Per-seed gaps to the reference, judged: beyond 2 standard errors of their mean, or not.

    >>> verdict([0.010, 0.012, 0.011])
    'better'
    >>> verdict([-0.010, -0.012, -0.011])
    'worse'
    >>> verdict([0.010, -0.008, 0.004])
    'within noise'
    >>> verdict([0.0, 0.0, 0.0])
    'within noise'
    >>> verdict([0.02])
    'one seed: no verdict'
    """
    if len(gaps) < 2:
        return "one seed: no verdict"
    mean, error = statistics.mean(gaps), standard_error(gaps)
    if mean > 2 * error and mean > 0:
        return "better"
    if mean < -2 * error and mean < 0:
        return "worse"
    return "within noise"


def machine_summary() -> dict:
    """CPU model, cores and bf16 support, from /proc/cpuinfo."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = {}
    for line in info.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields.setdefault(key.strip(), value.strip())  # the first CPU's
    flags = fields.get("flags", "").split()
    return {
        "cpu": fields.get("model name", "?"), "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": any(f.startswith("amx") for f in flags), "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True)
    return done.stdout.strip() or "?"


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
