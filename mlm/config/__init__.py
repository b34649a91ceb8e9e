"""Frozen configuration: the recipe of a run, loaded from `presets/`.

A recipe is a JSON file with one object per section (`corpus`, `vocab`,
`model`, `masking`, `train`). Every field has a default here; a recipe sets
the ones that differ and the command line overrides any of them with
`--set section.field=value`. The resolved recipe is written into every run
directory, so a run can be reproduced or resumed from that file alone.
"""

import dataclasses
import importlib.resources
import json
import re
from pathlib import Path
from typing import Any

from mlm.errors import MlmError


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """Where the raw text comes from and how it is split."""

    # Files, directories or globs of `.txt`, `.txt.gz`, `.jsonl`, `.json`,
    # `.csv` or `.parquet`; or one hub dataset name. Empty means the sample
    # corpus shipped with the package.
    paths: tuple[str, ...] = ()
    # Column holding the text in `.jsonl`/`.json`/`.csv`/`.parquet` and hub data.
    text_column: str = "text"
    # Split of a hub dataset to read.
    hub_split: str = "train"
    # Separate held-out files; when empty, `held_out_fraction` of the
    # documents (chosen by a hash of their text) is held out instead.
    held_out_paths: tuple[str, ...] = ()
    # Fraction of documents held out for evaluation when no held-out files.
    held_out_fraction: float = 0.02
    # What to do with bytes that are not UTF-8: "error" (stop and name the
    # file and offset) or "replace" (each such byte becomes U+FFFD; the count
    # is reported in the run log).
    on_decode_error: str = "error"
    # What ends a document in `.txt`/`.txt.gz` files: "blank_line" (blank lines
    # separate documents, as in BERT's pretraining data), "line" (every line is
    # a document, HF's `line_by_line` without its padding: lines are still
    # packed into windows; dictionaries, dumps of JSON records, most web
    # corpora) or "file" (each file is one document). Other formats are one
    # document per record either way.
    document_boundary: str = "blank_line"


@dataclasses.dataclass(frozen=True)
class VocabConfig:
    """The vocabulary to learn (pretraining from scratch only)."""

    # Tokenizer family: "wordpiece", "sentencepiece" or "byte_bpe". Empty:
    # the family of `model.architecture` (its row in `mlm.architectures`).
    family: str = ""
    # Largest vocabulary to learn, special tokens included. A small corpus
    # may give fewer entries; the backbone is sized to what was learned.
    size: int = 30522
    # Lowercase (and case-fold) text before tokenizing: an "uncased" model.
    lowercase: bool = True
    # A subword must occur this often in the corpus to enter the vocabulary.
    min_frequency: int = 2
    # Sentencepiece only: spell characters left out of the vocabulary as
    # their UTF-8 bytes (256 pieces) instead of the unknown token. Off, as in
    # the reference ALBERT, DeBERTaV3, FNet and XLM-R models; turn it on for
    # text with many rare characters (several scripts, emoji, code).
    byte_fallback: bool = False


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The encoder to build."""

    # Start from this keras-hub preset (a built-in handle, kaggle:// or hf://
    # handle, a local keras-hub preset folder or a local HuggingFace checkpoint
    # folder) instead of a fresh backbone: continued pretraining. Its tokenizer
    # is kept (no vocabulary is learned) and `architecture`/`backbone` are
    # ignored. Empty: pretrain from scratch.
    preset: str = ""
    # Row of the architecture table in `mlm.architectures`.
    architecture: str = "bert"
    # Tokens per training window, [CLS] and [SEP] included.
    sequence_length: int = 128
    # Keyword arguments of the keras-hub backbone class, except
    # `vocabulary_size`, which comes from the learned vocabulary.
    backbone: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
    """BERT's dynamic masking (https://arxiv.org/abs/1810.04805, 3.1)."""

    # Fraction of the maskable tokens of each window selected for prediction.
    selection_rate: float = 0.15
    # Of the selected tokens: this fraction becomes [MASK] ...
    mask_token_rate: float = 0.8
    # ... this fraction a random non-special token, the rest stay unchanged.
    random_token_rate: float = 0.1
    # Selection rate of the held-out evaluations; 0 means `selection_rate`.
    # Recipes that train at a higher rate (ModernBERT and MosaicBERT train at
    # 30% and evaluate at 15%) keep held-out numbers comparable across runs.
    eval_selection_rate: float = 0.0
    # What is selected: "token" (single subword tokens, BERT's original
    # recipe), "word" (whole words: every piece of a chosen word, Google BERT's
    # `do_whole_word_mask`) or "span" (runs of whole words with geometric
    # lengths, SpanBERT). Words come from the tokenizer family's marks:
    # WordPiece "##" continuations, SentencePiece "▁" and byte-level BPE "Ġ"
    # word starts.
    unit: str = "token"
    # Span masking: P(span of l words) is proportional to span_p * (1 - span_p)^(l-1),
    # l = 1..max_span (SpanBERT: 0.2 and 10).
    span_p: float = 0.2
    max_span: int = 10
    # Word segmentation of text without spaces before word and span masking:
    # "" (none) or "jieba" (Chinese; pip install "mlm[chinese]"): the words it
    # finds are masked whole, the Chinese-BERT-wwm recipe.
    segmenter: str = ""
    # The unit of held-out evaluations: "token" by default, so that runs trained
    # with different units (and, with `eval_selection_rate`, rates) are scored on
    # the same task.
    eval_unit: str = "token"

    def for_evaluation(self) -> "MaskingConfig":
        """The masking of held-out evaluations: `eval_selection_rate` and `eval_unit`."""
        return dataclasses.replace(
            self, selection_rate=self.eval_selection_rate or self.selection_rate,
            unit=self.eval_unit,
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, evaluation and checkpointing."""

    # Windows per optimizer step.
    batch_size: int = 32
    # Phases of training, in order: a list of {"fraction": F, "sequence_length":
    # L, "batch_size": B} (L and B default to model.sequence_length and
    # train.batch_size), the fractions summing to 1. BERT's recipe trains 90%
    # of the steps at 128 tokens and 10% at 512:
    # [{"fraction": 0.9, "sequence_length": 128}, {"fraction": 0.1, "sequence_length": 512}].
    # One learning-rate schedule spans them; held-out evaluations stay at
    # model.sequence_length. Empty: one phase.
    phases: tuple = ()
    # Fraction of the steps over which the batch grows to full size, in three
    # stages of 1/4, 1/2 and 3/4 of it (ModernBERT and cramming ramp the batch).
    batch_warmup: float = 0.0
    # Cut each step's batch into this many equal parts, run one after the other
    # and summed into one update (gradient accumulation): the batch_size's
    # update at the memory of batch_size / accumulation_steps windows.
    accumulation_steps: int = 1
    # Optimizer steps in the whole run.
    steps: int = 1000
    # Train to a wall-clock budget instead of `steps` ("20m", "2h", "1h30m",
    # "90s"; empty: step-bounded): the run ends at the first device call that
    # brings its training time to the budget, and warmup and decay are
    # fractions of the budget (cramming's recipe). Evaluation, checkpoint and
    # compilation time does not count; a resumed run trains for the rest.
    # TensorFlow backend only.
    budget: str = ""
    # Peak learning rate, reached after warmup and then decayed linearly to 0.
    learning_rate: float = 5e-4
    # Fraction of `steps` spent in linear warmup from 0 to the peak learning
    # rate (a fraction, so that changing `steps` keeps the schedule's shape).
    warmup_fraction: float = 0.1
    # AdamW decoupled weight decay; not applied to biases and LayerNorm.
    weight_decay: float = 0.01
    # Clip the global gradient norm to this value (0 disables clipping).
    clip_norm: float = 1.0
    # Adam's moment decay rates and epsilon.
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-6
    # Seeds weights, window order and masks.
    seed: int = 0
    # Print training metrics every this many steps.
    log_every: int = 50
    # Evaluate on the held-out windows every this many steps (and at the end).
    eval_every: int = 500
    # Held-out batches per evaluation (0: all held-out windows).
    eval_batches: int = 50
    # Write a checkpoint every this many steps (and at the end).
    checkpoint_every: int = 500
    # Number of most recent checkpoints to keep.
    keep_checkpoints: int = 3
    # At most this many steps per device call (keras `steps_per_execution`): the
    # host reads metrics only between calls. The stride used is the largest
    # divisor of the gcd of the log, evaluation and checkpoint intervals not
    # above it (see `mlm.training.loop.steps_per_execution`); a stop request waits for
    # the current call.
    steps_per_execution: int = 16
    # Compile the train step with XLA: true, false, or "auto": timed at the start
    # of the run against the alternative (see `train.mixed_precision`). Always
    # on with the JAX backend, which has no graph mode without XLA.
    jit_compile: bool | str = "auto"
    # Seed every random generator from `seed` and make TensorFlow ops
    # deterministic, so that a run killed at any point and resumed ends with
    # exactly the weights of an uninterrupted run (slower on some GPU ops).
    deterministic: bool = False
    # Compute precision: "float32"; "mixed_bfloat16" (bfloat16 compute, float32
    # weights and optimizer state); "mixed_float16" (float16 compute with loss
    # scaling, for GPUs without bf16); or "auto": on a CPU, a few steps of
    # fp32 and bf16, with and without XLA (where `jit_compile` is "auto" too),
    # are timed on the run's own model and batch and the fastest kept, since
    # the best setting depends on the model's size even on one CPU (see
    # `mlm.training.precision`); on a GPU or TPU, bf16 where native, else fp16. The
    # choice is recorded in `run_dir/step_settings.json`. Presets are saved
    # in float32 whatever the precision.
    mixed_precision: str = "auto"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A complete, resolved run configuration."""

    name: str = "custom"
    corpus: CorpusConfig = CorpusConfig()
    vocab: VocabConfig = VocabConfig()
    model: ModelConfig = ModelConfig()
    masking: MaskingConfig = MaskingConfig()
    train: TrainConfig = TrainConfig()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Values of `corpus.document_boundary`.
DOCUMENT_BOUNDARIES = ("blank_line", "line", "file")
# Values of `masking.unit` and `masking.segmenter`.
MASKING_UNITS = ("token", "word", "span")
SEGMENTERS = ("", "jieba")
# Values of `train.mixed_precision`.
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a multi-process JAX run (not part of a recipe).

    Fields left as None are detected by `jax.distributed.initialize` from the
    cluster launcher's environment (Slurm, Open MPI, Cloud TPU VMs).
    """

    # HOST:PORT of the coordinator service that process 0 starts.
    coordinator: str | None = None
    # Processes in the run, usually one per host.
    num_processes: int | None = None
    # This process's index, 0 to num_processes - 1; 0 writes the run directory.
    process_id: int | None = None
    # Seconds to wait for every process to join before failing.
    init_timeout: int = 300
    # Seconds without a heartbeat after which a process is declared dead and
    # the others stop (JAX's default is 100).
    heartbeat_timeout: int = 100


SECTIONS = {
    "corpus": CorpusConfig,
    "vocab": VocabConfig,
    "model": ModelConfig,
    "masking": MaskingConfig,
    "train": TrainConfig,
}


def describe_fields() -> list[tuple[str, Any, str]]:
    """`(section.field, default, description)` of every recipe field, from this module's
    comments (the description is the comment's first sentence)."""
    import inspect

    rows = []
    for section, cls in SECTIONS.items():
        comment: list[str] = []
        defaults = cls()
        for line in inspect.getsource(cls).splitlines():
            stripped = line.strip()
            if stripped.startswith("#"):
                comment.append(stripped.lstrip("# ").strip())
                continue
            name = stripped.split(":", 1)[0]
            if ":" in stripped and name.isidentifier() and hasattr(defaults, name) and (
                    line.startswith("    ") and not line.startswith("     ")):
                text = " ".join(comment)
                sentence = text.split(". ")[0].rstrip(".")
                rows.append((f"{section}.{name}", getattr(defaults, name), sentence))
            comment = []
    return rows


def available_recipes() -> list[str]:
    """Names of the recipes shipped in `presets/`."""
    folder = importlib.resources.files("mlm.presets")
    return sorted(
        p.name[: -len(".json")] for p in folder.iterdir()
        if p.name.endswith(".json") and p.name != "finetune.json"  # `mlm finetune`'s recipe
    )


def read_recipe_json(name_or_path: str, *, choices: str) -> tuple[Any, str]:
    """The parsed JSON of `presets/NAME.json` or of a JSON file path, and the recipe's name.

    `choices` names the shipped recipes in the message for a missing one.
    """
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise MlmError(
                f"recipe file not found: {name_or_path}; pass an existing "
                f"JSON file or one of: {choices}."
            )
        text, name = path.read_text(), path.stem
    else:
        resource = importlib.resources.files("mlm.presets") / f"{name_or_path}.json"
        if not resource.is_file():
            raise MlmError(
                f"unknown recipe '{name_or_path}'; choose one of: "
                f"{choices}, or pass a JSON file path."
            )
        text, name = resource.read_text(), name_or_path
    try:
        return json.loads(text), name
    except json.JSONDecodeError as e:
        raise MlmError(f"recipe {name_or_path} is not valid JSON ({e}); fix the file.") from None


def override_value(raw: str) -> Any:
    """An override's value: parsed as JSON when it parses (`3`, `true`, `["a"]`), else text."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def load_recipe(name_or_path: str) -> Recipe:
    """Loads a recipe by name (from `presets/`) or from a JSON file path."""
    data, name = read_recipe_json(name_or_path, choices=", ".join(available_recipes()))
    if isinstance(data, dict):
        data.setdefault("name", name)
    return recipe_from_dict(data)


def recipe_from_dict(data: dict) -> Recipe:
    """Builds and validates a `Recipe` from nested dictionaries."""
    if not isinstance(data, dict):
        raise MlmError(
            f"a recipe must be a JSON object, but received {type(data).__name__}."
        )
    unknown = set(data) - set(SECTIONS) - {"name"}
    if unknown:
        raise MlmError(
            f"unknown recipe section(s) {sorted(unknown)}; "
            f"known sections: {', '.join(SECTIONS)}."
        )
    sections = {
        key: _section_from_dict(key, cls, data.get(key, {}))
        for key, cls in SECTIONS.items()
    }
    recipe = Recipe(name=str(data.get("name", "custom")), **sections)
    validate(recipe)
    return recipe


def _section_from_dict(section: str, cls: type, values: dict) -> Any:
    if not isinstance(values, dict):
        raise MlmError(
            f"recipe section '{section}' must be an object, but received {values!r}."
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise MlmError(
                f"unknown field '{section}.{key}'; fields of '{section}': "
                f"{', '.join(fields)}."
            )
    kwargs = {}
    for key, value in values.items():
        default = getattr(cls(), key)
        kwargs[key] = coerce_field(f"{section}.{key}", value, default)
    return cls(**kwargs)


def coerce_field(field: str, value: Any, default: Any) -> Any:
    """Checks `value` against the type of the field's default."""
    if field == "train.phases":
        return _phases(value)
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise MlmError(f"'{field}' must be a list, but received {value!r}.")
        return tuple(str(v) for v in value)
    if default == "auto" and isinstance(value, bool):
        return value  # fields of a choice "auto" or true/false (`train.jit_compile`)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise MlmError(f"'{field}' must be true or false, but received {value!r}.")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise MlmError(f"'{field}' must be an integer, but received {value!r}.")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MlmError(f"'{field}' must be a number, but received {value!r}.")
        return float(value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise MlmError(f"'{field}' must be an object, but received {value!r}.")
        return dict(value)
    if not isinstance(value, str):
        raise MlmError(f"'{field}' must be a string, but received {value!r}.")
    return value


def apply_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """Returns `recipe` with `section.field=value` overrides applied.

    Values are parsed as JSON when they parse (`3`, `0.1`, `true`,
    `["a.txt"]`), else taken as strings. `model.backbone.KEY=VALUE` sets one
    backbone argument.
    """
    data = recipe.to_dict()
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2 or parts[0] not in SECTIONS:
            raise MlmError(
                f"cannot parse override '{item}'; write section.field=value, "
                f"e.g. train.steps=100, with a section among {', '.join(SECTIONS)}."
            )
        value = override_value(raw)
        target = data
        for part in parts[:-1]:
            if not isinstance(target.get(part), dict):
                raise MlmError(f"unknown field '{key}' in override '{item}'.")
            target = target[part]
        if parts[-1] not in target and not (len(parts) == 3 and parts[1] == "backbone"):
            raise MlmError(
                f"unknown field '{key}' in override '{item}'; fields of "
                f"'{parts[0]}': {', '.join(data[parts[0]])}."
            )
        target[parts[-1]] = value
    return recipe_from_dict(data)


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as `20m`, `2h`, `1h30m`, `90s` or `1.5h`.

    Raises:
        MlmError: the text is not such a duration, or is zero.
    """
    match = _DURATION.fullmatch(str(text).strip().lower())
    if not text or match is None or not any(match.groups()):
        raise MlmError(
            f"'train.budget' must be a duration such as 20m, 2h, 1h30m or 90s, but "
            f"received budget={text!r}."
        )
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise MlmError(f"'train.budget' must be more than zero, but received budget={text!r}.")
    return total


_PHASE_KEYS = ("fraction", "sequence_length", "batch_size")


def _phases(value: Any) -> tuple[dict, ...]:
    """`train.phases` checked: a list of objects with a fraction, the fractions summing to 1."""
    example = ('[{"fraction": 0.9, "sequence_length": 128}, '
               '{"fraction": 0.1, "sequence_length": 512}]')
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, dict) for p in value):
        raise MlmError(f"'train.phases' must be a list of objects such as {example}, but "
                       f"received {value!r}.")
    phases = []
    for i, phase in enumerate(value):
        unknown = sorted(set(phase) - set(_PHASE_KEYS))
        if unknown:
            raise MlmError(f"unknown field(s) {unknown} in train.phases[{i}]; a phase has "
                           f"{', '.join(_PHASE_KEYS)}.")
        fraction = phase.get("fraction")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
                0 < fraction <= 1):
            raise MlmError(f"train.phases[{i}].fraction must be a number in (0, 1], but "
                           f"received fraction={fraction!r}.")
        for key, least in (("sequence_length", 8), ("batch_size", 1)):
            v = phase.get(key, least)
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise MlmError(f"train.phases[{i}].{key} must be an integer of at least "
                               f"{least}, but received {key}={v!r}.")
        phases.append({k: (float(v) if k == "fraction" else v) for k, v in phase.items()})
    total = sum(p["fraction"] for p in phases)
    if phases and abs(total - 1.0) > 1e-6:
        shown = " + ".join(f"{p['fraction']:g}" for p in phases)
        raise MlmError(f"the fractions of train.phases must sum to 1, but received "
                       f"{shown} = {total:g}.")
    return tuple(phases)


def _choices(values: tuple[str, ...]) -> str:
    return " or ".join(repr(v) for v in values)


def _within(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


def validate_distributed(cluster: DistributedConfig) -> None:
    """Raises `MlmError` for out-of-range values, named by their command-line flags."""
    checks = (("--num-processes", cluster.num_processes, 1),
              ("--process-id", cluster.process_id, 0),
              ("--init-timeout", cluster.init_timeout, 1),
              ("--heartbeat-timeout", cluster.heartbeat_timeout, 1))
    for flag, value, least in checks:
        if value is not None and value < least:
            raise MlmError(f"{flag} must be at least {least}, but received {value}.")
    count, index = cluster.num_processes, cluster.process_id
    if None not in (count, index) and index >= count:
        raise MlmError(
            f"--process-id must be below --num-processes ({count}), but received "
            f"{index}; number the processes 0 to {count - 1}."
        )


def validate(recipe: Recipe) -> None:
    """Raises `MlmError` for out-of-range values."""
    m, t, c, v = recipe.masking, recipe.train, recipe.corpus, recipe.vocab
    unit = (0.0, 1.0)
    checks = [
        ("masking.selection_rate", m.selection_rate, 0.0 < m.selection_rate <= 1.0, "in (0, 1]"),
        ("masking.eval_selection_rate", m.eval_selection_rate,
         0.0 <= m.eval_selection_rate <= 1.0, "in [0, 1] (0: the training rate)"),
        ("masking.mask_token_rate", m.mask_token_rate, _within(m.mask_token_rate, unit),
         "in [0, 1]"),
        ("masking.random_token_rate", m.random_token_rate,
         _within(m.random_token_rate, (0.0, 1.0 - m.mask_token_rate + 1e-9)),
         "in [0, 1 - masking.mask_token_rate]"),
        ("masking.unit", repr(m.unit), m.unit in MASKING_UNITS, _choices(MASKING_UNITS)),
        ("masking.eval_unit", repr(m.eval_unit), m.eval_unit in MASKING_UNITS,
         _choices(MASKING_UNITS)),
        ("masking.span_p", m.span_p, 0.0 < m.span_p <= 1.0, "in (0, 1]"),
        ("masking.max_span", m.max_span, m.max_span >= 1, "at least 1"),
        ("masking.segmenter", repr(m.segmenter), m.segmenter in SEGMENTERS,
         "'' (none) or 'jieba'"),
        ("corpus.held_out_fraction", c.held_out_fraction, 0.0 <= c.held_out_fraction < 1.0,
         "in [0, 1)"),
        ("corpus.on_decode_error", repr(c.on_decode_error),
         c.on_decode_error in ("error", "replace"), "'error' or 'replace'"),
        ("corpus.document_boundary", repr(c.document_boundary),
         c.document_boundary in DOCUMENT_BOUNDARIES, _choices(DOCUMENT_BOUNDARIES)),
        ("vocab.size", v.size, v.size >= 100, "at least 100"),
        ("vocab.min_frequency", v.min_frequency, v.min_frequency >= 1, "at least 1"),
        ("model.sequence_length", recipe.model.sequence_length,
         recipe.model.sequence_length >= 8, "at least 8"),
        ("train.batch_size", t.batch_size, t.batch_size >= 1, "at least 1"),
        ("train.steps", t.steps, t.steps >= 1, "at least 1"),
        ("train.accumulation_steps", t.accumulation_steps,
         t.accumulation_steps >= 1 and t.batch_size % t.accumulation_steps == 0,
         f"at least 1 and divide train.batch_size={t.batch_size}"),
        ("train.learning_rate", t.learning_rate, t.learning_rate > 0, "positive"),
        ("train.warmup_fraction", t.warmup_fraction, _within(t.warmup_fraction, unit),
         "in [0, 1]"),
        ("train.batch_warmup", t.batch_warmup, 0.0 <= t.batch_warmup < 1.0, "in [0, 1)"),
        ("train.weight_decay", t.weight_decay, t.weight_decay >= 0, "at least 0"),
        ("train.clip_norm", t.clip_norm, t.clip_norm >= 0, "at least 0 (0 disables)"),
        ("train.log_every", t.log_every, t.log_every >= 1, "at least 1"),
        ("train.eval_every", t.eval_every, t.eval_every >= 1, "at least 1"),
        ("train.eval_batches", t.eval_batches, t.eval_batches >= 0, "at least 0"),
        ("train.checkpoint_every", t.checkpoint_every, t.checkpoint_every >= 1, "at least 1"),
        ("train.keep_checkpoints", t.keep_checkpoints, t.keep_checkpoints >= 1, "at least 1"),
        ("train.steps_per_execution", t.steps_per_execution, t.steps_per_execution >= 1,
         "at least 1"),
    ]
    if t.mixed_precision not in PRECISIONS:
        raise MlmError(
            f"'train.mixed_precision' must be one of {', '.join(PRECISIONS)}, but received "
            f"mixed_precision={t.mixed_precision!r}."
        )
    if t.jit_compile not in (True, False, "auto"):
        raise MlmError(
            f"'train.jit_compile' must be true, false or \"auto\", but received "
            f"jit_compile={t.jit_compile!r}."
        )
    for field, value, ok, expected in checks:
        if not ok:
            raise MlmError(
                f"'{field}' must be {expected}, but received {field.split('.')[-1]}={value}."
            )
    if t.budget:
        parse_duration(t.budget)
        if t.phases or t.batch_warmup:
            raise MlmError(
                "train.phases and train.batch_warmup are fractions of train.steps, but "
                f"train.budget={t.budget!r} is set; remove one of them."
            )
    if m.segmenter and m.unit == "token":
        raise MlmError(
            "'masking.segmenter' segments words for word or span masking, but "
            "masking.unit='token'; set masking.unit=word (or span), or remove the segmenter."
        )
    _validate_architecture(recipe)
    max_len = recipe.model.backbone.get("max_sequence_length")
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int)):
        raise MlmError(
            f"'model.backbone.max_sequence_length' must be an integer, but received "
            f"max_sequence_length={max_len!r}."
        )
    if max_len is not None and recipe.model.sequence_length > max_len:
        raise MlmError(
            f"'model.sequence_length' must be at most the backbone's "
            f"max_sequence_length={max_len}, but received "
            f"sequence_length={recipe.model.sequence_length}; lower it."
        )
    longest = max((p.get("sequence_length", 0) for p in t.phases), default=0)
    if max_len is not None and longest > max_len:
        raise MlmError(
            f"a phase of train.phases is longer than the backbone's max_sequence_length="
            f"{max_len}: sequence_length={longest}; shorten the phase or raise "
            f"model.backbone.max_sequence_length."
        )


def _validate_architecture(recipe: Recipe) -> None:
    """The architecture exists and the vocabulary family is the one its tokenizer loads."""
    # `mlm.architectures` is a table of names with no heavy imports.
    from mlm.architectures import get_architecture

    if recipe.model.preset:
        return  # The preset brings its own architecture and tokenizer.
    arch = get_architecture(recipe.model.architecture)
    family = recipe.vocab.family
    if family and family != arch.tokenizer_family:
        raise MlmError(
            f"'vocab.family' must be '{arch.tokenizer_family}' for architecture "
            f"'{arch.name}' ({arch.tokenizer} loads it), but received family={family}; "
            f"remove vocab.family from the recipe or fix it."
        )
    if recipe.vocab.byte_fallback and arch.tokenizer_family != "sentencepiece":
        raise MlmError(
            f"'vocab.byte_fallback' needs a sentencepiece vocabulary, but architecture "
            f"'{arch.name}' uses {arch.tokenizer_family}; remove vocab.byte_fallback or choose "
            f"albert, deberta_v3, f_net or xlm_roberta."
        )
