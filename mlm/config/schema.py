"""The recipe of a run: its frozen dataclasses, one per section, with their defaults.

A recipe is a JSON file with one object per section (`corpus`, `vocab`,
`model`, `masking`, `train`). Every field has a default here; a recipe sets
the ones that differ and the command line overrides any of them with
`--set section.field=value`. The resolved recipe is written into every run
directory, so a run can be reproduced or resumed from that file alone.
Reading recipes is `mlm.config.recipes`' job, checking them
`mlm.config.validation`'s.
"""

import dataclasses
import re
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
    # A prepared corpus folder (`mlm prepare`; `--data` on the command line)
    # to train from instead of `paths`: its tokens are read in place, its
    # vocabulary is copied into the run, and no text is read, learned from or
    # tokenized. The other corpus fields and the vocab section are then the
    # ones its manifest records, and the recipe's are not used. Empty: read
    # `paths`.
    prepared: str = ""


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
    # Learn the vocabulary from at most this many training documents, drawn
    # at random, so that its memory and time stop growing with the corpus, as
    # SentencePiece's `input_sentence_size` bounds its own. 0: every document.
    # In plain `.txt` and `.jsonl` files the draw is of seeded byte offsets,
    # each taking the document after the next boundary: only the sampled
    # documents are read, no count or full pass (`mlm.data.corpus.offsets`).
    # Other files (compressed, tables, a hub dataset) draw document positions
    # after counting them, then stream the corpus. A corpus with too few
    # documents (about 1.5x the sample or fewer) learns from all of them, the
    # same vocabulary as 0. Tokenizing still reads every document. The default
    # was measured (benchmarks/RESULTS.md, "A bounded vocabulary sample"): on
    # 1 GB of generated text (1.1 M documents, 440k distinct words), 100,000
    # documents gave a WordPiece vocabulary that splits the corpus into 0.07%
    # more tokens than one learned from every document, in 20% less time for
    # the whole `mlm prepare`; every host repeats the vocabulary's work, so it
    # is what bounded several hosts' gain.
    sample: int = 100_000
    # Seeds that sample.
    sample_seed: int = 0


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
    # A decreasing (or increasing) selection rate: 0 keeps `selection_rate` for the
    # whole run; otherwise the rate moves linearly from `selection_rate` at the first
    # step to this at the last (mmBERT schedules 30% down to 5%; "Should You Mask
    # 15%?" argues for high rates early). A fraction of `train.steps`, so not with
    # `train.budget`. Every step costs what the higher rate costs: the mask slots per
    # window are fixed by it.
    final_selection_rate: float = 0.0
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
            unit=self.eval_unit, final_selection_rate=0.0,
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
    # model.sequence_length. With train.budget the fractions are of its time: a
    # phase ends at the first multiple of the greatest common divisor of the log,
    # eval and checkpoint intervals past its share. Empty: one phase.
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
    # Held-out batches per evaluation (0: all held-out windows). The windows
    # are a fixed sample, seeded by `seed`, spread over the whole held-out
    # split (not its first windows, which would favour the first files).
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
    # `mlm.training.step_settings`); on a GPU or TPU, bf16 where native, else fp16. The
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
