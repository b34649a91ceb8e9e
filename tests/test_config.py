"""Recipes: shipped presets, overrides, validation and loading errors."""

import dataclasses
from pathlib import Path

import pytest

from mlm.config import (
    Recipe,
    TrainConfig,
    apply_overrides,
    available_recipes,
    load_recipe,
    recipe_from_dict,
    validate,
)
from mlm.errors import MlmError

PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"
# The pretraining recipes: every JSON file in presets/ but `mlm finetune`'s recipe.
RECIPE_NAMES = sorted(p.stem for p in PRESETS_DIR.glob("*.json") if p.stem != "finetune")


def _message(excinfo) -> str:
    return str(excinfo.value)


def test_available_recipes_are_the_json_files_in_presets():
    assert available_recipes() == RECIPE_NAMES


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_every_shipped_recipe_loads_and_validates(name):
    recipe = load_recipe(name)
    assert isinstance(recipe, Recipe)
    assert recipe.name == name
    validate(recipe)


def test_bert_tiny_recipe_has_the_keras_hub_bert_tiny_shapes():
    recipe = load_recipe("bert_tiny_en_uncased")
    backbone = recipe.model.backbone
    assert recipe.model.architecture == "bert"
    assert backbone["num_layers"] == 2
    assert backbone["hidden_dim"] == 128
    assert backbone["num_heads"] == 2
    assert backbone["intermediate_dim"] == 512
    assert backbone["max_sequence_length"] == 512
    assert recipe.vocab.family == "wordpiece"
    assert recipe.vocab.size == 30522
    assert recipe.vocab.lowercase is True


def test_bert_small_recipe_has_the_keras_hub_bert_small_shapes():
    recipe = load_recipe("bert_small_en_uncased")
    backbone = recipe.model.backbone
    assert backbone["num_layers"] == 4
    assert backbone["hidden_dim"] == 512
    assert backbone["num_heads"] == 8
    assert backbone["intermediate_dim"] == 2048
    assert backbone["max_sequence_length"] == 512
    assert recipe.vocab.size == 30522
    assert recipe.vocab.lowercase is True


@pytest.mark.parametrize(
    "name, params",
    # Parameter counts from keras_hub/src/models/bert/bert_presets.py metadata.
    [("bert_tiny_en_uncased", 4_385_920), ("bert_small_en_uncased", 28_763_648)],
)
def test_recipe_backbone_has_the_keras_hub_preset_parameter_count(name, params):
    import keras_hub

    recipe = load_recipe(name)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=recipe.vocab.size, **recipe.model.backbone
    )
    assert backbone.count_params() == params


def test_override_changes_exactly_one_field_and_returns_a_new_object():
    recipe = load_recipe("bert_test")
    before = recipe.to_dict()
    changed = apply_overrides(recipe, ["train.steps=7"])
    assert changed is not recipe
    assert changed == dataclasses.replace(
        recipe, train=dataclasses.replace(recipe.train, steps=7)
    )
    assert recipe.to_dict() == before
    assert recipe.train.steps == 6


def test_overrides_parse_json_values_of_every_type():
    recipe = apply_overrides(
        load_recipe("bert_test"),
        [
            "train.learning_rate=0.002",
            "train.jit_compile=true",
            "corpus.paths=[\"a.txt\", \"b.txt\"]",
            "corpus.held_out_paths=held.txt",
            "vocab.family=wordpiece",
            "masking.selection_rate=1",
        ],
    )
    assert recipe.train.learning_rate == 0.002
    assert recipe.train.jit_compile is True
    assert recipe.corpus.paths == ("a.txt", "b.txt")
    assert recipe.corpus.held_out_paths == ("held.txt",)
    assert recipe.vocab.family == "wordpiece"
    assert recipe.masking.selection_rate == 1.0
    assert type(recipe.masking.selection_rate) is float


def test_backbone_override_sets_one_backbone_argument():
    recipe = load_recipe("bert_test")
    changed = apply_overrides(recipe, ["model.backbone.num_layers=3", "model.backbone.new_arg=1"])
    assert changed.model.backbone == {**recipe.model.backbone, "num_layers": 3, "new_arg": 1}
    assert recipe.model.backbone["num_layers"] == 1
    assert "new_arg" not in recipe.model.backbone


def test_recipe_fields_are_frozen():
    recipe = load_recipe("bert_test")
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.train.steps = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.train = TrainConfig()
    assert recipe.train.steps == 6


@pytest.mark.parametrize(
    "override, field, shown",
    [
        ("train.steps=abc", "train.steps", "received 'abc'"),
        ("train.steps=1.5", "train.steps", "received 1.5"),
        ("train.steps=true", "train.steps", "received True"),
        ("vocab.lowercase=1", "vocab.lowercase", "received 1."),
        ("train.learning_rate=fast", "train.learning_rate", "received 'fast'"),
        ("vocab.family=3", "vocab.family", "received 3"),
        ("model.backbone=5", "model.backbone", "received 5"),
        ("corpus.paths=7", "corpus.paths", "received 7"),
    ],
)
def test_override_of_the_wrong_type_names_field_and_value(override, field, shown):
    with pytest.raises(MlmError) as excinfo:
        apply_overrides(load_recipe("bert_test"), [override])
    assert field in _message(excinfo)
    assert shown in _message(excinfo)


@pytest.mark.parametrize(
    "override, field, shown",
    [
        ("masking.selection_rate=0", "selection_rate", "selection_rate=0.0"),
        ("masking.selection_rate=1.5", "selection_rate", "selection_rate=1.5"),
        ("masking.mask_token_rate=1.2", "mask_token_rate", "mask_token_rate=1.2"),
        ("masking.random_token_rate=0.3", "random_token_rate", "random_token_rate=0.3"),
        ("corpus.held_out_fraction=1.0", "held_out_fraction", "held_out_fraction=1.0"),
        ("corpus.held_out_fraction=-0.1", "held_out_fraction", "held_out_fraction=-0.1"),
        ("train.batch_size=0", "batch_size", "batch_size=0"),
        ("train.steps=0", "steps", "steps=0"),
        ("train.learning_rate=0", "learning_rate", "learning_rate=0.0"),
        ("train.keep_checkpoints=0", "keep_checkpoints", "keep_checkpoints=0"),
        ("vocab.size=99", "vocab.size", "size=99"),
        ("model.sequence_length=513", "sequence_length", "sequence_length=513"),
        ("model.sequence_length=4", "sequence_length", "sequence_length=4"),
    ],
)
def test_out_of_range_value_names_field_and_value(override, field, shown):
    with pytest.raises(MlmError) as excinfo:
        apply_overrides(load_recipe("bert_test"), [override])
    assert field in _message(excinfo)
    assert shown in _message(excinfo)


def test_sequence_length_above_backbone_maximum_names_both_values():
    with pytest.raises(MlmError) as excinfo:
        apply_overrides(load_recipe("bert_tiny_en_uncased"), ["model.sequence_length=1024"])
    assert "max_sequence_length=512" in _message(excinfo)
    assert "sequence_length=1024" in _message(excinfo)


def test_rates_on_the_boundary_are_accepted():
    recipe = apply_overrides(
        load_recipe("bert_test"),
        [
            "masking.selection_rate=1.0",
            "masking.mask_token_rate=0.8",
            "masking.random_token_rate=0.2",
            "corpus.held_out_fraction=0.0",
            "model.sequence_length=512",
        ],
    )
    assert recipe.masking.random_token_rate == 0.2
    assert recipe.model.sequence_length == 512


def test_non_numeric_backbone_max_sequence_length_raises_mlm_error():
    with pytest.raises(MlmError) as excinfo:
        apply_overrides(load_recipe("bert_test"), ["model.backbone.max_sequence_length=abc"])
    assert "max_sequence_length" in _message(excinfo)
    assert "abc" in _message(excinfo)


@pytest.mark.parametrize(
    "override, shown",
    [
        ("nosuch.steps=1", "nosuch.steps=1"),
        ("train.stepz=5", "train.stepz"),
        ("train.steps.value=5", "train.steps.value"),
        ("model.backbone.num_layers.x=5", "model.backbone.num_layers.x"),
    ],
)
def test_unknown_section_or_field_in_override_is_named(override, shown):
    with pytest.raises(MlmError) as excinfo:
        apply_overrides(load_recipe("bert_test"), [override])
    assert shown in _message(excinfo)


@pytest.mark.parametrize("override", ["train.steps", "steps=5", "=5", "train"])
def test_override_without_section_field_and_value_is_rejected(override):
    with pytest.raises(MlmError) as excinfo:
        apply_overrides(load_recipe("bert_test"), [override])
    assert f"cannot parse override '{override}'" in _message(excinfo)
    assert "section.field=value" in _message(excinfo)


def test_unknown_section_or_field_in_dict_is_named():
    with pytest.raises(MlmError) as excinfo:
        recipe_from_dict({"trian": {"steps": 1}})
    assert "trian" in _message(excinfo)
    with pytest.raises(MlmError) as excinfo:
        recipe_from_dict({"train": {"stepz": 1}})
    assert "train.stepz" in _message(excinfo)
    with pytest.raises(MlmError) as excinfo:
        recipe_from_dict({"train": [1]})
    assert "train" in _message(excinfo)
    assert "[1]" in _message(excinfo)
    with pytest.raises(MlmError) as excinfo:
        recipe_from_dict([1])
    assert "list" in _message(excinfo)


def test_recipe_file_path_loads_with_its_stem_as_name(tmp_path):
    path = tmp_path / "my_recipe.json"
    path.write_text('{"train": {"steps": 3}, "model": {"sequence_length": 16}}')
    recipe = load_recipe(str(path))
    assert recipe.name == "my_recipe"
    assert recipe == Recipe(
        name="my_recipe",
        train=TrainConfig(steps=3),
        model=dataclasses.replace(Recipe().model, sequence_length=16),
    )


def test_recipe_file_without_json_suffix_loads(tmp_path):
    path = tmp_path / "plain"
    path.write_text('{"train": {"batch_size": 2}}')
    recipe = load_recipe(str(path))
    assert recipe.name == "plain"
    assert recipe.train.batch_size == 2


def test_invalid_json_recipe_raises_mlm_error(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"train": {"steps": 3,}}')
    with pytest.raises(MlmError) as excinfo:
        load_recipe(str(path))
    assert str(path) in _message(excinfo)
    assert "not valid JSON" in _message(excinfo)


def test_recipe_file_holding_a_json_array_raises_mlm_error(tmp_path):
    path = tmp_path / "array.json"
    path.write_text("[1, 2]")
    with pytest.raises(MlmError) as excinfo:
        load_recipe(str(path))
    assert "list" in _message(excinfo)


@pytest.mark.parametrize("name", ["bert_huge", "missing/recipe.json"])
def test_unknown_recipe_lists_the_available_recipes(name):
    with pytest.raises(MlmError) as excinfo:
        load_recipe(name)
    assert name in _message(excinfo)
    for available in available_recipes():
        assert available in _message(excinfo)


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_to_dict_round_trips_to_an_equal_recipe(name):
    recipe = apply_overrides(
        load_recipe(name), ["corpus.paths=[\"a.txt\"]", "model.backbone.dropout=0.0"]
    )
    assert recipe_from_dict(recipe.to_dict()) == recipe


def test_default_recipe_validates():
    validate(Recipe())
    assert recipe_from_dict({}) == Recipe()


def test_vocab_family_and_byte_fallback_must_suit_the_architecture():
    recipe = load_recipe("bert_test")
    with pytest.raises(MlmError, match="'vocab.family' must be 'wordpiece' for architecture"):
        validate(apply_overrides(recipe, ["vocab.family=sentencepiece"]))
    with pytest.raises(MlmError, match=r"'vocab.byte_fallback' needs a sentencepiece vocabulary, "
                       r"but architecture 'bert' uses wordpiece; remove vocab.byte_fallback"):
        validate(apply_overrides(recipe, ["vocab.byte_fallback=true"]))
    albert = apply_overrides(recipe, ["model.architecture=albert", "vocab.family=sentencepiece",
                                      "vocab.byte_fallback=true",
                                      "vocab.lowercase=false"])
    validate(albert)
    assert albert.vocab.byte_fallback is True


@pytest.mark.parametrize(("fields", "message"), [
    ({"num_processes": 0}, "--num-processes must be at least 1, but received 0"),
    ({"process_id": -1}, "--process-id must be at least 0, but received -1"),
    ({"heartbeat_timeout": 0}, "--heartbeat-timeout must be at least 1, but received 0"),
    ({"num_processes": 2, "process_id": 2}, "--process-id must be below --num-processes \\(2\\)"),
])
def test_distributed_options_are_validated_with_the_recipe_checks(fields, message):
    from mlm.config import DistributedConfig, validate_distributed

    with pytest.raises(MlmError, match=message):
        validate_distributed(DistributedConfig(**fields))
    validate_distributed(DistributedConfig(num_processes=2, process_id=1))


def test_evaluation_masking_rate_defaults_to_the_training_rate():
    from mlm.config import MaskingConfig, apply_overrides, load_recipe

    assert MaskingConfig(selection_rate=0.3).for_evaluation().selection_rate == 0.3
    both = MaskingConfig(selection_rate=0.3, eval_selection_rate=0.15)
    assert both.for_evaluation() == MaskingConfig(selection_rate=0.15, eval_selection_rate=0.15)
    with pytest.raises(MlmError, match="eval_selection_rate' must be in \\[0, 1\\]"):
        apply_overrides(load_recipe("bert_test"), ["masking.eval_selection_rate=1.5"])


def test_a_scheduled_selection_rate_is_checked_and_not_evaluated():
    from mlm.config import MaskingConfig, apply_overrides, load_recipe

    scheduled = MaskingConfig(selection_rate=0.3, final_selection_rate=0.15)
    # Held-out evaluation masks at one rate: the start rate unless eval_selection_rate.
    assert scheduled.for_evaluation() == MaskingConfig(selection_rate=0.3)
    with pytest.raises(MlmError, match="final_selection_rate' must be in \\[0, 1\\]"):
        apply_overrides(load_recipe("bert_test"), ["masking.final_selection_rate=-0.1"])
    with pytest.raises(MlmError, match="over train.steps, but train.budget='2m' is set"):
        apply_overrides(load_recipe("bert_test"),
                        ["masking.final_selection_rate=0.15", "train.budget=2m"])
    recipe = apply_overrides(load_recipe("bert_test"), ["masking.final_selection_rate=0.05"])
    assert recipe.masking.final_selection_rate == 0.05


def test_a_budget_without_a_recipe_gets_the_row_measured_for_it():
    from mlm.config import BUDGET_CHOICES, recipe_for_budget

    short, longer = BUDGET_CHOICES
    assert recipe_for_budget("90s") is short and recipe_for_budget("5m") is short
    assert recipe_for_budget("5m1s") is longer and recipe_for_budget("10m") is longer
    assert recipe_for_budget("2h") is longer
    for row in BUDGET_CHOICES:  # each row is a recipe that loads with its overrides
        recipe = apply_overrides(load_recipe(row.recipe), row.overrides)
        assert recipe.name == row.recipe and row.evidence
    with pytest.raises(MlmError, match="must be a duration"):
        recipe_for_budget("soon")


def test_pretrain_says_which_recipe_a_budget_chose_and_a_recipe_overrides_it(tmp_path):
    from tests.conftest import run_mlm

    missing = tmp_path / "missing.txt"
    code, _, err = run_mlm("pretrain", "--budget", "2m", "--corpus", missing, "--run-dir",
                           tmp_path / "run", in_process=True)
    assert code == 2 and not (tmp_path / "run").exists()
    assert err.splitlines()[0].startswith(
        "recipe for a budget of 2m: bert_tiny_en_uncased with model.sequence_length=64 "
        "(measured downstream at 5m, ")
    code, _, err = run_mlm("pretrain", "--budget", "2m", "--recipe", "bert_test", "--corpus",
                           missing, "--run-dir", tmp_path / "run", in_process=True)
    assert code == 2 and "recipe for a budget" not in err


def test_a_fresh_encoder_trained_short_of_the_measured_pay_off_is_told_so():
    from mlm.config import apply_overrides, load_recipe
    from mlm.config.recipes import MEASURED_PAYOFF_TOKENS, measured_payoff
    from mlm.pretraining import short_run_hint

    recipe = load_recipe("bert_tiny_en_uncased")  # 32 windows of 128 tokens a step
    assert MEASURED_PAYOFF_TOKENS == {128: 1_600 * 32 * 128, 64: 2_790 * 32 * 64}
    hint = short_run_hint(recipe, steps=510, preset="runs/a/preset")
    assert "2.1M tokens" in hint and "about 6.6M in windows of 128 tokens" in hint
    assert "mlm compare runs/a/preset random:runs/a/preset --train" in hint
    assert short_run_hint(recipe, steps=1_600, preset="p") is None
    # Each window length is held to the run measured at that length, or the next longer.
    short = apply_overrides(recipe, ["model.sequence_length=64"])
    assert "about 5.7M in windows of 64 tokens" in short_run_hint(short, steps=2_000, preset="p")
    assert short_run_hint(short, steps=2_790, preset="p") is None
    # A run in phases is counted at each phase's windows: 1,000 steps of 64 then 1,000 of
    # 128 are 6.1M tokens, short of 128's 6.6M, where 2,000 steps of 128 would not be.
    assert short_run_hint(recipe, steps=2_000, preset="p") is None
    hint = short_run_hint(recipe, steps=2_000, preset="p", tokens=1_000 * 32 * (64 + 128))
    assert "6.1M tokens" in hint and "6.6M in windows of 128" in hint
    assert measured_payoff(32) == (64, 2_790 * 32 * 64)
    assert measured_payoff(100) == measured_payoff(512) == (128, 1_600 * 32 * 128)
    continued = apply_overrides(load_recipe("continue_pretraining"),
                                ["model.preset=bert_tiny_en_uncased"])
    assert short_run_hint(continued, steps=10, preset="p") is None
