"""End to end: the test recipe through the real CLI, exported, reloaded, used."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def run_cli(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "mlm", *map(str, args)], capture_output=True, text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"mlm {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    return proc


def run_python(code: str) -> str:
    """Runs `code` in a fresh interpreter and returns its stdout."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, small_corpus, held_out_corpus):
    run_dir = tmp_path_factory.mktemp("runs") / "demo"
    proc = run_cli("pretrain", "--recipe", "bert_test", "--corpus", small_corpus,
                   "--held-out", held_out_corpus, "--run-dir", run_dir)
    return run_dir, proc


def test_pretrain_writes_a_complete_run_directory(run_dir):
    run_dir, proc = run_dir
    for name in ("config.json", "metrics.jsonl", "curves.png", "preset/config.json",
                 "preset/task.weights.h5", "preset/tokenizer.json", "preset/README.md"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "vocab" / "vocabulary.txt").is_file()
    # keep_checkpoints=2 of checkpoint_every=3 over 6 steps.
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-3", "step-6"]
    assert json.loads((run_dir / "config.json").read_text())["name"] == "bert_test"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    held_out = [r for r in records if r["split"] == "held_out"]
    assert [r["step"] for r in held_out] == [0, 3, 6]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["perplexity"] > 1 for r in held_out)
    assert "held-out masked accuracy" in proc.stdout
    assert "padding fraction" in proc.stderr


def test_curves_png_is_a_valid_image(run_dir):
    run_dir, _ = run_dir
    data = (run_dir / "curves.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1000, 400)


def test_preset_loads_in_a_fresh_process_with_only_keras_hub(run_dir):
    run_dir, _ = run_dir
    out = run_python(f"""
        import sys, keras_hub
        m = keras_hub.models.MaskedLM.from_preset("{run_dir / 'preset'}")
        c = keras_hub.models.TextClassifier.from_preset("{run_dir / 'preset'}", num_classes=2)
        print(type(m).__name__, type(c).__name__, c.predict(["In the beginning"], verbose=0).shape)
        print("mlm" in sys.modules)
    """)
    assert out.split() == ["BertMaskedLM", "BertTextClassifier", "(1,", "2)", "False"]


def test_predict_prints_top_k_fillers_for_each_mask(run_dir):
    run_dir, _ = run_dir
    proc = run_cli("predict", run_dir / "preset", "And God said, Let there be [MASK]: and "
                   "there was [MASK].", "--top-k", "3")
    lines = proc.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["mask 1", "mask 2"]
    assert all(line.count("(") == 3 for line in lines)


def test_evaluate_reports_metrics_of_a_preset(run_dir, held_out_corpus):
    run_dir, _ = run_dir
    proc = run_cli("evaluate", run_dir / "preset", "--corpus", held_out_corpus)
    assert proc.stdout.startswith("masked accuracy ")
    final = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if '"held_out"' in line][-1]
    # Same windows, same masks (seed 0), same batch size default differs: compare loosely.
    reported = float(proc.stdout.split("masked loss ")[1].split(",")[0])
    assert reported == pytest.approx(final["loss"], rel=0.05)


def test_export_any_checkpoint_to_a_preset(run_dir, tmp_path):
    run_dir, _ = run_dir
    run_cli("export", run_dir, "--step", "3", "--out", tmp_path / "step3")
    assert (tmp_path / "step3" / "task.weights.h5").is_file()
    out = run_python(f"""
        import keras_hub, numpy as np
        a = keras_hub.models.MaskedLM.from_preset("{tmp_path / 'step3'}")
        b = keras_hub.models.MaskedLM.from_preset("{run_dir / 'preset'}")
        print(max(float(np.max(np.abs(x - y))) for x, y in zip(a.get_weights(), b.get_weights())))
    """)
    assert float(out) > 0  # step 3 differs from the final step 6
    proc = run_cli("export", run_dir, "--step", "99", "--out", tmp_path / "nope", check=False)
    assert proc.returncode == 2 and "available steps: 3, 6" in proc.stderr
    assert not (tmp_path / "nope").exists()


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(run_dir, tmp_path):
    run_dir, _ = run_dir
    # A crash right after the step-3 checkpoint: the copy loses everything later.
    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-6")
    shutil.rmtree(resumed / "preset")
    cache_entries = sorted(p.name for p in (resumed / "cache").iterdir())
    proc = run_cli("pretrain", "--run-dir", resumed, "--resume")
    assert "resuming from" in proc.stderr and "step 3" in proc.stderr
    # Resuming does not tokenize again: the cache entry is reused.
    assert "tokenizing" not in proc.stderr
    assert sorted(p.name for p in (resumed / "cache").iterdir()) == cache_entries
    out = run_python(f"""
        import keras_hub, numpy as np
        a = keras_hub.models.MaskedLM.from_preset("{resumed / 'preset'}")
        b = keras_hub.models.MaskedLM.from_preset("{run_dir / 'preset'}")
        print(max(float(np.max(np.abs(x - y))) for x, y in zip(a.get_weights(), b.get_weights())))
    """)
    assert float(out) == 0.0


def test_exported_predictions_equal_the_in_memory_model(tmp_path, small_corpus):
    """Exact round trip: logits of the reloaded preset equal the trained task's."""
    import keras

    from mlm import config
    from mlm.architectures import get_architecture
    from mlm.data import vocab
    from mlm.run import checkpoints
    from mlm.training.task import build_task, compile_task
    from tests.conftest import sample_documents

    recipe = config.load_recipe("bert_test")
    vocab_path = vocab.train_vocabulary(
        sample_documents(30), family="wordpiece", size=600, lowercase=True, min_frequency=2,
        out_dir=tmp_path / "vocab",
    )
    tokenizer = vocab.build_tokenizer(vocab_path, family="wordpiece", lowercase=True)
    keras.utils.set_random_seed(1)
    task = build_task(recipe.model, arch=get_architecture("bert"), tokenizer=tokenizer,
                      masking=recipe.masking)
    compile_task(task, recipe.train)
    preprocessor, task.preprocessor = task.preprocessor, None
    x, y, w = preprocessor(["In the beginning God created the heaven and the earth."] * 2)
    task.train_on_batch(x, y, sample_weight=w)
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
