"""The verdict check in small (`benchmarks/verdicts.py` at 40 studies per scenario): slow for a unit test."""

import numpy as np
import pytest

from pipeline.analysis.verdict_check import POWER_LIMIT, monte_carlo_limit, verdict_check


def test_the_fast_verdict_check_keeps_false_causes_rare_and_finds_planted_ones():
    # A smoke test of benchmarks/verdicts.py (200 studies, judged at the one-sided 95 % margin):
    # 40 studies judged at 99.9 %, which still fails the image-level intervals (15.7 % false
    # residuals) and the class-mix leakage that issue 19 found.
    studies = 40
    rows = verdict_check(studies, resamples=400, seed=1)
    assert monte_carlo_limit(200) == pytest.approx(0.05 + 1.645 * np.sqrt(0.05 * 0.95 / 200), rel=1e-4)
    assert monte_carlo_limit(200, rates=10) == pytest.approx(0.05 + 2.576 * np.sqrt(0.05 * 0.95 / 200), rel=1e-3)
    limit = monte_carlo_limit(studies, confidence=0.999)
    judged = [r for r in rows if r.judged]
    worst = max(judged, key=lambda r: r.false_cause_rate)
    assert worst.false_cause_rate <= limit, worst
    planted = [r for r in judged if r.power is not None]
    assert {(r.scenario[0], r.cause) for r in planted} == {
        ("c", "leakage"),
        ("d", "prevalence"),
        ("e", "shortcut"),
        ("f", "shortcut"),
        ("j", "paired auc"),
        ("l", "shift"),
    }
    assert min(r.power for r in planted) >= POWER_LIMIT
    # The class-mix scenario is the one issue 19 found leakage in: no longer.
    (mix,) = [r for r in rows if r.scenario.startswith("b.") and r.cause == "leakage"]
    assert mix.truth == "absent" and mix.false_cause_rate <= limit
