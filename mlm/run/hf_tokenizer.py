"""Tokenizer files that `transformers.AutoTokenizer` loads as a fast tokenizer.

From a keras-hub tokenizer: `tokenizer.json` (built with `tokenizers`, giving
the keras-hub tokenizer's ids, see `mlm.data.vocab.hf_tokenizer`), the
family's own vocabulary files (`vocab.txt`; `vocab.json` + `merges.txt`),
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
        family: its vocabulary family ("wordpiece" or "byte_bpe").
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
    fast, extra = _WRITERS[family](tokenizer, folder=folder, roles=roles)
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

    unknown = {"wordpiece": "[UNK]", "byte_bpe": "<unk>"}[family]
    start, end = token(tokenizer.start_token_id), token(tokenizer.end_token_id)
    roles = {"cls": start, "sep": end, "pad": token(tokenizer.pad_token_id),
             "mask": token(tokenizer.mask_token_id), "unk": unknown}
    if family == "byte_bpe":
        roles.update(bos=start, eos=end)
    return roles


def _wordpiece(tokenizer, *, folder: Path, roles: dict):
    from mlm.data import vocab

    lines = [str(t) for t in tokenizer.vocabulary]
    atomic.write_text(folder / "vocab.txt", "\n".join(lines) + "\n")
    with tempfile.TemporaryDirectory(prefix="mlm_hf_vocab_") as tmp:
        path = Path(tmp) / vocab.WORDPIECE_VOCABULARY_FILE
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
        path = Path(tmp) / vocab.BYTE_BPE_VOCABULARY_FILE
        path.write_text(json.dumps(vocabulary), encoding="utf-8")
        (Path(tmp) / vocab.BYTE_BPE_MERGES_FILE).write_text(merges, encoding="utf-8")
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


_WRITERS = {"wordpiece": _wordpiece, "byte_bpe": _byte_bpe}
