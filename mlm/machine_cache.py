"""The per-machine cache: what runs derive once and share, and a failed run never deletes.

`$MLM_CACHE_DIR`, else `$XDG_CACHE_HOME/mlm`, else `~/.cache/mlm`, holding:

- `vocab/<key>/`: vocabularies learned from a corpus (`mlm.data.tokenizing`),
  keyed by the corpus fingerprint, the vocab section of the recipe and the
  architecture's tokenizer; a run copies its own into `run_dir/vocab/`;
- `tokens/<key>/`: token cache entries (`mlm.data.token_cache`), keyed by the
  corpus fingerprint and the tokenizer; runs read them in place;
- `hub/`: the texts of hub dataset splits, one file per split and commit,
  written by the first complete read (`mlm.data.corpus.hf_datasets`);
- `step_settings/`: the measured precision and XLA choice per machine and shapes
  (`mlm.training.step_settings`).

Every entry is derived data: deleting any of it (or the whole folder) costs
only the time to derive it again. An entry is built under a lock
(`building`), so two runs on one machine that need the same entry build it
once, and the second reads the first's.
"""

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

VOCAB = "vocab"
TOKENS = "tokens"
STEP_SETTINGS = "step_settings"
HUB = "hub"


def root() -> Path:
    """`$MLM_CACHE_DIR`, else `$XDG_CACHE_HOME/mlm`, else `~/.cache/mlm`."""
    if os.environ.get("MLM_CACHE_DIR"):
        return Path(os.environ["MLM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlm"


@contextlib.contextmanager
def building(entry: Path) -> Iterator[None]:
    """Holds the lock of cache entry `entry` (a sibling `.NAME.lock` file) while inside.

    The builder of an entry takes it, checks again whether the entry is
    complete (another process may have built it meanwhile) and builds it only
    if not. The lock is the kernel's (`flock`): a killed builder releases it.
    """
    entry = Path(entry)
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.with_name(f".{entry.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
