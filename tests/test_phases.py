"""`train.phases` and `train.batch_warmup`: segments, errors, and exact resume across phases."""

import json
import re
import shutil
import signal

import pytest

from mlm.config import load_recipe
from mlm.errors import MlmError
from mlm.training.schedule import Segment, segments, window_tokens, with_cuts
from tests.conftest import (
    max_weight_difference,
    pretrain_process,
    read_metrics,
    small_recipe,
)

BERT_PHASES = [{"fraction": 0.9, "sequence_length": 128},
               {"fraction": 0.1, "sequence_length": 512}]


def test_bert_phases_cut_the_steps_ninety_ten():
    assert segments(steps=2000, sequence_length=128, batch_size=32, phases=BERT_PHASES) == [
        Segment(0, 0, 1800, 128, 32), Segment(1, 1800, 2000, 512, 32)]
    assert segments(steps=1000, sequence_length=128, batch_size=32) == [
        Segment(0, 0, 1000, 128, 32)]


def test_batch_warmup_grows_the_batch_in_three_stages_then_the_phases_follow():
    plan = segments(steps=1000, sequence_length=128, batch_size=32, phases=[
        {"fraction": 0.5}, {"fraction": 0.5, "sequence_length": 256, "batch_size": 16}],
        batch_warmup=0.3, batch_multiple=3)
    assert [(s.start, s.end, s.sequence_length, s.batch_size) for s in plan] == [
        (0, 100, 128, 9), (100, 200, 128, 18), (200, 300, 128, 24), (300, 500, 128, 32),
        (500, 1000, 256, 16)]
    assert [s.index for s in plan] == list(range(5))


@pytest.mark.parametrize("phases, message", [
    ([{"fraction": 0.9, "sequence_length": 128}, {"fraction": 0.2, "sequence_length": 512}],
     r"must sum to 1, but received 0.9 \+ 0.2 = 1.1"),
    ([{"fraction": 0.5, "sequence_length": 128}, {"fraction": 0.5, "sequence_length": 1024}],
     "longer than the backbone's max_sequence_length=512: sequence_length=1024"),
    ([{"fraction": 1.0, "length": 128}], r"unknown field\(s\) \['length'\] in train.phases\[0\]"),
    ([{"fraction": 0}], r"train.phases\[0\].fraction must be a number in \(0, 1\]"),
    ([{"fraction": 1, "batch_size": 0}], r"train.phases\[0\].batch_size must be an integer"),
    ("128", "must be a list of objects"),
])
def test_bad_phases_are_one_line_errors_naming_the_values(phases, message):
    from mlm.config import apply_overrides

    with pytest.raises(MlmError, match=message) as error:
        apply_overrides(load_recipe("bert_tiny_en_uncased"),
                        [f"train.phases={json.dumps(phases)}"])
    assert "\n" not in str(error.value)


def test_the_batch_warmup_and_a_budget_do_not_mix():
    with pytest.raises(MlmError, match="a fraction of train.steps, but train.budget"):
        small_recipe(overrides=["train.budget=10m", "train.batch_warmup=0.1"])


def test_with_a_budget_phases_are_fractions_of_its_time_cut_as_the_run_trains():
    bound = 10**9
    by_time = segments(steps=bound, sequence_length=128, batch_size=32, by_time=True, phases=[
        {"fraction": 0.3, "sequence_length": 64}, {"fraction": 0.3},
        {"fraction": 0.4, "batch_size": 16}])
    # Each phase ends once the run has trained `until` of its budget, at a step not
    # known before: the run's step bound stands for it.
    assert [(s.start, s.end, s.sequence_length, s.batch_size) for s in by_time] == [
        (0, bound, 64, 32), (bound, bound, 128, 32), (bound, bound, 128, 16)]
    assert [s.until for s in by_time] == pytest.approx([0.3, 0.6, 1.0])
    # A checkpoint's record of the steps where phases ended gives them back.
    assert [(s.start, s.end) for s in with_cuts(by_time, [1200])] == [
        (0, 1200), (1200, bound), (bound, bound)]
    assert [(s.start, s.end) for s in with_cuts(by_time, [1200, 2000])] == [
        (0, 1200), (1200, 2000), (2000, bound)]
    # The window slots trained by a step: each phase's steps at its windows and batch.
    cut = with_cuts(by_time, [1200, 2000])
    assert window_tokens(cut, 2500) == 1200 * 32 * 64 + 800 * 32 * 128 + 500 * 16 * 128
    assert window_tokens(cut, 1000) == 1000 * 32 * 64
    # Without phases, one segment to the end of the budget.
    assert segments(steps=bound, sequence_length=128, batch_size=32, by_time=True) == [
        Segment(0, 0, bound, 128, 32, until=1.0)]
    # The recipe takes phases with a budget, and the plan's segments are by time.
    recipe = small_recipe(overrides=["train.budget=10m", f"train.phases={json.dumps(PHASES)}"])
    assert recipe.train.phases[0]["sequence_length"] == 32


PHASES = [{"fraction": 0.5, "sequence_length": 32},
          {"fraction": 0.5, "sequence_length": 64, "batch_size": 4}]
SETTINGS = [f"train.phases={json.dumps(PHASES)}", "train.batch_warmup=0.25",
            "train.log_every=2", "train.eval_every=4", "train.checkpoint_every=2",
            "train.keep_checkpoints=10", "model.backbone.dropout=0.1"]


def _run(run_dir, corpus=None, fault=None):
    return pretrain_process(run_dir, corpus=corpus, fault=fault, steps=8, settings=SETTINGS)


@pytest.mark.slow  # four runs of 8 steps
def test_a_run_killed_in_any_phase_resumes_to_the_exact_weights(tmp_path, small_corpus):
    reference = tmp_path / "reference"
    code, out, err = _run(reference, corpus=small_corpus)
    assert code == 0, err[-2000:]
    said = out + err
    # Steps 1-2 at batch 2 (warmup: 1/4, 1/2 of 8 would be 2, 4), then 32-token windows in
    # batches of 8, then 64-token windows in batches of 4, each its own segment.
    assert "steps 5-8: windows of 64 tokens in batches of 4" in said
    assert "windows of 32 tokens in batches of 8" in said
    assert ("in phases: 50% of the steps at 32 tokens in batches of 8, then 50% of the steps "
            "at 64 tokens in batches of 4.") in (reference / "report.md").read_text()
    train = [r for r in read_metrics(reference) if r.get("split") == "train"]
    rates = [r["learning_rate"] for r in train]
    # One schedule over all phases: warmup, then a decay across the boundary to 0.
    assert rates[-1] == 0.0 and rates[1:] == sorted(rates[1:], reverse=True)

    for kill_at in (3, 6):  # in the first phase (warmup stage), and in the second phase
        run = tmp_path / f"killed-{kill_at}"
        code, _, err = _run(run, corpus=small_corpus, fault=f"train_step:step={kill_at}")
        assert code == -signal.SIGKILL, err[-2000:]
        code, _, err = _run(run)
        assert code == 0, err[-2000:]
        assert f"(step {kill_at - 1 - (kill_at - 1) % 2})" in err
        assert max_weight_difference(run / "preset", reference / "preset") == 0.0
        resumed = [(r["step"], r["loss"]) for r in read_metrics(run) if r.get("split") == "train"]
        assert resumed == [(r["step"], r["loss"]) for r in train]


@pytest.mark.slow  # two runs of about 20 s
def test_a_budget_run_cuts_its_phases_by_time_and_resumes_in_the_phase_it_was_in(
        tmp_path, small_corpus):
    from mlm.run.checkpoints import list_checkpoints
    from tests.test_budget import _checkpoint_states

    run_dir = tmp_path / "run"
    settings = [f"train.phases={json.dumps(PHASES)}", "train.log_every=4",
                "train.eval_every=32", "train.checkpoint_every=8", "train.keep_checkpoints=200",
                "train.mixed_precision=float32", "train.jit_compile=false"]

    def run(corpus=None):
        return pretrain_process(run_dir, corpus=corpus, deterministic=False, settings=settings,
                                extra=["--budget", "6s"])

    code, out, err = run(small_corpus)
    assert code == 0, err[-2000:]
    said = out + err
    assert "from step 1 to 50% of the budget: windows of 32 tokens in batches of 8" in said
    found = re.search(r"from step (\d+) to the end of the budget: windows of 64 tokens in "
                      r"batches of 4", said)
    assert found, said[-3000:]
    cut = int(found.group(1)) - 1
    # The first phase ends at the first step ending a log interval (the loop's epoch)
    # whose training time reaches half the budget.
    train = {r["step"]: r for r in read_metrics(run_dir) if r.get("split") == "train"}
    assert cut % 4 == 0 and cut - 4 in train
    # (The log rounds the seconds to hundredths.)
    assert train[cut]["trained_seconds"] >= 2.99 and train[cut - 4]["trained_seconds"] <= 3.0
    assert max(train) > cut + 8 and train[max(train)]["trained_seconds"] >= 6.0
    assert ("in phases: 50% of the budget at 32 tokens in batches of 8, then 50% of the "
            "budget at 64 tokens in batches of 4.") in (run_dir / "report.md").read_text()
    # Checkpoints record where it ended, for a resumed session to train the same phases.
    states = _checkpoint_states(run_dir)
    assert {s: state["phase_ends"] for s, state in states.items()} == {
        s: ([cut] if s >= cut else []) for s in states}

    # Back to the first checkpoint of the second phase, then resume: the session trains
    # the second phase from there, with the recorded cut, to the end of the budget.
    resume_at = min(s for s in states if s > cut)
    assert resume_at < max(states)
    for step, path in list_checkpoints(run_dir).items():
        if step > resume_at:
            shutil.rmtree(path)
    code, out, err = run()
    assert code == 0, err[-2000:]
    said = out + err
    assert (f"from step {resume_at + 1} to the end of the budget: windows of 64 tokens in "
            f"batches of 4") in said
    assert "windows of 32 tokens in batches" not in said
    after = _checkpoint_states(run_dir)
    assert max(after) > resume_at and {tuple(s["phase_ends"]) for s in after.values()} == {
        (), (cut,)}
    assert after[max(after)]["trained_seconds"] >= 6.0
