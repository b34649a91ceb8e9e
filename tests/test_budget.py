"""`train.budget` / `--budget`: training to a wall-clock budget instead of a step count."""

import json
import time

import pytest

from mlm.config import parse_duration
from mlm.errors import MlmError
from tests.conftest import pretrain_process, read_metrics, run_mlm

BUDGET = 6.0
# One device call (4 steps of bert_test) may end past the budget; a few seconds is
# generous on a loaded machine.
OVERSHOOT = 4.0
SETTINGS = ["train.log_every=4", "train.eval_every=32", "train.checkpoint_every=16",
            "train.keep_checkpoints=50", "train.warmup_fraction=0.2",
            "train.mixed_precision=float32", "train.jit_compile=false"]


@pytest.mark.parametrize("text, seconds", [
    ("20m", 1200), ("2h", 7200), ("1h30m", 5400), ("90s", 90), ("1.5h", 5400), (" 10M ", 600),
])
def test_durations_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["abc", "10", "0m", "m", "10 minutes", "-5m"])
def test_bad_budgets_are_one_line_errors_naming_the_value(text):
    with pytest.raises(MlmError, match="train.budget") as error:
        parse_duration(text)
    assert repr(text) in str(error.value) and "\n" not in str(error.value)


def test_a_budget_that_does_not_parse_stops_the_cli(tmp_path, small_corpus):
    code, _, err = run_mlm("pretrain", "--recipe", "bert_test", "--corpus", small_corpus,
                           "--run-dir", tmp_path / "run", "--budget", "ten minutes",
                           in_process=True)
    assert code == 2 and "'ten minutes'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_the_budget_needs_the_tensorflow_backend(monkeypatch):
    import keras

    from mlm.training.task import compile_task
    from tests.conftest import small_recipe

    recipe = small_recipe(overrides=["train.budget=1m"])
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(MlmError, match="train.budget needs the TensorFlow backend"):
        compile_task(object(), recipe.train)


def _checkpoint_states(run_dir):
    return {int(p.name.split("-")[-1]) if "-" in p.name else int(p.name):
            json.loads((p / "state.json").read_text())
            for p in (run_dir / "checkpoints").iterdir() if (p / "state.json").is_file()}


def _budget_run(run_dir, corpus, *, resume=False, fault=None):
    began = time.perf_counter()
    code, out, err = pretrain_process(
        run_dir, corpus=None if resume else corpus, fault=fault, deterministic=False,
        extra=["--budget", f"{BUDGET:g}s"], settings=SETTINGS)
    return code, out, err, time.perf_counter() - began


@pytest.mark.slow  # two runs of about 20 s
def test_a_budget_run_trains_its_time_and_ends_like_a_step_run(tmp_path, small_corpus):
    run_dir = tmp_path / "run"
    code, out, err, wall = _budget_run(run_dir, small_corpus)
    assert code == 0, err[-2000:]
    states = _checkpoint_states(run_dir)
    last = max(states)
    # It ends once its training time reaches the budget, with a checkpoint, an evaluation
    # at that step and the exported preset, as a step-bounded run ends.
    assert BUDGET <= states[last]["trained_seconds"] < BUDGET + OVERSHOOT
    records = read_metrics(run_dir)
    train = [r for r in records if r.get("split") == "train"]
    held = [r for r in records if r.get("split") == "held_out"]
    assert held[-1]["step"] == train[-1]["step"] == last
    assert [r["step"] for r in records if r.get("event") == "end"] == [last]
    assert (run_dir / "preset" / "config.json").is_file()
    assert f"training budget of {BUDGET:g}s" in (run_dir / "report.md").read_text()
    # Warmup and decay are fractions of the budget: the rate rises, then falls to ~0.
    rates = [r["learning_rate"] for r in train]
    peak = max(rates)
    assert rates.index(peak) < len(rates) - 1 and rates[0] < peak
    # Only the first device call, before any time is measured, trains at progress 0. The
    # second trains at the first's time (compilation included), capped at half the warmup:
    # never at rate 0, even where compiling takes longer than the budget (a slow CPU).
    learning_rate = json.loads((run_dir / "config.json").read_text())["train"]["learning_rate"]
    assert 0 < rates[1] <= 0.5 * learning_rate * (1 + 1e-6)
    assert rates[-1] < 0.2 * peak
    trained = [r["trained_seconds"] for r in train]
    assert trained == sorted(trained)
    # Evaluation and checkpoint time is not training time: the run took longer than its
    # budget, and evaluated every 32 steps all along.
    assert len(held) > 3 and wall > BUDGET


@pytest.mark.slow  # three runs of about 20 s
def test_a_resumed_run_trains_the_rest_of_its_budget(tmp_path, small_corpus):
    run_dir = tmp_path / "run"
    code, _, _, _ = _budget_run(run_dir, small_corpus, fault="train_step:step=41:action=kill")
    assert code != 0
    before = _checkpoint_states(run_dir)
    assert max(before) == 32 and 0 < before[32]["trained_seconds"] < BUDGET
    code, out, err, _ = _budget_run(run_dir, small_corpus, resume=True)
    assert code == 0, err[-2000:]
    after = _checkpoint_states(run_dir)
    last = max(after)
    assert last > 41
    assert BUDGET <= after[last]["trained_seconds"] < BUDGET + OVERSHOOT
    # The resumed session started from the checkpoint's time, not from zero.
    resumed = [r for r in read_metrics(run_dir) if r.get("split") == "train" and r["step"] > 32]
    assert resumed[0]["trained_seconds"] >= round(before[32]["trained_seconds"], 2) - 0.01
    # Resuming a run that has spent its budget trains no further.
    code, out, err, _ = _budget_run(run_dir, small_corpus, resume=True)
    assert code == 0 and "has trained its budget" in out + err
    assert max(_checkpoint_states(run_dir)) == last
