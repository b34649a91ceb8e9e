"""Test-only fault injection: kill or fail the process at a named point.

The fault tests (`tests/test_faults.py`) start real `mlm pretrain` processes
and need them to die at an exact place (mid-step, mid-checkpoint write,
mid-tokenization), which a timer cannot hit. They set one environment
variable:

    MLM_FAULT=<point>[:<key>=<value>...][:action=<action>]

The process then acts when it reaches `fault_point(<point>, ...)` with every
`<key>` equal to `<value>`. Actions: `kill` (the default: SIGKILL itself, as a
power cut or the OOM killer would), `term` (send itself SIGTERM, as a
preemption would) and `enospc` (raise `OSError(ENOSPC)`, as a full disk
would). Points: `train_step` (`step`), `checkpoint_write` (`step`, after the
preset and before the optimizer state and manifest), `checkpoint_commit`
(`step`, after the rename, before old checkpoints are deleted),
`metrics_write` (`step`, `split`, with half of a `metrics.jsonl` line
written) and `read_document` (`split`, `index`).

Unset (always, outside tests), `fault_point` is one dictionary lookup.
"""

import errno
import functools
import os
import signal

ENV = "MLM_FAULT"
_ACTIONS = ("kill", "term", "enospc")


def fault_point(point: str, **context) -> None:
    """Acts as `MLM_FAULT` says if it names this point and context; else nothing."""
    spec = _spec(os.environ.get(ENV, ""))
    if spec is None or spec[0] != point:
        return
    _, conditions, action = spec
    if any(str(context.get(key)) != value for key, value in conditions.items()):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    else:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"<{ENV} at {point}>")


@functools.lru_cache(maxsize=4)
def _spec(raw: str) -> tuple[str, dict, str] | None:
    if not raw:
        return None
    point, *pairs = raw.split(":")
    conditions = dict(pair.split("=", 1) for pair in pairs)
    action = conditions.pop("action", "kill")
    if action not in _ACTIONS:
        raise ValueError(f"{ENV}: unknown action {action!r}; use one of {_ACTIONS}.")
    return point, conditions, action
