"""`train.mixed_precision` and `train.jit_compile`: candidates, the probe, its records,
and presets that keras-hub loads whatever the precision.

Nothing here depends on the CPU the suite runs on: bf16 and fp16 compute on
every CPU (emulated where it has no native support), and the "auto" decision
is tested with injected measurements.
"""

import json
import shutil

import numpy as np
import pytest

from mlm import config
from mlm.errors import MlmError
from mlm.training import step_settings
from mlm.training.step_settings import Accelerator, StepSettings
from tests.conftest import (
    max_weight_difference,
    run_mlm,
    run_python,
    sample_documents,
    tiny_task,
)

CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma {extra}\n"
CPU = Accelerator("cpu", False, "test cpu")
FP32_XLA, BF16_XLA = StepSettings("float32", True), StepSettings("mixed_bfloat16", True)
FP32, BF16 = StepSettings("float32", False), StepSettings("mixed_bfloat16", False)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [("", False), ("avx512f avx512_vnni", False), ("avx512_bf16", True),
     ("amx_bf16 amx_tile", True)],
)
def test_native_bf16_is_read_from_the_cpu_flags(extra, expected):
    assert step_settings.cpu_has_native_bf16(CPUINFO.format(extra=extra)) is expected


def test_candidates_on_cpu_gpu_tpu_and_jax():
    # The fallback first, then the cheap compiles (no XLA), XLA's second compile last.
    assert step_settings.candidates("auto", "auto", backend="tensorflow", accelerator=CPU) == [
        FP32_XLA, BF16, FP32, BF16_XLA]
    # Native bf16 or not, the CPU candidates are the same: the probe decides.
    native = Accelerator("cpu", True)
    assert step_settings.candidates("auto", "auto", backend="tensorflow", accelerator=native) == [
        FP32_XLA, BF16, FP32, BF16_XLA]
    assert step_settings.candidates("auto", "auto", backend="jax", accelerator=CPU) == [
        FP32_XLA, BF16_XLA]
    assert step_settings.candidates("auto", False, backend="tensorflow", accelerator=CPU) == [
        FP32, BF16]
    assert step_settings.candidates("mixed_bfloat16", "auto", backend="tensorflow",
                                accelerator=CPU) == [BF16_XLA, BF16]
    assert step_settings.candidates("float32", True, backend="tensorflow", accelerator=CPU) == [
        FP32_XLA]
    ampere, volta = Accelerator("gpu", True), Accelerator("gpu", False)
    assert step_settings.candidates("auto", "auto", backend="jax", accelerator=ampere) == [BF16_XLA]
    assert step_settings.candidates("auto", "auto", backend="tensorflow", accelerator=volta) == [
        StepSettings("mixed_float16", True)]
    assert step_settings.candidates("float32", "auto", backend="jax",
                                accelerator=Accelerator("tpu", True)) == [FP32_XLA]


class FakeClock:
    """A clock that only `measure` advances, by the time it pretends to take."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def fake_measure(clock, timings):
    calls = []

    def measure(option, seconds_left):
        calls.append(option)
        first, step = timings[option]
        clock.now += first + step_settings.PROBE_STEPS * step
        return first, step

    return measure, calls


TIMINGS = {FP32_XLA: (6.0, 0.25), BF16: (2.5, 0.20), FP32: (3.0, 0.26), BF16_XLA: (7.0, 0.28)}


def test_probe_picks_the_fastest_step():
    clock = FakeClock()
    measure, calls = fake_measure(clock, TIMINGS)
    result = step_settings.probe(list(TIMINGS), measure=measure, steps=2000, clock=clock)
    assert result.chosen == BF16 and calls == list(TIMINGS)
    assert result.seconds == pytest.approx(sum(f + 3 * s for f, s in TIMINGS.values()))
    assert "| bf16 no XLA (chosen) | 2.5 | 0.2000 |" in result.table()


def test_a_candidate_within_the_noise_margin_does_not_replace_the_earlier_one():
    clock = FakeClock()
    timings = {FP32_XLA: (6.0, 0.250), BF16: (2.5, 0.246), FP32: (3.0, 0.240)}
    measure, _ = fake_measure(clock, timings)
    assert step_settings.probe(list(timings), measure=measure, steps=10**6,
                           clock=clock).chosen == FP32  # 4% faster; 1.6% is not enough
    measure, _ = fake_measure(clock, {FP32_XLA: (6.0, 0.250), BF16: (2.5, 0.246)})
    assert step_settings.probe([FP32_XLA, BF16], measure=measure, steps=10**6,
                           clock=clock).chosen == FP32_XLA


def test_probe_stays_within_its_budget():
    # 200 steps at 0.25 s: a 50 s run, so 5 s of probing; the first candidate alone costs
    # more and is always measured, no other fits.
    clock = FakeClock()
    measure, calls = fake_measure(clock, TIMINGS)
    result = step_settings.probe(list(TIMINGS), measure=measure, steps=200, clock=clock)
    assert calls == [FP32_XLA] and result.chosen == FP32_XLA
    assert [r["step_seconds"] for r in result.rows] == [0.25, None, None, None]
    assert "over the probe's budget" in result.table()
    # A long run is capped at 60 s: 6.75 + 3.1 + 3.78 + 7.84 = 21.47 s fits; an 18 s cap
    # takes the first three only.
    clock = FakeClock()
    measure, calls = fake_measure(clock, TIMINGS)
    result = step_settings.probe(list(TIMINGS), measure=measure, steps=10**6, clock=clock,
                             max_seconds=18)
    assert calls == [FP32_XLA, BF16, FP32] and result.chosen == BF16


def _measure_never(option, seconds_left):
    raise AssertionError(f"measured {option} though the choice was recorded")


def test_choice_is_recorded_then_reused_on_resume_and_from_the_cache(tmp_path, bert_task):
    task, batch, _ = bert_task
    cache, said = tmp_path / "cache", []
    clock = FakeClock()
    measure, calls = fake_measure(clock, {FP32: (1.0, 0.3), BF16: (1.0, 0.1)})
    kwargs = dict(mixed_precision="auto", jit_compile=False, steps=10**4, cache_dir=cache,
                  write=True, say=said.append)

    def record(run):
        return tmp_path / run / step_settings.RUN_FILE

    first = step_settings.choose_step_settings(task, batch, record=record("a"), measure=measure,
                                           **kwargs)
    assert first.chosen == BF16 and calls == [FP32, BF16]
    assert task.backbone.compute_dtype == "bfloat16" and task.jit_compile is False
    assert json.loads((tmp_path / "a" / step_settings.RUN_FILE).read_text())["chosen"] == {
        "precision": "mixed_bfloat16", "jit_compile": False}
    assert any("bf16 no XLA (chosen)" in line for line in said)
    # --resume: the run's record; a new run on this machine: the cache. Nothing is timed.
    step_settings.set_precision(task, "float32")
    again = step_settings.choose_step_settings(task, batch, record=record("a"),
                                           measure=_measure_never, **kwargs)
    assert again.chosen == BF16 and again.source == "run directory"
    assert task.backbone.compute_dtype == "bfloat16"
    other = step_settings.choose_step_settings(task, batch, record=record("b"),
                                           measure=_measure_never, **kwargs)
    assert other.chosen == BF16 and other.source == "cache"
    # Another shape is another key: measured again.
    measure, calls = fake_measure(clock, {FP32: (1.0, 0.1), BF16: (1.0, 0.3)})
    x, y, w = batch
    shorter = ({k: v[:4] for k, v in x.items()}, y[:4], w[:4])
    third = step_settings.choose_step_settings(task, shorter, record=record("c"),
                                           measure=measure, **kwargs)
    assert third.chosen == FP32 and calls == [FP32, BF16]
    # Explicit settings are never timed; a multi-process run takes the first candidate.
    explicit = step_settings.choose_step_settings(
        task, batch, **{**kwargs, "mixed_precision": "mixed_bfloat16"}, record=record("d"),
        measure=_measure_never)
    assert explicit.chosen == BF16 and explicit.source == "recipe"
    multi = step_settings.choose_step_settings(
        task, batch, **{**kwargs, "cache_dir": None}, record=record("e"),
        measure=_measure_never, multi_process=True)
    assert multi.chosen == FP32


@pytest.fixture
def bert_task(tmp_path):
    """A compiled test-recipe task, one preprocessed batch of 8 windows, the preprocessor."""
    from mlm.data import vocab

    vocabulary = vocab.train_vocabulary(
        sample_documents(20), family="wordpiece", size=300, lowercase=True, min_frequency=2,
        out_dir=tmp_path / "vocab",
    )
    task, preprocessor = tiny_task(vocabulary=str(vocabulary), seed=1)
    batch = preprocessor(sample_documents(8, start=30))
    return task, batch, preprocessor


@pytest.mark.slow
def test_real_probe_leaves_the_task_as_it_found_it(tmp_path, bert_task):
    task, batch, _ = bert_task
    before = [np.array(v.numpy()) for v in task.variables]
    result = step_settings.choose_step_settings(
        task, batch, mixed_precision="auto", jit_compile=False, steps=10**6,
        record=tmp_path / "run" / step_settings.RUN_FILE, cache_dir=None, write=False,
        say=lambda _: None)
    assert [r["label"] for r in result.rows] == ["fp32 no XLA", "bf16 no XLA"]
    assert all(r["step_seconds"] > 0 for r in result.rows)
    assert int(task.optimizer.iterations.numpy()) == 0
    for variable, value in zip(task.variables, before, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)
    assert all(np.all(v.numpy() == 0) for v in task.optimizer.variables)
    # The kept function trains in the chosen precision.
    x, y, w = batch
    assert np.isfinite(task.train_on_batch(x, y, sample_weight=w, return_dict=True)["loss"])
    assert task.backbone.compute_dtype == {"float32": "float32",
                                           "mixed_bfloat16": "bfloat16"}[result.chosen.precision]


def test_unknown_precision_or_jit_value_is_a_clear_error():
    recipe = config.load_recipe("bert_test")
    with pytest.raises(MlmError, match="train.mixed_precision.*float16"):
        config.apply_overrides(recipe, ["train.mixed_precision=float16"])
    with pytest.raises(MlmError, match="train.jit_compile"):
        config.apply_overrides(recipe, ["train.jit_compile=sometimes"])
    assert config.apply_overrides(recipe, ["train.jit_compile=auto"]).train.jit_compile == "auto"
    assert config.apply_overrides(recipe, ["train.jit_compile=true"]).train.jit_compile is True


@pytest.mark.slow
@pytest.mark.parametrize(("policy", "compute", "tolerance"),
                         [("mixed_bfloat16", "bfloat16", 0.1), ("mixed_float16", "float16", 0.01)])
def test_mixed_precision_trains_and_saves_a_float32_preset(tmp_path, bert_task, policy, compute,
                                                           tolerance):
    import keras_hub

    from mlm.preset_loading import load_masked_lm
    from mlm.run import checkpoints

    task, batch, preprocessor = bert_task
    step_settings.apply(task, StepSettings(policy, False))
    x, y, w = batch
    losses = [float(task.train_on_batch(x, y, sample_weight=w, return_dict=True)["loss"])
              for _ in range(3)]
    assert task.backbone.compute_dtype == compute
    assert {v.dtype for v in task.trainable_variables} == {"float32"}
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    expected = np.asarray(task.predict_on_batch(x), dtype="float32")
    path = checkpoints.save_checkpoint(task, preprocessor=preprocessor,
                                       run_dir=tmp_path, step=3, state={}, keep=1)
    assert task.backbone.compute_dtype == compute  # saving leaves the run's precision
    saved = json.loads((path / "preset" / "config.json").read_text())
    assert saved["config"]["dtype"]["config"]["name"] == "float32"
    for load in (keras_hub.models.MaskedLM.from_preset, load_masked_lm):
        reloaded = load(str(path / "preset"))
        reloaded.preprocessor = None
        got = np.asarray(reloaded.predict_on_batch(x))
        # float32 logits of the same weights: within the precision's rounding.
        np.testing.assert_allclose(got, expected, atol=tolerance * max(1, np.abs(got).max()))
    step_settings.apply(reloaded, StepSettings(policy, False))  # same precision: same logits
    np.testing.assert_allclose(np.asarray(reloaded.predict_on_batch(x), dtype="float32"),
                               expected, atol=1e-6)


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory, small_corpus, held_out_corpus):
    run_dir = tmp_path_factory.mktemp("runs") / "bf16"
    run_mlm("pretrain", "--recipe", "bert_test", "--corpus", small_corpus, "--held-out",
            held_out_corpus, "--run-dir", run_dir, "--deterministic",
            "--set", "train.mixed_precision=mixed_bfloat16", check=True)
    return run_dir


@pytest.mark.slow
def test_a_bf16_run_exports_a_preset_keras_hub_alone_loads(bf16_run):
    out = run_python(f"""
        import sys, keras_hub
        p = "{bf16_run / 'preset'}"
        m = keras_hub.models.MaskedLM.from_preset(p)
        c = keras_hub.models.TextClassifier.from_preset(p, num_classes=2)
        b = keras_hub.models.Backbone.from_preset(p)
        print(type(m).__name__, type(c).__name__, type(b).__name__, m.backbone.compute_dtype,
              c.predict(["In the beginning"], verbose=0).shape, "mlm" in sys.modules)
    """)
    assert out.split() == ["BertMaskedLM", "BertTextClassifier", "BertBackbone", "float32",
                           "(1,", "2)", "False"]
    recorded = json.loads((bf16_run / step_settings.RUN_FILE).read_text())
    assert recorded["chosen"]["precision"] == "mixed_bfloat16"


@pytest.mark.slow
def test_a_bf16_run_resumes_exactly_evaluates_predicts_and_continues(
        bf16_run, tmp_path, held_out_corpus, small_corpus):
    resumed = tmp_path / "resumed"
    shutil.copytree(bf16_run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-6")
    shutil.rmtree(resumed / "preset")
    _, _, err = run_mlm("pretrain", "--run-dir", resumed, "--resume", check=True)
    assert "train step: bf16 no XLA" in err
    assert max_weight_difference(resumed / "preset", bf16_run / "preset") == 0.0
    # A fresh process resumes (the run is --deterministic, a setting of the whole process);
    # the commands that read the preset run in this one.
    _, out, _ = run_mlm("evaluate", bf16_run / "preset", "--corpus", held_out_corpus,
                        in_process=True, check=True)
    assert out.startswith("masked accuracy ")
    _, out, _ = run_mlm("predict", bf16_run / "preset", "Let there be [MASK].",
                        in_process=True, check=True)
    assert "mask 1:" in out
    _, out, _ = run_mlm("continue", "--preset", bf16_run / "preset", "--corpus", small_corpus,
                        "--held-out", held_out_corpus, "--run-dir", tmp_path / "continued",
                        "--steps", "2", "--set", "train.mixed_precision=mixed_bfloat16",
                        "--set", "train.jit_compile=false", "--set", "train.eval_batches=1",
                        in_process=True, check=True)
    assert "held-out masked accuracy" in out
    assert (tmp_path / "continued" / "preset" / "task.weights.h5").is_file()
