"""`finetune()`: an encoder preset -> a fine-tuned keras-hub `TextClassifier` preset.

A fine-tuning run folder holds:
- `finetune.json`: the encoder, the data and the resolved recipe (`--resume` reads it);
- `label_map.json`: class id -> label name;
- `metrics.jsonl`: one line per epoch (training loss, validation metrics);
- `checkpoints/epoch-N/`: weights, optimizer and dropout-seed state and the best epoch so far,
  each written atomically; the newest and the best are kept;
- `preset/`: the best epoch's classifier, written by `save_to_preset` (so
  `keras_hub.models.TextClassifier.from_preset` loads it with keras-hub alone),
  with `labels.json` beside its files;
- `validation_predictions.jsonl`: the best epoch's prediction for each validation example;
- `report.md`, `confusion.png`, `summary.json`.
"""

import dataclasses
import json
import math
import re
import time
from pathlib import Path

import keras
import numpy as np

from mlm import atomic
from mlm.architectures import preprocessor_detached
from mlm.errors import MlmError
from mlm.finetuning import classifier as classifiers
from mlm.finetuning import data
from mlm.finetuning.classify import LABELS_FILE
from mlm.finetuning.config import (
    FinetuneConfig,
    apply_finetune_overrides,
    config_from_dict,
    load_finetune_config,
    resolved_epochs,
)
from mlm.finetuning.metrics import classification_metrics
from mlm.finetuning.report import write_finetune_report
from mlm.progress import Progress
from mlm.run import directory
from mlm.run.checkpoints import optimizer_left_out, seed_states
from mlm.run.directory import RunDir
from mlm.training.schedule import WarmupLinearDecay
from mlm.training.task import adamw

_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")


@dataclasses.dataclass(frozen=True)
class Splits:
    """Training and validation examples and the classes learned."""

    train: data.Examples
    validation: data.Examples
    # Class names; class id i is `names[i]`.
    names: tuple[str, ...]
    # Where the validation examples come from, for the report.
    validation_source: str


def load_splits(*, train=None, validation=None, task=None, config: FinetuneConfig) -> Splits:
    """Reads and checks the labelled data: files, or a hub task by name."""
    if task:
        from mlm.finetuning.hub_tasks import load_hub_task

        examples, held, names = load_hub_task(task)
        return Splits(train=examples, validation=held, names=names,
                      validation_source=f"hub task {task}, its validation split")
    if not train:
        raise MlmError("no training data; pass --train FILE or --task NAME (e.g. glue/sst2).")
    columns = dict(text_column=config.text_column, label_column=config.label_column,
                   text_pair_column=config.text_pair_column)
    examples = data.read_examples(train, **columns)
    names = data.label_names(examples)
    if validation:
        held = data.read_examples(validation, **columns)
        source = f"file {validation}"
    else:
        examples, held = data.stratified_split(
            examples, fraction=config.validation_fraction, seed=config.split_seed)
        source = f"{config.validation_fraction:.0%} of the training file, stratified"
    data.check_validation_labels(held, names=names)
    return Splits(train=examples, validation=held, names=names, validation_source=source)


def finetune(preset: str, *, train=None, validation=None, task: str | None = None,
             run_dir, config: FinetuneConfig | None = None, overrides=(),
             resume: bool = False, overwrite: bool = False, quiet: bool = False) -> dict:
    """Fine-tunes `preset` as a text classifier on labelled data; returns the run summary.

    Args:
        preset: an mlm preset folder, a keras-hub handle, a local keras-hub or
            HuggingFace folder; `random:PRESET` for its architecture and
            tokenizer with fresh weights.
        train: a `.csv`, `.jsonl` or `.parquet` file of labelled examples.
        validation: a file like `train`; None holds out a stratified
            `config.validation_fraction` of `train`.
        task: a hub task instead of files, e.g. `"glue/sst2"`.
        run_dir: the run folder to write.
        config: the recipe; default `presets/finetune.json`.
        overrides: `field=value` strings applied to the recipe.
        resume: continue the run in `run_dir` from its newest checkpoint.
        overwrite: replace an existing `run_dir`.
        quiet: print nothing but errors.

    Example:
    ```python
    summary = mlm.finetune("runs/demo/preset", train="labelled.csv", run_dir="runs/cls")
    summary["validation"]["accuracy"]
    ```
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise MlmError("--resume and --overwrite contradict each other; pass one of them.")
    if resume:
        run = _read_run(run_dir)
        preset, train, validation, task = (run["encoder"], run["train"], run["validation"],
                                           run["task"])
        config = config_from_dict(run["config"])
    else:
        config = apply_finetune_overrides(config or load_finetune_config(), overrides)
        _check_new_run_dir(run_dir, overwrite=overwrite)
    splits = load_splits(train=train, validation=validation, task=task, config=config)
    sources = {"train": _str(train), "validation": _str(validation), "task": task}
    return finetune_splits(preset, splits, run_dir=run_dir, config=config, sources=sources,
                           resume=resume, overwrite=overwrite, quiet=quiet)


def finetune_splits(preset: str, splits: Splits, *, run_dir: Path, config: FinetuneConfig,
                    sources: dict, resume: bool = False, overwrite: bool = False,
                    quiet: bool = False) -> dict:
    """`finetune` on examples already read and checked (`mlm.compare` reads them once)."""
    start = time.monotonic()
    say = (lambda message: None) if quiet else print
    encoder, fresh = classifiers.parse_encoder(preset)
    backbone, tokenizer = classifiers.load_encoder(encoder, fresh=fresh, seed=config.seed)
    length = classifiers.choose_sequence_length(
        tokenizer, splits.train.texts, splits.train.pairs, requested=config.sequence_length,
        maximum=classifiers.max_sequence_length(backbone), cap=config.length_cap)
    # The epochs a run takes are decided here, once, from the training set's size.
    config = dataclasses.replace(config, epochs=resolved_epochs(config,
                                                                examples=len(splits.train)))
    model = classifiers.build_classifier(
        backbone, tokenizer, num_classes=len(splits.names), sequence_length=length,
        dropout=config.dropout, seed=config.seed)
    if overwrite and run_dir.exists():
        atomic.remove_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with directory.removed_on_failure(run_dir, fresh=not resume,
                                      list_checkpoints=list_checkpoints):
        if not resume:
            atomic.write_json(run_dir / "finetune.json",
                              {"encoder": preset, **sources, "config": config.to_dict()})
        atomic.write_json(run_dir / "label_map.json", dict(enumerate(splits.names)))
        say(f"fine-tuning {preset}: {len(splits.train)} training and "
            f"{len(splits.validation)} validation examples, {len(splits.names)} classes, "
            f"sequence length {length}, {config.epochs} epochs of "
            f"{math.ceil(len(splits.train) / config.batch_size)} steps")
        history, best = fit_epochs(model, splits=splits, config=config, run_dir=run_dir,
                                   resume=resume, say=say, quiet=quiet)
        saved = save_best(model, run_dir=run_dir, epoch=best["epoch"], names=splits.names)
        write_predictions(model, splits.validation, names=splits.names,
                          path=run_dir / "validation_predictions.jsonl",
                          batch_size=config.batch_size)
        summary = {
            "encoder": preset, "preset": str(saved), "labels": list(splits.names),
            "train_examples": len(splits.train), "validation_examples": len(splits.validation),
            "validation_source": splits.validation_source, "sequence_length": length,
            "epochs": config.epochs, "best_epoch": best["epoch"],
            "validation": best["validation"], "seconds": time.monotonic() - start,
        }
        atomic.write_json(run_dir / "summary.json", summary)
        report = write_finetune_report(run_dir, summary=summary, names=splits.names,
                                       history=history)
    say(f"best epoch {best['epoch']}: validation accuracy "
        f"{best['validation']['accuracy']:.4f}, macro-F1 {best['validation']['macro_f1']:.4f} "
        f"(classifier preset: {saved}; report: {report})")
    return summary


def fit_epochs(model, *, splits: Splits, config: FinetuneConfig, run_dir: Path,
               resume: bool, say, quiet: bool) -> tuple[list[dict], dict]:
    """Trains epoch by epoch, validating and checkpointing after each; returns history, best."""
    x = classifiers.preprocess(model.preprocessor, splits.train.texts, splits.train.pairs)
    y = data.label_ids(splits.train, names=splits.names)
    val_x = classifiers.preprocess(model.preprocessor, splits.validation.texts,
                                   splits.validation.pairs)
    val_y = data.label_ids(splits.validation, names=splits.names)
    steps_per_epoch = math.ceil(len(y) / config.batch_size)
    compile_classifier(model, config, total_steps=steps_per_epoch * config.epochs)
    start, best, history = 0, None, []
    run = RunDir(run_dir)  # the one reader and writer of metrics.jsonl
    latest = latest_checkpoint(run_dir) if resume else None
    if latest is not None:
        start, best = restore_checkpoint(model, latest)
        say(f"resuming after epoch {start} from {latest}")
    # Epochs after the checkpoint resumed from are written again (all, without one).
    run.trim_metrics(step=start * steps_per_epoch)
    history = [r for r in run.read_metrics(say=say) if "epoch" in r]
    with preprocessor_detached(model):
        for epoch in range(start + 1, config.epochs + 1):
            began = time.monotonic()
            # The same order for every encoder fine-tuned with this seed.
            order = np.random.default_rng([config.seed, epoch]).permutation(len(y))
            bar = Progress(f"epoch {epoch}/{config.epochs}", total=steps_per_epoch,
                           unit="steps", enabled=not quiet)
            result = model.fit(classifiers.take(x, order), y[order],
                               batch_size=config.batch_size, epochs=1, shuffle=False,
                               verbose=0, callbacks=[_ProgressCallback(bar)])
            bar.finish()
            validation = classification_metrics(val_y, classifiers.predict_probabilities(
                model, val_x, batch_size=config.batch_size))
            record = {
                "epoch": epoch, "step": epoch * steps_per_epoch,
                "train_loss": float(result.history["loss"][-1]),
                "val_accuracy": validation["accuracy"], "val_macro_f1": validation["macro_f1"],
                "val_loss": validation["loss"], "seconds": time.monotonic() - began,
            }
            history.append(record)
            if best is None or validation["macro_f1"] > best["validation"]["macro_f1"]:
                best = {"epoch": epoch, "validation": validation}
            save_checkpoint(model, run_dir=run_dir, epoch=epoch, best=best)
            run.append_metrics(record)
            say(f"epoch {epoch}/{config.epochs}: train loss {record['train_loss']:.4f}, "
                f"validation accuracy {record['val_accuracy']:.4f}, macro-F1 "
                f"{record['val_macro_f1']:.4f}, loss {record['val_loss']:.4f}")
    return history, best


def compile_classifier(model, config: FinetuneConfig, *, total_steps: int) -> None:
    """AdamW with warmup then linear decay to 0 at `total_steps`, cross-entropy on logits."""
    # keras' AdamW defaults for the moments (epsilon 1e-7), as fine-tuning always had.
    optimizer = adamw(
        WarmupLinearDecay(
            config.learning_rate, round(config.warmup_fraction * total_steps), total_steps),
        weight_decay=config.weight_decay, clip_norm=config.clip_norm, epsilon=1e-7,
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=False,
    )


class _ProgressCallback(keras.callbacks.Callback):
    def __init__(self, bar: Progress):
        super().__init__()
        self.bar = bar

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(batch + 1)


# Checkpoints.


def checkpoint_dir(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"epoch-{epoch}"


def list_checkpoints(run_dir: Path) -> dict[int, Path]:
    """Complete checkpoints by epoch (`atomic.writing_dir` renames only finished ones)."""
    root = Path(run_dir) / "checkpoints"
    found = {}
    if root.is_dir():
        for child in root.iterdir():
            match = _EPOCH_DIR.match(child.name)
            if match and (child / "state.json").is_file():
                found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[max(found)] if found else None


def save_checkpoint(model, *, run_dir: Path, epoch: int, best: dict) -> None:
    """Writes weights, optimizer state and the best epoch; keeps this one and the best only."""
    with atomic.writing_dir(checkpoint_dir(run_dir, epoch)) as tmp:
        _save_arrays(tmp / "weights.npz", model.get_weights())
        _save_arrays(tmp / "optimizer.npz", [v.numpy() for v in model.optimizer.variables])
        _save_arrays(tmp / "random.npz", [v.numpy() for v in seed_states(model)])
        (tmp / "state.json").write_text(json.dumps({"epoch": epoch, "best": best}))
    for old, path in list_checkpoints(run_dir).items():
        if old not in (epoch, best["epoch"]):
            atomic.remove_dir(path)


def restore_checkpoint(model, path: Path) -> tuple[int, dict]:
    """Loads a checkpoint into a compiled model; returns its epoch and the best so far."""
    state = json.loads((path / "state.json").read_text())
    model.set_weights(_load_arrays(path / "weights.npz"))
    model.optimizer.build(model.trainable_variables)
    for variable, value in zip(model.optimizer.variables, _load_arrays(path / "optimizer.npz"),
                               strict=True):
        variable.assign(value)
    for variable, value in zip(seed_states(model), _load_arrays(path / "random.npz"),
                               strict=True):
        variable.assign(value)
    return state["epoch"], state["best"]


def save_best(model, *, run_dir: Path, epoch: int, names: tuple[str, ...]) -> Path:
    """Writes the classifier of the best epoch to `run_dir/preset` with its labels."""
    model.set_weights(_load_arrays(checkpoint_dir(run_dir, epoch) / "weights.npz"))
    preset = Path(run_dir) / "preset"
    with optimizer_left_out(model), atomic.writing_dir(preset) as tmp:
        model.save_to_preset(str(tmp))
        (tmp / LABELS_FILE).write_text(json.dumps(list(names), indent=2) + "\n")
    return preset


def write_predictions(model, examples: data.Examples, *, names: tuple[str, ...], path: Path,
                      batch_size: int) -> None:
    """One line per example: text, label, predicted label and every class probability."""
    features = classifiers.preprocess(model.preprocessor, examples.texts, examples.pairs)
    probabilities = classifiers.predict_probabilities(model, features, batch_size=batch_size)
    lines = []
    for i, row in enumerate(probabilities):
        record = {"text": examples.texts[i], "label": examples.labels[i],
                  "predicted": names[int(row.argmax())], "probabilities": row.tolist()}
        if examples.pairs is not None:
            record["pair"] = examples.pairs[i]
        lines.append(json.dumps(record) + "\n")
    atomic.write_text(path, "".join(lines))


def _save_arrays(path: Path, arrays: list) -> None:
    np.savez(path, **{f"{i:05d}": np.asarray(a) for i, a in enumerate(arrays)})


def _load_arrays(path: Path) -> list[np.ndarray]:
    with np.load(path) as stored:
        return [stored[key] for key in sorted(stored.files)]


# The run folder.


def _check_new_run_dir(run_dir: Path, *, overwrite: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise MlmError(f"--run-dir {run_dir} is a file; pass a folder.")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
        raise MlmError(
            f"run folder {run_dir} exists; pass --resume to continue it, --overwrite to "
            f"replace it, or another --run-dir."
        )


def _read_run(run_dir: Path) -> dict:
    path = run_dir / "finetune.json"
    if not path.is_file():
        raise MlmError(f"nothing to resume in {run_dir}: it has no finetune.json.")
    return json.loads(path.read_text())


def _str(path) -> str | None:
    return None if path is None else str(path)
