"""Pure helpers of `benchmarks/compare.py` (the benchmarks themselves run on demand only)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from compare import _budget_for, time_to_accuracy  # noqa: E402

CURVE = [{"seconds": 10.0, "accuracy": 0.10}, {"seconds": 20.0, "accuracy": 0.30},
         {"seconds": 30.0, "accuracy": 0.35}]


@pytest.mark.parametrize("target, seconds", [
    (0.05, 5.0),   # before the first point: from (0 s, accuracy 0)
    (0.20, 15.0),  # between two points, linearly
    (0.30, 20.0),  # on a point
    (0.35, 30.0),  # the last point
    (0.50, None),  # never reached
])
def test_time_to_accuracy_interpolates_the_curve(target, seconds):
    assert time_to_accuracy(CURVE, target) == (None if seconds is None else pytest.approx(seconds))


def test_a_curve_that_dips_counts_its_first_crossing():
    curve = [{"seconds": 10.0, "accuracy": 0.3}, {"seconds": 20.0, "accuracy": 0.1},
             {"seconds": 30.0, "accuracy": 0.4}]
    assert time_to_accuracy(curve, 0.3) == pytest.approx(10.0)


def test_a_budget_fraction_scales_only_the_contender_it_names():
    spec = {"budget_seconds": 600.0, "seed": 0}
    fractions = ["mlm=0.25", "keras_hub_guide=0.5"]
    assert _budget_for("mlm", spec, fractions) == {"budget_seconds": 150.0, "seed": 0}
    assert _budget_for("keras_hub_guide", spec, fractions)["budget_seconds"] == 300.0
    assert _budget_for("hf", spec, fractions) is spec
