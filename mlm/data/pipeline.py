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
import math
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from mlm.architectures import Architecture
from mlm.config import MaskingConfig
from mlm.data.masking import Masking, resolve_masking
from mlm.data.masking_ops import mask_window, window_seed
from mlm.errors import MlmError

# Stream salts, so that training, evaluation and shuffling draw unrelated numbers.
_TRAIN_SALT, _EVAL_SALT, _SHUFFLE_SALT = 0x6D61736B, 0x6576616C, 0x73687566
# Seeds of the processes of a run from per-host shares (`own_share`) lie this far apart.
_SHARE_SEED_STRIDE = 100_003  # prime; segments (loop.py) lie 1_000_003 apart


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


def evaluation_windows(windows: int, *, batch_size: int, max_batches: int, seed: int
                       ) -> np.ndarray:
    """The held-out windows evaluated: all, or with `max_batches` a fixed sample of
    `max_batches * batch_size` spread over the whole split (seeded, sorted), not the
    first windows in file order, which would favour the first files."""
    if not max_batches or windows <= max_batches * batch_size:
        return np.arange(windows)
    rng = np.random.default_rng([seed, _EVAL_SALT])
    return np.sort(rng.choice(windows, size=max_batches * batch_size, replace=False))


def ordered_schedule(window_ids: np.ndarray, *, batch_size: int
                     ) -> Iterator[tuple[int, np.ndarray]]:
    """Yields `(0, window_ids)` covering `window_ids` once, in order (evaluation)."""
    for start in range(0, len(window_ids), batch_size):
        yield 0, window_ids[start:start + batch_size]


def _model_inputs(masked, positions, mask_ids, weights, *, ids, arch):
    """Packs one batch as the `(x, y, sample_weight)` a keras-hub MaskedLM takes."""
    return arch.model_inputs(masked, positions, pad_id=ids.pad_id), mask_ids, weights


def training_dataset(
    tokens: np.ndarray,
    *,
    sequence_length: int,
    batch_size: int,
    masking: Masking | MaskingConfig,
    ids: TokenIds,
    seed: int,
    arch: Architecture,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    word_labels: np.ndarray | None = None,
    own_share: bool = False,
    step_offset: int = 0,
    total_steps: int = 0,
) -> tf.data.Dataset:
    """An endless dataset of masked training batches, starting at `start_step`.

    Every epoch visits the windows in a fresh order with fresh masks; the
    batch of step `s` is the same whether the run started at 0 or resumed.
    With `process_count` > 1, yields this process's `batch_size //
    process_count` windows of each global batch of `batch_size` (see
    `process_slice`). With `own_share`, `tokens` is this process's own share
    of the documents (`mlm prepare --hosts`, as long on every process): it
    shuffles and masks its own windows into its `batch_size // process_count`
    part of each batch, from a seed of its own. `word_labels`: the token
    cache's segmenter labels, parallel to `tokens`, for whole-word masking of
    text without spaces. With a scheduled selection rate
    (`masking.final_selection_rate`), the windows of step `s` (counted in this
    dataset, from `start_step`) are masked at the rate of run step `step_offset
    + s` of `total_steps` (`Masking.rates`), so resuming keeps each step's rate.
    """
    windows = num_windows(len(tokens), sequence_length)
    masking = resolve_masking(masking)
    rate_of = None
    if masking.final_selection_rate:
        if total_steps < 1:
            raise ValueError("a scheduled selection rate needs the run's total_steps")

        def rate_of(step):
            return float(masking.rates([step_offset + step], total_steps=total_steps)[0])
    if own_share:
        if steps_per_epoch(windows, batch_size // process_count) < 1:
            raise MlmError(
                f"this host's share is too small for its part of one batch: {windows} windows "
                f"of {sequence_length} tokens, but received batch_size={batch_size} over "
                f"{process_count} processes; add text or prepare fewer shares."
            )
        seed += _SHARE_SEED_STRIDE * process_index  # its own order and masks
    elif steps_per_epoch(windows, batch_size) < 1:
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
        if own_share:
            return batch_schedule(windows, batch_size=batch_size // process_count, seed=seed,
                                  start_step=start_step)
        steps = batch_schedule(windows, batch_size=batch_size, seed=seed, start_step=start_step)
        return process_slice(steps, process_index=process_index, process_count=process_count)

    ds = _window_dataset(tokens, schedule, sequence_length=sequence_length, ids=ids,
                         word_labels=word_labels, rate_of=rate_of, start_step=start_step)
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
    masking: Masking | MaskingConfig,
    ids: TokenIds,
    seed: int,
    arch: Architecture,
    max_batches: int = 0,
    word_labels: np.ndarray | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> tf.data.Dataset:
    """Held-out windows in order with fixed masks, so evaluations compare: every window,
    or with `max_batches` a fixed sample spread over the split (`evaluation_windows`).

    With `process_count` > 1 the processes split the evaluation: of each full
    batch of `batch_size` windows, this process reads and masks its
    `batch_size // process_count` (`process_slice`; the masks are those of a
    one-process run), and a last short batch comes whole to every process.
    The first `len(evaluation_windows(...)) // batch_size` batches are the
    split ones.
    """
    windows = num_windows(len(tokens), sequence_length)
    if windows == 0:
        raise MlmError(
            "the held-out split is empty; raise corpus.held_out_fraction or pass "
            "held-out files with --held-out (a .txt file with one document per line and no "
            "blank lines reads as one document: set corpus.document_boundary=line)."
        )

    chosen = evaluation_windows(windows, batch_size=batch_size, max_batches=max_batches,
                                seed=seed)
    split = len(chosen) - len(chosen) % batch_size

    def schedule():
        yield from process_slice(ordered_schedule(chosen[:split], batch_size=batch_size),
                                 process_index=process_index, process_count=process_count)
        yield from ordered_schedule(chosen[split:], batch_size=batch_size)

    ds = _window_dataset(tokens, schedule, sequence_length=sequence_length, ids=ids,
                         word_labels=word_labels)
    return _mask_and_batch(
        ds, salt=_EVAL_SALT, seed=seed, masking=resolve_masking(masking), ids=ids,
        sequence_length=sequence_length, batch_size=batch_size // process_count,
        arch=arch, drop_remainder=False,
    )


# Reads the word labels' windows as `read_windows` reads tokens: 0 (`FAMILY`) at the
# [CLS], [SEP] and padding slots.
_LABEL_FRAME = TokenIds(vocabulary_size=3, start_id=0, end_id=0, pad_id=0, mask_id=0,
                        special_ids=())


def _window_dataset(tokens, schedule, *, sequence_length, ids, word_labels=None,
                    rate_of=None, start_step: int = 0) -> tf.data.Dataset:
    """Single windows `{"epoch", "window", "token_ids": (L,)[, "word_labels": (L,)][,
    "rate"]}` in `schedule` order.

    `schedule()` yields `(epoch, window_ids)` per batch; windows are read from
    the memory-mapped cache one batch at a time, then unbatched for masking.
    `rate_of(step)`: the selection rate of the `step`-th batch (counted from
    `start_step`), for a scheduled rate; None: the masking's own rate.
    """

    def generate():
        for step, (epoch, window_ids) in enumerate(schedule(), start=start_step):
            batch = {"epoch": np.full(len(window_ids), epoch), "window": window_ids,
                     "token_ids": read_windows(tokens, window_ids,
                                               sequence_length=sequence_length, ids=ids)}
            if word_labels is not None:
                batch["word_labels"] = read_windows(
                    word_labels, window_ids, sequence_length=sequence_length,
                    ids=_LABEL_FRAME).astype(np.uint8)
            if rate_of is not None:
                batch["rate"] = np.full(len(window_ids), rate_of(step), dtype=np.float32)
            yield batch

    signature = {
        "epoch": tf.TensorSpec([None], tf.int64),
        "window": tf.TensorSpec([None], tf.int64),
        "token_ids": tf.TensorSpec([None, sequence_length], tf.int32),
    }
    if word_labels is not None:
        signature["word_labels"] = tf.TensorSpec([None, sequence_length], tf.uint8)
    if rate_of is not None:
        signature["rate"] = tf.TensorSpec([None], tf.float32)
    return tf.data.Dataset.from_generator(generate, output_signature=signature).unbatch()


def _mask_and_batch(
    ds, *, salt, seed, masking: Masking, ids, sequence_length, batch_size, arch, drop_remainder
):
    num_slots = masking.slots(sequence_length)

    def mask_one(window):
        token_ids = tf.ensure_shape(window["token_ids"], [sequence_length])
        masked, positions, mask_ids, weights = mask_window(
            token_ids, window_seed(seed, salt, window["epoch"], window["window"]),
            masking=masking, ids=ids, num_slots=num_slots,
            word_labels=window.get("word_labels"), rate=window.get("rate"),
        )
        return masked, positions, mask_ids, weights

    ds = ds.map(mask_one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(
        lambda *batch: _model_inputs(*batch, ids=ids, arch=arch),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ds.prefetch(tf.data.AUTOTUNE)
