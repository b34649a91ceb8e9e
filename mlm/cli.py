"""The `mlm` command line: the only code that reads argv.

Every `MlmError` becomes one line on stderr and exit status 2. The commands
and their options are declared in `mlm.cli_parser`.
"""

import errno
import json
import os
import sys
from pathlib import Path

from mlm.cli_parser import build_parser
from mlm.errors import MlmError, RunStopped


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    # Before TensorFlow is imported: hide its C++ log lines (e.g. "failed call to
    # cuInit" on machines without a GPU), which are noise to a user.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        return COMMANDS[args.command](args) or 0
    except MlmError as e:
        print(f"mlm: error: {e}", file=sys.stderr)
        return _failed(2)
    except RunStopped as e:
        print(f"mlm: {e}", file=sys.stderr)
        return _failed(128 + e.signum)
    except OSError as e:
        # A full or read-only disk is the machine's state, not a bug: one line.
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"mlm: error: {e.strerror}{where}; free space or choose another folder.",
              file=sys.stderr)
        return _failed(2)
    except KeyboardInterrupt:
        print("mlm: interrupted", file=sys.stderr)
        return _failed(130)


def _failed(status: int) -> int:
    from mlm.training.distributed import exit_at_once

    exit_at_once(status)  # in a multi-process run only: see its docstring
    return status


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow with the C++ stderr (fd 2) silenced.

    TF 2.21 and XLA write absl lines ("All log messages before
    absl::InitializeLog() ...", "Could not find cuda drivers ...") while
    loading, before TF_CPP_MIN_LOG_LEVEL is read. Python exceptions still
    propagate; set MLM_TF_LOGS=1 to see those lines.
    """
    if os.environ.get("MLM_TF_LOGS"):
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import keras_hub  # noqa: F401
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _pretrain(args) -> int | None:
    recipe = _run_recipe(args)
    return _train(args, recipe)


def _continue(args) -> int | None:
    recipe = _run_recipe(args, preset=args.preset)
    return _train(args, recipe)


def _train(args, recipe) -> int | None:
    """`pretrain` on the chosen backend, joined to the other processes of the run if any.

    A multi-process run re-executes this command under `mlm.training.supervisor`,
    which turns JAX's abort on a lost peer into one line; returns its status.
    """
    from mlm.training import distributed, supervisor

    cluster = _cluster(args)
    backend = distributed.select_backend(args.backend or ("jax" if cluster else None))
    if cluster is not None:
        if backend != "jax":
            raise MlmError(
                f"multi-process training runs on the JAX backend, but received "
                f"backend={backend!r}; pass --backend jax."
            )
        native_log = os.environ.get(supervisor.CHILD_LOG)
        if native_log is None:
            return _supervised(args, cluster)
        supervisor.native_output_to(native_log)
        distributed.initialize(cluster)  # before keras is imported and JAX computes
    _import_tensorflow_quietly()
    topology = distributed.use_all_devices(backend)
    from mlm.pretraining import pretrain

    with distributed.peer_failures(topology):
        pretrain(recipe, run_dir=args.run_dir, resume=args.resume, overwrite=args.overwrite,
                 quiet=args.quiet, topology=topology)
    return None


def _supervised(args, cluster) -> int:
    """Runs this command again as the child of a supervising parent; its exit status."""
    import socket

    from mlm.run.directory import RunDir
    from mlm.training import supervisor

    process = cluster.process_id if cluster.process_id is not None else socket.gethostname()
    return supervisor.supervise([sys.executable, "-m", "mlm", *args.argv],
                                log=RunDir(args.run_dir).native_log(process))


def _cluster(args):
    """The `DistributedConfig` of the command line, or None for a single-process run."""
    from mlm.config import DistributedConfig, validate_distributed

    given = (args.coordinator, args.num_processes, args.process_id)
    if not args.distributed and all(v is None for v in given):
        return None
    cluster = DistributedConfig(
        coordinator=args.coordinator, num_processes=args.num_processes,
        process_id=args.process_id, init_timeout=args.init_timeout,
        heartbeat_timeout=args.heartbeat_timeout,
    )
    validate_distributed(cluster)
    return cluster


def _run_recipe(args, *, preset: str | None = None):
    """The recipe named on the command line (or the run's own, with --resume) + overrides."""
    from mlm import config
    from mlm.run.directory import load_run_recipe

    if args.resume and args.overwrite:
        raise MlmError("--resume and --overwrite contradict each other; pass one of them.")
    chosen = ()
    if args.resume:
        recipe = load_run_recipe(Path(args.run_dir))
    elif args.recipe is None and preset is None and args.budget is not None:
        row = config.recipe_for_budget(args.budget)
        recipe, chosen = config.load_recipe(row.recipe), row.overrides
        print(f"recipe for a budget of {args.budget}: {row.recipe}"
              + (f" with {' '.join(chosen)}" if chosen else "") + f" ({row.evidence}); "
              f"--recipe overrides", file=sys.stderr)
    else:
        recipe = config.load_recipe(args.recipe or "bert_tiny_en_uncased")
    overrides = [*chosen, *args.set]
    flags = (("steps", "train.steps"), ("budget", "train.budget"),
             ("batch_size", "train.batch_size"),
             ("learning_rate", "train.learning_rate"),
             ("sequence_length", "model.sequence_length"))
    for flag, field in flags:
        if getattr(args, flag) is not None:
            overrides.append(f"{field}={getattr(args, flag)}")
    if args.deterministic:
        overrides.append("train.deterministic=true")
    overrides += _corpus_overrides(args)
    if args.data is not None:
        # Absolute: the run reads the folder for its whole life (resumes, `mlm report`),
        # from whatever directory it is started in.
        overrides.append(f"corpus.prepared={json.dumps(str(Path(args.data).absolute()))}")
    if preset is not None and not args.resume:
        overrides.append(f"model.preset={json.dumps(preset)}")
    return config.apply_overrides(recipe, overrides)


def _prepare(args) -> None:
    from mlm import config

    overrides = list(args.set)
    overrides += _corpus_overrides(args)
    recipe = config.apply_overrides(config.load_recipe(args.recipe), overrides)
    _import_tensorflow_quietly()
    from mlm.preparing import describe, prepare

    manifest = prepare(recipe, out=Path(args.out), vocab_dir=args.vocab,
                       overwrite=args.overwrite, quiet=args.quiet, share=(args.host, args.hosts),
                       workers=args.workers)
    print(f"prepared corpus written to {args.out}: {describe(manifest)}; train from it with "
          f"--data {args.out}")


def _corpus_overrides(args) -> list[str]:
    """The recipe overrides of `--corpus` and `--held-out`."""
    overrides = []
    if args.corpus is not None:
        overrides.append(f"corpus.paths={json.dumps(args.corpus)}")
    if args.held_out is not None:
        overrides.append(f"corpus.held_out_paths={json.dumps(args.held_out)}")
    return overrides


def _evaluate(args) -> None:
    _import_tensorflow_quietly()
    from mlm.evaluate import evaluate_preset

    result = evaluate_preset(
        args.preset, paths=args.corpus, text_column=args.text_column,
        batch_size=args.batch_size, max_batches=args.max_batches, seed=args.seed,
        selection_rate=args.selection_rate,
    )
    print(
        f"masked accuracy {result['accuracy']:.4f}, masked loss {result['loss']:.4f}, "
        f"perplexity {result['perplexity']:.2f} ({result['windows']} windows)"
    )


def _predict(args) -> None:
    _import_tensorflow_quietly()
    from mlm.predict import fill_mask
    from mlm.preset_loading import load_masked_lm

    task = load_masked_lm(args.preset)
    text = " ".join(args.text)
    for i, candidates in enumerate(fill_mask(task, text, top_k=args.top_k), start=1):
        shown = ", ".join(f"{token} ({p:.3f})" for token, p in candidates)
        print(f"mask {i}: {shown}")


def _export(args) -> None:
    _import_tensorflow_quietly()
    if args.format == "transformers":
        from mlm.run.hf_export import export_transformers

        out = export_transformers(Path(args.run_dir), out=Path(args.out), step=args.step,
                                  overwrite=args.overwrite)
        print(f"transformers checkpoint written to {out}")
        return
    from mlm.run.export import export_checkpoint

    out = export_checkpoint(Path(args.run_dir), out=Path(args.out), step=args.step)
    print(f"preset written to {out}")


def _vocab(args) -> None:
    from mlm.architectures import get_architecture
    from mlm.config import CorpusConfig
    from mlm.data import corpus, vocab
    from mlm.progress import track

    arch = get_architecture(args.architecture)
    source = corpus.resolve_corpus(
        CorpusConfig(paths=tuple(args.corpus or ()), text_column=args.text_column,
                     held_out_fraction=0.0)
    )
    out = Path(args.out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise MlmError(f"--out {out} exists; pass a new or empty folder.")
    documents = track(corpus.iter_documents(source, split="train"), label="counting words",
                      total=corpus.count_documents(source, split="train", progress=True),
                      unit="documents")
    # train_vocabulary writes `out` whole or not at all (byte_bpe writes two files).
    vocab.train_vocabulary(
        documents, family=arch.tokenizer_family, size=args.size,
        lowercase=not args.cased, min_frequency=args.min_frequency, out_dir=out,
        special_tokens=arch.special_tokens, byte_fallback=args.byte_fallback,
    )
    files = ", ".join(p.name for p in vocab.vocabulary_files(out, family=arch.tokenizer_family))
    print(f"{arch.tokenizer_family} vocabulary for {arch.name} written to {out}: {files}")


def _report(args) -> None:
    _import_tensorflow_quietly()
    from mlm.run.report import write_report

    path = write_report(Path(args.run_dir), examples=args.examples,
                        say=lambda message: print(f"mlm: {message}", file=sys.stderr))
    print(f"report written to {path}")


def _recipes(args) -> None:
    from mlm.config import available_recipes, describe_fields

    if not args.fields:
        print("\n".join(available_recipes()))
        print("(mlm recipes --fields lists every field; set one with --set section.field=value)",
              file=sys.stderr)
        return
    for field, default, description in describe_fields():
        shown = json.dumps(default if not isinstance(default, tuple) else list(default))
        print(f"{field} = {shown}\n    {description}")


def _finetune_config(args):
    """The fine-tuning recipe named on the command line, with its overrides."""
    from mlm.finetuning.config import apply_finetune_overrides, load_finetune_config

    overrides = list(args.set)
    flags = ("text_column", "text_pair_column", "label_column", "epochs", "batch_size",
             "learning_rate", "sequence_length")
    for flag in flags:
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{flag}={json.dumps(value)}")
    return apply_finetune_overrides(load_finetune_config(args.recipe), overrides)


def _finetune(args) -> None:
    _import_tensorflow_quietly()
    from mlm.finetuning.train import finetune

    config = None if args.resume else _finetune_config(args)
    finetune(args.preset, train=args.train, validation=args.validation, task=args.task,
             run_dir=args.run_dir, config=config, resume=args.resume, overwrite=args.overwrite,
             quiet=args.quiet)


def _compare(args) -> None:
    _import_tensorflow_quietly()
    import tensorflow as tf

    # Each run builds a new classifier, whose predict function TensorFlow traces
    # again and then warns about retracing: noise between the runs' lines.
    tf.get_logger().setLevel("ERROR")
    from mlm.finetuning.compare import compare

    compare(args.presets, train=args.train, validation=args.validation, task=args.task,
            run_dir=args.run_dir, seeds=args.seeds, config=_finetune_config(args),
            overwrite=args.overwrite, quiet=args.quiet)
    print(f"table written to {Path(args.run_dir) / 'compare.md'}")


def _classify(args) -> None:
    _import_tensorflow_quietly()
    from mlm.finetuning.classify import classify

    for result in classify(args.preset, args.text, pairs=args.pair):
        print(f"{result['label']}\t{result['probability']:.4f}\t{result['text']}")


COMMANDS = {
    "pretrain": _pretrain,
    "continue": _continue,
    "prepare": _prepare,
    "evaluate": _evaluate,
    "predict": _predict,
    "export": _export,
    "vocab": _vocab,
    "report": _report,
    "recipes": _recipes,
    "finetune": _finetune,
    "compare": _compare,
    "classify": _classify,
}
