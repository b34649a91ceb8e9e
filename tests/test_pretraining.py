"""End to end: the test recipe through the real CLI, exported, reloaded, used.

The commands run in this process (`run_mlm(..., in_process=True)`); a fresh
process only where the process boundary is what is tested (keras-hub alone).
"""

import json
import re
import shutil

import numpy as np
import pytest

from tests.conftest import (
    TINY_TEXT,
    max_weight_difference,
    read_metrics,
    run_mlm,
    run_python,
    tiny_task,
    token_entry,
)


@pytest.fixture(scope="module")
def run_dir(trained_run):
    """The shared `bert_test` run (`trained_run` in conftest.py), through the CLI."""
    return trained_run.run_dir, trained_run.out, trained_run.err


def test_pretrain_writes_a_complete_run_directory(run_dir):
    run_dir, out, err = run_dir
    for name in ("config.json", "metrics.jsonl", "curves.png", "preset/config.json",
                 "preset/task.weights.h5", "preset/tokenizer.json", "preset/README.md"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "vocab" / "vocabulary.txt").is_file()
    # keep_checkpoints=2 of checkpoint_every=3 over 6 steps.
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-3", "step-6"]
    assert json.loads((run_dir / "config.json").read_text())["name"] == "bert_test"
    held_out = [r for r in read_metrics(run_dir) if r["split"] == "held_out"]
    assert [r["step"] for r in held_out] == [0, 3, 6]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["perplexity"] > 1 for r in held_out)
    assert "held-out masked accuracy" in out
    assert "padding fraction" in err


def test_curves_png_is_a_valid_image(run_dir):
    run_dir, _, _ = run_dir
    data = (run_dir / "curves.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1000, 400)


@pytest.mark.slow  # a fresh process: keras-hub alone, mlm never imported
def test_preset_loads_in_a_fresh_process_with_only_keras_hub(run_dir):
    run_dir, _, _ = run_dir
    out = run_python(f"""
        import sys, keras_hub
        m = keras_hub.models.MaskedLM.from_preset("{run_dir / 'preset'}")
        c = keras_hub.models.TextClassifier.from_preset("{run_dir / 'preset'}", num_classes=2)
        print(type(m).__name__, type(c).__name__, c.predict(["In the beginning"], verbose=0).shape)
        print("mlm" in sys.modules)
    """)
    assert out.split() == ["BertMaskedLM", "BertTextClassifier", "(1,", "2)", "False"]


def test_predict_prints_top_k_fillers_for_each_mask(run_dir):
    run_dir, _, _ = run_dir
    _, out, _ = run_mlm("predict", run_dir / "preset", "And God said, Let there be [MASK]: and "
                        "there was [MASK].", "--top-k", "3", in_process=True, check=True)
    vocabulary = set((run_dir / "vocab" / "vocabulary.txt").read_text().splitlines())
    candidate = r"(\S+) \(([01]\.\d{3})\)"
    lines = out.strip().splitlines()
    assert len(lines) == 2
    for number, line in enumerate(lines, start=1):
        # `mask <n>: <token> (<p>), <token> (<p>), <token> (<p>)`, most likely first.
        match = re.fullmatch(rf"mask {number}: {candidate}, {candidate}, {candidate}", line)
        assert match, line
        tokens, probabilities = match.groups()[::2], list(map(float, match.groups()[1::2]))
        assert len(set(tokens)) == 3 and set(tokens) <= vocabulary, line
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.002


def test_evaluate_reports_metrics_of_a_preset(run_dir, held_out_corpus):
    run_dir, _, _ = run_dir
    final = [r for r in read_metrics(run_dir) if r["split"] == "held_out"][-1]
    # The run's last evaluation exactly: the same held-out windows (train.eval_batches=2
    # batches of train.batch_size=8) with the same masks (train.seed=0).
    _, out, _ = run_mlm("evaluate", run_dir / "preset", "--corpus", held_out_corpus,
                        "--batch-size", "8", "--max-batches", "2", "--seed", "0",
                        in_process=True, check=True)
    match = re.fullmatch(r"masked accuracy (\S+), masked loss (\S+), perplexity (\S+) "
                         r"\((\d+) windows\)\n", out)
    assert match, out
    accuracy, loss, perplexity, windows = match.groups()
    # Printed to 4 and 2 decimals; the logits of the reloaded preset may differ from
    # the in-memory task's in their last float32 bit.
    assert float(accuracy) == pytest.approx(final["accuracy"], abs=1.5e-4)
    assert float(loss) == pytest.approx(final["loss"], abs=1.5e-4)
    assert float(perplexity) == pytest.approx(final["perplexity"], abs=0.015)
    assert int(windows) == 16


def test_export_any_checkpoint_to_a_preset(run_dir, tmp_path):
    run_dir, _, _ = run_dir
    run_mlm("export", run_dir, "--step", "3", "--out", tmp_path / "step3", in_process=True,
            check=True)
    assert (tmp_path / "step3" / "task.weights.h5").is_file()
    # step 3 differs from the final step 6
    assert max_weight_difference(tmp_path / "step3", run_dir / "preset") > 0
    code, _, err = run_mlm("export", run_dir, "--step", "99", "--out", tmp_path / "nope",
                           in_process=True)
    assert code == 2 and "available steps: 3, 6" in err
    assert not (tmp_path / "nope").exists()


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(run_dir, tmp_path):
    run_dir, _, _ = run_dir
    # A crash right after the step-3 checkpoint: the copy loses everything later.
    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-6")
    shutil.rmtree(resumed / "preset")
    entry = token_entry(resumed)
    # In a machine cache of its own (this test's), the resumed session still reads the
    # entry the run recorded: it does not tokenize again.
    _, _, err = run_mlm("pretrain", "--run-dir", resumed, "--resume", in_process=True,
                        check=True)
    assert "resuming from" in err and "step 3" in err
    assert "tokenizing" not in err
    assert token_entry(resumed) == entry
    assert max_weight_difference(resumed / "preset", run_dir / "preset") == 0.0


@pytest.mark.slow  # a fresh process: keras-hub alone
def test_exported_predictions_equal_the_in_memory_model(tmp_path):
    """Exact round trip: logits of the reloaded preset equal the trained task's."""
    from mlm.run import checkpoints

    task, preprocessor = tiny_task(seed=1, steps=1)
    x, _, _ = preprocessor(TINY_TEXT)
    expected = np.asarray(task.predict_on_batch(x))
    path = checkpoints.save_checkpoint(task, preprocessor=preprocessor, run_dir=tmp_path,
                                       step=1, state={}, keep=1)
    np.save(tmp_path / "x.npy", {k: np.asarray(v) for k, v in x.items()}, allow_pickle=True)
    out = run_python(f"""
        import keras_hub, numpy as np
        x = np.load("{tmp_path / 'x.npy'}", allow_pickle=True).item()
        m = keras_hub.models.MaskedLM.from_preset("{path / 'preset'}")
        print(type(m.preprocessor).__name__, m.preprocessor.sequence_length)
        m.preprocessor = None  # x is already preprocessed
        np.save("{tmp_path / 'got.npy'}", np.asarray(m.predict_on_batch(x)))
    """)
    assert out.split() == ["BertMaskedLMPreprocessor", "32"]
    np.testing.assert_array_equal(np.load(tmp_path / "got.npy"), expected)
