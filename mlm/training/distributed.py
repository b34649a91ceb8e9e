"""Backend choice and data-parallel training on JAX's distributed runtime.

Multi-host training is JAX's multi-controller model: every process runs the
same `mlm pretrain` command, `jax.distributed.initialize` connects them, and
`keras.distribution.DataParallel` replicates the model over every device of
every process. Each process feeds only its own slice of each global batch
(`mlm.data.pipeline` cuts it), keras assembles the global batch with
`jax.make_array_from_process_local_data`, and XLA all-reduces the gradients.

Held-out evaluation is split the same way, its sums added on the devices
(`mlm.evaluate`).

Process 0 (the chief) writes the run directory; a process that cannot see
it (hosts that share no filesystem) keeps one of its own (`own_run_dir`).

TensorFlow stays the single-process default backend (fastest on CPU, see
the README); nothing here imports JAX unless the JAX backend was chosen.
"""

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import ipaddress
import os
import socket
import sys
from pathlib import Path

from mlm.config import DistributedConfig
from mlm.errors import MlmError

BACKENDS = ("tensorflow", "jax")

# Status codes that start the message of a failed cross-process collective
# (e.g. "UNKNOWN: Gloo all-reduce failed: ... Connection closed by peer").
_RUNTIME_STATUSES = (
    "UNKNOWN:", "UNAVAILABLE:", "INTERNAL:", "DEADLINE_EXCEEDED:", "ABORTED:", "CANCELLED:",
    "FAILED_PRECONDITION:",
)


@dataclasses.dataclass(frozen=True)
class Topology:
    """Where this process sits in a data-parallel run.

    The single-process default needs no JAX: every helper below is a no-op
    for it, so the TensorFlow path never imports JAX.
    """

    # This process's index, 0 to process_count - 1; 0 writes the run directory.
    process_index: int = 0
    # Processes in the run (hosts, usually one per host).
    process_count: int = 1
    # Devices over all processes; the global batch is split evenly among them.
    device_count: int = 1
    # This process keeps a run directory of its own (hosts that share no
    # filesystem): it writes its checkpoints, vocabulary and plan there too.
    own_run_dir: bool = False

    @property
    def is_chief(self) -> bool:
        return self.process_index == 0

    @property
    def writes_checkpoints(self) -> bool:
        """Process 0 writes the checkpoints, and so does a process with a run directory of
        its own, which resumes from them."""
        return self.is_chief or self.own_run_dir

    def check_batch_size(self, batch_size: int) -> None:
        """Raises `MlmError` unless the global batch splits evenly over devices."""
        if batch_size % self.device_count:
            raise MlmError(
                f"train.batch_size must be a multiple of the {self.device_count} devices of "
                f"the run ({self.process_count} process(es)), but received "
                f"batch_size={batch_size}; change --batch-size."
            )


def select_backend(requested: str | None) -> str:
    """Sets `KERAS_BACKEND` before keras is imported; returns the backend.

    Args:
        requested: "tensorflow" or "jax"; None takes `KERAS_BACKEND` from the
            environment, else TensorFlow.
    """
    backend = requested or os.environ.get("KERAS_BACKEND") or "tensorflow"
    if backend not in BACKENDS:
        raise MlmError(
            f"the backend must be one of {', '.join(BACKENDS)}, but received "
            f"backend={backend!r}; pass --backend or set KERAS_BACKEND."
        )
    if backend == "jax" and importlib.util.find_spec("jax") is None:
        raise MlmError(
            'the JAX backend needs JAX, which is not installed; pip install "mlm[jax]" '
            '(from a checkout: pip install ".[jax]"), or leave --backend at tensorflow.'
        )
    keras = sys.modules.get("keras")
    if keras is not None and keras.backend.backend() != backend:
        raise MlmError(
            f"keras was already imported with the {keras.backend.backend()} backend, so "
            f"backend={backend!r} cannot take effect; set KERAS_BACKEND={backend} before "
            f"importing keras."
        )
    os.environ["KERAS_BACKEND"] = backend
    return backend


def initialize(config: DistributedConfig) -> None:
    """Starts `jax.distributed`: call before keras is imported or JAX computes.

    Arguments left as None are detected by JAX from the cluster launcher's
    environment (Slurm, Open MPI, Cloud TPU VMs, Kubernetes; the address
    also from `JAX_COORDINATOR_ADDRESS`). A process that stops sending
    heartbeats for `heartbeat_timeout` seconds is declared dead, and JAX then
    terminates the others, so a lost peer never leaves a run hanging.
    """
    import jax

    try:
        jax.distributed.initialize(
            coordinator_address=config.coordinator,
            num_processes=config.num_processes,
            process_id=config.process_id,
            initialization_timeout=config.init_timeout,
            heartbeat_timeout_seconds=config.heartbeat_timeout,
        )
    except (ValueError, TypeError, RuntimeError) as e:
        raise MlmError(
            f"could not start jax.distributed ({_first_line(e)}); pass --coordinator "
            f"HOST:PORT, --num-processes and --process-id, or run under a launcher JAX "
            f"detects (Slurm, Open MPI, a Cloud TPU VM)."
        ) from None
    # JAX's CPU collectives (gloo) advertise the address this host's name
    # resolves to. Where /etc/hosts maps the name to loopback (127.0.1.1 on
    # Debian and Ubuntu, 127.0.0.1 in many containers), the other hosts would
    # connect to themselves; the interface that routes to the coordinator is
    # the one they reach.
    coordinator = config.coordinator or _detected_coordinator()
    host = host_address(coordinator) if coordinator else None
    if host is not None and host.unreachable:
        _advertise_for_collectives(host)


def _detected_coordinator() -> str | None:
    """The coordinator's HOST:PORT that JAX took from the launcher, if it says."""
    try:
        from jax._src import distributed as jax_distributed
    except ImportError:
        return None
    return getattr(jax_distributed.global_state, "coordinator_address", None)


@dataclasses.dataclass(frozen=True)
class HostAddress:
    """The address this host offers the others for CPU collectives."""

    # This host's name (`gethostname`), which gloo resolves to find its address.
    name: str
    # The first address of `name` this host can bind, as gloo picks it; None if none.
    resolved: str | None
    # The address of the interface that routes to the coordinator.
    routed: str

    @property
    def unreachable(self) -> bool:
        """Whether the other hosts cannot reach `resolved` (loopback, or no address)."""
        return self.resolved is None or ipaddress.ip_address(self.resolved).is_loopback


def host_address(coordinator: str) -> HostAddress | None:
    """This host's name, its address, and its route to `coordinator` (HOST:PORT).

    None when the coordinator is on loopback, or its name does not resolve
    (`jax.distributed` has already connected to it, so that means a launcher's
    address this host reaches some other way; leave gloo to its own choice).
    """
    host, _, port = coordinator.rpartition(":")
    host = host.strip("[]")  # [IPv6]:port
    try:
        family, _, _, _, target = socket.getaddrinfo(host, int(port), type=socket.SOCK_DGRAM)[0]
    except (OSError, ValueError):
        return None
    if ipaddress.ip_address(target[0]).is_loopback:
        return None
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(target)  # UDP: picks the route, sends nothing
        routed = probe.getsockname()[0]
    name = socket.gethostname()
    return HostAddress(name=name, resolved=_bindable_address(name), routed=routed)


def _bindable_address(name: str) -> str | None:
    """The first address of `name` that binds, as gloo's `lookupAddrForHostname` picks."""
    try:
        found = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except OSError:
        return None
    for family, kind, proto, _, address in found:
        with socket.socket(family, kind, proto) as s:
            try:
                s.bind((address[0], 0))
            except OSError:
                continue
            return address[0]
    return None


def _advertise_for_collectives(host: HostAddress) -> None:
    """Makes JAX's CPU collectives (gloo) bind to and advertise `host.routed`.

    jax 0.10 creates gloo with this host's name alone:
    `xla_bridge.make_cpu_client` calls `make_gloo_tcp_collectives` without
    its `hostname` argument, and no flag sets it. So the CPU backend is
    registered again, before any backend starts, with gloo made for the
    routed address; `make_cpu_client` documents its `collectives` argument for this.
    Where JAX's internals differ, stop with the fix instead of failing later.
    """
    import jax

    if jax.config.jax_cpu_collectives_implementation != "gloo":
        return  # MPI finds its own addresses
    try:
        from jax._src import distributed as jax_distributed
        from jax._src import xla_bridge
        from jax._src.lib import _jax

        collectives = _jax.make_gloo_tcp_collectives(
            distributed_client=jax_distributed.global_state.client, hostname=host.routed
        )
        factory = functools.partial(xla_bridge.make_cpu_client, collectives=collectives)
        xla_bridge.register_backend_factory("cpu", factory, priority=0, fail_quietly=False)
    except (ImportError, AttributeError, TypeError, RuntimeError):
        raise MlmError(unreachable_host_message(host)) from None


def unreachable_host_message(host: HostAddress) -> str:
    """The one line that says why the other hosts cannot reach this one, and the fix."""
    resolves = (f"resolves to {host.resolved}, a loopback address" if host.resolved
                else "does not resolve to an address of this host")
    return (
        f"this host's name {host.name!r} {resolves}, so the other processes cannot reach "
        f"its CPU collectives (gloo); map it to the address that reaches the coordinator "
        f"with the line '{host.routed} {host.name}' in /etc/hosts, then restart every process."
    )


def use_all_devices(backend: str) -> Topology:
    """Shares the model over every device (JAX) and returns this process's place.

    On JAX with more than one device (several GPUs or TPU cores, or hosts
    joined by `initialize`), sets `keras.distribution.DataParallel`: variables
    replicated on every device, batches split along their first axis. Call
    after `initialize` and before the model is built.
    """
    if backend != "jax":
        return Topology()
    import jax
    import keras
    import tensorflow as tf

    # tf.data stays the input pipeline; keep TensorFlow off the accelerators
    # so that it does not take the memory JAX needs. (Too late, and harmless to
    # skip, once TensorFlow has started its runtime.)
    with contextlib.suppress(RuntimeError):
        tf.config.set_visible_devices([], "GPU")
    devices = jax.device_count()
    if devices > 1:
        # mlm.data.pipeline already gives each process its own slice of the batch.
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(auto_shard_dataset=False)
        )
    return Topology(
        process_index=jax.process_index(), process_count=jax.process_count(),
        device_count=devices,
    )


def host_batches(dataset, *, backend: str):
    """An iterator over `dataset`'s batches in the form the backend feeds best.

    JAX takes numpy arrays (keras turns them into global arrays); TensorFlow
    keeps its tensors.
    """
    return dataset.as_numpy_iterator() if backend == "jax" else iter(dataset)


def total(topology: Topology, *counts) -> tuple[int, ...]:
    """Sums each of the integer `counts` over all processes."""
    counts = tuple(int(round(float(c))) for c in counts)
    if topology.process_count == 1:
        return counts
    return tuple(int(v) for v in _gathered(topology, counts).sum(axis=0))


def each(topology: Topology, value: int) -> list[int]:
    """Every process's integer `value` (an int32), in process order."""
    if topology.process_count == 1:
        return [int(value)]
    return [int(v) for v in _gathered(topology, [value])[:, 0]]


def _gathered(topology: Topology, values):
    """Every process's integer `values`, as a `(process_count, len(values))` int64 array.

    Gathered as int32, as JAX computes in 32 bits unless `jax_enable_x64` is
    set; each value must fit one (`smallest` splits larger ones).
    """
    import numpy as np
    from jax.experimental import multihost_utils

    mine = np.asarray(values, dtype=np.int32)
    gathered = multihost_utils.process_allgather(mine)
    return np.asarray(gathered).reshape(topology.process_count, len(mine)).astype(np.int64)


def barrier(topology: Topology, name: str) -> None:
    """Waits until every process reaches the barrier `name`."""
    if topology.process_count > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def sees_chiefs_file(path: Path, *, topology: Topology) -> bool:
    """Whether the file `path` this process sees holds what process 0's does: whether
    the processes share process 0's folder (one filesystem) or each has its own.

    Process 0 writes a fresh token at `path` first; every process must call this
    (one small collective).
    """
    if topology.process_count == 1:
        return True
    barrier(topology, "run directory")
    path = Path(path)
    mine = agreement_code(path.read_text() if path.is_file() else "")
    return int(_gathered(topology, [mine])[0, 0]) == mine


def check_visible(path: Path, *, topology: Topology) -> None:
    """Raises `MlmError` unless this process sees `path`, which process 0 wrote."""
    if not path.is_file():
        raise MlmError(
            f"process {topology.process_index} cannot see {path}, which process 0 wrote; "
            f"put the run directory on a filesystem shared by every process."
        )


def check_agreement(topology: Topology, *, step: int, run_dir) -> None:
    """Raises `MlmError` unless every process starts from the same step."""
    if topology.process_count == 1:
        return
    steps = _gathered(topology, [step]).reshape(-1)
    if len(set(steps.tolist())) > 1:
        raise MlmError(
            f"the processes found different checkpoints in {run_dir} (steps "
            f"{', '.join(map(str, steps.tolist()))}); the run directory must be on a "
            f"filesystem shared by every process, or with a run directory per host, copy "
            f"process 0's newest complete checkpoints/step-N to the others and resume."
        )


def check_same(topology: Topology, values: dict[str, str], *, advice: str) -> None:
    """Raises `MlmError` unless every process holds the same value of each entry of `values`.

    Each value (a recipe, a corpus fingerprint, a tokenizer fingerprint: any
    text) is hashed to a 28-bit code and the codes are gathered from every
    process, so this costs one small collective. Every process finds the same
    difference and stops with the same line, naming the first process that
    differs from process 0 and what differs; `advice` says what to do.
    """
    if topology.process_count == 1:
        return
    gathered = _gathered(topology, [agreement_code(v) for v in values.values()])
    for column, name in enumerate(values):
        differing = [p for p in range(topology.process_count)
                     if gathered[p, column] != gathered[0, column]]
        if differing:
            raise MlmError(
                f"process {differing[0]} has another {name} than process 0 "
                f"({len(differing)} of {topology.process_count} processes differ); {advice}"
            )


def smallest(topology: Topology, value: int) -> int:
    """The smallest of every process's `value` (each process's own with one process).

    A count of tokens passes 2**31 at some 10 GB of text: it travels as two
    30-bit halves, which int32 holds.
    """
    if topology.process_count == 1:
        return value
    high, low = _gathered(topology, divmod(int(value), 2**30)).T
    return int(min(high * 2**30 + low))


def agreement_code(value: str) -> int:
    """The 28-bit code of `value` that `check_same` gathers (fits an int32)."""
    return int(hashlib.sha256(value.encode()).hexdigest()[:7], 16)


@contextlib.contextmanager
def outside_distribution():
    """No `keras.distribution` inside: what process 0 builds alone stays local.

    Only process 0 saves checkpoints and writes the report, but keras creates
    variables while saving (the fresh Adam of `mlm.run.checkpoints`, a reference
    optimizer in `saving_lib`) and the report's fill-mask examples load the
    preset; creating a distributed variable is a collective every process
    must join, so process 0 would wait for the others forever.
    """
    import keras

    distribution = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(distribution)


@contextlib.contextmanager
def peer_failures(topology: Topology):
    """Turns a failed cross-process collective into a one-line `MlmError`.

    When another process dies, the next all-reduce fails at once (its
    connections close). Where no collective is running, JAX's heartbeat
    timeout terminates this process instead, with JAX's own message.
    """
    try:
        yield
    except (MlmError, KeyboardInterrupt):
        raise
    except Exception as e:
        if topology.process_count == 1 or not str(e).startswith(_RUNTIME_STATUSES):
            raise
        raise MlmError(
            f"lost contact with another process of the distributed run ({_first_line(e)}); "
            f"check its log, then restart every process with --resume."
        ) from None


def exit_at_once(status: int) -> None:
    """Ends a failed distributed process now, skipping jax.distributed's shutdown.

    At exit JAX waits for every process at a shutdown barrier, and aborts with
    a C++ stack trace when one is gone; the error has been printed already.
    """
    jax = sys.modules.get("jax")
    if jax is not None and jax.distributed.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
