"""The front door: every documented command, from a plain `pip install .` (no extras).

The test suite runs in a venv with the `[test,hf]` extras, which could hide a
runtime dependency that only the extra brings (issue 19: `safetensors`, which
keras-hub's HuggingFace loader imports, was one). This script runs the
README's commands at test size with the python of a venv made by
`pip install .` alone, each as a subprocess in a scratch folder (so that
`import mlm` finds the installed package, not this checkout), and fails if any
exits non-zero. Features that need an extra must fail in one line naming it,
exit status 2: that is checked too.

    python3.11 -m venv .venv-plain && .venv-plain/bin/pip install .
    python .ci/front_door.py --python .venv-plain/bin/python

`.ci/run` does both after the test suite. Standard library only.
"""

import argparse
import gzip
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Short runs: no step-settings probe, one held-out batch.
FAST = ["--set", "train.mixed_precision=float32", "train.jit_compile=false",
        "train.eval_batches=1", "train.checkpoint_every=2", "train.log_every=2",
        "train.eval_every=2"]

# Builds a tiny HuggingFace `BertForMaskedLM` checkpoint folder without torch or
# transformers: config.json, model.safetensors (encoder under `bert.`, the MLM
# head under `cls.predictions.`, no pooler), vocab.txt, tokenizer_config.json and
# a tokenizer.json from the `tokenizers` library, as the hub's BERT folders hold,
# plus sentence-transformers' modules.json and 1_Pooling/.
HF_BUILDER = r'''
import json, sys
from pathlib import Path
import numpy as np
from safetensors.numpy import save_file
from tokenizers import BertWordPieceTokenizer

out, vocab_file = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True)
words = vocab_file.read_text(encoding="utf-8").splitlines()
h, i, v, p = 32, 64, len(words), 64
rng = np.random.default_rng(0)
w = lambda *shape: (rng.standard_normal(shape) * 0.02).astype(np.float32)
ones, zeros = (lambda n: np.ones(n, np.float32)), (lambda n: np.zeros(n, np.float32))
t = {"embeddings.word_embeddings.weight": w(v, h), "embeddings.position_embeddings.weight": w(p, h),
     "embeddings.token_type_embeddings.weight": w(2, h), "embeddings.LayerNorm.weight": ones(h),
     "embeddings.LayerNorm.bias": zeros(h)}
for name in ("attention.self.query", "attention.self.key", "attention.self.value",
             "attention.output.dense"):
    t[f"encoder.layer.0.{name}.weight"], t[f"encoder.layer.0.{name}.bias"] = w(h, h), zeros(h)
t["encoder.layer.0.intermediate.dense.weight"] = w(i, h)
t["encoder.layer.0.intermediate.dense.bias"] = zeros(i)
t["encoder.layer.0.output.dense.weight"], t["encoder.layer.0.output.dense.bias"] = w(h, i), zeros(h)
for name in ("attention.output.LayerNorm", "output.LayerNorm"):
    t[f"encoder.layer.0.{name}.weight"], t[f"encoder.layer.0.{name}.bias"] = ones(h), zeros(h)
tensors = {f"bert.{k}": a for k, a in t.items()}
tensors.update({"cls.predictions.transform.dense.weight": w(h, h),
                "cls.predictions.transform.dense.bias": zeros(h),
                "cls.predictions.transform.LayerNorm.weight": ones(h),
                "cls.predictions.transform.LayerNorm.bias": zeros(h),
                "cls.predictions.bias": zeros(v)})
save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
(out / "config.json").write_text(json.dumps({
    "architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": v,
    "hidden_size": h, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": i,
    "max_position_embeddings": p, "type_vocab_size": 2, "hidden_act": "gelu",
    "layer_norm_eps": 1e-12, "pad_token_id": 0}))
(out / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
(out / "tokenizer_config.json").write_text(json.dumps(
    {"do_lower_case": True, "tokenizer_class": "BertTokenizer"}))
BertWordPieceTokenizer(str(out / "vocab.txt"), lowercase=True).save(str(out / "tokenizer.json"))
# As sentence-transformers folders (all-MiniLM-L6-v2, issue 19) also hold.
(out / "modules.json").write_text(json.dumps([
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize",
     "type": "sentence_transformers.models.Normalize"}]))
(out / "1_Pooling").mkdir()
(out / "1_Pooling" / "config.json").write_text(json.dumps(
    {"word_embedding_dimension": h, "pooling_mode_mean_tokens": True}))
'''


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", required=True, help="python of a venv made by `pip install .`")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    python = str(Path(args.python).absolute())
    work = Path(tempfile.mkdtemp(prefix="mlm_front_door_"))
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "MLM_FAULT")}
    env.update(MLM_CACHE_DIR=str(work / "cache"), TF_CPP_MIN_LOG_LEVEL="2")
    corpus, held_out = write_corpus(work)
    labelled = write_labelled(work)
    run = work / "runs" / "demo"
    checks = [
        ("mlm recipes", ["recipes"], None),
        ("mlm recipes --fields", ["recipes", "--fields"], None),
        ("mlm vocab", ["vocab", "--corpus", corpus, "--architecture", "bert", "--size", "300",
                       "--out", work / "vocab"], None),
        ("mlm pretrain", ["pretrain", "--recipe", "bert_test", "--corpus", corpus,
                          "--held-out", held_out, "--run-dir", run, "--steps", "4", *FAST], None),
        ("mlm prepare", ["prepare", "--recipe", "bert_test", "--corpus", corpus, "--held-out",
                         held_out, "--out", work / "prepared"], None),
        ("mlm pretrain --data (the prepared corpus)",
         ["pretrain", "--recipe", "bert_test", "--data", work / "prepared", "--run-dir",
          work / "runs" / "from_prepared", "--steps", "2", *FAST], None),
        ("mlm evaluate", ["evaluate", run / "preset", "--corpus", held_out], None),
        ("mlm predict", ["predict", run / "preset", "In the beginning God created the [MASK]."],
         None),
        ("mlm export", ["export", run, "--step", "2", "--out", work / "step2"], None),
        ("mlm report", ["report", run], None),
        ("mlm continue (keras-hub preset folder)",
         ["continue", "--preset", run / "preset", "--corpus", corpus, "--held-out", held_out,
          "--run-dir", work / "runs" / "continued", "--steps", "2", "--sequence-length", "32",
          *FAST], None),
        ("mlm continue (HuggingFace checkpoint folder)",
         ["continue", "--preset", work / "hf_bert", "--corpus", corpus, "--held-out", held_out,
          "--run-dir", work / "runs" / "from_hf", "--steps", "2", "--sequence-length", "32",
          *FAST], None),
        ("mlm finetune", ["finetune", run / "preset", "--train", labelled, "--run-dir",
                          work / "runs" / "cls", "--epochs", "1"], None),
        ("mlm classify", ["classify", work / "runs" / "cls" / "preset",
                          "And the LORD spake unto Moses"], None),
        ("mlm export --format transformers (no torch)",
         ["export", run, "--format", "transformers", "--out", work / "hf_export"], None),
        ("mlm pretrain --backend jax (needs [jax])",
         ["pretrain", "--recipe", "bert_test", "--corpus", corpus, "--run-dir",
          work / "runs" / "jax", "--backend", "jax"], 'pip install "mlm[jax]"'),
    ]
    results = []
    for name, command, expected_error in checks:
        if name.startswith("mlm continue (HuggingFace"):
            results.append(check("build a tiny HuggingFace BERT folder (no torch)",
                                 [python, "-c", HF_BUILDER, work / "hf_bert",
                                  work / "vocab" / "vocabulary.txt"], None, cwd=work, env=env))
        results.append(check(name, [python, "-m", "mlm", *command], expected_error, cwd=work,
                             env=env))
    results.append(check("benchmarks/compare.py, HF contender (needs [bench])",
                         [python, ROOT / "benchmarks" / "compare.py", "--contenders", "hf"],
                         'pip install -e ".[bench]"', cwd=work, env=env))
    failed = sum(not ok for ok in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def write_corpus(work: Path) -> tuple[Path, Path]:
    """60 training and 10 held-out documents of the shipped sample corpus."""
    with gzip.open(ROOT / "mlm" / "data" / "kjv.txt.gz", "rt", encoding="utf-8") as f:
        docs = [d.strip() for d in f.read().split("\n\n") if d.strip()]
    corpus, held_out = work / "kjv60.txt", work / "kjv_held.txt"
    corpus.write_text("\n\n".join(docs[:60]) + "\n", encoding="utf-8")
    held_out.write_text("\n\n".join(docs[1000:1010]) + "\n", encoding="utf-8")
    return corpus, held_out


def write_labelled(work: Path) -> Path:
    """A CSV of 30 Old Testament and 30 New Testament sentences, labelled "old" and "new"."""
    import csv

    with gzip.open(ROOT / "mlm" / "data" / "kjv.txt.gz", "rt", encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    path = work / "labelled.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for label, chapters in (("old", lines[:5]), ("new", lines[-5:])):
            sentences = [s for chapter in chapters for s in chapter.split(". ")]
            writer.writerows((sentence, label) for sentence in sentences[:30])
    return path


def check(name: str, command: list, expected_error: str | None, *, cwd: Path, env: dict) -> bool:
    """Runs `command`; ok when it exits 0, or, with `expected_error`, when it exits 2
    with one `error:` line (no traceback) that contains `expected_error`."""
    began = time.perf_counter()
    try:
        proc = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=600, stdin=subprocess.DEVNULL)
        code, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired:
        code, err = None, "timed out after 600 s"
    seconds = time.perf_counter() - began
    if expected_error is None:
        ok = code == 0
    else:
        lines = [line for line in err.splitlines() if "error:" in line]
        ok = (code == 2 and "Traceback" not in err and len(lines) == 1
              and expected_error in lines[0])
    print(f"{'ok    ' if ok else 'FAILED'} {name} ({seconds:.0f} s, exit {code})", flush=True)
    if not ok:
        print("  " + "\n  ".join(err.strip().splitlines()[-15:]), flush=True)
    return ok


if __name__ == "__main__":
    sys.exit(main())
