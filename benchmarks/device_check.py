"""Device check: mlm's compiled task against HuggingFace BERT on one accelerator.

Run on a machine with a GPU (one command, under 8 minutes in all):

    python benchmarks/device_check.py                  # bert_base shape, JAX + torch on the GPU
    python benchmarks/device_check.py --smoke          # tiny shape on the CPU (tests run this)

What it measures, at the `bert_base` shape (12 layers, hidden 768, 12 heads,
intermediate 3072, sequence 128, batch 256, vocabulary 30522):

- mlm: the task that `mlm.training.task.build_task` builds and `mlm.training.task.compile_task`
  compiles (bf16 mixed precision, XLA), on the JAX backend, preprocessor
  detached, trained with `keras.Model.fit` and `steps_per_execution=16` as
  `mlm.training.loop`'s loop does (which feeds tf.data instead), on synthetic batches
  with exactly the keys, dtypes and shapes that `mlm.data.pipeline` yields:
  x = {token_ids, segment_ids, padding_mask, mask_positions}, y = the original
  ids at the mask slots, w = mask weights.
- HuggingFace: `transformers.BertForMaskedLM` of the same shape, torch eager
  with `torch.autocast(dtype=bfloat16)`, AdamW and gradient clipping, on the
  same batches (labels -100 except at the masked positions).

It prints one table: non-padding tokens/s (B*T per step; the batches have no
padding), model FLOP/s and model FLOPs utilisation (MFU) against the device's
bf16 matmul peak, measured in the same run with JAX (best of several
8192x8192 products). Warmup steps (the first compiles) are not timed; every
contender then runs a fixed number of timed steps, fewer only when the time
guard (`--time-limit`, 450 s by default) needs it; each part runs in its own
process, killed 15 s after its share of the time, so the whole check ends
within the limit plus 15 s. `--smoke` runs the same code at a tiny
shape (2 layers, hidden 64, sequence 32, batch 8, vocabulary 1000) in float32
on the CPU; its HuggingFace row is skipped where torch or transformers is not
installed.

TensorFlow is never needed: `mlm.training.task` reads the resolved masking
(`mlm.data.masking`), not the tf.data pipeline, so `build_task` and
`compile_task` run as mlm's own code where TensorFlow is missing. keras-hub
imports TensorFlow only if it is there.

On the GPU machine this project borrows (Python 3.12, JAX with CUDA, torch and
transformers, but no TensorFlow, keras or keras-hub and no network), carry
keras, keras-hub and the two small dependencies of keras it lacks as wheels,
downloaded here into an ignored folder (`echo /.whl/ >> .git/info/exclude`):

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \\
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl keras==3.15.1 keras-hub==0.32.0 namex optree        # 4.5 MB

and run there, from the repository root:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site python3 benchmarks/device_check.py --json $OUT/device_check.json

(keras-hub's other dependencies: kagglehub and tensorflow-text are optional at
import and not needed; regex, rich, sentencepiece, tokenizers, absl-py, h5py
and ml-dtypes are on that machine. tests/test_device_check.py runs the smoke
mode in an environment without TensorFlow.)
"""

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

SHAPES = {
    "bert_base": {"num_layers": 12, "hidden_dim": 768, "num_heads": 12,
                  "intermediate_dim": 3072, "sequence_length": 128, "batch_size": 256,
                  "vocabulary_size": 30522},
    "smoke": {"num_layers": 2, "hidden_dim": 64, "num_heads": 2, "intermediate_dim": 256,
              "sequence_length": 32, "batch_size": 8, "vocabulary_size": 1000},
}
# The mode's defaults: compute precision, steps per device call of the mlm
# task, warmup and timed steps, matmul size for the peak, time limit (s).
MODES = {
    "device": {"shape": "bert_base", "precision": "mixed_bfloat16", "steps_per_execution": 16,
               "warmup_steps": 32, "hf_warmup_steps": 5, "steps": 128, "matmul_size": 8192,
               "time_limit": 450.0},
    "smoke": {"shape": "smoke", "precision": "float32", "steps_per_execution": 2,
              "warmup_steps": 4, "hf_warmup_steps": 2, "steps": 4, "matmul_size": 512,
              "time_limit": 300.0},
}
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0-4, as mlm.data.vocab makes
SELECTION_RATE, MASK_TOKEN_RATE, RANDOM_TOKEN_RATE = 0.15, 0.8, 0.1  # mlm's MaskingConfig
PEAK_DTYPES = {"mixed_bfloat16": "bfloat16", "float32": "float32"}
HF_SKIPPED = "skipped (torch/transformers not installed)"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.part:
        run_part(args.part, spec=json.loads(args.spec.read_text()), out=args.out)
        return
    mode = MODES["smoke" if args.smoke else "device"]
    limit = args.time_limit or mode["time_limit"]
    began = time.time()
    deadline = began + limit
    spec = {
        "smoke": args.smoke,
        "shape": SHAPES[mode["shape"]],
        "shape_name": mode["shape"],
        "precision": args.precision or mode["precision"],
        "steps_per_execution": mode["steps_per_execution"],
        "warmup_steps": args.warmup_steps or mode["warmup_steps"],
        "hf_warmup_steps": mode["hf_warmup_steps"],
        "steps": args.steps or mode["steps"],
        "matmul_size": mode["matmul_size"],
        "seed": args.seed,
    }
    report = {"spec": spec, "time_limit": limit, "flops_per_step": model_flops_per_step(
        spec["shape"])}
    hf_installed = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
    with tempfile.TemporaryDirectory() as work:
        say(f"device check: {spec['shape_name']} shape, {spec['precision']}, time limit "
            f"{limit:.0f} s")
        report["peak"] = run_child("peak", spec, work=Path(work),
                                   deadline=min(deadline, time.time() + limit / 4))
        peak = report["peak"]
        if peak.get("ok") and not args.smoke and peak["platform"] != "gpu":
            say(f"JAX sees no GPU (platform {peak['platform']}); run with --smoke for the CPU "
                "check")
            sys.exit(2)
        if not peak.get("ok"):
            report["mlm"] = report["hf"] = {"ok": False, "error": "no matmul peak (see above)"}
        else:
            share = 0.6 if hf_installed and not args.skip_hf else 1.0
            report["mlm"] = run_child(
                "mlm", spec, work=Path(work),
                deadline=time.time() + share * (deadline - time.time()))
            if args.skip_hf:
                report["hf"] = {"ok": False, "error": "skipped (--skip-hf)"}
            elif not hf_installed:
                report["hf"] = {"ok": False, "error": HF_SKIPPED}
            else:
                report["hf"] = run_child("hf", spec, work=Path(work), deadline=deadline)
    report["seconds"] = time.time() - began
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if not report["mlm"].get("ok"):
        sys.exit(1)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shape, float32, on the CPU: checks the code path in seconds")
    parser.add_argument("--steps", type=int, help="timed steps of each contender")
    parser.add_argument("--warmup-steps", type=int,
                        help="untimed first steps of the mlm task (the first call compiles)")
    parser.add_argument("--precision", choices=sorted(PEAK_DTYPES),
                        help="compute precision (default: mixed_bfloat16, float32 with --smoke)")
    parser.add_argument("--time-limit", type=float,
                        help="seconds for the whole check (default 450, 300 with --smoke)")
    parser.add_argument("--skip-hf", action="store_true", help="leave out the HuggingFace row")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--seed", type=int, default=0)
    # One part of the check, in its own process (run by the parent).
    parser.add_argument("--part", choices=["peak", "mlm", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def say(message: str) -> None:
    print(f"[device_check] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the parent


def run_child(part: str, spec: dict, *, work: Path, deadline: float) -> dict:
    """Runs one part in a fresh process that must end by `deadline` (Unix time).

    The part trims its timed steps to end by then; the process is killed 15 s
    after it, so a compilation that hangs cannot hold up the whole check.
    """
    spec_path, out = work / f"spec-{part}.json", work / f"result-{part}.json"
    spec_path.write_text(json.dumps({**spec, "deadline": deadline}))
    env = {**child_env(spec), "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(Path(__file__).resolve()), "--part", part,
               "--spec", str(spec_path), "--out", str(out)]
    timeout = max(1.0, deadline - time.time() + 15)
    say(f"{part}: up to {timeout:.0f} s")
    began = time.time()
    try:
        completed = subprocess.run(command, env=env, capture_output=True, text=True,
                                   timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {time.time() - began:.0f} s"}
    if out.is_file():
        result = json.loads(out.read_text())
    else:
        result = {"ok": False, "error": f"exited {completed.returncode} without a result"}
    if not result.get("ok"):
        say(f"{part} failed; its stderr ends:\n{completed.stderr[-3000:]}")
    say(f"{part}: done in {time.time() - began:.1f} s")
    return result


def child_env(spec: dict) -> dict:
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
    if spec["smoke"]:
        env["JAX_PLATFORMS"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""  # torch too
    return env


def print_report(report: dict) -> None:
    spec, peak = report["spec"], report.get("peak", {})
    shape = spec["shape"]
    flops = report["flops_per_step"]
    tokens = shape["batch_size"] * shape["sequence_length"]
    peak_flops = peak.get("flops_per_second") if peak.get("ok") else None
    print(f"\nDevice check, {spec['shape_name']} shape: {shape['num_layers']} layers, hidden "
          f"{shape['hidden_dim']}, {shape['num_heads']} heads, intermediate "
          f"{shape['intermediate_dim']}, sequence {shape['sequence_length']}, batch "
          f"{shape['batch_size']}, vocabulary {shape['vocabulary_size']}")
    if peak.get("ok"):
        print(f"Device: {peak['device']} (JAX {peak['jax']}); {peak['dtype']} matmul peak "
              f"{peak_flops / 1e12:.4g} TFLOP/s ({peak['size']}^3, best of {peak['runs']})")
    else:
        print(f"Device: unknown; matmul peak: {peak.get('error', 'not measured')}")
    print(f"Model FLOPs per step: {flops:.4g} ({tokens} tokens; 6*N*D + 12*L*d*T*D + head)")
    print()
    print("| run | settings | timed steps | s/step | tokens/s | model TFLOP/s | MFU |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for key, name in (("mlm", "mlm"), ("hf", "HF BertForMaskedLM")):
        result = report.get(key, {"ok": False, "error": "not run"})
        if not result.get("ok"):
            print(f"| {name} | {result.get('error', 'failed')} | - | - | - | - | - |")
            continue
        per_step = result["seconds_per_step"]
        achieved = flops / per_step
        mfu = f"{achieved / peak_flops:.3g}" if peak_flops else "-"
        print(f"| {name} | {result['settings']} | {result['timed_steps']} | {per_step:.4g} "
              f"| {tokens / per_step:,.0f} | {achieved / 1e12:.4g} | {mfu} |")
    print()
    for key in ("mlm", "hf"):
        result = report.get(key, {})
        if result.get("ok"):
            print(f"{key}: {result['label']}; first call {result['first_call_seconds']:.1f} s, "
                  f"{result['warmup_steps']} warmup steps in all, final loss "
                  f"{result['loss']:.3f}")
    mlm = report.get("mlm", {})
    if mlm.get("ok"):
        imported = "yes" if mlm["tensorflow_imported"] else "no"
        print(f"TensorFlow imported by the mlm run: {imported}")
    if "seconds" in report:
        print(f"Total {report['seconds']:.0f} s (limit {report['time_limit']:.0f} s)")


def model_flops_per_step(shape: dict) -> float:
    """Training FLOPs one step needs ("model FLOPs", as PaLM's MFU counts them).

    Each matmul weight costs 2 FLOPs per token forward and 4 backward, 6 in
    all. With L layers, hidden d, intermediate f, sequence T, vocabulary V,
    D = B*T tokens per step (all non-padding here) and M = B*S mask slots:

        N = L * (4 d^2 + 2 d f)        # non-embedding weights: Q, K, V, output; feed-forward
        FLOPs = 6 N D                  # the encoder's weights
              + 12 L d T D             # QK^T and AV: 4 T d per token and layer forward, x3
              + 6 (d^2 + d V) M        # MLM head (transform, output layer) at the mask slots

    Embedding lookups, biases, LayerNorm, softmax and GELU are not counted.
    HF's `BertForMaskedLM` computes logits at all T positions, not only at the
    mask slots: that extra work is not model FLOPs and lowers its MFU (as in
    `benchmarks/compare.py`).
    """
    n_layers, d, f = shape["num_layers"], shape["hidden_dim"], shape["intermediate_dim"]
    length, batch = shape["sequence_length"], shape["batch_size"]
    tokens = batch * length
    masked = batch * max_selections(length, SELECTION_RATE)
    non_embedding = n_layers * (4 * d * d + 2 * d * f)
    return (6 * non_embedding * tokens + 12 * n_layers * d * length * tokens
            + 6 * (d * d + d * shape["vocabulary_size"]) * masked)


def max_selections(sequence_length: int, selection_rate: float) -> int:
    """`mlm.data.pipeline.max_selections`, copied: that module imports TensorFlow."""
    return max(1, round((sequence_length - 2) * selection_rate))


# ---------------------------------------------------------------- the parts


def run_part(part: str, *, spec: dict, out: Path) -> None:
    """Runs `part` and writes its result (or its error) as JSON to `out`."""
    os.environ["KERAS_BACKEND"] = "jax"  # before anything imports keras
    try:
        result = {"peak": matmul_peak, "mlm": run_mlm, "hf": run_hf}[part](spec)
        result["ok"] = True
    except Exception as e:  # reported in the table; the traceback goes to stderr
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:200]}"}
    out.write_text(json.dumps(result))


def matmul_peak(spec: dict) -> dict:
    """Best FLOP/s of a square matmul in the compute dtype, with JAX, on the first device."""
    import jax
    import jax.numpy as jnp

    size, dtype = spec["matmul_size"], PEAK_DTYPES[spec["precision"]]
    device = jax.devices()[0]
    if device.platform != "gpu" and not spec["smoke"]:
        return {"platform": device.platform}  # the parent stops: no GPU
    keys = jax.random.split(jax.random.key(spec["seed"]), 2)
    a, b = (jax.random.normal(k, (size, size), dtype=dtype) for k in keys)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()  # compile
    # Several products per reading, so that dispatch does not count; best reading.
    runs, per_run = 10, 10 if device.platform == "gpu" else 2
    best = math.inf
    for _ in range(runs):
        began = time.perf_counter()
        for _ in range(per_run):
            c = matmul(a, b)
        c.block_until_ready()
        best = min(best, (time.perf_counter() - began) / per_run)
    return {"flops_per_second": 2 * size**3 / best, "size": size, "dtype": dtype,
            "runs": runs, "platform": device.platform, "jax": jax.__version__,
            "device": f"{len(jax.devices())} x {device.device_kind}"}


def make_batches(spec: dict, *, count: int = 4) -> list[tuple[dict, object, object]]:
    """`count` batches as `mlm.data.pipeline.training_dataset` yields them from full windows.

    Each window is [CLS] w1 .. w(T-2) [SEP] (no padding); S =
    `max_selections(T, 0.15)` distinct positions among the words are masked
    80/10/10 ([MASK], a random word, unchanged), in ascending order. Returns
    (x, y, w): x = {token_ids, segment_ids, padding_mask, mask_positions}
    int32 (B, T) and (B, S), y = the original ids (B, S) int32, w = mask
    weights (B, S) float32.
    """
    import numpy as np

    shape = spec["shape"]
    batch, length, vocab = shape["batch_size"], shape["sequence_length"], \
        shape["vocabulary_size"]
    slots = max_selections(length, SELECTION_RATE)
    cls_id, sep_id, mask_id = (SPECIAL_TOKENS.index(t) for t in ("[CLS]", "[SEP]", "[MASK]"))
    first_word = len(SPECIAL_TOKENS)
    rng = np.random.default_rng(spec["seed"])
    batches = []
    for _ in range(count):
        tokens = rng.integers(first_word, vocab, (batch, length), dtype=np.int32)
        tokens[:, 0], tokens[:, -1] = cls_id, sep_id
        positions = np.sort(np.argsort(rng.random((batch, length - 2)), axis=1)[:, :slots] + 1,
                            axis=1).astype(np.int32)
        original = np.take_along_axis(tokens, positions, axis=1)
        action = rng.random((batch, slots))
        random_words = rng.integers(first_word, vocab, (batch, slots), dtype=np.int32)
        replaced = np.where(action < MASK_TOKEN_RATE, mask_id, np.where(
            action < MASK_TOKEN_RATE + RANDOM_TOKEN_RATE, random_words, original))
        masked = tokens.copy()
        np.put_along_axis(masked, positions, replaced.astype(np.int32), axis=1)
        x = {"token_ids": masked, "segment_ids": np.zeros_like(masked),
             "padding_mask": np.ones_like(masked), "mask_positions": positions}
        batches.append((x, original, np.ones((batch, slots), np.float32)))
    return batches


def import_mlm_train():
    """`mlm.training.task`, and how it was imported.

    It needs no TensorFlow (the resolved masking it reads, `mlm.data.masking`,
    imports none), so on the GPU machine, where TensorFlow is missing, what is
    timed is still `mlm.training.task.build_task` and `compile_task`.
    """
    import mlm.training.task

    found = "" if "tensorflow" in sys.modules else " (no TensorFlow)"
    return mlm.training.task, f"mlm.training.task{found}"


def run_mlm(spec: dict) -> dict:
    """Trains mlm's compiled task with `fit`, as `mlm.training.loop`'s loop does; times it."""
    import warnings

    import jax
    import keras
    import keras_hub

    from mlm.architectures import get_architecture
    from mlm.config import ModelConfig, TrainConfig
    from mlm.data.masking import Masking
    from mlm.training.step_settings import StepSettings

    train, how = import_mlm_train()
    shape, per_call = spec["shape"], spec["steps_per_execution"]
    keras.utils.set_random_seed(spec["seed"])
    vocabulary = list(SPECIAL_TOKENS) + [
        f"w{i}" for i in range(shape["vocabulary_size"] - len(SPECIAL_TOKENS))]
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
    model = ModelConfig(architecture="bert", sequence_length=shape["sequence_length"], backbone={
        "num_layers": shape["num_layers"], "num_heads": shape["num_heads"],
        "hidden_dim": shape["hidden_dim"], "intermediate_dim": shape["intermediate_dim"],
        "dropout": 0.1, "max_sequence_length": 512})
    masking = Masking(selection_rate=SELECTION_RATE, mask_token_rate=0.8,
                      random_token_rate=0.1, unit="token")
    task = train.build_task(model, arch=get_architecture("bert"), tokenizer=tokenizer,
                            masking=masking)
    task.preprocessor = None  # detached, as mlm.training.loop trains: batches come masked
    # The schedule's length only shapes the learning rate, not the step's cost.
    config = TrainConfig(batch_size=shape["batch_size"], steps=1000)
    settings = StepSettings(spec["precision"], True)
    train.compile_task(task, config, settings=settings)
    task.steps_per_execution = per_call
    batches = make_batches(spec)

    def forever():
        while True:
            yield from batches

    data = forever()

    def steps(count: int) -> float:
        """Trains `count` steps (a multiple of `per_call`); seconds until they finished."""
        began = time.perf_counter()
        # keras.Model.fit, not keras-hub's PipelineModel.fit: that one turns any input into
        # a tf.data or grain dataset (neither is on the GPU machine) to map the preprocessor
        # over it; detached, it would only pass the batches through. mlm.training.loop feeds
        # a tf.data dataset, which keras also turns into numpy batches on JAX.
        history = keras.Model.fit(task, data, steps_per_epoch=count, epochs=1, verbose=0)
        jax.block_until_ready([v.value for v in task.trainable_variables])
        steps.loss = float(history.history["loss"][-1])
        return time.perf_counter() - began

    with warnings.catch_warnings():
        # The backbone's pooler gets no gradient from the MLM loss (as in mlm.training.loop).
        warnings.filterwarnings("ignore", message="Gradients do not exist for variables")
        first = steps(per_call)
        warmup = max(spec["warmup_steps"] - per_call, per_call)
        estimate = steps(warmup) / warmup
        timed = timed_steps(spec, estimate=estimate, multiple=per_call)
        seconds = steps(timed)
    return {"label": f"{how}, keras {keras.__version__}, keras-hub {keras_hub.__version__}, "
                     f"JAX {jax.__version__} on {jax.devices()[0].platform}",
            "settings": f"{settings.label()}, {per_call} steps/call",
            "first_call_seconds": first, "warmup_steps": per_call + warmup,
            "timed_steps": timed, "seconds_per_step": seconds / timed, "loss": steps.loss,
            "tensorflow_imported": "tensorflow" in sys.modules}


def timed_steps(spec: dict, *, estimate: float, multiple: int = 1) -> int:
    """The timed steps asked for, fewer if at `estimate` s/step they would pass the deadline."""
    left = spec["deadline"] - time.time() - 5
    fit = int(left / max(estimate, 1e-9)) // multiple * multiple
    return max(multiple, min(spec["steps"], fit))


def run_hf(spec: dict) -> dict:
    """Trains HF's BertForMaskedLM (torch, bf16 autocast) on the same batches; times it."""
    import torch
    import transformers

    shape = spec["shape"]
    device = torch.device("cuda" if torch.cuda.is_available() and not spec["smoke"] else "cpu")
    torch.manual_seed(spec["seed"])
    config = transformers.BertConfig(
        vocab_size=shape["vocabulary_size"], hidden_size=shape["hidden_dim"],
        num_hidden_layers=shape["num_layers"], num_attention_heads=shape["num_heads"],
        intermediate_size=shape["intermediate_dim"], max_position_embeddings=512,
        type_vocab_size=2, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    model = transformers.BertForMaskedLM(config).to(device).train()
    # As mlm.training.task.compile_task: AdamW, no decay on biases and LayerNorm, clipping at 1.
    decay = [p for n, p in model.named_parameters() if "bias" not in n and "LayerNorm" not in n]
    rest = [p for n, p in model.named_parameters() if "bias" in n or "LayerNorm" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
        lr=5e-4, betas=(0.9, 0.999), eps=1e-6, fused=device.type == "cuda")
    bf16 = spec["precision"] == "mixed_bfloat16"

    def to_torch(batch):
        x, y, w = batch
        labels = torch.full(x["token_ids"].shape, -100, dtype=torch.long)
        positions = torch.as_tensor(x["mask_positions"], dtype=torch.long)
        labels.scatter_(1, positions, torch.as_tensor(y, dtype=torch.long).masked_fill(
            torch.as_tensor(w) == 0, -100))
        inputs = {"input_ids": x["token_ids"], "token_type_ids": x["segment_ids"],
                  "attention_mask": x["padding_mask"]}
        inputs = {k: torch.as_tensor(v, dtype=torch.long).to(device) for k, v in inputs.items()}
        return {**inputs, "labels": labels.to(device)}

    batches = [to_torch(b) for b in make_batches(spec)]

    def step(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def steps(count: int) -> float:
        began = time.perf_counter()
        for i in range(count):
            loss = step(batches[i % len(batches)])
        steps.loss = float(loss)  # waits for the device
        return time.perf_counter() - began

    first = steps(1)
    warmup = max(spec["hf_warmup_steps"] - 1, 1)
    estimate = steps(warmup) / warmup
    timed = timed_steps(spec, estimate=estimate)
    seconds = steps(timed)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    attention = getattr(model.config, "_attn_implementation", "?")
    return {"label": f"transformers {transformers.__version__}, torch {torch.__version__} "
                     f"on {name}, {attention} attention, eager",
            "settings": ("bf16 autocast" if bf16 else "fp32") + ", eager",
            "first_call_seconds": first, "warmup_steps": 1 + warmup, "timed_steps": timed,
            "seconds_per_step": seconds / timed, "loss": steps.loss}


if __name__ == "__main__":
    main()
