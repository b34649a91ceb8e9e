"""Tokenize a corpus once into an on-disk token cache keyed by content.

A cache entry is a folder named after a hash of the corpus content and of
the tokenizer (config and vocabulary), so a changed corpus or vocabulary
never reads a stale cache, and re-runs or resumes never tokenize again.
Each split is one flat binary array of token ids (uint16 when the
vocabulary fits, else uint32), documents joined by the end token; it is
read back memory-mapped, so memory does not grow with the corpus. With a
word segmenter (`masking.segmenter`), a parallel uint8 array per split holds
each token's word label (`mlm.data.segmenter`).
"""

import contextlib
import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mlm import atomic
from mlm.errors import MlmError
from mlm.progress import Progress

SPLITS = ("train", "held_out")
# In each entry: the statistics per split, written last.
_META = "meta.json"
_FORMAT_VERSION = 1
# Documents per keras-hub tokenizer call.
BATCH_SIZE = 256


@dataclasses.dataclass(frozen=True)
class TokenCache:
    """A complete cache entry on disk."""

    path: Path
    # Per split: documents, tokens (separators included), unknown tokens.
    stats: dict

    def tokens(self, split: str) -> np.ndarray:
        """The flat token ids of `split`, memory-mapped read-only."""
        meta = self.stats[split]
        if meta["tokens"] == 0:
            return np.zeros(0, dtype=meta["dtype"])
        return np.memmap(self.path / f"{split}.bin", dtype=meta["dtype"], mode="r")

    def word_labels(self, split: str) -> np.ndarray | None:
        """The segmenter's word label of every token of `split`, or None without one."""
        path = self.path / f"{split}.words.bin"
        if not path.is_file():
            return None
        if self.stats[split]["tokens"] == 0:
            return np.zeros(0, dtype=np.uint8)
        return np.memmap(path, dtype=np.uint8, mode="r")


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of a keras-hub tokenizer's config and vocabulary."""
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    # The layer name is auto-numbered per process (bert_tokenizer_1, ...): not content.
    config = {k: v for k, v in tokenizer.get_config().items() if k != "name"}
    # keras-hub's byte-level BPE lists its unsplittable tokens from a set, in an order
    # that changes with each process's hash seed: the same tokenizer in another process
    # (a worker, another host, the next run) must hash alike.
    if "unsplittable_tokens" in config:
        config["unsplittable_tokens"] = sorted(config["unsplittable_tokens"])
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    h.update("\n".join(tokenizer.get_vocabulary()).encode())
    # The pieces alone do not decide a tokenization: a SentencePiece model's
    # scores (in its proto) and a byte-level BPE's merges do too.
    proto = getattr(tokenizer, "proto", None)
    if isinstance(proto, bytes):
        h.update(proto)
    merges = getattr(tokenizer, "merges", None)
    if merges:
        h.update("\n".join(merges).encode())
    return h.hexdigest()


def cache_key(corpus_fingerprint: str, tokenizer, *, segmenter: str = "") -> str:
    """The cache folder name for this corpus and tokenizer (and word segmenter)."""
    h = hashlib.sha256(f"v{_FORMAT_VERSION}".encode())
    h.update(corpus_fingerprint.encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    if segmenter:  # only when set, so that other caches keep their keys
        h.update(f"segmenter={segmenter}".encode())
    return h.hexdigest()[:24]


def load_or_build_cache(
    documents_by_split: dict,
    tokenizer,
    *,
    cache_root: Path,
    key: str,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
    segmenter=None,
    bulk=None,
    totals: dict[str, int] | None = None,
    approximate: bool = False,
) -> TokenCache:
    """Returns the cache entry `cache_root/key`, tokenizing only if it is missing.

    Args:
        documents_by_split: split name -> zero-argument callable returning an
            iterable of document strings.
        tokenizer: a keras-hub tokenizer; its ids are the ones the exported
            preset will produce, so training and serving agree by construction.
        cache_root: folder holding cache entries.
        key: the entry's name, from `cache_key`.
        batch_size: documents per tokenizer call.
        progress: show progress with an ETA (`mlm.progress`).
        segmenter: a `mlm.data.segmenter.Segmenter` whose word labels are stored
            beside the tokens; its name must be in `key`.
        bulk: a faster encoder giving `tokenizer`'s ids (texts -> lists of ids),
            checked to (`mlm.data.tokenizing.bulk_encoder`); None: the keras-hub
            tokenizer mapped over `tf.data`.
        totals: split -> its documents, for the progress lines' ETAs; a split
            not in it is counted by reading it first.
        approximate: `totals` are estimates (`corpus.estimate_documents`).
    """
    final = Path(cache_root) / key
    cached = load_cache(final)
    if cached is not None:
        return cached

    def write_splits(tmp: Path) -> dict:
        return {
            split: tokenize_split(
                documents_by_split[split](), tokenizer, out=tmp / f"{split}.bin",
                batch_size=batch_size, segmenter=segmenter, bulk=bulk,
                bar=_progress(split, documents_by_split[split], enabled=progress,
                              total=(totals or {}).get(split), approximate=approximate),
            )
            for split in SPLITS
        }

    return write_entry(final, write_splits)


def write_entry(final: Path, write_splits) -> TokenCache:
    """Builds the entry `final` with `write_splits(folder)`, which writes each split's
    files into `folder` and returns their statistics; all or nothing.

    A killed build leaves `.KEY.tmp`, never a complete-looking entry.
    """
    with atomic.writing_dir(final) as tmp:
        stats = write_splits(tmp)
        if stats["train"]["documents"] == 0:
            raise MlmError("the training split has no documents; add text to the corpus.")
        (tmp / _META).write_text(json.dumps(stats, indent=2))
    return TokenCache(path=Path(final), stats=stats)


def join_parts(parts: list[dict], *, files: list[Path], out: Path) -> dict:
    """Joins the split pieces `files` (each written by `tokenize_split`, with `parts` its
    statistics) into one split file `out`, in order, removing them; the split's statistics.

    Word label files beside the pieces are joined the same way.
    """
    labels = [f.with_suffix(".words.bin") for f in files]
    pairs = [(files, out)]
    if all(f.is_file() for f in labels):
        pairs.append((labels, out.with_suffix(".words.bin")))
    for pieces, joined in pairs:
        with open(joined, "wb") as dst:
            for piece in pieces:
                with open(piece, "rb") as src:
                    shutil.copyfileobj(src, dst, _COPY_CHUNK)
                piece.unlink()
    return {
        "documents": sum(p["documents"] for p in parts),
        "tokens": sum(p["tokens"] for p in parts),
        "unknown_tokens": sum(p["unknown_tokens"] for p in parts),
        "dtype": parts[0]["dtype"],
    }


_COPY_CHUNK = 16 << 20


def load_cache(entry: Path) -> TokenCache | None:
    """The complete cache entry in folder `entry`, or None if it is not one."""
    meta = Path(entry) / _META
    if not meta.is_file():
        return None
    return TokenCache(path=Path(entry), stats=json.loads(meta.read_text()))


def tokenize_split(documents: Iterable[str], tokenizer, *, out: Path, batch_size: int, bar,
                   segmenter=None, bulk=None) -> dict:
    """Tokenizes `documents` into the flat binary file `out` (and their word labels);
    its statistics: documents, tokens (end tokens included), unknown tokens, dtype.

    `bar` is a `Progress` (or anything with its `update(done, note=)` and
    `finish()`), updated with the documents done.
    """
    vocab_size = int(tokenizer.vocabulary_size())
    dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    end_id = int(tokenizer.end_token_id)
    unk_id = unknown_token_id(tokenizer)
    failures = []
    batches = (_bulk_batches(documents, bulk, batch_size=max(batch_size, 1024))
               if bulk is not None else
               _keras_hub_batches(documents, tokenizer, batch_size=batch_size, failures=failures))
    n_docs = n_tokens = n_unk = 0
    start = time.time()
    labels_out = out.with_suffix(".words.bin") if segmenter is not None else None
    with open(out, "wb") as f, _reraised(failures), (
            open(labels_out, "wb") if labels_out else contextlib.nullcontext()) as labels:
        for texts, flat, lengths in batches:
            ends = np.cumsum(lengths)
            # One end token after each document: doc1 [SEP] doc2 [SEP] ...
            joined = np.insert(flat, ends, end_id).astype(dtype)
            f.write(joined.tobytes())
            if labels is not None:
                for text, ids in zip(texts, np.split(flat, ends[:-1]), strict=True):
                    labels.write(segmenter.labels(text, np.asarray(ids)).tobytes())
                    labels.write(b"\0")  # the end token's
            n_docs += len(ends)
            n_tokens += len(joined)
            n_unk += int(np.count_nonzero(flat == unk_id)) if unk_id is not None else 0
            rate = n_tokens / max(time.time() - start, 1e-9)
            bar.update(n_docs, note=f"{n_tokens:,} tokens ({rate:,.0f} tokens/s)")
    bar.finish()
    return {
        "documents": n_docs,
        "tokens": n_tokens,
        "unknown_tokens": n_unk,
        "dtype": np.dtype(dtype).name,
    }


def _keras_hub_batches(documents: Iterable[str], tokenizer, *, batch_size: int, failures: list):
    """`(texts, flat ids, ids per text)` of `documents`, by the keras-hub tokenizer mapped over
    a `tf.data` pipeline (its TensorFlow path, on several cores)."""
    import tensorflow as tf

    def generate():
        try:
            yield from documents
        except Exception as e:
            # TensorFlow turns it into an UnknownError with a traceback in its
            # message; the original (e.g. an MlmError naming a bad line) is
            # raised again by `_reraised`.
            failures.append(e)
            raise

    ds = tf.data.Dataset.from_generator(generate, output_signature=tf.TensorSpec([], tf.string))
    ds = ds.batch(batch_size).map(lambda texts: (texts, tokenizer(texts)),
                                  num_parallel_calls=tf.data.AUTOTUNE)
    for texts, ragged in ds.prefetch(tf.data.AUTOTUNE):
        yield ([t.decode("utf-8") for t in texts.numpy()], ragged.flat_values.numpy(),
               ragged.row_lengths().numpy())


def _bulk_batches(documents: Iterable[str], bulk, *, batch_size: int):
    """`(texts, flat ids, ids per text)` of `documents` by `bulk` (texts -> id lists)."""
    texts = []
    for document in documents:
        texts.append(document)
        if len(texts) == batch_size:
            yield _flattened(texts, bulk(texts))
            texts = []
    if texts:
        yield _flattened(texts, bulk(texts))


def _flattened(texts: list[str], ids: list[list[int]]):
    lengths = np.array([len(i) for i in ids], dtype=np.int64)
    flat = np.fromiter((t for i in ids for t in i), dtype=np.int64, count=int(lengths.sum()))
    return texts, flat, lengths


@contextlib.contextmanager
def _reraised(failures: list):
    """Raises the exception of the document generator instead of TensorFlow's wrapper."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.OpError:
        if failures:
            raise failures[0] from None
        raise


def _progress(split: str, documents, *, enabled: bool, total: int | None = None,
              approximate: bool = False) -> Progress:
    """Tokenizing progress; the documents' `total` (else counted first, a quick read) gives
    the ETA."""
    if enabled and total is None:
        total, approximate = sum(1 for _ in documents()), False
    return Progress(f"tokenizing {split}", total=total, unit="documents", enabled=enabled,
                    approximate=approximate)


def unknown_token_id(tokenizer) -> int | None:
    """The id of the tokenizer's unknown token, or None if it has none.

    WordPiece tokenizers name it (`oov_token`, `unk_token`); keras-hub's
    sentencepiece tokenizers (ALBERT, FNet, DeBERTaV3, XLM-R) do not, so the
    usual spellings are looked up, and kept only if they map back to
    themselves (sentencepiece maps any unknown string to its unknown id).
    """
    named = [getattr(tokenizer, name, None) for name in ("oov_token", "unk_token")]
    for token in [t for t in named if t is not None] + ["<unk>", "[UNK]"]:
        try:
            token_id = int(tokenizer.token_to_id(token))
            if tokenizer.id_to_token(token_id) == token:
                return token_id
        except (KeyError, ValueError, IndexError):
            continue
    return None
