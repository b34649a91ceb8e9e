"""Raw documents from local files or a hub dataset, validated and split.

`resolve_corpus` turns a `CorpusConfig` into a `Corpus`: it expands paths,
directories and globs, checks every file in one full read (it exists, is
UTF-8 text, holds some text, has the text column) and hashes the content into
a fingerprint that keys the token cache. `iter_documents` then streams the
documents of one split with memory that does not grow with the corpus.

Formats:
- `.txt`, `.txt.gz`: blank lines (empty or whitespace only) separate documents;
  with `document_boundary="line"` every non-blank line is a document, with
  `"file"` the whole file is one.
- `.jsonl` (one JSON object per line), `.json` (JSON Lines, or an array of
  objects, which is read whole), `.csv` (with a header row), `.parquet`: one
  document per row, taken from `text_column`.
- one hub dataset name, `owner/name` or `owner/name:config`, streamed through
  `datasets.load_dataset(..., streaming=True)`.

Each file format has its reader module (`text`, `jsonl`, `csv_table`,
`parquet`), all offering `read`, `scan` and `columns`; the table in `formats`
picks one by file name. `hf_datasets` reads the hub, `sources` finds and
checks files and computes the fingerprint, `offsets` finds documents by
seeking to byte offsets (the vocabulary's sample, `draw_sample`, and the
progress lines' estimate, `estimate_documents`), and `common` holds what the
readers share. This module ties them into the calls above.

Local files are read with the standard library, pandas (CSV) and pyarrow
(Parquet), the engines `datasets` uses itself, rather than through
`datasets.load_dataset`: in `datasets` 5.2 that call sends a download-count
request to the network for every local load, its text loader splits
paragraphs only on an exact "\\n\\n", and its JSON loader fails with a
`CastError` when a key first appears past the first 10 MB of a file.

Hostile text never stops a run and is never dropped silently: NUL
characters become spaces (TensorFlow's tokenizer would end a text at one),
lone surrogates become U+FFFD (they cannot be encoded to UTF-8), documents
longer than `MAX_DOCUMENT_CHARS` are cut into pieces at whitespace (a text
file is read at most that many characters at a time, so a 50 MB line without
a newline reads in bounded memory), and empty documents are skipped; each
is counted in the `tally` of `iter_documents` for the run log. Bytes that are
not UTF-8 are an error, or with `on_decode_error="replace"` each becomes
U+FFFD and is counted. CRLF and CR line ends read as LF.

The held-out split is either the files of `held_out_paths` or, without them,
the documents whose text hashes under `held_out_fraction`: it does not depend
on file order or on the run, and duplicated documents land on the same side.
"""

import collections
import dataclasses
import importlib.resources
from collections.abc import Iterator
from pathlib import Path

from mlm.config import CorpusConfig
from mlm.data.corpus import hf_datasets, offsets, sources
from mlm.data.corpus.common import assemble, clean, codec_errors
from mlm.data.corpus.formats import read_files
from mlm.data.corpus.hf_datasets import check_hub_reachable
from mlm.data.corpus.sources import UNBROKEN_HINT_BYTES, is_held_out
from mlm.errors import MlmError
from mlm.faults import fault_point
from mlm.progress import Progress

__all__ = [
    "MAX_DOCUMENT_CHARS",
    "SPLITS",
    "UNBROKEN_HINT_BYTES",
    "Corpus",
    "check_hub_reachable",
    "count_documents",
    "describe_tally",
    "draw_sample",
    "estimate_documents",
    "iter_documents",
    "iter_splits",
    "resolve_corpus",
    "sample_corpus_path",
    "sampled_documents",
]

SPLITS = ("train", "held_out")
# Longest document handed on; longer ones are cut into pieces at whitespace,
# and text files are read this many characters at a time at most.
MAX_DOCUMENT_CHARS = 1 << 20


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A validated corpus: where its documents come from and how they split.

    Build it with `resolve_corpus`; read it with `iter_documents`.

    Attributes:
        train_files: Absolute paths of the local files, sorted; empty for a
            hub dataset.
        held_out_files: Absolute paths of separate held-out files, sorted.
            When empty, held-out documents are drawn from the train sources
            by a hash of their text.
        hub_name: The hub dataset (`owner/name[:config]`), or None.
        hub_split: The split of the hub dataset to read.
        text_column: Column holding the text in tabular files and hub data.
        held_out_fraction: Fraction of documents held out when there are no
            held-out files.
        on_decode_error: `"error"` or `"replace"`: what bytes that are not
            UTF-8 do.
        document_boundary: `"blank_line"`, `"line"` or `"file"`: what ends a
            document in a `.txt` file.
        hints: One-line hints for the user about the sources (a large text
            file without blank lines, which reads as one document).
        hub_revision: The commit of the hub dataset read ("" when the hub
            does not say); keys the machine cache's copy of it.
        fingerprint: Hex digest of the content and of the settings that
            change the documents; the key of the token cache.
    """

    train_files: tuple[str, ...] = ()
    held_out_files: tuple[str, ...] = ()
    hub_name: str | None = None
    hub_split: str = "train"
    text_column: str = "text"
    held_out_fraction: float = 0.02
    on_decode_error: str = "error"
    document_boundary: str = "blank_line"
    fingerprint: str = ""
    hints: tuple[str, ...] = ()
    hub_revision: str = ""


def resolve_corpus(config: CorpusConfig) -> Corpus:
    """Validates the sources of `config` and fingerprints their content.

    Every local file is read once in full: to check it is UTF-8 text with at
    least one non-blank document and, for tabular files, the text column, and
    to hash it. A hub dataset is opened (not downloaded) to check it exists.

    Args:
        config: The corpus section of a recipe. Empty `paths` means the
            sample corpus shipped in `mlm.data`.

    Returns:
        The validated `Corpus`.

    Raises:
        MlmError: A path is missing, matches no supported file or has an
            unsupported extension; a file is binary, not UTF-8, empty, or
            lacks the text column; or the hub dataset cannot be opened.

    Example:

    >>> corpus = resolve_corpus(CorpusConfig())
    >>> next(iter_documents(corpus, split="train"))[:34]
    'In the beginning God created the h'
    """
    hub_name = hf_datasets.dataset_name(config.paths)
    paths = config.paths or (str(sample_corpus_path()),)
    train_files = () if hub_name else sources.expand_paths(paths, field="corpus.paths")
    held_out_files = sources.expand_paths(config.held_out_paths, field="corpus.held_out_paths")
    sources.check_disjoint(train_files, held_out_files)
    if hub_name:
        hf_datasets.check(hub_name, split=config.hub_split, text_column=config.text_column)
    errors = codec_errors(config.on_decode_error)
    train_scans, train_unbroken = sources.scan_files(
        train_files, text_column=config.text_column, field="corpus.paths", errors=errors
    )
    held_out_scans, held_out_unbroken = sources.scan_files(
        held_out_files, text_column=config.text_column, field="corpus.held_out_paths",
        errors=errors,
    )
    hub_revision = hf_datasets.revision(hub_name) if hub_name else ""
    scans = {
        "train": train_scans,
        "held_out": held_out_scans,
        "hub": [hub_name, config.hub_split, hub_revision] if hub_name else None,
    }
    return Corpus(
        train_files=train_files,
        held_out_files=held_out_files,
        hub_name=hub_name,
        hub_split=config.hub_split,
        text_column=config.text_column,
        held_out_fraction=config.held_out_fraction,
        on_decode_error=config.on_decode_error,
        document_boundary=config.document_boundary,
        fingerprint=sources.fingerprint(scans, settings=_settings(config, held_out_files)),
        hints=_hints(train_unbroken + held_out_unbroken, boundary=config.document_boundary),
        hub_revision=hub_revision,
    )


def _settings(config: CorpusConfig, held_out_files: tuple[str, ...]) -> dict:
    """The settings that change the documents, as the fingerprint records them."""
    fraction = None if held_out_files else config.held_out_fraction
    settings = {
        "text_column": config.text_column,
        "held_out_fraction": fraction,
        "on_decode_error": config.on_decode_error,
    }
    if config.document_boundary != "blank_line":
        # Only when set, so that the token caches of earlier runs keep their keys.
        settings["document_boundary"] = config.document_boundary
    return settings


def _hints(unbroken: list[tuple[str, int]], *, boundary: str) -> tuple[str, ...]:
    """The hint for large text files without a blank line, which read as one document."""
    if not unbroken or boundary != "blank_line":
        return ()
    path, size = unbroken[0]
    more = f" (and {len(unbroken) - 1} more)" if len(unbroken) > 1 else ""
    return (f"hint: '{path}'{more} has no blank line in {size / 1e6:.1f} MB, so it reads "
            f"as one document; if it holds one document per line, set "
            f"corpus.document_boundary=line",)


def iter_documents(
    corpus: Corpus, *, split: str, tally: collections.Counter | None = None
) -> Iterator[str]:
    """Streams the stripped, non-blank documents of one split.

    Documents come in file order (sorted paths), then in order within a file.
    Memory stays bounded by `MAX_DOCUMENT_CHARS` (and, for JSON and CSV, by
    the longest record), whatever the corpus size.

    Args:
        corpus: A corpus from `resolve_corpus`.
        split: `"train"` or `"held_out"`.
        tally: Receives what was repaired or skipped (see `describe_tally`):
            `"invalid_replaced"` (undecodable bytes or lone surrogates, now
            U+FFFD) and `"nul_replaced"` (NUL characters, now spaces) in the
            documents of this split; `"empty_skipped"` and `"long_cut"`
            (documents cut into pieces) among the documents read, counted
            once, in the train split, when the held-out split is drawn by hash;
            and `"documents"`, the documents yielded.

    Yields:
        Each document's text, stripped of surrounding whitespace, with no NUL
        or lone surrogate and at most `MAX_DOCUMENT_CHARS` long.

    Raises:
        MlmError: `split` is unknown, the train split turns out to hold no
            document, or a record is malformed.
    """
    if split not in SPLITS:
        raise MlmError(f"split must be one of {', '.join(SPLITS)}, but received split={split!r}.")
    # Checked above, not in the generator, so a bad split fails at the call.
    return _iter_split(corpus, split=split, tally=collections.Counter() if tally is None else tally)


def _iter_split(corpus: Corpus, *, split: str, tally: collections.Counter) -> Iterator[str]:
    # With a hashed split both splits read the same files: count what is not
    # any one document's (empty, cut) in the train pass only.
    by_hash = not corpus.held_out_files
    events = collections.Counter() if by_hash and split == "held_out" else tally
    for _, document in _documents(corpus, splits=(split,), tallies={split: tally},
                                  events=events):
        yield document


def iter_splits(corpus: Corpus, *, tallies: dict[str, collections.Counter]
                ) -> Iterator[tuple[str, str]]:
    """`(split, document)` for both splits of a corpus whose held-out split is drawn by
    hash, in one read: the documents of `iter_documents` for each split, in corpus order,
    with the same `tallies` (split -> its tally) as the two reads of `iter_documents`.

    Raises:
        MlmError: the corpus has held-out files (each split reads its own), or its train
            split turns out to hold no document.
    """
    if corpus.held_out_files:
        raise MlmError("iter_splits reads a held-out split drawn by hash; this corpus has "
                       "held-out files.")
    return _documents(corpus, splits=SPLITS, tallies=tallies, events=tallies["train"])


def _documents(corpus: Corpus, *, splits: tuple[str, ...], tallies: dict,
               events: collections.Counter) -> Iterator[tuple[str, str]]:
    """`(split, document)` of the `splits` wanted, from one read of the sources of the
    first: cleaned, stripped, empty ones skipped (counted in `events`, with cut ones),
    each split's repairs and documents counted in its tally of `tallies`."""
    by_hash = not corpus.held_out_files
    found = False
    for raw in _iter_sources(corpus, split=splits[0], events=events):
        document, fixes = clean(raw)
        document = document.strip()
        if not document:
            events["empty_skipped"] += 1
            continue
        split = splits[0]
        if by_hash:
            split = "held_out" if is_held_out(document, fraction=corpus.held_out_fraction) \
                else "train"
            if split not in splits:
                continue
        tally = tallies[split]
        tally.update(fixes)
        fault_point("read_document", split=split, index=tally["documents"])
        tally["documents"] += 1
        found = found or split == "train"
        yield split, document
    if "train" in splits and not found:
        raise _no_training_document(corpus)


def _no_training_document(corpus: Corpus) -> MlmError:
    return MlmError(
        f"the train split of the corpus holds no non-blank document "
        f"(held_out_fraction={corpus.held_out_fraction}); add text or lower "
        f"corpus.held_out_fraction."
    )


def describe_tally(tally: collections.Counter) -> str:
    """One line on what `iter_documents` repaired or skipped; empty if nothing."""
    parts = [
        f"{tally[key]:,} {what}"
        for key, what in (
            ("invalid_replaced", "undecodable bytes or lone surrogates replaced by U+FFFD"),
            ("nul_replaced", "NUL characters replaced by spaces"),
            ("empty_skipped", "empty documents skipped"),
            ("long_cut", f"documents over {MAX_DOCUMENT_CHARS:,} characters cut into pieces"),
        )
        if tally[key]
    ]
    return "; ".join(parts)


def count_documents(corpus: Corpus, *, split: str, progress: bool = False) -> int:
    """The documents of one split, counted once per corpus (for progress lines' ETAs).

    With a held-out split drawn by hash, both splits read the same files: one
    read counts both (`_count_both`), so that the vocabulary's and each
    split's progress lines cost one read between them, not three. `progress`
    shows the read on a progress line ("counting documents"), which a large
    corpus needs: it is a full pass before the first ETA can be given.
    """
    if split not in SPLITS:
        raise MlmError(f"split must be one of {', '.join(SPLITS)}, but received split={split!r}.")
    key = (corpus.fingerprint, corpus.held_out_fraction)
    if corpus.fingerprint and key in _COUNTS:
        return _COUNTS[key][split]
    bar = Progress("counting documents", unit="documents", enabled=progress)
    if corpus.held_out_files:
        counts = dict.fromkeys(SPLITS, 0)
        for name in SPLITS:
            for _ in iter_documents(corpus, split=name):
                counts[name] += 1
                bar.update(sum(counts.values()))
    else:
        counts = _count_both(corpus, bar=bar)
    if bar.clock() - bar.start >= _COUNT_LINE_SECONDS:
        bar.finish()
    else:  # a small corpus: no line for a pass that took no time
        bar.clear()
    if corpus.fingerprint:
        _COUNTS[key] = counts
    return counts[split]


# A count that took less than this leaves no line behind (a small corpus).
_COUNT_LINE_SECONDS = 2.0
# Documents per split of the corpora counted in this process, by fingerprint.
_COUNTS: dict[tuple, dict[str, int]] = {}


def _count_both(corpus: Corpus, *, bar: Progress) -> dict[str, int]:
    """Both splits' documents of a corpus whose held-out split is drawn by hash, in one read."""
    counts = dict.fromkeys(SPLITS, 0)
    for raw in _iter_sources(corpus, split="train", events=collections.Counter()):
        document = clean(raw)[0].strip()
        if document:
            held = is_held_out(document, fraction=corpus.held_out_fraction)
            counts["held_out" if held else "train"] += 1
            bar.update(counts["train"] + counts["held_out"])
    return counts


def draw_sample(corpus: Corpus, *, size: int, seed: int,
                progress: bool = False) -> offsets.Draw:
    """`size` training documents drawn at seeded byte offsets, reading only around
    each offset (`mlm.data.corpus.offsets`): their positions, or why none."""
    bar = Progress("vocabulary: drawing a sample", total=size, unit="documents",
                   enabled=progress)
    found = offsets.draw(corpus, size=size, seed=seed, limit=MAX_DOCUMENT_CHARS,
                         progress=bar.update)
    if found.positions:
        bar.finish()
    else:
        bar.clear()
    return found


def estimate_documents(corpus: Corpus) -> dict[str, int] | None:
    """About how many documents each split holds, found by seeking (`offsets.estimate`)
    instead of counting them in a full read: for progress lines' ETAs. None where the
    files cannot be sought in, or the held-out split is separate files."""
    if corpus.held_out_files:
        return None
    if corpus.fingerprint and corpus.fingerprint in _ESTIMATES:  # once per corpus, as counts
        total = _ESTIMATES[corpus.fingerprint]
    else:
        total = offsets.estimate(corpus, draws=_ESTIMATE_DRAWS, seed=0,
                                 limit=MAX_DOCUMENT_CHARS)
        if corpus.fingerprint:
            _ESTIMATES[corpus.fingerprint] = total
    if total is None:
        return None
    held_out = round(total * corpus.held_out_fraction)
    return {"train": max(total - held_out, 1), "held_out": held_out}


# Offsets drawn to estimate the documents: a few percent off for most corpora.
_ESTIMATE_DRAWS = 2000
# The documents estimated in this process (both splits), by corpus fingerprint.
_ESTIMATES: dict[str, int | None] = {}


def sampled_documents(corpus: Corpus, positions: list[offsets.Position]) -> Iterator[str]:
    """The documents at `positions` from `draw_sample`, in corpus order, each exactly as
    `iter_documents` gives it."""
    return offsets.read(corpus, positions, limit=MAX_DOCUMENT_CHARS)


def sample_corpus_path() -> Path:
    """The sample corpus shipped in the package: the King James Bible, 1189 chapters."""
    return Path(str(importlib.resources.files("mlm.data") / "kjv.txt.gz"))


def _iter_sources(
    corpus: Corpus, *, split: str, events: collections.Counter
) -> Iterator[str]:
    """The raw documents (at most `MAX_DOCUMENT_CHARS` long) of the sources feeding `split`."""
    if split == "held_out" and corpus.held_out_files:
        parts = _read_files(corpus, files=corpus.held_out_files)
    elif corpus.hub_name:
        parts = hf_datasets.read(
            corpus.hub_name, split=corpus.hub_split, text_column=corpus.text_column,
            revision=corpus.hub_revision,
        )
    else:
        parts = _read_files(corpus, files=corpus.train_files)
    return assemble(parts, limit=MAX_DOCUMENT_CHARS, events=events)


def _read_files(corpus: Corpus, *, files: tuple[str, ...]) -> Iterator[tuple[str, bool]]:
    """`(text, ends_document)` parts of the documents of `files`, read as `corpus` says."""
    return read_files(
        files, text_column=corpus.text_column, errors=codec_errors(corpus.on_decode_error),
        boundary=corpus.document_boundary, limit=MAX_DOCUMENT_CHARS,
    )
