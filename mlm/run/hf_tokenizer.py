"""Tokenizer files that `transformers.AutoTokenizer` loads as a fast tokenizer.

From a keras-hub tokenizer: `tokenizer.json` (built with `tokenizers`, giving
the keras-hub tokenizer's ids, see `mlm.data.vocab.hf_tokenizer`), the
family's own vocabulary files (`vocab.txt`; `vocab.json` + `merges.txt`; the
sentencepiece model),
`tokenizer_config.json` and `special_tokens_map.json`. Needs no transformers.
"""

import json
import tempfile
from pathlib import Path

import tokenizers
from tokenizers import processors

from mlm import atomic
from mlm.errors import MlmError


def write_tokenizer(tokenizer, *, family: str, tokenizer_class: str, folder: Path,
                    max_length: int) -> None:
    """Writes the tokenizer files of keras-hub `tokenizer` into `folder`.

    Args:
        tokenizer: a keras-hub tokenizer of a MaskedLM preset.
        family: its vocabulary family ("wordpiece", "byte_bpe" or "sentencepiece").
        tokenizer_class: `tokenizer_config.json`'s class, e.g. "BertTokenizer".
        folder: the export folder (being written).
        max_length: the model's longest input, in tokens.
    """
    if family not in _WRITERS:
        raise MlmError(
            f"the {family} tokenizer family cannot be exported to transformers yet; "
            f"supported: {', '.join(sorted(_WRITERS))}."
        )
    roles = _special_tokens(tokenizer, family=family)
    options = {"tokenizer_class": tokenizer_class} if family == "sentencepiece" else {}
    fast, extra = _WRITERS[family](tokenizer, folder=folder, roles=roles, **options)
    fast.save(str(folder / "tokenizer.json"))
    special = {f"{role}_token": token for role, token in roles.items()}
    atomic.write_json(folder / "special_tokens_map.json", special)
    atomic.write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": tokenizer_class,
        "model_max_length": max_length,
        **extra,
        **special,
    })


def _special_tokens(tokenizer, *, family: str) -> dict[str, str]:
    """role ("cls", "sep", ...) -> token, as the keras-hub tokenizer uses them."""
    def token(token_id):
        return str(tokenizer.id_to_token(int(token_id)))

    if family == "sentencepiece":
        model = _model_proto(tokenizer)
        unknown = model.pieces[model.trainer_spec.unk_id].piece
    else:
        unknown = {"wordpiece": "[UNK]", "byte_bpe": "<unk>"}[family]
    start, end = token(tokenizer.start_token_id), token(tokenizer.end_token_id)
    roles = {"cls": start, "sep": end, "pad": token(tokenizer.pad_token_id),
             "mask": token(tokenizer.mask_token_id), "unk": unknown}
    if family != "wordpiece":
        roles.update(bos=start, eos=end)
    return roles


def _model_proto(tokenizer):
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(bytes(tokenizer.proto))
    return model


def _wordpiece(tokenizer, *, folder: Path, roles: dict):
    from mlm.data import vocab

    lines = [str(t) for t in tokenizer.vocabulary]
    atomic.write_text(folder / "vocab.txt", "\n".join(lines) + "\n")
    with tempfile.TemporaryDirectory(prefix="mlm_hf_vocab_") as tmp:
        (path,) = vocab.vocabulary_files(Path(tmp), family="wordpiece")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        fast = vocab.hf_tokenizer(path, family="wordpiece", lowercase=bool(tokenizer.lowercase))
    _add_special(fast, roles, lstrip=())
    cls, sep = roles["cls"], roles["sep"]
    fast.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, fast.token_to_id(cls)), (sep, fast.token_to_id(sep))],
    )
    lowercase = bool(tokenizer.lowercase)
    return fast, {"do_lower_case": lowercase, "strip_accents": None if lowercase else False}


def _byte_bpe(tokenizer, *, folder: Path, roles: dict):
    from mlm.data import vocab

    vocabulary = {str(k): int(v) for k, v in dict(tokenizer.vocabulary).items()}
    # No "#version" header line: keras-hub's converter would read it as a merge.
    merges = "".join(f"{m}\n" for m in tokenizer.merges if not m.startswith("#version"))
    atomic.write_text(folder / "vocab.json", json.dumps(vocabulary, ensure_ascii=False))
    atomic.write_text(folder / "merges.txt", merges)
    with tempfile.TemporaryDirectory(prefix="mlm_hf_vocab_") as tmp:
        path, merges_path = vocab.vocabulary_files(Path(tmp), family="byte_bpe")
        path.write_text(json.dumps(vocabulary), encoding="utf-8")
        merges_path.write_text(merges, encoding="utf-8")
        fast = vocab.hf_tokenizer(path, family="byte_bpe", lowercase=False)
    # As RoBERTa's "<mask>": it takes the space before it, "the <mask>" is "the" + mask.
    _add_special(fast, roles, lstrip=(roles["mask"],))
    cls, sep = roles["cls"], roles["sep"]
    fast.post_processor = processors.RobertaProcessing(
        (sep, fast.token_to_id(sep)), (cls, fast.token_to_id(cls)),
        trim_offsets=True, add_prefix_space=False,
    )
    return fast, {"add_prefix_space": False, "trim_offsets": True}


def _add_special(fast, roles: dict, *, lstrip) -> None:
    """Marks the special tokens (already in the vocabulary) as whole, special tokens."""
    fast.add_special_tokens([
        tokenizers.AddedToken(token, special=True, normalized=False, lstrip=token in lstrip)
        for token in dict.fromkeys(roles.values())
    ])


# The sentencepiece model's file name, as transformers' and keras-hub's
# converters look it up, by `tokenizer_config.json`'s class.
SENTENCEPIECE_FILES = {
    "XLMRobertaTokenizer": "sentencepiece.bpe.model",
    "AlbertTokenizer": "spiece.model",
    "DebertaV2Tokenizer": "spm.model",
    # DeBERTa's: transformers 5's DebertaV2Tokenizer rebuilds its normalizer
    # (no case folding) instead of reading tokenizer.json, so the generic class.
    "PreTrainedTokenizerFast": "spm.model",
}
# keras-hub's XLMRobertaTokenizer (fairseq): these take ids 0-3, the model's
# pieces move up by one (its unknown piece, id 0, becomes "<unk>"), and "<mask>"
# follows the last piece.
_FAIRSEQ_PREFIX = ("<s>", "<pad>", "</s>", "<unk>")


def _sentencepiece(tokenizer, *, folder: Path, roles: dict, tokenizer_class: str):
    atomic.write_bytes(folder / SENTENCEPIECE_FILES[tokenizer_class], bytes(tokenizer.proto))
    model = _model_proto(tokenizer)
    pieces = [(p.piece, p.score) for p in model.pieces]
    unk_id = model.trainer_spec.unk_id
    if tokenizer_class == "XLMRobertaTokenizer":
        if [piece for piece, _ in pieces[:3]] != ["<unk>", "<s>", "</s>"]:
            raise MlmError(
                f"the XLM-RoBERTa sentencepiece model must start with <unk>, <s>, </s> (as mlm "
                f"learns it), but starts with {[piece for piece, _ in pieces[:3]]}."
            )
        # Piece i > 2 takes id i + 1; pieces 0-2 ("<unk>", "<s>", "</s>") are the prefix's.
        pieces = [(t, 0.0) for t in _FAIRSEQ_PREFIX] + pieces[3:] + [("<mask>", 0.0)]
        unk_id = _FAIRSEQ_PREFIX.index("<unk>")
    fast = tokenizers.Tokenizer(tokenizers.models.Unigram(
        pieces, unk_id=unk_id, byte_fallback=model.trainer_spec.byte_fallback))
    # sentencepiece's normalization: its compiled rules (NFKC, with case
    # folding for an uncased model), then no leading, trailing or repeated spaces.
    fast.normalizer = tokenizers.normalizers.Sequence([
        tokenizers.normalizers.Precompiled(model.normalizer_spec.precompiled_charsmap),
        tokenizers.normalizers.Strip(),
        tokenizers.normalizers.Replace(tokenizers.Regex(" {2,}"), " "),
    ])
    fast.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="always")
    fast.decoder = tokenizers.decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    _add_special(fast, roles, lstrip=(roles["mask"],))
    cls, sep = roles["cls"], roles["sep"]
    fast.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, fast.token_to_id(cls)), (sep, fast.token_to_id(sep))],
    )
    return fast, {"do_lower_case": False, "keep_accents": True}


_WRITERS = {"wordpiece": _wordpiece, "byte_bpe": _byte_bpe, "sentencepiece": _sentencepiece}
