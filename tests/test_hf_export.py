"""`mlm export --format transformers`: the folder loads in transformers and means the same.

Per exportable architecture row, a tiny MaskedLM preset (a vocabulary learned
on the sample corpus, one layer of width 32, weights perturbed so that no
parameter is at its initial value) is exported and checked against keras-hub:
token ids, masked-position logits (and, with keras-hub's head epsilon and
activation set in torch, that the difference left is the heads' alone),
fill-mask fillers, the round trip back through keras-hub's converter, and
`mlm continue --preset <export>` starting from the preset's held-out metrics.
"""

import inspect
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from mlm.architectures import ARCHITECTURES
from tests.conftest import read_metrics, run_mlm, sample_documents

pytestmark = pytest.mark.slow  # the module: 4 min 20 s on 2 cores (2026-12-03)

NAMES = sorted(name for name, row in ARCHITECTURES.items() if row.hf is not None)
TOLERANCE = 1e-4
# The heads of transformers' `*ForMaskedLM` are not keras-hub's `MaskedLMHead`,
# and no config.json can make them so: BERT's, DistilBERT's, ALBERT's, DeBERTaV2's
# and FNet's normalise with the encoder's epsilon (1e-12; DeBERTa 1e-7) where
# keras-hub's has 1e-5, and BERT's and FNet's apply the encoder's activation
# (keras-hub's tanh-approximated gelu) where keras-hub's applies exact gelu. On
# these perturbed weights their logits differ by 1.6e-4 to 4.5e-4 (measured
# 2026-12-03: BERT 4.5e-4, of which 4.2e-4 is the activation and 1.1e-4 the
# epsilon; FNet 4.5e-4; DistilBERT 2.4e-4; ALBERT 2.0e-4; DeBERTa 1.6e-4).
# `test_the_whole_logit_difference_is_the_head_definition` sets keras-hub's
# epsilon and activation on the torch head alone, and then all seven agree to
# under 1e-6, as RoBERTa and XLM-RoBERTa, whose heads match, do unpatched.
HEAD_TOLERANCE = {"bert": 1e-3, "distil_bert": 1e-3, "albert": 1e-3, "deberta_v3": 1e-3,
                  "f_net": 1e-3}
# Each `*ForMaskedLM`'s head in torch: its layer norm, and the attribute holding
# the activation after its dense layer (None: RoBERTa's head calls exact gelu,
# as keras-hub's does). `test_the_whole_logit_difference_is_the_head_definition`
# sets keras-hub's epsilon and activation there, and nothing else.
HF_HEAD = {
    "bert": ("cls.predictions.transform.LayerNorm", "cls.predictions.transform.transform_act_fn"),
    "f_net": ("cls.predictions.transform.LayerNorm", "cls.predictions.transform.transform_act_fn"),
    "albert": ("predictions.LayerNorm", "predictions.activation"),
    "distil_bert": ("vocab_layer_norm", "activation"),
    "deberta_v3": ("lm_predictions.lm_head.LayerNorm", "lm_predictions.lm_head.transform_act_fn"),
    "roberta": ("lm_head.layer_norm", None),
    "xlm_roberta": ("lm_head.layer_norm", None),
}
PATCHED_TOLERANCE = 1e-5
# keras-hub 0.32 has no converter from transformers for DeBERTa or FNet.
NO_CONVERTER_BACK = ("deberta_v3", "f_net")
# Held-out text: documents the tiny vocabularies were not learned from.
HELD_OUT = sample_documents(4, start=1100)
assert len(HELD_OUT) == 4
FILL_TEXTS = ("In the beginning God created the {mask}.",
              "And the {mask} said unto Moses, Go {mask} the people.")

_TINY_BACKBONE = {
    "num_layers": 1, "num_heads": 2, "hidden_dim": 32, "intermediate_dim": 64,
    "max_sequence_length": 64, "head_size": 16, "bucket_size": 16,
}
# Arguments some backbones need besides those; ALBERT shares its one layer twice.
_EXTRA_BACKBONE = {"albert": {"embedding_dim": 16, "num_layers": 2}}


def _tiny_preset(name: str, folder):
    """A MaskedLM preset of row `name` with a learned vocabulary and random weights."""
    import keras

    from mlm.data import vocab

    row = ARCHITECTURES[name]
    vocab_dir = folder / "vocab"
    path = vocab.train_vocabulary(
        sample_documents(300), family=row.tokenizer_family, size=400,
        lowercase=row.tokenizer_family != "byte_bpe", min_frequency=1, out_dir=vocab_dir,
        special_tokens=row.special_tokens,
    )
    tokenizer = vocab.build_tokenizer(path, family=row.tokenizer_family,
                                      lowercase=row.tokenizer_family != "byte_bpe",
                                      tokenizer=row.tokenizer)
    keras.utils.set_random_seed(0)
    cls = row.cls("backbone")
    accepted = inspect.signature(cls).parameters
    sizes = {**_TINY_BACKBONE, **_EXTRA_BACKBONE.get(name, {})}
    backbone = cls(vocabulary_size=tokenizer.vocabulary_size(),
                   **{key: value for key, value in sizes.items() if key in accepted})
    preprocessor = row.cls("preprocessor")(tokenizer=tokenizer, sequence_length=64)
    task = row.cls("masked_lm")(backbone=backbone, preprocessor=preprocessor)
    rng = np.random.default_rng(0)
    for variable in task.weights:
        value = keras.ops.convert_to_numpy(variable)
        variable.assign(value + rng.normal(0.0, 0.1, value.shape).astype(value.dtype))
    preset = folder / "preset"
    task.save_to_preset(str(preset))
    (preset / "README.md").write_text(f"# tiny {name}\n")
    return preset


class _Exports(dict):
    """name -> (preset, exported folder, export seconds); built on first use."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, name):
        from mlm.run.hf_export import export_transformers

        preset = _tiny_preset(name, self.root / name)
        start = time.perf_counter()
        out = export_transformers(preset, out=self.root / name / "hf")
        self[name] = preset, out, time.perf_counter() - start
        return self[name]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    pytest.importorskip("transformers")
    return _Exports(tmp_path_factory.mktemp("hf_export"))


@pytest.fixture(scope="module")
def report():
    """Per architecture: max logit difference and export time, printed at the end."""
    found = {}
    yield found
    for name, values in sorted(found.items()):
        print(f"\n{name}: {values}")


def _keras_task(preset):
    from mlm.preset_loading import load_masked_lm

    return load_masked_lm(str(preset))


def _mask_token(task):
    from mlm.predict import mask_token_of

    return mask_token_of(task.preprocessor.tokenizer)


def _masked_inputs(task, text: str):
    """(token ids with [CLS]/[SEP], mask positions): every 5th token masked."""
    tokenizer = task.preprocessor.tokenizer
    ids = [tokenizer.start_token_id,
           *np.asarray(tokenizer(text)).tolist()[:40], tokenizer.end_token_id]
    positions = list(range(1, len(ids) - 1, 5))
    for p in positions:
        ids[p] = tokenizer.mask_token_id
    return np.array([ids], "int32"), np.array([positions], "int32")


def _keras_logits(task, ids, positions):
    import keras

    from mlm.architectures import architecture_of_backbone

    x = architecture_of_backbone(task.backbone).model_inputs(
        ids, positions, pad_id=task.preprocessor.tokenizer.pad_token_id)
    return keras.ops.convert_to_numpy(task(x, training=False))[0]


def _hf_logits(model, ids, positions):
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long)).logits.numpy()
    return out[0, positions[0]]


@pytest.mark.parametrize("name", NAMES)
def test_folder_holds_config_weights_tokenizer_and_card(exports, name):
    _, out, _ = exports[name]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == ARCHITECTURES[name].hf.model_type
    assert config["architectures"] == [ARCHITECTURES[name].hf.hf_class]
    for file in ("model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "README.md"):
        assert (out / file).is_file(), file
    assert (out / "README.md").read_text() == f"# tiny {name}\n"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("name", NAMES)
def test_auto_tokenizer_gives_keras_hub_ids(exports, name):
    from transformers import AutoTokenizer

    preset, out, _ = exports[name]
    hf = AutoTokenizer.from_pretrained(str(out))
    assert hf.is_fast
    keras_tokenizer = _keras_task(preset).preprocessor.tokenizer
    for text in HELD_OUT:
        expected = np.asarray(keras_tokenizer(text)).tolist()
        assert hf(text, add_special_tokens=False)["input_ids"] == expected
        assert hf(text)["input_ids"] == [keras_tokenizer.start_token_id, *expected,
                                         keras_tokenizer.end_token_id]


def _max_logit_difference(task, model) -> float:
    """Largest |transformers - keras-hub| logit at the masked positions of `HELD_OUT`."""
    worst = 0.0
    for text in HELD_OUT:
        ids, positions = _masked_inputs(task, text)
        expected = _keras_logits(task, ids, positions)
        worst = max(worst, float(np.abs(_hf_logits(model, ids, positions) - expected).max()))
    return worst


@pytest.mark.parametrize("name", NAMES)
def test_masked_lm_logits_equal_keras_hub(exports, report, name):
    from transformers import AutoModelForMaskedLM

    preset, out, seconds = exports[name]
    task = _keras_task(preset)
    model = AutoModelForMaskedLM.from_pretrained(str(out)).eval()
    assert type(model).__name__ == ARCHITECTURES[name].hf.hf_class
    worst = _max_logit_difference(task, model)
    report.setdefault(name, {}).update(max_logit_difference=f"{worst:.1e}",
                                       export_seconds=round(seconds, 2))
    assert worst < HEAD_TOLERANCE.get(name, TOLERANCE)


def _torch_gelu_like(activation):
    """torch's exact or tanh-approximated gelu, whichever keras `activation` computes."""
    import keras
    import torch

    x = np.linspace(-4.0, 4.0, 161, dtype="float32")
    y = keras.ops.convert_to_numpy(activation(keras.ops.convert_to_tensor(x)))
    for approximate in ("none", "tanh"):
        gelu = torch.nn.GELU(approximate=approximate)
        if np.allclose(gelu(torch.from_numpy(x)).numpy(), y, rtol=0.0, atol=1e-6):
            return gelu
    raise AssertionError(f"keras-hub's head activation {activation} is no gelu")


@pytest.mark.parametrize("name", NAMES)
def test_the_whole_logit_difference_is_the_head_definition(exports, report, name):
    """With only keras-hub's head epsilon and activation set in torch, the logits agree."""
    import torch
    from transformers import AutoModelForMaskedLM

    preset, out, _ = exports[name]
    task = _keras_task(preset)
    head = task.masked_lm_head
    model = AutoModelForMaskedLM.from_pretrained(str(out)).eval()
    norm_path, activation_path = HF_HEAD[name]
    norm = model.get_submodule(norm_path)
    assert isinstance(norm, torch.nn.LayerNorm)
    norm.eps = head.layer_norm_epsilon
    if activation_path:
        parent, _, attribute = activation_path.rpartition(".")
        assert callable(getattr(model.get_submodule(parent), attribute))
        setattr(model.get_submodule(parent), attribute,
                _torch_gelu_like(head.intermediate_activation))
    worst = _max_logit_difference(task, model)
    report.setdefault(name, {}).update(patched_head_difference=f"{worst:.1e}")
    assert worst < PATCHED_TOLERANCE


@pytest.mark.parametrize("name", NAMES)
def test_fill_mask_pipeline_gives_mlm_top5(exports, name):
    from transformers import pipeline

    from mlm.predict import fill_mask

    preset, out, _ = exports[name]
    task = _keras_task(preset)
    fill = pipeline("fill-mask", model=str(out), top_k=5)
    mask = _mask_token(task)
    for template in FILL_TEXTS:
        text = template.format(mask=mask)
        expected = [[token for token, _ in row] for row in fill_mask(task, text, top_k=5)]
        found = fill(text)
        found = [found] if isinstance(found[0], dict) else found
        hf_ids = [[c["token"] for c in row] for row in found]
        tokenizer = task.preprocessor.tokenizer
        assert hf_ids == [[tokenizer.token_to_id(t) for t in row] for row in expected]


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_through_keras_hub_converter(exports, name):
    from mlm.preset_loading import load_masked_lm

    if name in NO_CONVERTER_BACK:
        pytest.skip(f"keras-hub has no converter from transformers for {name}")
    preset, out, _ = exports[name]
    task, back = _keras_task(preset), load_masked_lm(str(out))
    for text in HELD_OUT[:2]:
        ids, positions = _masked_inputs(task, text)
        np.testing.assert_allclose(_keras_logits(back, ids, positions),
                                   _keras_logits(task, ids, positions), atol=TOLERANCE)


# A continued run of one step whose held-out evaluation at step 0 is the preset's own.
_CONTINUE = (
    "train.batch_size=4", "train.steps=1", "train.eval_batches=3", "train.log_every=1",
    "train.eval_every=1000", "train.checkpoint_every=1", "train.jit_compile=false",
    "train.mixed_precision=float32", "model.sequence_length=64",
)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in NO_CONVERTER_BACK])
def test_mlm_continue_from_the_export_starts_from_the_presets_metrics(
        exports, report, name, small_corpus, held_out_corpus, tmp_path):
    preset, out, _ = exports[name]
    start = {}
    for label, source in (("keras_hub", preset), ("transformers", out)):
        run_dir = tmp_path / label
        run_mlm("continue", "--preset", source, "--corpus", small_corpus, "--held-out",
                held_out_corpus, "--run-dir", run_dir, "--quiet", "--set", *_CONTINUE,
                in_process=True, check=True)
        start[label] = next(r for r in read_metrics(run_dir)
                            if r.get("split") == "held_out" and r["step"] == 0)
    original, exported = start["keras_hub"], start["transformers"]
    assert exported["masked_tokens"] == original["masked_tokens"] > 0
    differences = {key: abs(exported[key] - original[key]) for key in ("loss", "accuracy")}
    report.setdefault(name, {}).update(
        continue_start_loss=f"{original['loss']:.6f} / {exported['loss']:.6f}",
        continue_start_accuracy=f"{original['accuracy']:.4f} / {exported['accuracy']:.4f}",
        continue_start_masked_tokens=original["masked_tokens"],
        continue_start_difference=f"{max(differences.values()):.1e}")
    assert max(differences.values()) < TOLERANCE, differences


def _cli(*args):
    """`mlm export *args` through the CLI in this process (the one-line error path is
    tested in a fresh process by tests/test_cli.py)."""
    code, out, err = run_mlm("export", *args, in_process=True)
    return subprocess.CompletedProcess(["mlm", "export", *args], code, out, err)


def test_cli_refuses_an_existing_out_without_overwrite(exports, tmp_path):
    preset, _, _ = exports["bert"]
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = _cli(str(preset), "--format", "transformers", "--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.startswith("mlm: error:") and proc.stderr.count("\n") == 1
    assert "--overwrite" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    proc = _cli(str(preset), "--format", "transformers", "--out", str(out), "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()


def test_unsupported_architecture_is_named(tmp_path):
    pytest.importorskip("transformers")
    from mlm.errors import MlmError
    from mlm.run.hf_export import export_transformers

    unsupported = sorted(set(ARCHITECTURES) - set(NAMES))
    if not unsupported:
        pytest.skip("every architecture exports")
    name = "roformer_v2" if "roformer_v2" in unsupported else unsupported[0]
    preset = _tiny_preset(name, tmp_path / name)
    with pytest.raises(MlmError, match=f"architecture {name} cannot be exported"):
        export_transformers(preset, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_run_checkpoints_export_and_corrupt_or_headless_ones_are_refused(exports, tmp_path):
    import shutil

    preset, _, _ = exports["bert"]
    run = tmp_path / "run"
    step = run / "checkpoints" / "step-3"
    shutil.copytree(preset, step / "preset")
    files = {str(p.relative_to(step)): p for p in sorted(step.rglob("*")) if p.is_file()}
    import hashlib

    manifest = {"step": 3, "files": {
        name: {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
        for name, p in files.items()}}
    (step / "manifest.json").write_text(json.dumps(manifest))
    proc = _cli(str(run), "--step", "3", "--format", "transformers", "--out", str(tmp_path / "ok"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ok" / "model.safetensors").is_file()
    weights = step / "preset" / "model.weights.h5"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    proc = _cli(str(run), "--format", "transformers", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "corrupt" in proc.stderr or "no complete checkpoint" in proc.stderr
    assert not (tmp_path / "out").exists()

    headless = tmp_path / "backbone_only"
    shutil.copytree(preset, headless)
    (headless / "task.json").unlink()
    proc = _cli(str(headless), "--format", "transformers", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "no MaskedLM head" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_writing_needs_neither_torch_nor_transformers(exports, tmp_path):
    preset, _, _ = exports["roberta"]
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "from mlm.run.hf_export import export_transformers\n"
        f"export_transformers({str(preset)!r}, out={str(tmp_path / 'out')!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / "model.safetensors").is_file()
