"""The shortcut check: what is hidden, and what the findings say of a model that reads a marker."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.analysis.shortcuts import LUNG_BOX, SHORTCUT_AUC, box_pixels, hide_lungs, hide_outside, shortcut_finding
from pipeline.analysis.uncertainty import auc_interval


def test_the_box_is_hidden_with_the_images_own_mean_and_nothing_else_moves():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 40, 50), dtype=np.uint8)
    r0, r1, c0, c1 = box_pixels(40, 50)
    assert (r0, r1, c0, c1) == (round(LUNG_BOX[1] * 40), round(LUNG_BOX[3] * 40), round(LUNG_BOX[0] * 50), round(LUNG_BOX[2] * 50))
    means = np.round(images.reshape(3, -1).mean(1))
    lungs = hide_lungs(images)
    assert all((lungs[k, r0:r1, c0:c1] == means[k]).all() for k in range(3))
    outside = lungs.copy()
    outside[:, r0:r1, c0:c1] = images[:, r0:r1, c0:c1]
    assert np.array_equal(outside, images)  # only the box changed
    shown = hide_outside(images)
    assert np.array_equal(shown[:, r0:r1, c0:c1], images[:, r0:r1, c0:c1])
    assert all((shown[k, :r0] == means[k]).all() and (shown[k, :, :c0] == means[k]).all() for k in range(3))
    assert images.dtype == lungs.dtype == shown.dtype


def marker_images(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Lungs that say nothing; a bright marker in the corner, outside the lung box, on the sick."""
    y = rng.integers(0, 2, n)
    images = rng.integers(60, 120, (n, 48, 48), dtype=np.uint8)
    images[y == 1, 1:4, 1:4] = 255
    return images, y


def corner_reader(images: np.ndarray) -> np.ndarray:
    return images[:, 1:4, 1:4].mean(axis=(1, 2)) / 255.0


def test_a_model_that_reads_a_corner_marker_is_called_out():
    rng = np.random.default_rng(1)
    images, y = marker_images(300, rng)
    lungs_hidden = auc_interval(y, corner_reader(hide_lungs(images)), seed=0)
    outside_hidden = auc_interval(y, corner_reader(hide_outside(images)), seed=0)
    assert lungs_hidden.low > SHORTCUT_AUC  # the marker survives hiding the lungs
    sentence = shortcut_finding("m", {"value": lungs_hidden.value, "ci_low": lungs_hidden.low, "ci_high": lungs_hidden.high},
                                {"value": outside_hidden.value, "ci_low": outside_hidden.low, "ci_high": outside_hidden.high},
                                roc_auc_score(y, corner_reader(images)))
    assert sentence.startswith("m still separates the classes with the lungs hidden") and "something other than the lungs" in sentence


@pytest.mark.parametrize("low, high, words", [(0.40, 0.55, "loses its discrimination"), (0.45, 0.75, "cannot say")])
def test_the_other_verdicts(low, high, words):
    interval = {"value": (low + high) / 2, "ci_low": low, "ci_high": high}
    assert words in shortcut_finding("m", interval, interval, 0.9)
