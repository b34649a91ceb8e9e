"""The run report, its PNGs and the TensorBoard scalars agree with metrics.jsonl and the cache."""

import json
import shutil
import statistics

import numpy as np
import pytest

from mlm.progress import format_duration
from mlm.run.report import wall_time
from tests.conftest import read_metrics, run_mlm, tensorboard_scalars, token_entry

# Not marked slow: the shared run (`trained_run` in conftest.py) is the fast loop's
# end-to-end run of the test recipe (pretraining, the loop, evaluation, export, the
# report, fill-mask).


@pytest.fixture(scope="module")
def run(trained_run):
    """The shared finished `bert_test` run, its records and what it printed."""
    return (trained_run.run_dir, read_metrics(trained_run.run_dir), trained_run.out,
            trained_run.err)


def test_report_numbers_come_from_metrics_jsonl(run):
    from mlm.run.report import build_report

    run_dir, records, _, _ = run
    text = (run_dir / "report.md").read_text()
    held_out = [r for r in records if r["split"] == "held_out"]
    assert [r["step"] for r in held_out] == [0, 3, 6]
    for r in held_out:
        row = (f"| {r['step']:,} | {r['loss']:.4f} | {r['accuracy']:.4f} | "
               f"{r['perplexity']:.2f} | {r['masked_tokens']:,} |")
        assert row in text
    rates = [r["tokens_per_second"] for r in records if r["split"] == "train"]
    assert len(rates) == 3  # log_every=2 over 6 steps
    assert f"{statistics.median(rates):,.0f} tokens/s (median of 3 log windows)" in text
    (start,) = [r for r in records if r.get("event") == "start"]
    (end,) = [r for r in records if r.get("event") == "end"]
    assert end is records[-1]
    assert f"| wall time | {format_duration(end['time'] - start['time'])} in 1 session |" in text
    report = build_report(run_dir)
    assert report["held_out"] == held_out
    assert report["training"]["median_tokens_per_second"] == statistics.median(rates)
    assert report["wall"]["seconds"] == pytest.approx(end["time"] - start["time"])


def test_report_corpus_statistics_come_from_the_token_cache(run):
    from mlm.data.pipeline import padding_fraction
    from mlm.run.report import build_report

    run_dir, _, _, _ = run
    entry = token_entry(run_dir)
    meta = json.loads((entry / "meta.json").read_text())
    vocabulary = (run_dir / "vocab" / "vocabulary.txt").read_text().splitlines()
    end_id, unk_id = vocabulary.index("[SEP]"), vocabulary.index("[UNK]")
    corpus = build_report(run_dir)["corpus"]
    text = (run_dir / "report.md").read_text()
    for split in ("train", "held_out"):
        tokens = np.fromfile(entry / f"{split}.bin", dtype=meta[split]["dtype"])
        stats = corpus[split]
        assert stats["tokens"] == len(tokens) == meta[split]["tokens"]
        assert stats["documents"] == np.count_nonzero(tokens == end_id) == meta[split]["documents"]
        assert stats["unknown_tokens"] == np.count_nonzero(tokens == unk_id)
        assert stats["unknown_tokens"] == meta[split]["unknown_tokens"]
        assert stats["padding_fraction"] == padding_fraction(len(tokens), 32)
    assert corpus["train"]["documents"] == 60 and corpus["held_out"]["documents"] == 10
    train = np.fromfile(entry / "train.bin", dtype=meta["train"]["dtype"])
    assert corpus["vocabulary_size"] == len(vocabulary)
    assert corpus["vocabulary_coverage"] == len(np.unique(train)) / len(vocabulary)
    assert "| documents | 60 | 10 |" in text
    assert f"| tokens (one separator per document) | {meta['train']['tokens']:,} |" in text
    assert f"(coverage {corpus['vocabulary_coverage']:.2%})" in text


def test_report_shows_fill_mask_examples_from_held_out_text(run, held_out_corpus):
    from mlm.run.report import build_report

    run_dir, _, _, _ = run
    examples = build_report(run_dir, examples=2)["examples"]
    held_out_text = " ".join(held_out_corpus.read_text().lower().split())
    assert len(examples) == 2
    for example in examples:
        before, after = example["text"].split(" [MASK] ")
        assert example["answer"] in held_out_text and before.split()[-1] in held_out_text
        assert len(example["predictions"]) == 5
        assert all(0.0 <= p <= 1.0 for _, p in example["predictions"])


def test_report_pngs_are_valid_images_of_the_expected_size(run):
    import matplotlib.image

    run_dir, _, _, _ = run
    text = (run_dir / "report.md").read_text()
    for name in ("curves.png", "schedule.png"):
        assert f"]({name})" in text
        data = (run_dir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (1000, 400)
        pixels = matplotlib.image.imread(run_dir / name)
        assert pixels.shape[:2] == (400, 1000)
        assert pixels.std() > 0.05  # something was drawn


def test_tensorboard_scalars_equal_metrics_jsonl(run):
    run_dir, records, _, _ = run
    found = {(split, step, tag): value
             for split, step, tag, value in tensorboard_scalars(run_dir / "tensorboard")}
    expected = {
        (r["split"], r["step"], name): float(np.float32(value))
        for r in records if r["split"] in ("train", "held_out")
        for name, value in r.items() if name not in ("split", "step", "time")
    }
    assert {name for _, _, name in expected} >= {
        "loss", "accuracy", "learning_rate", "tokens_per_second", "perplexity"}
    assert found == expected


def test_mlm_report_rebuilds_the_same_report(run, tmp_path):
    run_dir, _, _, _ = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for name in ("report.md", "curves.png", "schedule.png"):
        (copy / name).unlink()
    code, out, _ = run_mlm("report", copy, in_process=True)
    assert code == 0 and out == f"report written to {copy / 'report.md'}\n"
    rebuilt = (copy / "report.md").read_text()
    original = (run_dir / "report.md").read_text()
    # Identical but for where the run lies.
    assert rebuilt == original.replace(str(run_dir), str(copy))
    assert (copy / "curves.png").stat().st_size > 0 and (copy / "schedule.png").stat().st_size > 0


def test_report_on_a_folder_that_is_no_run_is_a_one_line_error(tmp_path):
    code, _, err = run_mlm("report", tmp_path, in_process=True)
    assert code == 2
    assert err.startswith("mlm: error: ") and err.count("\n") == 1
    assert not (tmp_path / "report.md").exists()


def test_progress_is_plain_lines_when_not_a_terminal(run):
    run_dir, _, out, err = run
    assert "\r" not in err
    lines = err.splitlines()
    assert "curves live in TensorBoard" in lines[0]
    assert lines[0].endswith(f"tensorboard --logdir {run_dir / 'tensorboard'}")
    assert any(line.startswith("vocabulary: counting words: 60/60 documents, done in ")
               for line in lines)
    assert any(line.startswith("tokenizing train: 60/60 documents, ") for line in lines)
    assert any(line.startswith("training: 6/6 steps, done in ") for line in lines)
    assert f"report in {run_dir / 'report.md'}" in err
    assert out.startswith("held-out masked accuracy ")


def test_wall_time_sums_sessions_and_skips_the_time_a_run_lay_stopped():
    records = [
        {"split": "run", "event": "start", "time": 100.0},
        {"split": "train", "step": 2, "time": 130.0},  # then stopped
        {"split": "run", "event": "start", "time": 1000.0},  # resumed much later
        {"split": "train", "step": 4, "time": 1010.0},
        {"split": "run", "event": "end", "step": 4, "time": 1015.0},
    ]
    assert wall_time(records) == {"seconds": 45.0, "sessions": 2, "finished": 1015.0}


def test_tensorboard_rebuild_drops_the_steps_a_resumed_run_writes_again(tmp_path):
    from mlm.run.directory import RunDir
    from mlm.run.log import TensorBoardLog

    run = RunDir(tmp_path)
    metrics, board = run.metrics, TensorBoardLog(run.tensorboard)
    records = [{"split": "train", "step": s, "loss": 10.0 - s} for s in range(1, 7)]
    records.append({"split": "held_out", "step": 4, "loss": 5.0})
    with open(metrics, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
            board.write(record)
    assert run.trim_metrics(step=4) == 2  # killed after step 6, resumed from 4
    board.rebuild(run.read_metrics())
    for step in (5, 6):  # written again by the resumed run, with other values
        board.write({"split": "train", "step": step, "loss": 1.0})
    assert tensorboard_scalars(tmp_path / "tensorboard") == [
        ("held_out", 4, "loss", 5.0), ("train", 1, "loss", 9.0), ("train", 2, "loss", 8.0),
        ("train", 3, "loss", 7.0), ("train", 4, "loss", 6.0), ("train", 5, "loss", 1.0),
        ("train", 6, "loss", 1.0),
    ]
