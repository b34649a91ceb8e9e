"""Interleaved A/B of two recipe variants of one training step, in one process.

Run on demand:

    python benchmarks/step_ab.py --a train.jit_compile=true --b train.jit_compile=false
    python benchmarks/step_ab.py --a train.mixed_precision=float32 \\
        --b train.mixed_precision=mixed_bfloat16

Builds two tasks with `mlm.training.task.build_task` and `compile_task` from the same
recipe (default `bert_tiny_en_uncased`) with a vocabulary of `--vocab-size`
entries, then alternates their `train_on_batch` steps on the same batch, so
both see the same machine load: on a shared machine this tells two variants
apart where separate runs cannot. Prints the median and best wall and CPU
seconds per step of each.
"""

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a", nargs="*", default=[], help="overrides of variant A")
    parser.add_argument("--b", nargs="*", default=[], help="overrides of variant B")
    parser.add_argument("--recipe", default="bert_tiny_en_uncased")
    parser.add_argument("--vocab-size", type=int, default=30522)
    parser.add_argument("--steps", type=int, default=12, help="timed steps of each")
    args = parser.parse_args(argv)
    tasks = {
        " ".join(v) or "recipe": build(args.recipe, v, args.vocab_size) for v in (args.a, args.b)
    }
    batch = make_batch(next(iter(tasks.values()))[1], vocab_size=args.vocab_size)
    times = {name: ([], []) for name in tasks}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Gradients do not exist")
        for task, _ in tasks.values():
            for _ in range(2):  # tracing, compilation
                task.train_on_batch(*batch[:2], sample_weight=batch[2])
        for _ in range(args.steps):
            for name, (task, _) in tasks.items():
                wall, cpu = time.perf_counter(), time.process_time()
                task.train_on_batch(*batch[:2], sample_weight=batch[2])
                times[name][0].append(time.perf_counter() - wall)
                times[name][1].append(time.process_time() - cpu)
    for name, (wall, cpu) in times.items():
        print(f"{name}: wall median {statistics.median(wall):.3f} s (best {min(wall):.3f}), "
              f"CPU median {statistics.median(cpu):.3f} s (best {min(cpu):.3f}); "
              f"load {os.getloadavg()[0]:.1f}")


def build(recipe_name: str, overrides: list[str], vocab_size: int):
    import keras
    import keras_hub

    from mlm.architectures import get_architecture
    from mlm.config import apply_overrides, load_recipe
    from mlm.data.masking import resolve_masking
    from mlm.training.task import build_task, compile_task

    recipe = apply_overrides(load_recipe(recipe_name), overrides)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = keras_hub.models.BertTokenizer(
        vocabulary=special + [f"w{i}" for i in range(vocab_size - len(special))]
    )
    keras.utils.set_random_seed(0)
    task = build_task(recipe.model, arch=get_architecture("bert"), tokenizer=tokenizer,
                      masking=resolve_masking(recipe.masking, evaluation=True))
    compile_task(task, recipe.train)
    task.preprocessor = None
    return task, recipe


def make_batch(recipe, *, vocab_size: int):
    """One batch of random tokens with mlm's shapes: (x, labels, weights)."""
    from mlm.data.pipeline import max_selections

    batch, length = recipe.train.batch_size, recipe.model.sequence_length
    slots = max_selections(length, recipe.masking.selection_rate)
    rng = np.random.default_rng(0)
    x = {
        "token_ids": rng.integers(5, vocab_size, (batch, length)).astype("int32"),
        "padding_mask": np.ones((batch, length), "int32"),
        "segment_ids": np.zeros((batch, length), "int32"),
        "mask_positions": np.sort(rng.integers(1, length - 1, (batch, slots)), axis=1).astype(
            "int32"
        ),
    }
    labels = rng.integers(5, vocab_size, (batch, slots)).astype("int32")
    return x, labels, np.ones((batch, slots), "float32")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
