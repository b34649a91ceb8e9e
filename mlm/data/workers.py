"""Worker processes for preparing a corpus on several cores: how many, which documents, how run.

`mlm prepare --workers N` cuts the training documents into N contiguous
ranges in corpus order. N worker processes count the words of their ranges
(a WordPiece vocabulary: `mlm.data.tokenizing.learn_vocabulary`; counts add
up) and then tokenize their ranges into files of their own, which the parent
joins in order (`mlm.data.tokenizing.tokenize`): the prepared folder is byte
for byte the one a single process writes. The default is one process
(`resolve` says why).

The engine is the standard library's `concurrent.futures.ProcessPoolExecutor`
with *spawned* processes, not HF `datasets.map(num_proc=)`: `map` needs the
corpus copied into an Arrow table first (one more full write; HF's cache held
16.9 bytes per token against mlm's 2.0 in `benchmarks/prepare_scale.py`), and
it forks the parent, which holds TensorFlow's thread pools (TensorFlow is not
fork-safe: a forked child's `tf.data` can hang). Each worker rebuilds the
parent's keras-hub tokenizer from its config and saved assets, so the ids
are keras-hub's.

Example:
```python
from mlm.data import workers
workers.run(square, [1, 2, 3], processes=2)  # [1, 4, 9], computed in 2 processes
```
"""

import concurrent.futures
import contextlib
import multiprocessing
import os
import sys
import types
from collections.abc import Callable, Sequence

from mlm.errors import MlmError


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


def resolve(workers: int | None) -> int:
    """The worker processes to use: `workers`, or 1 for None.

    One is the default because more were no faster where measured: on 2
    cores one process already keeps about 1.6 of them busy (`tf.data`'s
    parallel map, `tokenizers`' threads), and 2 processes took 0.92x and
    0.98x its speed on 0.1 and 1 GB with 2.4x its memory (each worker holds
    its own TensorFlow; benchmarks/RESULTS.md). More processes are for
    machines with cores that one process leaves idle.

    Raises:
        MlmError: `workers` is below 1.
    """
    if workers is None:
        return 1
    if workers < 1:
        raise MlmError(f"--workers must be at least 1, but received {workers}; pass the "
                       f"number of processes to prepare with (this machine has "
                       f"{available_cpus()} CPUs), or leave it out for 1.")
    return workers


def ranges(total: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous `(start, stop)` ranges covering `0..total`, sizes differing by
    at most one; fewer when `total < parts` (no empty range)."""
    parts = max(1, min(parts, total))
    bounds = [total * i // parts for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def run(fn: Callable, tasks: Sequence, *, processes: int, progress: Callable | None = None,
        counters: int = 0, poll_seconds: float = 0.5) -> list:
    """`[fn(task) for task in tasks]`, computed in `processes` spawned processes.

    Results come in task order. An exception raised by `fn` (an `MlmError`
    naming a bad line, say) is raised here as it was raised there, once the
    other tasks are cancelled.

    Args:
        fn: a function of an importable module, not of the main script (it is
            pickled by name, and the workers do not run the main script).
        tasks: its arguments, each picklable.
        processes: how many processes to run at once.
        progress: called about every `poll_seconds` with the list of shared
            `counters` (see `counter`), for a progress line; None: not called.
        counters: how many shared integer counters the tasks can set by index
            with `counter(i, value)` (e.g. documents done per task).
    """
    context = multiprocessing.get_context("spawn")
    shared = context.Array("q", max(counters, 1), lock=False)
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=processes, mp_context=context, initializer=_share_counters,
        initargs=(shared,))
    try:
        with _main_hidden():  # the processes start at the first submits
            futures = [pool.submit(fn, task) for task in tasks]
        pending = set(futures)
        while pending:
            done, pending = concurrent.futures.wait(
                pending, timeout=poll_seconds, return_when=concurrent.futures.FIRST_EXCEPTION)
            for future in done:
                future.result()  # raises a task's exception now
            if progress is not None:
                progress(list(shared[:counters]))
    except BaseException:
        # Do not wait for the other tasks (a range of a large corpus takes minutes):
        # stop their processes. `_processes` is the executor's own table of them.
        processes_now = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes_now:
            process.terminate()
        raise
    pool.shutdown()
    return [future.result() for future in futures]


@contextlib.contextmanager
def _main_hidden():
    """Starts processes without running the caller's main script in them.

    A spawned process imports the parent's `__main__` by path; a script with
    no `if __name__ == "__main__":` guard would then run its own call to
    `mlm.prepare` again in every worker. `run`'s functions live in mlm's
    modules, so the workers need nothing from `__main__`: they get an empty one.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


# In a worker: the counters of `run`, set by its initializer.
_COUNTERS = None


def _share_counters(shared) -> None:
    global _COUNTERS
    _COUNTERS = shared


def counter(index: int, value: int) -> None:
    """Sets shared counter `index` to `value` (in a task of `run`; elsewhere a no-op)."""
    if _COUNTERS is not None and index < len(_COUNTERS):
        _COUNTERS[index] = value
