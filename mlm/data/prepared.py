"""A prepared corpus: a corpus read, learned from and tokenized once, for many runs.

`mlm prepare` (`mlm.preparing`) writes the folder; `mlm pretrain --data DIR`
(`corpus.prepared`) trains from it without reading text, learning a
vocabulary or tokenizing. The folder holds:

- `vocab/`: the vocabulary files of the tokenizer family, as a run's own
  `vocab/` holds them (a run copies them in, so it stays self-contained);
- `tokens/`: one token cache entry (`mlm.data.token_cache`: `train.bin`,
  `held_out.bin`, `meta.json`, and the segmenter's word labels), read
  memory-mapped in place by every run;
- `manifest.json`: what it was prepared from and with (`manifest`), written
  last, so a folder without one is not a prepared corpus.

The whole folder is written into a temporary sibling and renamed at the end
(`mlm.atomic.writing_dir`), so a failed or killed `mlm prepare` leaves
nothing that looks complete. Runs only read it.
"""

import dataclasses
import json
from pathlib import Path

from mlm import atomic
from mlm.architectures import ARCHITECTURES, get_architecture
from mlm.config import Recipe
from mlm.data import token_cache, vocab
from mlm.errors import MlmError

MANIFEST = "manifest.json"
VOCAB = "vocab"
TOKENS = "tokens"
# Bumped when the folder's layout or the manifest's meaning changes.
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class PreparedCorpus:
    """A complete prepared corpus folder; open it with `open_prepared`.

    Attributes:
        path: the folder.
        manifest: its `manifest.json` (see `manifest`).
        hints: none: the text was checked when it was prepared (a `Corpus`
            carries hints about its files).
    """

    path: Path
    manifest: dict
    hints: tuple[str, ...] = ()

    @property
    def family(self) -> str:
        return self.manifest["tokenizer_family"]

    @property
    def lowercase(self) -> bool:
        return self.manifest["lowercase"]

    def cache(self) -> token_cache.TokenCache:
        """The tokens, memory-mapped read-only by `TokenCache`."""
        return token_cache.load_cache(self.path / TOKENS)

    def copy_vocabulary(self, vocab_dir: Path) -> Path:
        """Copies the vocabulary into `vocab_dir` (a run's) unless it is there; its main file."""
        path = vocab.vocabulary_path(vocab_dir, family=self.family)
        if not path.exists():
            atomic.copy_dir(self.path / VOCAB, vocab_dir)
        return path

    def record(self) -> dict:
        """The `metrics.jsonl` record a run reading it writes once: what it read."""
        return {"split": "corpus", "part": "prepared", "path": str(self.path),
                **{key: self.manifest[key] for key in _IDENTITY}}


# The manifest's fields that name the tokens: the same ones mean the same ids.
_IDENTITY = ("corpus_fingerprint", "tokenizer_fingerprint", "segmenter")


def share_of(manifest: dict) -> tuple[int, int]:
    """`(host, hosts)` of the training documents a prepared corpus holds; `(0, 1)`: all."""
    share = manifest.get("share") or {}
    return int(share.get("host", 0)), int(share.get("hosts", 1))


def check_share(prepared: PreparedCorpus, *, process_index: int, process_count: int) -> None:
    """Raises `MlmError` unless `prepared` suits process `process_index` of a run on
    `process_count` processes: all the documents (every process reads the same
    tokens and takes its slice of each batch), or exactly that process's share."""
    host, hosts = share_of(prepared.manifest)
    if hosts == 1 or (hosts, host) == (process_count, process_index):
        return
    raise MlmError(
        f"prepared corpus {prepared.path} is host {host}'s share of {hosts} hosts, but this is "
        f"process {process_index} of {process_count}; give each process the share prepared "
        f"with `mlm prepare --hosts {process_count} --host {process_index}`."
    )


def open_prepared(path: str | Path, *, recipe: Recipe) -> PreparedCorpus:
    """The prepared corpus at `path`, checked to be complete and to suit `recipe`.

    Raises:
        MlmError: `path` is not a complete prepared corpus of this format, or
            `recipe` needs another tokenizer or segmenter than it was
            prepared with.
    """
    path = Path(path)
    how = f"prepare it with `mlm prepare --corpus ... --out {path}`"
    if not path.is_dir():
        raise MlmError(f"prepared corpus not found: {path}; {how}.")
    if not (path / MANIFEST).is_file():
        raise MlmError(
            f"{path} is not a prepared corpus (no {MANIFEST}: another folder, or an "
            f"`mlm prepare` that did not finish); {how}."
        )
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except ValueError:
        raise MlmError(f"{path / MANIFEST} is not JSON; {how}.") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise MlmError(
            f"{path} is a prepared corpus of format {version}, but this mlm reads format "
            f"{FORMAT_VERSION}; prepare it again with this version."
        )
    if token_cache.load_cache(path / TOKENS) is None:
        raise MlmError(f"{path} lacks {TOKENS}/ (its token arrays); {how}.")
    prepared = PreparedCorpus(path=path, manifest=manifest)
    check_recipe(prepared, recipe=recipe)
    return prepared


def check_recipe(prepared: PreparedCorpus, *, recipe: Recipe) -> None:
    """Raises `MlmError` unless `recipe` can train from `prepared`'s tokens.

    A fresh model needs the tokenizer the corpus was prepared for (family,
    then class, which fixes the special tokens); a preset's tokenizer is
    checked once loaded (`check_tokenizer`). The segmenter's word labels are
    made when preparing, so the segmenters must agree.
    """
    m = prepared.manifest
    if not recipe.model.preset:
        arch = get_architecture(recipe.model.architecture)
        if arch.tokenizer_family != m["tokenizer_family"]:
            raise MlmError(
                f"prepared corpus {prepared.path} holds a {m['tokenizer_family']} vocabulary "
                f"(prepared for architecture {m['architecture']}), but architecture "
                f"'{arch.name}' reads {arch.tokenizer_family}; prepare the corpus with this "
                f"recipe (mlm prepare --recipe ...) or choose a {m['architecture']} recipe."
            )
        if arch.tokenizer != m["tokenizer"]:
            raise MlmError(
                f"prepared corpus {prepared.path} was tokenized for {m['tokenizer']} "
                f"(architecture {m['architecture']}), but architecture '{arch.name}' uses "
                f"{arch.tokenizer}, with its own special tokens; prepare the corpus with "
                f"this recipe (mlm prepare --recipe ...)."
            )
    if recipe.masking.segmenter != m["segmenter"]:
        raise MlmError(
            f"prepared corpus {prepared.path} was prepared with masking.segmenter="
            f"{m['segmenter']!r}, but the recipe has segmenter={recipe.masking.segmenter!r}; "
            f"word labels are made when preparing: prepare it with the recipe's segmenter."
        )


def check_tokenizer(prepared: PreparedCorpus, tokenizer, *, preset: str = "") -> None:
    """Raises `MlmError` unless `tokenizer` is the one that made `prepared`'s ids.

    `preset` names the preset a continued run starts from, whose tokenizer
    must have made them: the message says how to prepare with its vocabulary.
    """
    if token_cache.tokenizer_fingerprint(tokenizer) == prepared.manifest["tokenizer_fingerprint"]:
        return
    if preset:
        raise MlmError(
            f"prepared corpus {prepared.path} was tokenized by another tokenizer than preset "
            f"{preset}'s; prepare it with the preset's vocabulary: "
            f"{_prepare_command_for(tokenizer, preset=preset)}"
        )
    raise MlmError(
        f"the run's tokenizer is not the one prepared corpus {prepared.path} was tokenized "
        f"with (their fingerprints differ: the folder was prepared again with another "
        f"vocabulary, or by another keras-hub); point the run at the folder it started with, "
        f"or prepare again and start a new run."
    )


def check_unchanged(prepared: PreparedCorpus, *, recorded: dict | None) -> None:
    """Raises `MlmError` if `prepared` is not what a run `recorded` reading at its start."""
    if recorded is None:
        return
    changed = [key for key in _IDENTITY if recorded.get(key) != prepared.manifest[key]]
    if changed:
        raise MlmError(
            f"prepared corpus {prepared.path} changed since this run started (its "
            f"{', '.join(changed)} differ from the run's record in metrics.jsonl); a resumed "
            f"run must read the tokens it started with: restore that folder, or start a new run."
        )


def _prepare_command_for(tokenizer, *, preset: str) -> str:
    """The `mlm prepare` command whose tokens a run from `preset` (with `tokenizer`) can read."""
    arch = next(a for a in ARCHITECTURES.values() if a.tokenizer == type(tokenizer).__name__)
    assets = vocab.vocabulary_path(".", family=arch.tokenizer_family).name
    folder = Path(preset) / "assets" / "tokenizer"
    where = folder if folder.is_dir() else f"FOLDER (holding the preset's {assets})"
    settings = f"model.architecture={arch.name}"
    if isinstance(getattr(tokenizer, "lowercase", None), bool):
        settings += f" vocab.lowercase={str(tokenizer.lowercase).lower()}"
    return (f"mlm prepare --vocab {where} --set {settings} --corpus ... --out NEW_FOLDER, "
            f"then --data NEW_FOLDER.")


def manifest(recipe: Recipe, *, corpus_fingerprint: str, tokenizer, stats: dict,
             tallies: dict, vocab_source: str, share: tuple[int, int] = (0, 1)) -> dict:
    """The manifest of a prepared corpus: what it was prepared from and with.

    Args:
        recipe: the recipe it was prepared with; its corpus and vocab sections
            are kept whole.
        corpus_fingerprint: `Corpus.fingerprint` of the text read.
        tokenizer: the keras-hub tokenizer that made the ids.
        stats: per split, the token cache's documents, tokens and unknown tokens.
        tallies: per split, what the reader repaired or skipped.
        vocab_source: "learned", or the `--vocab` folder it was copied from.
        share: `(host, hosts)`: the hosts' share of the training documents it
            holds (`mlm.preparing.prepare`).
    """
    arch = get_architecture(recipe.model.architecture)
    return {
        "format_version": FORMAT_VERSION,
        "corpus_fingerprint": corpus_fingerprint,
        "tokenizer_fingerprint": token_cache.tokenizer_fingerprint(tokenizer),
        "architecture": arch.name,
        "tokenizer": arch.tokenizer,
        "tokenizer_family": recipe.vocab.family or arch.tokenizer_family,
        "vocabulary_size": int(tokenizer.vocabulary_size()),
        "vocabulary": vocab_source,
        "lowercase": recipe.vocab.lowercase,
        "segmenter": recipe.masking.segmenter,
        "share": {"host": share[0], "hosts": share[1]},
        "splits": {split: {key: stats[split][key]
                           for key in ("documents", "tokens", "unknown_tokens")}
                   for split in token_cache.SPLITS},
        "repaired_or_skipped": {split: dict(tally) for split, tally in tallies.items()},
        # Through JSON, so that what is returned equals what is read back (lists, not tuples).
        "recipe": json.loads(json.dumps({"name": recipe.name,
                                         "corpus": dataclasses.asdict(recipe.corpus),
                                         "vocab": dataclasses.asdict(recipe.vocab)})),
    }
