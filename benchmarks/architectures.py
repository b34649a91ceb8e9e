"""Pretrains every architecture's tiny recipe briefly and prints the README table.

Run on demand, e.g.

    python benchmarks/architectures.py                    # all rows, 60 steps each
    python benchmarks/architectures.py --arch albert roberta --steps 100

For each row of `mlm.architectures.ARCHITECTURES`, the `<name>_tiny` recipe
learns its vocabulary on the corpus (default: the shipped sample), builds its
backbone and trains `--steps` steps of 32 windows of 128 tokens with the
recipe's own settings. Printed per row: the tokenizer family, the vocabulary
actually learned, the parameters, and the training throughput in non-padding
tokens per second (the first logging window, which includes tracing, left
out). Evaluation and checkpoints are pushed past the end of the run so they
do not count.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from mlm.architectures import ARCHITECTURES
from mlm.config import apply_overrides, available_recipes, load_recipe
from mlm.data.corpus import sample_corpus_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", nargs="+", default=sorted(ARCHITECTURES))
    parser.add_argument("--corpus", default=str(sample_corpus_path()))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--size", default="tiny", choices=["tiny", "small"])
    args = parser.parse_args(argv)

    import keras_hub

    import mlm

    rows = []
    for name in args.arch:
        recipe_name = f"{name}_{args.size}"
        if recipe_name not in available_recipes():
            recipe_name += "_en_uncased"  # bert_tiny_en_uncased
        recipe = apply_overrides(load_recipe(recipe_name), [
            f"corpus.paths={json.dumps([args.corpus])}",
            f"train.steps={args.steps}", f"train.log_every={max(1, args.steps // 4)}",
            f"train.eval_every={args.steps + 1}", "train.eval_batches=1",
            f"train.checkpoint_every={args.steps + 1}",
        ])
        with tempfile.TemporaryDirectory() as tmp:
            began = time.perf_counter()
            summary = mlm.pretrain(recipe, run_dir=Path(tmp) / name, quiet=True)
            wall = time.perf_counter() - began
            backbone = keras_hub.models.Backbone.from_preset(summary["preset"])
            rows.append({
                "architecture": name,
                "recipe": recipe_name,
                "family": ARCHITECTURES[name].tokenizer_family,
                "vocabulary": backbone.vocabulary_size,
                "parameters": backbone.count_params(),
                "tokens_per_second": summary["train_tokens_per_second"],
                "wall_seconds": wall,
            })
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    print(f"| architecture | tokenizer family | recipe | vocabulary learned | "
          f"parameters ({args.size}) | training tokens/s ({args.size}) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['architecture']} | {r['family']} | `{r['recipe']}` | "
              f"{r['vocabulary']:,} | {r['parameters']:,} | "
              f"{r['tokens_per_second']:,.0f} |")


if __name__ == "__main__":
    main()
