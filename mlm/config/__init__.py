"""Frozen configuration: the recipe of a run, read from `presets/` or a JSON file.

- `mlm.config.schema`: the frozen dataclasses of a recipe, one per section,
  with a commented default for every field, and of the distributed flags;
- `mlm.config.validation`: the checks a recipe passes before anything runs;
- `mlm.config.recipes`: reading recipes (the shipped ones in `presets/` or JSON
  files), building a `Recipe` from JSON and applying `--set` overrides.

Everything is re-exported here; import from `mlm.config`.
"""

from mlm.config.recipes import (
    BUDGET_CHOICES,
    BudgetChoice,
    apply_overrides,
    available_recipes,
    coerce_field,
    load_recipe,
    override_value,
    read_recipe_json,
    recipe_for_budget,
    recipe_from_dict,
)
from mlm.config.schema import (
    DOCUMENT_BOUNDARIES,
    MASKING_UNITS,
    PRECISIONS,
    SECTIONS,
    SEGMENTERS,
    CorpusConfig,
    DistributedConfig,
    MaskingConfig,
    ModelConfig,
    Recipe,
    TrainConfig,
    VocabConfig,
    describe_fields,
    parse_duration,
)
from mlm.config.validation import validate, validate_distributed

__all__ = [
    "BUDGET_CHOICES",
    "BudgetChoice",
    "DOCUMENT_BOUNDARIES",
    "MASKING_UNITS",
    "PRECISIONS",
    "SECTIONS",
    "SEGMENTERS",
    "CorpusConfig",
    "DistributedConfig",
    "MaskingConfig",
    "ModelConfig",
    "Recipe",
    "TrainConfig",
    "VocabConfig",
    "apply_overrides",
    "available_recipes",
    "coerce_field",
    "describe_fields",
    "load_recipe",
    "override_value",
    "parse_duration",
    "read_recipe_json",
    "recipe_for_budget",
    "recipe_from_dict",
    "validate",
    "validate_distributed",
]
