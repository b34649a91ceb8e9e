"""The supervising parent of multi-process runs, with stand-in children (no JAX).

The real aborts, over two hosts, are in tests/test_network.py.
"""

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from mlm.training.supervisor import CHILD_LOG, supervise

# What jax's distributed client writes before it aborts (jax 0.10.2, client.h:80).
JAX_ABORT = (
    "F1203 10:41:29.148432    6232 client.h:80] Terminating process because the JAX "
    "distributed service detected fatal errors. This most likely indicates that another task "
    "died; see the other task logs for more details. Disable Python buffering, i.e. `python "
    "-u`, to be sure to see all the previous output. absl::Status: UNAVAILABLE: The following "
    "tasks are unhealthy (stopped sending heartbeats):\n1\n\n*** Check failure stack trace: ***\n"
)


def _child(code: str) -> list[str]:
    """A stand-in child: Python `code` whose native output (fds 1, 2) goes to the log."""
    prelude = "import os, sys\nfrom mlm.training.supervisor import native_output_to\n" \
              f"native_output_to(os.environ[{CHILD_LOG!r}])\n"
    return [sys.executable, "-c", prelude + textwrap.dedent(code)]


def test_an_abort_on_a_lost_peer_becomes_one_line_and_the_log_moves_to_the_run(
    tmp_path, capfd
):
    log = tmp_path / "run" / "jax-process-1.log"
    log.parent.mkdir()
    status = supervise(_child(f"""
        print("step 8/24: mlm's own line", file=sys.stderr)
        os.write(1, b"[Gloo] Rank 1 is connected to 1 peer ranks\\n")
        os.write(2, {JAX_ABORT.encode()!r})
        os.abort()
    """), log=log)
    out, err = capfd.readouterr()
    assert status == 2
    assert err.splitlines() == [
        "step 8/24: mlm's own line",
        "mlm: error: lost contact with another process of the distributed run (JAX's "
        "coordination service: UNAVAILABLE: The following tasks are unhealthy (stopped sending "
        f"heartbeats): 1); restart every process with --resume (JAX's log: {log})",
    ]
    assert out == ""
    assert log.read_text() == "[Gloo] Rank 1 is connected to 1 peer ranks\n" + JAX_ABORT


def test_other_deaths_say_so_and_statuses_pass_through(tmp_path, capfd):
    missing = tmp_path / "not_yet" / "jax-process-0.log"  # no run directory: log stays put
    status = supervise(_child("""
        os.write(2, b"native noise\\n")
        os.kill(os.getpid(), 9)
    """), log=missing)
    err = capfd.readouterr().err.strip()
    assert status == 128 + signal.SIGKILL
    assert err.startswith("mlm: error: the training process died of SIGKILL; restart every "
                          "process with --resume (JAX's log: "), err
    kept = Path(err.split("(JAX's log: ")[1].rstrip(")"))
    assert kept.parent == Path(tempfile.gettempdir()) and not missing.exists()
    assert kept.read_text() == "native noise\n"
    kept.unlink()

    assert supervise(_child("sys.exit(3)"), log=missing) == 3
    assert capfd.readouterr().err == "" and not missing.exists()  # nothing to keep


def test_signals_to_the_parent_reach_the_child_once(tmp_path):
    # The child counts the SIGINTs it gets. Ctrl-C at a terminal sends SIGINT to
    # the foreground process group: the parent's, not the child's own group, so
    # the child gets it once, from the parent. (Two SIGINTs sent at once may
    # merge into one, so the child's own group is checked too.)
    child = textwrap.dedent(f"""
        import os, signal, sys, time
        own_group = os.getpgrp() != os.getpgid(os.getppid())
        got = []
        signal.signal(signal.SIGINT, lambda s, f: got.append(s))
        open({str(tmp_path / "ready")!r}, "w").close()
        time.sleep(3)
        sys.exit(100 + 10 * own_group + len(got))
    """)
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from mlm.training.supervisor import supervise
        log = Path({str(tmp_path / "jax-process-0.log")!r})
        sys.exit(supervise([sys.executable, "-c", {child!r}], log=log))
    """)
    parent = subprocess.Popen([sys.executable, "-c", code],
                              start_new_session=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "ready").exists():
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.02)
    os.killpg(parent.pid, signal.SIGINT)
    assert parent.wait(timeout=60) == 111  # its own process group, one SIGINT
