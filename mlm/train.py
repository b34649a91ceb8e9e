"""Build, compile and train a keras-hub MaskedLM task."""

import contextlib
import json
import math
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import keras
import numpy as np

from mlm import checkpoints, distributed, precision
from mlm.architectures import Architecture
from mlm.config import MaskingConfig, ModelConfig, Recipe, TrainConfig
from mlm.errors import MlmError, RunStopped
from mlm.evaluate import evaluate_tokens
from mlm.export import TensorBoardLog
from mlm.faults import fault_point
from mlm.pipeline import TokenIds, max_selections, training_dataset
from mlm.precision import StepSettings
from mlm.progress import Progress


@keras.saving.register_keras_serializable(package="mlm")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak`, then linear decay to 0 at `total_steps`.

    Args:
        peak: learning rate reached at the end of warmup.
        warmup_steps: steps of linear warmup.
        total_steps: step at which the rate reaches 0.
    """

    def __init__(self, peak, warmup_steps, total_steps):
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warmup = keras.ops.cast(max(self.warmup_steps, 1), "float32")
        decay = keras.ops.cast(max(self.total_steps - self.warmup_steps, 1), "float32")
        rising = step / warmup
        falling = (self.total_steps - step) / decay
        rate = keras.ops.where(step < self.warmup_steps, rising, falling)
        return self.peak * keras.ops.clip(rate, 0.0, 1.0)

    def get_config(self):
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }


def make_deterministic(seed: int) -> None:
    """Seeds Python, NumPy and the backend, and makes TensorFlow ops deterministic.

    With it (`train.deterministic`), two runs of a recipe, or a run killed and
    resumed, end with bit-identical weights on the same machine.
    """
    keras.utils.set_random_seed(seed)
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def build_task(config: ModelConfig, *, arch: Architecture, tokenizer, masking: MaskingConfig):
    """A fresh MaskedLM task: backbone from the recipe, preprocessor from `tokenizer`."""
    try:
        backbone = arch.cls("backbone")(
            vocabulary_size=tokenizer.vocabulary_size(), **config.backbone
        )
    except TypeError as e:
        raise MlmError(
            f"bad model.backbone fields for {arch.backbone} ({e}); fix the recipe."
        ) from None
    preprocessor = build_preprocessor(
        arch, tokenizer=tokenizer, sequence_length=config.sequence_length, masking=masking
    )
    return arch.cls("masked_lm")(backbone=backbone, preprocessor=preprocessor)


def build_preprocessor(arch: Architecture, *, tokenizer, sequence_length: int, masking):
    """The keras-hub preprocessor saved with the preset, set to the run's masking."""
    return arch.cls("preprocessor")(
        tokenizer=tokenizer,
        sequence_length=sequence_length,
        mask_selection_rate=masking.selection_rate,
        mask_selection_length=max_selections(sequence_length, masking.selection_rate),
        mask_token_rate=masking.mask_token_rate,
        random_token_rate=masking.random_token_rate,
    )


def compile_task(task, config: TrainConfig, *, settings: StepSettings | None = None) -> None:
    """AdamW with warmup and linear decay, clipping, masked loss and metrics.

    `settings` (precision and XLA) default to the first candidate of the
    config's (`mlm.precision.candidates`): what it sets, or fp32 with XLA on
    a CPU for "auto", which `mlm.precision.choose_step_settings` may change
    before training.
    """
    backend = keras.backend.backend()
    settings = settings or precision.candidates(
        config.mixed_precision, config.jit_compile, backend=backend,
        accelerator=precision.detect_accelerator(backend),
    )[0]
    precision.set_precision(task, settings.precision)
    optimizer = keras.optimizers.AdamW(
        learning_rate=WarmupLinearDecay(
            config.learning_rate, round(config.warmup_fraction * config.steps), config.steps
        ),
        weight_decay=config.weight_decay,
        beta_1=config.beta_1,
        beta_2=config.beta_2,
        epsilon=config.epsilon,
        global_clipnorm=config.clip_norm or None,
    )
    # As in BERT: no weight decay on biases and LayerNorm scales/offsets.
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    task.compile(
        optimizer=optimizer,
        # Mean over masked tokens only (weights are 0 on unused mask slots).
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"
        ),
        # Held-out loss and accuracy are computed exactly in mlm.evaluate; in
        # training only the per-batch accuracy is tracked (weighted by masks).
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=settings.jit_compile,
    )


class MetricsLog:
    """Appends one JSON object per line to `run_dir/metrics.jsonl`.

    Each record is stamped with its wall-clock `time` (Unix seconds) and, when
    `tensorboard_dir` is given, also written there as TensorBoard scalars.
    With `record=False` (processes other than 0 of a distributed run) it
    neither writes nor prints.
    """

    def __init__(self, path: Path, *, quiet: bool, tensorboard_dir: Path | None = None,
                 record: bool = True):
        self.path = Path(path)
        self.quiet = quiet or not record
        self.record = record
        self.tensorboard = TensorBoardLog(tensorboard_dir) if tensorboard_dir and record else None
        self._bar = None  # the live progress line, which messages must not garble

    def write(self, record: dict) -> None:
        if not self.record:
            return
        record = {**record, "time": record.get("time", time.time())}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.write(record)

    def say(self, message: str) -> None:
        if self._bar is not None:
            self._bar.say(message)
        elif not self.quiet:
            print(message, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def progress(self, label: str, **kwargs):
        """A `mlm.progress.Progress` line (silent when quiet) that `say` prints above."""
        self._bar = Progress(label, enabled=not self.quiet, **kwargs)
        try:
            yield self._bar
        except BaseException:
            self._bar.clear()
            raise
        else:
            self._bar.finish()
        finally:
            self._bar = None

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


def train(
    task,
    *,
    preprocessor,
    recipe: Recipe,
    arch: Architecture,
    train_tokens: np.ndarray,
    held_out_tokens: np.ndarray,
    ids: TokenIds,
    run_dir: Path,
    start_step: int,
    log: MetricsLog,
    topology: distributed.Topology | None = None,
    settings_cache: Path | None = None,
) -> dict:
    """Runs steps `start_step..recipe.train.steps`, evaluating and checkpointing.

    `task.preprocessor` must be None: batches arrive preprocessed and masked
    from `mlm.pipeline`; `preprocessor` is saved with every checkpoint. In a
    distributed run (`topology`) each process feeds its slice of every batch
    and only process 0 writes checkpoints. "auto" step settings are resolved
    first (`mlm.precision.choose_step_settings`, cached in `settings_cache`).

    Returns:
        The held-out evaluations at the start (step 0 only) and at the end, and
        the training throughput in non-padding tokens per second.
    """
    cfg, model = recipe.train, recipe.model
    topology = topology or distributed.Topology()
    topology.check_batch_size(cfg.batch_size)
    data = training_dataset(
        train_tokens, sequence_length=model.sequence_length, batch_size=cfg.batch_size,
        masking=recipe.masking, ids=ids, seed=cfg.seed, start_step=start_step,
        inputs=arch.inputs, process_index=topology.process_index,
        process_count=topology.process_count,
    )

    chosen = precision.choose_step_settings(
        task, next(distributed.host_batches(data.take(1), backend=keras.backend.backend())),
        mixed_precision=cfg.mixed_precision, jit_compile=cfg.jit_compile,
        steps=cfg.steps - start_step, run_dir=run_dir, cache_dir=settings_cache,
        write=topology.is_chief, say=log.say, multi_process=topology.process_count > 1,
    ).chosen

    def evaluate(step):
        result = evaluate_tokens(
            task, held_out_tokens, sequence_length=model.sequence_length, masking=recipe.masking,
            ids=ids, batch_size=cfg.batch_size, seed=cfg.seed, max_batches=cfg.eval_batches,
            inputs=arch.inputs,
        )
        log.write({"step": step, "split": "held_out", **result})
        log.say(
            f"step {step}: held-out masked accuracy {result['accuracy']:.4f}, "
            f"loss {result['loss']:.4f}, perplexity {result['perplexity']:.1f}"
        )
        return result

    if start_step >= cfg.steps:
        log.say(f"the run is already at step {start_step} of {cfg.steps}; pass --steps to extend")
    start = result = evaluate(start_step) if start_step == 0 else {}
    iterator = distributed.host_batches(data, backend=keras.backend.backend())
    window, throughput, run_start = _LogWindow(), [], time.perf_counter()
    # On a terminal, a line redrawn every step; the log lines are the plain-text progress.
    progress = log.progress("training", total=cfg.steps, initial=start_step, unit="steps",
                            plain_every=None)
    with _stop_requests() as stop, progress as bar:
        for step in range(start_step + 1, cfg.steps + 1):
            x, y, w = next(iterator)
            fault_point("train_step", step=step)
            with warnings.catch_warnings():
                # The backbone's pooler (for classification) gets no gradient from the
                # MLM loss, and keras warns about it when tracing. Expected: not shown.
                warnings.filterwarnings("ignore", message="Gradients do not exist for variables")
                logs = task.train_on_batch(x, y, sample_weight=w, return_dict=True)
            if not math.isfinite(logs["loss"]):
                raise MlmError(
                    f"the loss became {logs['loss']} at step {step}; training stopped without "
                    f"a checkpoint of that step ({checkpoints.last_checkpoint_note(run_dir)}). "
                    f"Lower train.learning_rate and train again."
                )
            # Sums over the global batch (each process holds its slice), and the stop
            # requests of all processes, so that every process stops after the same step.
            # Tokens are counted from ids: FNet and RoFormerV2 take no padding mask.
            masked, tokens, stops = distributed.total(
                topology, np.sum(w), np.sum(np.asarray(x["token_ids"]) != ids.pad_id), len(stop))
            window.add(logs, masked=masked, tokens=tokens)
            bar.update(step)
            if step % cfg.log_every == 0 or step == cfg.steps:
                record = window.record(step, learning_rate=task.optimizer.learning_rate)
                throughput.append((window.tokens, window.seconds()))
                _log_train(log, record, steps=cfg.steps, start_step=start_step, run_start=run_start)
                window = _LogWindow()
            with window.paused():
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    result = evaluate(step)
                if topology.is_chief and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                    checkpoints.save_checkpoint(
                        task, preprocessor=preprocessor, run_dir=run_dir, step=step,
                        state={"recipe": recipe.name}, keep=cfg.keep_checkpoints,
                    )
            if stops:
                _stop(task, preprocessor=preprocessor, run_dir=run_dir, step=step, recipe=recipe,
                      signum=stop[0] if stop else signal.SIGTERM, log=log, topology=topology)
    # The first window includes tracing and XLA compilation: leave it out when we can.
    steady = throughput[1:] or throughput
    return {
        "held_out_start": start,
        "held_out": result,
        "step_settings": chosen.label(),
        "train_tokens_per_second": (
            sum(t for t, _ in steady) / max(sum(s for _, s in steady), 1e-9) if steady else None
        ),
    }


@contextlib.contextmanager
def _stop_requests():
    """Turns SIGTERM and SIGINT into a request the loop honours after the step.

    Yields a list that receives the signal numbers. A second signal stops at
    once (KeyboardInterrupt). Only the main thread may install handlers;
    elsewhere the list stays empty.
    """
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum, frame):
        requested.append(signum)
        if len(requested) > 1:
            raise KeyboardInterrupt

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _stop(task, *, preprocessor, run_dir, step, recipe, signum, log, topology) -> None:
    """Checkpoints `step` (unless just done; process 0 only) and raises `RunStopped`."""
    if topology.is_chief and step not in checkpoints.list_checkpoints(run_dir):
        checkpoints.save_checkpoint(
            task, preprocessor=preprocessor, run_dir=run_dir, step=step,
            state={"recipe": recipe.name}, keep=recipe.train.keep_checkpoints,
        )
    distributed.barrier(topology, "stopped")  # the others exit once it is written
    name = signal.Signals(signum).name
    log.say(f"{name} received: stopped after step {step} and wrote a checkpoint")
    raise RunStopped(
        f"stopped by {name} at step {step} of {recipe.train.steps}; resume with: "
        f"mlm pretrain --run-dir {run_dir} --resume",
        signum=signum,
    )


class _LogWindow:
    """Training metrics since the last log line, averaged over masked tokens.

    `train_on_batch` resets keras metrics on every call, so its logs hold one
    batch; weighting each batch by its masked-token count gives the exact
    window average. Time spent evaluating or checkpointing is not counted.
    """

    def __init__(self):
        self.tokens = 0  # non-padding tokens trained on
        self.masked = self.loss_sum = self.correct = self.excluded = 0.0
        self.start = time.perf_counter()

    def add(self, logs: dict, *, masked: int, tokens: int) -> None:
        """Adds one step: its logs, masked-token and non-padding-token counts."""
        self.masked += masked
        self.loss_sum += logs["loss"] * masked
        self.correct += logs["accuracy"] * masked
        self.tokens += tokens

    def seconds(self) -> float:
        return time.perf_counter() - self.start - self.excluded

    @contextlib.contextmanager
    def paused(self):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - began

    def record(self, step: int, *, learning_rate) -> dict:
        masked = max(self.masked, 1.0)
        return {
            "step": step,
            "split": "train",
            "loss": self.loss_sum / masked,
            "accuracy": self.correct / masked,
            "learning_rate": float(keras.ops.convert_to_numpy(learning_rate)),
            "tokens_per_second": self.tokens / max(self.seconds(), 1e-9),
        }


def _log_train(log, record: dict, *, steps: int, start_step: int, run_start: float) -> None:
    log.write(record)
    step = record["step"]
    eta = (time.perf_counter() - run_start) / (step - start_step) * (steps - step)
    log.say(
        f"step {step}/{steps}: loss {record['loss']:.4f}, masked accuracy "
        f"{record['accuracy']:.4f}, lr {record['learning_rate']:.2e}, "
        f"{record['tokens_per_second']:,.0f} tokens/s, ETA {_duration(eta)}"
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
