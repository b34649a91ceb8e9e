"""The masked-LM head of a HuggingFace checkpoint folder, by `model_type`.

keras-hub's `utils/transformers` converters port only the backbone of a
`*ForMaskedLM` checkpoint; `port_masked_lm_head` ports the head too (dense,
layer norm, decoder bias; the decoder is tied to the token embedding), so a
folder written by `mlm export --format transformers` loads back with the
logits it was exported with. The head's weight names are those of the
architecture row whose `hf.model_type` is the folder's (`mlm.architectures`),
the names `mlm.run.hf_export` writes.
"""

import json
from pathlib import Path

import numpy as np

from mlm.architectures import architecture_of_hf_model_type


def head_tensors(folder: Path) -> dict[str, np.ndarray] | None:
    """The head's arrays of a HuggingFace folder, by role; None if it has no known head."""
    folder = Path(folder)
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    weights = folder / "model.safetensors"
    row = architecture_of_hf_model_type(model_type)
    if row is None or not weights.is_file():
        return None
    from safetensors import safe_open

    names = row.hf.head
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
