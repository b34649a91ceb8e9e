"""The masking ops: BERT's 80/10/10 masking of one window and its selectors, in TensorFlow.

`mlm.data.masking.resolve_masking` picks a selector from `SELECTORS` once per
run; `mask_window` calls it.
"""

from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from mlm.data import segmenter
from mlm.errors import MlmError

if TYPE_CHECKING:
    from mlm.data.masking import Masking


def window_seed(seed: int, salt: int, epoch, window):
    """Stateless RNG seed for one window: a pure function of its arguments."""
    base = tf.constant([seed, salt], dtype=tf.int64)
    base = tf.random.experimental.stateless_fold_in(base, tf.cast(epoch, tf.int64))
    return tf.random.experimental.stateless_fold_in(base, tf.cast(window, tf.int64))


def mask_window(token_ids, seed, *, masking: "Masking", ids, num_slots: int, word_labels=None,
                rate=None):
    """BERT's masking of one window with stateless randomness.

    keras-hub's `MaskedLMMaskGenerator` is not used here for two measured
    reasons: it draws from stateful RNG ops, so under a parallel `tf.data` map
    a window's mask depends on scheduling and cannot be recomputed on resume;
    and its random replacements are drawn from the whole vocabulary, special
    tokens included (tests/test_pipeline.py shows both). The selection rule
    follows google-research/bert `create_pretraining_data.py`: exactly
    `round(rate * maskable)` positions per window, uniformly at random
    (`masking.unit="token"`); whole words or spans of whole words with at most
    that many tokens for the other units (`select_whole_words`). The 80/10/10
    decision is per token either way, as in Google BERT.

    Args:
        token_ids: `(L,)` int32 window.
        seed: `(2,)` int64 stateless seed.
        masking: the resolved masking (`resolve_masking`): rates and selector.
        ids: special token ids (and word-start flags for word and span units).
        num_slots: M, the fixed number of mask slots per window.
        word_labels: `(L,)` uint8 segmenter labels (`mlm.data.segmenter`), or None.
        rate: scalar float32 selection rate of this window's step (a scheduled rate,
            `Masking.rates`), or None for `masking.selection_rate`.

    Returns:
        `(token_ids, mask_positions, mask_ids, mask_weights)` with shapes
        `(L,)`, `(M,)`, `(M,)`, `(M,)`; unused slots have weight 0.
    """
    length = tf.shape(token_ids)[0]
    maskable = _maskable(token_ids, ids)  # (L,)
    num_maskable = tf.reduce_sum(tf.cast(maskable, tf.float32))
    rate = masking.selection_rate if rate is None else rate
    count = tf.cast(tf.round(num_maskable * rate), tf.int32)
    count = tf.minimum(tf.maximum(count, tf.cast(num_maskable > 0, tf.int32)), num_slots)
    select_seed, action_seed, replace_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3)
    )
    positions = masking.select(token_ids, maskable, count, select_seed, masking=masking,
                               num_slots=num_slots, ids=ids, word_labels=word_labels)  # (M,)
    valid = positions < length
    positions = tf.where(valid, positions, 0)
    original = tf.gather(token_ids, positions)
    # 80% [MASK], 10% a random non-special token, 10% unchanged.
    action = tf.random.stateless_uniform([num_slots], seed=action_seed)
    replacement_pool = tf.constant(
        np.setdiff1d(np.arange(ids.vocabulary_size), ids.special_ids), dtype=token_ids.dtype
    )
    random_tokens = tf.gather(
        replacement_pool,
        tf.random.stateless_uniform(
            [num_slots], seed=replace_seed, maxval=tf.shape(replacement_pool)[0], dtype=tf.int32
        ),
    )
    new_values = tf.where(
        action < masking.mask_token_rate,
        tf.cast(ids.mask_id, token_ids.dtype),
        tf.where(
            action < masking.mask_token_rate + masking.random_token_rate,
            random_tokens,
            original,
        ),
    )
    masked = tf.tensor_scatter_nd_update(
        token_ids,
        tf.boolean_mask(positions, valid)[:, None],
        tf.boolean_mask(new_values, valid),
    )
    weights = tf.cast(valid, tf.float32)
    return masked, positions, tf.where(valid, original, 0), weights


def _maskable(token_ids, ids):
    """`(L,)` bool: the tokens that may be selected (not special, not padding)."""
    special = tf.constant(ids.special_ids, dtype=token_ids.dtype)
    return tf.reduce_all(token_ids[:, None] != special[None, :], axis=-1)


# Passes of the greedy fill in `select_whole_words`; a fifth changed the selected
# fraction by under 0.01 points on the sample corpus.
_FILL_PASSES = 4


def select_whole_words(token_ids, maskable, count, seed, *, masking, ids, word_labels=None):
    """Whole words (or spans of them) covering at most `count` tokens of a window.

    Words come from the tokenizer family's word-start flags (`ids.word_starts`);
    special tokens and padding are words of their own and never chosen, and a
    token after one begins a word. With `masking.unit="span"` the words are cut
    into consecutive spans whose lengths in words follow `span_length_law`
    (SpanBERT: geometric, p=`span_p`, at most `max_span` words; a span also
    ends at a special token). Units are then taken in a random order. Words as
    Google BERT's whole-word masking takes them: a word whose tokens would
    exceed the remaining budget is passed over and smaller ones after it still
    fill in. Spans in that order until the next would exceed the budget, which
    is then cut to the whole words that fit, as SpanBERT takes its spans: by
    Wald's identity the spans drawn, the cut one at its drawn length, follow
    the law. Either way the selected fraction stays near the target without
    ever selecting part of a word.

    Args:
        token_ids: `(L,)` int32 window.
        maskable: `(L,)` bool, the tokens that may be selected.
        count: int32 scalar, the token budget.
        seed: `(2,)` int64 stateless seed.
        word_labels: `(L,)` uint8 labels of a word segmenter, which override the
            family's marks where they are not `FAMILY` (text without spaces).

    Returns:
        `(selected, units, cut)`: `(L,)` bool, the chosen tokens; `(L,)` int32,
        the unit (word or span) index of every token; the index of the span cut
        short to fit the budget, or -1 (the last two for tests of the span law).
    """
    by_span = masking.spans  # a Python bool: the branches below are traced once
    if ids.word_starts is None:
        raise MlmError(
            f"masking.unit={masking.unit!r} needs the tokenizer's word boundaries, which "
            f"this pipeline was not given; use masking.unit=token."
        )
    length = tf.shape(token_ids)[0]
    word, word_ok = _words(token_ids, maskable, ids=ids, word_labels=word_labels)
    unit_of_word = _span_of_word(word_ok, seed, span_law=masking.span_law) if by_span \
        else tf.range(length)
    unit = tf.gather(unit_of_word, word)  # (L,) unit index of each token
    order, ok, sizes, taken, remaining = _take_units(unit, maskable, count, seed,
                                                     by_span=by_span)
    chosen = tf.scatter_nd(order[:, None], tf.cast(taken, tf.int32), [length]) > 0  # by unit
    selected = tf.gather(chosen, unit) & maskable
    cut = tf.constant(-1)
    if by_span:
        selected, cut = _cut_span(selected, unit, word, maskable, order=order,
                                  rest=ok & ~taken, remaining=remaining)
    return selected, unit, cut


def _words(token_ids, maskable, *, ids, word_labels):
    """`(L,)` word index of each token and `(L,)` whether word i has a maskable token."""
    length = tf.shape(token_ids)[0]
    table = tf.constant(ids.word_starts, dtype=tf.bool)
    after_unmaskable = tf.concat([[True], ~maskable[:-1]], axis=0)
    starts = tf.gather(table, token_ids)
    if word_labels is not None:
        starts = tf.where(word_labels == segmenter.START, True,
                          tf.where(word_labels == segmenter.CONTINUATION, False, starts))
    starts = starts | ~maskable | after_unmaskable  # (L,)
    word = tf.cumsum(tf.cast(starts, tf.int32)) - 1  # (L,) word index of each token
    # Words are never more than tokens: index them over L slots.
    word_ok = tf.math.unsorted_segment_max(tf.cast(maskable, tf.int32), word, length) > 0
    return word, word_ok


def _span_of_word(word_ok, seed, *, span_law):
    """`(L,)` span index of each word: consecutive words cut into spans whose lengths in
    words follow `span_law`, a span also ending at a special token."""
    length = tf.shape(word_ok)[0]
    span_seed = tf.random.experimental.stateless_fold_in(seed, 1)
    law = tf.constant(np.log(np.asarray(span_law))[None, :], dtype=tf.float32)
    spans = tf.random.stateless_categorical(law, length, seed=span_seed)[0] + 1  # (L,)
    first_words = tf.cumsum(tf.cast(spans, tf.int32), exclusive=True)  # (L,)
    span_start = tf.scatter_nd(tf.minimum(first_words, length)[:, None],
                               tf.ones_like(first_words), [length + 1])[:length] > 0
    # Spans never cross a special token: one starts at and after each.
    prev_ok = tf.concat([[False], word_ok[:-1]], axis=0)
    span_start = span_start | ~word_ok | ~prev_ok
    return tf.cumsum(tf.cast(span_start, tf.int32)) - 1


def _take_units(unit, maskable, count, seed, *, by_span: bool):
    """Units in a random order, taken while they fit the budget `count`.

    Returns `(order, ok, sizes, taken, remaining)`: the units in drawn order,
    whether each holds a maskable token, its tokens, whether it was taken, and
    the budget left.
    """
    length = tf.shape(unit)[0]
    unit_tokens = tf.math.unsorted_segment_sum(tf.ones_like(unit), unit, length)  # (U=L,)
    unit_ok = tf.math.unsorted_segment_max(tf.cast(maskable, tf.int32), unit, length) > 0
    scores = tf.random.stateless_uniform([length], seed=seed)
    order = tf.argsort(tf.where(unit_ok, scores, -1.0), direction="DESCENDING")
    sizes = tf.gather(unit_tokens, order)
    ok = tf.gather(unit_ok, order)
    taken = tf.zeros([length], tf.bool)
    remaining = count
    # Spans: one pass, so that the spans taken keep the law; words: greedy fill.
    for _ in range(1 if by_span else _FILL_PASSES):
        candidate = ok & ~taken
        if not by_span:
            candidate = candidate & (sizes <= remaining)
        cumulative = tf.cumsum(tf.where(candidate, sizes, 0))
        take = candidate & (cumulative <= remaining)
        taken = taken | take
        remaining = remaining - tf.reduce_sum(tf.where(take, sizes, 0))
    return order, ok, sizes, taken, remaining


def _cut_span(selected, unit, word, maskable, *, order, rest, remaining):
    """`selected` with the first span passed over cut to the whole words that fit the
    budget left, as SpanBERT cuts its last span (SpanBERT also cuts inside a word);
    and that span's index, or -1."""
    length = tf.shape(unit)[0]
    cut = tf.where(tf.reduce_any(rest) & (remaining > 0),
                   tf.gather(order, tf.argmax(tf.cast(rest, tf.int32))), -1)
    inside = (unit == cut) & maskable
    through = tf.cumsum(tf.cast(inside, tf.int32))  # the cut span's tokens so far
    word_end = tf.math.unsorted_segment_max(tf.where(inside, through, 0), word, length)
    fits = inside & (tf.gather(word_end, word) <= remaining)
    return selected | fits, tf.where(tf.reduce_any(fits), cut, -1)


def select_tokens(token_ids, maskable, count, seed, *, masking: "Masking", num_slots: int,
                  ids=None, word_labels=None):
    """`count` maskable positions uniformly at random (BERT's token masking): `(M,)`
    positions, ascending, unused slots at L."""
    length = tf.shape(token_ids)[0]
    # A uniformly random subset of `count` maskable positions: the top scores.
    scores = tf.random.stateless_uniform([length], seed=seed)
    scores = tf.where(maskable, scores, -1.0)
    _, top = tf.math.top_k(scores, k=num_slots)  # (M,)
    valid_sorted = tf.range(num_slots) < count
    return tf.sort(tf.where(valid_sorted, top, length))  # chosen first, ascending


def select_words(token_ids, maskable, count, seed, *, masking: "Masking", num_slots: int, ids,
                 word_labels=None):
    """Whole words, or spans of them where `masking.spans` (`select_whole_words`):
    `(M,)` positions, ascending, unused slots at L."""
    selected, _, _ = select_whole_words(token_ids, maskable, count, seed, masking=masking,
                                        ids=ids, word_labels=word_labels)
    length = tf.shape(token_ids)[0]
    chosen = tf.cast(tf.where(selected)[:, 0], tf.int32)  # ascending, at most count
    positions = tf.concat([chosen, tf.fill([num_slots - tf.size(chosen)], length)], 0)
    return tf.ensure_shape(positions, [num_slots])


# The selector of each `masking.unit`: the one table that reads the unit's name.
SELECTORS = {"token": select_tokens, "word": select_words, "span": select_words}
