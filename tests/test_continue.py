"""Continued pretraining from a keras-hub preset or a HuggingFace checkpoint."""

import json

import keras
import keras_hub
import numpy as np
import pytest

from mlm import config
from mlm.data import vocab
from mlm.pretraining import continue_pretraining, preset_task
from mlm.run.log import MetricsLog
from tests.conftest import (
    corpus_overrides,
    max_weight_difference,
    run_mlm,
    run_python,
    sample_documents,
)

pytestmark = pytest.mark.slow

HIDDEN, INTERMEDIATE = 32, 64
TRAIN = [
    "train.batch_size=8", "train.steps=4", "train.log_every=2", "train.eval_every=2",
    "train.eval_batches=2", "train.checkpoint_every=2", "train.jit_compile=false",
    "model.sequence_length=32",
]


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory):
    out = tmp_path_factory.mktemp("vocab")
    return vocab.train_vocabulary(sample_documents(40, start=300), family="wordpiece", size=600,
                                  lowercase=True, min_frequency=2, out_dir=out)


@pytest.fixture(scope="module")
def keras_hub_preset(tmp_path_factory, vocabulary):
    """A local keras-hub MaskedLM preset with random weights."""
    keras.utils.set_random_seed(3)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=str(vocabulary), lowercase=True)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=tokenizer.vocabulary_size(), num_layers=1, num_heads=2,
        hidden_dim=HIDDEN, intermediate_dim=INTERMEDIATE, max_sequence_length=512,
    )
    preprocessor = keras_hub.models.BertMaskedLMPreprocessor(tokenizer, sequence_length=64)
    task = keras_hub.models.BertMaskedLM(backbone=backbone, preprocessor=preprocessor)
    path = tmp_path_factory.mktemp("presets") / "tiny_keras_hub"
    task.save_to_preset(str(path))
    return path


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory, vocabulary):
    """A local HuggingFace `BertModel` checkpoint: config, vocab and safetensors."""
    from safetensors.numpy import save_file

    words = vocabulary.read_text(encoding="utf-8").splitlines()
    rng = np.random.default_rng(0)
    h, i, v, p = HIDDEN, INTERMEDIATE, len(words), 64

    def w(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    tensors = {
        "embeddings.word_embeddings.weight": w(v, h),
        "embeddings.position_embeddings.weight": w(p, h),
        "embeddings.token_type_embeddings.weight": w(2, h),
        "embeddings.LayerNorm.weight": np.ones(h, np.float32),
        "embeddings.LayerNorm.bias": np.zeros(h, np.float32),
        "pooler.dense.weight": w(h, h),
        "pooler.dense.bias": np.zeros(h, np.float32),
    }
    layer = "encoder.layer.0."
    for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                 "attention.output.dense"):
        tensors[f"{layer}{name}.weight"] = w(h, h)
        tensors[f"{layer}{name}.bias"] = np.zeros(h, np.float32)
    tensors[f"{layer}intermediate.dense.weight"] = w(i, h)
    tensors[f"{layer}intermediate.dense.bias"] = np.zeros(i, np.float32)
    tensors[f"{layer}output.dense.weight"] = w(h, i)
    tensors[f"{layer}output.dense.bias"] = np.zeros(h, np.float32)
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
        tensors[f"{layer}{name}.weight"] = np.ones(h, np.float32)
        tensors[f"{layer}{name}.bias"] = np.zeros(h, np.float32)

    path = tmp_path_factory.mktemp("presets") / "tiny_hf_bert"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": v,
        "hidden_size": h, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": i, "max_position_embeddings": p, "type_vocab_size": 2,
        "hidden_act": "gelu", "layer_norm_eps": 1e-12,
    }))
    (path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    (path / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    save_file(tensors, str(path / "model.safetensors"))
    return path, tensors


def _recipe(preset, corpus, held_out, *extra):
    return config.apply_overrides(
        config.load_recipe("continue_pretraining"),
        [*TRAIN, f"model.preset={json.dumps(str(preset))}",
         *corpus_overrides(corpus, held_out), *extra],
    )


def test_starting_weights_are_the_presets(keras_hub_preset, small_corpus, held_out_corpus,
                                         tmp_path):
    recipe = _recipe(keras_hub_preset, small_corpus, held_out_corpus)
    log = MetricsLog(tmp_path, quiet=True)
    task = preset_task(recipe, log=log)
    original = keras_hub.models.MaskedLM.from_preset(str(keras_hub_preset))
    assert max_weight_difference(task, original) == 0.0
    # The run's sequence length and masking, not the preset's 64.
    assert task.preprocessor.sequence_length == 32


def test_continue_from_a_keras_hub_preset(keras_hub_preset, small_corpus, held_out_corpus,
                                         tmp_path, capsys):
    run_dir = tmp_path / "run"
    summary = continue_pretraining(
        str(keras_hub_preset), run_dir=run_dir,
        recipe=_recipe(keras_hub_preset, small_corpus, held_out_corpus),
    )
    err = capsys.readouterr().err
    assert "backbone and MaskedLM head kept" in err
    assert "training a wordpiece vocabulary" not in err and not (run_dir / "vocab").exists()
    # Held-out metrics of the starting preset and of the result are both reported.
    assert summary["held_out_start"]["accuracy"] >= 0.0
    assert summary["held_out"]["loss"] < summary["held_out_start"]["loss"]
    exported = run_dir / "preset"
    asset = "assets/tokenizer/vocabulary.txt"
    assert (exported / asset).read_bytes() == (keras_hub_preset / asset).read_bytes()
    result = keras_hub.models.MaskedLM.from_preset(str(exported))
    original = keras_hub.models.MaskedLM.from_preset(str(keras_hub_preset))
    assert max_weight_difference(result.backbone, original.backbone) > 0
    assert json.loads((run_dir / "config.json").read_text())["model"]["preset"] == str(
        keras_hub_preset)


def test_continued_preset_loads_without_mlm(keras_hub_preset, small_corpus, held_out_corpus,
                                           tmp_path):
    run_dir = tmp_path / "run"
    code, _, _ = run_mlm("continue", "--preset", keras_hub_preset, "--corpus", small_corpus,
                         "--held-out", held_out_corpus, "--run-dir", run_dir, "--quiet",
                         "--set", *TRAIN, in_process=True)
    assert code == 0
    out = run_python(f"""
        import sys, keras_hub
        d = "{run_dir / 'preset'}"
        print(type(keras_hub.models.MaskedLM.from_preset(d)).__name__)
        print(type(keras_hub.models.TextClassifier.from_preset(d, num_classes=3)).__name__)
        print(type(keras_hub.models.Backbone.from_preset(d)).__name__)
        print("mlm" in sys.modules)
    """)
    assert out.split() == ["BertMaskedLM", "BertTextClassifier", "BertBackbone", "False"]


def test_continue_from_a_huggingface_checkpoint(hf_checkpoint, small_corpus, held_out_corpus,
                                               tmp_path, capsys):
    path, tensors = hf_checkpoint
    recipe = _recipe(path, small_corpus, held_out_corpus)
    task = preset_task(recipe, log=MetricsLog(tmp_path, quiet=False))
    assert "no MaskedLM head, so a new head was created" in capsys.readouterr().err
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(task.backbone.token_embedding.embeddings),
        tensors["embeddings.word_embeddings.weight"],
    )
    summary = continue_pretraining(str(path), run_dir=tmp_path / "run", recipe=recipe)
    assert summary["held_out"]["accuracy"] >= 0.0
    result = keras_hub.models.MaskedLM.from_preset(str(tmp_path / "run" / "preset"))
    assert result.backbone.max_sequence_length == 64


def test_sequence_length_above_the_presets_maximum(hf_checkpoint, small_corpus, held_out_corpus,
                                                  tmp_path):
    path, _ = hf_checkpoint
    run_dir = tmp_path / "run"
    code, _, err = run_mlm("continue", "--preset", path, "--corpus", small_corpus,
                           "--held-out", held_out_corpus, "--run-dir", run_dir,
                           "--sequence-length", "128", in_process=True)
    err = err.strip().splitlines()[-1]
    assert code == 2
    assert "max_sequence_length=64" in err and "sequence_length=128" in err
    assert not run_dir.exists()


def test_builtin_handle_offline_is_a_one_line_error(small_corpus, tmp_path):
    run_dir = tmp_path / "run"
    code, _, err = run_mlm("continue", "--preset", "bert_tiny_en_uncased", "--corpus",
                           small_corpus, "--run-dir", run_dir, in_process=True)
    lines = err.strip().splitlines()
    assert code == 2
    assert lines[-1].startswith("mlm: error: could not download preset bert_tiny_en_uncased")
    assert "local directory" in lines[-1]
    assert not run_dir.exists()


def _masked_lm_folder(hf_checkpoint, folder, *, drop=("pooler.",)):
    """The checkpoint as transformers saves a `BertForMaskedLM`: no pooler, `bert.` keys."""
    from safetensors.numpy import save_file

    path, tensors = hf_checkpoint
    folder.mkdir()
    for name in ("tokenizer_config.json", "vocab.txt"):
        (folder / name).write_bytes((path / name).read_bytes())
    config = json.loads((path / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config,
                                                    "architectures": ["BertForMaskedLM"]}))
    kept = {f"bert.{k}": v for k, v in tensors.items() if not k.startswith(drop)}
    save_file(kept, str(folder / "model.safetensors"))
    return folder, tensors


def test_continue_from_a_huggingface_masked_lm_without_a_pooler(
        hf_checkpoint, small_corpus, held_out_corpus, tmp_path):
    folder, tensors = _masked_lm_folder(hf_checkpoint, tmp_path / "hf_mlm")
    task = preset_task(_recipe(folder, small_corpus, held_out_corpus),
                       log=MetricsLog(tmp_path, quiet=True))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(task.backbone.token_embedding.embeddings),
        tensors["embeddings.word_embeddings.weight"],
    )
    pooler = keras.ops.convert_to_numpy(task.backbone.get_layer("pooled_dense").kernel)
    assert 0.01 < pooler.std() < 0.03  # newly initialised as transformers does: normal(0, 0.02)
    assert sorted(p.name for p in folder.iterdir()) == [  # the user's folder is left as it was
        "config.json", "model.safetensors", "tokenizer_config.json", "vocab.txt"]


def test_a_checkpoint_keras_hub_cannot_convert_is_a_one_line_error(
        hf_checkpoint, small_corpus, tmp_path):
    folder, _ = _masked_lm_folder(hf_checkpoint, tmp_path / "broken",
                                  drop=("encoder.layer.0.output.",))
    code, _, err = run_mlm("continue", "--preset", folder, "--corpus", small_corpus,
                           "--run-dir", tmp_path / "run", in_process=True)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in "\n".join(lines)
    assert lines[-1].startswith(f"mlm: error: cannot convert the checkpoint in {folder}")
    assert "output.dense.weight" in lines[-1]
    assert not (tmp_path / "run").exists()
