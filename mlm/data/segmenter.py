"""Word boundaries for text without spaces (`masking.segmenter`): the Chinese-BERT-wwm recipe.

A subword vocabulary marks words by spaces ("##", "▁", "Ġ"), which Chinese
and Japanese text does not have: a WordPiece tokenizer makes every Chinese
character a word of its own, and a SentencePiece or byte-level BPE one a
whole sentence a single word. A segmenter finds the words (jieba for
Chinese), and each token of the corpus is labelled once, when the token
cache is built, in a parallel array:

- `START` (1): the token begins a segmented word;
- `CONTINUATION` (2): it continues one (or continues a character's bytes);
- `FAMILY` (0): the tokenizer family's own rule decides (text with spaces).

The labels are aligned to the tokens as HF's `run_mlm_wwm.py` aligns its
reference files: from a token that begins with a Chinese character, the
longest run of tokens whose text is one of the document's segmented words
is that word. Masking then selects those words whole (`masking.unit`).
"""

import logging
import re

import numpy as np

from mlm.errors import MlmError

FAMILY, START, CONTINUATION = 0, 1, 2
SEGMENTERS = ("jieba",)
# CJK unified ideographs (and extension A), compatibility ideographs.
_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class Segmenter:
    """Labels the tokens of documents with segmented-word boundaries.

    Args:
        name: "jieba".
        vocabulary: the tokenizer's tokens in id order.
        family: its tokenizer family ("wordpiece", "sentencepiece", "byte_bpe").
        special_tokens: tokens that spell no text.
    """

    def __init__(self, name: str, *, vocabulary: list[str], family: str,
                 special_tokens=()):
        if name not in SEGMENTERS:
            raise MlmError(f"'masking.segmenter' must be '' or 'jieba', but received {name!r}.")
        self.name = name
        self._cut = _jieba_cut()
        special = set(special_tokens)
        self.surfaces = [b"" if t in special else _surface(t, family) for t in vocabulary]
        # A token that begins inside a character (a UTF-8 continuation byte) never
        # begins a word; one that begins with a Chinese character may.
        self.inside_character = np.array([bool(s) and 0x80 <= s[0] < 0xC0
                                          for s in self.surfaces])
        self.chinese_first = np.array([bool(_CJK.match(s.decode("utf-8", "ignore")[:1]))
                                       for s in self.surfaces])
        # Byte-level tokens may split a character: one that begins with a lead byte
        # and does not spell a whole character is read together with the next tokens.
        self.lead_byte = np.array([bool(s) and s[0] >= 0xC0 and not self.chinese_first[i]
                                   for i, s in enumerate(self.surfaces)])

    def _chinese_at(self, ids, i: int) -> bool:
        """Whether the character that begins at token `i` (maybe spelled by several) is
        Chinese."""
        spelled = b"".join(self.surfaces[t] for t in ids[i:i + 4])
        return bool(_CJK.match(spelled.decode("utf-8", "ignore")[:1]))

    def labels(self, text: str, ids: np.ndarray) -> np.ndarray:
        """`(len(ids),)` uint8 labels (FAMILY, START, CONTINUATION) of `text`'s tokens."""
        words = {w for w in self._cut(text) if len(w) > 1 and _CJK.search(w)}
        longest = min(32, max((len(w.encode("utf-8")) for w in words), default=1))
        out = np.zeros(len(ids), np.uint8)
        i, n = 0, len(ids)
        while i < n:
            token = ids[i]
            if self.inside_character[token]:
                out[i] = CONTINUATION
                i += 1
                continue
            if not self.chinese_first[token] and not (
                    self.lead_byte[token] and self._chinese_at(ids, i)):
                i += 1
                continue
            out[i] = START
            for j in range(min(n, i + longest), i + 1, -1):
                try:
                    spelled = b"".join(self.surfaces[t] for t in ids[i:j]).decode("utf-8")
                except UnicodeDecodeError:
                    continue
                if spelled in words:
                    out[i + 1:j] = CONTINUATION
                    i = j
                    break
            else:
                i += 1
        return out


def _jieba_cut():
    try:
        import jieba
    except ImportError:
        raise MlmError(
            'masking.segmenter=jieba needs jieba, which is not installed; pip install '
            '"mlm[chinese]" (from a checkout: pip install ".[chinese]").'
        ) from None
    jieba.setLogLevel(logging.WARNING)  # not its dictionary-loading chatter
    return lambda text: jieba.lcut(text, HMM=True)


def _surface(token: str, family: str) -> bytes:
    """The UTF-8 bytes a token spells, without its word marks."""
    if family == "wordpiece":
        return (token[2:] if token.startswith("##") else token).encode("utf-8")
    if family == "sentencepiece":
        byte = _BYTE_PIECE.fullmatch(token)
        return bytes([int(byte.group(1), 16)]) if byte else token.replace("▁", "").encode()
    if family == "byte_bpe":
        decoder = _byte_decoder()
        return bytes(decoder[c] for c in token if c in decoder).lstrip(b" ")
    raise MlmError(f"unknown tokenizer family {family!r} for masking.segmenter.")


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte (as `tokenizers`' ByteLevel maps it)."""
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(visible), 0
    for b in range(256):
        if b not in visible:
            visible.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(visible, chars, strict=True)}
