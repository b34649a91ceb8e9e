"""One table: architecture name -> keras-hub classes, tokenizer family, HF export.

Everything mlm knows per architecture lives in its row, the HuggingFace
transformers export included (`Architecture.hf`: the `*ForMaskedLM` class and
its masked-LM head's weight names; the code writing the weights is in
`mlm.run.hf_export`). Adding an architecture is a row here plus a recipe in
`presets/`.
"""

import contextlib
import dataclasses

import numpy as np

from mlm.errors import MlmError


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


@dataclasses.dataclass(frozen=True)
class HfFacts:
    """What one architecture is as a HuggingFace transformers checkpoint.

    `mlm.run.hf_export` writes it, `mlm.hf_head` reads its head back; a
    folder's `config.json` `model_type` finds its row with
    `architecture_of_hf_model_type`.
    """

    # `config.json`'s `model_type`; one row per model_type.
    model_type: str
    # The `*ForMaskedLM` class written in `config.json`'s `architectures`.
    hf_class: str
    # `tokenizer_class` of `tokenizer_config.json`.
    tokenizer_class: str
    # The masked-LM head's weight names in `model.safetensors`.
    head: HeadNames


@dataclasses.dataclass(frozen=True)
class Architecture:
    """The keras-hub classes and conventions of one encoder family.

    Class names are resolved lazily from `keras_hub.models`, so importing
    this module does not import keras-hub.
    """

    # Row name, as written in a recipe's `model.architecture`.
    name: str
    # `keras_hub.models` class names.
    backbone: str
    tokenizer: str
    preprocessor: str
    masked_lm: str
    # Vocabulary trainer in `mlm.data.vocab` that produces this tokenizer's assets:
    # "wordpiece", "sentencepiece" or "byte_bpe".
    tokenizer_family: str
    # The backbone's inputs besides `token_ids`: some of "segment_ids" and
    # "padding_mask" (FNet and RoFormerV2 take no padding mask, DistilBERT,
    # DeBERTaV3 and RoBERTa no segment ids).
    inputs: tuple[str, ...]
    # The special tokens the vocabulary trainer puts first, in id order, as
    # this keras-hub tokenizer looks them up (by piece, or by fixed id). The
    # only list of them: `mlm.data.vocab` takes its defaults from these rows.
    special_tokens: tuple[str, ...]
    # `keras_hub.models` class fine-tuned by `mlm finetune`; its preprocessor is
    # the class's `preprocessor_cls`.
    text_classifier: str = ""
    # The HuggingFace transformers checkpoint it exports as; None: not exportable
    # (no transformers masked-LM class computes what its keras-hub backbone does).
    hf: HfFacts | None = None

    def cls(self, role: str):
        """Returns the keras-hub class for `role` ("backbone", "tokenizer", ...)."""
        import keras_hub

        return getattr(keras_hub.models, getattr(self, role))

    def model_inputs(self, token_ids, mask_positions, *, pad_id: int) -> dict:
        """The MaskedLM task's inputs from (masked) token ids, for this backbone.

        The one place inputs are built: the training and evaluation pipeline
        calls it on `tf.Tensor`s inside `tf.data`, prediction on numpy arrays.
        Masking never writes `pad_id`, so the padding mask of masked ids is the
        padding mask of the window.

        Args:
            token_ids: `(batch, length)` int32 ids, masks already applied.
            mask_positions: `(batch, num_masks)` int32 positions to predict.
            pad_id: the tokenizer's padding id.
        """
        x = {"token_ids": token_ids, "mask_positions": mask_positions}
        if "padding_mask" in self.inputs:
            # int32, not bool: bool inputs do not distribute under `tf.distribute`.
            x["padding_mask"] = _as_int32(token_ids != pad_id)
        if "segment_ids" in self.inputs:
            x["segment_ids"] = token_ids * 0
        return x


_BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_BERT_HEAD = HeadNames("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
                       "cls.predictions.decoder", "cls.predictions.bias")
_ROBERTA_HEAD = HeadNames("lm_head.dense", "lm_head.layer_norm", "lm_head.decoder",
                          "lm_head.bias")

ARCHITECTURES = {
    row.name: row
    for row in (
        Architecture(
            name="bert", backbone="BertBackbone", tokenizer="BertTokenizer",
            preprocessor="BertMaskedLMPreprocessor", masked_lm="BertMaskedLM",
            text_classifier="BertTextClassifier",
            tokenizer_family="wordpiece", inputs=("segment_ids", "padding_mask"),
            special_tokens=_BERT_SPECIALS,
            hf=HfFacts("bert", "BertForMaskedLM", "BertTokenizer", head=_BERT_HEAD),
        ),
        Architecture(
            name="distil_bert", backbone="DistilBertBackbone", tokenizer="DistilBertTokenizer",
            preprocessor="DistilBertMaskedLMPreprocessor", masked_lm="DistilBertMaskedLM",
            text_classifier="DistilBertTextClassifier",
            tokenizer_family="wordpiece", inputs=("padding_mask",),
            special_tokens=_BERT_SPECIALS,
            hf=HfFacts("distilbert", "DistilBertForMaskedLM", "DistilBertTokenizer",
                       head=HeadNames("vocab_transform", "vocab_layer_norm", "vocab_projector",
                                      "vocab_projector.bias")),
        ),
        Architecture(
            name="roformer_v2", backbone="RoformerV2Backbone", tokenizer="RoformerV2Tokenizer",
            preprocessor="RoformerV2MaskedLMPreprocessor", masked_lm="RoformerV2MaskedLM",
            text_classifier="RoformerV2TextClassifier",
            tokenizer_family="wordpiece", inputs=("segment_ids",),
            special_tokens=_BERT_SPECIALS,
            # Not exportable: transformers' RoFormer is the first version, with biases
            # and layer norms; RoFormerV2 has RMS normalisation and no biases.
            hf=None,
        ),
        Architecture(
            name="albert", backbone="AlbertBackbone", tokenizer="AlbertTokenizer",
            preprocessor="AlbertMaskedLMPreprocessor", masked_lm="AlbertMaskedLM",
            text_classifier="AlbertTextClassifier",
            tokenizer_family="sentencepiece", inputs=("segment_ids", "padding_mask"),
            # AlbertTokenizer's defaults: pad_id=0, unk_id=1.
            special_tokens=("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"),
            hf=HfFacts("albert", "AlbertForMaskedLM", "AlbertTokenizer",
                       head=HeadNames("predictions.dense", "predictions.LayerNorm",
                                      "predictions.decoder", "predictions.bias")),
        ),
        Architecture(
            name="f_net", backbone="FNetBackbone", tokenizer="FNetTokenizer",
            preprocessor="FNetMaskedLMPreprocessor", masked_lm="FNetMaskedLM",
            text_classifier="FNetTextClassifier",
            tokenizer_family="sentencepiece", inputs=("segment_ids",),
            special_tokens=("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"),
            hf=HfFacts("fnet", "FNetForMaskedLM", "PreTrainedTokenizerFast", head=_BERT_HEAD),
        ),
        Architecture(
            name="deberta_v3", backbone="DebertaV3Backbone", tokenizer="DebertaV3Tokenizer",
            preprocessor="DebertaV3MaskedLMPreprocessor", masked_lm="DebertaV3MaskedLM",
            text_classifier="DebertaV3TextClassifier",
            tokenizer_family="sentencepiece", inputs=("padding_mask",),
            # DebertaV3Tokenizer: pad_id=0, cls 1, sep 2, unk_id=3; "[MASK]"
            # kept in the model so its id is looked up, not appended.
            special_tokens=("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"),
            # Not the legacy head (`"legacy": false`): the decoder is the token embedding
            # itself, no parameter of its own. keras-hub has no DeBERTa converter back.
            hf=HfFacts("deberta-v2", "DebertaV2ForMaskedLM", "PreTrainedTokenizerFast",
                       head=HeadNames("lm_predictions.lm_head.dense",
                                      "lm_predictions.lm_head.LayerNorm", "",
                                      "lm_predictions.lm_head.bias")),
        ),
        Architecture(
            name="xlm_roberta", backbone="XLMRobertaBackbone", tokenizer="XLMRobertaTokenizer",
            preprocessor="XLMRobertaMaskedLMPreprocessor", masked_lm="XLMRobertaMaskedLM",
            text_classifier="XLMRobertaTextClassifier",
            tokenizer_family="sentencepiece", inputs=("padding_mask",),
            # The fairseq layout: XLMRobertaTokenizer shifts the model's ids by
            # one to put "<pad>" at 1 and appends "<mask>" after the last piece.
            special_tokens=("<unk>", "<s>", "</s>"),
            hf=HfFacts("xlm-roberta", "XLMRobertaForMaskedLM", "XLMRobertaTokenizer",
                       head=_ROBERTA_HEAD),
        ),
        Architecture(
            name="roberta", backbone="RobertaBackbone", tokenizer="RobertaTokenizer",
            preprocessor="RobertaMaskedLMPreprocessor", masked_lm="RobertaMaskedLM",
            text_classifier="RobertaTextClassifier",
            tokenizer_family="byte_bpe", inputs=("padding_mask",),
            special_tokens=("<s>", "<pad>", "</s>", "<unk>", "<mask>"),
            hf=HfFacts("roberta", "RobertaForMaskedLM", "RobertaTokenizer", head=_ROBERTA_HEAD),
        ),
    )
}


def _as_int32(values):
    if isinstance(values, np.ndarray):
        return values.astype(np.int32)
    import tensorflow as tf

    return tf.cast(values, tf.int32)


@contextlib.contextmanager
def preprocessor_detached(task):
    """Runs the block with `task.preprocessor = None`, yielding the preprocessor.

    mlm trains and evaluates on batches that `mlm.data.pipeline` has already
    tokenized and masked, so the task must not preprocess them again; the
    preprocessor is put back afterwards, whatever happens in the block.
    """
    preprocessor = task.preprocessor
    task.preprocessor = None
    try:
        yield preprocessor
    finally:
        task.preprocessor = preprocessor


@contextlib.contextmanager
def preprocessor_attached(task, preprocessor):
    """Runs the block with `preprocessor` attached (to save a complete preset), then restores."""
    before = task.preprocessor
    task.preprocessor = preprocessor
    try:
        yield task
    finally:
        task.preprocessor = before


def get_architecture(name: str) -> Architecture:
    """Looks up an architecture row by name."""
    if name not in ARCHITECTURES:
        raise MlmError(
            f"unknown architecture '{name}'; set model.architecture to one of: "
            f"{', '.join(sorted(ARCHITECTURES))}."
        )
    return ARCHITECTURES[name]


def architecture_of_backbone(backbone) -> Architecture:
    """Finds the row whose backbone class is `type(backbone)`."""
    for arch in ARCHITECTURES.values():
        if type(backbone).__name__ == arch.backbone:
            return arch
    raise MlmError(
        f"backbone class {type(backbone).__name__} has no MaskedLM support in mlm; "
        f"supported: {', '.join(a.backbone for a in ARCHITECTURES.values())}."
    )



def architecture_of_hf_model_type(model_type) -> Architecture | None:
    """The row exported as HuggingFace `model_type` (a `config.json`'s); None if no row is."""
    for arch in ARCHITECTURES.values():
        if arch.hf is not None and arch.hf.model_type == model_type:
            return arch
    return None
