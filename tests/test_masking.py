"""Whole-word and span masking (`masking.unit`): statistics over real tokenizers.

For each tokenizer family (WordPiece, SentencePiece, byte-level BPE) a
vocabulary is learned on the sample corpus and held-out chapters are packed
into windows as a run packs them. Over more than 100k selected tokens per
case: the selected fraction is within one point of the target, no word is
ever partly selected (words read back from the token strings with the
family's own rule, independently of the table the pipeline gathers from),
special tokens are never selected, the 80/10/10 decision is per token, and
span lengths follow SpanBERT's truncated geometric law.
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from mlm.architectures import get_architecture
from mlm.config import MaskingConfig, load_recipe
from mlm.data import vocab
from mlm.data.masking import max_selections, resolve_masking, span_length_law
from mlm.data.masking_ops import select_whole_words
from mlm.data.pipeline import TokenIds, num_windows, read_windows, training_dataset
from mlm.errors import MlmError
from tests.conftest import sample_documents

ROWS = ("bert", "albert", "roberta")  # WordPiece, SentencePiece, byte-level BPE
LENGTH = 128
SELECTED_TOKENS = 100_000


@pytest.fixture(scope="module")
def family_streams(tmp_path_factory):
    """Per row: (tokenizer, TokenIds with word starts, flat held-out token stream)."""
    cache = {}

    def build(name):
        if name not in cache:
            arch = get_architecture(name)
            path = vocab.train_vocabulary(
                sample_documents(300), family=arch.tokenizer_family, size=2000,
                lowercase=False, min_frequency=2, out_dir=tmp_path_factory.mktemp(name),
                special_tokens=arch.special_tokens,
            )
            tokenizer = vocab.build_tokenizer(
                path, family=arch.tokenizer_family, lowercase=False, tokenizer=arch.tokenizer
            )
            ids = TokenIds.from_tokenizer(tokenizer, family=arch.tokenizer_family)
            # As the token cache joins documents: each one closed by the end token.
            documents = sample_documents(150, start=1000)
            pieces = [np.append(np.asarray(t, dtype=np.int32), ids.end_id)
                      for t in tokenizer(documents)]
            # Word starts read token by token with the family's rule, independently of
            # the vectorised table the pipeline gathers from.
            starts = np.array([vocab.is_word_start(tokenizer.id_to_token(i),
                                                   family=arch.tokenizer_family)
                               for i in range(ids.vocabulary_size)])
            cache[name] = (starts, ids, np.concatenate(pieces))
        return cache[name]

    return build


def _words(window, *, starts, ids):
    """Word index of every token: a word starts at a marked token, at a special
    token and right after one."""
    special = np.isin(window, ids.special_ids)
    after_special = np.r_[True, special[:-1]]
    return np.cumsum(starts[window] | special | after_special) - 1


def _partly_selected(words, chosen) -> int:
    """Words with some but not all of their tokens chosen."""
    size = np.bincount(words)
    taken = np.bincount(words, weights=chosen)
    return int(((taken > 0) & (taken < size)).sum())


def _masked_batches(tokens, ids, masking, *, arch, batches):
    data = training_dataset(
        tokens, sequence_length=LENGTH, batch_size=32, masking=masking, ids=ids, seed=3,
        arch=arch,
    )
    for x, y, w in data.take(batches):
        masked = x["token_ids"].numpy()
        positions, original, weights = x["mask_positions"].numpy(), y.numpy(), w.numpy()
        windows = masked.copy()
        for row in range(len(windows)):  # the windows before masking
            used = weights[row] > 0
            windows[row, positions[row, used]] = original[row, used]
        yield windows, masked, positions, original, weights


@pytest.mark.slow  # 10 s per case
@pytest.mark.parametrize("unit", ["word", "span"])
@pytest.mark.parametrize("name", ROWS)
def test_whole_words_are_selected_at_the_target_rate(family_streams, name, unit):
    starts, ids, tokens = family_streams(name)
    arch = get_architecture(name)
    masking = MaskingConfig(unit=unit, selection_rate=0.15)
    selected = maskable = masked_as_mask = kept = words_checked = 0
    special = np.array(ids.special_ids)
    # Distinct batches (the first epoch's windows, then fresh masks of the next).
    batches = -(-SELECTED_TOKENS // int(0.14 * LENGTH * 32))
    for windows, masked, positions, _, weights in _masked_batches(
        tokens, ids, masking, arch=arch, batches=batches
    ):
        for row in range(len(windows)):
            used = weights[row] > 0
            chosen = np.zeros(LENGTH, bool)
            chosen[positions[row, used]] = True
            assert not np.isin(windows[row][chosen], special).any()
            words = _words(windows[row], starts=starts, ids=ids)
            assert _partly_selected(words, chosen) == 0, (name, unit, windows[row])
            words_checked += len(np.unique(words[chosen]))
            selected += int(used.sum())
            maskable += int((~np.isin(windows[row], special)).sum())
            masked_as_mask += int((masked[row][chosen] == ids.mask_id).sum())
            kept += int((masked[row][chosen] == windows[row][chosen]).sum())
    print(f"{name} {unit}: {selected} selected, fraction {selected / maskable:.4f}, "
          f"{words_checked} words")
    assert selected >= SELECTED_TOKENS
    assert abs(selected / maskable - 0.15) < 0.01, selected / maskable
    # The 80/10/10 decision is per token: 80% [MASK], and about 10% + chance kept.
    assert abs(masked_as_mask / selected - 0.8) < 0.01
    assert 0.09 < kept / selected < 0.12
    assert words_checked < selected  # multi-token words among them


@pytest.mark.slow  # 25 s per family
@pytest.mark.parametrize("name", ROWS)
def test_span_lengths_follow_the_truncated_geometric_law(family_streams, name):
    starts, ids, tokens = family_streams(name)
    masking = MaskingConfig(unit="span", selection_rate=0.15)
    law = span_length_law(masking)

    @tf.function
    def select(window, seed):
        maskable = tf.reduce_all(window[:, None] != tf.constant(ids.special_ids)[None, :], -1)
        count = tf.cast(tf.round(tf.reduce_sum(tf.cast(maskable, tf.float32)) * 0.15), tf.int32)
        return select_whole_words(window, maskable, count, seed,
                                  masking=resolve_masking(masking), ids=ids)

    windows = read_windows(tokens, np.arange(num_windows(len(tokens), LENGTH)),
                           sequence_length=LENGTH, ids=ids)
    special = np.isin(windows, ids.special_ids)
    histogram = np.zeros(masking.max_span + 1)
    selected = 0
    for epoch in range(8):
        for index, window in enumerate(windows):
            chosen, units, cut = select(tf.constant(window), tf.constant([epoch, index], tf.int64))
            chosen, units, cut = chosen.numpy(), units.numpy(), int(cut)
            selected += int(chosen.sum())
            words = _words(window, starts=starts, ids=ids)
            # Every span taken, the one cut to the budget at its drawn length (Wald's
            # identity); spans ended early by a special token carry no drawn length.
            for unit in set(units[chosen]) | ({cut} if cut >= 0 else set()):
                where = np.flatnonzero(units == unit)
                if special[index, where[-1] + 1]:
                    continue
                histogram[len(np.unique(words[where]))] += 1
    assert selected >= SELECTED_TOKENS
    assert histogram[0] == 0
    observed = histogram[1:] / histogram.sum()
    print(f"{name}: {int(histogram.sum())} spans, largest gap to the law "
          f"{np.abs(observed - law).max():.4f}")
    assert np.abs(observed - law).max() < 0.01, (observed.round(3), law.round(3))


def test_masks_are_a_pure_function_of_seed_epoch_and_window(family_streams):
    _, ids, tokens = family_streams("bert")
    masking = MaskingConfig(unit="span")
    arch = get_architecture("bert")
    first = [b[1] for b in _masked_batches(tokens, ids, masking, arch=arch, batches=3)]
    again = [b[1] for b in _masked_batches(tokens, ids, masking, arch=arch, batches=3)]
    np.testing.assert_array_equal(np.stack(first), np.stack(again))
    # Word and token masks of the same windows differ, so the unit took effect.
    token = [b[1] for b in _masked_batches(tokens, ids, dataclasses.replace(masking, unit="token"),
                                           arch=arch, batches=3)]
    assert not np.array_equal(np.stack(first), np.stack(token))


def test_slots_hold_every_selected_token(family_streams):
    _, ids, tokens = family_streams("albert")
    masking = MaskingConfig(unit="word", selection_rate=0.3)
    for _, _, positions, _, weights in _masked_batches(
        tokens, ids, masking, arch=get_architecture("albert"), batches=2
    ):
        assert positions.shape[1] == max_selections(LENGTH, 0.3)
        assert (weights.sum(axis=1) <= max_selections(LENGTH, 0.3)).all()
        assert weights.sum(axis=1).mean() > 0.9 * max_selections(LENGTH, 0.3)


@pytest.mark.parametrize("override, named", [
    ("masking.unit=words", "'words'"),
    ("masking.eval_unit=phrase", "'phrase'"),
    ("masking.segmenter=mecab", "'mecab'"),
    ("masking.span_p=0", "span_p=0"),
    ("masking.max_span=0", "max_span=0"),
])
def test_bad_masking_values_are_named(override, named):
    from mlm.config import apply_overrides

    with pytest.raises(MlmError, match=named):
        apply_overrides(load_recipe("bert_test"), ["masking.unit=word", override])


def test_a_segmenter_without_word_masking_is_refused():
    from mlm.config import apply_overrides

    with pytest.raises(MlmError, match="masking.unit=word"):
        apply_overrides(load_recipe("bert_test"), ["masking.segmenter=jieba"])
