"""`pretrain`: raw text -> vocabulary -> token cache -> trained MaskedLM -> preset."""

from pathlib import Path

import keras

from mlm import checkpoints, corpus, runs, shards, vocab
from mlm.architectures import get_architecture
from mlm.config import Recipe
from mlm.export import copy_atomic, plot_curves, write_model_card
from mlm.pipeline import TokenIds, padding_fraction
from mlm.train import MetricsLog, build_task, compile_task, train


def pretrain(
    recipe: Recipe,
    *,
    run_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict:
    """Pretrains a MaskedLM from scratch on `recipe.corpus` into `run_dir`.

    Args:
        recipe: the resolved recipe (ignored for everything but `train.steps`
            when resuming: the run's saved recipe is used).
        run_dir: the run directory; must not exist (or be empty) unless
            `resume` or `overwrite`.
        resume: continue from the newest complete checkpoint in `run_dir`.
        overwrite: delete an existing `run_dir` first.
        quiet: print nothing but errors.

    Returns:
        A summary: held-out metrics, throughput, padding fraction, paths.

    Example:
    ```python
    import mlm
    recipe = mlm.load_recipe("bert_test")
    summary = mlm.pretrain(recipe, run_dir="runs/demo")
    print(summary["held_out"]["accuracy"])
    ```
    """
    run_dir = Path(run_dir)
    if resume:
        saved = runs.load_run_recipe(run_dir)
        recipe = runs.with_steps(saved, recipe.train.steps)
        runs.save_run_recipe(run_dir, recipe)
    arch = get_architecture(recipe.model.architecture)
    source = corpus.resolve_corpus(recipe.corpus)
    if not resume:
        runs.create_run_dir(run_dir, recipe=recipe, overwrite=overwrite)
    log = MetricsLog(run_dir / "metrics.jsonl", quiet=quiet)
    with runs.removed_on_failure(run_dir, fresh=not resume):
        tokenizer = load_or_train_tokenizer(source, recipe=recipe, run_dir=run_dir, log=log)
        cache = tokenize_corpus(source, tokenizer, run_dir=run_dir, quiet=quiet)
        ids = TokenIds.from_tokenizer(tokenizer)
        stats = describe_data(cache, recipe=recipe, log=log)
        task, start_step = build_or_restore_task(recipe, arch=arch, tokenizer=tokenizer,
                                                 run_dir=run_dir, log=log)
        # Batches come preprocessed from mlm.pipeline; the preprocessor is saved alongside.
        preprocessor, task.preprocessor = task.preprocessor, None
        result = train(
            task, preprocessor=preprocessor, recipe=recipe, arch=arch,
            train_tokens=cache.tokens("train"), held_out_tokens=cache.tokens("held_out"),
            ids=ids, run_dir=run_dir,
            start_step=start_step, log=log,
        )
    summary = {**stats, **result, "steps": recipe.train.steps, "run_dir": str(run_dir)}
    summary["preset"] = str(finish_run(run_dir, recipe=recipe, summary=summary, log=log))
    return summary


def load_or_train_tokenizer(source, *, recipe: Recipe, run_dir: Path, log: MetricsLog):
    """The run's tokenizer: learned once into `run_dir/vocab`, then reloaded."""
    vocab_dir = run_dir / "vocab"
    arch = get_architecture(recipe.model.architecture)
    family = recipe.vocab.family or arch.tokenizer_family
    path = vocab.vocabulary_path(vocab_dir, family=family)
    if not path.is_file():
        log.say(f"training a {family} vocabulary of up to {recipe.vocab.size:,} entries")
        vocab.train_vocabulary(
            corpus.iter_documents(source, split="train"), family=family,
            size=recipe.vocab.size, lowercase=recipe.vocab.lowercase,
            min_frequency=recipe.vocab.min_frequency, out_dir=vocab_dir,
        )
    tokenizer = vocab.build_tokenizer(path, family=family, lowercase=recipe.vocab.lowercase)
    log.say(f"vocabulary: {tokenizer.vocabulary_size():,} entries in {path}")
    return tokenizer


def tokenize_corpus(source, tokenizer, *, run_dir: Path, quiet: bool) -> shards.TokenCache:
    """The token cache of `source`, built on first use under `run_dir/cache`."""
    return shards.load_or_build_cache(
        {split: (lambda split=split: corpus.iter_documents(source, split=split))
         for split in shards.SPLITS},
        tokenizer,
        cache_root=run_dir / "cache",
        key=shards.cache_key(source.fingerprint, tokenizer),
        progress=not quiet,
    )


def describe_data(cache: shards.TokenCache, *, recipe: Recipe, log: MetricsLog) -> dict:
    """Logs and returns corpus statistics, the padding fraction among them."""
    length = recipe.model.sequence_length
    train_stats, held_stats = cache.stats["train"], cache.stats["held_out"]
    pad = padding_fraction(train_stats["tokens"], length)
    log.say(
        f"corpus: {train_stats['documents']:,} training documents ({train_stats['tokens']:,} "
        f"tokens), {held_stats['documents']:,} held out ({held_stats['tokens']:,} tokens); "
        f"windows of {length} tokens, padding fraction {pad:.4%}"
    )
    return {
        "train_documents": train_stats["documents"],
        "train_tokens": train_stats["tokens"],
        "held_out_documents": held_stats["documents"],
        "held_out_tokens": held_stats["tokens"],
        "padding_fraction": pad,
    }


def build_or_restore_task(recipe: Recipe, *, arch, tokenizer, run_dir: Path, log: MetricsLog):
    """A compiled task: from the newest checkpoint if there is one, else fresh."""
    import keras_hub

    latest = checkpoints.latest_checkpoint(run_dir)
    if latest is None:
        keras.utils.set_random_seed(recipe.train.seed)
        task = build_task(recipe.model, arch=arch, tokenizer=tokenizer, masking=recipe.masking)
        compile_task(task, recipe.train)
        log.say(f"model: {arch.masked_lm}, {task.count_params():,} parameters")
        return task, 0
    task = keras_hub.models.MaskedLM.from_preset(str(latest / "preset"))
    compile_task(task, recipe.train)
    step = checkpoints.restore_optimizer(task, latest)
    log.say(f"resuming from {latest} (step {step})")
    return task, step


def finish_run(run_dir: Path, *, recipe: Recipe, summary: dict, log: MetricsLog) -> Path:
    """Writes the final preset (with its model card) and the curves PNG."""
    preset = run_dir / "preset"
    if preset.exists():
        import shutil

        shutil.rmtree(preset)
    copy_atomic(checkpoints.latest_checkpoint(run_dir) / "preset", preset)
    write_model_card(preset, recipe=recipe.to_dict(), summary=summary)
    plot_curves(log.read(), run_dir / "curves.png")
    held = summary["held_out"]
    log.say(f"preset written to {preset}; curves in {run_dir / 'curves.png'}")
    if held:
        print(
            f"held-out masked accuracy {held['accuracy']:.4f}, loss {held['loss']:.4f}, "
            f"perplexity {held['perplexity']:.2f} (preset: {preset})"
        )
    return preset
