"""The training loop: `train` runs the steps, evaluates, logs, checkpoints, stops on a signal."""

import contextlib
import dataclasses
import math
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import keras

from mlm.data.pipeline import padding_fraction, training_dataset
from mlm.errors import MlmError, RunStopped
from mlm.evaluate import evaluate_tokens
from mlm.faults import fault_point
from mlm.progress import format_duration
from mlm.training import distributed, schedule, step_settings
from mlm.training.plan import RunPlan

if TYPE_CHECKING:  # the caller passes the log in; training does not import it
    from mlm.run.log import MetricsLog


class Checkpoints(Protocol):
    """What the loop needs of the run's checkpoints (`mlm.run.checkpoints.RunCheckpoints`
    in a run): the loop imports nothing of `mlm.run`."""

    step_settings: Path  # the run's record of the measured step settings
    resume_command: str  # the command that resumes the run, for the stop message

    def save(self, task, *, step: int, state: dict) -> object: ...

    def steps(self) -> list[int]: ...

    def state(self, step: int) -> dict: ...

    def note(self) -> str: ...

    def write_plan(self, plan: RunPlan) -> None: ...


def train(
    task,
    *,
    plan: RunPlan,
    tokens: dict,
    start_step: int,
    log: "MetricsLog",
    checkpoints: Checkpoints,
    topology: distributed.Topology | None = None,
    settings_cache: Path | None = None,
    word_labels: dict | None = None,
    own_share: bool = False,
) -> dict:
    """Runs steps `start_step..plan.steps`, evaluating and checkpointing.

    `task.preprocessor` must be None: batches arrive preprocessed and masked
    from `mlm.data.pipeline`. `tokens` (split -> token array) are the token
    cache's `train` and `held_out` splits; `word_labels` (split -> array or
    None) a word segmenter's labels of them. In a distributed run
    (`topology`) each process feeds its slice of every batch and only process
    0 writes checkpoints; with `own_share`, `tokens["train"]` is this process's
    own share of the documents (`mlm prepare --hosts`), of the same length on
    every process, and it reads its part of every batch from it. "auto" step
    settings are resolved first (`mlm.training.step_settings.choose_step_settings`,
    cached in `settings_cache`).

    Returns:
        The held-out evaluations at the start (step 0 only) and at the end, the
        training throughput in non-padding tokens per second, and the plan with
        its step settings.
    """
    budget = plan.budget_seconds
    # What a budget run's checkpoint recorded: its training time, and the steps where its
    # phases ended (by time).
    resumed = checkpoints.state(start_step) if budget and start_step else {}
    trained = float(resumed.get("trained_seconds", 0.0))
    segments = schedule.with_cuts(plan.segments, [int(s) for s in resumed.get("phase_ends", [])])
    labels = word_labels or {}
    topology = topology or distributed.Topology()
    data_for = _batches(plan, tokens["train"], labels=labels.get("train"),
                        start_step=start_step, topology=topology, own_share=own_share)
    first = segments[schedule.segment_at(segments, start_step)]
    data = data_for(first)
    # Before the probe, whose traced train function the loop then reuses.
    task.steps_per_execution = plan.strides(start_step)[1]
    plan = _with_measured_settings(
        task, plan, batch=next(distributed.host_batches(data.take(1),
                                                        backend=keras.backend.backend())),
        start_step=start_step, trained=trained, checkpoints=checkpoints,
        settings_cache=settings_cache, log=log, topology=topology)
    evaluate = _evaluator(task, plan, tokens["held_out"], labels=labels.get("held_out"),
                          log=log, topology=topology)
    if budget is not None and trained >= budget:
        log.say(f"the run has trained its budget of {format_duration(budget)}; "
                f"raise train.budget to extend")
    elif start_step >= plan.steps:
        log.say(f"the run is already at step {start_step} of {plan.steps}; pass --steps to extend")
    start = evaluate(start_step) if start_step == 0 else {}

    def tokens_per_step(segment: schedule.Segment) -> float:
        length = segment.sequence_length
        return segment.batch_size * length * (1 - padding_fraction(len(tokens["train"]), length))

    loop = _Loop(task, plan=plan, segments=segments, checkpoints=checkpoints,
                 start_step=start_step, log=log, topology=topology, evaluate=evaluate,
                 trained=trained, tokens_per_step=tokens_per_step)
    # On a terminal, a line redrawn every step; the log lines are the plain-text progress.
    progress = log.progress("training", total=None if budget else plan.steps,
                            initial=start_step, unit="steps", plain_every=None)
    with _stop_requests() as stop, progress as bar:
        loop.run(lambda segment: data if segment is first else data_for(segment),
                 stop=stop, bar=bar)
    return _summary(loop, plan=plan, start=start)


def _batches(plan: RunPlan, train_tokens, *, labels, start_step: int,
             topology: distributed.Topology, own_share: bool):
    """`segment -> its training batches from start_step (or its start) on`."""
    def data_for(segment: schedule.Segment):
        # Each later segment shuffles and masks from its own seed; the first keeps the
        # run's, so a run without phases has the batches it always had.
        return training_dataset(
            train_tokens, sequence_length=segment.sequence_length,
            batch_size=segment.batch_size, masking=plan.masking, ids=plan.ids,
            seed=plan.train.seed + _SEGMENT_SEED_STRIDE * segment.index,
            start_step=max(start_step - segment.start, 0), arch=plan.arch,
            process_index=topology.process_index, process_count=topology.process_count,
            word_labels=labels, own_share=own_share,
            step_offset=segment.start, total_steps=plan.steps,
        )

    return data_for


def _with_measured_settings(task, plan: RunPlan, *, batch, start_step: int, trained: float,
                            checkpoints: Checkpoints, settings_cache, log,
                            topology: distributed.Topology) -> RunPlan:
    """The plan with the train step's settings ("auto" measured on `batch`), recorded."""
    cfg, budget = plan.train, plan.budget_seconds
    chosen = step_settings.choose_step_settings(
        task, batch, mixed_precision=cfg.mixed_precision, jit_compile=cfg.jit_compile,
        steps=plan.steps - start_step, record=checkpoints.step_settings, cache_dir=settings_cache,
        max_seconds=None if budget is None else 0.1 * max(budget - trained, 0.0),
        write=topology.writes_checkpoints, say=log.say,
        multi_process=topology.process_count > 1,
    ).chosen
    plan = plan.with_settings(chosen)
    if topology.writes_checkpoints:
        checkpoints.write_plan(plan)
    return plan


def _evaluator(task, plan: RunPlan, held_out_tokens, *, labels, log,
               topology: distributed.Topology):
    """`step -> held-out metrics`, logged: the plan's evaluation masking and sample,
    split between the processes of a distributed run."""
    cfg = plan.train

    def evaluate(step):
        result = evaluate_tokens(
            task, held_out_tokens, sequence_length=plan.recipe.model.sequence_length,
            masking=plan.eval_masking, ids=plan.ids, batch_size=cfg.batch_size, seed=cfg.seed,
            max_batches=cfg.eval_batches, arch=plan.arch, word_labels=labels,
            topology=topology,
        )
        log.write({"step": step, "split": "held_out", **result})
        log.say(
            f"step {step}: held-out masked accuracy {result['accuracy']:.4f}, "
            f"loss {result['loss']:.4f}, perplexity {result['perplexity']:.1f}"
        )
        return result

    return evaluate


def _summary(loop: "_Loop", *, plan: RunPlan, start: dict) -> dict:
    """What `train` returns: the evaluations, steps, time and throughput of the session."""
    # The first window includes tracing and XLA compilation: leave it out when we can.
    steady = loop.throughput[1:] or loop.throughput
    return {
        "steps": loop.step,
        "window_tokens": schedule.window_tokens(loop.segments, loop.step),
        **({"trained_seconds": round(loop.trained, 1)} if plan.budget_seconds else {}),
        "held_out_start": start,
        "held_out": loop.held_out or start,
        "step_settings": plan.settings.label(),
        "train_tokens_per_second": (
            sum(t for t, _ in steady) / max(sum(s for _, s in steady), 1e-9) if steady else None
        ),
        "plan": plan,
    }


# Seeds of later segments: the run's seed plus this times the segment's index.
_SEGMENT_SEED_STRIDE = 1_000_003


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


def _stop(task, *, plan: RunPlan, checkpoints: Checkpoints, step, signum, log, topology,
          state: dict) -> None:
    """Checkpoints `step` (unless just done; the processes that write checkpoints) and
    raises `RunStopped`."""
    if topology.writes_checkpoints and step not in checkpoints.steps():
        checkpoints.save(task, step=step, state=state)
    distributed.barrier(topology, "stopped")  # the others exit once it is written
    name = signal.Signals(signum).name
    log.say(f"{name} received: stopped after step {step} and wrote a checkpoint")
    raise RunStopped(
        f"stopped by {name} at step {step}"
        f"{'' if plan.budget_seconds else f' of {plan.steps}'}; resume with: "
        f"{checkpoints.resume_command}",
        signum=signum,
    )


class _Loop(keras.callbacks.Callback):
    """Training as one `fit` call: several steps per device call, no host round trip per step.

    Metrics (loss, masked accuracy, masked-token count) accumulate on the
    device and are read at the end of each device call (stop requests, NaN,
    progress) and of each epoch (log records, evaluation, checkpoints; see
    `mlm.training.plan.strides`). What the hand-written loop did per step still
    holds: the batches of step s are the same whatever the stride, a stop
    request (SIGTERM, SIGINT, summed over processes so that all stop after the
    same step) is honoured after the current device call with a checkpoint,
    the fault points are reached once per step, and a NaN loss stops the run
    naming the steps of the call.
    """

    def __init__(self, task, *, plan: RunPlan, segments, checkpoints: Checkpoints, start_step,
                 log, topology, evaluate, tokens_per_step, trained: float = 0.0):
        super().__init__()
        # With a budget: its seconds, the training time so far, and the schedule to advance.
        budget = plan.budget_seconds
        self.budget, self.trained = budget, trained
        rate = getattr(task.optimizer, "_learning_rate", None)  # the learning-rate schedule
        self.progress = getattr(rate, "progress", None) if budget else None
        self.final = plan.steps  # the last step, once a budget has set it
        # The step at which the train function was last traced (the session's start, or a
        # later segment's), and whether its first call is still to come.
        self.traced_at, self.first_call = start_step, True
        # The first call after a trace, compile included, until the second's time replaces it:
        # the schedule's progress counts it meanwhile, so that the second call does not
        # train at the rate of progress 0 (the budget's end still waits for the measure).
        # Compilation can take longer than a short budget (seconds on a slow CPU), so the
        # guess is capped at half the warmup: never at the end of the decay (rate 0), never
        # past the peak before anything is measured.
        self.provisional = 0.0
        self.provisional_cap = (
            0.5 * budget * rate.warmup_fraction if self.progress is not None else 0.0)
        self.task, self.plan, self.checkpoints = task, plan, checkpoints
        self.log, self.topology, self.evaluate = log, topology, evaluate
        self.start_step = self.step = start_step
        # A budget run's phases get their steps as they end by time (`_cut_phase`).
        self.segments, self.tokens_for = list(segments), tokens_per_step
        self.segment = schedule.segment_at(self.segments, start_step)
        self.tokens_per_step = tokens_per_step(self.segments[self.segment])
        self.held_out, self.throughput = {}, []
        self.epoch, self.per_call = plan.strides(start_step)
        self.window = _LogWindow()

    def run(self, data_for, *, stop: list, bar) -> None:
        """Trains every segment left; `data_for(segment)` gives its batches."""
        self.stop_signals, self.bar = stop, bar
        spent = self.budget is not None and self.trained >= self.budget
        if self.step >= self.plan.steps or spent:
            return
        self.run_start = time.perf_counter()
        self.task.steps_per_execution = self.per_call
        with warnings.catch_warnings():
            # The backbone's pooler (for classification) gets no gradient from the
            # MLM loss, and keras warns about it when tracing. Expected: not shown.
            warnings.filterwarnings("ignore", message="Gradients do not exist for variables")
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            while self.segment < len(self.segments):
                segment = self.segments[self.segment]
                if len(self.segments) > 1:
                    self.log.say(f"{_steps_of(segment, self.step, self.budget)}: windows of "
                                 f"{segment.sequence_length} tokens in batches of "
                                 f"{segment.batch_size}")
                self.tokens_per_step = self.tokens_for(segment)
                if segment.start > self.start_step:
                    # A fresh trace for the segment's shapes: a function traced for
                    # earlier shapes generalises them (tf.function's relaxed shapes),
                    # which changes float results in the last bits, and a resumed run
                    # traces each segment it starts in afresh.
                    self.task.train_function = None
                    self.traced_at, self.first_call = self.step, True
                # On JAX keras turns each process's numpy batches into global arrays.
                self.task.fit(data_for(segment), steps_per_epoch=self.epoch,
                              epochs=(segment.end - self.step) // self.epoch,
                              callbacks=[self], verbose=0, shuffle=False)
                if self.stop_signals_total or self.step == self.final:
                    break
                self.segment += 1
        if self.stop_signals_total:
            _stop(self.task, plan=self.plan, checkpoints=self.checkpoints, step=self.step,
                  signum=self.stop_signal, log=self.log, topology=self.topology,
                  state=self.state())

    def state(self) -> dict:
        """What a checkpoint records besides the weights: the recipe, the time trained."""
        ends = [s.end for s in self.segments[:-1] if s.end < self.plan.steps]
        return {"recipe": self.plan.recipe.name,
                **({"trained_seconds": self.trained} if self.budget else {}),
                **({"phase_ends": ends} if self.budget and len(self.segments) > 1 else {})}

    def _cut_phase(self) -> None:
        """Ends a budget run's phase at this step once the run has trained its share of
        the budget (`Segment.until`); `run` goes on with the next."""
        if self.budget is None or self.segment >= len(self.segments) - 1:
            return
        segment, following = self.segments[self.segment:self.segment + 2]
        if self.trained < segment.until * self.budget:
            return
        self.segments[self.segment] = dataclasses.replace(segment, end=self.step)
        self.segments[self.segment + 1] = dataclasses.replace(following, start=self.step)
        self.task.stop_training = True

    stop_signals_total = 0

    @property
    def stop_signal(self) -> int:
        return self.stop_signals[0] if self.stop_signals else signal.SIGTERM

    def on_train_batch_begin(self, batch, logs=None):
        for step in range(self.step + 1, self.step + self.per_call + 1):
            fault_point("train_step", step=step)
        if self.progress is not None:
            self.progress.assign(min((self.trained + self.provisional) / self.budget, 1.0))
        self.call_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        # Between a call's begin and end: the device steps and their input, nothing else.
        # The first call of a session or of a later segment also traces and compiles the
        # step: it counts as long as the second (the same number of steps) once that is
        # known, so a budget's phases do not pay for their compilation.
        seconds = time.perf_counter() - self.call_start
        if self.first_call:
            self.first_call, self.provisional = False, min(seconds, self.provisional_cap)
        else:
            self.trained += seconds * (2 if self.step == self.traced_at + self.per_call else 1)
            self.provisional = 0.0
        first, self.step = self.step + 1, self.step + self.per_call
        loss = float(logs["loss"])
        if not math.isfinite(loss):
            where = f"at step {first}" if first == self.step else f"in steps {first}-{self.step}"
            raise MlmError(
                f"the loss became {loss} {where}; training stopped "
                f"without a checkpoint of {'that step' if first == self.step else 'those steps'} "
                f"({self.checkpoints.note()}). Lower "
                f"train.learning_rate and train again."
            )
        self.bar.update(self.step)
        # Every process sees the sum of the requests, so all stop after the same step.
        (self.stop_signals_total,) = distributed.total(self.topology, len(self.stop_signals))
        if self.stop_signals_total:
            self.task.stop_training = True
        elif self.budget is not None and self.trained >= self.budget:
            self.final = self.step  # the budget is spent: this step ends the run
            self.task.stop_training = True

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = self.step

    def on_epoch_end(self, epoch, logs=None):
        cfg = self.plan.train
        final = self.step == self.final
        if self.task.stop_training and self.step % self.epoch and not final:
            return  # stopped mid-epoch by a signal: `run` checkpoints it
        if not final:
            self._cut_phase()
        steps = self.step - self.epoch_start  # fewer than an epoch when a budget ends it
        self.window.add(logs, steps=steps, tokens=steps * self.tokens_per_step)
        if self.step % cfg.log_every == 0 or final:
            record = self.window.record(self.step, learning_rate=self.task.optimizer.learning_rate)
            self.throughput.append((self.window.tokens, self.window.seconds()))
            if self.budget is None:
                _log_train(self.log, record, steps=self.plan.steps, start_step=self.start_step,
                           run_start=self.run_start)
            else:
                _log_train(self.log, {**record, "trained_seconds": round(self.trained, 2)},
                           budget=self.budget)
            self.window = _LogWindow()
        with self.window.paused():
            if self.step % cfg.eval_every == 0 or final:
                self.held_out = self.evaluate(self.step)
            if self.topology.writes_checkpoints and (
                    self.step % cfg.checkpoint_every == 0 or final):
                self.checkpoints.save(self.task, step=self.step, state=self.state())


def _steps_of(segment: schedule.Segment, step: int, budget: float | None) -> str:
    """The steps a segment trains from `step` on, for the log line that starts it."""
    first = max(segment.start, step) + 1
    if budget is None:
        return f"steps {first}-{segment.end}"
    if segment.until >= 1.0:
        return f"from step {first} to the end of the budget"
    return f"from step {first} to {segment.until:.0%} of the budget"


class _LogWindow:
    """Training metrics since the last log line.

    Each epoch of `fit` brings its metrics: the mean of its steps' losses
    (each the mean over the step's masked tokens), its masked accuracy and
    masked-token count. Epochs are weighted by steps (loss) and masked tokens
    (accuracy). Time spent evaluating or checkpointing is not counted.
    """

    def __init__(self):
        self.tokens = 0.0  # non-padding tokens trained on
        self.steps = self.masked = self.loss_sum = self.correct = self.excluded = 0.0
        self.start = time.perf_counter()

    def add(self, logs: dict, *, steps: int, tokens: float) -> None:
        """Adds one epoch: its logs, step count and non-padding-token count."""
        masked = float(logs["masked_tokens"])
        self.steps += steps
        self.loss_sum += float(logs["loss"]) * steps
        self.masked += masked
        self.correct += float(logs["accuracy"]) * masked
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
        return {
            "step": step,
            "split": "train",
            "loss": self.loss_sum / max(self.steps, 1.0),
            "accuracy": self.correct / max(self.masked, 1.0),
            "learning_rate": float(keras.ops.convert_to_numpy(learning_rate)),
            "tokens_per_second": self.tokens / max(self.seconds(), 1e-9),
        }


def _log_train(log, record: dict, *, steps: int = 0, start_step: int = 0,
               run_start: float = 0.0, budget: float | None = None) -> None:
    log.write(record)
    step = record["step"]
    if budget is None:
        eta = (time.perf_counter() - run_start) / (step - start_step) * (steps - step)
        where, left = f"step {step}/{steps}", f"ETA {format_duration(eta)}"
    else:
        trained = record["trained_seconds"]
        where = f"step {step} ({format_duration(trained)} of {format_duration(budget)})"
        left = f"{format_duration(max(budget - trained, 0))} left"
    log.say(
        f"{where}: loss {record['loss']:.4f}, masked accuracy "
        f"{record['accuracy']:.4f}, lr {record['learning_rate']:.2e}, "
        f"{record['tokens_per_second']:,.0f} tokens/s, {left}"
    )
