"""`compare()`: fine-tune several encoders with one recipe over several seeds; one table.

Every encoder sees the same examples, the same validation set, the same
order of batches and the same head initialisation for a given seed, so the
table measures the encoders. `random:PRESET` is PRESET's architecture and
tokenizer with fresh weights: what pretraining bought.
"""

import re
import time
from pathlib import Path

import numpy as np

from mlm import atomic
from mlm.errors import MlmError
from mlm.finetuning.config import (
    FinetuneConfig,
    apply_finetune_overrides,
    load_finetune_config,
    resolved_epochs,
)
from mlm.finetuning.train import finetune_splits, load_splits
from mlm.progress import format_duration


def compare(presets, *, train=None, validation=None, task: str | None = None, run_dir,
            seeds: int = 3, config: FinetuneConfig | None = None, overrides=(),
            overwrite: bool = False, quiet: bool = False) -> list[dict]:
    """Fine-tunes each encoder `seeds` times; returns one row per encoder.

    Each row holds the encoder, the mean and standard deviation over seeds of
    validation accuracy and macro-F1 at each run's best epoch, and the mean
    seconds per run. The table goes to `run_dir/compare.md`, `compare.json`
    and `compare.png`; each run's folder is `run_dir/runs/<encoder>/seed-<s>`.

    Args:
        presets: encoders, as `mlm finetune` takes them; `random:PRESET` for
            PRESET with freshly initialised weights.
        train, validation, task: the labelled data, as for `mlm.finetune`.
        run_dir: the folder to write.
        seeds: runs per encoder, with seeds `config.seed`, `config.seed + 1`, ...
        config, overrides: the fine-tuning recipe, as for `mlm.finetune`.
        overwrite: replace an existing `run_dir`.
        quiet: print only the table.

    Example:
    ```python
    rows = mlm.compare(["runs/demo/preset", "random:runs/demo/preset"],
                       train="labelled.csv", run_dir="runs/compare")
    ```
    """
    run_dir = Path(run_dir)
    presets = list(presets)
    if not presets:
        raise MlmError("compare needs at least one preset.")
    if seeds < 1:
        raise MlmError(f"--seeds must be at least 1, but received seeds={seeds}.")
    config = apply_finetune_overrides(config or load_finetune_config(), overrides)
    if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
        raise MlmError(f"compare folder {run_dir} exists; pass --overwrite or another --run-dir.")
    splits = load_splits(train=train, validation=validation, task=task, config=config)
    sources = {"train": _str(train), "validation": _str(validation), "task": task}
    if overwrite and run_dir.exists():
        atomic.remove_dir(run_dir)
    rows = []
    for index, preset in enumerate(presets):
        runs = []
        for seed in range(config.seed, config.seed + seeds):
            if not quiet:
                print(f"{preset}, seed {seed}:")
            seeded = apply_finetune_overrides(config, [f"seed={seed}"])
            folder = run_dir / "runs" / f"{index}-{_slug(preset)}" / f"seed-{seed}"
            began = time.monotonic()
            summary = finetune_splits(preset, splits, run_dir=folder, config=seeded,
                                      sources=sources, quiet=quiet)
            runs.append({"seed": seed, "seconds": time.monotonic() - began,
                         **{k: summary["validation"][k] for k in ("accuracy", "macro_f1")}})
        rows.append(_row(preset, runs, first=rows[0] if rows else None))
    write_comparison(run_dir, rows=rows, splits=splits, config=config)
    print(format_table(rows))
    for row in rows[1:]:
        print(f"{row['encoder']} against {rows[0]['encoder']}: {row['difference']['verdict']}")
    return rows


def _row(preset: str, runs: list[dict], *, first: dict | None = None) -> dict:
    accuracy = np.array([r["accuracy"] for r in runs])
    macro_f1 = np.array([r["macro_f1"] for r in runs])
    row = {
        "encoder": preset, "seeds": len(runs),
        "accuracy_mean": float(accuracy.mean()), "accuracy_std": float(accuracy.std()),
        "macro_f1_mean": float(macro_f1.mean()), "macro_f1_std": float(macro_f1.std()),
        "seconds_per_run": float(np.mean([r["seconds"] for r in runs])),
        "runs": runs,
    }
    if first is not None:
        row["difference"] = paired_difference(runs, first["runs"])
    return row


# A difference is told apart from the seeds' noise when it exceeds this many standard
# errors (about 95% two-sided for a normal mean; with 3 seeds a t-test would ask 4.3).
NOISE_STANDARD_ERRORS = 2.0


def paired_difference(runs: list[dict], baseline: list[dict]) -> dict:
    """Accuracy of `runs` minus `baseline`, paired by seed, with its standard error.

    A seed fixes the data order, the hold-out and the head's initialisation
    for every encoder, so the per-seed differences measure the encoders alone;
    their mean and its standard error (sample standard deviation / sqrt(n))
    say whether the gap is within the seeds' noise.

    Returns:
        `{"mean", "standard_error", "seeds", "verdict"}`; the standard error is
        None with one seed.
    """
    by_seed = {r["seed"]: r["accuracy"] for r in baseline}
    diffs = np.array([r["accuracy"] - by_seed[r["seed"]] for r in runs if r["seed"] in by_seed])
    mean = float(diffs.mean())
    if len(diffs) < 2:
        return {"mean": mean, "standard_error": None, "seeds": len(diffs),
                "verdict": f"{mean:+.4f} accuracy on one seed: no noise estimate (use --seeds 3)"}
    error = float(diffs.std(ddof=1) / np.sqrt(len(diffs)))
    if abs(mean) > NOISE_STANDARD_ERRORS * error:
        verdict = (f"{mean:+.4f} ± {error:.4f} accuracy over {len(diffs)} seeds: "
                   f"{'better' if mean > 0 else 'worse'}, beyond the seeds' noise")
    else:
        verdict = (f"{mean:+.4f} ± {error:.4f} accuracy over {len(diffs)} seeds: within the "
                   f"seeds' noise ({NOISE_STANDARD_ERRORS:g} standard errors)")
    return {"mean": mean, "standard_error": error, "seeds": len(diffs), "verdict": verdict}


def format_table(rows: list[dict]) -> str:
    """The comparison as a Markdown table (mean ± standard deviation over seeds), each
    encoder after the first with its paired accuracy difference from the first."""
    lines = ["| encoder | seeds | validation accuracy | validation macro-F1 | time per run | "
             "accuracy vs the first (± s.e.) |",
             "|---|---:|---:|---:|---:|---|"]
    for row in rows:
        lines.append(
            f"| {row['encoder']} | {row['seeds']} | "
            f"{row['accuracy_mean']:.4f} ± {row['accuracy_std']:.4f} | "
            f"{row['macro_f1_mean']:.4f} ± {row['macro_f1_std']:.4f} | "
            f"{format_duration(row['seconds_per_run'])} | {_difference_cell(row)} |"
        )
    return "\n".join(lines)


def _difference_cell(row: dict) -> str:
    difference = row.get("difference")
    if difference is None:
        return "(reference)"
    if difference["standard_error"] is None:
        return f"{difference['mean']:+.4f} (one seed)"
    noise = abs(difference["mean"]) <= NOISE_STANDARD_ERRORS * difference["standard_error"]
    return (f"{difference['mean']:+.4f} ± {difference['standard_error']:.4f}"
            f"{' (within noise)' if noise else ''}")


def write_comparison(run_dir: Path, *, rows: list[dict], splits, config: FinetuneConfig
                     ) -> None:
    """Writes `compare.md`, `compare.json` and `compare.png` into `run_dir`."""
    atomic.write_json(run_dir / "compare.json", {"rows": rows, "config": config.to_dict()})
    text = "\n".join([
        "# Encoder comparison",
        "",
        f"{len(splits.train)} training and {len(splits.validation)} validation examples "
        f"({splits.validation_source}), {len(splits.names)} classes; "
        f"{resolved_epochs(config, examples=len(splits.train))} epoch(s) "
        f"per run, best epoch by validation macro-F1; mean ± standard deviation over seeds. "
        f"The last column is each encoder's accuracy minus the first's, paired by seed, "
        f"± its standard error; within noise when under {NOISE_STANDARD_ERRORS:g} of them.",
        "",
        format_table(rows),
        "",
        "![comparison](compare.png)",
        "",
    ])
    atomic.write_text(run_dir / "compare.md", text)
    plot_comparison(rows, path=run_dir / "compare.png")


def plot_comparison(rows: list[dict], *, path: Path) -> None:
    """Bars of mean validation accuracy and macro-F1 per encoder, with the spread."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(max(5.0, 1.6 * len(rows) + 2), 3.5))
    positions = np.arange(len(rows))
    for offset, metric, label in ((-0.2, "accuracy", "accuracy"), (0.2, "macro_f1", "macro-F1")):
        axes.bar(positions + offset, [r[f"{metric}_mean"] for r in rows], width=0.4,
                 yerr=[r[f"{metric}_std"] for r in rows], capsize=4, label=label)
    axes.set_xticks(positions, [_short(r["encoder"]) for r in rows], rotation=15, ha="right")
    axes.set_ylim(0, 1)
    axes.set_ylabel("validation")
    axes.legend(loc="lower right")
    figure.tight_layout()
    with atomic.writing_file(path) as tmp:
        figure.savefig(tmp, dpi=100)
    pyplot.close(figure)


def _short(name: str, limit: int = 32) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def _slug(preset: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", preset).strip("_")[-60:] or "encoder"


def _str(path) -> str | None:
    return None if path is None else str(path)
