import numpy as np
import pytest
from sklearn import metrics as skm

from pipeline.metrics import binary_scores, positive_index, youden_threshold


def test_positive_class_is_pneumonia_else_the_last():
    assert positive_index(["NORMAL", "PNEUMONIA"]) == 1
    assert positive_index(["PNEUMONIA", "ZNORMAL"]) == 0
    assert positive_index(["a", "b", "c"]) == 2


def test_scores_and_threshold():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.4, 0.6, 0.55, 0.8, 0.3])
    s = binary_scores(y, p)
    assert (s["tp"], s["fp"], s["tn"], s["fn"]) == (2, 1, 2, 1)
    assert s["sensitivity"] == pytest.approx(2 / 3) and s["specificity"] == pytest.approx(2 / 3)
    assert s["auc"] == pytest.approx(skm.roc_auc_score(y, p))
    t = youden_threshold(y, p)
    at = binary_scores(y, p, t)
    assert at["sensitivity"] + at["specificity"] >= s["sensitivity"] + s["specificity"]


def test_the_sensitivity_threshold_is_the_highest_that_reaches_the_target():
    from pipeline.metrics import operating_threshold, sensitivity_threshold

    y = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
    p = np.array([0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.35, 0.45])
    for target in (0.5, 0.8, 0.95, 1.0):
        t = sensitivity_threshold(y, p, target)
        assert np.mean(p[y == 1] >= t) >= target  # reached ...
        assert np.mean(p[y == 1] >= np.nextafter(t, 1)) < target  # ... and by no higher threshold
    assert operating_threshold(y, p, None)[1].startswith("Youden") and operating_threshold(y, p, 0.9)[1] == "sensitivity >= 0.9 on validation"
