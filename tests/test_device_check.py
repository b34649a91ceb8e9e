"""benchmarks/device_check.py: its smoke mode runs, with and without TensorFlow installed."""

import importlib.util
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "device_check.py"
HF_INSTALLED = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))


def load_script():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(output: str) -> dict[str, list[str]]:
    """The rows of the printed table, by their first cell."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 7:
            rows[cells[0]] = cells
    return rows


def test_synthetic_batches_are_shaped_as_the_pipelines():
    from mlm.architectures import get_architecture
    from mlm.config import MaskingConfig
    from mlm.data.masking import max_selections
    from mlm.data.pipeline import TokenIds, training_dataset

    check = load_script()
    for length in (8, 32, 128, 512):
        assert check.max_selections(length, 0.15) == max_selections(length, 0.15)
    assert check.SPECIAL_TOKENS == get_architecture("bert").special_tokens
    shape = check.SHAPES["smoke"]
    x, y, w = check.make_batches({"shape": shape, "seed": 0}, count=1)[0]
    ids = TokenIds(vocabulary_size=shape["vocabulary_size"], start_id=2, end_id=3, pad_id=0,
                   mask_id=4, special_ids=(0, 1, 2, 3, 4))
    tokens = np.random.default_rng(0).integers(5, shape["vocabulary_size"], 3000, dtype=np.int32)
    dataset = training_dataset(tokens, sequence_length=shape["sequence_length"],
                               batch_size=shape["batch_size"], masking=MaskingConfig(), ids=ids,
                               seed=0, arch=get_architecture("bert"))
    px, py, pw = next(dataset.as_numpy_iterator())
    assert sorted(x) == sorted(px)
    for key in px:
        assert (x[key].dtype, x[key].shape) == (px[key].dtype, px[key].shape), key
    assert (y.dtype, y.shape, w.dtype, w.shape) == (py.dtype, py.shape, pw.dtype, pw.shape)
    # Full windows: [CLS] ... [SEP], every mask slot used, at distinct word positions.
    assert (x["token_ids"][:, 0] == 2).all() and (x["token_ids"][:, -1] == 3).all()
    positions = x["mask_positions"]
    assert (np.diff(positions, axis=1) > 0).all() and positions.min() >= 1
    assert positions.max() <= shape["sequence_length"] - 2 and (w == 1).all()


@pytest.fixture(scope="module")
def python_without_tensorflow(tmp_path_factory):
    """A Python that sees this environment's packages except TensorFlow, as on the GPU
    machine: a venv whose site-packages links every entry of ours but TensorFlow's."""
    venv = tmp_path_factory.mktemp("no_tensorflow") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = venv.glob("lib/python*/site-packages")
    ours = {Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}
    for entry in sorted(p for folder in ours for p in folder.iterdir()):
        target = site / entry.name
        if not entry.name.lower().startswith(("tensorflow", "tf_keras")) and \
                not target.exists():
            target.symlink_to(entry)
    python = venv / "bin" / "python"
    probe = subprocess.run([python, "-c", "import keras_hub, tensorflow"],
                           capture_output=True, text=True)
    assert "No module named 'tensorflow'" in probe.stderr, probe.stderr[-2000:]
    return python


@pytest.mark.slow
@pytest.mark.parametrize("tensorflow", ["installed", "missing"])
def test_smoke_run_prints_throughput_and_mfu(tensorflow, request, jax_env):
    python = sys.executable if tensorflow == "installed" else \
        request.getfixturevalue("python_without_tensorflow")
    proc = subprocess.run([python, str(SCRIPT), "--smoke", "--time-limit", "240"], env=jax_env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = table_rows(proc.stdout)
    _, settings, steps, per_step, tokens, _, mfu = rows["mlm"]
    assert settings.startswith("fp32 + XLA") and int(steps) >= 2, proc.stdout
    assert float(per_step) > 0 and float(tokens.replace(",", "")) > 0
    assert 0 < float(mfu) <= 1, proc.stdout
    if tensorflow == "missing":
        assert "mlm: mlm.training.task (no TensorFlow), keras" in proc.stdout
        assert "TensorFlow imported by the mlm run: no" in proc.stdout
    else:
        assert "mlm: mlm.training.task, keras" in proc.stdout
    hf = rows["HF BertForMaskedLM"]
    if HF_INSTALLED:
        assert float(hf[4].replace(",", "")) > 0, proc.stdout
    else:
        assert hf[1] == "skipped (torch/transformers not installed)", proc.stdout
