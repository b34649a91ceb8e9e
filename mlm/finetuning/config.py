"""The fine-tuning recipe: one frozen dataclass, loaded from `presets/finetune.json`.

Every field has a default here; the recipe file sets the shipped defaults and
`--set field=value` (or `mlm.finetune(..., overrides=[...])`) overrides any
of them. The resolved recipe is written into every fine-tuning run folder.
"""

import dataclasses
import math

from mlm.config import coerce_field, override_value, read_recipe_json
from mlm.errors import MlmError


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """How a preset is fine-tuned as a text classifier."""

    # Column holding the text.
    text_column: str = "text"
    # Column holding the second text of a sentence pair (NLI, paraphrase);
    # empty: single texts.
    text_pair_column: str = ""
    # Column holding the label, strings or integers.
    label_column: str = "label"
    # Tokens per example, [CLS] and [SEP] included; 0: what the longest training
    # example needs, capped at `length_cap` and the backbone's maximum.
    sequence_length: int = 0
    # The cap of an automatic `sequence_length`: a long-document task pays for
    # 512 tokens per example what 256 serve (issue 29's news task: 10 epochs
    # at 256 reached 0.87-0.89; set sequence_length to go longer).
    length_cap: int = 256
    # Examples per optimizer step.
    batch_size: int = 32
    # Passes over the training data; the epoch with the best validation
    # macro-F1 is kept. 0: chosen from the training set's size
    # (`resolved_epochs`): enough epochs for `min_steps` optimizer steps, at
    # least 3 and at most `max_epochs`. A few hundred examples at 3 epochs are
    # 30 steps, which leave a small encoder far from what it can learn (0.42
    # against 0.87 on issue 29's news task).
    epochs: int = 0
    # With `epochs` 0: the optimizer steps the run takes at least ...
    min_steps: int = 300
    # ... in at most this many epochs.
    max_epochs: int = 30
    # Peak learning rate of AdamW, reached after warmup, then decayed linearly to 0.
    # Suits the small encoders mlm pretrains (bert_tiny-sized: 1e-4 barely moved
    # one in 3 epochs on the sample task); BERT-base-sized presets want 2e-5 to 5e-5.
    learning_rate: float = 5e-4
    # Fraction of all steps spent in linear warmup.
    warmup_fraction: float = 0.1
    # AdamW decoupled weight decay; not applied to biases and LayerNorm.
    weight_decay: float = 0.01
    # Clip the global gradient norm to this value (0 disables clipping).
    clip_norm: float = 1.0
    # Dropout before the classification layer.
    dropout: float = 0.1
    # Fraction of the training data held out (stratified by label) when no
    # validation data is given.
    validation_fraction: float = 0.1
    # Seeds that hold-out; kept apart from `seed` so that runs over several
    # seeds validate on the same examples.
    split_seed: int = 0
    # Seeds the classifier head, dropout and the order of examples.
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


RECIPE = "finetune"


def load_finetune_config(name_or_path: str = RECIPE, overrides=()) -> FinetuneConfig:
    """Loads the recipe `presets/NAME.json` (or a JSON file) and applies `field=value` overrides."""
    data, _ = read_recipe_json(name_or_path, choices=RECIPE)
    if not isinstance(data, dict):
        raise MlmError(f"a recipe must be a JSON object, but received {type(data).__name__}.")
    return apply_finetune_overrides(config_from_dict(data), overrides)


def config_from_dict(data: dict) -> FinetuneConfig:
    """Builds and validates a `FinetuneConfig` from a flat dictionary."""
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    unknown = sorted(set(data) - fields - {"name"})
    if unknown:
        raise MlmError(
            f"unknown fine-tuning field(s) {unknown}; fields: {', '.join(sorted(fields))}."
        )
    default = FinetuneConfig()
    values = {k: coerce_field(k, v, getattr(default, k)) for k, v in data.items() if k in fields}
    config = FinetuneConfig(**values)
    validate(config)
    return config


def apply_finetune_overrides(config: FinetuneConfig, overrides) -> FinetuneConfig:
    """`config` with `field=value` overrides (values parsed as JSON when they parse)."""
    data = config.to_dict()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise MlmError(f"an override is FIELD=VALUE, but received {item!r}.")
        data[key.strip().removeprefix("finetune.")] = override_value(raw)
    return config_from_dict(data)


def resolved_epochs(config: FinetuneConfig, *, examples: int) -> int:
    """`config.epochs`, or with 0 the epochs for `config.min_steps` optimizer steps over
    `examples` training examples, within 3 and `config.max_epochs`."""
    if config.epochs:
        return config.epochs
    steps_per_epoch = math.ceil(examples / config.batch_size)
    return min(max(3, math.ceil(config.min_steps / max(steps_per_epoch, 1))), config.max_epochs)


def validate(config: FinetuneConfig) -> None:
    """Raises `MlmError` for values no run can use."""
    if config.epochs < 0:
        raise MlmError(
            f"'epochs' must be 0 (chosen from the training set's size) or positive, but "
            f"received {config.epochs}.")
    positive = ("batch_size", "learning_rate", "min_steps", "length_cap")
    if config.max_epochs < 3:
        raise MlmError(f"'max_epochs' must be at least 3, but received {config.max_epochs}.")
    for name in positive:
        if getattr(config, name) <= 0:
            raise MlmError(f"'{name}' must be positive, but received {getattr(config, name)}.")
    if config.sequence_length < 0:
        raise MlmError(
            f"'sequence_length' must be 0 (what the data needs) or positive, but received "
            f"{config.sequence_length}."
        )
    for name in ("warmup_fraction", "dropout"):
        if not 0.0 <= getattr(config, name) < 1.0:
            raise MlmError(f"'{name}' must be in [0, 1), but received {getattr(config, name)}.")
    if not 0.0 < config.validation_fraction < 1.0:
        raise MlmError(
            f"'validation_fraction' must be in (0, 1), but received "
            f"{config.validation_fraction}."
        )
