"""The training loop: several steps per device call, with the results of one step a call."""

import signal

import pytest

from tests.conftest import max_weight_difference, pretrain_process, run_mlm
from tests.test_faults import STEPS, _final_state, _train_records

# With a selection rate scheduled from 30% down to 5%: a resumed run masks each step at
# the rate the uninterrupted one did.
SETTINGS = ["model.backbone.dropout=0.1", "train.checkpoint_every=4", "train.log_every=4",
            "train.eval_every=100", "train.keep_checkpoints=2", "masking.selection_rate=0.3",
            "masking.final_selection_rate=0.05"]


def _pretrain(run_dir, corpus, *extra, fault=None, resume=False):
    return pretrain_process(run_dir, corpus=None if resume else corpus, steps=STEPS,
                            settings=[*SETTINGS, *extra], fault=fault)


@pytest.mark.slow
def test_four_steps_a_call_train_exactly_as_one_and_stop_after_the_call(tmp_path, small_corpus):
    one, four, stopped = tmp_path / "one", tmp_path / "four", tmp_path / "stopped"
    for run_dir, stride in ((one, 1), (four, 16)):
        code, _, err = _pretrain(run_dir, small_corpus, f"train.steps_per_execution={stride}")
        assert code == 0, err[-3000:]
    # The same weights, optimizer state, dropout seeds and logged losses, bit for bit.
    assert max_weight_difference(_final_state(one), _final_state(four)) == 0.0
    assert _train_records(one) == _train_records(four)
    assert [step for step, _, _ in _train_records(four)] == [4, 8]
    # SIGTERM during step 2 of the call of steps 1-4: the call finishes, step 4 is
    # checkpointed, and the resumed run ends as the uninterrupted one.
    code, _, err = _pretrain(stopped, small_corpus, fault="train_step:step=2:action=term")
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped after step 4" in err
    assert sorted(p.name for p in (stopped / "checkpoints").iterdir()) == ["step-4"]
    code, _, err = _pretrain(stopped, small_corpus, resume=True)
    assert code == 0, err[-3000:]
    assert max_weight_difference(_final_state(stopped), _final_state(four)) == 0.0


@pytest.mark.slow
def test_held_out_evaluations_mask_at_the_evaluation_rate(tmp_path, small_corpus):
    from tests.conftest import read_metrics

    per_window = {}
    for eval_rate in (0.0, 0.15):  # 0: evaluate at the training rate
        run = tmp_path / f"eval_{eval_rate}"
        code, _, err = run_mlm(
            "pretrain", "--run-dir", run, "--steps", "2", "--recipe", "bert_test",
            "--corpus", small_corpus, "--set", "masking.selection_rate=0.3",
            f"masking.eval_selection_rate={eval_rate}", in_process=True)
        assert code == 0, err[-3000:]
        held_out = [r for r in read_metrics(run) if r.get("split") == "held_out"]
        assert held_out, "no held-out evaluation was recorded"
        per_window[eval_rate] = [r["masked_tokens"] / r["windows"] for r in held_out]
    # bert_test windows hold 30 maskable tokens (the last one fewer): round(0.3 * 30) = 9
    # selected at the training rate, round(0.15 * 30) = 4 or 5 at the evaluation rate.
    assert all(8.0 <= m <= 9.0 for m in per_window[0.0]), per_window
    assert all(4.0 <= m <= 5.0 for m in per_window[0.15]), per_window

    # The preset carries the evaluation rate, and `mlm evaluate` masks at the preset's
    # rate unless told otherwise.
    from mlm.evaluate import evaluate_preset
    from mlm.preset_loading import load_masked_lm

    def masked(run, rate=None):
        return evaluate_preset(str(tmp_path / run / "preset"), paths=[str(small_corpus)],
                               batch_size=8, max_batches=1, selection_rate=rate)["masked_tokens"]

    assert load_masked_lm(str(tmp_path / "eval_0.15" / "preset")).preprocessor \
        .mask_selection_rate == pytest.approx(0.15)
    assert 8 * 4 <= masked("eval_0.15") <= 8 * 5
    assert 8 * 8 <= masked("eval_0.0") <= 8 * 9 and 8 * 4 <= masked("eval_0.0", 0.15) <= 8 * 5
    code, _, err = run_mlm("evaluate", tmp_path / "eval_0.15" / "preset", "--corpus", small_corpus,
                           "--selection-rate", "1.5", in_process=True)
    assert code == 2 and "--selection-rate must be in (0, 1]" in err, err[-2000:]
