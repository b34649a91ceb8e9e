"""The learning-rate schedule: linear warmup, then linear decay to zero."""

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
