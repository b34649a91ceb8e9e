"""A supervising parent for multi-process runs: JAX's aborts become one line.

When JAX's coordination service declares a process dead (a heartbeat
timeout after a cut link or a killed peer), every surviving process ends in
a C++ `LOG(FATAL)` (jax's `client.h`: "Terminating process because the JAX
distributed service detected fatal errors"): SIGABRT and a stack trace,
which Python cannot catch. So a multi-process `mlm pretrain` re-executes
itself as a child and waits for it. The child sends the native output of
JAX, XLA and gloo (file descriptors 1 and 2) to a log file and keeps mlm's
own lines on the terminal; the parent turns the child's abort into one
`mlm: error` line and exit status 2.

The parent only waits: it reads none of the child's output, so a training
step costs what it costs without it. It passes on the signals it receives,
so SIGTERM and SIGINT still stop the run after a checkpoint.
"""

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

# Set in the child's environment: the file its native output goes to. Its
# presence tells the re-executed `mlm` that it is the child.
CHILD_LOG = "MLM_NATIVE_LOG"

# Passed on to the child; the child runs in its own process group, so a
# Ctrl-C at the terminal reaches it once, through the parent.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)

# What jax's distributed client logs before it aborts on a lost peer.
_LOST_PEER = "JAX distributed service detected fatal errors"
_STATUS = re.compile(r"absl::Status: (.*)")


def supervise(command: list[str], *, log: Path) -> int:
    """Runs `command` (this `mlm` command line) as a child; returns the exit status.

    Args:
        command: the argv that starts the child.
        log: where the child's native output goes once the child ends, if
            its folder (the run directory) exists then: process 0 creates
            the run directory, so it may not exist before. Until then the
            output goes to a file in the system's temporary folder.
    """
    fd, temporary = tempfile.mkstemp(prefix=f"mlm-{log.stem}-", suffix=".log")
    os.close(fd)
    child, early = None, []

    def forward(signum, frame):
        if child is None:
            early.append(signum)  # passed on once the child exists
        else:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        child = subprocess.Popen(command, env={**os.environ, CHILD_LOG: temporary},
                                 process_group=0, preexec_fn=_die_with_parent(os.getpid()))
        for signum in early:
            child.send_signal(signum)
        status = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    kept = _keep_log(Path(temporary), log)
    if status >= 0:
        return status  # the child printed its own message, if any
    return _report_death(signal.Signals(-status), log=kept)


def native_output_to(path: str | Path) -> None:
    """In the child: file descriptors 1 and 2 to `path`, `sys.stdout` and `sys.stderr` kept.

    C++ code (JAX, XLA, gloo, TensorFlow) writes to the descriptors; Python's
    streams go on writing to the terminal through duplicates of them.
    """
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        stream = getattr(sys, name)
        stream.flush()
        kept = os.dup(fd)
        os.dup2(log, fd)
        line = stream.line_buffering or name == "stderr"
        setattr(sys, name, open(kept, "w", buffering=1 if line else -1,
                                encoding=stream.encoding, errors=stream.errors))
    os.close(log)


def _die_with_parent(parent: int):
    """A `preexec_fn`: the child gets SIGKILL when the parent dies (Linux).

    Its own process group shields the child from signals sent to the
    parent's group, so without this a killed parent would leave it training.
    """
    def preexec():
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def _keep_log(temporary: Path, final: Path) -> Path | None:
    """Appends the child's native output to `final` if its folder exists; its path."""
    if not temporary.stat().st_size:
        temporary.unlink()
        return None
    if not final.parent.is_dir():
        return temporary
    with open(temporary, "rb") as source, open(final, "ab") as target:
        shutil.copyfileobj(source, target)
    temporary.unlink()
    return final


def _report_death(signum: signal.Signals, *, log: Path | None) -> int:
    """Prints the one line for a child that died of `signum`; the exit status."""
    text = log.read_text(errors="replace") if log is not None else ""
    where = f" (JAX's log: {log})" if log is not None else ""
    if signum in FORWARDED:
        return 128 + signum  # stopped by the signal it was sent
    if signum == signal.SIGABRT and _LOST_PEER in text:
        print(f"mlm: error: lost contact with another process of the distributed run (JAX's "
              f"coordination service: {_status(text)}); restart every process with "
              f"--resume{where}", file=sys.stderr)
        return 2
    print(f"mlm: error: the training process died of {signum.name}; restart every process "
          f"with --resume{where}", file=sys.stderr)
    return 128 + signum


def _status(log: str, *, limit: int = 200) -> str:
    """The status JAX's client aborted with, e.g. "DEADLINE_EXCEEDED: Deadline Exceeded".

    A status that ends in a colon continues on the next line (the tasks that
    stopped sending heartbeats); that line is joined to it.
    """
    lines = log[log.index(_LOST_PEER):].splitlines()
    found = _STATUS.search(lines[0])
    if found is None:
        return "a process stopped sending heartbeats"
    status = found.group(1).strip()
    if status.endswith(":") and len(lines) > 1 and lines[1].strip():
        status = f"{status} {lines[1].strip()}"
    return status if len(status) <= limit else status[: limit - 3] + "..."
