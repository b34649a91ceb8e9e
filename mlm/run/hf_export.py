"""Export a MaskedLM preset as a HuggingFace `transformers` checkpoint folder.

The inverse of keras-hub's `utils/transformers/convert_*.py`: the weights are
read from the keras-hub task as numpy arrays and written with
`safetensors.numpy`, so writing needs neither torch nor transformers. The
folder holds `config.json`, `model.safetensors` (backbone and masked-LM head),
`tokenizer.json` (built with `tokenizers` to give keras-hub's ids) with the
family's own vocabulary files, `tokenizer_config.json`,
`special_tokens_map.json` and the preset's model card. What each architecture
is in transformers (`model_type`, classes, head names) is its row's `hf` in
`mlm.architectures`; this module holds the code that writes it.

```python
from mlm.run.hf_export import export_transformers
export_transformers("runs/demo", out="my_bert_hf")          # newest checkpoint
```
"""

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mlm import atomic
from mlm.architectures import ARCHITECTURES, Architecture, architecture_of_backbone
from mlm.errors import MlmError

MODEL_CARD = "README.md"


@dataclasses.dataclass(frozen=True)
class _Writer:
    """The code that writes one HuggingFace `model_type` (its facts: the row's `hf`)."""

    # (task) -> the `config.json` fields besides model_type and architectures.
    config: Callable
    # (task) -> {safetensors key: float32 array}.
    weights: Callable


def export_transformers(
    source: Path, *, out: Path, step: int | None = None, overwrite: bool = False
) -> Path:
    """Writes the MaskedLM of a run or preset folder as a transformers checkpoint.

    Args:
        source: a run directory (its checkpoint at `step`, the newest if None)
            or a keras-hub preset folder with a MaskedLM task.
        out: the folder to write; replaced only with `overwrite`.
        step: a checkpoint step of the run; only for a run directory.
        overwrite: replace an existing `out`.

    Returns:
        `out`, complete: it is written through a temporary folder and renamed.
    """
    out = Path(out)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise MlmError(f"output {out} already exists; pass --overwrite or choose another --out.")
    preset, card = _resolve_source(Path(source), step=step)
    task = _load_task(preset)
    row = _exportable_row(task)
    with atomic.writing_dir(out) as tmp:
        _write_model(task, row=row, folder=tmp)
        write_tokenizer(task.preprocessor.tokenizer, row=row, folder=tmp,
                        max_length=_max_length(task))
        if card is not None:
            shutil.copy(card, tmp / MODEL_CARD)
    return out


def _resolve_source(source: Path, *, step: int | None) -> tuple[Path, Path | None]:
    """(preset folder, model card or None) for a run directory or a preset folder."""
    from mlm.run import checkpoints

    if not source.is_dir():
        raise MlmError(f"{source} is not a run directory or a preset folder; check the path.")
    if (source / "checkpoints").is_dir() or not (source / "config.json").is_file():
        preset = checkpoints.find_checkpoint(source, step=step) / "preset"
        cards = (preset / MODEL_CARD, source / "preset" / MODEL_CARD)
    else:
        if step is not None:
            raise MlmError(f"--step needs a run directory, but {source} is a preset folder.")
        preset, cards = source, (source / MODEL_CARD,)
    return preset, next((c for c in cards if c.is_file()), None)


def _load_task(preset: Path):
    from mlm.preset_loading import load_masked_lm, preset_has_masked_lm_head

    if not preset_has_masked_lm_head(str(preset)):
        raise MlmError(
            f"preset {preset} has no MaskedLM head (a backbone only); mlm exports masked "
            f"language models only: train a head first with mlm continue --preset {preset}."
        )
    return load_masked_lm(str(preset))


def _exportable_row(task) -> Architecture:
    row = architecture_of_backbone(task.backbone)
    if row.hf is None:
        supported = sorted(name for name, arch in ARCHITECTURES.items() if arch.hf is not None)
        raise MlmError(
            f"architecture {row.name} cannot be exported to transformers (no transformers "
            f"masked-LM class computes what keras-hub's {row.backbone} does); "
            f"supported: {', '.join(supported)}."
        )
    return row


def _max_length(task) -> int:
    return int(getattr(task.backbone, "max_sequence_length", None) or 512)


def _write_model(task, *, row: Architecture, folder: Path) -> None:
    from safetensors.numpy import save_file

    writer = _WRITERS[row.hf.model_type]
    config = {
        "architectures": [row.hf.hf_class],
        "model_type": row.hf.model_type,
        **writer.config(task),
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
    atomic.write_json(folder / "config.json", config)
    tensors = {key: np.ascontiguousarray(value, dtype=np.float32)
               for key, value in writer.weights(task).items()}
    # "pt": transformers reads safetensors files without this as another framework's.
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


# Weights. keras-hub kernels are (in, out), or (in, heads, head_dim) and
# (heads, head_dim, out) for attention; torch's Linear weights are (out, in).


def _np(variable) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float32)


def _linear(dense) -> tuple[np.ndarray, np.ndarray]:
    """(weight (out, in), bias (out,)) of a keras Dense or EinsumDense."""
    kernel, bias = _np(dense.kernel), _np(dense.bias)
    if kernel.ndim == 3 and bias.ndim == 1:  # attention output: (heads, head_dim, out)
        kernel = kernel.reshape(-1, kernel.shape[-1])
    else:  # query/key/value: (in, heads, head_dim)
        kernel = kernel.reshape(kernel.shape[0], -1)
    return kernel.T, bias.reshape(-1)


def _put_linear(tensors: dict, name: str, dense) -> None:
    tensors[f"{name}.weight"], tensors[f"{name}.bias"] = _linear(dense)


def _put_norm(tensors: dict, name: str, norm) -> None:
    tensors[f"{name}.weight"], tensors[f"{name}.bias"] = _np(norm.gamma), _np(norm.beta)


# The torch names of a keras-hub `TransformerEncoder`'s sublayers, per family.
_BERT_LAYER = {
    "query": "attention.self.query", "key": "attention.self.key",
    "value": "attention.self.value", "output": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm", "intermediate": "intermediate.dense",
    "ffn_output": "output.dense", "ffn_norm": "output.LayerNorm",
}
_DISTIL_BERT_LAYER = {
    "query": "attention.q_lin", "key": "attention.k_lin", "value": "attention.v_lin",
    "output": "attention.out_lin", "attention_norm": "sa_layer_norm",
    "intermediate": "ffn.lin1", "ffn_output": "ffn.lin2", "ffn_norm": "output_layer_norm",
}


def _put_encoder_layers(tensors: dict, backbone, *, prefix: str, names: dict) -> None:
    for i in range(backbone.num_layers):
        _put_encoder_layer(tensors, backbone.get_layer(f"transformer_layer_{i}"),
                           prefix=f"{prefix}{i}.", names=names)


def _put_encoder_layer(tensors: dict, block, *, prefix: str, names: dict) -> None:
    """One keras-hub `TransformerEncoder` (post-norm) under torch names `prefix + names[...]`."""
    attention, p = block._self_attention_layer, prefix
    _put_linear(tensors, p + names["query"], attention.query_dense)
    _put_linear(tensors, p + names["key"], attention.key_dense)
    _put_linear(tensors, p + names["value"], attention.value_dense)
    _put_linear(tensors, p + names["output"], attention.output_dense)
    _put_norm(tensors, p + names["attention_norm"], block._self_attention_layer_norm)
    _put_linear(tensors, p + names["intermediate"], block._feedforward_intermediate_dense)
    _put_linear(tensors, p + names["ffn_output"], block._feedforward_output_dense)
    _put_norm(tensors, p + names["ffn_norm"], block._feedforward_layer_norm)


def _put_head(tensors: dict, task) -> None:
    """keras-hub's `MaskedLMHead`: dense + gelu, layer norm, tied decoder and its bias."""
    names, head = architecture_of_backbone(task.backbone).hf.head, task.masked_lm_head
    _put_linear(tensors, names.dense, head._intermediate_dense)
    _put_norm(tensors, names.norm, head._intermediate_layer_norm)
    tensors[names.bias] = _np(head._bias)
    if names.decoder:
        tensors[f"{names.decoder}.weight"] = _np(task.backbone.token_embedding.embeddings)
        tensors[f"{names.decoder}.bias"] = tensors[names.bias]


def _bert_weights(task) -> dict:
    backbone, tensors = task.backbone, {}
    tensors["bert.embeddings.word_embeddings.weight"] = _np(
        backbone.get_layer("token_embedding").embeddings)
    tensors["bert.embeddings.position_embeddings.weight"] = _np(
        backbone.get_layer("position_embedding").position_embeddings)
    tensors["bert.embeddings.token_type_embeddings.weight"] = _np(
        backbone.get_layer("segment_embedding").embeddings)
    _put_norm(tensors, "bert.embeddings.LayerNorm", backbone.get_layer("embeddings_layer_norm"))
    _put_encoder_layers(tensors, backbone, prefix="bert.encoder.layer.", names=_BERT_LAYER)
    # Not used by BertForMaskedLM (it ignores them), but kept so that keras-hub's
    # converter, which needs a pooler, restores the preset's classifier start.
    _put_linear(tensors, "bert.pooler.dense", backbone.get_layer("pooled_dense"))
    _put_head(tensors, task)
    return tensors


def _bert_config(task) -> dict:
    backbone = task.backbone
    return {
        **_encoder_sizes(backbone),
        "max_position_embeddings": backbone.max_sequence_length,
        "type_vocab_size": backbone.num_segments,
        # keras-hub's BertBackbone uses the tanh approximation of gelu.
        "hidden_act": "gelu_new",
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
    }


def _encoder_sizes(backbone) -> dict:
    return {
        "vocab_size": backbone.vocabulary_size,
        "hidden_size": backbone.hidden_dim,
        "num_hidden_layers": backbone.num_layers,
        "num_attention_heads": backbone.num_heads,
        "intermediate_size": backbone.intermediate_dim,
        "hidden_dropout_prob": float(backbone.dropout),
        "attention_probs_dropout_prob": float(backbone.dropout),
    }


# RoBERTa's position ids start after the padding id (1): rows 0 and 1 are unused.
_ROBERTA_POSITION_OFFSET = 2


def _roberta_weights(task) -> dict:
    backbone, tensors = task.backbone, {}
    positions = _np(backbone.embeddings.position_embedding.position_embeddings)
    hidden = positions.shape[1]
    tensors["roberta.embeddings.word_embeddings.weight"] = _np(
        backbone.token_embedding.embeddings)
    tensors["roberta.embeddings.position_embeddings.weight"] = np.concatenate(
        [np.zeros((_ROBERTA_POSITION_OFFSET, hidden), np.float32), positions])
    # keras-hub's RoBERTa has no segment embedding: one all-zero type.
    tensors["roberta.embeddings.token_type_embeddings.weight"] = np.zeros((1, hidden), np.float32)
    _put_norm(tensors, "roberta.embeddings.LayerNorm", backbone.embeddings_layer_norm)
    _put_encoder_layers(tensors, backbone, prefix="roberta.encoder.layer.", names=_BERT_LAYER)
    _put_head(tensors, task)
    return tensors


def _roberta_config(task) -> dict:
    backbone = task.backbone
    tokenizer = task.preprocessor.tokenizer
    return {
        **_encoder_sizes(backbone),
        "max_position_embeddings": backbone.max_sequence_length + _ROBERTA_POSITION_OFFSET,
        "type_vocab_size": 1,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "pad_token_id": int(tokenizer.pad_token_id),
        "bos_token_id": int(tokenizer.start_token_id),
        "eos_token_id": int(tokenizer.end_token_id),
    }


def _distil_bert_weights(task) -> dict:
    backbone, tensors = task.backbone, {}
    embeddings = backbone.get_layer("token_and_position_embedding")
    tensors["distilbert.embeddings.word_embeddings.weight"] = _np(
        backbone.token_embedding.embeddings)
    tensors["distilbert.embeddings.position_embeddings.weight"] = _np(
        embeddings.position_embedding.position_embeddings)
    _put_norm(tensors, "distilbert.embeddings.LayerNorm", backbone.embeddings_layer_norm)
    _put_encoder_layers(tensors, backbone, prefix="distilbert.transformer.layer.",
                        names=_DISTIL_BERT_LAYER)
    _put_head(tensors, task)
    return tensors


def _distil_bert_config(task) -> dict:
    backbone = task.backbone
    return {
        "vocab_size": backbone.vocabulary_size,
        "dim": backbone.hidden_dim,
        "n_layers": backbone.num_layers,
        "n_heads": backbone.num_heads,
        "hidden_dim": backbone.intermediate_dim,
        "dropout": float(backbone.dropout),
        "attention_dropout": float(backbone.dropout),
        "max_position_embeddings": backbone.max_sequence_length,
        "activation": "gelu",
        "sinusoidal_pos_embds": False,
        "pad_token_id": 0,
    }


_ALBERT_LAYER = {
    "query": "attention.query", "key": "attention.key", "value": "attention.value",
    "output": "attention.dense", "attention_norm": "attention.LayerNorm",
    "intermediate": "ffn", "ffn_output": "ffn_output", "ffn_norm": "full_layer_layer_norm",
}


def _albert_weights(task) -> dict:
    backbone, tensors = task.backbone, {}
    tensors["albert.embeddings.word_embeddings.weight"] = _np(backbone.token_embedding.embeddings)
    tensors["albert.embeddings.position_embeddings.weight"] = _np(
        backbone.position_embedding.position_embeddings)
    tensors["albert.embeddings.token_type_embeddings.weight"] = _np(
        backbone.segment_embedding.embeddings)
    _put_norm(tensors, "albert.embeddings.LayerNorm", backbone.embeddings_layer_norm)
    _put_linear(tensors, "albert.encoder.embedding_hidden_mapping_in",
                backbone.embeddings_projection)
    # Layers are shared: group g's inner layers are reused by its share of the depth.
    for g in range(backbone.num_groups):
        for i in range(backbone.num_inner_repetitions):
            _put_encoder_layer(
                tensors, backbone.get_layer(f"group_{g}_inner_layer_{i}"),
                prefix=f"albert.encoder.albert_layer_groups.{g}.albert_layers.{i}.",
                names=_ALBERT_LAYER)
    _put_linear(tensors, "albert.pooler", backbone.pooled_dense)  # see `_bert_weights`
    _put_head(tensors, task)
    return tensors


def _albert_config(task) -> dict:
    backbone, tokenizer = task.backbone, task.preprocessor.tokenizer
    return {
        **_encoder_sizes(backbone),
        "embedding_size": backbone.embedding_dim,
        "num_hidden_groups": backbone.num_groups,
        "inner_group_num": backbone.num_inner_repetitions,
        "max_position_embeddings": backbone.max_sequence_length,
        "type_vocab_size": backbone.num_segments,
        # keras-hub's ALBERT uses the tanh approximation of gelu, head included.
        "hidden_act": "gelu_new",
        "layer_norm_eps": 1e-12,
        "classifier_dropout_prob": float(backbone.dropout),
        "pad_token_id": int(tokenizer.pad_token_id),
        "bos_token_id": int(tokenizer.start_token_id),
        "eos_token_id": int(tokenizer.end_token_id),
    }


def _deberta_v3_weights(task) -> dict:
    backbone, tensors = task.backbone, {}
    tensors["deberta.embeddings.word_embeddings.weight"] = _np(
        backbone.token_embedding.embeddings)
    _put_norm(tensors, "deberta.embeddings.LayerNorm", backbone.embeddings_layer_norm)
    relative = backbone.get_layer("rel_embedding")
    tensors["deberta.encoder.rel_embeddings.weight"] = _np(relative.rel_embeddings)
    _put_norm(tensors, "deberta.encoder.LayerNorm", relative.layer_norm)
    for i in range(backbone.num_layers):
        block = backbone.get_layer(f"disentangled_attention_encoder_layer_{i}")
        attention, p = block._self_attention_layer, f"deberta.encoder.layer.{i}."
        _put_linear(tensors, p + "attention.self.query_proj", attention._query_dense)
        _put_linear(tensors, p + "attention.self.key_proj", attention._key_dense)
        _put_linear(tensors, p + "attention.self.value_proj", attention._value_dense)
        _put_linear(tensors, p + "attention.output.dense", attention._output_dense)
        _put_norm(tensors, p + "attention.output.LayerNorm", block._self_attention_layer_norm)
        _put_linear(tensors, p + "intermediate.dense", block._feedforward_intermediate_dense)
        _put_linear(tensors, p + "output.dense", block._feedforward_output_dense)
        _put_norm(tensors, p + "output.LayerNorm", block._feedforward_layer_norm)
    _put_head(tensors, task)
    return tensors


def _deberta_v3_config(task) -> dict:
    backbone = task.backbone
    return {
        **_encoder_sizes(backbone),
        "max_position_embeddings": backbone.max_sequence_length,
        # DeBERTaV3's disentangled attention: log-bucketed relative positions,
        # content-to-position and position-to-content terms with shared keys,
        # a normalised relative embedding, no absolute positions or segments.
        "relative_attention": True,
        "position_buckets": backbone.bucket_size,
        "max_relative_positions": -1,
        "pos_att_type": ["p2c", "c2p"],
        "share_att_key": True,
        "norm_rel_ebd": "layer_norm",
        "position_biased_input": False,
        "type_vocab_size": 0,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-7,
        "pad_token_id": int(task.preprocessor.tokenizer.pad_token_id),
        "legacy": False,
    }


def _f_net_weights(task) -> dict:
    backbone, tensors = task.backbone, {}
    tensors["fnet.embeddings.word_embeddings.weight"] = _np(backbone.token_embedding.embeddings)
    tensors["fnet.embeddings.position_embeddings.weight"] = _np(
        backbone.position_embedding.position_embeddings)
    tensors["fnet.embeddings.token_type_embeddings.weight"] = _np(
        backbone.segment_embedding.embeddings)
    _put_norm(tensors, "fnet.embeddings.LayerNorm", backbone.embeddings_layer_norm)
    _put_linear(tensors, "fnet.embeddings.projection", backbone.embedding_projection)
    for i in range(backbone.num_layers):
        block, p = backbone.get_layer(f"f_net_layer_{i}"), f"fnet.encoder.layer.{i}."
        # The Fourier mixing has no weights, only the layer norm after it.
        _put_norm(tensors, p + "fourier.output.LayerNorm", block._mixing_layer_norm)
        _put_linear(tensors, p + "intermediate.dense", block._intermediate_dense)
        _put_linear(tensors, p + "output.dense", block._output_dense)
        _put_norm(tensors, p + "output.LayerNorm", block._output_layer_norm)
    _put_linear(tensors, "fnet.pooler.dense", backbone.pooled_dense)
    _put_head(tensors, task)
    return tensors


def _f_net_config(task) -> dict:
    backbone, tokenizer = task.backbone, task.preprocessor.tokenizer
    return {
        "vocab_size": backbone.vocabulary_size,
        "hidden_size": backbone.hidden_dim,
        "num_hidden_layers": backbone.num_layers,
        "intermediate_size": backbone.intermediate_dim,
        "hidden_dropout_prob": float(backbone.dropout),
        "max_position_embeddings": backbone.max_sequence_length,
        "type_vocab_size": backbone.num_segments,
        # keras-hub's FNet uses the tanh approximation of gelu in the encoder.
        "hidden_act": "gelu_new",
        "layer_norm_eps": 1e-12,
        # torch.fft.fftn over (sequence, hidden), real part: keras-hub's `ops.fft2`.
        "use_tpu_fourier_optimizations": False,
        "pad_token_id": int(tokenizer.pad_token_id),
        "bos_token_id": int(tokenizer.start_token_id),
        "eos_token_id": int(tokenizer.end_token_id),
    }


# By the `hf.model_type` of the architecture rows that export; xlm-roberta is
# written as roberta is.
_WRITERS = {
    "bert": _Writer(_bert_config, _bert_weights),
    "roberta": _Writer(_roberta_config, _roberta_weights),
    "xlm-roberta": _Writer(_roberta_config, _roberta_weights),
    "albert": _Writer(_albert_config, _albert_weights),
    "deberta-v2": _Writer(_deberta_v3_config, _deberta_v3_weights),
    "fnet": _Writer(_f_net_config, _f_net_weights),
    "distilbert": _Writer(_distil_bert_config, _distil_bert_weights),
}


def write_tokenizer(tokenizer, *, row: Architecture, folder: Path, max_length: int) -> None:
    """Writes the tokenizer files of `tokenizer` (keras-hub) into `folder`."""
    from mlm.run import hf_tokenizer

    hf_tokenizer.write_tokenizer(tokenizer, family=row.tokenizer_family,
                                 tokenizer_class=row.hf.tokenizer_class, folder=folder,
                                 max_length=max_length)
