"""Packing and dynamic masking: exact windows and masking statistics."""

import dataclasses

import numpy as np
import pytest

from mlm.architectures import get_architecture
from mlm.config import MaskingConfig
from mlm.data.masking import max_selections, resolve_masking
from mlm.data.pipeline import (
    TokenIds,
    batch_schedule,
    evaluation_dataset,
    evaluation_windows,
    num_windows,
    padding_fraction,
    read_windows,
    training_dataset,
)
from mlm.errors import MlmError

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
BERT = get_architecture("bert")
IDS = TokenIds(
    vocabulary_size=1000, start_id=CLS, end_id=SEP, pad_id=PAD, mask_id=MASK,
    special_ids=(PAD, CLS, SEP, MASK),
)


def _stream(num_tokens, *, seed=0, doc_length=40):
    """Token ids 5..999 with a [SEP] closing every document."""
    tokens = np.random.default_rng(seed).integers(5, 1000, size=num_tokens).astype(np.uint16)
    tokens[doc_length - 1 :: doc_length] = SEP
    return tokens


def _batches(ds, n):
    out = []
    for x, y, w in ds.take(n):
        out.append(({k: v.numpy() for k, v in x.items()}, y.numpy(), w.numpy()))
    return out


def test_windows_are_cls_body_sep_with_padding_only_in_the_last():
    tokens = np.arange(5, 5 + 20, dtype=np.uint16)  # 20 tokens, body of 6 per window
    assert num_windows(len(tokens), 8) == 4
    rows = read_windows(tokens, np.arange(4), sequence_length=8, ids=IDS)
    np.testing.assert_array_equal(rows[0], [CLS, 5, 6, 7, 8, 9, 10, SEP])
    np.testing.assert_array_equal(rows[2], [CLS, 17, 18, 19, 20, 21, 22, SEP])
    np.testing.assert_array_equal(rows[3], [CLS, 23, 24, SEP, PAD, PAD, PAD, PAD])
    assert padding_fraction(len(tokens), 8) == pytest.approx(4 / 32)


def test_every_token_lands_in_exactly_one_window():
    tokens = _stream(1000)
    rows = read_windows(tokens, np.arange(num_windows(1000, 32)), sequence_length=32, ids=IDS)
    bodies = [r[1:][: np.where(r[1:] == SEP)[0][-1]] if r[-1] == PAD else r[1:-1] for r in rows]
    np.testing.assert_array_equal(np.concatenate(bodies), tokens)


def test_schedule_visits_each_window_once_per_epoch_in_a_new_order():
    schedule = batch_schedule(100, batch_size=10, seed=3)
    epoch0 = [next(schedule) for _ in range(10)]
    epoch1 = [next(schedule) for _ in range(10)]
    assert {e for e, _ in epoch0} == {0} and {e for e, _ in epoch1} == {1}
    order0 = np.concatenate([w for _, w in epoch0])
    order1 = np.concatenate([w for _, w in epoch1])
    assert sorted(order0) == list(range(100)) == sorted(order1)
    assert not np.array_equal(order0, order1)


def test_schedule_resumed_at_any_step_matches_the_uninterrupted_one():
    full = batch_schedule(37, batch_size=5, seed=1)
    reference = [next(full) for _ in range(30)]
    for start in (0, 4, 7, 8, 29):
        resumed = batch_schedule(37, batch_size=5, seed=1, start_step=start)
        for epoch, ids in reference[start:start + 3]:
            got_epoch, got_ids = next(resumed)
            assert got_epoch == epoch
            np.testing.assert_array_equal(got_ids, ids)


def test_masking_proportions_over_100k_selected_tokens():
    masking = MaskingConfig(selection_rate=0.15, mask_token_rate=0.8, random_token_rate=0.1)
    ds = training_dataset(_stream(100_000), sequence_length=128, batch_size=32,
                          masking=masking, ids=IDS, seed=7, arch=BERT)
    selected = maskable = as_mask = as_random = unchanged = 0
    for x, y, w in _batches(ds, 180):
        valid = w > 0
        seen = np.take_along_axis(x["token_ids"], x["mask_positions"], axis=1)
        original = y
        selected += valid.sum()
        as_mask += (valid & (seen == MASK)).sum()
        unchanged += (valid & (seen == original)).sum()
        as_random += (valid & (seen != MASK) & (seen != original)).sum()
        # Maskable = non-special tokens of the unmasked windows.
        restored = x["token_ids"].copy()
        rows, slots = np.nonzero(valid)
        restored[rows, x["mask_positions"][rows, slots]] = original[rows, slots]
        maskable += np.isin(restored, IDS.special_ids, invert=True).sum()
    assert selected >= 100_000
    assert abs(selected / maskable - 0.15) < 0.01
    assert abs(as_mask / selected - 0.8) < 0.01
    # A random replacement equal to the original (p = 1/995) counts as unchanged.
    assert abs(as_random / selected - 0.1) < 0.01
    assert abs(unchanged / selected - 0.1) < 0.01


def test_specials_and_padding_never_selected_nor_used_as_replacements():
    tokens = _stream(5_000, doc_length=7)  # many [SEP] separators
    masking = MaskingConfig(selection_rate=0.5, mask_token_rate=0.0, random_token_rate=1.0)
    ds = evaluation_dataset(tokens, sequence_length=64, batch_size=16, masking=masking,
                            ids=IDS, seed=0, arch=BERT)
    checked = 0
    for x, y, w in _batches(ds, 100):
        valid = w > 0
        assert not np.isin(y[valid], IDS.special_ids).any()
        replaced = np.take_along_axis(x["token_ids"], x["mask_positions"], axis=1)[valid]
        assert not np.isin(replaced, IDS.special_ids).any()
        checked += valid.sum()
    # The last window is padded; its padding never appears among selected positions.
    assert checked > 1000


def test_padding_mask_and_unused_slots():
    tokens = np.arange(5, 5 + 10, dtype=np.uint16)  # one short window
    ds = evaluation_dataset(tokens, sequence_length=32, batch_size=4, masking=MaskingConfig(),
                            ids=IDS, seed=0, arch=BERT)
    ((x, y, w),) = _batches(ds, 1)
    assert x["padding_mask"].tolist() == [[1] * 12 + [0] * 20]
    slots = max_selections(32, 0.15)
    assert w.shape == (1, slots)
    # round(10 maskable * 0.15) = 2 selected; the other slots are weight 0.
    assert w.sum() == 2 and (x["mask_positions"][0, 2:] == 0).all()
    assert set(x["mask_positions"][0, :2]) <= set(range(1, 11))


def test_two_epochs_give_different_masks_and_same_seed_gives_same_masks():
    tokens = _stream(64 * 30 * 2)  # 2 batches of 30 windows-ish per epoch
    kwargs = dict(sequence_length=32, batch_size=30, masking=MaskingConfig(), ids=IDS, arch=BERT)
    windows = num_windows(len(tokens), 32)
    per_epoch = windows // 30
    a = _batches(training_dataset(tokens, seed=5, **kwargs), 2 * per_epoch)
    b = _batches(training_dataset(tokens, seed=5, **kwargs), 2 * per_epoch)
    c = _batches(training_dataset(tokens, seed=6, **kwargs), 1)
    for (xa, _ya, _), (xb, _yb, _) in zip(a, b, strict=False):
        np.testing.assert_array_equal(xa["token_ids"], xb["token_ids"])
        np.testing.assert_array_equal(xa["mask_positions"], xb["mask_positions"])
    assert not np.array_equal(a[0][0]["token_ids"], c[0][0]["token_ids"])

    # The same window in epoch 0 and epoch 1 gets a different mask.
    def masks_by_window(batches):
        out = {}
        for x, _, _ in batches:
            for row, positions in zip(x["token_ids"], x["mask_positions"], strict=False):
                out.setdefault(row[1:4].tobytes(), []).append(positions.tolist())
        return out

    seen_twice = [v for v in masks_by_window(a).values() if len(v) == 2]
    assert len(seen_twice) >= 10
    assert sum(p0 != p1 for p0, p1 in seen_twice) >= 0.9 * len(seen_twice)


def test_resumed_dataset_yields_the_same_batches_as_the_uninterrupted_one():
    tokens = _stream(20_000)
    kwargs = dict(sequence_length=64, batch_size=8, masking=MaskingConfig(), ids=IDS, seed=2,
                  arch=BERT)
    full = _batches(training_dataset(tokens, **kwargs), 50)
    resumed = _batches(training_dataset(tokens, start_step=41, **kwargs), 9)
    _assert_same_batches(resumed, full[41:])


def test_corpus_too_small_for_one_batch_is_a_clear_error():
    with pytest.raises(MlmError, match="too small for one batch.*batch_size=64"):
        training_dataset(_stream(100), sequence_length=32, batch_size=64,
                         masking=MaskingConfig(), ids=IDS, seed=0, arch=BERT)


def test_keras_hub_mask_generator_draws_special_tokens_as_replacements():
    """Why `mask_window` does not reuse keras-hub's MaskedLMMaskGenerator."""
    import keras_hub

    generator = keras_hub.layers.MaskedLMMaskGenerator(
        vocabulary_size=8, mask_selection_rate=1.0, mask_token_id=MASK,
        mask_selection_length=60, unselectable_token_ids=[PAD, CLS, SEP, MASK],
        mask_token_rate=0.0, random_token_rate=1.0,
    )
    out = generator(np.full((20, 60), 6, dtype="int32"))
    replaced = np.asarray(out["token_ids"])
    # Random replacements include [PAD], [CLS], [SEP] and [MASK].
    assert np.isin(replaced, [PAD, CLS, SEP, MASK]).any()


# The pipeline as it was before batched reads and masking: a Python generator
# of single windows, masked one window at a time by `mask_window`. Kept here as
# the reference the batched pipeline must reproduce bit for bit.
def _reference_batches(tokens, schedule, *, count, salt, seed, masking, sequence_length,
                       batch_size, inputs, drop_remainder):
    import tensorflow as tf

    from mlm.data.masking_ops import mask_window, window_seed

    body = sequence_length - 2

    def generate():
        for epoch, window_ids in schedule:
            for w in window_ids:
                row = np.full(sequence_length, PAD, dtype=np.int32)  # (L,)
                row[0] = CLS
                piece = tokens[w * body : (w + 1) * body]
                row[1 : 1 + len(piece)] = piece
                row[1 + len(piece)] = SEP
                yield epoch, w, row

    signature = (tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64),
                 tf.TensorSpec([sequence_length], tf.int32))
    num_slots = max_selections(sequence_length, masking.selection_rate)

    def mask_one(epoch, window, token_ids):
        masked, positions, mask_ids, weights = mask_window(
            token_ids, window_seed(seed, salt, epoch, window), masking=resolve_masking(masking),
            ids=IDS,
            num_slots=num_slots)
        return token_ids, masked, positions, mask_ids, weights

    ds = tf.data.Dataset.from_generator(generate, output_signature=signature).map(mask_one)
    out = []
    for token_ids, masked, positions, mask_ids, weights in (
        ds.batch(batch_size, drop_remainder=drop_remainder).take(count).as_numpy_iterator()
    ):
        x = {"token_ids": masked, "mask_positions": positions}
        if "padding_mask" in inputs:
            x["padding_mask"] = (token_ids != PAD).astype(np.int32)
        if "segment_ids" in inputs:
            x["segment_ids"] = np.zeros_like(masked)
        out.append((x, mask_ids, weights))
    return out


def _assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for step, ((xg, yg, wg), (xe, ye, we)) in enumerate(zip(got, expected, strict=True)):
        assert xg.keys() == xe.keys()
        for key in xe:
            assert xg[key].dtype == xe[key].dtype, (step, key)
            np.testing.assert_array_equal(xg[key], xe[key], err_msg=f"step {step}, {key}")
        np.testing.assert_array_equal(yg, ye, err_msg=f"step {step}, mask ids")
        np.testing.assert_array_equal(wg, we, err_msg=f"step {step}, mask weights")
        assert (yg.dtype, wg.dtype) == (ye.dtype, we.dtype)


_HEAVY_MASKING = MaskingConfig(selection_rate=0.5, mask_token_rate=0.5, random_token_rate=0.3)


@pytest.mark.parametrize(
    ("start_step", "process_index", "process_count", "masking"),
    [pytest.param(0, 0, 1, MaskingConfig(), marks=pytest.mark.slow),
     pytest.param(137, 0, 1, MaskingConfig(), marks=pytest.mark.slow),
     pytest.param(0, 1, 2, MaskingConfig(), marks=pytest.mark.slow),
     (290, 0, 2, MaskingConfig()),  # the fast loop's case: an epoch boundary, 2 processes
     pytest.param(3, 0, 1, _HEAVY_MASKING, marks=pytest.mark.slow)],
)
def test_training_batches_match_the_per_window_reference(
    start_step, process_index, process_count, masking
):
    """Same windows, order and masks as the per-window pipeline, across epoch boundaries."""
    from itertools import islice

    from mlm.data.pipeline import process_slice

    # 36,017 tokens: 1,201 windows of 30, the last one padded; 150 steps of 8 an epoch.
    tokens = _stream(36_017, doc_length=7)  # many [SEP]s: a varying count of maskable tokens
    length, batch, seed, steps = 32, 8, 11, 330
    windows = num_windows(len(tokens), length)
    schedule = process_slice(
        batch_schedule(windows, batch_size=batch, seed=seed, start_step=start_step),
        process_index=process_index, process_count=process_count)
    inputs = ("segment_ids", "padding_mask")
    expected = _reference_batches(
        tokens, islice(schedule, steps), count=steps, salt=0x6D61736B, seed=seed,
        masking=masking, sequence_length=length, batch_size=batch // process_count,
        inputs=inputs, drop_remainder=True)
    ds = training_dataset(tokens, sequence_length=length, batch_size=batch, masking=masking,
                          ids=IDS, seed=seed, start_step=start_step, arch=BERT,
                          process_index=process_index, process_count=process_count)
    _assert_same_batches(_batches(ds, steps), expected)
    # The static shapes keras sees are unchanged: a fixed batch dimension.
    slots = max_selections(length, masking.selection_rate)
    assert ds.element_spec[0]["token_ids"].shape == (batch // process_count, length)
    assert ds.element_spec[1].shape == (batch // process_count, slots)


@pytest.mark.parametrize(("max_batches", "inputs"),
                         [(0, ("segment_ids", "padding_mask")), (7, ("padding_mask",)), (3, ())])
def test_evaluation_batches_match_the_per_window_reference(max_batches, inputs):
    tokens = _stream(12_345, doc_length=11)  # 412 windows of 30: a last batch of 12
    length, batch = 32, 16
    chosen = evaluation_windows(num_windows(len(tokens), length), batch_size=batch,
                                max_batches=max_batches, seed=4)
    schedule = [(0, chosen[s:s + batch]) for s in range(0, len(chosen), batch)]
    expected = _reference_batches(
        tokens, schedule, count=len(schedule), salt=0x6576616C, seed=4,
        masking=MaskingConfig(), sequence_length=length, batch_size=batch, inputs=inputs,
        drop_remainder=False)
    ds = evaluation_dataset(tokens, sequence_length=length, batch_size=batch,
                            masking=MaskingConfig(), ids=IDS, seed=4, max_batches=max_batches,
                            arch=dataclasses.replace(BERT, inputs=inputs))
    got = _batches(ds, len(schedule) + 1)
    _assert_same_batches(got, expected)
    assert ds.element_spec[0]["token_ids"].shape.as_list() == [None, length]


def test_a_capped_evaluation_samples_windows_from_the_whole_split():
    every = evaluation_windows(412, batch_size=16, max_batches=0, seed=0)
    assert every.tolist() == list(range(412))
    sample = evaluation_windows(412, batch_size=16, max_batches=3, seed=0)
    assert len(sample) == len(set(sample.tolist())) == 48
    assert sample.tolist() == sorted(sample.tolist()) and sample.max() < 412
    # Spread over the split: each quarter holds about a quarter of the sample.
    quarters = np.bincount(sample // 103, minlength=4)
    assert quarters.min() >= 5, quarters
    # Fixed by the seed; another seed, another sample; a small split is taken whole.
    assert np.array_equal(sample, evaluation_windows(412, batch_size=16, max_batches=3, seed=0))
    assert not np.array_equal(sample, evaluation_windows(412, batch_size=16, max_batches=3,
                                                         seed=1))
    assert evaluation_windows(40, batch_size=16, max_batches=3, seed=0).tolist() == list(
        range(40))


def test_read_windows_matches_slicing_one_window_at_a_time():
    body = 14
    for count in (0, 1, 13, 14, 15, 140, 141):  # empty, partial, exact multiples
        tokens = _stream(max(count, 1))[:count]
        windows = max(num_windows(count, body + 2), 1)
        window_ids = np.random.default_rng(count).integers(0, windows, 50)
        rows = read_windows(tokens, window_ids, sequence_length=body + 2, ids=IDS)
        assert rows.dtype == np.int32 and rows.shape == (50, body + 2)
        for row, w in zip(rows, window_ids, strict=True):
            piece = tokens[w * body : (w + 1) * body]
            expected = [CLS, *piece, SEP] + [PAD] * (body - len(piece))
            np.testing.assert_array_equal(row, expected)


def test_a_scheduled_rate_moves_linearly_and_a_resumed_run_keeps_each_steps_rate():
    # 40% down to 10% over 20 steps: a full window of 62 maskable tokens selects
    # round(62 * rate) of them at its step, and slots are sized for the 40%.
    masking = resolve_masking(MaskingConfig(selection_rate=0.4, final_selection_rate=0.1))
    assert masking.slots(64) == max_selections(64, 0.4)
    np.testing.assert_allclose(masking.rates([0, 19, 40], total_steps=20), [0.4, 0.1, 0.1])
    assert masking.rates([19], total_steps=39)[0] == pytest.approx(0.25)
    tokens = _stream(62 * 650, doc_length=10**6)  # one document, full windows of 62 tokens
    kwargs = dict(sequence_length=64, batch_size=8, masking=masking, ids=IDS, seed=3, arch=BERT,
                  total_steps=20)
    full = _batches(training_dataset(tokens, **kwargs), 20)
    rates = masking.rates(np.arange(20), total_steps=20)
    selected = [w.sum(axis=1) for _, _, w in full]  # (B,) per step
    for step, counts in enumerate(selected):
        np.testing.assert_array_equal(counts, np.round(62 * rates[step]))
    assert selected[0][0] == 25 and selected[-1][0] == 6
    # A later segment's steps continue the run's schedule, and a resumed dataset
    # masks each step at the rate the uninterrupted one did.
    resumed = _batches(training_dataset(tokens, start_step=13, **kwargs), 7)
    _assert_same_batches(resumed, full[13:])
    offset = _batches(training_dataset(tokens, step_offset=10, **kwargs), 1)
    assert offset[0][2].sum(axis=1)[0] == round(62 * rates[10])
    # Without a schedule the batches are those of the constant rate.
    constant = dict(kwargs, masking=MaskingConfig(selection_rate=0.4))
    plain = _batches(training_dataset(tokens, **constant), 1)
    np.testing.assert_array_equal(plain[0][0]["mask_positions"], full[0][0]["mask_positions"])
