"""The learning-rate schedules: linear warmup, then linear decay to zero, over steps or time."""

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
