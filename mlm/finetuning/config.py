"""The fine-tuning recipe: one frozen dataclass, loaded from `presets/finetune.json`.

Every field has a default here; the recipe file sets the shipped defaults and
`--set field=value` (or `mlm.finetune(..., overrides=[...])`) overrides any
of them. The resolved recipe is written into every fine-tuning run folder.
"""

import dataclasses

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
    # Tokens per example, [CLS] and [SEP] included; 0: the longest training
    # example needs, capped at the backbone's maximum.
    sequence_length: int = 0
    # Examples per optimizer step.
    batch_size: int = 32
    # Passes over the training data; the epoch with the best validation
    # macro-F1 is kept.
    epochs: int = 3
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


def validate(config: FinetuneConfig) -> None:
    """Raises `MlmError` for values no run can use."""
    positive = ("batch_size", "epochs", "learning_rate")
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
