"""One table: architecture name -> keras-hub classes and tokenizer family.

Everything the pipeline needs to know per architecture lives in its row;
adding an architecture is a row here plus a recipe in `presets/`.
"""

import dataclasses

from mlm.errors import MlmError


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
    # Vocabulary trainer in `mlm.vocab` that produces this tokenizer's assets.
    tokenizer_family: str
    # Whether the backbone takes a `segment_ids` input.
    uses_segment_ids: bool

    def cls(self, role: str):
        """Returns the keras-hub class for `role` ("backbone", "tokenizer", ...)."""
        import keras_hub

        return getattr(keras_hub.models, getattr(self, role))


ARCHITECTURES = {
    "bert": Architecture(
        name="bert",
        backbone="BertBackbone",
        tokenizer="BertTokenizer",
        preprocessor="BertMaskedLMPreprocessor",
        masked_lm="BertMaskedLM",
        tokenizer_family="wordpiece",
        uses_segment_ids=True,
    ),
}


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
