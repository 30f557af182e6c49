"""Temperature scaling: fitted on the logits, judged out of fold."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

from pipeline.analysis.gap import calibration
from pipeline.calibration import cross_fitted, fit_temperature, softmax


def test_temperature_scaling_undoes_planted_overconfidence():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(4000, 2)) * 2
    y = np.array([rng.random() < p for p in np.exp(logits[:, 1]) / np.exp(logits).sum(1)], dtype=int)
    assert fit_temperature(logits * 3, y) == pytest.approx(3.0, rel=0.1)  # three times too sure


def reference_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    def nll(t):
        z = logits / t
        z = z - z.max(1, keepdims=True)
        return -np.mean(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1)))

    return minimize_scalar(nll, bounds=(0.05, 20), method="bounded", options={"xatol": 1e-8}).x


def test_the_temperature_is_fitted_on_logits_whose_margins_pass_any_clip():
    # Issue 19, case 9: margins of 20 to 40; probabilities clipped at 1e-12 cap them at 27.6.
    rng = np.random.default_rng(0)
    margin = rng.uniform(20, 40, 500)
    y = (rng.random(500) < 0.85).astype(int)  # the favoured class is right 85 % of the time
    logits = np.stack([np.zeros(500), margin], 1)
    truth = reference_temperature(logits, y)
    assert fit_temperature(logits, y) == pytest.approx(truth, rel=1e-3)
    clipped = np.log(np.clip(softmax(logits), 1e-12, 1.0))
    assert abs(fit_temperature(clipped, y) - truth) > 0.1 * truth  # what fitting on clipped probabilities gave


def test_softmax_is_the_calibrated_models_own_output():
    logits = np.array([[0.3, 2.0], [5.0, -1.0]], np.float32)
    expected = torch.softmax(torch.from_numpy(logits) / torch.tensor(2.5), 1).numpy()
    assert np.array_equal(softmax(logits, 2.5), expected)


def test_the_error_after_calibration_is_cross_fitted():
    # Issue 19, case 12: a temperature judged on the images it was fitted on flatters itself.
    # Out of fold, an image's calibrated probability cannot depend on its own label.
    rng = np.random.default_rng(1)
    n = 120
    logits = np.stack([np.zeros(n), rng.normal(0, 4, n)], 1)
    y = (rng.random(n) < 1 / (1 + np.exp(-logits[:, 1] / 3))).astype(int)
    units = np.arange(n) // 2
    held_out = cross_fitted(logits, y, units, folds=5, seed=0)
    flipped = y.copy()
    flipped[:2] = 1 - flipped[:2]  # the two images of unit 0
    again = cross_fitted(logits, flipped, units, folds=5, seed=0)
    assert np.array_equal(again[:2], held_out[:2]) and not np.array_equal(again, held_out)
    in_sample = lambda labels: softmax(logits, fit_temperature(logits, labels))  # noqa: E731
    assert not np.allclose(in_sample(flipped)[:2], in_sample(y)[:2])
    assert calibration(y, held_out[:, 1])["ece"] < calibration(y, softmax(logits)[:, 1])["ece"]  # T ~ 3 still helps
