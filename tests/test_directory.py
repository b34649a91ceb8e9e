"""One run per directory, writability, leftovers of killed directory, and a clean stop on SIGINT.

SIGTERM, and SIGKILL at many points, are in tests/test_faults.py, which also
compares the resumed weights with an uninterrupted run.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mlm.errors import MlmError
from mlm.run import checkpoints, directory
from tests.conftest import run_mlm


@pytest.mark.slow
def test_a_second_process_on_the_same_run_directory_is_refused(tmp_path, small_corpus):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with directory.run_lock(run_dir):
        with pytest.raises(MlmError, match="in use by process"):
            with directory.run_lock(run_dir):
                pass
        code, _, err = run_mlm("pretrain", "--recipe", "bert_test", "--corpus", small_corpus,
                               "--run-dir", run_dir, "--overwrite", in_process=True)
        assert code == 2 and "is in use by process" in err
    # Released on exit: the next holder gets it.
    with directory.run_lock(run_dir):
        pass


@pytest.mark.slow
def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from mlm.run import directory\n"
         f"with directory.run_lock(r'{run_dir}'):\n"
         "    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(MlmError, match="in use"):
        with directory.run_lock(run_dir):
            pass
    holder.kill()
    holder.wait(timeout=30)
    with directory.run_lock(run_dir):  # the OS released the dead process's lock
        pass


@pytest.mark.slow
def test_sigint_stops_after_the_step_with_a_checkpoint_and_resumes(
    tmp_path, small_corpus, held_out_corpus
):
    signum = signal.SIGINT
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "mlm", "pretrain", "--recipe", "bert_test",
               "--corpus", str(small_corpus), "--held-out", str(held_out_corpus),
               "--run-dir", str(run_dir), "--steps", "100000",
               "--set", "train.log_every=1", "train.checkpoint_every=50000"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    for line in proc.stderr:
        if line.startswith("step 3/"):
            break
        assert time.time() < deadline, "training did not start"
    proc.send_signal(signum)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 128 + signum
    assert "Traceback" not in rest
    assert f"mlm: stopped by {signal.Signals(signum).name} at step" in rest
    assert f"mlm pretrain --run-dir {run_dir} --resume" in rest
    stopped_at = max(checkpoints.list_checkpoints(run_dir))
    assert stopped_at >= 3
    _, _, err = run_mlm("pretrain", "--run-dir", run_dir, "--resume",
                        "--steps", stopped_at + 2, check=True)
    assert f"resuming from {run_dir / 'checkpoints' / f'step-{stopped_at}'}" in err
    assert max(checkpoints.list_checkpoints(run_dir)) == stopped_at + 2


def test_an_unwritable_run_directory_is_refused_before_anything(tmp_path, small_corpus):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(MlmError, match=f"cannot write to {blocker}"):
        directory.run_lock(blocker).__enter__()
    code, _, err = run_mlm("pretrain", "--recipe", "bert_test", "--corpus", small_corpus,
                           "--run-dir", blocker / "run", in_process=True)
    assert code == 2 and f"mlm: error: cannot write to {blocker} (Not a directory)" in err


@pytest.mark.skipif(os.access("/sys", os.W_OK) and not os.path.ismount("/sys"),
                    reason="needs a folder that cannot be written, even by root")
def test_a_read_only_filesystem_is_refused_before_training(small_corpus):
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("no /sys")
    code, _, err = run_mlm("pretrain", "--recipe", "bert_test", "--corpus", small_corpus,
                           "--run-dir", "/sys/kernel/mlm-run", in_process=True)
    assert code == 2 and "mlm: error: cannot write to /sys/kernel" in err
    assert not os.path.exists("/sys/kernel/mlm-run")


def test_resume_checks_the_run_directory_can_be_written_before_training(
    tmp_path, monkeypatch
):
    from mlm.config import load_recipe

    run_dir = tmp_path / "run"
    directory.create_run_dir(run_dir, recipe=load_recipe("bert_test"), overwrite=False)
    checked = []

    def unwritable(folder):
        checked.append(folder)
        raise MlmError(f"cannot write to {folder} (Read-only file system); choose another.")

    monkeypatch.setattr(directory, "_check_writable", unwritable)
    code, _, err = run_mlm("pretrain", "--run-dir", run_dir, "--resume", in_process=True)
    assert code == 2 and "Read-only file system" in err
    assert checked == [run_dir]
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json"]


def test_leftovers_of_a_killed_run_are_removed(tmp_path):
    kept = [tmp_path / "checkpoints" / "step-4", tmp_path / "cache" / "abc123"]
    partial = [
        tmp_path / "checkpoints" / ".step-6.tmp",
        tmp_path / "checkpoints" / ".step-2.old",
        tmp_path / "cache" / ".abc123.tmp",
        tmp_path / ".preset.tmp",
    ]
    for folder in kept + partial:
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "file").write_text("x")
    said = []
    directory.clean_interrupted(tmp_path, say=said.append)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in partial)
    assert len(said) == 1 and all(str(p.relative_to(tmp_path)) in said[0] for p in partial)
    directory.clean_interrupted(tmp_path, say=said.append)
    assert len(said) == 1  # nothing left: nothing said


def test_metrics_after_the_resumed_checkpoint_are_dropped(tmp_path):
    run = directory.RunDir(tmp_path)
    records = [
        {"step": 0, "split": "held_out", "loss": 6.0},
        {"split": "corpus", "part": "train", "nul_replaced": 1},
        {"step": 1, "split": "train", "loss": 5.0},
        {"step": 2, "split": "train", "loss": 4.0},
        {"step": 3, "split": "train", "loss": 3.0},
    ]
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"step": 4, "spl'  # killed
    run.metrics.write_text(text)
    assert run.trim_metrics(step=2) == 2  # step 3 and the cut line
    assert [json.loads(line) for line in run.metrics.read_text().splitlines()] == records[:4]
    assert run.trim_metrics(step=2) == 0
    assert run.trim_metrics(step=0) == 3  # a restart from scratch keeps no step
    assert [json.loads(line) for line in run.metrics.read_text().splitlines()] == [records[1]]
    assert directory.RunDir(tmp_path / "absent").trim_metrics(step=3) == 0


def test_a_torn_last_metrics_line_is_skipped_and_said_once(tmp_path):
    run = directory.RunDir(tmp_path)
    run.append_metrics({"step": 1, "loss": 5.0})
    with open(run.metrics, "a") as f:
        f.write('{"step": 2, "lo')  # a write killed mid-line
    said = []
    assert run.read_metrics(say=said.append) == [{"step": 1, "loss": 5.0}]
    assert len(said) == 1 and "cut short" in said[0]
    assert run.read_metrics(say=said.append) == [{"step": 1, "loss": 5.0}]
    directory.clean_interrupted(tmp_path, say=said.append)  # what a resume does first
    assert "metrics.jsonl" in said[-1]
    run.append_metrics({"step": 2, "loss": 4.0})
    assert run.read_metrics(say=said.append) == [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0}]
    assert len(said) == 3


def test_a_bad_metrics_line_before_the_last_is_an_error(tmp_path):
    run = directory.RunDir(tmp_path)
    run.metrics.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(MlmError, match="line 2 is not a JSON record"):
        run.read_metrics()
