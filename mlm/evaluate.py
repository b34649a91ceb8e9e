"""Held-out masked-token metrics: accuracy, masked loss and perplexity."""

import math

import keras
import numpy as np

from mlm.config import MaskingConfig
from mlm.pipeline import TokenIds, evaluation_dataset, num_windows


def metric_objects():
    """Weighted metrics compiled into every task: exact over all masked tokens.

    Keras averages the compiled loss per batch; these accumulate
    `sum(w * value) / sum(w)` over every masked token of every batch instead.
    """
    return [
        keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
        keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="masked_loss"),
    ]


def compile_for_evaluation(task) -> None:
    """Compiles a loaded task with the metrics `evaluate_tokens` reads."""
    task.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"
        ),
        weighted_metrics=metric_objects(),
    )


def evaluate_tokens(
    task,
    tokens: np.ndarray,
    *,
    sequence_length: int,
    masking: MaskingConfig,
    ids: TokenIds,
    batch_size: int,
    seed: int,
    max_batches: int = 0,
    segment_ids: bool = True,
) -> dict:
    """Masked-token metrics of `task` on held-out windows with fixed masks.

    Returns:
        `{"loss", "accuracy", "perplexity", "windows"}`; the loss is the
        mean cross-entropy over masked tokens and perplexity its exponential.
    """
    ds = evaluation_dataset(
        tokens, sequence_length=sequence_length, batch_size=batch_size, masking=masking,
        ids=ids, seed=seed, max_batches=max_batches, segment_ids=segment_ids,
    )
    windows = num_windows(len(tokens), sequence_length)
    if max_batches:
        windows = min(windows, max_batches * batch_size)
    # Passing the step count keeps keras from warning that the data "ran out".
    logs = task.evaluate(ds, steps=math.ceil(windows / batch_size), return_dict=True, verbose=0)
    task.reset_metrics()
    loss = float(logs["masked_loss"])
    return {
        "loss": loss,
        "accuracy": float(logs["accuracy"]),
        "perplexity": math.exp(min(loss, 700.0)),
        "windows": windows,
    }


def evaluate_preset(
    preset: str,
    *,
    paths: list[str],
    text_column: str = "text",
    batch_size: int = 32,
    max_batches: int = 0,
    seed: int = 0,
) -> dict:
    """Masked-token metrics of a saved preset on every document of `paths`.

    The preset's own tokenizer and sequence length are used; masks are fixed
    by `seed`, so two presets evaluated on the same files see the same masks.
    """
    import tempfile
    from pathlib import Path

    from mlm import corpus, shards
    from mlm.architectures import architecture_of_backbone
    from mlm.config import CorpusConfig
    from mlm.errors import MlmError
    from mlm.hub import load_masked_lm

    if batch_size < 1:
        raise MlmError(f"--batch-size must be at least 1, but received batch_size={batch_size}.")
    task = load_masked_lm(preset)
    # Windows arrive tokenized and masked from mlm.pipeline: no preprocessing in evaluate().
    preprocessor, task.preprocessor = task.preprocessor, None
    source = corpus.resolve_corpus(
        CorpusConfig(paths=tuple(paths), text_column=text_column, held_out_fraction=0.0)
    )
    with tempfile.TemporaryDirectory() as tmp:
        cache = shards.load_or_build_cache(
            {"train": lambda: corpus.iter_documents(source, split="train"), "held_out": list},
            preprocessor.tokenizer, cache_root=Path(tmp), key="eval", progress=False,
        )
        compile_for_evaluation(task)
        return evaluate_tokens(
            task, cache.tokens("train"), sequence_length=preprocessor.sequence_length,
            masking=MaskingConfig(
                selection_rate=preprocessor.mask_selection_rate,
                mask_token_rate=preprocessor.mask_token_rate,
                random_token_rate=preprocessor.random_token_rate,
            ),
            ids=TokenIds.from_tokenizer(preprocessor.tokenizer), batch_size=batch_size,
            seed=seed, max_batches=max_batches,
            segment_ids=architecture_of_backbone(task.backbone).uses_segment_ids,
        )
