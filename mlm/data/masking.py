"""BERT's dynamic masking of one window, with the unit resolved once into a selector.

A recipe's `masking` section is resolved by `resolve_masking` into a `Masking`:
its rates, its mask slots per window and its selector, the function that picks
the positions to predict (`select_tokens`, or `select_words` for words and spans).
The pipeline and evaluation call the selector (`mlm.data.masking_ops`); nothing
after resolving tests the unit's name again. This module needs no TensorFlow.
"""

import dataclasses
from collections.abc import Callable

import numpy as np

from mlm.config import MaskingConfig


@dataclasses.dataclass(frozen=True)
class Masking:
    """One masking, resolved: what `mask_window` reads.

    Built by `resolve_masking` from a recipe's `MaskingConfig` (training or
    evaluation); never from strings elsewhere.
    """

    # Fraction of the maskable tokens of each window selected for prediction (at the
    # first step, with a schedule).
    selection_rate: float
    # Of the selected tokens: this fraction becomes [MASK], this a random token.
    mask_token_rate: float
    random_token_rate: float
    # The unit's name ("token", "word", "span"), for records and messages only.
    unit: str
    # `(token_ids, maskable, count, seed, *, masking, num_slots, ids, word_labels)` ->
    # `(M,)` positions, ascending, unused slots at L (`select_tokens`, `select_words`).
    select: Callable | None = dataclasses.field(default=None, compare=False, repr=False)
    # Whether the selector needs the tokenizer's word-start flags (`TokenIds.word_starts`).
    needs_word_starts: bool = False
    # Span masking: P(span of l words), l = 1..max_span (`span_length_law`); else ().
    span_law: tuple = ()
    # The rate at the last step of a scheduled run (`masking.final_selection_rate`);
    # 0: `selection_rate` throughout.
    final_selection_rate: float = 0.0

    @property
    def spans(self) -> bool:
        """Whether whole words are grouped into spans (`masking.unit="span"`)."""
        return len(self.span_law) > 0

    def slots(self, sequence_length: int) -> int:
        """Mask slots per window of `sequence_length` tokens: enough for the highest rate."""
        return max_selections(sequence_length,
                              max(self.selection_rate, self.final_selection_rate))

    def rates(self, steps: np.ndarray, *, total_steps: int) -> np.ndarray:
        """The selection rate of each of `steps` (0-based) in a run of `total_steps`:
        linear from `selection_rate` at step 0 to `final_selection_rate` at the last."""
        steps = np.asarray(steps, dtype=np.float64)
        if not self.final_selection_rate:
            return np.full(steps.shape, self.selection_rate, dtype=np.float32)
        progress = np.clip(steps / max(total_steps - 1, 1), 0.0, 1.0)
        rate = self.selection_rate + (self.final_selection_rate - self.selection_rate) * progress
        return rate.astype(np.float32)


def max_selections(sequence_length: int, selection_rate: float) -> int:
    """Mask slots per window: the count selected in a full window."""
    return max(1, round((sequence_length - 2) * selection_rate))


def span_length_law(masking) -> np.ndarray:
    """P(span of l words), l = 1..max_span: SpanBERT's geometric law, truncated."""
    lengths = np.arange(1, masking.max_span + 1)
    law = masking.span_p * (1 - masking.span_p) ** (lengths - 1)
    return law / law.sum()


def resolve_masking(config: MaskingConfig, *, evaluation: bool = False) -> Masking:
    """The training masking of `config`, or with `evaluation` its held-out masking
    (`eval_selection_rate` and `eval_unit`)."""
    from mlm.data.masking_ops import SELECTORS  # TensorFlow: imported when a run resolves

    if isinstance(config, Masking):
        return config
    if evaluation:
        config = config.for_evaluation()
    return Masking(
        selection_rate=config.selection_rate, mask_token_rate=config.mask_token_rate,
        random_token_rate=config.random_token_rate, unit=config.unit,
        select=SELECTORS[config.unit], needs_word_starts=config.unit != "token",
        span_law=tuple(span_length_law(config)) if config.unit == "span" else (),
        final_selection_rate=config.final_selection_rate,
    )
