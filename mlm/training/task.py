"""Build and compile the keras-hub MaskedLM task that `mlm.training.loop.train` trains."""

import keras

from mlm.architectures import Architecture
from mlm.config import ModelConfig, TrainConfig
from mlm.data.masking import Masking
from mlm.errors import MlmError
from mlm.training import step_settings
from mlm.training.schedule import BudgetWarmupLinearDecay, WarmupLinearDecay
from mlm.training.step_settings import StepSettings


def make_deterministic(seed: int) -> None:
    """Seeds Python, NumPy and the backend, and makes TensorFlow ops deterministic.

    With it (`train.deterministic`), two runs of a recipe, or a run killed and
    resumed, end with bit-identical weights on the same machine.
    """
    keras.utils.set_random_seed(seed)
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def build_task(config: ModelConfig, *, arch: Architecture, tokenizer, masking: Masking):
    """A fresh MaskedLM task: backbone from the recipe, preprocessor from `tokenizer`.

    `masking` is the run's evaluation masking (`mlm.training.plan.RunPlan.eval_masking`),
    which the preprocessor saved with the preset carries.
    """
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


def build_preprocessor(arch: Architecture, *, tokenizer, sequence_length: int,
                       masking: Masking):
    """The keras-hub preprocessor saved with the preset, set to the run's evaluation masking.

    The preset carries the rate its held-out scores were measured at
    (`masking.eval_selection_rate`, by default the training rate), so that
    `mlm evaluate` and keras-hub's own preprocessing score it the same way.
    Training never reads it: `mlm.data.pipeline` masks from the plan.
    """
    return arch.cls("preprocessor")(
        tokenizer=tokenizer,
        sequence_length=sequence_length,
        mask_selection_rate=masking.selection_rate,
        mask_selection_length=masking.slots(sequence_length),
        mask_token_rate=masking.mask_token_rate,
        random_token_rate=masking.random_token_rate,
    )


def compile_task(task, config: TrainConfig, *, settings: StepSettings | None = None) -> None:
    """AdamW with warmup and linear decay, clipping, masked loss and metrics.

    `settings` (precision and XLA) default to the first candidate of the
    config's (`mlm.training.step_settings.candidates`): what it sets, or fp32 with XLA on
    a CPU for "auto", which `mlm.training.step_settings.choose_step_settings` may change
    before training.
    """
    backend = keras.backend.backend()
    if config.budget and backend != "tensorflow":
        raise MlmError(
            f"train.budget needs the TensorFlow backend (its learning rate follows the time "
            f"trained, which the {backend} train step cannot read); set train.steps instead."
        )
    settings = settings or step_settings.candidates(
        config.mixed_precision, config.jit_compile, backend=backend,
        accelerator=step_settings.detect_accelerator(backend),
    )[0]
    step_settings.set_precision(task, settings.precision)
    schedule = (
        BudgetWarmupLinearDecay(config.learning_rate, config.warmup_fraction) if config.budget
        else WarmupLinearDecay(
            config.learning_rate, round(config.warmup_fraction * config.steps), config.steps)
    )
    optimizer = adamw(schedule, weight_decay=config.weight_decay, clip_norm=config.clip_norm,
                      beta_1=config.beta_1, beta_2=config.beta_2, epsilon=config.epsilon)
    task.compile(
        optimizer=optimizer,
        # Mean over masked tokens only (weights are 0 on unused mask slots).
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"
        ),
        # Held-out loss and accuracy are computed exactly in mlm.evaluate; in
        # training only the per-batch accuracy is tracked (weighted by masks).
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                          MaskedTokens()],
        jit_compile=settings.jit_compile,
    )
    accumulate_gradients(task, config.accumulation_steps)


def adamw(learning_rate, *, weight_decay: float, clip_norm: float, beta_1: float = 0.9,
          beta_2: float = 0.999, epsilon: float = 1e-6):
    """BERT's AdamW: decoupled weight decay except on biases and LayerNorm scales and
    offsets, the global gradient norm clipped to `clip_norm` (0: not clipped).

    The one optimizer of pretraining (`compile_task`) and fine-tuning
    (`mlm.finetuning.train.compile_classifier`).
    """
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate, weight_decay=weight_decay, beta_1=beta_1, beta_2=beta_2,
        epsilon=epsilon, global_clipnorm=clip_norm or None,
    )
    # As in BERT: no weight decay on biases and LayerNorm scales/offsets.
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def accumulate_gradients(task, micro_batches: int) -> None:
    """Makes each train step of `task` one optimizer update over `micro_batches` parts.

    The step's batch is cut into `micro_batches` equal parts whose forward and
    backward passes run one after the other, so activations are held for one
    part at a time: large effective batches on small machines. Each part's
    loss (a mean over its masked tokens) is weighted by its share of the
    batch's masked tokens, so the summed gradient is the whole batch's, and
    clipping, the learning-rate schedule and the step count see one update,
    exactly as without accumulation. keras' `gradient_accumulation_steps`
    is not used: it counts each part as a train step (the run's steps,
    checkpoints and resume points would all be in parts), averages the parts'
    means unweighted, and clips every part's gradient rather than their sum.
    TensorFlow backend only.
    """
    if micro_batches <= 1:
        return
    if keras.backend.backend() != "tensorflow":
        raise MlmError(
            f"train.accumulation_steps={micro_batches} needs the TensorFlow backend; "
            f"on JAX, spread the batch over more devices or processes instead."
        )
    import types

    import tensorflow as tf
    from keras.src.trainers.data_adapters import data_adapter_utils

    def train_step(self, data):
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        xs = [tf.nest.pack_sequence_as(x, list(part)) for part in
              zip(*(tf.split(t, micro_batches) for t in tf.nest.flatten(x)), strict=True)]
        ys, weights = tf.split(y, micro_batches), tf.split(sample_weight, micro_batches)
        total = tf.reduce_sum(sample_weight)
        weights_variables = self.trainable_weights
        summed, loss_sum, after = None, 0.0, []
        for part_x, part_y, part_w in zip(xs, ys, weights, strict=True):
            with tf.control_dependencies(after), tf.GradientTape() as tape:
                y_pred = self(part_x, training=True)
                share = tf.math.divide_no_nan(tf.reduce_sum(part_w), total)
                loss = self._compute_loss(x=part_x, y=part_y, y_pred=y_pred,
                                          sample_weight=part_w, training=True) * share
                loss_sum = loss_sum + loss
                scaled = self.optimizer.scale_loss(loss)
            grads = [None if g is None else tf.convert_to_tensor(g)
                     for g in tape.gradient(scaled, weights_variables)]  # None: unused
            summed = grads if summed is None else [
                None if a is None else a + b for a, b in zip(summed, grads, strict=True)]
            after = [g for g in grads if g is not None]  # the next part waits for these
            self.compute_metrics(part_x, part_y, y_pred, sample_weight=part_w)
        self._loss_tracker.update_state(loss_sum, sample_weight=tf.shape(y)[0])
        self.optimizer.apply_gradients(zip(summed, weights_variables, strict=True))
        return self.get_metrics_result()

    task.train_step = types.MethodType(train_step, task)


@keras.saving.register_keras_serializable(package="mlm")
class MaskedTokens(keras.metrics.Metric):
    """The sum of the sample weights: masked tokens trained on (weights are 0 on unused
    mask slots). Read with the other metrics, so counting costs no host round trip."""

    def __init__(self, name="masked_tokens", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="float32",
                                       name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        count = keras.ops.sum(keras.ops.cast(sample_weight, "float32")) \
            if sample_weight is not None else keras.ops.cast(keras.ops.size(y_true), "float32")
        self.total.assign_add(count)

    def result(self):
        return keras.ops.convert_to_tensor(self.total)  # a tensor, not the variable (JAX)
