"""The masked-LM head of a HuggingFace checkpoint folder, by `model_type`.

keras-hub's `utils/transformers` converters port only the backbone of a
`*ForMaskedLM` checkpoint; `port_masked_lm_head` ports the head too (dense,
layer norm, decoder bias; the decoder is tied to the token embedding), so a
folder written by `mlm export --format transformers` loads back with the
logits it was exported with. `mlm.run.hf_export` writes the same names.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class HeadNames:
    """safetensors names of one `*ForMaskedLM` head (keras-hub's `MaskedLMHead`)."""

    # The Linear after the encoder (then gelu), and the layer norm after it.
    dense: str
    norm: str
    # The tied decoder (its weight is the token embedding; "": none written) and its
    # output bias.
    decoder: str
    bias: str


HEADS = {
    "albert": HeadNames("predictions.dense", "predictions.LayerNorm", "predictions.decoder",
                        "predictions.bias"),
    "bert": HeadNames("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
                      "cls.predictions.decoder", "cls.predictions.bias"),
    "roberta": HeadNames("lm_head.dense", "lm_head.layer_norm", "lm_head.decoder",
                         "lm_head.bias"),
    "xlm-roberta": HeadNames("lm_head.dense", "lm_head.layer_norm", "lm_head.decoder",
                             "lm_head.bias"),
    # Not the legacy head (`"legacy": false`): the decoder is the token embedding
    # itself, no parameter of its own. keras-hub has no DeBERTa converter back.
    "deberta-v2": HeadNames("lm_predictions.lm_head.dense", "lm_predictions.lm_head.LayerNorm",
                            "", "lm_predictions.lm_head.bias"),
    "fnet": HeadNames("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
                      "cls.predictions.decoder", "cls.predictions.bias"),
    "distilbert": HeadNames("vocab_transform", "vocab_layer_norm", "vocab_projector",
                            "vocab_projector.bias"),
}


def head_tensors(folder: Path) -> dict[str, np.ndarray] | None:
    """The head's arrays of a HuggingFace folder, by role; None if it has no known head."""
    folder = Path(folder)
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    weights = folder / "model.safetensors"
    if model_type not in HEADS or not weights.is_file():
        return None
    from safetensors import safe_open

    names = HEADS[model_type]
    wanted = {
        "kernel": f"{names.dense}.weight", "dense_bias": f"{names.dense}.bias",
        "gamma": f"{names.norm}.weight", "beta": f"{names.norm}.bias", "bias": names.bias,
    }
    with safe_open(str(weights), framework="numpy") as f:
        keys = set(f.keys())
        if not all(key in keys for key in wanted.values()):
            return None
        return {role: f.get_tensor(key) for role, key in wanted.items()}


def port_masked_lm_head(task, folder: Path) -> bool:
    """Sets `task`'s MaskedLM head from HuggingFace folder `folder`; whether it had one."""
    tensors = None if not Path(folder).is_dir() else head_tensors(folder)
    if tensors is None:
        return False
    head = task.masked_lm_head
    head._intermediate_dense.kernel.assign(tensors["kernel"].T)  # torch (out, in) -> (in, out)
    head._intermediate_dense.bias.assign(tensors["dense_bias"])
    head._intermediate_layer_norm.gamma.assign(tensors["gamma"])
    head._intermediate_layer_norm.beta.assign(tensors["beta"])
    head._bias.assign(tensors["bias"])
    return True
