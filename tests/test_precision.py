"""`train.mixed_precision`: resolving "auto" from the CPU flags, and applying it."""

import numpy as np
import pytest

from mlm import config
from mlm.errors import MlmError
from mlm.train import cpu_has_native_bf16, resolve_precision

CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma {extra}\n"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [("", False), ("avx512f avx512_vnni", False), ("avx512_bf16", True),
     ("amx_bf16 amx_tile", True)],
)
def test_native_bf16_is_read_from_the_cpu_flags(extra, expected):
    assert cpu_has_native_bf16(CPUINFO.format(extra=extra)) is expected


def test_auto_picks_bf16_only_with_native_support_and_explicit_values_win():
    assert resolve_precision("auto", native_bf16=True) == "mixed_bfloat16"
    assert resolve_precision("auto", native_bf16=False) == "float32"
    assert resolve_precision("float32", native_bf16=True) == "float32"
    assert resolve_precision("mixed_bfloat16", native_bf16=False) == "mixed_bfloat16"


def test_unknown_precision_is_a_clear_error():
    recipe = config.load_recipe("bert_test")
    with pytest.raises(MlmError, match="train.mixed_precision.*float16"):
        config.apply_overrides(recipe, ["train.mixed_precision=float16"])


def test_mixed_bfloat16_computes_in_bf16_with_float32_weights_and_trains(tmp_path):
    import keras

    from mlm import vocab
    from mlm.architectures import get_architecture
    from mlm.train import build_task, compile_task
    from tests.conftest import sample_documents

    recipe = config.apply_overrides(
        config.load_recipe("bert_test"), ["train.mixed_precision=mixed_bfloat16"]
    )
    vocab_path = vocab.train_vocabulary(
        sample_documents(20), family="wordpiece", size=300, lowercase=True, min_frequency=2,
        out_dir=tmp_path / "vocab",
    )
    tokenizer = vocab.build_tokenizer(vocab_path, family="wordpiece", lowercase=True)
    keras.utils.set_random_seed(1)
    task = build_task(recipe.model, arch=get_architecture("bert"), tokenizer=tokenizer,
                      masking=recipe.masking)
    compile_task(task, recipe.train)
    preprocessor, task.preprocessor = task.preprocessor, None
    x, y, w = preprocessor(["In the beginning God created the heaven and the earth."] * 4)
    losses = [float(np.ravel(task.train_on_batch(x, y, sample_weight=w))[0]) for _ in range(3)]
    assert task.backbone.compute_dtype == "bfloat16"
    assert {v.dtype for v in task.trainable_variables} == {"float32"}
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
