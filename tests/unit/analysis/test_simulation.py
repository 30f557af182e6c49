"""The verdict check in small: each verdict tried on simulated studies where the truth is known."""

import numpy as np
import pytest

from pipeline.analysis.simulation import (
    GapScenario,
    draw_gap_study,
    null_false_cause_rates,
)


def test_a_drawn_study_holds_what_its_scenario_says():
    s = GapScenario(n_val=3000, n_test=2000, prevalence_val=0.7, seen_val=0.5, seen_prevalence_val=0.9, seen_lift=5.0)
    study = draw_gap_study(s, np.random.default_rng(0))
    assert len(study.y_val) == 3000 and len(study.y_test) == 2000
    assert np.mean(study.y_val) == pytest.approx(0.7, abs=0.05) and np.mean(study.y_val[study.seen_val]) == pytest.approx(0.9, abs=0.05)
    right = (study.p_val >= 0.5) == (study.y_val == 1)
    positives = study.y_val == 1
    lift = right[study.seen_val & positives].mean() - right[~study.seen_val & positives].mean()
    assert lift == pytest.approx(0.05, abs=0.03)
    sizes = np.bincount(study.units_val)
    assert sizes.min() >= 1 and sizes.max() <= 5 and not set(study.units_val) & set(study.units_test)
    assert s.truth() == {"leakage": "supported", "prevalence": "absent", "residual": "absent", "seen_in_test": "absent"}


def test_the_null_of_a_studys_own_design():
    rates = null_false_cause_rates(GapScenario(n_val=200, n_test=150, seen_val=0.3, seen_test=0.2, sens=0.9, spec=0.7), 30, 0, 300)
    assert set(rates) == {"leakage", "prevalence", "residual", "seen_in_test"} and all(0 <= r <= 1 for r in rates.values())
