"""Checking a recipe (and the distributed flags) before anything runs.

Every check raises `MlmError` naming the field and the value received. The
checks run in a fixed order, so that a recipe with several faults always
reports the same one first.
"""

from mlm.config.schema import (
    DOCUMENT_BOUNDARIES,
    MASKING_UNITS,
    PRECISIONS,
    SEGMENTERS,
    CorpusConfig,
    DistributedConfig,
    MaskingConfig,
    ModelConfig,
    Recipe,
    TrainConfig,
    VocabConfig,
    parse_duration,
)
from mlm.errors import MlmError

# A check: (section.field, the value shown, whether it holds, what was expected).
_Check = tuple[str, object, bool, str]


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
    _validate_train_choices(recipe.train)
    _validate_masking(recipe.masking)
    _validate_corpus(recipe.corpus)
    _validate_vocab(recipe.vocab)
    _validate_model(recipe.model)
    _validate_train(recipe.train)
    _validate_budget(recipe.train, recipe.masking)
    _validate_segmenter(recipe.masking)
    _validate_architecture(recipe)
    _validate_max_sequence_length(recipe.model, recipe.train)


def _raise_first_failure(checks: list[_Check]) -> None:
    """Raises `MlmError` for the first check that does not hold."""
    for field, value, ok, expected in checks:
        if not ok:
            raise MlmError(
                f"'{field}' must be {expected}, but received {field.split('.')[-1]}={value}."
            )


def _choices(values: tuple[str, ...]) -> str:
    return " or ".join(repr(v) for v in values)


def _within(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


def _validate_train_choices(t: TrainConfig) -> None:
    """`train.mixed_precision` and `train.jit_compile` are among their choices."""
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


def _validate_masking(m: MaskingConfig) -> None:
    """The masking rates, units, span lengths and segmenter are in range."""
    _raise_first_failure([
        ("masking.selection_rate", m.selection_rate, 0.0 < m.selection_rate <= 1.0, "in (0, 1]"),
        ("masking.final_selection_rate", m.final_selection_rate,
         0.0 <= m.final_selection_rate <= 1.0, "in [0, 1] (0: no schedule)"),
        ("masking.eval_selection_rate", m.eval_selection_rate,
         0.0 <= m.eval_selection_rate <= 1.0, "in [0, 1] (0: the training rate)"),
        ("masking.mask_token_rate", m.mask_token_rate, _within(m.mask_token_rate, (0.0, 1.0)),
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
    ])


def _validate_corpus(c: CorpusConfig) -> None:
    """The corpus fields are in range; a prepared corpus comes without paths to read."""
    _raise_first_failure([
        ("corpus.held_out_fraction", c.held_out_fraction, 0.0 <= c.held_out_fraction < 1.0,
         "in [0, 1)"),
        ("corpus.on_decode_error", repr(c.on_decode_error),
         c.on_decode_error in ("error", "replace"), "'error' or 'replace'"),
        ("corpus.document_boundary", repr(c.document_boundary),
         c.document_boundary in DOCUMENT_BOUNDARIES, _choices(DOCUMENT_BOUNDARIES)),
    ])
    if c.prepared and (c.paths or c.held_out_paths):
        given = "paths" if c.paths else "held_out_paths"
        raise MlmError(
            f"'corpus.prepared' trains from the prepared corpus {c.prepared}, but "
            f"corpus.{given} is set too: received {given}={list(c.paths or c.held_out_paths)}; "
            f"pass --data or --corpus/--held-out, not both."
        )


def _validate_vocab(v: VocabConfig) -> None:
    """The vocabulary size, minimum frequency and sample are in range."""
    _raise_first_failure([
        ("vocab.size", v.size, v.size >= 100, "at least 100"),
        ("vocab.min_frequency", v.min_frequency, v.min_frequency >= 1, "at least 1"),
        ("vocab.sample", v.sample, v.sample >= 0, "at least 0 (0: every document)"),
    ])


def _validate_model(model: ModelConfig) -> None:
    """The training window is long enough for [CLS], [SEP] and some text."""
    _raise_first_failure([
        ("model.sequence_length", model.sequence_length, model.sequence_length >= 8,
         "at least 8"),
    ])


def _validate_train(t: TrainConfig) -> None:
    """The batch, steps, optimizer settings and intervals are in range."""
    _raise_first_failure([
        ("train.batch_size", t.batch_size, t.batch_size >= 1, "at least 1"),
        ("train.steps", t.steps, t.steps >= 1, "at least 1"),
        ("train.accumulation_steps", t.accumulation_steps,
         t.accumulation_steps >= 1 and t.batch_size % t.accumulation_steps == 0,
         f"at least 1 and divide train.batch_size={t.batch_size}"),
        ("train.learning_rate", t.learning_rate, t.learning_rate > 0, "positive"),
        ("train.warmup_fraction", t.warmup_fraction, _within(t.warmup_fraction, (0.0, 1.0)),
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
    ])


def _validate_budget(t: TrainConfig, m: MaskingConfig) -> None:
    """A time budget parses and is not combined with step fractions (its phases are
    fractions of its time: `mlm.training.schedule.segments`)."""
    if t.budget:
        parse_duration(t.budget)
        if t.batch_warmup:
            raise MlmError(
                "train.batch_warmup is a fraction of train.steps, but "
                f"train.budget={t.budget!r} is set; remove one of them."
            )
        if m.final_selection_rate:
            raise MlmError(
                "masking.final_selection_rate schedules the rate over train.steps, but "
                f"train.budget={t.budget!r} is set; remove one of them.")


def _validate_segmenter(m: MaskingConfig) -> None:
    """A segmenter is only set for word or span masking, which use its words."""
    if m.segmenter and m.unit == "token":
        raise MlmError(
            "'masking.segmenter' segments words for word or span masking, but "
            "masking.unit='token'; set masking.unit=word (or span), or remove the segmenter."
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


def _validate_max_sequence_length(model: ModelConfig, t: TrainConfig) -> None:
    """The windows and phases fit the backbone's `max_sequence_length`, when it is set."""
    max_len = model.backbone.get("max_sequence_length")
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int)):
        raise MlmError(
            f"'model.backbone.max_sequence_length' must be an integer, but received "
            f"max_sequence_length={max_len!r}."
        )
    if max_len is not None and model.sequence_length > max_len:
        raise MlmError(
            f"'model.sequence_length' must be at most the backbone's "
            f"max_sequence_length={max_len}, but received "
            f"sequence_length={model.sequence_length}; lower it."
        )
    longest = max((p.get("sequence_length", 0) for p in t.phases), default=0)
    if max_len is not None and longest > max_len:
        raise MlmError(
            f"a phase of train.phases is longer than the backbone's max_sequence_length="
            f"{max_len}: sequence_length={longest}; shorten the phase or raise "
            f"model.backbone.max_sequence_length."
        )
