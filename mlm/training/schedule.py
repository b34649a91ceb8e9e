"""The learning-rate schedules: linear warmup, then linear decay to zero, over steps or time."""

import dataclasses
import math

import keras


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


class BudgetWarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup and decay over a wall-clock budget (`train.budget`).

    The rate is a function of `progress`, the fraction of the budget trained
    so far, which the training loop sets before every device call; the step
    the optimizer passes is ignored.

    Args:
        peak: learning rate reached at the end of warmup.
        warmup_fraction: fraction of the budget spent in warmup.
    """

    def __init__(self, peak, warmup_fraction):
        self.peak = peak
        self.warmup_fraction = warmup_fraction
        self.progress = keras.Variable(0.0, dtype="float32", trainable=False,
                                       name="budget_progress")

    def __call__(self, step):
        progress = keras.ops.convert_to_tensor(self.progress)
        warmup = max(self.warmup_fraction, 1e-9)
        rising = progress / warmup
        falling = (1.0 - progress) / max(1.0 - self.warmup_fraction, 1e-9)
        rate = keras.ops.where(progress < self.warmup_fraction, rising, falling)
        return self.peak * keras.ops.clip(rate, 0.0, 1.0)

    def get_config(self):
        return {"peak": self.peak, "warmup_fraction": self.warmup_fraction}


@dataclasses.dataclass(frozen=True)
class Segment:
    """Steps `start + 1..end` trained on windows of one length in batches of one size:
    a phase of `train.phases`, or a stage of the batch warmup.

    In a run with `train.budget` a phase ends by time, at the end of the loop's
    first epoch (`mlm.training.plan.strides`) once the run has trained the
    fraction `until` of its budget; its `end` (and the next phase's `start`)
    is the run's step bound until then (`with_cuts`).
    """

    index: int
    start: int  # steps done before the segment
    end: int  # the segment's last step
    sequence_length: int
    batch_size: int
    until: float | None = None  # by time: the fraction of the budget trained at its end


# Stages of `train.batch_warmup`: the batch grows in these steps, as a fraction of
# the phase's batch size (a batch size per stage keeps the traced shapes few).
BATCH_WARMUP_STAGES = (0.25, 0.5, 0.75)


def segments(*, steps: int, sequence_length: int, batch_size: int, phases=(),
             batch_warmup: float = 0.0, batch_multiple: int = 1,
             by_time: bool = False) -> list[Segment]:
    """The run's steps cut into segments of constant window length and batch size.

    Without phases or batch warmup, one segment: the whole run. Phases take
    their `fraction` of `steps` in order (the last takes what rounding
    leaves), each with its `sequence_length` and `batch_size` (default: the
    run's). `batch_warmup` is the fraction of `steps` over which the batch
    grows to full size, in `BATCH_WARMUP_STAGES`, each a multiple of
    `batch_multiple` (the gradient accumulation parts). `by_time` (a run with
    `train.budget`, whose `steps` is only a bound): the phases take their
    fraction of the budget's time instead, and their steps are cut as the
    run trains (`Segment.until`, `with_cuts`).
    """
    if by_time:
        if batch_warmup:
            raise ValueError("the batch warmup is a fraction of steps, not of a budget")
        specs, done, out = phases or ({"fraction": 1.0},), 0.0, []
        for i, phase in enumerate(specs):
            done = 1.0 if i == len(specs) - 1 else done + phase["fraction"]
            out.append(Segment(i, 0 if i == 0 else steps, steps,
                               phase.get("sequence_length", sequence_length),
                               phase.get("batch_size", batch_size), until=done))
        return out
    bounds, specs, done = [], [], 0.0
    for phase in phases or ({"fraction": 1.0},):
        done += phase["fraction"]
        bounds.append(round(done * steps))
        specs.append((phase.get("sequence_length", sequence_length),
                      phase.get("batch_size", batch_size)))
    bounds[-1] = steps
    warm = round(batch_warmup * steps)
    stage_ends = [round(warm * (i + 1) / len(BATCH_WARMUP_STAGES))
                  for i in range(len(BATCH_WARMUP_STAGES))] if warm else []
    cuts = sorted({0, *bounds, *(e for e in stage_ends if 0 < e < steps)})
    out = []
    for start, end in zip(cuts[:-1], cuts[1:], strict=True):
        if end <= start:
            continue
        phase = next(i for i, b in enumerate(bounds) if start < b)
        length, batch = specs[phase]
        stage = next((i for i, e in enumerate(stage_ends) if start < e), None)
        if stage is not None:
            scaled = batch * BATCH_WARMUP_STAGES[stage]
            batch = max(batch_multiple, int(math.ceil(scaled / batch_multiple)) * batch_multiple)
        out.append(Segment(len(out), start, end, length, batch))
    return out


def with_cuts(segments_by_time, cuts) -> list[Segment]:
    """The segments of a budget run (`segments(by_time=True)`) with the steps at which
    its first `len(cuts)` phases ended (a checkpoint's record) filled in."""
    out = list(segments_by_time)
    for i, step in enumerate(cuts[:len(out) - 1]):  # a recipe since cut to fewer phases
        out[i] = dataclasses.replace(out[i], end=step)
        out[i + 1] = dataclasses.replace(out[i + 1], start=step)
    return out


def segment_at(segments_of_run, step: int) -> int:
    """The index of the segment that trains the step after `step` (the last one when
    the run is done)."""
    return next((i for i, s in enumerate(segments_of_run) if s.start <= step < s.end),
                len(segments_of_run) - 1)


def window_tokens(segments_trained, step: int) -> int:
    """Window slots (steps x batch x length) trained by `step` over the segments."""
    return sum((min(s.end, step) - s.start) * s.batch_size * s.sequence_length
               for s in segments_trained if s.start < step)
