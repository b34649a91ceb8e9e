"""Fill-mask: the top-k tokens a MaskedLM predicts for each [MASK] in a text."""

import keras
import numpy as np

from mlm.architectures import architecture_of_backbone
from mlm.errors import MlmError


def fill_mask(task, text: str, *, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """Predicts the `top_k` fillers of every mask token in `text`.

    The mask token is written literally (e.g. `[MASK]` for BERT); the text
    around it is tokenized by the task's own tokenizer.

    Args:
        task: a keras-hub `MaskedLM` with a preprocessor.
        text: the text, with one or more mask tokens.
        top_k: candidates per mask.

    Returns:
        One list per mask, of `(token, probability)` pairs, best first.

    Example:
    ```python
    task = keras_hub.models.MaskedLM.from_preset("runs/demo/preset")
    fill_mask(task, "In the beginning God created the [MASK].")
    ```
    """
    if top_k < 1:
        raise MlmError(f"top_k must be at least 1, but received top_k={top_k}.")
    tokenizer = task.preprocessor.tokenizer
    mask_token = mask_token_of(tokenizer)
    pieces = text.split(mask_token)
    if len(pieces) < 2:
        raise MlmError(
            f"the text has no {mask_token} token; write {mask_token} where a word is missing."
        )
    token_ids = [tokenizer.start_token_id]
    positions = []
    for i, piece in enumerate(pieces):
        if i < len(pieces) - 1:
            # The space before a mask belongs to the masked word (byte-level
            # BPE would otherwise make it a token of its own).
            piece = piece.rstrip()
        if piece.strip():
            token_ids.extend(int(t) for t in np.asarray(tokenizer(piece)).tolist())
        if i < len(pieces) - 1:
            positions.append(len(token_ids))
            token_ids.append(tokenizer.mask_token_id)
    token_ids.append(tokenizer.end_token_id)
    max_length = getattr(task.backbone, "max_sequence_length", None)  # None: rotary (RoFormerV2)
    if max_length is not None and len(token_ids) > max_length:
        raise MlmError(
            f"the text is {len(token_ids)} tokens long, but the model takes at most "
            f"{max_length}; shorten it."
        )
    x = architecture_of_backbone(task.backbone).model_inputs(
        np.array([token_ids], dtype="int32"), np.array([positions], dtype="int32"),
        pad_id=tokenizer.pad_token_id,
    )
    # Calling the model runs no preprocessing (predict_on_batch would tokenize x again).
    logits = keras.ops.convert_to_numpy(task(x, training=False))[0]  # (num_masks, vocab)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    results = []
    for row in probs:
        best = np.argsort(-row)[:top_k]
        results.append([(tokenizer.id_to_token(int(i)), float(row[i])) for i in best])
    return results


def mask_token_of(tokenizer) -> str:
    """The mask token as written in text, e.g. "[MASK]" or "<mask>"."""
    # XLMRobertaTokenizer has a mask_token_id but no mask_token attribute.
    token = getattr(tokenizer, "mask_token", None)
    return token if token is not None else str(tokenizer.id_to_token(tokenizer.mask_token_id))
