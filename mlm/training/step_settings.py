"""Compute precision and XLA for the train step: chosen by measurement, saved in float32.

`train.mixed_precision` and `train.jit_compile` default to "auto". Which
setting is fastest depends on the machine and on the model's size, not on a
CPU flag: on one Intel Xeon with AMX-BF16, fp32 with XLA was fastest for the
tiny BERT (0.247 s/step against 0.277 for bf16 with XLA), and bf16 without
XLA for the small one (1.515 against 2.154 s/step). So "auto" times a few
steps of each candidate on the run's own task and batch (`probe`) and keeps
the fastest; the choice is recorded in the run directory (reused on
`--resume`) and in a per-machine cache keyed by a hardware fingerprint and
the shapes (reused by re-runs).

Presets are always saved with a float32 dtype policy (`float32_for_saving`):
keras-hub 0.32 cannot load a preset whose config names a mixed policy
("Invalid dtype: mixed_bfloat16"), and its own presets are float32. Weights
are float32 under every mixed policy, so nothing is lost.
"""

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from mlm import atomic, machine_cache

# The record of the choice inside a run directory (`mlm.run.directory.RunDir.step_settings`).
RUN_FILE = "step_settings.json"
# Bounds of the probe: at most this fraction of the run's estimated time and
# at most this many seconds in all.
PROBE_FRACTION = 0.1
PROBE_MAX_SECONDS = 60.0
# Timed steps per candidate, after the one that traces and compiles.
PROBE_STEPS = 3
# A later candidate replaces the best so far only when it is this much faster: within
# timing noise the earlier (the fallback first) is kept, so re-runs choose alike.
PROBE_MARGIN = 0.02


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """How the train step runs: a keras dtype policy and whether XLA compiles it."""

    # "float32", "mixed_bfloat16" or "mixed_float16" (loss scaling added).
    precision: str = "float32"
    # Compile the train step with XLA.
    jit_compile: bool = True

    def label(self) -> str:
        short = {"float32": "fp32", "mixed_bfloat16": "bf16", "mixed_float16": "fp16"}
        return f"{short[self.precision]} {'+ XLA' if self.jit_compile else 'no XLA'}"


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """The device the step runs on, as far as the precision choice cares."""

    # "cpu", "gpu" or "tpu".
    kind: str = "cpu"
    # Whether the device computes bfloat16 natively (GPUs of compute capability
    # 8.0 and newer, TPUs, CPUs with AVX512-BF16 or AMX-BF16).
    native_bf16: bool = False
    # A description for the hardware fingerprint (device names and counts).
    description: str = ""


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: no flags to read
            return False
    return bool(set(cpuinfo.split()) & {"avx512_bf16", "amx_bf16"})


@functools.cache  # a fact of the machine: detected once per process
def detect_accelerator(backend: str) -> Accelerator:
    """The first device `backend` computes on: a GPU or TPU if it has one, else the CPU."""
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform == "gpu":
            capability = float(getattr(device, "compute_capability", "0") or 0)
            return Accelerator("gpu", capability >= 8.0,
                               f"{len(jax.devices())} x {device.device_kind}")
        if device.platform == "tpu":
            return Accelerator("tpu", True, f"{len(jax.devices())} x {device.device_kind}")
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            major, _ = details.get("compute_capability", (0, 0))
            return Accelerator("gpu", major >= 8,
                               f"{len(gpus)} x {details.get('device_name', 'GPU')}")
    return Accelerator("cpu", cpu_has_native_bf16(), _cpu_description())


def _cpu_description() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.processor()} x {os.cpu_count()}"
    model = next((line.split(":", 1)[1].strip() for line in lines
                  if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in lines
                  if line.startswith("flags")), [])
    digest = hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:12]
    return f"{model} x {os.cpu_count()} (flags {digest})"


def candidates(mixed_precision: str, jit_compile, *, backend: str,
               accelerator: Accelerator) -> list[StepSettings]:
    """The settings "auto" chooses among, the fallback first; one if nothing is "auto".

    On a CPU: fp32 and bf16, each with and without XLA. On a GPU or TPU:
    bf16 (fp16 with loss scaling where bf16 is not native) with XLA, no
    probe. JAX always compiles with XLA (it has no graph mode without it).
    """
    if accelerator.kind == "cpu":
        precisions = ["float32", "mixed_bfloat16"]
        jits = [True, False]
    else:
        precisions = ["mixed_bfloat16" if accelerator.native_bf16 else "mixed_float16"]
        jits = [True]
    if mixed_precision != "auto":
        precisions = [mixed_precision]
    if jit_compile != "auto":
        jits = [bool(jit_compile)]
    if backend == "jax":
        jits = [True]
    options = [StepSettings(p, j) for j in jits for p in precisions]
    # The fallback first; then those without XLA, which compile in seconds (so a tight
    # budget still compares them), bf16 first; XLA's second compile last.
    return options[:1] + sorted(options[1:], key=lambda o: (o.jit_compile,
                                                           o.precision == "float32"))


def set_precision(task, policy: str) -> None:
    """Sets every layer's dtype policy: compute in `policy`, weights stay float32.

    Done on the built task (not through the global keras policy), so it holds
    for fresh, preset and resumed tasks alike. The preprocessor's layers keep
    their own (string and integer) dtypes.
    """
    for layer in _model_layers(task):
        if layer.dtype_policy.name != policy:
            layer.dtype_policy = policy


def _model_layers(task) -> list:
    """The layers of `task` that compute, without its preprocessor's.

    Keras keeps tracking a preprocessor after `task.preprocessor = None`
    (as `mlm.training.loop.train` detaches it), so it is found by its type.
    """
    import keras_hub

    layers = task._flatten_layers(include_self=True)
    keep = {id(inner) for layer in layers if isinstance(layer, keras_hub.models.Preprocessor)
            for inner in layer._flatten_layers()}
    return [layer for layer in layers if id(layer) not in keep]


@contextlib.contextmanager
def float32_for_saving(task):
    """Gives every layer of `task` a float32 policy for the duration (see the module doc)."""
    saved = [(layer, layer.dtype_policy) for layer in _model_layers(task)]
    try:
        set_precision(task, "float32")
        yield
    finally:
        for layer, policy in saved:
            if layer.dtype_policy is not policy:
                layer.dtype_policy = policy


def apply(task, settings: StepSettings, *, train_function=None) -> None:
    """Switches a compiled `task` to `settings`; the optimizer and its state stay.

    `train_function`, when given, is one already traced for `settings`;
    otherwise the next step traces (and compiles) a new one.
    """
    if task.dtype_policy.name == settings.precision and task.jit_compile == settings.jit_compile \
            and train_function is None:
        return
    set_precision(task, settings.precision)
    task.jit_compile = settings.jit_compile
    task.train_function = train_function
    task.test_function = task.predict_function = None  # traced in the old settings


# A probe measurement of a candidate, given the seconds left in the budget: seconds
# of the first (tracing, compiling) step and the median seconds of the steps after it.
Measure = Callable[[StepSettings, float], tuple[float, float]]


@dataclasses.dataclass
class ProbeResult:
    """What the probe measured and chose."""

    chosen: StepSettings
    # One row per candidate: settings label, compile seconds, seconds per step
    # (None for candidates the budget left out).
    rows: list[dict]
    seconds: float = 0.0
    source: str = "measured"  # or "run directory", "cache"

    def to_dict(self) -> dict:
        return {"chosen": dataclasses.asdict(self.chosen), "rows": self.rows,
                "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: dict, *, source: str) -> "ProbeResult":
        return cls(StepSettings(**data["chosen"]), data["rows"], data.get("seconds", 0.0),
                   source)

    def table(self) -> str:
        lines = ["| step settings | first step (s) | s/step |", "|---|---:|---:|"]
        for row in self.rows:
            mark = " (chosen)" if row["label"] == self.chosen.label() else ""
            step = f"{row['step_seconds']:.4f}" if row["step_seconds"] is not None else \
                f"- ({row.get('note', 'skipped')})"
            first = f"{row['compile_seconds']:.1f}" if row["compile_seconds"] is not None else "-"
            lines.append(f"| {row['label']}{mark} | {first} | {step} |")
        return "\n".join(lines)


def probe(options: list[StepSettings], *, measure: Measure, steps: int,
          max_seconds: float = PROBE_MAX_SECONDS, fraction: float = PROBE_FRACTION,
          clock: Callable[[], float] = time.perf_counter) -> ProbeResult:
    """Measures `options` in order, within budget, and picks the fastest per step.

    The budget is `fraction` of the run's estimated time (`steps` at the
    first option's step time) and at most `max_seconds`. The first option is
    always measured; a later one only when its estimated cost (the first step
    of a candidate with the same XLA setting, else the costliest so far, plus
    `PROBE_STEPS` steps at the best rate) still fits, and it times
    fewer steps (at least one) when the budget runs out.
    """
    began = clock()
    rows, best, budget, firsts = [], None, None, {}
    for option in options:
        spent = clock() - began
        # A first step costs what one with the same XLA setting cost, else the most so far.
        first = firsts.get(option.jit_compile, max(firsts.values(), default=0.0))
        if budget is not None and spent + first + PROBE_STEPS * best[1] > budget:
            rows.append({"label": option.label(), "compile_seconds": None,
                         "step_seconds": None, "note": "over the probe's budget"})
            continue
        first, per_step = measure(option, math.inf if budget is None else budget - spent)
        rows.append({"label": option.label(), "compile_seconds": first, "step_seconds": per_step})
        firsts[option.jit_compile] = max(firsts.get(option.jit_compile, 0.0), first)
        if best is None or per_step < best[1] * (1 - PROBE_MARGIN):
            best = (option, per_step)
        if budget is None:
            budget = min(max_seconds, fraction * steps * per_step)
    return ProbeResult(best[0], rows, clock() - began)


def timing_measure(task, batch, *, functions: dict, steps: int = PROBE_STEPS,
                   clock: Callable[[], float] = time.perf_counter) -> Measure:
    """A `Measure` that trains `task` on `batch`; keeps each traced function in `functions`."""
    import numpy as np

    x, y, w = batch

    def measure(option: StepSettings, seconds_left: float) -> tuple[float, float]:
        apply(task, option)
        task.train_function = None
        times, started = [], clock()
        for _ in range(steps + 1):
            if len(times) >= 2 and clock() - started > seconds_left:
                break
            began = clock()
            with warnings.catch_warnings():  # as in `mlm.training.loop.train`: the unused pooler
                warnings.filterwarnings("ignore", message="Gradients do not exist for variables")
                logs = task.train_on_batch(x, y, sample_weight=w, return_dict=True)
            float(logs["loss"])  # wait for the step to finish
            times.append(clock() - began)
        functions[option] = task.train_function
        return times[0], float(np.median(times[1:]))

    return measure


@contextlib.contextmanager
def state_kept(task):
    """Restores every variable of `task` and its optimizer on exit: the probe's steps leave
    no trace (weights, optimizer moments and step count, dropout seeds)."""
    import numpy as np

    task.optimizer.build(task.trainable_variables)
    variables = [*task.variables, *task.optimizer.variables]
    saved = [np.array(v.numpy(), copy=True) for v in variables]
    try:
        yield
    finally:
        for variable, value in zip(variables, saved, strict=True):
            variable.assign(value)


def fingerprint(*, backend: str, accelerator: Accelerator, shapes: dict) -> str:
    """A key of the hardware, the software versions and the step's shapes."""
    import keras

    versions = {"keras": keras.__version__, "backend": backend}
    if backend == "tensorflow":
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    elif backend == "jax":
        import jax

        versions["jax"] = jax.__version__
    text = json.dumps({"device": dataclasses.asdict(accelerator), "versions": versions,
                       "shapes": shapes}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def read_record(path: Path, *, source: str) -> ProbeResult | None:
    """A `ProbeResult` saved at `path`, or None if there is none (or it is unreadable)."""
    try:
        return ProbeResult.from_dict(json.loads(path.read_text()), source=source)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_record(path: Path, result: ProbeResult) -> None:
    """Saves `result` at `path` atomically; a cache that cannot be written is skipped."""
    try:
        atomic.write_json(path, result.to_dict())
    except OSError:
        pass


def choose_step_settings(task, batch, *, mixed_precision: str, jit_compile, steps: int,
                         record: Path, cache_dir: Path | None, write: bool,
                         say: Callable[[str], None], multi_process: bool = False,
                         measure: Measure | None = None,
                         max_seconds: float | None = None) -> ProbeResult:
    """Resolves "auto" settings for `task` and switches it to them.

    In order: a single candidate needs no probe; the run directory's record
    (a resumed run keeps its settings); the per-machine cache; else `probe`
    on `batch` (the task's state is restored after it). A multi-process run
    does not probe (its processes would have to agree on every timing) and
    takes the first candidate. `write` (process 0): record the choice in
    `record` (the run's `step_settings.json`, `RunDir.step_settings`) and the cache.
    """
    import keras

    backend = keras.backend.backend()
    accelerator = detect_accelerator(backend)
    options = candidates(mixed_precision, jit_compile, backend=backend, accelerator=accelerator)
    key = fingerprint(backend=backend, accelerator=accelerator, shapes=_shapes(task, batch))
    cache_path = cache_dir / machine_cache.STEP_SETTINGS / f"{key}.json" if cache_dir else None
    found = read_record(record, source="run directory")
    if found is None and cache_path is not None:
        found = read_record(cache_path, source="cache")
    if len(options) == 1:
        result = ProbeResult(options[0], [], source="recipe" if accelerator.kind == "cpu"
                             else accelerator.kind)
    elif found is not None and found.chosen in options:
        result = found
    elif multi_process:
        result = ProbeResult(options[0], [], source="multi-process default")
    else:
        functions = {}
        say(f"timing the train step: {len(options)} candidate settings on "
            f"{accelerator.description or accelerator.kind} (train.mixed_precision="
            f"{mixed_precision}, train.jit_compile={jit_compile}) ...")
        with state_kept(task):
            result = probe(options, steps=steps, measure=measure or timing_measure(
                task, batch, functions=functions),
                max_seconds=PROBE_MAX_SECONDS if max_seconds is None
                else min(PROBE_MAX_SECONDS, max_seconds))
        apply(task, result.chosen, train_function=functions.get(result.chosen))
        say(result.table())
        if write and cache_path is not None:
            write_record(cache_path, result)
    apply(task, result.chosen)
    say(f"train step: {result.chosen.label()} ({_why(result)})")
    if write:
        write_record(record, result)
    return result


def _why(result: ProbeResult) -> str:
    if result.source == "measured":
        return f"fastest of the probe, {result.seconds:.1f} s"
    if result.source in ("run directory", "cache"):
        return f"measured before, from the {result.source}"
    if result.source == "recipe":
        return "as the recipe sets it"
    return f"the {result.source} default"


def _shapes(task, batch) -> dict:
    """What the step time depends on: the backbone's config and the batch's shapes."""
    import numpy as np

    config = {k: v for k, v in task.backbone.get_config().items()
              if k not in ("name", "dtype", "trainable")}
    x, y, w = batch
    arrays = {**{f"x.{k}": v for k, v in x.items()}, "y": y, "w": w}
    return {"backbone": type(task.backbone).__name__, "config": config,
            "batch": {k: list(np.shape(v)) for k, v in sorted(arrays.items())}}
