"""The run plan: a recipe resolved once into what every stage reads, its errors raised there."""

import json

import keras_hub
import pytest

from mlm import machine_cache
from mlm.architectures import get_architecture
from mlm.data.masking import Masking, max_selections
from mlm.data.masking_ops import select_tokens, select_words
from mlm.errors import MlmError
from mlm.training.distributed import Topology
from mlm.training.plan import BUDGET_STEPS, resolve_plan, strides
from tests.conftest import TINY_VOCABULARY, run_mlm, small_recipe
from tests.test_cli import assert_one_line_error


def _backbone(max_sequence_length=64):
    return keras_hub.models.BertBackbone(
        vocabulary_size=len(TINY_VOCABULARY), num_layers=1, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=max_sequence_length)


def _plan(*overrides, topology=None, max_sequence_length=64):
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=TINY_VOCABULARY, lowercase=True)
    return resolve_plan(small_recipe(overrides=list(overrides)),
                        backbone=_backbone(max_sequence_length), tokenizer=tokenizer,
                        topology=topology)


def test_the_plan_holds_every_derived_value():
    plan = _plan("masking.selection_rate=0.3", "masking.eval_selection_rate=0.15",
                 "masking.unit=word")
    assert plan.arch is get_architecture("bert")
    # [PAD] [CLS] [SEP] [MASK] are special (keras-hub's BertTokenizer does not count [UNK]).
    assert (plan.ids.pad_id, plan.ids.start_id, plan.ids.end_id, plan.ids.mask_id) == (0, 2, 3, 4)
    assert plan.ids.special_ids == (0, 2, 3, 4)
    # Word masking in training: the word-start flags, one per id, from the WordPiece family.
    assert plan.ids.word_starts is not None and len(plan.ids.word_starts) == 11
    # Training and held-out masking, resolved to their selectors and slots.
    assert (plan.masking.unit, plan.masking.select) == ("word", select_words)
    assert (plan.eval_masking.unit, plan.eval_masking.select) == ("token", select_tokens)
    assert plan.masking.slots(32) == max_selections(32, 0.3) == 9
    assert plan.eval_masking.slots(32) == max_selections(32, 0.15) == 4
    assert [(s.start, s.end, s.sequence_length, s.batch_size) for s in plan.segments] == [
        (0, 6, 32, 8)]
    assert (plan.steps, plan.budget_seconds, plan.max_sequence_length) == (6, None, 64)
    assert plan.per_device_batch == 8 and plan.settings is None
    assert plan.strides(0) == (1, 1)  # bert_test: every step logs, evaluates or checkpoints
    record = json.loads(json.dumps(plan.to_dict()))
    assert record["masking"] == {"unit": "word", "selection_rate": 0.3,
                                 "final_selection_rate": 0.0, "mask_token_rate": 0.8,
                                 "random_token_rate": 0.1, "slots": 9}
    assert record["eval_masking"]["unit"] == "token" and record["eval_masking"]["slots"] == 4
    assert record["segments"] == [{"index": 0, "start": 0, "end": 6, "sequence_length": 32,
                                   "batch_size": 8, "until": None}]


def test_token_masking_needs_no_word_starts_and_a_budget_bounds_no_steps():
    plan = _plan("train.budget=90s")
    assert plan.ids.word_starts is None
    assert not plan.masking.needs_word_starts and not plan.masking.spans
    assert (plan.steps, plan.budget_seconds) == (BUDGET_STEPS, 90.0)
    # One segment to the end of the budget, whose steps the run finds out as it trains.
    assert [(s.start, s.end, s.until) for s in plan.segments] == [(0, BUDGET_STEPS, 1.0)]
    # plan.json records what is known: no step bound, no end step, the budget's fraction.
    record = plan.to_dict()
    assert record["steps"] is None and record["budget_seconds"] == 90.0
    assert [(s["start"], s["end"], s["until"]) for s in record["segments"]] == [(0, None, 1.0)]


def test_span_masking_resolves_to_the_truncated_geometric_law():
    plan = _plan("masking.unit=span", "masking.span_p=0.5", "masking.max_span=3")
    assert plan.masking.spans and plan.masking.select is select_words
    assert plan.masking.span_law == pytest.approx((4 / 7, 2 / 7, 1 / 7))


def test_a_resolved_masking_is_frozen_and_compares_by_value():
    plan = _plan()
    with pytest.raises(AttributeError):
        plan.masking.selection_rate = 0.5
    assert plan.masking == Masking(selection_rate=0.15, mask_token_rate=0.8,
                                   random_token_rate=0.1, unit="token")


@pytest.mark.parametrize("overrides, topology, named", [
    # The batch against the devices, per segment (batch warmup stages included).
    ((), Topology(device_count=3), "multiple of the 3 devices"),
    (("train.phases=[{\"fraction\": 0.5}, {\"fraction\": 0.5, \"batch_size\": 6}]",),
     Topology(device_count=4), "received batch_size=6"),
    # A phase's batch against the accumulation parts.
    (("train.accumulation_steps=4",
      "train.phases=[{\"fraction\": 0.5}, {\"fraction\": 0.5, \"batch_size\": 6}]"),
     None, "does not split into train.accumulation_steps=4 parts"),
    # Lengths against the backbone's maximum (64 here).
    (("model.sequence_length=128",), None,
     "max_sequence_length=64, but received sequence_length=128"),
    (("train.phases=[{\"fraction\": 0.5}, {\"fraction\": 0.5, \"sequence_length\": 96}]",),
     None, "longer than the backbone's max_sequence_length=64: sequence_length=96"),
])
def test_every_error_of_the_derived_values_is_raised_while_resolving(overrides, topology,
                                                                     named):
    with pytest.raises(MlmError, match=named.replace("[", r"\[")):
        _plan(*overrides, topology=topology)


def test_a_batch_that_does_not_split_stops_a_run_before_it_reads_text(tmp_path, small_corpus):
    run_dir = tmp_path / "run"
    phases = 'train.phases=[{"fraction": 0.5}, {"fraction": 0.5, "batch_size": 6}]'
    code, _, err = run_mlm("pretrain", "--recipe", "bert_test", "--corpus", small_corpus,
                           "--run-dir", run_dir, "--set", "train.accumulation_steps=4", phases,
                           in_process=True)
    assert_one_line_error(code, err, "does not split into train.accumulation_steps=4 parts")
    assert "vocabulary" not in err and not run_dir.exists()
    # Nothing learned, nothing tokenized.
    assert not any((machine_cache.root() / kind).exists()
                   for kind in (machine_cache.VOCAB, machine_cache.TOKENS))


@pytest.mark.parametrize(
    ("intervals", "start_step", "cap", "expected"),
    [((50, 250, 500, 2000), 0, 16, (50, 10)),  # the tiny recipe: epochs of 50, calls of 10
     ((2, 3, 3, 6), 0, 16, (1, 1)),  # the test recipe: every step is a boundary
     ((50, 250, 500, 2000), 500, 16, (50, 10)),  # resumed at a checkpoint
     ((50, 250, 500, 2000), 7, 16, (1, 1)),  # resumed after an odd step: one step a call
     ((64, 640, 640, 6400), 0, 16, (64, 16)),
     ((64, 640, 640, 6400), 0, 1, (64, 1))],
)
def test_strides_divide_every_boundary(intervals, start_step, cap, expected):
    from mlm.config import TrainConfig

    log, evaluate, checkpoint, steps = intervals
    cfg = TrainConfig(log_every=log, eval_every=evaluate, checkpoint_every=checkpoint,
                      steps=steps, steps_per_execution=cap)
    epoch, per_call = strides(cfg, steps=steps, start_step=start_step)
    assert (epoch, per_call) == expected
    for boundary in (log, evaluate, checkpoint, steps, start_step):
        assert boundary % epoch == 0
    assert epoch % per_call == 0
    # Segment ends are boundaries too.
    epoch, _ = strides(cfg, steps=steps, start_step=start_step, boundaries=[steps // 2 + 1])
    assert (steps // 2 + 1) % epoch == 0


def test_a_resume_reads_the_plan_back_and_refuses_one_that_changed(trained_run, tmp_path):
    import shutil

    from mlm.training.plan import check_resumed
    from tests.conftest import run_mlm

    plan = _plan()
    recorded = json.loads(json.dumps(plan.to_dict()))
    check_resumed(plan, recorded)  # the same decisions: nothing to say
    # More steps change the segments and the step bound, which a resume may do.
    check_resumed(_plan("train.steps=12"), recorded)
    with pytest.raises(MlmError, match=r"masking differ from plan.json"):
        check_resumed(_plan("masking.selection_rate=0.3"), recorded)
    # Through the CLI: the shared run, its plan.json edited, resumed for two more steps.
    run = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, run)
    written = json.loads((run / "plan.json").read_text())
    assert written["architecture"] == "bert" and written["step_settings"] == "fp32 no XLA"
    written["ids"]["mask_id"] += 1
    (run / "plan.json").write_text(json.dumps(written))
    code, _, err = run_mlm("pretrain", "--run-dir", run, "--resume", "--steps", "8",
                           in_process=True)
    assert code == 2 and err.strip().splitlines()[-1] == (
        "mlm: error: the run's plan changed since its first session (ids differ from "
        "plan.json): its vocabulary, preset or recipe was edited; restore them or start a "
        "new run.")
