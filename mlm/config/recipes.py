"""Reading recipes: the shipped ones in `presets/` (the `mlm.presets` package) or JSON files.

`load_recipe` reads a recipe by name or path, `recipe_from_dict` turns its
JSON into a checked `Recipe`, and `apply_overrides` applies the command line's
`--set section.field=value` on top.
"""

import dataclasses
import importlib.resources
import json
from pathlib import Path
from typing import Any

from mlm.config.schema import SECTIONS, Recipe
from mlm.config.validation import validate
from mlm.errors import MlmError


def available_recipes() -> list[str]:
    """Names of the recipes shipped in `presets/`."""
    folder = importlib.resources.files("mlm.presets")
    return sorted(
        p.name[: -len(".json")] for p in folder.iterdir()
        if p.name.endswith(".json") and p.name != "finetune.json"  # `mlm finetune`'s recipe
    )


def read_recipe_json(name_or_path: str, *, choices: str) -> tuple[Any, str]:
    """The parsed JSON of a recipe, and the recipe's name.

    `name_or_path` is the name of a shipped recipe (`presets/NAME.json`) or a
    JSON file path; `choices` names the shipped recipes in the message for a
    missing one.
    """
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise MlmError(
                f"recipe file not found: {name_or_path}; pass an existing "
                f"JSON file or one of: {choices}."
            )
        text, name = path.read_text(), path.stem
    else:
        resource = importlib.resources.files("mlm.presets") / f"{name_or_path}.json"
        if not resource.is_file():
            raise MlmError(
                f"unknown recipe '{name_or_path}'; choose one of: "
                f"{choices}, or pass a JSON file path."
            )
        text, name = resource.read_text(), name_or_path
    try:
        return json.loads(text), name
    except json.JSONDecodeError as e:
        raise MlmError(f"recipe {name_or_path} is not valid JSON ({e}); fix the file.") from None


def override_value(raw: str) -> Any:
    """An override's value: parsed as JSON when it parses (`3`, `true`, `["a"]`), else text."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def load_recipe(name_or_path: str) -> Recipe:
    """Loads a recipe by name (from `presets/`) or from a JSON file path."""
    data, name = read_recipe_json(name_or_path, choices=", ".join(available_recipes()))
    if isinstance(data, dict):
        data.setdefault("name", name)
    return recipe_from_dict(data)


def recipe_from_dict(data: dict) -> Recipe:
    """Builds and validates a `Recipe` from nested dictionaries."""
    if not isinstance(data, dict):
        raise MlmError(
            f"a recipe must be a JSON object, but received {type(data).__name__}."
        )
    unknown = set(data) - set(SECTIONS) - {"name"}
    if unknown:
        raise MlmError(
            f"unknown recipe section(s) {sorted(unknown)}; "
            f"known sections: {', '.join(SECTIONS)}."
        )
    sections = {
        key: _section_from_dict(key, cls, data.get(key, {}))
        for key, cls in SECTIONS.items()
    }
    recipe = Recipe(name=str(data.get("name", "custom")), **sections)
    validate(recipe)
    return recipe


def _section_from_dict(section: str, cls: type, values: dict) -> Any:
    if not isinstance(values, dict):
        raise MlmError(
            f"recipe section '{section}' must be an object, but received {values!r}."
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise MlmError(
                f"unknown field '{section}.{key}'; fields of '{section}': "
                f"{', '.join(fields)}."
            )
    kwargs = {}
    for key, value in values.items():
        default = getattr(cls(), key)
        kwargs[key] = coerce_field(f"{section}.{key}", value, default)
    return cls(**kwargs)


def coerce_field(field: str, value: Any, default: Any) -> Any:
    """Checks `value` against the type of the field's default."""
    if field == "train.phases":
        return _phases(value)
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise MlmError(f"'{field}' must be a list, but received {value!r}.")
        return tuple(str(v) for v in value)
    if default == "auto" and isinstance(value, bool):
        return value  # fields of a choice "auto" or true/false (`train.jit_compile`)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise MlmError(f"'{field}' must be true or false, but received {value!r}.")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise MlmError(f"'{field}' must be an integer, but received {value!r}.")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MlmError(f"'{field}' must be a number, but received {value!r}.")
        return float(value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise MlmError(f"'{field}' must be an object, but received {value!r}.")
        return dict(value)
    if not isinstance(value, str):
        raise MlmError(f"'{field}' must be a string, but received {value!r}.")
    return value


def apply_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """Returns `recipe` with `section.field=value` overrides applied.

    Values are parsed as JSON when they parse (`3`, `0.1`, `true`,
    `["a.txt"]`), else taken as strings. `model.backbone.KEY=VALUE` sets one
    backbone argument.
    """
    data = recipe.to_dict()
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2 or parts[0] not in SECTIONS:
            raise MlmError(
                f"cannot parse override '{item}'; write section.field=value, "
                f"e.g. train.steps=100, with a section among {', '.join(SECTIONS)}."
            )
        value = override_value(raw)
        target = data
        for part in parts[:-1]:
            if not isinstance(target.get(part), dict):
                raise MlmError(f"unknown field '{key}' in override '{item}'.")
            target = target[part]
        if parts[-1] not in target and not (len(parts) == 3 and parts[1] == "backbone"):
            raise MlmError(
                f"unknown field '{key}' in override '{item}'; fields of "
                f"'{parts[0]}': {', '.join(data[parts[0]])}."
            )
        target[parts[-1]] = value
    return recipe_from_dict(data)


_PHASE_KEYS = ("fraction", "sequence_length", "batch_size")


def _phases(value: Any) -> tuple[dict, ...]:
    """`train.phases` checked: a list of objects with a fraction, the fractions summing to 1."""
    example = ('[{"fraction": 0.9, "sequence_length": 128}, '
               '{"fraction": 0.1, "sequence_length": 512}]')
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, dict) for p in value):
        raise MlmError(f"'train.phases' must be a list of objects such as {example}, but "
                       f"received {value!r}.")
    phases = []
    for i, phase in enumerate(value):
        unknown = sorted(set(phase) - set(_PHASE_KEYS))
        if unknown:
            raise MlmError(f"unknown field(s) {unknown} in train.phases[{i}]; a phase has "
                           f"{', '.join(_PHASE_KEYS)}.")
        fraction = phase.get("fraction")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
                0 < fraction <= 1):
            raise MlmError(f"train.phases[{i}].fraction must be a number in (0, 1], but "
                           f"received fraction={fraction!r}.")
        for key, least in (("sequence_length", 8), ("batch_size", 1)):
            v = phase.get(key, least)
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise MlmError(f"train.phases[{i}].{key} must be an integer of at least "
                               f"{least}, but received {key}={v!r}.")
        phases.append({k: (float(v) if k == "fraction" else v) for k, v in phase.items()})
    total = sum(p["fraction"] for p in phases)
    if phases and abs(total - 1.0) > 1e-6:
        shown = " + ".join(f"{p['fraction']:g}" for p in phases)
        raise MlmError(f"the fractions of train.phases must sum to 1, but received "
                       f"{shown} = {total:g}.")
    return tuple(phases)


@dataclasses.dataclass(frozen=True)
class BudgetChoice:
    """What `mlm pretrain --budget B` trains when no `--recipe` is given, for budgets up
    to `up_to` (a duration; empty: any longer budget)."""

    up_to: str
    recipe: str
    overrides: tuple[str, ...]
    # Where the numbers that chose this row are (benchmarks/RESULTS.md), in short.
    evidence: str


# The first row whose `up_to` covers the budget is trained. A row changes only with
# new measurements: downstream (benchmarks/downstream.py) decides; held-out masked
# accuracy at equal steps (benchmarks/recipes.py --steps, 3 seeds, paired) is a screen.
# The short row trained at learning rate 2e-3 from 2026-12-05, on masked accuracy
# (+0.0078 ± 0.0026 at 600 steps); downstream at 5m then ranked 1e-3 first. It trains
# windows of 64 tokens since 2026-12-06 (1.8x the steps of 128 in the same time).
BUDGET_CHOICES = (
    BudgetChoice(
        up_to="5m", recipe="bert_tiny_en_uncased", overrides=("model.sequence_length=64",),
        evidence="measured downstream at 5m, two pretraining seeds each: windows of 64 "
                 "tokens train 1.8x the steps of 128 and beat them by 3.1 points on genres "
                 "with 50 labels per class, level on testaments, on all labels and on "
                 "200-token passages; the recipe's 1e-3 beat 2e-3 by 8.5-10.6 points with "
                 "50 labels per class; benchmarks/RESULTS.md, sequence length 64 at 5 "
                 "minutes, downstream"),
    BudgetChoice(
        up_to="", recipe="bert_tiny_en_uncased", overrides=(),
        evidence="the default recipe: no option has been measured better at longer budgets "
                 "(windows of 64, and 64 then 128 in train.phases, were level at 10m within "
                 "the 0.4-2.2 points between two pretraining seeds of this recipe); "
                 "at 10m (3,200 steps) it beats random init downstream by +0.139 and +0.242 "
                 "with 50 labels per class, at 30m (8,180 steps) by +0.131 and +0.281; "
                 "benchmarks/RESULTS.md, budgets of 5 and 10 minutes, and of 30 minutes"),
)


# Training tokens (steps x batch x window) after which a fresh encoder was measured to
# beat random initialisation downstream on every sample task and label count, by the
# window length it trained on: `bert_tiny_en_uncased` on the sample corpus at its
# learning rate in a 5-minute budget, 1,600 steps of 32 x 128 (+0.021 to +0.141) and
# 2,790 steps of 32 x 64 (+0.016 to +0.169), where 2 minutes were no better or worse
# than random init (510 steps of 128; 1,090 of 64, within noise on every row)
# (benchmarks/RESULTS.md, "Learning rate at 5 minutes, downstream" and "Sequence length
# 64 at 5 minutes"). Shorter runs are told so at their end
# (`mlm.pretraining.short_run_hint`).
MEASURED_PAYOFF_TOKENS = {128: 1_600 * 32 * 128, 64: 2_790 * 32 * 64}


def measured_payoff(sequence_length: int) -> tuple[int, int]:
    """`(window length, tokens)` of the pay-off measured (`MEASURED_PAYOFF_TOKENS`) that
    stands for windows of `sequence_length`: the shortest measured length at least as
    long, else the longest."""
    lengths = sorted(MEASURED_PAYOFF_TOKENS)
    length = next((n for n in lengths if n >= sequence_length), lengths[-1])
    return length, MEASURED_PAYOFF_TOKENS[length]


def recipe_for_budget(budget: str) -> BudgetChoice:
    """The row of `BUDGET_CHOICES` for a `--budget` of `budget` (a duration)."""
    from mlm.config.schema import parse_duration

    seconds = parse_duration(budget)
    return next(row for row in BUDGET_CHOICES
                if not row.up_to or seconds <= parse_duration(row.up_to))
