"""Does pretraining pay? Pretrained against random initialisation on labelled tasks.

Run on demand (never in the test suite):

    python benchmarks/downstream.py                               # budgets 2m,5m,10m,30m
    python benchmarks/downstream.py --budgets 2m --seeds 3 --work-dir /tmp/downstream
    python benchmarks/downstream.py --preset runs/demo/preset     # an encoder you have
    python benchmarks/downstream.py --budgets 10m --pretrain-set vocab.size=8000 --work-dir /tmp/v8k
    python benchmarks/downstream.py --report downstream.json      # reprint a saved report

For each pretraining budget, `mlm pretrain --budget B` trains what it trains
with no `--recipe` (the budget's row of `mlm.config.BUDGET_CHOICES`; `--recipe
NAME` trains that recipe as it is instead) on the shipped sample corpus (the
King James Bible), then `mlm.compare` fine-tunes the pretrained encoder and
`random:PRESET` (its architecture and tokenizer with fresh weights) with the
fine-tuning recipe's defaults on every task, with many labels and with a few
per class, over `--seeds` seeds paired by seed (the same data
order, hold-out and head for both encoders). Every task is built from the
sample corpus, whose chapters are in canonical order:

- `testament`: sentences of Old (chapters 1-929) vs New Testament chapters;
- `genre`: sentences labelled by their book's genre: law, history, wisdom,
  prophets, gospels and acts, letters and revelation (six classes);
- `passage`: the same six genres on passages of consecutive sentences of at
  least `PASSAGE_WORDS` words (about 160 to 250 tokens): a long-input task,
  where fine-tuning runs at length 256 and reads positions that windows of 64
  or 128 tokens never trained.

"Many labels" is `--many` sentences per class (default 1,000; the corpus has
3,000 to 21,000 per class, which would make every fine-tuning run minutes
long on 2 cores); "few" is `--few` per class (default 50).

Test sentences come from other chapters than the training sentences (every
fifth chapter is held out), so a classifier cannot pass by memorising a
chapter. The table gives, per budget, task and label regime: the pretrained
encoder's held-out masked accuracy, its test accuracy and random
initialisation's (mean ± standard error over seeds), their paired difference
± its standard error, and the pretraining and fine-tuning times.
"""

import argparse
import csv
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Chapters per genre, in canonical order (KJV: 1,189 chapters; Genesis-Deuteronomy
# 187, Joshua-Esther 249, Job-Song of Solomon 243, Isaiah-Malachi 250,
# Matthew-Acts 117, Romans-Revelation 143).
GENRES = (("law", 187), ("history", 249), ("wisdom", 243), ("prophets", 250),
          ("gospels", 117), ("letters", 143))
NEW_TESTAMENT = 929  # the first chapter of Matthew
# The `passage` task's passages: consecutive sentences of a chapter, at least this many words.
PASSAGE_WORDS = 150
_SENTENCE = re.compile(r"(?<=[.?!:;])\s+(?=[A-Z])")


def chapters() -> list[str]:
    """The sample corpus's 1,189 chapters, in order."""
    import gzip

    from mlm.data.corpus import sample_corpus_path

    with gzip.open(sample_corpus_path(), "rt", encoding="utf-8") as f:
        return [c.strip() for c in f.read().split("\n\n") if c.strip()]


def labelled_sentences(task: str) -> list[tuple[int, str, str]]:
    """(chapter, text, label) of every sentence of 6 to 40 words for `task`, or for
    `passage` of every passage of `PASSAGE_WORDS` words or more (a chapter's sentences in
    order, cut where a passage reaches the length; a chapter's short tail is dropped)."""
    labels = []
    for name, count in GENRES:
        labels += [name] * count
    found = []
    for index, chapter in enumerate(chapters()):
        label = labels[index] if task in ("genre", "passage") else (
            "old" if index < NEW_TESTAMENT else "new")
        if task == "passage":
            passage, words = [], 0
            for sentence in _SENTENCE.split(chapter):
                passage.append(sentence)
                words += len(sentence.split())
                if words >= PASSAGE_WORDS:
                    found.append((index, " ".join(passage), label))
                    passage, words = [], 0
            continue
        for sentence in _SENTENCE.split(chapter):
            if 6 <= len(sentence.split()) <= 40:
                found.append((index, sentence, label))
    return found


def task_files(task: str, *, per_class: int, folder: Path, test_size: int = 600,
               seed: int = 0) -> tuple[Path, Path]:
    """`train.csv` (`per_class` sentences of each class) and `test.csv` (held-out chapters)."""
    rng = np.random.default_rng(seed)
    rows = labelled_sentences(task)
    train = [r for r in rows if r[0] % 5]
    test = [r for r in rows if r[0] % 5 == 0]
    test = [test[i] for i in rng.permutation(len(test))[:test_size]]
    by_label = {}
    for row in (train[i] for i in rng.permutation(len(train))):
        by_label.setdefault(row[2], [])
        if len(by_label[row[2]]) < per_class:
            by_label[row[2]].append(row)
    train = [row for label in sorted(by_label) for row in by_label[label]]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, part in (("train", train), ("test", test)):
        path = folder / f"{name}.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows({"text": text, "label": label} for _, text, label in part)
        paths.append(path)
    return paths[0], paths[1]


def pretrain(recipe_name: str | None, *, budget: str, run_dir: Path, seed: int,
             overrides=()) -> dict:
    """Pretrains (or reuses) the recipe for `budget` on the sample corpus: its summary.

    With no `recipe_name`, the recipe and overrides are the budget's row of
    `BUDGET_CHOICES`, as `mlm pretrain --budget` with no `--recipe` picks them.
    `overrides` (`--pretrain-set`) come after those: the variant measured."""
    import mlm
    from mlm.config import recipe_for_budget

    summary_path = run_dir.parent / f"{run_dir.name}.summary.json"
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    row = recipe_for_budget(budget)
    chosen = (list(row.overrides) if recipe_name is None else []) + list(overrides)
    name = recipe_name or row.recipe
    recipe = mlm.apply_overrides(mlm.load_recipe(name), chosen + [
        f"train.budget={budget}", f"train.seed={seed}", "train.eval_every=1000000",
        "train.checkpoint_every=1000000", "masking.eval_selection_rate=0.15",
        "masking.eval_unit=token"])
    began = time.perf_counter()
    summary = mlm.pretrain(recipe, run_dir=run_dir, overwrite=True, quiet=True)
    summary["wall_seconds"] = time.perf_counter() - began
    summary["recipe"] = " ".join([name] + chosen)
    summary_path.write_text(json.dumps(summary, default=str))
    return summary


def measure(preset: str, *, task: str, per_class: int, seeds: int, folder: Path,
            overrides=()) -> dict:
    """`mlm.compare` of the encoder against its random initialisation on one task."""
    import mlm

    train, test = task_files(task, per_class=per_class, folder=folder / "data")
    rows = mlm.compare([preset, f"random:{preset}"], train=train, validation=test,
                       run_dir=folder / "compare", seeds=seeds, overwrite=True, quiet=True,
                       overrides=list(overrides))
    pretrained, random = rows

    def mean_se(row):
        values = np.array([r["accuracy"] for r in row["runs"]])
        error = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
        return float(values.mean()), float(error)

    return {
        "task": task, "labels": f"{per_class}/class",
        "train_examples": sum(1 for _ in open(train)) - 1,
        "pretrained": mean_se(pretrained), "random": mean_se(random),
        # random minus pretrained, paired by seed: flip the sign to pretrained's gain.
        "gain": (-random["difference"]["mean"], random["difference"]["standard_error"]),
        "finetune_seconds": pretrained["seconds_per_run"],
    }


def seed_note(row: dict) -> str:
    """" (pretraining seed S)" for a row pretrained with a seed other than 0."""
    return f" (pretraining seed {row['pretrain_seed']})" if row.get("pretrain_seed") else ""


def format_table(results: list[dict]) -> str:
    lines = ["| budget | steps | held-out masked acc. | task | labels | pretrained | random init | "
             "gain (± s.e.) | pretrain s | fine-tune s/run |",
             "|---|---:|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        gain, error = r["gain"]
        gain_text = f"{gain:+.3f}" + ("" if error is None else f" ± {error:.3f}")
        lines.append(
            f"| {r['budget']}{seed_note(r)} | {r.get('steps') or '—'} | "
            f"{r['masked_accuracy']:.4f} | "
            f"{r['task']} | {r['labels']} | "
            f"{r['pretrained'][0]:.3f} ± {r['pretrained'][1]:.3f} | "
            f"{r['random'][0]:.3f} ± {r['random'][1]:.3f} | {gain_text} | "
            f"{r['pretrain_seconds']:.0f} | {r['finetune_seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default="2m,5m,10m,30m")
    parser.add_argument("--recipe", help="pretrain this recipe as it is (default: each "
                        "budget's row of BUDGET_CHOICES, as `mlm pretrain --budget`)")
    parser.add_argument("--preset", help="score this encoder instead of pretraining one")
    parser.add_argument("--tasks", default="testament,genre")
    parser.add_argument("--few", type=int, default=50, help="labels per class, few-label regime")
    parser.add_argument("--many", type=int, default=1000, help="labels per class, many-label")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pretrain-seed", type=int, default=0,
                        help="train.seed of the pretraining runs (a second one measures "
                             "pretraining's own spread)")
    parser.add_argument("--set", nargs="*", default=[], help="fine-tuning overrides")
    parser.add_argument("--pretrain-set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE",
                        help="pretraining overrides after the budget's row, e.g. "
                             "vocab.size=8000 (a variant; random init takes its shape)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/downstream"))
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--report", type=Path, help="reprint a saved report")
    args = parser.parse_args(argv)
    if args.report:
        print(format_table(json.loads(args.report.read_text())["results"]))
        return 0
    results = []
    encoders = [("given", args.preset, None)] if args.preset else [
        (budget, None, budget) for budget in args.budgets.split(",")]
    seed_part = f"-seed{args.pretrain_seed}" if args.pretrain_seed and not args.preset else ""
    for label, preset, budget in encoders:
        summary = {}
        if preset is None:
            run_dir = args.work_dir / f"pretrain-{budget}{seed_part}"
            summary = pretrain(args.recipe, budget=budget, run_dir=run_dir,
                               seed=args.pretrain_seed, overrides=args.pretrain_set)
            preset = summary["preset"]
        for task in args.tasks.split(","):
            for per_class in (n for n in (args.few, args.many) if n > 0):  # 0: skip
                folder = args.work_dir / f"{label}{seed_part}" / task / f"per-class-{per_class}"
                row = measure(preset, task=task, per_class=per_class, seeds=args.seeds,
                              folder=folder, overrides=args.set)
                row.update(budget=label,
                           masked_accuracy=(summary.get("held_out") or {}).get(
                               "accuracy", float("nan")),
                           pretrain_seconds=summary.get("trained_seconds", 0.0),
                           steps=summary.get("steps"), recipe=summary.get("recipe", preset),
                           pretrain_seed=args.pretrain_seed if summary else None)
                results.append(row)
                print(format_table(results[-1:]).splitlines()[-1], flush=True)
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps({"results": results, "argv": sys.argv[1:]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
