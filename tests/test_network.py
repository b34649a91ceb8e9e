"""Two hosts over a real network stack: Linux network namespaces joined by a veth pair.

Each host is a network namespace with its own loopback, one end of a veth
pair (192.0.2.1 and 192.0.2.2, the documentation range), its own
`/etc/netns/<name>/hosts` (which `ip netns exec` mounts over /etc/hosts) and
its own host name (`unshare --uts`): gloo derives the address it advertises
from `gethostname()` resolved through /etc/hosts. Traffic stays on that
link and on each namespace's loopback.

Needs root, `ip` (iproute2) and `unshare`; where a namespace cannot be made,
every test here skips with the reason.
"""

import dataclasses
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mlm.errors import MlmError
from mlm.training.distributed import HostAddress, _advertise_for_collectives
from tests.conftest import (
    JAX_RUN_OVERRIDES,
    assert_same_held_out,
    max_weight_difference,
    saved_arrays,
)

PORT = 12345
# Short enough to keep the tests quick; a loaded 2-core machine still sends
# heartbeats (their own thread) well within it.
HEARTBEAT_TIMEOUT = 10


@dataclasses.dataclass(frozen=True)
class Host:
    """One namespace of the pair: where a process of the run lives."""

    namespace: str
    # What `hostname` says inside; gloo resolves it.
    name: str
    # Its end of the veth pair, and that end's address.
    device: str
    address: str

    def write_hosts(self, *, name_resolves_to: str) -> None:
        """This host's /etc/hosts: its own name mapped to `name_resolves_to`."""
        Path(f"/etc/netns/{self.namespace}/hosts").write_text(
            f"127.0.0.1 localhost\n{name_resolves_to} {self.name}\n"
        )

    def command(self, argv) -> list[str]:
        """`argv` run inside the namespace, under this host's name."""
        return ["ip", "netns", "exec", self.namespace, "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', self.name, *map(str, argv)]

    def set_link(self, state: str) -> None:
        _ip("-n", self.namespace, "link", "set", self.device, state)


def _ip(*args) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def _why_no_namespaces() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    missing = [tool for tool in ("ip", "unshare") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (ip is in iproute2, unshare in util-linux)"
    return None


@pytest.fixture(scope="module")
def hosts():
    """Two hosts joined by a veth pair; removed, with their processes, at the end."""
    reason = _why_no_namespaces()
    if reason:
        pytest.skip(f"two hosts need network namespaces: {reason}")
    tag = f"mlm{secrets.token_hex(3)}"  # unique per run; device names stay under 16 bytes
    pair = [Host(namespace=f"{tag}-{i}", name=f"{tag}-host{i}", device=f"{tag}v{i}",
                 address=f"192.0.2.{i + 1}") for i in range(2)]
    made = []
    try:
        for host in pair:
            _ip("netns", "add", host.namespace)
            made.append(host)
            Path(f"/etc/netns/{host.namespace}").mkdir(parents=True, exist_ok=True)
        _ip("link", "add", pair[0].device, "type", "veth", "peer", "name", pair[1].device)
        for host in pair:
            _ip("link", "set", pair[0].device if host is pair[0] else pair[1].device,
                "netns", host.namespace)
            _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", host.device)
            _ip("-n", host.namespace, "link", "set", host.device, "up")
            _ip("-n", host.namespace, "link", "set", "lo", "up")
    except (subprocess.CalledProcessError, OSError) as e:
        _remove(made)
        detail = e.stderr.strip() if isinstance(e, subprocess.CalledProcessError) else e
        pytest.skip(f"two hosts need network namespaces, which cannot be made here: {detail}")
    yield pair
    _remove(made)


def _remove(made: list[Host]) -> None:
    """Ends what still runs in the namespaces, deletes them (and the veth pair with them)."""
    if made:  # a veth pair not yet moved into the namespaces
        subprocess.run(["ip", "link", "delete", made[0].device], capture_output=True)
    for host in made:
        pids = subprocess.run(["ip", "netns", "pids", host.namespace], capture_output=True,
                              text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "delete", host.namespace], capture_output=True)
        shutil.rmtree(f"/etc/netns/{host.namespace}", ignore_errors=True)


@dataclasses.dataclass
class Run:
    """The two processes of a run, one per host; stderr of process i in `logs[i]`."""

    procs: list[subprocess.Popen]
    logs: list[Path]

    def stderr(self, i: int) -> str:
        return self.logs[i].read_text()

    def wait(self, *, timeout: float) -> list[int]:
        try:
            return [p.wait(timeout=timeout) for p in self.procs]
        finally:
            for p in self.procs:
                if p.poll() is None:
                    p.kill()

    def tails(self) -> str:
        return "\n".join(f"--- process {i}:\n{self.stderr(i)[-3000:]}" for i in range(2))


def _start(hosts, run_dir, *, corpus, held_out, env, logs, extra=(), run_dir_of=None) -> Run:
    """Starts a process on each host; `run_dir_of[i]`, if given, is host i's own run dir."""
    procs = []
    for i, host in enumerate(hosts):
        argv = [sys.executable, "-m", "mlm", "pretrain", "--recipe", "bert_test",
                "--set", *JAX_RUN_OVERRIDES, "--corpus", corpus, "--held-out", held_out,
                "--run-dir", run_dir_of[i] if run_dir_of else run_dir,
                "--coordinator", f"{hosts[0].address}:{PORT}",
                "--num-processes", "2", "--process-id", i,
                "--heartbeat-timeout", HEARTBEAT_TIMEOUT, "--init-timeout", 120, *extra]
        with open(logs[i], "w") as err:
            procs.append(subprocess.Popen(host.command(argv), env=env,
                                          stdout=subprocess.DEVNULL, stderr=err))
    return Run(procs=procs, logs=list(logs))


def _wait_for_checkpoint(run: Run, run_dir: Path, step: int) -> None:
    deadline = time.monotonic() + 400
    while not (run_dir / "checkpoints" / f"step-{step}" / "state.json").is_file():
        assert time.monotonic() < deadline, run.tails()
        assert all(p.poll() is None for p in run.procs), run.tails()
        time.sleep(0.05)


def _resolve_in(host: Host, env) -> str:
    """What `host` resolves its own name to, asked from inside it."""
    code = "import socket; print(socket.gethostbyname(socket.gethostname()))"
    return subprocess.run(host.command([sys.executable, "-c", code]), env=env, check=True,
                          capture_output=True, text=True, timeout=60).stdout.strip()


@pytest.fixture(scope="module")
def two_host_run(hosts, tmp_path_factory, jax_env, small_corpus, held_out_corpus):
    """An uninterrupted two-host run whose host names resolve to 127.0.0.1 (process 0's
    run dir); host 1 keeps a run directory of its own, as hosts without a shared
    filesystem do.

    As on many machines (Debian and Ubuntu map the name to 127.0.1.1): left
    alone, gloo advertises 127.0.0.1 and the other host connects to itself.
    """
    for host in hosts:
        host.write_hosts(name_resolves_to="127.0.0.1")
    assert [_resolve_in(host, jax_env) for host in hosts] == ["127.0.0.1", "127.0.0.1"]
    folder = tmp_path_factory.mktemp("two_hosts")
    run_dir = folder / "run"
    run = _start(hosts, run_dir, corpus=small_corpus, held_out=held_out_corpus, env=jax_env,
                 logs=[folder / "p0.log", folder / "p1.log"],
                 run_dir_of=[run_dir, folder / "host1" / "run"])
    statuses = run.wait(timeout=600)
    assert statuses == [0, 0], run.tails()
    return run_dir


@pytest.fixture
def named_hosts(hosts):
    """The hosts with /etc/hosts mapping each name to its own address, as it should."""
    for host in hosts:
        host.write_hosts(name_resolves_to=host.address)
    return hosts


@pytest.mark.slow
def test_two_hosts_train_as_one_process(two_host_run, jax_run):
    # The global batch of 8 split 4 + 4 over the hosts: only the order of float32
    # additions in the gradient all-reduce differs from one process (as on loopback,
    # tests/test_distributed.py).
    two, one = saved_arrays(two_host_run / "preset"), saved_arrays(jax_run / "preset")
    assert two.keys() == one.keys() and len(two) > 20
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=0, atol=1e-5, err_msg=key)
    print(f"max weight difference, two hosts against one process: "
          f"{max_weight_difference(two, one):.2e}")
    assert_same_held_out(two_host_run, jax_run)
    # Host 1 wrote its own run directory: the same vocabulary and checkpoints.
    own = two_host_run.parent / "host1" / "run"
    assert (own / "vocab" / "vocabulary.txt").read_bytes() == (
        two_host_run / "vocab" / "vocabulary.txt").read_bytes()
    last = saved_arrays(two_host_run / "checkpoints" / "step-24")
    mine = saved_arrays(own / "checkpoints" / "step-24")
    assert mine.keys() == last.keys()
    for key in last:
        np.testing.assert_array_equal(mine[key], last[key], err_msg=key)


@pytest.mark.slow
def test_a_host_named_for_loopback_offers_its_route_to_the_coordinator(two_host_run):
    # two_host_run's hosts resolve their names to 127.0.0.1, which gloo would
    # advertise: the run trained because each offered its veth address instead.
    # Each host's JAX log is in its own run directory.
    logs = [two_host_run / "jax-process-0.log",
            two_host_run.parent / "host1" / "run" / "jax-process-1.log"]
    text = "".join(log.read_text() for log in logs)
    assert "127.0.0.1" not in text, text
    assert "Rank 0 is connected to 1 peer ranks" in logs[0].read_text(), text
    assert (two_host_run / "preset").is_dir()


def test_a_host_named_for_loopback_stops_with_the_fix_if_jax_takes_no_address(monkeypatch):
    # Where JAX's internals no longer let mlm hand gloo the address, one line names
    # the host name, what it resolves to, and the /etc/hosts line that fixes it.
    from jax._src.lib import _jax

    monkeypatch.delattr(_jax, "make_gloo_tcp_collectives")
    host = HostAddress(name="node-7", resolved="127.0.1.1", routed="192.0.2.7")
    with pytest.raises(MlmError) as caught:
        _advertise_for_collectives(host)
    assert str(caught.value) == (
        "this host's name 'node-7' resolves to 127.0.1.1, a loopback address, so the other "
        "processes cannot reach its CPU collectives (gloo); map it to the address that "
        "reaches the coordinator with the line '192.0.2.7 node-7' in /etc/hosts, then "
        "restart every process."
    )
    assert host.unreachable and not HostAddress("n", "192.0.2.7", "192.0.2.7").unreachable
    assert HostAddress("n", None, "192.0.2.7").unreachable


def _one_error_line(stderr: str) -> str:
    """The only `mlm: error` line of `stderr`, which must be its last; no crash dump."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("mlm: error:")]
    assert errors == lines[-1:], stderr
    for dump in ("Traceback", "Check failure", "*** ", "F0", "F1"):
        assert not any(line.startswith(dump) for line in lines), stderr
    return errors[0]


@pytest.mark.slow
def test_a_killed_host_stops_the_other_with_one_line(
    named_hosts, tmp_path, jax_env, small_corpus, held_out_corpus
):
    run_dir = tmp_path / "run"
    run = _start(named_hosts, run_dir, corpus=small_corpus, held_out=held_out_corpus,
                 env=jax_env, logs=[tmp_path / "p0.log", tmp_path / "p1.log"])
    _wait_for_checkpoint(run, run_dir, 4)
    # SIGKILL to process 1's mlm: its training child dies with it (PR_SET_PDEATHSIG).
    run.procs[1].kill()
    killed = time.monotonic()
    status = run.procs[0].wait(timeout=120)
    elapsed = time.monotonic() - killed
    run.wait(timeout=10)
    line = _one_error_line(run.stderr(0))
    print(f"killed host: process 0 stopped {elapsed:.1f} s later, status {status}: {line}")
    assert status == 2
    assert line.startswith("mlm: error: lost contact with another process of the distributed "
                           "run ("), line
    assert "restart every process with --resume" in line
    assert elapsed < HEARTBEAT_TIMEOUT + 30


@pytest.mark.slow
def test_a_cut_link_stops_both_hosts_with_one_line_and_resume_is_exact(
    named_hosts, two_host_run, tmp_path, jax_env, small_corpus, held_out_corpus
):
    run_dir = tmp_path / "run"
    common = dict(corpus=small_corpus, held_out=held_out_corpus, env=jax_env)
    run = _start(named_hosts, run_dir, logs=[tmp_path / "p0.log", tmp_path / "p1.log"],
                 **common)
    try:
        _wait_for_checkpoint(run, run_dir, 8)
        named_hosts[0].set_link("down")
        cut = time.monotonic()
        statuses = [p.wait(timeout=HEARTBEAT_TIMEOUT + 90) for p in run.procs]
        elapsed = time.monotonic() - cut
        run.wait(timeout=1)
    finally:
        named_hosts[0].set_link("up")
    lines = [_one_error_line(run.stderr(i)) for i in range(2)]
    for i, line in enumerate(lines):
        print(f"cut link: process {i} stopped within {elapsed:.1f} s, status {statuses[i]}: "
              f"{line}")
    assert statuses == [2, 2], run.tails()
    for i, line in enumerate(lines):
        log = run_dir / f"jax-process-{i}.log"
        assert line.startswith("mlm: error: lost contact with another process of the "
                               "distributed run ("), line
        assert line.endswith(f"restart every process with --resume (JAX's log: {log})"), line
        assert "Check failure stack trace" in log.read_text()  # there, not on the terminal
    assert elapsed < 3 * HEARTBEAT_TIMEOUT + 30
    assert not (run_dir / "preset").exists()  # it stopped mid-run

    resumed = _start(named_hosts, run_dir, logs=[tmp_path / "r0.log", tmp_path / "r1.log"],
                     extra=("--resume",), **common)
    assert resumed.wait(timeout=600) == [0, 0], resumed.tails()
    assert "(step 8)" in next(line for line in resumed.stderr(0).splitlines()
                              if line.startswith("resuming from")), resumed.tails()
    # The same steps from the same checkpoint: exactly the uninterrupted run's weights.
    difference = max_weight_difference(run_dir / "preset", two_host_run / "preset")
    print(f"cut link, then --resume: max weight difference to an uninterrupted run "
          f"{difference}")
    assert difference == 0.0
