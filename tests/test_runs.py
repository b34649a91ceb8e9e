"""One run per directory, and a clean stop on SIGTERM/SIGINT that resumes."""

import signal
import subprocess
import sys
import time

import pytest

from mlm import checkpoints, runs
from mlm.cli import main
from mlm.errors import MlmError

pytestmark = pytest.mark.slow


def test_a_second_process_on_the_same_run_directory_is_refused(tmp_path, capsys, small_corpus):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with runs.run_lock(run_dir):
        with pytest.raises(MlmError, match="in use by process"):
            with runs.run_lock(run_dir):
                pass
        code = main(["pretrain", "--recipe", "bert_test", "--corpus", str(small_corpus),
                     "--run-dir", str(run_dir), "--overwrite"])
        assert code == 2 and "is in use by process" in capsys.readouterr().err
    # Released on exit: the next holder gets it.
    with runs.run_lock(run_dir):
        pass


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from mlm import runs\n"
         f"with runs.run_lock(r'{run_dir}'):\n"
         "    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(MlmError, match="in use"):
        with runs.run_lock(run_dir):
            pass
    holder.kill()
    holder.wait(timeout=30)
    with runs.run_lock(run_dir):  # the OS released the dead process's lock
        pass


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_resumes(
    signum, tmp_path, small_corpus, held_out_corpus
):
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
    resumed = subprocess.run(
        [sys.executable, "-m", "mlm", "pretrain", "--run-dir", str(run_dir), "--resume",
         "--steps", str(stopped_at + 2)],
        capture_output=True, text=True, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {run_dir / 'checkpoints' / f'step-{stopped_at}'}" in resumed.stderr
    assert max(checkpoints.list_checkpoints(run_dir)) == stopped_at + 2
