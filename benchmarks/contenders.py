"""The three contenders of `benchmarks/compare.py`, each run in its own process.

    python benchmarks/contenders.py --contender mlm --phase speed --spec spec.json --out r.json

`compare.py` writes `spec.json` (paths of the shared corpus split, vocabulary
and held-out windows; model shape; optimizer settings) and starts this script
once per contender and phase, so that peak resident memory is per contender:

- phase `speed`: the input pipeline alone for `pipeline_batches` batches, then
  `warmup_steps` untimed steps (tracing, XLA), then `repeats` blocks of
  `steps` timed optimizer steps;
- phase `budget`: trains from scratch for `budget_seconds` of training time
  (counted from the first step, compilation included; data preparation
  excluded), with warmup and linear decay over the steps the speed phase says
  fit in the budget, then evaluates on the shared held-out windows.

All contenders train the same shape with the same vocabulary, sequence length,
batch size, AdamW settings (no decay on biases and LayerNorm), warmup and
linear decay, and global-norm clipping. Each keeps its own data recipe:

- `mlm`: its token cache, packed windows and stateless masking
  (`mlm.data.token_cache`, `mlm.data.pipeline`) and its compiled task (`mlm.training.task`), the
  same calls `mlm.training.loop.train` makes per step;
- `keras_hub_guide`: `BertMaskedLMPreprocessor` mapped over the lines of the
  corpus (one line one example, padded or truncated to the sequence length,
  its default 96 mask slots), `BertMaskedLM.fit`;
- `hf`: `BertTokenizerFast`, run_mlm.py's `group_texts` (lines tokenized,
  concatenated and chunked), `DataCollatorForLanguageModeling`,
  `BertForMaskedLM` and a plain PyTorch AdamW loop.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contender", choices=sorted(CONTENDERS), required=True)
    parser.add_argument("--phase", choices=["speed", "budget"], required=True)
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    runner = CONTENDERS[args.contender](spec)
    result = run_speed(runner, spec) if args.phase == "speed" else run_budget(runner, spec)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    args.out.write_text(json.dumps(result, indent=2))


# ---------------------------------------------------------------- protocol


def run_speed(runner, spec: dict) -> dict:
    """Pipeline throughput, then `repeats` blocks of `steps` timed steps."""
    pipeline = runner.pipeline_throughput(spec["pipeline_batches"])
    warmup, steps, repeats = spec["warmup_steps"], spec["steps"], spec["repeats"]
    runner.build(total_steps=warmup + repeats * steps)
    ends = []  # perf_counter() at the end of every step
    start = time.perf_counter()
    runner.train(warmup + repeats * steps, on_step_end=lambda: ends.append(time.perf_counter()))
    marks = [ends[warmup - 1 + k * steps] for k in range(repeats + 1)]
    blocks = [(b - a) / steps for a, b in zip(marks, marks[1:], strict=False)]
    return {
        "pipeline": pipeline,
        "warmup_seconds": ends[warmup - 1] - start,
        "seconds_per_step_blocks": blocks,
        "seconds_per_step": statistics.median(blocks),
        "padding_fraction": runner.padding_fraction(),
        "load_average": os.getloadavg()[0],
    }


def run_budget(runner, spec: dict) -> dict:
    """Trains for `budget_seconds` of training time, then evaluates held-out.

    Along the way, at `curve_points` evenly spaced training times, the
    held-out accuracy is measured too (the clock paused meanwhile): the curve
    that `compare.py` reads the time to an accuracy from.
    """
    runner.build(total_steps=spec["budget_steps"])
    held_out = np.load(spec["held_out_npz"])
    budget, points = spec["budget_seconds"], spec.get("curve_points", 6)
    marks = [budget * (i + 1) / points for i in range(points - 1)]
    done, curve, paused = [], [], [0.0]
    start = time.perf_counter()

    def on_step_end():
        done.append(1)
        trained = time.perf_counter() - start - paused[0]
        while marks and trained >= marks[0]:
            marks.pop(0)
            began = time.perf_counter()
            accuracy = masked_accuracy(runner.masked_logits, held_out,
                                       batch_size=spec["batch_size"])["accuracy"]
            paused[0] += time.perf_counter() - began
            curve.append({"seconds": trained, "steps": len(done), "accuracy": accuracy})
        return trained >= budget  # True: stop

    runner.train(spec["budget_steps"], on_step_end=on_step_end)
    seconds = time.perf_counter() - start - paused[0]
    final = masked_accuracy(runner.masked_logits, held_out, batch_size=spec["batch_size"])
    curve.append({"seconds": seconds, "steps": len(done), "accuracy": final["accuracy"]})
    return {
        "budget_steps_done": len(done),
        "budget_seconds_used": seconds,
        "held_out": final,
        "curve": curve,
        "load_average": os.getloadavg()[0],
    }


def masked_accuracy(masked_logits, held_out, *, batch_size: int) -> dict:
    """Accuracy and loss over the weighted mask slots of the shared held-out windows.

    One routine for every contender: `masked_logits(token_ids, padding_mask,
    mask_positions)` returns `(B, M, V)` logits at the mask positions.
    """
    correct = loss = total = 0.0
    for start in range(0, len(held_out["token_ids"]), batch_size):
        part = slice(start, start + batch_size)
        logits = np.asarray(
            masked_logits(
                held_out["token_ids"][part], held_out["padding_mask"][part],
                held_out["mask_positions"][part],
            ),
            dtype=np.float64,
        )  # (B, M, V)
        labels, weights = held_out["labels"][part], held_out["weights"][part]  # (B, M)
        top = logits.max(axis=-1, keepdims=True)
        log_norm = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]
        picked = np.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
        loss += float(((log_norm - picked) * weights).sum())
        correct += float(((logits.argmax(axis=-1) == labels) * weights).sum())
        total += float(weights.sum())
    return {"accuracy": correct / total, "loss": loss / total, "masked_tokens": int(total)}


# ---------------------------------------------------------------- mlm


class MlmRunner:
    """`mlm`'s recipe through its library: cache, packed windows, compiled task."""

    def __init__(self, spec: dict):
        import keras

        from mlm.config import apply_overrides, load_recipe
        from mlm.data import token_cache, vocab

        self.spec = spec
        self.recipe = apply_overrides(load_recipe(spec["recipe"]), [
            f"train.batch_size={spec['batch_size']}",
            f"model.sequence_length={spec['sequence_length']}",
            *spec.get("mlm_overrides", []),
        ])
        keras.utils.set_random_seed(spec["seed"])
        self.tokenizer = vocab.build_tokenizer(
            Path(spec["vocab_path"]), family="wordpiece", lowercase=True
        )
        documents = Path(spec["train_documents"]).read_text().split("\n\n")
        self.cache = token_cache.load_or_build_cache(
            {"train": lambda: iter(documents), "held_out": list}, self.tokenizer,
            cache_root=Path(spec["work_dir"]) / "mlm_cache", key="train", progress=False,
        )
        self.tokens = self.cache.tokens("train")
        self.task = None

    def _dataset(self):
        from mlm.architectures import get_architecture
        from mlm.data.pipeline import TokenIds, training_dataset

        return training_dataset(
            self.tokens, sequence_length=self.spec["sequence_length"],
            batch_size=self.spec["batch_size"], masking=self.recipe.masking,
            ids=TokenIds.from_tokenizer(self.tokenizer), seed=self.spec["seed"],
            arch=get_architecture("bert"),
        )

    def pipeline_throughput(self, batches: int) -> dict:
        iterator = iter(self._dataset())
        next(iterator)  # start-up (tracing of the map functions) not counted
        start, tokens = time.perf_counter(), 0
        for _ in range(batches):
            x, _, _ = next(iterator)
            tokens += int(np.sum(x["padding_mask"]))
        return {"tokens_per_second": tokens / (time.perf_counter() - start)}

    def build(self, *, total_steps: int) -> None:
        import keras

        from mlm.architectures import get_architecture
        from mlm.config import apply_overrides
        from mlm.data.masking import resolve_masking
        from mlm.training import task as mlm_task

        recipe = apply_overrides(self.recipe, [f"train.steps={total_steps}"])
        keras.utils.set_random_seed(self.spec["seed"])
        self.task = mlm_task.build_task(
            recipe.model, arch=get_architecture("bert"), tokenizer=self.tokenizer,
            masking=resolve_masking(recipe.masking, evaluation=True),
        )
        self.task.preprocessor = None
        mlm_task.compile_task(self.task, recipe.train)
        self.iterator = iter(self._dataset())
        self.trained_tokens = self.trained_slots = 0

    def train(self, steps: int, *, on_step_end) -> None:
        import warnings

        for _ in range(steps):
            x, y, w = next(self.iterator)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Gradients do not exist")
                self.task.train_on_batch(x, y, sample_weight=w)
            self.trained_tokens += int(np.sum(x["padding_mask"]))
            self.trained_slots += int(np.prod(x["padding_mask"].shape))
            if on_step_end():
                return

    def padding_fraction(self) -> float:
        return 1.0 - self.trained_tokens / max(self.trained_slots, 1)

    def masked_logits(self, token_ids, padding_mask, mask_positions):
        return _keras_masked_logits(self.task, token_ids, padding_mask, mask_positions)


def _keras_masked_logits(task, token_ids, padding_mask, mask_positions):
    x = {
        "token_ids": token_ids, "padding_mask": padding_mask,
        "segment_ids": np.zeros_like(token_ids), "mask_positions": mask_positions,
    }
    return task.predict_on_batch(x)


def _keras_optimizer(spec: dict, total_steps: int):
    """The recipe's AdamW, warmup and linear decay, clipping (as `mlm.training.task`)."""
    import keras

    from mlm.training.schedule import WarmupLinearDecay

    opt = spec["optimizer"]
    optimizer = keras.optimizers.AdamW(
        learning_rate=WarmupLinearDecay(
            opt["learning_rate"], round(opt["warmup_fraction"] * total_steps), total_steps
        ),
        weight_decay=opt["weight_decay"], beta_1=opt["beta_1"], beta_2=opt["beta_2"],
        epsilon=opt["epsilon"], global_clipnorm=opt["clip_norm"],
    )
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


# ---------------------------------------------------------------- keras-hub guide


class KerasHubGuideRunner:
    """keras-hub's documented recipe: a preprocessor mapped over lines, `fit`."""

    def __init__(self, spec: dict):
        import keras_hub

        self.spec = spec
        self.tokenizer = keras_hub.models.BertTokenizer(
            vocabulary=spec["vocab_path"], lowercase=True
        )
        self.preprocessor = keras_hub.models.BertMaskedLMPreprocessor(
            tokenizer=self.tokenizer, sequence_length=spec["sequence_length"],
        )
        self.task = None

    def _dataset(self):
        import tensorflow as tf

        ds = tf.data.TextLineDataset(self.spec["train_lines"])
        ds = ds.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)
        ds = ds.shuffle(10_000, seed=self.spec["seed"]).repeat()
        ds = ds.batch(self.spec["batch_size"], drop_remainder=True)
        ds = ds.map(self.preprocessor, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    def pipeline_throughput(self, batches: int) -> dict:
        iterator = iter(self._dataset())
        next(iterator)
        start, tokens, slots = time.perf_counter(), 0, 0
        for _ in range(batches):
            x, _, _ = next(iterator)
            tokens += int(np.sum(x["padding_mask"]))
            slots += int(np.prod(x["padding_mask"].shape))
        self.measured_padding = 1.0 - tokens / slots
        return {"tokens_per_second": tokens / (time.perf_counter() - start)}

    def build(self, *, total_steps: int) -> None:
        import keras
        import keras_hub

        keras.utils.set_random_seed(self.spec["seed"])
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=self.tokenizer.vocabulary_size(), **self.spec["backbone"]
        )
        self.task = keras_hub.models.BertMaskedLM(backbone=backbone, preprocessor=None)
        # MaskedLM.compile's defaults (loss, weighted accuracy, jit "auto"),
        # with the shared optimizer instead of its default Adam(5e-5).
        self.task.compile(optimizer=_keras_optimizer(self.spec, total_steps))
        self.data = self._dataset()

    def train(self, steps: int, *, on_step_end) -> None:
        import warnings

        import keras

        task = self.task

        class StepEnd(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if on_step_end():
                    task.stop_training = True

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Gradients do not exist")
            task.fit(self.data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[StepEnd()])

    def padding_fraction(self) -> float:
        return self.measured_padding

    def masked_logits(self, token_ids, padding_mask, mask_positions):
        return _keras_masked_logits(self.task, token_ids, padding_mask, mask_positions)


# ---------------------------------------------------------------- HuggingFace


class HuggingFaceRunner:
    """transformers' run_mlm.py data recipe with a plain PyTorch AdamW loop."""

    def __init__(self, spec: dict):
        import torch
        import transformers

        self.spec = spec
        torch.manual_seed(spec["seed"])
        # The folder holding vocab.txt (the keyword for a vocabulary file
        # changed between transformers 4 and 5; from_pretrained takes both).
        self.tokenizer = transformers.BertTokenizerFast.from_pretrained(
            str(Path(spec["vocab_path"]).parent), do_lower_case=True
        )
        self.collator = transformers.DataCollatorForLanguageModeling(
            tokenizer=self.tokenizer, mlm_probability=0.15
        )
        start = time.perf_counter()
        self.chunks = self._group_texts()
        self.prepare_seconds = time.perf_counter() - start
        self.model = None

    def _group_texts(self) -> list[dict]:
        """run_mlm.py without --line_by_line: tokenize lines, concatenate, chunk.

        As there, lines are tokenized with [CLS]/[SEP] and concatenated per
        batch of 1,000 lines; each batch's remainder is dropped.
        """
        length = self.spec["sequence_length"]
        lines = [
            line for line in Path(self.spec["train_lines"]).read_text().splitlines()
            if line.strip()
        ]
        chunks = []
        for start in range(0, len(lines), 1000):
            encoded = self.tokenizer(lines[start : start + 1000], return_special_tokens_mask=True)
            ids = [i for row in encoded["input_ids"] for i in row]
            special = [s for row in encoded["special_tokens_mask"] for s in row]
            for begin in range(0, len(ids) - length + 1, length):
                chunks.append({
                    "input_ids": ids[begin : begin + length],
                    "special_tokens_mask": special[begin : begin + length],
                    "attention_mask": [1] * length,
                    "token_type_ids": [0] * length,
                })
        return chunks

    def _loader(self):
        import torch

        generator = torch.Generator().manual_seed(self.spec["seed"])
        return torch.utils.data.DataLoader(
            self.chunks, batch_size=self.spec["batch_size"], shuffle=True,
            collate_fn=self.collator, drop_last=True, generator=generator,
        )

    def _batches(self):
        while True:
            yield from self._loader()

    def pipeline_throughput(self, batches: int) -> dict:
        iterator = self._batches()
        next(iterator)
        start, tokens = time.perf_counter(), 0
        for _ in range(batches):
            tokens += int(next(iterator)["attention_mask"].sum())
        return {
            "tokens_per_second": tokens / (time.perf_counter() - start),
            "tokenize_and_group_seconds": self.prepare_seconds,
        }

    def build(self, *, total_steps: int) -> None:
        import torch
        import transformers

        torch.manual_seed(self.spec["seed"])
        shape = self.spec["backbone"]
        config = transformers.BertConfig(
            vocab_size=len(self.tokenizer), hidden_size=shape["hidden_dim"],
            num_hidden_layers=shape["num_layers"], num_attention_heads=shape["num_heads"],
            intermediate_size=shape["intermediate_dim"],
            max_position_embeddings=shape["max_sequence_length"],
            hidden_dropout_prob=shape["dropout"], attention_probs_dropout_prob=shape["dropout"],
        )
        self.model = transformers.BertForMaskedLM(config)
        self.model.train()
        opt = self.spec["optimizer"]
        no_decay = ("bias", "LayerNorm.weight")
        groups = [
            {"params": [p for n, p in self.model.named_parameters()
                        if not any(k in n for k in no_decay)],
             "weight_decay": opt["weight_decay"]},
            {"params": [p for n, p in self.model.named_parameters()
                        if any(k in n for k in no_decay)],
             "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(
            groups, lr=opt["learning_rate"], betas=(opt["beta_1"], opt["beta_2"]),
            eps=opt["epsilon"],
        )
        self.schedule = transformers.get_linear_schedule_with_warmup(
            self.optimizer, round(opt["warmup_fraction"] * total_steps), total_steps
        )
        self.iterator = self._batches()
        self.trained_tokens = self.trained_slots = 0

    def train(self, steps: int, *, on_step_end) -> None:
        import torch

        for _ in range(steps):
            batch = next(self.iterator)
            loss = self.model(**batch).loss
            loss.backward()
            clip = self.spec["optimizer"]["clip_norm"]
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
            self.schedule.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.trained_tokens += int(batch["attention_mask"].sum())
            self.trained_slots += batch["attention_mask"].numel()
            if on_step_end():
                return

    def padding_fraction(self) -> float:
        return 1.0 - self.trained_tokens / max(self.trained_slots, 1)

    def masked_logits(self, token_ids, padding_mask, mask_positions):
        import torch

        self.model.eval()
        with torch.no_grad():
            logits = self.model(
                input_ids=torch.as_tensor(token_ids, dtype=torch.long),
                attention_mask=torch.as_tensor(padding_mask, dtype=torch.long),
            ).logits  # (B, L, V)
            index = torch.as_tensor(mask_positions, dtype=torch.long)
            picked = torch.gather(logits, 1, index[..., None].expand(-1, -1, logits.shape[-1]))
        return picked.numpy()  # (B, M, V)


CONTENDERS = {
    "mlm": MlmRunner,
    "keras_hub_guide": KerasHubGuideRunner,
    "hf": HuggingFaceRunner,
}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
