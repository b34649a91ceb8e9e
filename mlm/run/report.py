"""`run_dir/report.md`: a run at a glance, rebuilt from the files it left.

Every number comes from the run directory alone: `config.json` (the resolved
recipe), `metrics.jsonl` (curves, held-out evaluations, throughput, wall
time), the token cache (corpus statistics; for a run from a prepared corpus,
that folder's tokens) and the exported preset, or the newest checkpoint of a
stopped run (fill-mask examples). So `mlm report RUN_DIR` rebuilds the report
of any run without training again.

Example:
```python
import mlm
report = mlm.build_report("runs/demo")       # the numbers, as a dict
path = mlm.write_report("runs/demo")         # runs/demo/report.md and its PNGs
```
"""

import datetime
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mlm import atomic
from mlm.errors import MlmError
from mlm.progress import format_duration
from mlm.run import checkpoints
from mlm.run.directory import RunDir

# Tokens per bincount call, so that counting a large cache stays in bounded memory.
_COUNT_CHUNK = 1 << 24
# Longest held-out snippet shown in a fill-mask example, in tokens.
_EXAMPLE_TOKENS = 24


def write_report(
    run_dir: str | Path, *, examples: int = 3, say: Callable[[str], None] | None = None
) -> Path:
    """Writes `run_dir/report.md` with the curves PNGs beside it.

    Args:
        run_dir: a run directory of `mlm pretrain` or `mlm continue`,
            finished or stopped after its first checkpoint.
        examples: fill-mask examples drawn from the held-out text.
        say: told, in one line, of a torn last line of `metrics.jsonl`
            (skipped).

    Returns:
        The path of the report.
    """
    from mlm.run.plots import plot_curves, plot_schedule

    run = RunDir(run_dir)
    records = run.read_metrics(say=say)
    report = build_report(run.root, examples=examples, records=records)
    plot_curves(records, run.curves_plot)
    plot_schedule(records, run.schedule_plot)
    atomic.write_text(run.report, render_markdown(report))
    return run.report


def build_report(
    run_dir: str | Path, *, examples: int = 3, records: list[dict] | None = None
) -> dict:
    """The report's numbers: recipe, training, held-out table, corpus, examples.

    `records` are those of `metrics.jsonl`, read here when not given.
    """
    from mlm.preset_loading import load_masked_lm

    run_dir = Path(run_dir)
    recipe = _read_recipe(run_dir)
    records = read_metrics(run_dir) if records is None else records
    preset = _preset_of(run_dir)
    task = load_masked_lm(str(preset))
    tokenizer = task.preprocessor.tokenizer
    cache = _run_cache(run_dir, prepared=recipe["corpus"].get("prepared", ""))
    return {
        "run_dir": str(run_dir),
        "recipe": recipe,
        "preset": str(preset),
        "training": training_summary(records),
        "held_out": held_out_table(records),
        "wall": wall_time(records),
        "corpus": corpus_statistics(
            cache, tokenizer=tokenizer, sequence_length=recipe["model"]["sequence_length"]
        ),
        "examples": fill_mask_examples(task, cache.tokens("held_out"), count=examples),
    }


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of `run_dir/metrics.jsonl`, in order (`RunDir.read_metrics`)."""
    return RunDir(run_dir).read_metrics()


def training_summary(records: list[dict]) -> dict:
    """The last training record and the median throughput of the logged windows.

    The median, because the first window of each session holds tracing and
    compilation and would drag a mean down.
    """
    rows = _last_per_step(records, split="train")
    if not rows:
        return {}
    rates = [r["tokens_per_second"] for r in rows]
    return {
        "steps": rows[-1]["step"],
        "last": rows[-1],
        "median_tokens_per_second": statistics.median(rates),
        "log_windows": len(rows),
    }


def held_out_table(records: list[dict]) -> list[dict]:
    """The held-out evaluations, one per step (the latest when a resume repeated one)."""
    return _last_per_step(records, split="held_out")


def wall_time(records: list[dict]) -> dict:
    """Seconds the run took, summed over its sessions (a resume starts a new one).

    A session runs from its `{"split": "run", "event": "start"}` record to
    its last record, so the time a run lay stopped is not counted.
    """
    sessions, start, last = [], None, None
    for record in records:
        if record.get("split") == "run" and record.get("event") == "start":
            if start is not None:
                sessions.append(last - start)
            start = record["time"]
        if "time" in record:
            last = record["time"]
    if start is not None:
        sessions.append(last - start)
    return {
        "seconds": sum(sessions) if sessions else None,
        "sessions": len(sessions),
        "finished": last,
    }


def corpus_statistics(cache, *, tokenizer, sequence_length: int) -> dict:
    """Per split: documents, tokens, unknown-token rate, padding; and vocabulary coverage.

    Counted from the token cache itself (one pass of `np.bincount` per split):
    documents are the separators (one after each document), the unknown-token
    rate is over the text tokens (separators excluded), and coverage is the
    fraction of vocabulary ids that occur in the training tokens.
    """
    from mlm.data.pipeline import padding_fraction
    from mlm.data.token_cache import SPLITS, unknown_token_id

    size = int(tokenizer.vocabulary_size())
    end_id, unk_id = int(tokenizer.end_token_id), unknown_token_id(tokenizer)
    stats = {"cache": str(cache.path), "vocabulary_size": size}
    for split in SPLITS:
        counts = token_counts(cache.tokens(split), size=size)
        tokens, documents = int(counts.sum()), int(counts[end_id])
        unknown = int(counts[unk_id]) if unk_id is not None else 0
        stats[split] = {
            "documents": documents,
            "tokens": tokens,
            "unknown_tokens": unknown,
            "unknown_rate": unknown / max(tokens - documents, 1),
            "padding_fraction": padding_fraction(tokens, sequence_length),
        }
        if split == "train":
            stats["vocabulary_used"] = int(np.count_nonzero(counts))
            stats["vocabulary_coverage"] = stats["vocabulary_used"] / size
    return stats


def token_counts(tokens: np.ndarray, *, size: int) -> np.ndarray:
    """How often each id in `range(size)` occurs in `tokens`, read in chunks."""
    counts = np.zeros(size, dtype=np.int64)
    for begin in range(0, len(tokens), _COUNT_CHUNK):
        counts += np.bincount(tokens[begin : begin + _COUNT_CHUNK], minlength=size)[:size]
    return counts


def fill_mask_examples(task, tokens: np.ndarray, *, count: int, top_k: int = 5) -> list[dict]:
    """Masks one whole word in the opening of `count` held-out documents and predicts it.

    Documents are taken evenly spread over the held-out split; the word
    nearest the middle of each snippet is masked.
    """
    from mlm.architectures import architecture_of_backbone
    from mlm.predict import fill_mask, mask_token_of

    tokenizer = task.preprocessor.tokenizer
    family = architecture_of_backbone(task.backbone).tokenizer_family
    documents = _split_documents(np.asarray(tokens), end_id=int(tokenizer.end_token_id))
    words = _Words(tokenizer, family=family)
    snippets = [s for s in (words.snippet(d) for d in documents) if words.maskable(s)]
    if not snippets or count < 1:
        return []
    examples = []
    for index in np.unique(np.linspace(0, len(snippets) - 1, count).round().astype(int)):
        snippet = snippets[index]
        position = min(words.maskable(snippet), key=lambda i: abs(i - len(snippet) / 2))
        text = " ".join(
            part for part in (
                words.text(snippet[:position]),
                mask_token_of(tokenizer),
                words.text(snippet[position + 1 :]),
            ) if part
        )
        (candidates,) = fill_mask(task, text, top_k=top_k)
        examples.append({
            "text": text,
            "answer": words.text([snippet[position]]),
            "predictions": [[token, probability] for token, probability in candidates],
        })
    return examples


def render_markdown(report: dict) -> str:
    """The report as Markdown."""
    run = RunDir(report["run_dir"])  # the PNGs sit beside report.md
    return "\n".join([
        *_header(report),
        "## Curves",
        "",
        f"![masked loss and accuracy]({run.curves_plot.name})",
        "",
        f"![learning rate and throughput]({run.schedule_plot.name})",
        "",
        *_held_out_section(report["held_out"]),
        *_corpus_section(report["corpus"]),
        *_examples_section(report["examples"]),
        "## Recipe",
        "",
        "```json",
        json.dumps(report["recipe"], indent=2),
        "```",
        "",
    ])


# Rendering.


def _phases(train: dict, *, length: int) -> str:
    """The recipe's `train.phases` for the report's first line ("" without phases)."""
    if not train.get("phases"):
        return ""
    whole = "budget" if train.get("budget") else "steps"
    return ", in phases: " + ", then ".join(
        f"{p['fraction']:.0%} of the {whole} at {p.get('sequence_length', length)} tokens in "
        f"batches of {p.get('batch_size', train['batch_size'])}" for p in train["phases"])


def _header(report: dict) -> list[str]:
    recipe, training, wall = report["recipe"], report["training"], report["wall"]
    held = report["held_out"]
    train = recipe["train"]
    source = recipe["model"].get("preset")
    lines = [
        f"# Run report: {Path(report['run_dir']).name}",
        "",
        f"Recipe `{recipe.get('name', '?')}`"
        + (f", continued from `{source}`" if source else "")
        + (f": a training budget of {train['budget']}, in batches of {train['batch_size']}"
           f" windows of " if train.get("budget") else
           f": {train['steps']:,} steps of {train['batch_size']} windows of ")
        + f"{recipe['model']['sequence_length']} tokens"
        + _phases(train, length=recipe["model"]["sequence_length"])
        + f". Preset: `{report['preset']}`.",
        "",
        "| | |",
        "|---|---|",
    ]
    if held:
        first, last = held[0], held[-1]
        lines.append(
            f"| held-out masked accuracy | {last['accuracy']:.4f} at step {last['step']:,}"
            + (f" (from {first['accuracy']:.4f} at step {first['step']:,})"
               if first is not last else "") + " |"
        )
        lines.append(
            f"| held-out masked loss, perplexity | {last['loss']:.4f}, "
            f"{last['perplexity']:.2f} |"
        )
    if training:
        last = training["last"]
        lines += [
            f"| training loss, masked accuracy (step {last['step']:,}) | {last['loss']:.4f}, "
            f"{last['accuracy']:.4f} |",
            f"| throughput | {training['median_tokens_per_second']:,.0f} tokens/s (median of "
            f"{training['log_windows']} log windows) |",
        ]
    if wall["seconds"] is not None:
        finished = datetime.datetime.fromtimestamp(wall["finished"], datetime.UTC)
        lines += [
            f"| wall time | {format_duration(wall['seconds'])} in {wall['sessions']} "
            f"session{'s' if wall['sessions'] != 1 else ''} |",
            f"| last record | {finished:%Y-%m-%d %H:%M} UTC |",
        ]
    return [*lines, ""]


def _held_out_section(rows: list[dict]) -> list[str]:
    lines = ["## Held-out evaluations", ""]
    if not rows:
        return [*lines, "No held-out evaluation was recorded.", ""]
    lines += [
        "| step | masked loss | masked accuracy | perplexity | masked tokens |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['step']:,} | {r['loss']:.4f} | {r['accuracy']:.4f} | {r['perplexity']:.2f} | "
        f"{r.get('masked_tokens', 0):,} |"
        for r in rows
    ]
    return [*lines, ""]


def _corpus_section(stats: dict) -> list[str]:
    train, held = stats["train"], stats["held_out"]

    def row(name, fmt, key):
        return f"| {name} | {fmt.format(train[key])} | {fmt.format(held[key])} |"

    return [
        "## Corpus",
        "",
        "| | train | held-out |",
        "|---|---:|---:|",
        row("documents", "{:,}", "documents"),
        row("tokens (one separator per document)", "{:,}", "tokens"),
        row("unknown-token rate", "{:.4%}", "unknown_rate"),
        row("padding fraction of the windows", "{:.4%}", "padding_fraction"),
        "",
        f"Vocabulary: {stats['vocabulary_size']:,} entries, of which "
        f"{stats['vocabulary_used']:,} occur in the training tokens (coverage "
        f"{stats['vocabulary_coverage']:.2%}). Token cache: `{stats['cache']}`.",
        "",
    ]


def _examples_section(examples: list[dict]) -> list[str]:
    lines = ["## Fill-mask examples from held-out text", ""]
    if not examples:
        return [*lines, "No held-out text to draw examples from.", ""]
    for i, example in enumerate(examples, start=1):
        guesses = ", ".join(f"{token} ({p:.3f})" for token, p in example["predictions"])
        lines += [
            f"{i}. `{example['text']}`  ",
            f"   answer **{example['answer']}**; predicted: {guesses}",
        ]
    return [*lines, ""]


# Reading the run directory.


def _read_recipe(run_dir: Path) -> dict:
    path = RunDir(run_dir).recipe
    if not path.is_file():
        raise MlmError(
            f"{run_dir} is not a run directory (no {path.name}); pass the --run-dir of a run."
        )
    return json.loads(path.read_text())


def _preset_of(run_dir: Path) -> Path:
    """The exported preset, or the newest checkpoint's for a run stopped before export."""
    preset = RunDir(run_dir).preset
    if (preset / "config.json").is_file():  # keras-hub's preset config
        return preset
    latest = checkpoints.latest_checkpoint(run_dir)
    if latest is None:
        raise MlmError(
            f"{run_dir} holds no preset and no checkpoint yet; report on it after its first "
            f"checkpoint."
        )
    return checkpoints.preset_of(latest)


def _run_cache(run_dir: Path, *, prepared: str):
    """The tokens the run read: its prepared corpus's (`corpus.prepared`), else the token
    cache entry it recorded (in the machine cache), else its own `cache/` folder's."""
    from mlm.data.prepared import TOKENS
    from mlm.data.token_cache import load_cache

    if prepared:
        cache = load_cache(Path(prepared) / TOKENS)
        if cache is None:
            raise MlmError(f"the run read the prepared corpus {prepared}, which is gone or "
                           f"incomplete; restore it to report on the run.")
        return cache
    recorded = [r["path"] for r in RunDir(run_dir).read_metrics()
                if r.get("split") == "corpus" and r.get("part") == "tokens"]
    if recorded:
        cache = load_cache(Path(recorded[-1]))
        if cache is None:
            raise MlmError(
                f"the run's token cache {recorded[-1]} is gone (the machine cache, "
                f"$MLM_CACHE_DIR, cleared or another machine?); report where the run trained, "
                f"or resume it here (`mlm pretrain --resume {run_dir}`) to tokenize again."
            )
        return cache
    return _newest_cache(run_dir)


def _newest_cache(run_dir: Path):
    """The run's token cache entry in its own `cache/` folder (runs from before the machine
    cache); the newest if the corpus changed between sessions."""
    from mlm.data.token_cache import load_cache

    entries = [e for e in _children(RunDir(run_dir).cache) if load_cache(e) is not None]
    if not entries:
        raise MlmError(f"{run_dir} holds no token cache (cache/*/meta.json); the run never "
                       f"tokenized its corpus.")
    return load_cache(max(entries, key=lambda e: e.stat().st_mtime))


def _children(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _last_per_step(records: list[dict], *, split: str) -> list[dict]:
    by_step = {r["step"]: r for r in records if r.get("split") == split}
    return [by_step[step] for step in sorted(by_step)]


def _split_documents(tokens: np.ndarray, *, end_id: int) -> list[np.ndarray]:
    """The documents of a flat token array, without their separators."""
    ends = np.flatnonzero(tokens == end_id)
    starts = np.concatenate([[0], ends + 1])
    return [tokens[a:b] for a, b in zip(starts, ends, strict=False) if b > a]


class _Words:
    """Word boundaries of a document's tokens, as the tokenizer family reads them."""

    def __init__(self, tokenizer, *, family: str):
        from mlm.data import vocab

        self.family = family
        # By id: a byte-level BPE's get_vocabulary() is not in id order.
        size = tokenizer.vocabulary_size()
        self.vocabulary = [str(tokenizer.id_to_token(i)) for i in range(size)]
        self.starts = vocab.word_starts(
            self.vocabulary, family=family, special_tokens=tokenizer.special_tokens
        )

    def text(self, ids: list[int]) -> str:
        """The text the tokens spell, subword marks resolved."""
        from mlm.data import vocab

        return vocab.detokenize([self.vocabulary[i] for i in ids], family=self.family).strip()

    def snippet(self, document: np.ndarray) -> list[int]:
        """The document's opening of up to `_EXAMPLE_TOKENS` tokens, ending on a whole word."""
        ids = [int(i) for i in document[:_EXAMPLE_TOKENS]]
        rest = document[_EXAMPLE_TOKENS:]
        if len(rest) and not self.starts[rest[0]]:
            # Drop the word cut in two at the end.
            while ids and not self.starts[ids[-1]]:
                ids.pop()
            ids = ids[:-1]
        return ids

    def maskable(self, ids: list[int]) -> list[int]:
        """Positions of whole alphabetic words of four letters or more, in one token.

        Four letters or more, so the examples are rarely "the" or "and".
        """
        ids = ids[:_EXAMPLE_TOKENS]
        # The document's first token starts a word, marked or not (byte-level BPE).
        starts = [i == 0 or bool(self.starts[token]) for i, token in enumerate(ids)]
        return [
            i for i, token in enumerate(ids)
            if starts[i] and not (i + 1 < len(ids) and not starts[i + 1])
            and (word := self.text([token])).isalpha() and len(word) >= 4
        ]
