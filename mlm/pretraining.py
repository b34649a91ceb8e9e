"""`pretrain` and `continue_pretraining`: raw text -> trained MaskedLM -> preset.

Both are one story: read the corpus, get a task (fresh with a learned
vocabulary, from a preset, or from the run's newest checkpoint), tokenize
once, train with dynamic masking, export. From a prepared corpus
(`corpus.prepared`, `mlm prepare`), the vocabulary is copied and the tokens
read in place instead.
"""

import contextlib
import dataclasses
import json
import os
from pathlib import Path

import keras

from mlm import atomic, machine_cache
from mlm.architectures import (
    architecture_of_backbone,
    get_architecture,
    preprocessor_detached,
)
from mlm.config import Recipe, apply_overrides, load_recipe
from mlm.data import corpus, prepared, token_cache, tokenizing
from mlm.data.masking import resolve_masking
from mlm.data.pipeline import padding_fraction
from mlm.errors import MlmError
from mlm.run import checkpoints, directory
from mlm.run.directory import RunDir
from mlm.run.export import write_model_card
from mlm.run.log import MetricsLog, tensorboard_hint
from mlm.run.report import write_report
from mlm.training import distributed
from mlm.training.loop import train
from mlm.training.plan import check_batches, check_resumed, resolve_plan
from mlm.training.task import build_preprocessor, build_task, compile_task, make_deterministic


def pretrain(
    recipe: Recipe,
    *,
    run_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    topology: distributed.Topology | None = None,
    settings_cache: str | Path | None = None,
) -> dict:
    """Pretrains a MaskedLM on `recipe.corpus` into `run_dir`.

    From scratch (a vocabulary is learned and a backbone built from the
    recipe), or, when `recipe.model.preset` is set, continued from that preset.
    With `recipe.corpus.prepared`, the prepared corpus's vocabulary and tokens
    are used: nothing is read, learned or tokenized, and the folder is never
    written.

    Args:
        recipe: the resolved recipe. When resuming, the run's saved recipe is
            used instead, with `train.steps` taken from this one.
        run_dir: the run directory; must not exist (or be empty) unless
            `resume` or `overwrite`.
        resume: continue from the newest complete checkpoint in `run_dir`.
        overwrite: delete an existing `run_dir` first.
        quiet: print nothing but errors and the final summary.
        topology: this process's place in a distributed run
            (`mlm.training.distributed.use_all_devices`); default one process. Process 0
            writes the run directory, which every process must see.
        settings_cache: the per-machine cache of the train step's measured
            precision and XLA settings (`mlm.training.step_settings`); default
            `$MLM_CACHE_DIR`, `$XDG_CACHE_HOME/mlm` or `~/.cache/mlm`.

    Returns:
        A summary: held-out metrics at the start and end, throughput, corpus
        statistics with the padding fraction, and the preset path.

    Example:
    ```python
    import mlm
    recipe = mlm.apply_overrides(mlm.load_recipe("bert_test"), ["train.steps=20"])
    summary = mlm.pretrain(recipe, run_dir="runs/demo")
    print(summary["held_out"]["accuracy"])
    ```
    """
    run_dir = Path(run_dir)
    topology = topology or distributed.Topology()
    settings_cache = Path(settings_cache) if settings_cache else machine_cache.root()
    chief = topology.is_chief
    if resume:
        recipe = directory.with_steps(directory.load_run_recipe(run_dir), recipe.train.steps,
                                      recipe.train.budget)
    check_batches(recipe, topology=topology)  # before a vocabulary is learned or text read
    source = open_source(recipe, run_dir=run_dir)
    own_share = False  # whether this process trains from a share of its own (--hosts)
    if isinstance(source, prepared.PreparedCorpus):
        prepared.check_share(source, process_index=topology.process_index,
                             process_count=topology.process_count)
        own_share = prepared.share_of(source.manifest)[1] > 1
    # Before a vocabulary is learned or text tokenized: every host runs one recipe on one text.
    distributed.check_same(topology, {"recipe": recipe_identity(recipe),
                                      "corpus": corpus_identity(source)}, advice=SAME_RUN_ADVICE)
    run = RunDir(run_dir)
    if chief and not resume:
        directory.create_run_dir(run_dir, recipe=recipe, overwrite=overwrite)
    if chief and topology.process_count > 1:  # what the others compare theirs with
        atomic.write_text(run.session, os.urandom(8).hex())
    if not distributed.sees_chiefs_file(run.session, topology=topology):
        # No shared filesystem: this process keeps a run directory of its own.
        topology = dataclasses.replace(topology, own_run_dir=True)
        if not resume:
            directory.create_run_dir(run_dir, recipe=recipe, overwrite=overwrite)
    writer = topology.writes_checkpoints
    log = MetricsLog(run, quiet=quiet, tensorboard=True, record=chief)
    for hint in source.hints if chief else ():
        log.say(hint)
    lock = directory.run_lock(run_dir) if writer else contextlib.nullcontext()
    with directory.removed_on_failure(run_dir, fresh=not resume and writer), lock:
        if resume and writer:
            directory.save_run_recipe(run_dir, recipe)
            # First: a torn last line of metrics.jsonl goes before anything is appended.
            directory.clean_interrupted(run_dir, say=log.say)
        log.write({"split": "run", "event": "start"})  # the report sums sessions' wall time
        log.say(tensorboard_hint(run.tensorboard))
        if topology.device_count > 1:
            log.say(f"data-parallel over {topology.device_count} devices in "
                    f"{topology.process_count} process(es): each device takes "
                    f"{recipe.train.batch_size // topology.device_count} windows of every "
                    f"global batch of {recipe.train.batch_size}, in training and in "
                    f"held-out evaluation")
        share_files(recipe, source=source, run_dir=run_dir, log=log, topology=topology)
        task, start_step = starting_task(recipe, source=source, run_dir=run_dir, log=log,
                                         topology=topology)
        # Every value the stages read, and every error they could raise, before tokenizing.
        plan = resolve_plan(recipe, backbone=task.backbone,
                            tokenizer=task.preprocessor.tokenizer, topology=topology)
        if resume and run.plan.is_file():
            check_resumed(plan, json.loads(run.plan.read_text()))
        distributed.check_same(
            topology, {"vocabulary": token_cache.tokenizer_fingerprint(
                task.preprocessor.tokenizer)}, advice=SAME_RUN_ADVICE)
        distributed.check_agreement(topology, step=start_step, run_dir=run_dir)
        log.trim(step=start_step)  # records after the step resumed from are written again
        # Batches come preprocessed from mlm.data.pipeline; the preprocessor is saved alongside.
        with preprocessor_detached(task) as preprocessor:
            cache = corpus_tokens(source, preprocessor.tokenizer, recipe=recipe, run_dir=run_dir,
                                  log=log)
            stats = describe_data(cache, recipe=recipe, log=log)
            tokens = {split: cache.tokens(split) for split in token_cache.SPLITS}
            if own_share:  # every host's epoch as long as the shortest share's
                shortest = distributed.smallest(topology, len(tokens["train"]))
                log.say(f"training tokens: this host's own share ({shortest:,} of its "
                        f"{len(tokens['train']):,}, as many as the shortest share), process "
                        f"{topology.process_index} of {topology.process_count}")
                tokens["train"] = tokens["train"][:shortest]
            result = train(
                task, plan=plan, tokens=tokens, own_share=own_share,
                word_labels={split: cache.word_labels(split) for split in token_cache.SPLITS},
                start_step=start_step, log=log, topology=topology,
                checkpoints=checkpoints.RunCheckpoints(
                    run_dir, preprocessor=preprocessor, keep=recipe.train.keep_checkpoints),
                settings_cache=settings_cache,
            )
    result.pop("plan")
    summary = {**stats, "steps": recipe.train.steps, **result, "run_dir": str(run_dir)}
    if chief:
        with distributed.outside_distribution():  # the report loads the preset
            summary["preset"] = str(finish_run(run_dir, recipe=recipe, summary=summary, log=log))
    return summary


def continue_pretraining(
    preset: str,
    *,
    run_dir: str | Path,
    recipe: Recipe | None = None,
    overrides: tuple[str, ...] = (),
    **kwargs,
) -> dict:
    """Continues MLM pretraining of `preset` on a new corpus (domain adaptation).

    Args:
        preset: a keras-hub handle (`bert_tiny_en_uncased`, `kaggle://...`,
            `hf://...`), a local keras-hub preset folder, or a local HuggingFace
            checkpoint folder (`config.json`, `model.safetensors`, vocabulary).
        run_dir: the run directory.
        recipe: training settings; default the `continue_pretraining` recipe
            (smaller learning rate and short warmup).
        overrides: `section.field=value` overrides, e.g. `corpus.paths=["a.txt"]`.
        **kwargs: `resume`, `overwrite`, `quiet`, as for `pretrain`.

    Example:
    ```python
    summary = mlm.continue_pretraining(
        "runs/demo/preset", run_dir="runs/legal",
        overrides=['corpus.paths=["legal_texts/"]', "train.steps=500"],
    )
    print(summary["held_out_start"]["accuracy"], "->", summary["held_out"]["accuracy"])
    ```
    """
    recipe = recipe or load_recipe("continue_pretraining")
    recipe = apply_overrides(recipe, [*overrides, f"model.preset={preset}"])
    return pretrain(recipe, run_dir=run_dir, **kwargs)


# What a process whose recipe, corpus or vocabulary differs from process 0's is told.
SAME_RUN_ADVICE = ("every process must run the same recipe (--recipe, --set, --steps) on the "
                   "same text and vocabulary; start every host with the same command and corpus.")


def recipe_identity(recipe: Recipe) -> str:
    """The recipe as the processes of one run must share it: without the places of its
    corpus and preset, which may differ from host to host (their content is checked)."""
    data = recipe.to_dict()
    for section, field in (("corpus", "paths"), ("corpus", "held_out_paths"),
                           ("corpus", "prepared"), ("model", "preset")):
        data[section][field] = None
    return json.dumps(data, sort_keys=True, default=str)


def corpus_identity(source) -> str:
    """What the run reads: the corpus fingerprint (content and reading settings), or the
    prepared corpus's corpus and tokenizer fingerprints."""
    if isinstance(source, prepared.PreparedCorpus):
        return json.dumps([source.manifest["corpus_fingerprint"],
                           source.manifest["tokenizer_fingerprint"]])
    return source.fingerprint


def open_source(recipe: Recipe, *, run_dir: Path):
    """What the run reads: its corpus, or its prepared corpus (`corpus.prepared`).

    The corpus is validated and fingerprinted (`corpus.resolve_corpus`); a
    prepared corpus is checked to be complete and to suit the recipe, and to
    lie outside the run directory, which a failed start deletes.
    """
    if not recipe.corpus.prepared:
        return corpus.resolve_corpus(recipe.corpus)
    source = prepared.open_prepared(recipe.corpus.prepared, recipe=recipe)
    folder = source.path.resolve()
    if Path(run_dir).resolve() in (folder, *folder.parents):
        raise MlmError(
            f"prepared corpus {source.path} is inside run directory {run_dir}, which "
            f"--overwrite or a failed start deletes; keep it outside the run directory."
        )
    return source


def share_files(recipe: Recipe, *, source, run_dir: Path, log: MetricsLog,
                topology: distributed.Topology) -> None:
    """In a multi-process run, process 0 learns the vocabulary and tokenizes first.

    The other processes wait, then find both in the shared run directory and
    only read them; a process with a run directory of its own (no shared
    filesystem) learns the same vocabulary into it meanwhile (`check_same`
    then compares the tokenizers). The model is not built here: creating a distributed
    variable is a collective operation that every process joins together.
    """
    if topology.process_count == 1:
        return
    if topology.writes_checkpoints:  # process 0, and a process with a run directory of its own
        tokenizer = starting_tokenizer(recipe, source=source, run_dir=run_dir, log=log)
        corpus_tokens(source, tokenizer, recipe=recipe, run_dir=run_dir, log=log)
    distributed.barrier(topology, "shared files")
    if not topology.own_run_dir:
        distributed.check_visible(RunDir(run_dir).recipe, topology=topology)


def starting_tokenizer(recipe: Recipe, *, source, run_dir: Path, log: MetricsLog):
    """The tokenizer of the task `starting_task` returns, without building a model."""
    from mlm.preset_loading import load_tokenizer

    latest = checkpoints.latest_checkpoint(run_dir)
    if latest is not None:
        return load_tokenizer(str(checkpoints.preset_of(latest)))
    if recipe.model.preset:
        return load_tokenizer(recipe.model.preset)
    return load_or_train_tokenizer(source, recipe=recipe, run_dir=run_dir, log=log)


def starting_task(recipe: Recipe, *, source, run_dir: Path, log: MetricsLog,
                  topology: distributed.Topology | None = None):
    """The task to train and its step: newest checkpoint (`resume_point`), preset, or
    fresh."""
    from mlm.preset_loading import load_masked_lm

    # Also before loading a checkpoint: its layers are built with initial values
    # before the saved ones are loaded, and in a multi-process run every process
    # must build identical values (JAX checks it).
    keras.utils.set_random_seed(recipe.train.seed)
    if recipe.train.deterministic:
        make_deterministic(recipe.train.seed)
    latest = resume_point(run_dir, topology=topology or distributed.Topology(), log=log)
    if latest is not None:
        task = load_masked_lm(str(checkpoints.preset_of(latest)))
        compile_task(task, recipe.train)
        step = checkpoints.restore_training_state(task, latest)
        log.say(f"resuming from {latest} (step {step})")
        return task, step
    if recipe.model.preset:
        task = preset_task(recipe, log=log)
    else:
        tokenizer = load_or_train_tokenizer(source, recipe=recipe, run_dir=run_dir, log=log)
        task = build_task(recipe.model, arch=get_architecture(recipe.model.architecture),
                          tokenizer=tokenizer,
                          masking=resolve_masking(recipe.masking, evaluation=True))
    compile_task(task, recipe.train)
    log.say(f"model: {type(task).__name__}, {task.count_params():,} parameters")
    return task, 0


def resume_point(run_dir: Path, *, topology: distributed.Topology, log: MetricsLog):
    """The checkpoint to resume from: the newest that verifies, or None.

    Processes that keep run directories of their own (hosts that share no
    filesystem) may hold different newest checkpoints: one stopped while
    another was saving. Then every process resumes from the newest step that
    all of them hold, and those ahead delete their newer checkpoints (a
    resumed run is exact: it writes them again, the same). Where some process
    holds no checkpoint, or not that step, `distributed.check_agreement` stops
    the run with what to copy.
    """
    latest = checkpoints.latest_checkpoint(run_dir, report=log.say)
    if topology.process_count == 1:
        return latest
    found = checkpoints.list_checkpoints(run_dir)
    mine = next((step for step, path in found.items() if path == latest), 0)
    steps = distributed.each(topology, mine)
    common = min(steps)
    held = common > 0 and common in found and (
        common == mine or checkpoints.verify_checkpoint(found[common]) is None)
    if common == max(steps) or distributed.total(topology, held)[0] < topology.process_count:
        return latest
    log.say(f"the processes' newest checkpoints differ (steps {', '.join(map(str, steps))}): "
            f"every process resumes from step {common}, the newest all of them hold, and "
            f"those ahead delete their newer ones")
    if topology.writes_checkpoints:  # a reader of process 0's directory leaves it to 0
        for step, path in found.items():
            if step > common:
                atomic.remove_dir(path)
    return found[common]


def preset_task(recipe: Recipe, *, log: MetricsLog):
    """The preset's MaskedLM with its tokenizer, set to the run's length and masking."""
    from mlm.preset_loading import load_masked_lm, preset_has_masked_lm_head

    task = load_masked_lm(recipe.model.preset)
    # The run's length (the plan checks it against the backbone's) and evaluation masking.
    task.preprocessor = build_preprocessor(
        architecture_of_backbone(task.backbone), tokenizer=task.preprocessor.tokenizer,
        sequence_length=recipe.model.sequence_length,
        masking=resolve_masking(recipe.masking, evaluation=True),
    )
    if preset_has_masked_lm_head(recipe.model.preset):
        log.say(f"continuing from {recipe.model.preset}: backbone and MaskedLM head kept")
    else:
        log.say(
            f"continuing from {recipe.model.preset}: it has no MaskedLM head, so a new "
            f"head was created (its dense layers start from random weights)"
        )
    return task


def load_or_train_tokenizer(source, *, recipe: Recipe, run_dir: Path, log: MetricsLog):
    """The run's tokenizer: learned (or copied from a prepared corpus) once into `run_dir/vocab`."""
    arch = get_architecture(recipe.model.architecture)
    vocab_dir = RunDir(run_dir).vocab
    if isinstance(source, prepared.PreparedCorpus):
        path, family, lowercase = source.copy_vocabulary(vocab_dir), source.family, source.lowercase
    else:
        path = tokenizing.learn_vocabulary(source, config=recipe.vocab, arch=arch,
                                           out_dir=vocab_dir, say=log.say, quiet=log.quiet)
        family, lowercase = recipe.vocab.family or arch.tokenizer_family, recipe.vocab.lowercase
    tokenizer = tokenizing.load_tokenizer(path, family=family, lowercase=lowercase, arch=arch)
    log.say(f"vocabulary: {tokenizer.vocabulary_size():,} entries in {path}")
    return tokenizer


def corpus_tokens(source, tokenizer, *, recipe: Recipe, run_dir: Path,
                  log: MetricsLog) -> token_cache.TokenCache:
    """The run's tokens: its corpus tokenized once, or its prepared corpus's, read in place.

    A prepared corpus's tokens are checked to come from `tokenizer` and to be
    the ones the run started with: its first session records them in
    `metrics.jsonl` (`PreparedCorpus.record`).
    """
    if not isinstance(source, prepared.PreparedCorpus):
        return tokenize_corpus(source, tokenizer, run_dir=run_dir, log=log,
                               segmenter=recipe.masking.segmenter)
    prepared.check_tokenizer(source, tokenizer, preset=recipe.model.preset)
    records = [r for r in log.read() if r.get("part") == "prepared"]
    prepared.check_unchanged(source, recorded=records[-1] if records else None)
    if not records:
        log.write(source.record())
    log.say(f"tokens read in place from prepared corpus {source.path}")
    return source.cache()


def tokenize_corpus(
    source, tokenizer, *, run_dir: Path, log: MetricsLog, segmenter: str = ""
) -> token_cache.TokenCache:
    """The token cache entry of `source`, built on first use in the machine cache.

    The entry lives in `mlm.machine_cache` (`tokens/<key>`), keyed by the
    corpus and the tokenizer: a run that fails keeps it, and every run of the
    same corpus and tokenizer on this machine reads it instead of tokenizing.
    The entry is recorded in `metrics.jsonl`, where the report and a resumed
    session find it (a run directory from before kept its entry in
    `run_dir/cache/`, read where it is). With a `segmenter` (`masking.segmenter`), every token's
    word label is stored too (`mlm.data.segmenter`).

    What the reader repaired or skipped on the way (see `corpus.iter_documents`)
    is reported on stderr and in `metrics.jsonl` when the cache is built.
    """
    key = token_cache.cache_key(source.fingerprint, tokenizer, segmenter=segmenter)
    recorded = [Path(r["path"]) for r in log.read() if r.get("part") == "tokens"]
    # Where this run read these tokens before (a resume), else the machine cache.
    found = [p for p in [*recorded[::-1], RunDir(run_dir).cache / key]
             if p.name == key and token_cache.load_cache(p)]
    root = found[0].parent if found else machine_cache.root() / machine_cache.TOKENS
    # Two runs on this machine that need the same entry build it once.
    with contextlib.nullcontext() if found else machine_cache.building(root / key):
        cache, tallies = tokenizing.tokenize(
            source, tokenizer, cache_root=root, key=key, segmenter=segmenter, say=log.say,
            quiet=log.quiet)
    for split, tally in tallies.items():
        if corpus.describe_tally(tally):
            log.write({"split": "corpus", "part": split, **tally})
    if cache.path not in recorded:
        log.write({"split": "corpus", "part": "tokens", "path": str(cache.path)})
    return cache


def describe_data(cache: token_cache.TokenCache, *, recipe: Recipe, log: MetricsLog) -> dict:
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
        "unknown_tokens": train_stats["unknown_tokens"],
        "held_out_documents": held_stats["documents"],
        "held_out_tokens": held_stats["tokens"],
        "padding_fraction": pad,
    }


def finish_run(run_dir: Path, *, recipe: Recipe, summary: dict, log: MetricsLog) -> Path:
    """Writes the final preset (with its model card) and the run report with its curves."""
    preset = RunDir(run_dir).preset
    atomic.copy_dir(checkpoints.preset_of(checkpoints.latest_checkpoint(run_dir, report=log.say)),
                    preset)
    write_model_card(preset, recipe=recipe.to_dict(), summary=summary)
    log.write({"split": "run", "event": "end", "step": summary["steps"]})
    log.say(f"preset written to {preset}; report in {write_report(run_dir, say=log.say)}")
    start, end = summary["held_out_start"], summary["held_out"]
    if end:
        before = f"{start['accuracy']:.4f} -> " if start else ""
        print(
            f"held-out masked accuracy {before}{end['accuracy']:.4f}, loss {end['loss']:.4f}, "
            f"perplexity {end['perplexity']:.2f} (preset: {preset})"
        )
    hint = short_run_hint(recipe, steps=summary["steps"], preset=preset,
                          tokens=summary.get("window_tokens"))
    if hint:
        log.say(hint)
    return preset


def short_run_hint(recipe: Recipe, *, steps: int, preset, tokens: int | None = None) -> str | None:
    """What to expect downstream from a fresh encoder trained on fewer tokens than the
    measured pay-off for its window length (`mlm.config.recipes.measured_payoff`); None
    for longer runs and presets. `tokens`: the window slots the run trained (its phases
    counted at their lengths and batches); default: `steps` of the recipe's windows."""
    from mlm.config.recipes import measured_payoff

    if recipe.model.preset:  # continued pretraining starts from trained weights
        return None
    length = recipe.model.sequence_length
    if tokens is None:
        tokens = steps * recipe.train.batch_size * length
    measured, payoff = measured_payoff(length)
    if tokens >= payoff:
        return None
    return (f"note: this encoder trained on {tokens / 1e6:.1f}M tokens (window slots); "
            f"on the sample corpus's tasks a fresh encoder of the default recipe beat random "
            f"initialisation downstream only after about {payoff / 1e6:.1f}M in windows of "
            f"{measured} tokens (benchmarks/RESULTS.md); check yours with: mlm compare "
            f"{preset} random:{preset} --train LABELLED.csv")
