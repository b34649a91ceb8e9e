"""`prepare`: read a corpus, learn its vocabulary and tokenize it once, for many runs.

The story is the first half of `mlm.pretraining.pretrain`, through the same
functions (`mlm.data.tokenizing`), written into a prepared corpus folder
(`mlm.data.prepared`) instead of a run directory: resolve the corpus, learn
the recipe's vocabulary (or copy one in), tokenize both splits, write the
manifest. Runs then train from the folder with `--data` (`corpus.prepared`).
"""

import sys
from collections.abc import Callable
from pathlib import Path

from mlm import atomic
from mlm.architectures import get_architecture
from mlm.config import Recipe
from mlm.data import corpus, prepared, tokenizing, vocab
from mlm.data import workers as data_workers
from mlm.errors import MlmError


def prepare(
    recipe: Recipe,
    *,
    out: str | Path,
    vocab_dir: str | Path | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    share: tuple[int, int] = (0, 1),
    workers: int | None = None,
) -> dict:
    """Prepares `recipe.corpus` into the folder `out`: vocabulary, tokens, manifest.

    The vocabulary is the one `mlm.pretrain` would learn from this recipe
    and corpus (family, size, case and special tokens of
    `recipe.model.architecture`), and the tokens are those its run would
    tokenize, with the same keras-hub tokenizer, so `pretrain` with
    `corpus.prepared=out` trains on identical ids. The folder appears whole
    or not at all: a failure or kill leaves only a hidden temporary sibling,
    which the next `prepare` removes.

    Args:
        recipe: the recipe; its corpus, vocab, `model.architecture` and
            `masking.segmenter` are used.
        out: the prepared corpus folder; must be missing or empty, or, with
            `overwrite`, an earlier prepared corpus (replaced at the end).
        vocab_dir: copy this vocabulary folder (e.g. a run's `vocab/`, or
            `mlm vocab --out`) instead of learning one; it must hold the
            architecture family's files, learned with `recipe.vocab.lowercase`.
        overwrite: replace an existing prepared corpus at `out`.
        quiet: print nothing but errors.
        share: `(host, hosts)`: prepare host `host`'s share of the training
            documents for a run on `hosts` hosts (documents `i` with
            `i % hosts == host`, in corpus order), on that host, with no
            shared filesystem. The vocabulary is learned from the whole
            corpus, so every host learns the same one (or pass `vocab_dir`),
            and the held-out split is kept whole. `(0, 1)`: everything.
        workers: count words (WordPiece) and tokenize in this many processes
            (`mlm.data.workers`), each on a contiguous range of the
            documents; the folder is byte for byte the one of one process.
            None: 1 (on 2 cores more were no faster; see
            `mlm.data.workers.resolve`).

    Returns:
        The manifest written to `out/manifest.json`.

    Example:
    ```python
    import mlm
    recipe = mlm.apply_overrides(mlm.load_recipe("bert_test"), ['corpus.paths=["texts/"]'])
    manifest = mlm.prepare(recipe, out="prepared/texts")
    recipe = mlm.apply_overrides(mlm.load_recipe("bert_test"), ["corpus.prepared=prepared/texts"])
    mlm.pretrain(recipe, run_dir="runs/demo")
    ```
    """
    out = Path(out)
    arch = get_architecture(recipe.model.architecture)
    family = recipe.vocab.family or arch.tokenizer_family
    _check_recipe(recipe)
    check_share(share)
    check_out(out, overwrite=overwrite)
    processes = data_workers.resolve(workers)  # a bad one fails before any long work
    if vocab_dir is not None:
        vocabulary_files(Path(vocab_dir), family=family)
    say = _console(quiet=quiet)
    source = corpus.resolve_corpus(recipe.corpus)
    for hint in source.hints:
        say(hint)
    if processes > 1:
        say(f"{processes} worker processes (--workers)")
    host, hosts = share
    if hosts > 1:
        say(f"host {host} of {hosts}: its share of the training documents (number i where "
            f"i % {hosts} == {host}), and the whole held-out split")
    with atomic.writing_dir(out) as tmp:
        tokenizer = prepared_tokenizer(source, recipe=recipe, vocab_dir=vocab_dir,
                                       out_dir=tmp / prepared.VOCAB, say=say, quiet=quiet,
                                       processes=processes)
        cache, tallies = tokenizing.tokenize(
            source, tokenizer, cache_root=tmp, key=prepared.TOKENS,
            segmenter=recipe.masking.segmenter, say=say, quiet=quiet, share=share,
            processes=processes)
        manifest = prepared.manifest(
            recipe, corpus_fingerprint=source.fingerprint, tokenizer=tokenizer,
            stats=cache.stats, tallies=tallies, share=share,
            vocab_source=str(vocab_dir) if vocab_dir is not None else "learned")
        # Last: only a folder with its manifest is a prepared corpus.
        atomic.write_json(tmp / prepared.MANIFEST, manifest)
    return manifest


def check_share(share: tuple[int, int]) -> None:
    """Raises `MlmError` unless `share` = `(host, hosts)` names one of `hosts` hosts."""
    host, hosts = share
    if hosts < 1:
        raise MlmError(f"--hosts must be at least 1, but received {hosts}; pass the number "
                       f"of hosts the run will train on.")
    if not 0 <= host < hosts:
        raise MlmError(f"--host must be from 0 to {hosts - 1} with --hosts {hosts}, but "
                       f"received {host}; number the hosts 0 to {hosts - 1}, as their "
                       f"--process-id.")


def describe(manifest: dict) -> str:
    """What a prepared corpus holds, in one line."""
    train, held = manifest["splits"]["train"], manifest["splits"]["held_out"]
    host, hosts = prepared.share_of(manifest)
    return (("" if hosts == 1 else f"host {host}'s share of {hosts}: ")
            + f"{train['documents']:,} training documents ({train['tokens']:,} tokens), "
            f"{held['documents']:,} held out ({held['tokens']:,} tokens), "
            f"{manifest['tokenizer_family']} vocabulary of {manifest['vocabulary_size']:,}")


def prepared_tokenizer(source: corpus.Corpus, *, recipe: Recipe, vocab_dir: str | Path | None,
                       out_dir: Path, say: Callable[[str], None], quiet: bool,
                       processes: int = 1):
    """The tokenizer of the prepared corpus: its vocabulary learned (its words counted in
    `processes` processes), or copied from `vocab_dir`."""
    arch = get_architecture(recipe.model.architecture)
    family = recipe.vocab.family or arch.tokenizer_family
    if vocab_dir is None:
        path = tokenizing.learn_vocabulary(source, config=recipe.vocab, arch=arch,
                                           out_dir=out_dir, say=say, quiet=quiet,
                                           processes=processes)
    else:
        path = copy_vocabulary(Path(vocab_dir), family=family, out_dir=out_dir)
    try:
        tokenizer = tokenizing.load_tokenizer(path, family=family,
                                              lowercase=recipe.vocab.lowercase, arch=arch)
    except ValueError as e:  # keras-hub's, e.g. a special token missing from the vocabulary
        raise MlmError(
            f"--vocab {vocab_dir} does not suit {arch.tokenizer} of architecture {arch.name} "
            f"({e}); pass a vocabulary learned for it."
        ) from None
    origin = "learned" if vocab_dir is None else f"copied from {vocab_dir}"
    say(f"vocabulary: {tokenizer.vocabulary_size():,} entries ({origin})")
    return tokenizer


def check_out(out: Path, *, overwrite: bool) -> None:
    """Raises `MlmError` unless `prepare` may write the folder `out`.

    A missing or empty folder is fine; an existing prepared corpus needs
    `overwrite`; anything else is refused, even with `overwrite`, so that a
    mistyped `--out` never deletes unrelated files.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MlmError(f"--out {out} is a file; pass a folder for the prepared corpus.")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / prepared.MANIFEST).is_file():
        raise MlmError(
            f"--out {out} exists and is not a prepared corpus (no {prepared.MANIFEST}); "
            f"choose a new or empty folder."
        )
    if not overwrite:
        raise MlmError(
            f"prepared corpus {out} already exists; pass --overwrite to replace it, or choose "
            f"another --out."
        )


def vocabulary_files(folder: Path, *, family: str) -> tuple[Path, ...]:
    """The `family` vocabulary files of `folder`, the main one first.

    Raises:
        MlmError: `folder` lacks one of them (a vocabulary of another family,
            or none at all).
    """
    files = vocab.vocabulary_files(folder, family=family)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise MlmError(
            f"--vocab {folder} holds no {', '.join(missing)}, the {family} vocabulary this "
            f"recipe's architecture reads; pass a folder of `mlm vocab` for it or a run's "
            f"vocab/ folder."
        )
    return files


def copy_vocabulary(folder: Path, *, family: str, out_dir: Path) -> Path:
    """Copies the `family` vocabulary files of `folder` into `out_dir`; the main one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = vocabulary_files(folder, family=family)
    for file in files:
        (out_dir / file.name).write_bytes(file.read_bytes())
    return out_dir / files[0].name


def _check_recipe(recipe: Recipe) -> None:
    """Refuses the recipe fields a prepared corpus cannot honour."""
    if recipe.model.preset:
        raise MlmError(
            f"mlm prepare learns or copies the vocabulary of model.architecture, but "
            f"model.preset={recipe.model.preset!r} is set; to prepare for a preset, remove it "
            f"and pass --vocab with the preset's vocabulary folder (PRESET/assets/tokenizer)."
        )
    if recipe.corpus.prepared:
        raise MlmError(
            f"mlm prepare reads corpus.paths, but corpus.prepared={recipe.corpus.prepared!r} "
            f"is set; remove it."
        )


def _console(*, quiet: bool) -> Callable[[str], None]:
    """Prints a message on stderr, as a run's log does; nothing when quiet."""
    if quiet:
        return lambda message: None
    return lambda message: print(message, file=sys.stderr, flush=True)
