"""Byte-level BPE token caches: keras-hub's `tf.data` path against `tokenizers` in Rust.

Run on demand (never in the test suite):

    python benchmarks/bulk_tokenize.py            # the shipped sample, 2 rounds, interleaved

Learns a RoBERTa (byte-level BPE) vocabulary of 8,000 entries on the shipped
sample corpus, then builds its token cache twice per round, by keras-hub's
tokenizer mapped over `tf.data` and by the bulk encoder `mlm` uses for this
family (`mlm.data.tokenizing.bulk_encoder`), interleaved, and prints tokens
per second of each and whether the arrays are identical.
"""

import gzip
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(rounds: int = 2) -> int:
    from mlm.architectures import get_architecture
    from mlm.data import token_cache, vocab
    from mlm.data.corpus import sample_corpus_path
    from mlm.data.tokenizing import bulk_encoder

    with gzip.open(sample_corpus_path(), "rt", encoding="utf-8") as f:
        docs = [d.strip() for d in f.read().split("\n\n") if d.strip()]
    arch = get_architecture("roberta")
    tmp = Path(tempfile.mkdtemp(prefix="mlm_bulk_"))
    path = vocab.train_vocabulary(docs, family="byte_bpe", size=8000, lowercase=False,
                                  min_frequency=2, out_dir=tmp / "vocab",
                                  special_tokens=arch.special_tokens)
    tokenizer = vocab.build_tokenizer(path, family="byte_bpe", lowercase=False,
                                      tokenizer=arch.tokenizer)
    encode = bulk_encoder(tokenizer, probe=docs[:256], say=print)
    print("| path | round | tokens | seconds | tokens/s |\n|---|---:|---:|---:|---:|")
    built = {}
    for round_ in range(rounds):
        for name, bulk in (("keras-hub tf.data", None), ("tokenizers (Rust)", encode)):
            began = time.perf_counter()
            cache = token_cache.load_or_build_cache(
                {"train": lambda: docs, "held_out": lambda: docs[:5]}, tokenizer,
                cache_root=tmp, key=f"{round_}-{'fast' if bulk else 'keras'}", progress=False,
                bulk=bulk)
            seconds = time.perf_counter() - began
            tokens = cache.stats["train"]["tokens"]
            built[name] = cache.tokens("train")
            print(f"| {name} | {round_} | {tokens:,} | {seconds:.2f} | {tokens / seconds:,.0f} |")
    same = np.array_equal(*built.values())
    print(f"identical token arrays: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
