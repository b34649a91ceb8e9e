"""A corpus's vocabulary and token ids, made the one way runs and `mlm prepare` share.

`learn_vocabulary` learns a recipe's vocabulary from the training documents
(with the family, size, case and special tokens of its architecture),
`load_tokenizer` builds the architecture's keras-hub tokenizer on it, and
`tokenize` writes the corpus's token cache entry with that tokenizer. A run
(`mlm.pretraining`) puts them in its run directory; `mlm.preparing` puts them
in a prepared corpus folder that many runs read. Both go through these
functions, so the same recipe and corpus give the same ids either way.
"""

import collections
import dataclasses
import functools
import hashlib
import itertools
import json
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from mlm import atomic, machine_cache
from mlm.architectures import ARCHITECTURES, Architecture
from mlm.config import VocabConfig
from mlm.data import corpus, token_cache, vocab, workers
from mlm.progress import Progress, track


def learn_vocabulary(source: corpus.Corpus, *, config: VocabConfig, arch: Architecture,
                     out_dir: Path, say: Callable[[str], None], quiet: bool,
                     cache_root: Path | None = None, processes: int = 1) -> Path:
    """The main vocabulary asset in `out_dir`, learned from `source` unless already there.

    It is learned once per machine into the machine cache
    (`mlm.machine_cache`, `vocab/<key>`, keyed by `vocabulary_key`) and copied
    to `out_dir`: a run that fails later, and every later run of the same
    corpus and vocab section, copy it instead of learning it again.

    Args:
        source: the corpus; its training documents are read.
        config: the recipe's vocab section (size, case, minimum frequency).
        arch: the architecture's row: its tokenizer family (unless
            `config.family` names it) and special tokens.
        out_dir: the folder of the vocabulary files, written atomically.
        say: prints one line (what is learned).
        quiet: no progress line.
        cache_root: the machine cache; default `mlm.machine_cache.root()`.
        processes: count a WordPiece vocabulary's words in this many worker
            processes (`mlm.data.workers`), each on a contiguous range of the
            documents; counts add up, so the vocabulary is the one one process
            learns. Other families, and a `vocab.sample` smaller than the
            training documents, read in this process.
    """
    family = config.family or arch.tokenizer_family
    path = vocab.vocabulary_path(out_dir, family=family)
    if path.exists():
        return path
    entry = (cache_root or machine_cache.root()) / machine_cache.VOCAB / vocabulary_key(
        source.fingerprint, config=config, arch=arch,
        by_offset=corpus.offsets.seekable_files(source) is not None)
    with machine_cache.building(entry):
        if entry.is_dir():
            say(f"vocabulary: learned before from this corpus and vocab section ({entry})")
        else:
            with atomic.writing_dir(entry) as tmp:
                _learn(source, config=config, arch=arch, family=family, out_dir=tmp, say=say,
                       quiet=quiet, processes=processes)
    atomic.copy_dir(entry, out_dir)
    return path


def vocabulary_key(corpus_fingerprint: str, *, config: VocabConfig, arch: Architecture,
                   by_offset: bool) -> str:
    """The machine cache's name for the vocabulary of this corpus, vocab section and
    architecture tokenizer (family and special tokens), and of how a sample is drawn
    (`by_offset`: files that can be entered at any byte; the same text compressed is
    drawn by position, another sample)."""
    identity = {"corpus": corpus_fingerprint, "vocab": dataclasses.asdict(config),
                "by_offset": by_offset,
                "family": config.family or arch.tokenizer_family,
                "special_tokens": list(arch.special_tokens),
                "version": 2}  # 2: samples drawn at byte offsets (`corpus.draw_sample`)
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _learn(source: corpus.Corpus, *, config: VocabConfig, arch: Architecture, family: str,
           out_dir: Path, say: Callable[[str], None], quiet: bool, processes: int = 1) -> None:
    """Learns the vocabulary of `config` from `source` into `out_dir`."""
    drawn = (corpus.draw_sample(source, size=config.sample, seed=config.sample_seed,
                                progress=not quiet)
             if config.sample else None)
    if drawn and drawn.positions:  # found by seeking: no count, no full read
        say(f"training a {family} vocabulary of up to {config.size:,} entries on a sample of "
            f"{len(drawn.positions):,} training documents drawn at seeded byte offsets")
        documents = track(corpus.sampled_documents(source, drawn.positions),
                          label="vocabulary: reading the sample", total=len(drawn.positions),
                          unit="documents", enabled=not quiet)
        vocab.train_vocabulary(
            documents, family=family, size=config.size, lowercase=config.lowercase,
            min_frequency=config.min_frequency, out_dir=out_dir,
            special_tokens=arch.special_tokens, byte_fallback=config.byte_fallback)
        return
    # Else drawn by position (files that cannot be entered at any byte), or every
    # document (no sample, or a corpus too small for it). The documents, counted once
    # per corpus (progress lines and the draw share the count) where a positional
    # sample or the workers need it: a sample leaves some out only when it is smaller.
    positional = bool(config.sample) and not (drawn and drawn.every)
    total = (corpus.count_documents(source, split="train", progress=not quiet)
             if positional or processes > 1 else None)
    sampling = positional and config.sample < total
    say(f"training a {family} vocabulary of up to {config.size:,} entries"
        + (f" on a sample of {config.sample:,} of the {total:,} training documents"
           if sampling else ""))
    # In processes, unless the sample leaves documents out.
    if processes > 1 and family == "wordpiece" and not sampling and total >= processes:
        vocab.train_vocabulary(
            (), family=family, size=config.size, lowercase=config.lowercase,
            min_frequency=config.min_frequency, out_dir=out_dir,
            special_tokens=arch.special_tokens,
            word_counts=_count_in_processes(source, processes=processes, quiet=quiet))
        return
    label = "vocabulary: sampling documents" if sampling else "vocabulary: counting words"
    documents = _with_progress(source, label=label, quiet=quiet)
    if sampling:
        documents = sample_documents(documents, size=config.sample, seed=config.sample_seed,
                                     total=total)
    vocab.train_vocabulary(
        documents,
        family=family, size=config.size, lowercase=config.lowercase,
        min_frequency=config.min_frequency, out_dir=out_dir,
        special_tokens=arch.special_tokens, byte_fallback=config.byte_fallback,
    )


def _count_in_processes(source: corpus.Corpus, *, processes: int,
                        quiet: bool) -> dict[str, int]:
    """The words of the training documents (`wordpiece.count_words`), counted by `processes`
    workers on contiguous ranges of the documents and added up."""
    spans = workers.ranges(corpus.count_documents(source, split="train", progress=not quiet),
                           processes)
    tasks = [(source, start, stop, index) for index, (start, stop) in enumerate(spans)]
    bar = Progress(f"vocabulary: counting words in {processes} processes",
                   total=spans[-1][1], unit="documents", enabled=not quiet)
    parts = workers.run(_count_part, tasks, processes=processes, counters=len(tasks),
                        progress=lambda done: bar.update(sum(done)))
    bar.finish()
    counts = collections.Counter()
    for part in parts:
        counts.update(part)
    return dict(counts)


def _count_part(task: tuple) -> dict[str, int]:
    """In a worker: the words of training documents `start` to `stop`."""
    from mlm.data.vocab import wordpiece

    source, start, stop, index = task
    documents = itertools.islice(corpus.iter_documents(source, split="train"), start, stop)

    def batches():
        done = 0
        while batch := list(itertools.islice(documents, vocab.DOCUMENTS_PER_BATCH)):
            yield batch
            done += len(batch)
            workers.counter(index, done)

    return wordpiece.count_words(batches())


def sample_documents(documents: Iterable[str], *, size: int, seed: int,
                     total: int) -> Iterator[str]:
    """At most `size` of the `total` `documents`, each kept with the same probability, in
    corpus order, streamed.

    The positions kept are a seeded uniform draw of `size` of `range(total)` without
    replacement, made before reading, so nothing but those positions is held: a few
    large documents (books) cost no memory, where a reservoir sample would hold `size`
    of them. The same corpus and seed give the same sample; `size >= total` keeps
    every document. Reading stops after the last position kept.
    """
    if size >= total:
        yield from documents
        return
    keep = np.sort(np.random.default_rng(seed).choice(total, size=size, replace=False))
    wanted = 0
    for index, document in enumerate(documents):
        if index == keep[wanted]:
            yield document
            wanted += 1
            if wanted == size:
                return


def load_tokenizer(path: Path, *, family: str, lowercase: bool, arch: Architecture):
    """The keras-hub tokenizer of `arch` on the vocabulary asset at `path`."""
    return vocab.build_tokenizer(path, family=family, lowercase=lowercase,
                                 tokenizer=arch.tokenizer)


def tokenize(source: corpus.Corpus, tokenizer, *, cache_root: Path, key: str, segmenter: str,
             say: Callable[[str], None], quiet: bool, share: tuple[int, int] = (0, 1),
             processes: int = 1,
             ) -> tuple[token_cache.TokenCache, dict[str, collections.Counter]]:
    """The token cache entry `cache_root/key` of `source`, built unless it is complete.

    With a `segmenter` (`masking.segmenter`), every token's word label is
    stored too (`mlm.data.segmenter`). `share` = `(host, hosts)` keeps only
    that host's share of the training documents: those whose index `i` in
    corpus order has `i % hosts == host`, the rule of HF's
    `datasets.distributed.split_dataset_by_node` and of tf.data's `shard`
    (the held-out split is kept whole, so every host evaluates alike).

    A held-out split drawn by hash comes from the same read of the corpus as the
    train split (`_one_read`): the corpus is read once, not once per split.

    With `processes` > 1, the documents are tokenized in that many worker
    processes (`mlm.data.workers`), each on a contiguous range of them, and
    the pieces joined in order: the entry is byte for byte the one one
    process writes. Each worker builds `tokenizer` again from its config and
    assets (`rebuild_tokenizer`), checked to hash alike.

    Returns:
        The entry, and per split what the reader repaired or skipped (see
        `corpus.iter_documents`), each said in one line; empty when the entry
        was already there.
    """
    tallies = {}

    def documents(split):
        # The last full read counts (a progress line may count the documents first).
        tallies[split] = collections.Counter()
        return _read(source, split=split, share=share, tally=tallies[split])

    cache = token_cache.load_cache(cache_root / key)

    def probe() -> list[str]:
        return list(itertools.islice(corpus.iter_documents(source, split="train"), _PROBE))

    if cache is None and processes > 1:
        cache = _tokenize_in_processes(
            source, tokenizer, final=cache_root / key, segmenter=segmenter,
            share=share, processes=processes, tallies=tallies, quiet=quiet,
            bulk=bulk_encoder(tokenizer, probe=probe, say=say) is not None)
    if cache is None:
        by_split = {split: functools.partial(documents, split) for split in token_cache.SPLITS}
        if not source.held_out_files:  # both splits from one read of the corpus
            # Into the entry's temporary folder, which a killed build leaves to the next.
            by_split = _one_read(source, share=share, tallies=tallies, spill=(
                atomic.temporary_sibling(cache_root / key) / ".held_out.txt"))
        cache = token_cache.load_or_build_cache(
            by_split, tokenizer, cache_root=cache_root, key=key, progress=not quiet,
            segmenter=_labeller(segmenter, tokenizer) if segmenter else None,
            bulk=bulk_encoder(tokenizer, probe=probe, say=say),
            **({} if quiet else _progress_totals(source, share=share)),
        )
    for split, tally in tallies.items():
        if corpus.describe_tally(tally):
            say(f"corpus text ({split}): {corpus.describe_tally(tally)}")
    return cache, tallies


def _one_read(source: corpus.Corpus, *, share: tuple[int, int], tallies: dict,
              spill: Path) -> dict[str, Callable[[], Iterator[str]]]:
    """`tokenize`'s documents of each split (as `_read` gives them) from one read of a corpus
    whose held-out split is drawn by hash: the train split's reading writes the held-out
    documents to the file `spill` as they pass (a few percent of the text), which the
    held-out split then reads and removes, instead of reading the whole corpus again for
    them. Called in split order, train first, each once, with `spill`'s folder there."""
    host, hosts = share

    def train() -> Iterator[str]:
        tallies["train"], tallies["held_out"] = collections.Counter(), collections.Counter()
        with open(spill, "w", encoding="utf-8", newline="") as out:  # "\r" kept as it is
            index = 0
            for split, document in corpus.iter_splits(source, tallies=tallies):
                if split == "held_out":
                    out.write(document + _SPILL_END)
                    continue
                if index % hosts == host:
                    yield document
                index += 1

    def held_out() -> Iterator[str]:
        with open(spill, encoding="utf-8", newline="") as f:
            rest = ""
            while chunk := f.read(1 << 20):
                *documents, rest = (rest + chunk).split(_SPILL_END)
                yield from documents
        spill.unlink()

    return {"train": train, "held_out": held_out}


# Ends each held-out document in `_one_read`'s file: NUL, which no document holds
# (`corpus.iter_documents` replaces it).
_SPILL_END = "\0"


def _read(source: corpus.Corpus, *, split: str, share: tuple[int, int],
          tally: collections.Counter):
    """The documents of `split` that `tokenize` reads: for "train" the host's share of
    `share` = `(host, hosts)`, the held-out split whole; `tally` as `corpus.iter_documents`'s."""
    host, hosts = share
    read = corpus.iter_documents(source, split=split, tally=tally)
    return itertools.islice(read, host, None, hosts) if split == "train" else read


@dataclasses.dataclass(frozen=True)
class _Part:
    """What one worker process tokenizes: documents `start` to `stop` (None: the end)
    of `split` (for "train", of the host's share), into the file `out`."""

    source: corpus.Corpus
    tokenizer: tuple  # `rebuild_tokenizer`'s arguments
    fingerprint: str
    split: str
    share: tuple[int, int]
    start: int
    stop: int | None
    out: Path
    segmenter: str
    bulk: bool
    index: int


def _tokenize_in_processes(source: corpus.Corpus, tokenizer, *, final: Path,
                           segmenter: str, share: tuple[int, int], processes: int, bulk: bool,
                           tallies: dict, quiet: bool) -> token_cache.TokenCache:
    """`tokenize`'s entry, built by `processes` workers: the train share cut into contiguous
    ranges, one per process, and the held-out split as one more task."""
    totals = _share_totals(source, share=share, progress=not quiet)
    spans = workers.ranges(totals["train"], processes)
    fingerprint = token_cache.tokenizer_fingerprint(tokenizer)

    def write_splits(tmp: Path) -> dict:
        assets = tmp / "tokenizer"  # what the workers build the tokenizer from; removed below
        assets.mkdir()
        tokenizer.save_assets(str(assets))
        # Through JSON, as a preset stores it: keras's tracked lists in it do not pickle.
        config = json.loads(json.dumps(tokenizer.get_config()))
        rebuild = (type(tokenizer), config, str(assets))

        def part(split, start, stop, out, index):
            return _Part(source=source, tokenizer=rebuild, fingerprint=fingerprint, split=split,
                         share=share, start=start, stop=stop, out=out, segmenter=segmenter,
                         bulk=bulk, index=index)

        pieces = [tmp / f"train.part{i}.bin" for i in range(len(spans))]
        # The last range runs to the end of the reader, so its tally is the whole split's.
        tasks = [part("train", start, stop if i < len(spans) - 1 else None, pieces[i], i)
                 for i, (start, stop) in enumerate(spans)]
        tasks.append(part("held_out", 0, None, tmp / "held_out.bin", len(spans)))
        bar = Progress(f"tokenizing in {processes} processes", total=sum(totals.values()),
                       unit="documents", enabled=not quiet)
        results = workers.run(_tokenize_part, tasks, processes=processes, counters=len(tasks),
                              progress=lambda done: bar.update(sum(done)))
        bar.finish()
        shutil.rmtree(assets)
        tallies["train"] = collections.Counter(results[len(spans) - 1][1])
        tallies["held_out"] = collections.Counter(results[-1][1])
        return {"train": token_cache.join_parts([stats for stats, _ in results[:-1]],
                                                files=pieces, out=tmp / "train.bin"),
                "held_out": results[-1][0]}

    return token_cache.write_entry(final, write_splits)


def _tokenize_part(part: _Part) -> tuple[dict, dict]:
    """In a worker: tokenizes `part` into its file; its statistics and its reader's tally."""
    tokenizer = rebuild_tokenizer(*part.tokenizer)
    if token_cache.tokenizer_fingerprint(tokenizer) != part.fingerprint:
        raise RuntimeError("a worker process rebuilt another tokenizer than the parent's")
    tally = collections.Counter()
    read = _read(part.source, split=part.split, share=part.share, tally=tally)
    stats = token_cache.tokenize_split(
        itertools.islice(read, part.start, part.stop), tokenizer, out=part.out,
        batch_size=token_cache.BATCH_SIZE, bar=_SharedCount(part.index),
        segmenter=_labeller(part.segmenter, tokenizer) if part.segmenter else None,
        bulk=bulk_encoder(tokenizer, probe=[], say=print) if part.bulk else None)
    return stats, dict(tally)


def rebuild_tokenizer(cls: type, config: dict, assets: str):
    """The keras-hub tokenizer of class `cls` with `config` and the vocabulary files that
    its `save_assets` wrote into the folder `assets` (as `from_preset` builds one)."""
    tokenizer = cls.from_config(config)
    tokenizer.load_assets(assets)
    return tokenizer


class _SharedCount:
    """A progress bar for `token_cache.tokenize_split` in a worker: it sets the worker's
    shared counter (`mlm.data.workers.counter`), which the parent's line sums."""

    def __init__(self, index: int):
        self.index = index

    def update(self, done: int, *, note: str = "") -> None:
        workers.counter(self.index, done)

    def finish(self) -> None:
        pass


def _share_totals(source: corpus.Corpus, *, share: tuple[int, int],
                  progress: bool) -> dict[str, int]:
    """The documents of each split that `tokenize` reads: its train share, the held-out
    split whole (counted once per corpus, `corpus.count_documents`, on a progress line
    if `progress`)."""
    host, hosts = share
    train = corpus.count_documents(source, split="train", progress=progress)
    return {"train": len(range(host, train, hosts)),
            "held_out": corpus.count_documents(source, split="held_out")}


def _progress_totals(source: corpus.Corpus, *, share: tuple[int, int]) -> dict:
    """The progress lines' totals for `token_cache.load_or_build_cache`: estimated by
    seeking where the files allow (`corpus.estimate_documents`; no pass over the corpus),
    else counted (`_share_totals`)."""
    estimate = corpus.estimate_documents(source)
    if estimate is None:
        return {"totals": _share_totals(source, share=share, progress=True)}
    host, hosts = share
    train = estimate["train"] // hosts + (host < estimate["train"] % hosts)
    return {"totals": {"train": train, "held_out": estimate["held_out"]}, "approximate": True}


# Documents on which a bulk encoder's ids are checked against keras-hub's before it is used.
_PROBE = 256


def bulk_encoder(tokenizer, *, probe, say: Callable[[str], None]):
    """A faster encoder of `tokenizer`'s ids (texts -> lists of ids), or None.

    Byte-level BPE (RoBERTa) only: keras-hub's `tf.data` path runs its merges
    in TensorFlow ops, about 84,000 tokens/s on 2 cores, where `tokenizers`
    runs the same merges in Rust over every core (`byte_bpe.hf_tokenizer_of`).
    For WordPiece and SentencePiece keras-hub's own path is as fast or faster
    (`mlm.data.vocab.hf_tokenizer`: 0.4 s against 1-1.6 s for the sample), so
    they keep it. The encoder is used only if it gives keras-hub's ids on
    `probe` (the first training documents, or a callable returning them, read only
    for a family that has a bulk encoder); otherwise keras-hub tokenizes and
    that is said.
    """
    if type(tokenizer).__name__ != "RobertaTokenizer":
        return None
    from mlm.data.vocab import byte_bpe

    fast = byte_bpe.hf_tokenizer_of(tokenizer)

    def encode(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in fast.encode_batch(texts, add_special_tokens=False)]

    probe = probe() if callable(probe) else probe
    if probe and encode(probe) != keras_hub_ids(tokenizer, probe):
        say("tokenizing with keras-hub: the fast byte-level BPE tokenizer differs from it on "
            "the corpus's first documents")
        return None
    return encode


def keras_hub_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """The ids of keras-hub `tokenizer` for `texts` through its `tf.data` path, the one
    the token cache is built with."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(texts).batch(max(len(texts), 1)).map(tokenizer)
    return [row for batch in ds for row in batch.to_list()]


def _labeller(segmenter: str, tokenizer):
    """The word labeller of `segmenter`, aligned to `tokenizer`'s pieces."""
    from mlm.data.segmenter import Segmenter

    family = next(a.tokenizer_family for a in ARCHITECTURES.values()
                  if a.tokenizer == type(tokenizer).__name__)
    return Segmenter(
        segmenter, family=family, special_tokens=tokenizer.special_tokens,
        vocabulary=[tokenizer.id_to_token(i) for i in range(tokenizer.vocabulary_size())])


def _with_progress(source: corpus.Corpus, *, label: str, quiet: bool):
    """The training documents on a progress line, whose ETA rests on their number: estimated
    by seeking where the files allow, else counted first."""
    totals = {} if quiet else _progress_totals(source, share=(0, 1))
    return track(corpus.iter_documents(source, split="train"), label=label,
                 total=totals.get("totals", {}).get("train"), unit="documents",
                 enabled=not quiet, approximate=totals.get("approximate", False))
