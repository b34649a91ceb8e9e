"""Seconds per training step of mlm's loop against keras `fit`, interleaved in one process.

Run on demand:

    python benchmarks/loop_overhead.py                       # bert_test and tiny shapes
    python benchmarks/loop_overhead.py --recipes bert_test --steps 128 --rounds 7

Three loops train the same model (one task each, same initial weights) on
batches from mlm's own pipeline (`mlm.data.pipeline.training_dataset` over a
synthetic token cache), in rounds, one after the other, so that all three see
the same machine load:

- `per-step train_on_batch`: the loop mlm had before (one `train_on_batch`
  a step, the loss and the batch's masked and non-padding token counts read
  on the host every step);
- `mlm loop`: `mlm.training.loop._Loop`, the loop `mlm pretrain` runs (one `fit`,
  `train.steps_per_execution` steps per device call, metrics read between
  calls), logging every round's last step;
- `fit(steps_per_execution=16)`: plain keras, the reference.

The last two start a new `fit`, and so a new pass of the dataset, every
round, as `mlm pretrain --resume` would; the first keeps one iterator.

Prints the median seconds per step of each over the rounds and its ratio to
the reference.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["bert_test", "bert_tiny_en_uncased"])
    parser.add_argument("--steps", type=int, default=0,
                        help="steps a round (default: 128 for bert_test, 16 otherwise)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--set", nargs="*", default=["train.mixed_precision=float32"],
                        help="recipe overrides for all three (default fp32, XLA as the recipe)")
    args = parser.parse_args(argv)
    print("| shape | loop | s/step (median) | vs fit(spe=16) |")
    print("|---|---|---:|---:|")
    for name in args.recipes:
        steps = args.steps or (128 if name == "bert_test" else 16)
        for loop, seconds, ratio in compare(name, overrides=args.set, steps=steps,
                                            rounds=args.rounds):
            print(f"| {name} | {loop} | {seconds:.4f} | {ratio:.2f}x |", flush=True)
    print(f"(load {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs)")


def compare(recipe_name: str, *, overrides: list[str], steps: int, rounds: int):
    from mlm.config import apply_overrides, load_recipe

    recipe = apply_overrides(load_recipe(recipe_name), [
        *overrides, f"train.steps={10**6}", f"train.log_every={steps}",
        f"train.eval_every={10**6}", f"train.checkpoint_every={10**6}",
        "train.jit_compile=" + ("false" if recipe_name == "bert_test" else "true"),
    ])
    tokens, ids = synthetic_cache(recipe)
    loops = {"per-step train_on_batch": PerStep(recipe, tokens, ids),
             "mlm loop": MlmLoop(recipe, tokens, ids),
             "fit(steps_per_execution=16)": Fit(recipe, tokens, ids)}
    times = {name: [] for name in loops}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Gradients do not exist")
        for loop in loops.values():
            loop.run(steps)  # tracing, compilation
        for _ in range(rounds):
            for name, loop in loops.items():
                began = time.perf_counter()
                loop.run(steps)
                times[name].append((time.perf_counter() - began) / steps)
    reference = statistics.median(times["fit(steps_per_execution=16)"])
    for name, values in times.items():
        yield name, statistics.median(values), statistics.median(values) / reference


def synthetic_cache(recipe):
    """A token cache of random words with documents joined by [SEP], and its ids."""
    from mlm.data.pipeline import TokenIds

    # [PAD] [UNK] [CLS] [SEP] [MASK] first, as `build` makes the vocabulary.
    ids = TokenIds(vocabulary_size=recipe.vocab.size, start_id=2, end_id=3, pad_id=0, mask_id=4,
                   special_ids=(0, 1, 2, 3, 4))
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, ids.vocabulary_size, 2_000_000, dtype=np.int32)
    tokens[rng.integers(0, len(tokens), len(tokens) // 200)] = ids.end_id
    return tokens, ids


def build(recipe, ids):
    import keras
    import keras_hub

    from mlm.architectures import get_architecture
    from mlm.data.masking import resolve_masking
    from mlm.training.task import build_task, compile_task

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = keras_hub.models.BertTokenizer(
        vocabulary=special + [f"w{i}" for i in range(ids.vocabulary_size - len(special))])
    keras.utils.set_random_seed(0)
    task = build_task(recipe.model, arch=get_architecture("bert"), tokenizer=tokenizer,
                      masking=resolve_masking(recipe.masking, evaluation=True))
    compile_task(task, recipe.train)
    preprocessor, task.preprocessor = task.preprocessor, None
    return task, preprocessor


def dataset(recipe, tokens, ids, *, start_step: int):
    from mlm.architectures import get_architecture
    from mlm.data.pipeline import training_dataset

    return training_dataset(
        tokens, sequence_length=recipe.model.sequence_length,
        batch_size=recipe.train.batch_size, masking=recipe.masking, ids=ids,
        seed=0, start_step=start_step, arch=get_architecture(recipe.model.architecture))


class PerStep:
    """mlm's loop before `fit`: a `train_on_batch` a step, counts read on the host."""

    def __init__(self, recipe, tokens, ids):
        self.task, _ = build(recipe, ids)
        self.ids = ids
        self.iterator = iter(dataset(recipe, tokens, ids, start_step=0))

    def run(self, steps: int) -> None:
        for _ in range(steps):
            x, y, w = next(self.iterator)
            logs = self.task.train_on_batch(x, y, sample_weight=w, return_dict=True)
            float(logs["loss"]), int(np.sum(w)), int(np.sum(np.asarray(x["token_ids"]) != 0))


class Fit:
    """Plain keras: `fit` with 16 steps per device call over one endless dataset."""

    def __init__(self, recipe, tokens, ids):
        self.task, _ = build(recipe, ids)
        self.task.steps_per_execution = 16
        self.data = dataset(recipe, tokens, ids, start_step=0)
        self.epochs = 0

    def run(self, steps: int) -> None:
        # One more epoch of the same fit each round: the iterator keeps its place only
        # within one call, so each round restarts the (deterministic) dataset.
        self.task.fit(self.data, steps_per_epoch=steps, epochs=1, verbose=0)


class MlmLoop:
    """`mlm.training.loop._Loop`, as `mlm pretrain` runs it, one round at a time."""

    def __init__(self, recipe, tokens, ids):
        self.task, self.preprocessor = build(recipe, ids)
        self.recipe, self.tokens, self.ids, self.step = recipe, tokens, ids, 0
        self.folder = Path(tempfile.mkdtemp(prefix="mlm_loop_"))

    def run(self, steps: int) -> None:
        import dataclasses

        from mlm.run.checkpoints import RunCheckpoints
        from mlm.run.log import MetricsLog
        from mlm.training import distributed
        from mlm.training.loop import _Loop
        from mlm.training.plan import resolve_plan

        recipe = dataclasses.replace(self.recipe, train=dataclasses.replace(
            self.recipe.train, steps=self.step + steps))
        plan = resolve_plan(recipe, backbone=self.task.backbone,
                            tokenizer=self.preprocessor.tokenizer)
        self.task.steps_per_execution = plan.strides(self.step)[1]
        loop = _Loop(self.task, plan=plan, start_step=self.step,
                     checkpoints=RunCheckpoints(self.folder, preprocessor=self.preprocessor,
                                                keep=1),
                     log=MetricsLog(self.folder, quiet=True),
                     topology=distributed.Topology(), evaluate=lambda step: {},
                     tokens_per_step=lambda segment: 1.0)
        # The last step of a run evaluates and checkpoints: keep them out of the timing.
        loop.on_epoch_end = _without_the_end(loop)
        loop.run(dataset(recipe, self.tokens, self.ids, start_step=self.step), stop=[],
                 bar=_NoBar())
        self.step += steps


def _without_the_end(loop):
    def on_epoch_end(epoch, logs=None):
        loop.window.add(logs, steps=loop.epoch, tokens=loop.epoch)
    return on_epoch_end


class _NoBar:
    def update(self, step):
        pass


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
