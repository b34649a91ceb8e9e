"""Fine-tuning a preset as a text classifier, comparing encoders, classifying.

The labelled data is built from the shipped sample corpus: sentences of Old
Testament chapters labelled "old", of New Testament chapters "new".
"""

import csv
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import keras_hub
import numpy as np
import pytest

import mlm
from mlm.cli import main
from mlm.errors import MlmError
from mlm.finetuning import data
from mlm.finetuning.config import FinetuneConfig, load_finetune_config
from mlm.finetuning.metrics import classification_metrics
from tests.conftest import TINY_VOCABULARY, run_mlm, sample_documents

# The recipe file of this checkout (the installed `mlm.presets` may be another's).
RECIPE = str(Path(__file__).resolve().parents[1] / "presets" / "finetune.json")
# Short runs: two epochs of a few batches.
FAST = ["epochs=2", "batch_size=16", "learning_rate=1e-3"]
# The first New Testament chapter (Matthew 1) among the corpus's 1,189 chapters.
NEW_TESTAMENT = 929


def sentences(count: int, *, start: int) -> list[str]:
    """Sentences of 5 to 30 words from chapters `start`, `start + 1`, ..."""
    found = []
    for chapter in sample_documents(40, start=start):
        for sentence in re.split(r"(?<=[.?!])\s+(?=[A-Z])", chapter):
            if 5 <= len(sentence.split()) <= 30:
                found.append(sentence)
    assert len(found) >= count
    return found[:count]


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """`train.csv` (60 per class) and `dev.csv` (20 per class): text, label."""
    old, new = sentences(80, start=0), sentences(80, start=NEW_TESTAMENT)
    rng = np.random.default_rng(0)

    def rows(slice_):
        found = [{"text": t, "label": "old"} for t in old[slice_]]
        found += [{"text": t, "label": "new"} for t in new[slice_]]
        return [found[i] for i in rng.permutation(len(found))]

    folder = tmp_path_factory.mktemp("labelled")
    return (write_csv(folder / "train.csv", rows(slice(0, 60))),
            write_csv(folder / "dev.csv", rows(slice(60, 80))))


@pytest.fixture(scope="module")
def encoder(trained_run):
    """A tiny mlm preset: the shared `bert_test` run's (`trained_run` in conftest.py)."""
    return trained_run.run_dir / "preset"


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, encoder, labelled):
    """A fine-tuning run of the tiny preset on the labelled csv files: (run_dir, summary)."""
    train, dev = labelled
    run_dir = tmp_path_factory.mktemp("finetuned") / "cls"
    summary = mlm.finetune(str(encoder), train=train, validation=dev, run_dir=run_dir,
                           config=load_finetune_config(RECIPE), overrides=FAST, quiet=True)
    return run_dir, summary


def run_cli(*args) -> subprocess.CompletedProcess:
    """`mlm *args` through the CLI in this process."""
    code, out, err = run_mlm(*args, in_process=True)
    return subprocess.CompletedProcess(["mlm", *map(str, args)], code, out, err)


# The recipe and the pieces.


def test_api_exposes_finetune_compare_classify_as_functions():
    # The package is `mlm.finetuning`, so importing it never shadows `mlm.finetune`.
    program = (
        "import sys, types, mlm\n"
        "print('tensorflow' in sys.modules)\n"
        "import mlm.finetuning.train, mlm.finetuning.compare, mlm.finetuning.classify\n"
        "print(all(isinstance(getattr(mlm, n), types.FunctionType)\n"
        "          for n in ('finetune', 'compare', 'classify')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False", "True"]


def test_recipe_file_holds_the_dataclass_defaults():
    assert load_finetune_config(RECIPE) == FinetuneConfig()


def test_overrides_are_checked_and_named():
    assert load_finetune_config(RECIPE, ["epochs=5"]).epochs == 5
    with pytest.raises(MlmError, match="unknown fine-tuning field"):
        load_finetune_config(RECIPE, ["epoch=5"])
    with pytest.raises(MlmError, match="must be an integer"):
        load_finetune_config(RECIPE, ["epochs=two"])


def test_epochs_scale_with_the_labelled_set():
    from mlm.finetuning.config import resolved_epochs

    config = FinetuneConfig()  # epochs 0: at least 300 steps, 3 to 30 epochs, batches of 32
    # 270 examples: 9 steps an epoch; 34 epochs would be needed, 30 is the cap.
    assert resolved_epochs(config, examples=270) == 30
    assert resolved_epochs(config, examples=1800) == 6  # 57 steps an epoch: 6 give 342
    assert resolved_epochs(config, examples=100_000) == 3  # never fewer than 3
    assert resolved_epochs(load_finetune_config(RECIPE, ["epochs=2"]), examples=270) == 2
    assert resolved_epochs(load_finetune_config(RECIPE, ["min_steps=90"]), examples=270) == 10
    for bad, named in (("epochs=-1", "'epochs' must be 0"), ("max_epochs=2", "'max_epochs'"),
                       ("min_steps=0", "'min_steps' must be positive")):
        with pytest.raises(MlmError, match=named):
            load_finetune_config(RECIPE, [bad])


def test_an_automatic_length_is_capped_but_an_asked_one_is_not():
    from mlm.finetuning.classifier import choose_sequence_length

    tokenizer = keras_hub.models.BertTokenizer(vocabulary=TINY_VOCABULARY)
    long_text, short_text = " ".join(["cat"] * 400), "the cat"
    assert choose_sequence_length(tokenizer, [short_text], requested=0, maximum=512,
                                  cap=256) == 8
    assert choose_sequence_length(tokenizer, [long_text], requested=0, maximum=512,
                                  cap=256) == 256
    assert choose_sequence_length(tokenizer, [long_text], requested=0, maximum=512,
                                  cap=None) == 408
    assert choose_sequence_length(tokenizer, [long_text], requested=512, maximum=512,
                                  cap=256) == 512


def test_compare_says_whether_a_difference_is_beyond_the_seeds_noise():
    from mlm.finetuning.compare import paired_difference

    def runs(*accuracies):
        return [{"seed": seed, "accuracy": a} for seed, a in enumerate(accuracies)]

    # Paired by seed: +0.10, +0.12, +0.08 -> mean 0.10, standard error 0.02/sqrt(3).
    beyond = paired_difference(runs(0.8, 0.82, 0.78), runs(0.7, 0.7, 0.7))
    assert beyond["mean"] == pytest.approx(0.10)
    assert beyond["standard_error"] == pytest.approx(0.02 / np.sqrt(3))
    assert "better, beyond the seeds' noise" in beyond["verdict"]
    # +0.2, -0.1, +0.05: a mean of +0.05 whose standard error is larger.
    within = paired_difference(runs(0.9, 0.6, 0.75), runs(0.7, 0.7, 0.7))
    assert "within the seeds' noise" in within["verdict"]
    worse = paired_difference(runs(0.6, 0.61, 0.59), runs(0.7, 0.7, 0.7))
    assert "worse, beyond" in worse["verdict"]
    one = paired_difference(runs(0.9), runs(0.7))
    assert one["standard_error"] is None and "no noise estimate" in one["verdict"]


def test_stratified_split_holds_out_each_class():
    examples = data.Examples(texts=tuple(f"t{i}" for i in range(30)), pairs=None,
                             labels=("a",) * 20 + ("b",) * 10)
    train, held = data.stratified_split(examples, fraction=0.2, seed=0)
    assert sorted(held.labels) == ["a"] * 4 + ["b"] * 2
    assert not set(train.texts) & set(held.texts)
    assert len(train) + len(held) == 30


def test_metrics_of_known_predictions():
    labels = np.array([0, 0, 1, 1, 2])
    probabilities = np.eye(3)[[0, 1, 1, 1, 0]] * 0.98 + 0.01
    metrics = classification_metrics(labels, probabilities)
    assert metrics["accuracy"] == pytest.approx(0.6)
    assert metrics["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # F1 per class: 2/3 * 1/2 ... = 0.5, 0.8, 0.0.
    assert metrics["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_csv_jsonl_and_parquet_read_the_same_examples(tmp_path):
    import pyarrow
    import pyarrow.parquet

    rows = [{"review": "good, very good", "stars": 5}, {"review": "bad \"quoted\"", "stars": 1}]
    write_csv(tmp_path / "d.csv", rows)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), tmp_path / "d.parquet")
    read = [data.read_examples(tmp_path / f"d{suffix}", text_column="review",
                               label_column="stars") for suffix in data.FORMATS]
    assert read[0] == read[1] == read[2]
    assert read[0].labels == ("5", "1") and read[0].texts[1] == 'bad "quoted"'


def test_integer_labels_are_sorted_numerically(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"t {i}", "label": i % 11}) + "\n"
                            for i in range(22)))
    examples = data.read_examples(path, text_column="text", label_column="label")
    assert data.label_names(examples)[:3] == ("0", "1", "2")
    assert data.label_names(examples)[-1] == "10"


# Fine-tuning end to end.


def test_finetune_writes_a_complete_run_folder(finetuned):
    run_dir, summary = finetuned
    for name in ("finetune.json", "label_map.json", "metrics.jsonl", "summary.json",
                 "report.md", "confusion.png", "validation_predictions.jsonl",
                 "preset/config.json", "preset/task.json", "preset/labels.json"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "label_map.json").read_text()) == {"0": "new", "1": "old"}
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert summary["best_epoch"] in (1, 2)
    report = (run_dir / "report.md").read_text()
    assert "macro-F1" in report and "| old |" in report and "confusion.png" in report
    assert (run_dir / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["sequence_length"] <= 512 and summary["validation_examples"] == 40
    # Only the newest and the best checkpoints are kept.
    assert 1 <= len(list((run_dir / "checkpoints").iterdir())) <= 2


def test_preset_reloads_with_keras_hub_alone_and_predicts_the_same(finetuned):
    run_dir, _ = finetuned
    rows = [json.loads(line)
            for line in (run_dir / "validation_predictions.jsonl").read_text().splitlines()]
    texts = [r["text"] for r in rows[:8]]
    code = textwrap.dedent(f"""
        import json, sys
        import keras, keras_hub
        model = keras_hub.models.TextClassifier.from_preset({str(run_dir / 'preset')!r})
        logits = model.predict({texts!r}, verbose=0)
        probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
        print(json.dumps(probabilities.tolist()))
        print("mlm" in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "False"
    reloaded = np.array(json.loads(lines[-2]))
    in_memory = np.array([r["probabilities"] for r in rows[:8]])
    np.testing.assert_allclose(reloaded, in_memory, atol=1e-5)


def test_classify_gives_each_text_a_label_and_probability(finetuned):
    run_dir, _ = finetuned
    rows = [json.loads(line)
            for line in (run_dir / "validation_predictions.jsonl").read_text().splitlines()]
    results = mlm.classify(str(run_dir / "preset"), [rows[0]["text"], rows[1]["text"]])
    for result, row in zip(results, rows, strict=False):
        assert result["label"] == row["predicted"]
        assert result["probability"] == pytest.approx(max(row["probabilities"]), abs=1e-5)
    proc = run_cli("classify", run_dir / "preset", rows[0]["text"])
    assert proc.returncode == 0, proc.stderr
    label, probability, text = proc.stdout.strip().split("\t")
    assert label == rows[0]["predicted"] and text == rows[0]["text"]
    assert float(probability) == pytest.approx(max(rows[0]["probabilities"]), abs=1e-4)


@pytest.mark.slow
def test_resume_trains_only_the_epochs_left(encoder, labelled, tmp_path):
    train, dev = labelled
    run_dir = tmp_path / "cls"
    config = load_finetune_config(RECIPE, FAST)
    mlm.finetune(str(encoder), train=train, validation=dev, run_dir=run_dir, config=config,
                 quiet=True)
    first = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # As if the run had been killed after its first epoch.
    for path in (run_dir / "checkpoints").iterdir():
        if path.name != "epoch-1":
            path.rename(path.with_name(".gone"))
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text(lines[0] + "\n")
    assert main(["finetune", str(encoder), "--run-dir", str(run_dir), "--resume",
                 "--quiet"]) == 0
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2]
    # Same batch order, optimizer state and dropout masks: epoch 2 as the uninterrupted run.
    assert epochs[1]["train_loss"] == pytest.approx(first[1]["train_loss"], abs=1e-5)
    assert epochs[1]["val_loss"] == pytest.approx(first[1]["val_loss"], abs=1e-5)


@pytest.mark.slow
def test_sentence_pairs_train_and_classify(encoder, tmp_path):
    # Label: does the second sentence follow the first in its chapter?
    lines = sentences(60, start=100)
    rng = np.random.default_rng(1)
    rows = []
    for i in range(0, 58, 2):
        rows.append({"premise": lines[i], "hypothesis": lines[i + 1], "label": "next"})
        rows.append({"premise": lines[i], "hypothesis": lines[int(rng.integers(60))],
                     "label": "random"})
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = tmp_path / "pairs"
    assert main(["finetune", str(encoder), "--train", str(path), "--text-column", "premise",
                 "--text-pair-column", "hypothesis", "--recipe", RECIPE, "--epochs", "1",
                 "--run-dir", str(run_dir), "--quiet"]) == 0
    assert (run_dir / "preset" / "task.json").is_file()
    results = mlm.classify(str(run_dir / "preset"), [lines[0]], pairs=[lines[1]])
    assert results[0]["label"] in ("next", "random")


@pytest.mark.slow
def test_compare_pretrained_against_random_gives_both_rows(encoder, labelled, tmp_path,
                                                           capsys):
    train, dev = labelled
    out = tmp_path / "compare"
    status = main(["compare", str(encoder), f"random:{encoder}", "--train", str(train),
                   "--validation", str(dev), "--seeds", "2", "--recipe", RECIPE, "--epochs", "1",
                   "--batch-size", "16", "--run-dir", str(out), "--quiet"])
    assert status == 0
    table = (out / "compare.md").read_text()
    printed = capsys.readouterr().out
    for name in (str(encoder), f"random:{encoder}"):
        assert f"| {name} | 2 |" in table
        assert f"| {name} | 2 |" in printed
    # The second encoder against the first, paired by seed, and whether it is noise.
    assert "(reference) |" in table and "accuracy vs the first (± s.e.)" in table
    assert f"random:{encoder} against {encoder}: " in printed
    assert "seeds' noise" in printed
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [len(r["runs"]) for r in rows] == [2, 2]
    # The same seed gives the same data order and head for both encoders, so the
    # runs differ by the encoder's weights alone.
    assert rows[0]["runs"][0]["seed"] == rows[1]["runs"][0]["seed"] == 0


# Bad input: one line, exit status 2, no run folder left behind.


def _bad_rows(kind: str, train: Path, folder: Path) -> list[str]:
    """Command-line arguments (after the preset) that give the error `kind`."""
    rows = list(csv.DictReader(open(train, encoding="utf-8")))
    if kind == "missing column":
        return ["--train", str(train), "--label-column", "stars"]
    if kind == "single class":
        one = write_csv(folder / "one.csv", [r for r in rows if r["label"] == "old"])
        return ["--train", str(one)]
    if kind == "unseen validation label":
        dev = write_csv(folder / "dev.csv", rows[:5] + [{"text": "Selah.", "label": "psalm"}])
        return ["--train", str(train), "--validation", str(dev)]
    if kind == "empty text":
        empty = write_csv(folder / "empty.csv", rows[:5] + [{"text": " ", "label": "old"}])
        return ["--train", str(empty)]
    if kind == "sequence length":
        return ["--train", str(train), "--sequence-length", "4096"]
    raise AssertionError(kind)


BAD_INPUTS = {
    "missing column": "has no label column 'stars' (columns found: text, label)",
    "single class": "single class (old)",
    "unseen validation label": "label(s) 'psalm' that the training data lacks",
    "empty text": "row 6 has empty text in column 'text'",
    "sequence length": "max_sequence_length=512, but received sequence_length=4096",
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(kind, encoder, labelled, tmp_path,
                                                         capsys):
    run_dir = tmp_path / "run"
    args = _bad_rows(kind, labelled[0], tmp_path)
    status = main(["finetune", str(encoder), *args, "--recipe", RECIPE,
                   "--run-dir", str(run_dir), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err.startswith("mlm: error: ") and "\n" not in err, err
    assert BAD_INPUTS[kind] in err
    assert not run_dir.exists()


def test_preset_without_a_backbone_is_one_line(labelled, tmp_path, capsys):
    folder = tmp_path / "not_a_preset"
    folder.mkdir()
    (folder / "notes.txt").write_text("no config.json here")
    status = main(["finetune", str(folder), "--train", str(labelled[0]), "--recipe", RECIPE,
                   "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "not a keras-hub preset folder" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_existing_run_folder_is_not_overwritten_silently(finetuned, encoder, labelled, capsys):
    run_dir, _ = finetuned
    status = main(["finetune", str(encoder), "--train", str(labelled[0]), "--recipe", RECIPE,
                   "--run-dir", str(run_dir)])
    assert status == 2 and "--resume" in capsys.readouterr().err


def test_hub_task_offline_is_the_one_line_network_error(encoder, tmp_path, capsys, monkeypatch):
    import socket

    import datasets

    def unreachable(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    status = main(["finetune", str(encoder), "--task", "glue/sst2", "--recipe", RECIPE,
                   "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in err
    assert "could not download dataset 'glue/sst2': no network" in err
    assert not (tmp_path / "run").exists()


def test_unknown_hub_task_lists_the_known_ones(encoder, tmp_path, capsys):
    status = main(["finetune", str(encoder), "--task", "glue/stsb", "--recipe", RECIPE,
                   "--run-dir", str(tmp_path / "run")])
    assert status == 2 and "glue/sst2" in capsys.readouterr().err
