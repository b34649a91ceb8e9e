"""Datasets on the HuggingFace datasets hub, `owner/name[:config]`, streamed with `datasets`.

`datasets.load_dataset(..., streaming=True)` opens a dataset without
downloading it; rows are fetched as they are read. The first full read of a
split at a known revision also writes its texts to the machine cache
(`hub/`, one JSON string per line), and later reads of that revision (the
vocabulary's, each split's tokenizing, other runs) read that copy: the hub
is read once per machine, not once per pass.
"""

import contextlib
import glob
import hashlib
import json
import os
import re
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from mlm.data.corpus.common import as_text, one_line
from mlm.data.corpus.formats import format_of
from mlm.errors import MlmError

# `owner/name` or `name`, optionally `:config`, as on huggingface.co.
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?(:[\w.-]+)?")
_HUB_PROBE_TIMEOUT_S = 5.0


def dataset_name(paths: tuple[str, ...]) -> str | None:
    """The hub dataset named by `paths`, if it is one name that is no local path."""
    if len(paths) != 1:
        return None
    name = paths[0]
    if glob.has_magic(name) or format_of(name) or Path(name).expanduser().exists():
        return None
    return name if _HUB_NAME.fullmatch(name) else None


def check(name: str, *, split: str, text_column: str) -> None:
    """Fails fast, with one line, when a hub dataset cannot be opened."""
    check_hub_reachable(name)
    features = _load(name, split=split).features
    if features is not None and text_column not in features:
        raise MlmError(
            f"hub dataset '{name}' has no column '{text_column}' (columns found: "
            f"{', '.join(features)}); set corpus.text_column to the column that holds the text."
        )


def check_hub_reachable(name: str) -> None:
    """Probes the hub host: offline, `datasets` would retry for about 25 s first."""
    import datasets
    from huggingface_hub import constants

    url = urllib.parse.urlsplit(constants.ENDPOINT)
    # In offline mode `datasets` reads its local cache; behind a proxy a direct
    # connection may fail where `datasets` would succeed.
    if datasets.config.HF_HUB_OFFLINE or url.scheme in urllib.request.getproxies():
        return
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=_HUB_PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise MlmError(
            f"could not download dataset '{name}': no network ({url.hostname}: {e}), or it "
            f"does not exist, and no local file or directory has that name; pass local "
            f"files instead."
        ) from e


def revision(name: str) -> str:
    """The commit of hub dataset `name` that a read now gets, or "" where the hub does not
    say (offline mode reading `datasets`' local cache, or an old hub client).

    It goes into the corpus fingerprint, so the token cache entry (and the
    vocabulary) of a dataset that changed on the hub is built again, while an
    unchanged one is read from the hub once per machine, not once per run.
    """
    import datasets
    from huggingface_hub import HfApi

    if datasets.config.HF_HUB_OFFLINE:
        return ""
    try:
        return HfApi().dataset_info(name.partition(":")[0]).sha or ""
    except Exception:  # noqa: BLE001 (any hub failure: the fingerprint goes without it)
        return ""


def read(name: str, *, split: str, text_column: str, revision: str = ""
         ) -> Iterator[tuple[str, bool]]:
    """`(text, True)` for each row of one split of a hub dataset; a null is an empty document.

    With `revision` (the commit `revision()` found), from the machine cache's
    copy of that split at that commit when a read has completed one, else
    from the hub, writing the copy as it goes (kept only if the read ends).
    """
    copy = local_copy(name, split=split, text_column=text_column, revision=revision)
    if copy is not None and copy.is_file():
        with open(copy, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line), True
        return
    rows = _texts(name, split=split, text_column=text_column)
    if copy is None:
        yield from rows
        return
    copy.parent.mkdir(parents=True, exist_ok=True)
    tmp = copy.with_name(f".{copy.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for text in rows:
                f.write(json.dumps(text) + "\n")
                yield text, True
        os.replace(tmp, copy)  # complete: later reads take it
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # a read stopped early (or failed): no copy


def local_copy(name: str, *, split: str, text_column: str, revision: str) -> Path | None:
    """Where the machine cache keeps a hub split's texts at `revision`; None without one."""
    if not revision:
        return None
    from mlm import machine_cache

    key = hashlib.sha256(json.dumps([name, split, text_column, revision]).encode())
    safe = re.sub(r"[^\w.-]", "_", name)
    return machine_cache.root() / machine_cache.HUB / f"{safe}-{key.hexdigest()[:16]}.jsonl"


def _texts(name: str, *, split: str, text_column: str) -> Iterator[str]:
    for index, row in enumerate(_load(name, split=split)):
        if text_column not in row:
            raise MlmError(
                f"hub dataset '{name}' has no column '{text_column}' (columns found: "
                f"{', '.join(row)}); set corpus.text_column to the column that holds the text."
            )
        yield as_text(row[text_column], where=f"hub dataset '{name}' row {index}")


def _load(name: str, *, split: str):
    """Opens a hub dataset for streaming; nothing is downloaded yet."""
    # Imported here: `datasets` takes a second to import and only the hub needs it.
    import datasets

    path, _, config_name = name.partition(":")
    try:
        return datasets.load_dataset(path, config_name or None, split=split, streaming=True)
    except (OSError, ValueError) as e:
        # OSError covers no network (ConnectionError), no such dataset
        # (DatasetNotFoundError) and hub HTTP errors; ValueError a bad split or config.
        raise MlmError(
            f"could not download dataset '{name}' (split '{split}'): {one_line(e)}; check the "
            f"name and split, or pass local files instead."
        ) from e
