"""Token cache -> packed windows -> dynamic masking -> batched model inputs.

The token cache is one flat array of token ids per split, documents joined
by the end ([SEP]) token (`mlm.data.token_cache`). Window `i` is the slice
`[i * (L - 2), (i + 1) * (L - 2))` of that array framed as `[CLS] ... [SEP]`,
so only the very last window of a split is padded.

Masks are a pure function of `(seed, epoch, window index)`: each window's
randomness comes from stateless RNG ops keyed by that triple, so a resumed
run sees exactly the masks an uninterrupted one would, and parallel
`tf.data` maps cannot reorder random draws.
"""

import dataclasses
import functools
import math
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from mlm.architectures import Architecture
from mlm.config import MaskingConfig
from mlm.data import segmenter
from mlm.errors import MlmError

# Stream salts, so that training, evaluation and shuffling draw unrelated numbers.
_TRAIN_SALT, _EVAL_SALT, _SHUFFLE_SALT = 0x6D61736B, 0x6576616C, 0x73687566


@dataclasses.dataclass(frozen=True)
class TokenIds:
    """The ids the pipeline needs from a tokenizer."""

    vocabulary_size: int
    start_id: int  # [CLS]
    end_id: int  # [SEP], also the document separator.
    pad_id: int
    mask_id: int
    # Never selected for masking and never used as a random replacement.
    special_ids: tuple[int, ...]
    # One flag per id: whether that token begins a word (`mlm.data.vocab.word_starts`),
    # for whole-word and span masking; None where only token masking is used.
    word_starts: tuple[bool, ...] | None = dataclasses.field(
        default=None, compare=False, repr=False
    )

    @classmethod
    def from_tokenizer(cls, tokenizer, *, family: str | None = None) -> "TokenIds":
        """The ids of a keras-hub tokenizer; with its `family`, the word-start flags too."""
        starts = None
        if family is not None:
            from mlm.data import vocab

            size = int(tokenizer.vocabulary_size())
            vocabulary = [tokenizer.id_to_token(i) for i in range(size)]
            starts = tuple(bool(f) for f in vocab.word_starts(
                vocabulary, family=family, special_tokens=tokenizer.special_tokens))
        return cls(
            vocabulary_size=int(tokenizer.vocabulary_size()),
            start_id=int(tokenizer.start_token_id),
            end_id=int(tokenizer.end_token_id),
            pad_id=int(tokenizer.pad_token_id),
            mask_id=int(tokenizer.mask_token_id),
            special_ids=tuple(sorted({int(i) for i in tokenizer.special_token_ids})),
            word_starts=starts,
        )


def max_selections(sequence_length: int, selection_rate: float) -> int:
    """Mask slots per window: the count selected in a full window."""
    return max(1, round((sequence_length - 2) * selection_rate))


def num_windows(num_tokens: int, sequence_length: int) -> int:
    """Windows needed to cover `num_tokens` tokens of a split."""
    return math.ceil(num_tokens / (sequence_length - 2))


def padding_fraction(num_tokens: int, sequence_length: int) -> float:
    """Fraction of padding tokens over all windows of a split."""
    windows = num_windows(num_tokens, sequence_length)
    if windows == 0:
        return 0.0
    used = num_tokens + 2 * windows
    return 1.0 - used / (windows * sequence_length)


def read_windows(
    tokens: np.ndarray, window_ids: np.ndarray, *, sequence_length: int, ids: TokenIds
) -> np.ndarray:
    """Gathers windows `window_ids` from the flat token array as `(B, L)` int32.

    One vectorised read per batch, not a Python step per window: the full
    windows are rows of a `(full windows, L - 2)` view of the (memory-mapped)
    array, so a fancy index copies them all at once; only the padded last
    window of a split, or an id past the end, takes the masked path.
    """
    body = sequence_length - 2
    window_ids = np.asarray(window_ids, dtype=np.int64)  # (B,)
    out = np.full((len(window_ids), sequence_length), ids.pad_id, dtype=np.int32)  # (B, L)
    out[:, 0] = ids.start_id
    full = len(tokens) // body
    view = tokens[: full * body].reshape(full, body)  # (full windows, L - 2), no copy
    rows = np.flatnonzero(window_ids < full)
    out[rows, 1:-1] = view[window_ids[rows]]
    out[rows, -1] = ids.end_id
    rows = np.flatnonzero(window_ids >= full)  # the padded last window, at most
    lengths = np.clip(len(tokens) - window_ids[rows] * body, 0, body)  # (R,) tokens present
    if len(rows) and len(tokens):
        columns = np.arange(body)
        index = np.minimum(window_ids[rows, None] * body + columns, len(tokens) - 1)  # (R, L-2)
        out[rows, 1:-1] = np.where(columns < lengths[:, None], tokens[index], ids.pad_id)
    out[rows, 1 + lengths] = ids.end_id
    return out


def steps_per_epoch(windows: int, batch_size: int) -> int:
    """Full batches per epoch; the remainder windows rotate in next epoch's shuffle."""
    return windows // batch_size


def epoch_permutation(windows: int, *, seed: int, epoch: int) -> np.ndarray:
    """The window order of `epoch`, a pure function of `(seed, epoch)`."""
    rng = np.random.default_rng([seed, _SHUFFLE_SALT, epoch])
    return rng.permutation(windows)


def batch_schedule(
    windows: int, *, batch_size: int, seed: int, start_step: int = 0
) -> Iterator[tuple[int, np.ndarray]]:
    """Yields `(epoch, window_ids)` for every step from `start_step` on, forever."""
    per_epoch = steps_per_epoch(windows, batch_size)
    epoch, offset = divmod(start_step, per_epoch)
    while True:
        order = epoch_permutation(windows, seed=seed, epoch=epoch)
        for step in range(offset, per_epoch):
            yield epoch, order[step * batch_size : (step + 1) * batch_size]
        epoch, offset = epoch + 1, 0


def process_slice(
    schedule: Iterator[tuple[int, np.ndarray]], *, process_index: int, process_count: int
) -> Iterator[tuple[int, np.ndarray]]:
    """This process's contiguous part of every global batch of `schedule`.

    Every process walks the same global schedule and keeps slice
    `process_index` of `process_count` equal slices, so each window is read by
    exactly one process per epoch, with the mask it gets in a one-process run.
    """
    for epoch, window_ids in schedule:
        size = len(window_ids) // process_count
        yield epoch, window_ids[process_index * size : (process_index + 1) * size]


def ordered_schedule(windows: int, *, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yields `(0, window_ids)` covering every window once, in order (evaluation)."""
    for start in range(0, windows, batch_size):
        yield 0, np.arange(start, min(start + batch_size, windows))


def window_seed(seed: int, salt: int, epoch, window):
    """Stateless RNG seed for one window: a pure function of its arguments."""
    base = tf.constant([seed, salt], dtype=tf.int64)
    base = tf.random.experimental.stateless_fold_in(base, tf.cast(epoch, tf.int64))
    return tf.random.experimental.stateless_fold_in(base, tf.cast(window, tf.int64))


def mask_window(token_ids, seed, *, masking: MaskingConfig, ids: TokenIds, num_slots: int,
                word_labels=None):
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
        masking: rates of selection and of the 80/10/10 replacement.
        ids: special token ids (and word-start flags for word and span units).
        num_slots: M, the fixed number of mask slots per window.
        word_labels: `(L,)` uint8 segmenter labels (`mlm.data.segmenter`), or None.

    Returns:
        `(token_ids, mask_positions, mask_ids, mask_weights)` with shapes
        `(L,)`, `(M,)`, `(M,)`, `(M,)`; unused slots have weight 0.
    """
    length = tf.shape(token_ids)[0]
    maskable = _maskable(token_ids, ids)  # (L,)
    num_maskable = tf.reduce_sum(tf.cast(maskable, tf.float32))
    count = tf.cast(tf.round(num_maskable * masking.selection_rate), tf.int32)
    count = tf.minimum(tf.maximum(count, tf.cast(num_maskable > 0, tf.int32)), num_slots)
    select_seed, action_seed, replace_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3)
    )
    if masking.unit == "token":
        # A uniformly random subset of `count` maskable positions: the top scores.
        scores = tf.random.stateless_uniform([length], seed=select_seed)
        scores = tf.where(maskable, scores, -1.0)
        _, top = tf.math.top_k(scores, k=num_slots)  # (M,)
        valid_sorted = tf.range(num_slots) < count
        positions = tf.sort(tf.where(valid_sorted, top, length))  # chosen first, ascending
    else:
        selected, _, _ = select_whole_words(
            token_ids, maskable, count, select_seed, masking=masking, ids=ids,
            word_labels=word_labels,
        )
        chosen = tf.cast(tf.where(selected)[:, 0], tf.int32)  # ascending, at most count
        positions = tf.concat([chosen, tf.fill([num_slots - tf.size(chosen)], length)], 0)
        positions = tf.ensure_shape(positions, [num_slots])
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


def _maskable(token_ids, ids: TokenIds):
    """`(L,)` bool: the tokens that may be selected (not special, not padding)."""
    special = tf.constant(ids.special_ids, dtype=token_ids.dtype)
    return tf.reduce_all(token_ids[:, None] != special[None, :], axis=-1)


# Passes of the greedy fill in `select_whole_words`; a fifth changed the selected
# fraction by under 0.01 points on the sample corpus.
_FILL_PASSES = 4


def span_length_law(masking: MaskingConfig) -> np.ndarray:
    """P(span of l words), l = 1..max_span: SpanBERT's geometric law, truncated."""
    lengths = np.arange(1, masking.max_span + 1)
    law = masking.span_p * (1 - masking.span_p) ** (lengths - 1)
    return law / law.sum()


def select_whole_words(token_ids, maskable, count, seed, *, masking: MaskingConfig,
                       ids: TokenIds, word_labels=None):
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
    if ids.word_starts is None:
        raise MlmError(
            f"masking.unit={masking.unit!r} needs the tokenizer's word boundaries, which "
            f"this pipeline was not given; use masking.unit=token."
        )
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
    unit_of_word = tf.range(length)
    if masking.unit == "span":
        span_seed = tf.random.experimental.stateless_fold_in(seed, 1)
        law = tf.constant(np.log(span_length_law(masking))[None, :], dtype=tf.float32)
        spans = tf.random.stateless_categorical(law, length, seed=span_seed)[0] + 1  # (L,)
        first_words = tf.cumsum(tf.cast(spans, tf.int32), exclusive=True)  # (L,)
        span_start = tf.scatter_nd(tf.minimum(first_words, length)[:, None],
                                   tf.ones_like(first_words), [length + 1])[:length] > 0
        # Spans never cross a special token: one starts at and after each.
        prev_ok = tf.concat([[False], word_ok[:-1]], axis=0)
        span_start = span_start | ~word_ok | ~prev_ok
        unit_of_word = tf.cumsum(tf.cast(span_start, tf.int32)) - 1
    unit = tf.gather(unit_of_word, word)  # (L,) unit index of each token
    ones = tf.ones_like(unit)
    unit_tokens = tf.math.unsorted_segment_sum(ones, unit, length)  # (U=L,)
    unit_ok = tf.math.unsorted_segment_max(tf.cast(maskable, tf.int32), unit, length) > 0
    scores = tf.random.stateless_uniform([length], seed=seed)
    order = tf.argsort(tf.where(unit_ok, scores, -1.0), direction="DESCENDING")
    sizes = tf.gather(unit_tokens, order)
    ok = tf.gather(unit_ok, order)
    taken = tf.zeros([length], tf.bool)
    remaining = count
    # Spans: one pass, so that the spans taken keep the law; words: greedy fill.
    for _ in range(1 if masking.unit == "span" else _FILL_PASSES):
        candidate = ok & ~taken
        if masking.unit == "word":
            candidate = candidate & (sizes <= remaining)
        cumulative = tf.cumsum(tf.where(candidate, sizes, 0))
        take = candidate & (cumulative <= remaining)
        taken = taken | take
        remaining = remaining - tf.reduce_sum(tf.where(take, sizes, 0))
    chosen = tf.scatter_nd(order[:, None], tf.cast(taken, tf.int32), [length]) > 0  # by unit
    selected = tf.gather(chosen, unit) & maskable
    cut = tf.constant(-1)
    if masking.unit == "span":
        # The first span passed over is cut to the whole words that fit the budget
        # left, as SpanBERT cuts its last span (SpanBERT also cuts inside a word).
        rest = ok & ~taken
        cut = tf.where(tf.reduce_any(rest) & (remaining > 0),
                       tf.gather(order, tf.argmax(tf.cast(rest, tf.int32))), -1)
        inside = (unit == cut) & maskable
        through = tf.cumsum(tf.cast(inside, tf.int32))  # the cut span's tokens so far
        word_end = tf.math.unsorted_segment_max(tf.where(inside, through, 0), word, length)
        selected = selected | (inside & (tf.gather(word_end, word) <= remaining))
        cut = tf.where(tf.reduce_any(inside & (tf.gather(word_end, word) <= remaining)), cut, -1)
    return selected, unit, cut


def _model_inputs(masked, positions, mask_ids, weights, *, ids, arch):
    """Packs one batch as the `(x, y, sample_weight)` a keras-hub MaskedLM takes."""
    return arch.model_inputs(masked, positions, pad_id=ids.pad_id), mask_ids, weights


def training_dataset(
    tokens: np.ndarray,
    *,
    sequence_length: int,
    batch_size: int,
    masking: MaskingConfig,
    ids: TokenIds,
    seed: int,
    arch: Architecture,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    word_labels: np.ndarray | None = None,
) -> tf.data.Dataset:
    """An endless dataset of masked training batches, starting at `start_step`.

    Every epoch visits the windows in a fresh order with fresh masks; the
    batch of step `s` is the same whether the run started at 0 or resumed.
    With `process_count` > 1, yields this process's `batch_size //
    process_count` windows of each global batch of `batch_size` (see
    `process_slice`). `word_labels`: the token cache's segmenter labels,
    parallel to `tokens`, for whole-word masking of text without spaces.
    """
    windows = num_windows(len(tokens), sequence_length)
    if steps_per_epoch(windows, batch_size) < 1:
        raise MlmError(
            f"the corpus is too small for one batch: {windows} windows of "
            f"{sequence_length} tokens, but received batch_size={batch_size}; add text "
            f"or lower train.batch_size or model.sequence_length."
        )

    if batch_size % process_count:
        raise MlmError(
            f"train.batch_size must be a multiple of the {process_count} processes, but "
            f"received batch_size={batch_size}; change --batch-size."
        )

    def schedule():
        steps = batch_schedule(windows, batch_size=batch_size, seed=seed, start_step=start_step)
        return process_slice(steps, process_index=process_index, process_count=process_count)

    ds = _window_dataset(tokens, schedule, sequence_length=sequence_length, ids=ids,
                         word_labels=word_labels)
    return _mask_and_batch(
        ds, salt=_TRAIN_SALT, seed=seed, masking=masking, ids=ids,
        sequence_length=sequence_length, batch_size=batch_size // process_count,
        arch=arch, drop_remainder=True,
    )


def evaluation_dataset(
    tokens: np.ndarray,
    *,
    sequence_length: int,
    batch_size: int,
    masking: MaskingConfig,
    ids: TokenIds,
    seed: int,
    arch: Architecture,
    max_batches: int = 0,
    word_labels: np.ndarray | None = None,
) -> tf.data.Dataset:
    """Held-out windows in order with fixed masks, so evaluations compare."""
    windows = num_windows(len(tokens), sequence_length)
    if max_batches:
        windows = min(windows, max_batches * batch_size)
    if windows == 0:
        raise MlmError(
            "the held-out split is empty; raise corpus.held_out_fraction or pass "
            "held-out files with --held-out (a .txt file with one document per line and no "
            "blank lines reads as one document: set corpus.document_boundary=line)."
        )

    schedule = functools.partial(ordered_schedule, windows, batch_size=batch_size)
    ds = _window_dataset(tokens, schedule, sequence_length=sequence_length, ids=ids,
                         word_labels=word_labels)
    return _mask_and_batch(
        ds, salt=_EVAL_SALT, seed=seed, masking=masking, ids=ids,
        sequence_length=sequence_length, batch_size=batch_size,
        arch=arch, drop_remainder=False,
    )


# Reads the word labels' windows as `read_windows` reads tokens: 0 (`FAMILY`) at the
# [CLS], [SEP] and padding slots.
_LABEL_FRAME = TokenIds(vocabulary_size=3, start_id=0, end_id=0, pad_id=0, mask_id=0,
                        special_ids=())


def _window_dataset(tokens, schedule, *, sequence_length, ids,
                    word_labels=None) -> tf.data.Dataset:
    """Single windows `(epoch, window index, (L,) token ids[, (L,) labels])` in `schedule`
    order.

    `schedule()` yields `(epoch, window_ids)` per batch; windows are read from
    the memory-mapped cache one batch at a time, then unbatched for masking.
    """

    def generate():
        for epoch, window_ids in schedule():
            rows = read_windows(tokens, window_ids, sequence_length=sequence_length, ids=ids)
            if word_labels is None:
                yield np.full(len(window_ids), epoch), window_ids, rows
            else:
                labels = read_windows(word_labels, window_ids, sequence_length=sequence_length,
                                      ids=_LABEL_FRAME).astype(np.uint8)
                yield np.full(len(window_ids), epoch), window_ids, rows, labels

    signature = (
        tf.TensorSpec([None], tf.int64),
        tf.TensorSpec([None], tf.int64),
        tf.TensorSpec([None, sequence_length], tf.int32),
    )
    if word_labels is not None:
        signature += (tf.TensorSpec([None, sequence_length], tf.uint8),)
    return tf.data.Dataset.from_generator(generate, output_signature=signature).unbatch()


def _mask_and_batch(
    ds, *, salt, seed, masking, ids, sequence_length, batch_size, arch, drop_remainder
):
    num_slots = max_selections(sequence_length, masking.selection_rate)

    def mask_one(epoch, window, token_ids, word_labels=None):
        token_ids = tf.ensure_shape(token_ids, [sequence_length])
        masked, positions, mask_ids, weights = mask_window(
            token_ids, window_seed(seed, salt, epoch, window),
            masking=masking, ids=ids, num_slots=num_slots,
            word_labels=None if masking.unit == "token" else word_labels,
        )
        return masked, positions, mask_ids, weights

    ds = ds.map(mask_one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(
        lambda *batch: _model_inputs(*batch, ids=ids, arch=arch),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ds.prefetch(tf.data.AUTOTUNE)
