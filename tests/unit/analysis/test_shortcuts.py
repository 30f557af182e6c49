"""The shortcut check: what is hidden and with what, and what it may conclude from the AUCs."""

import numpy as np
import pytest

from pipeline.analysis.resampling import Resampling
from pipeline.analysis.shortcuts import (
    CLOSE_AUC,
    LUNG_BOX,
    SHORTCUT_AUC,
    box_mask,
    box_pixels,
    hide_lungs,
    hide_outside,
    occluded_inputs,
    occlusion_check,
    occlusion_intervals,
    shortcut_finding,
    shortcut_verdict,
    training_grey,
)
from pipeline.analysis.simulation import ShortcutScenario, draw_shortcut_study


def test_a_hidden_region_is_filled_with_values_that_do_not_depend_on_it():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 40, 50), dtype=np.uint8)
    r0, r1, c0, c1 = box_pixels(40, 50)
    assert (r0, r1, c0, c1) == (round(LUNG_BOX[1] * 40), round(LUNG_BOX[3] * 40), round(LUNG_BOX[0] * 50), round(LUNG_BOX[2] * 50))
    box = box_mask((40, 50))
    # The training set's grey: one constant, whatever the image held.
    lungs = hide_lungs(images, 97.4)
    assert (lungs[:, box] == 97).all() and np.array_equal(lungs[:, ~box], images[:, ~box])
    # The visible part's mean: the box is filled from outside it only.
    visible = hide_lungs(images)
    outside_means = np.round(images[:, ~box].astype(float).mean(1))
    assert all((visible[k, box] == outside_means[k]).all() for k in range(3))
    brighter_lungs = images.copy()
    brighter_lungs[:, box] = 255
    assert np.array_equal(hide_lungs(brighter_lungs), visible)  # what was hidden leaves no trace
    shown = hide_outside(images)
    assert np.array_equal(shown[:, box], images[:, box])
    assert all((shown[k, ~box] == np.round(images[k, box].astype(float).mean())).all() for k in range(3))
    assert images.dtype == lungs.dtype == shown.dtype
    assert training_grey(np.full((5, 4, 4), 80, np.uint8)) == 80.0


def check_of(region: str, seed: int = 0, **scenario):
    images, y, patient, grey, scorer = draw_shortcut_study(ShortcutScenario(region, **scenario), np.random.default_rng(seed))
    occluded = {name: scorer(x) for name, x in occluded_inputs(images, grey).items()}
    return occlusion_check(y, scorer(images), occluded, Resampling.of(patient, y, seed, 500)), images, y, scorer


def test_a_scorer_reading_only_the_lungs_brightness_loses_it_when_they_are_hidden():
    # Issue 19, case 5: the whole image's mean as fill kept the lungs' brightness (AUC 0.920 as
    # is, 0.917 "hidden"); fills that do not depend on the box take it all away.
    check, images, y, scorer = check_of("inside")
    from sklearn.metrics import roc_auc_score

    whole_mean = images.copy()
    whole_mean[:, box_mask(images.shape[1:])] = np.round(images.reshape(len(images), -1).mean(1)).astype(np.uint8)[:, None]
    assert roc_auc_score(y, scorer(whole_mean)) > 0.8  # the old fill: still separates
    assert check["full"]["value"] > 0.8
    assert check["lungs_hidden"]["value"] == 0.5 and check["lungs_hidden_fill_visible"]["ci_high"] < SHORTCUT_AUC
    assert check["loss_outside_hidden"]["ci_high"] <= CLOSE_AUC
    kind, _ = shortcut_verdict(check)
    assert kind == "lung_box"
    assert shortcut_finding("m", check).startswith("m relies on the lung box")


def test_a_scorer_reading_a_corner_marker_separates_without_the_lung_box():
    check, *_ = check_of("outside")
    assert check["lungs_hidden"]["ci_low"] > SHORTCUT_AUC and check["lungs_hidden_fill_visible"]["ci_low"] > SHORTCUT_AUC
    sentence = shortcut_finding("m", check)
    assert sentence.startswith("m separates the classes without the lung box")
    # Words only for what was shown: no cause the check did not test.
    assert not any(word in sentence for word in ("markers, text", "positioning", "body size"))


def interval(value, low, high):
    return {"value": value, "ci_low": low, "ci_high": high}


def test_no_sign_needs_the_lungs_alone_to_keep_the_discrimination():
    # Issue 19, case 6: lungs hidden 0.52 [0.47, 0.57], only the lungs 0.55 [0.50, 0.60], 0.95 as is.
    check = {"full": interval(0.95, 0.93, 0.97)}
    for fill in ("", "_fill_visible"):
        check[f"lungs_hidden{fill}"] = interval(0.52, 0.47, 0.57)
        check[f"outside_hidden{fill}"] = interval(0.55, 0.50, 0.60)
        check[f"loss_outside_hidden{fill}"] = interval(0.40, 0.35, 0.45)
    kind, why = shortcut_verdict(check)
    assert kind == "cannot_tell" and "does not keep it either" in why
    assert "no sign" not in shortcut_finding("m", check)


@pytest.mark.parametrize(
    "full, lungs_visible, expected",
    [
        (interval(0.55, 0.48, 0.62), interval(0.5, 0.45, 0.55), "even as is"),  # nothing to locate
        (interval(0.9, 0.85, 0.95), interval(0.7, 0.65, 0.75), "the fills disagree"),
    ],
)
def test_the_check_says_when_it_cannot_tell(full, lungs_visible, expected):
    check = {
        "full": full,
        "lungs_hidden": interval(0.5, 0.45, 0.55),
        "lungs_hidden_fill_visible": lungs_visible,
        "loss_outside_hidden": interval(0.0, -0.01, 0.01),
        "loss_outside_hidden_fill_visible": interval(0.0, -0.01, 0.01),
    }
    kind, why = shortcut_verdict(check)
    assert kind == "cannot_tell" and expected in why


def test_the_check_is_read_back_from_an_evaluate_runs_metrics():
    check, *_ = check_of("outside", seed=2)
    metrics = {"test_auc": check["full"]["value"], "test_auc_ci_low": check["full"]["ci_low"], "test_auc_ci_high": check["full"]["ci_high"]}
    for name, c in check.items():
        if name != "full":
            metrics.update({f"test_auc_{name}": c["value"], f"test_auc_{name}_ci_low": c["ci_low"], f"test_auc_{name}_ci_high": c["ci_high"]})
    assert occlusion_intervals(metrics) == check
