"""Does a model need the lungs? The test set scored with the lung box hidden, and with everything
outside it hidden.

Chest X-ray classifiers are known to learn shortcuts that hold inside one data set. This check
says only what it shows: whether the model still separates the classes with the lung box hidden,
and whether the box alone keeps its discrimination. It names no cause it did not test (a
marker, text, positioning: Grad-CAM and a look at the images may tell which).

A hidden region is filled with values that do not depend on what it hid: the training set's mean
grey (one constant for every image), and, as a second fill, the mean of the part left visible.
Filling with the whole image's mean would carry the hidden part's brightness into the fill (the
lung box is 57 % of the image), so a model reading only the lungs' brightness would still score
with the lungs "hidden". A verdict holds only where both fills agree.
"""

from __future__ import annotations

import numpy as np

from pipeline.analysis.resampling import Resampling, percentile_interval, resampled_auc

# The lung field, as fractions of width and height (x0, y0, x1, y1), defined once: the squashed
# radiographs put both lungs inside it, from the clavicles to the diaphragm, and the corners
# (markers, text) and the neck and abdomen outside.
LUNG_BOX = (0.12, 0.10, 0.88, 0.85)
# AUC an interval must stay above to say a model separates the classes without what was hidden.
SHORTCUT_AUC = 0.6
# AUC the model may lose with only the lung box shown and still be said to rely on the box.
CLOSE_AUC = 0.05
FILLS = ("train_mean", "visible_mean")
REGIONS = ("lungs_hidden", "outside_hidden")
VERDICTS = ("without_lung_box", "lung_box", "cannot_tell")


def box_pixels(height: int, width: int, box: tuple[float, float, float, float] = LUNG_BOX) -> tuple[int, int, int, int]:
    """Rows r0:r1 and columns c0:c1 of the box in an image of this size."""
    x0, y0, x1, y1 = box
    return round(y0 * height), round(y1 * height), round(x0 * width), round(x1 * width)


def box_area(box: tuple[float, float, float, float] = LUNG_BOX) -> float:
    """The share of the image the box covers: the heat share a model looking everywhere alike would get."""
    x0, y0, x1, y1 = box
    return (x1 - x0) * (y1 - y0)


def box_mask(shape: tuple[int, int], box: tuple[float, float, float, float] = LUNG_BOX) -> np.ndarray:
    r0, r1, c0, c1 = box_pixels(*shape, box)
    mask = np.zeros(shape, bool)
    mask[r0:r1, c0:c1] = True
    return mask


def _hide(images: np.ndarray, hidden: np.ndarray, fill: float | None) -> np.ndarray:
    """uint8 (N, H, W) with the `hidden` pixels set to `fill` (a grey level), or, with None, to
    each image's mean over the pixels left visible."""
    out = np.array(images, copy=True)
    if fill is None:
        values = np.round(out[:, ~hidden].astype(np.float64).mean(axis=1)).astype(out.dtype)
        out[:, hidden] = values[:, None]
    else:
        out[:, hidden] = np.uint8(np.clip(round(fill), 0, 255))
    return out


def hide_lungs(images: np.ndarray, fill: float | None = None, box=LUNG_BOX) -> np.ndarray:
    """The lung box filled with `fill` (a grey level), or with None each image's mean outside it."""
    images = np.asarray(images)
    return _hide(images, box_mask(images.shape[1:], box), fill)


def hide_outside(images: np.ndarray, fill: float | None = None, box=LUNG_BOX) -> np.ndarray:
    """Everything but the lung box filled with `fill`, or with None each image's mean inside it."""
    images = np.asarray(images)
    return _hide(images, ~box_mask(images.shape[1:], box), fill)


def training_grey(train_images: np.ndarray, most: int = 4096) -> float:
    """The training set's mean grey, over at most `most` evenly spaced images (a large split is
    read from disk; the mean of 4,096 radiographs moves by far less than one grey level)."""
    if not len(train_images):
        return 127.5
    picked = np.unique(np.linspace(0, len(train_images) - 1, min(most, len(train_images))).round().astype(int))
    return float(np.mean([np.asarray(train_images[k], np.float64).mean() for k in picked]))


def occluded_inputs(images: np.ndarray, train_grey: float) -> dict[str, np.ndarray]:
    """`<region>` (training mean grey) and `<region>_fill_visible` versions of the images."""
    out = {}
    for region, hide in (("lungs_hidden", hide_lungs), ("outside_hidden", hide_outside)):
        out[region] = hide(images, train_grey)
        out[f"{region}_fill_visible"] = hide(images, None)
    return out


def occlusion_check(y: np.ndarray, full: np.ndarray, occluded: dict[str, np.ndarray], resampling: Resampling) -> dict[str, dict]:
    """AUC as is and with each occlusion (`occluded`: name -> scores), with intervals, and for
    each `outside_hidden*` the AUC it loses against the full image (paired, same resamples)."""
    y = np.asarray(y).astype(int)
    names = list(occluded)
    samples = resampled_auc(resampling, y, full, *(occluded[n] for n in names))
    full_samples, by_name = samples[0], dict(zip(names, samples[1:]))
    result = {"full": _interval(_auc(y, full), full_samples)}
    for name in names:
        result[name] = _interval(_auc(y, occluded[name]), by_name[name])
        if name.startswith("outside_hidden"):
            result[f"loss_{name}"] = _interval(result["full"]["value"] - result[name]["value"], full_samples - by_name[name])
    return result


def occlusion_intervals(metrics: dict[str, float | None], prefix: str = "test") -> dict[str, dict]:
    """An `occlusion_check` read back from the metrics an evaluate run logged
    (`<prefix>_auc`, `<prefix>_auc_<name>` and their `_ci_low` / `_ci_high`)."""
    names = ["full"] + [f"{region}{fill}" for region in REGIONS for fill in ("", "_fill_visible")]
    names += [f"loss_outside_hidden{fill}" for fill in ("", "_fill_visible")]
    out = {}
    for name in names:
        key = f"{prefix}_auc" if name == "full" else f"{prefix}_auc_{name}"
        if metrics.get(key) is not None:
            out[name] = {"value": metrics[key], "ci_low": metrics.get(f"{key}_ci_low"), "ci_high": metrics.get(f"{key}_ci_high")}
    return out


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else float("nan")


def _interval(value: float, samples: np.ndarray) -> dict:
    low, high = percentile_interval(samples)
    return {"value": float(value), "ci_low": low, "ci_high": high}


def shortcut_verdict(check: dict[str, dict]) -> tuple[str, str]:
    """(verdict, why) from an `occlusion_check` (or the same intervals read back from a run),
    for a model whose AUC as is has its interval above SHORTCUT_AUC: `without_lung_box` where every fill's lungs-hidden interval is above SHORTCUT_AUC;
    `lung_box` where every fill's lungs-hidden interval is below it and the lung box alone loses
    at most CLOSE_AUC (interval of the loss); else `cannot_tell`, saying which part failed."""
    fills = [("lungs_hidden", "loss_outside_hidden"), ("lungs_hidden_fill_visible", "loss_outside_hidden_fill_visible")]
    hidden = [check[h] for h, _ in fills if h in check]
    losses = [check[loss] for _, loss in fills if loss in check]
    if not hidden or any(not np.isfinite(h["ci_low"]) for h in hidden):
        return "cannot_tell", "no interval (a class is missing from the test set)"
    if "full" in check and not check["full"]["ci_low"] > SHORTCUT_AUC:
        return "cannot_tell", f"even as is its AUC interval is not above {SHORTCUT_AUC}: there is no discrimination to locate"
    if all(h["ci_low"] > SHORTCUT_AUC for h in hidden):
        return "without_lung_box", f"with the lung box hidden the AUC interval stays above {SHORTCUT_AUC} under every fill"
    below = all(h["ci_high"] < SHORTCUT_AUC for h in hidden)
    close = bool(losses) and all(np.isfinite(loss["ci_high"]) and loss["ci_high"] <= CLOSE_AUC for loss in losses)
    if below and close:
        return "lung_box", f"with the lung box hidden the AUC interval falls below {SHORTCUT_AUC}, and the box alone loses at most {CLOSE_AUC} of AUC"
    if below:
        return "cannot_tell", (
            f"hiding the lung box takes its discrimination away, but the box alone does not keep it either (it loses more "
            f"than {CLOSE_AUC} of AUC): the model needs more than the box, or the occlusion itself disturbs it"
        )
    if any(h["ci_low"] > SHORTCUT_AUC for h in hidden):
        return "cannot_tell", f"the fills disagree: under one the lungs-hidden interval stays above {SHORTCUT_AUC}, under the other it does not"
    return "cannot_tell", f"the lungs-hidden interval spans {SHORTCUT_AUC}: this test set cannot say"


def shortcut_finding(name: str, check: dict[str, dict], saliency_in_box: float | None = None) -> str:
    """One sentence from the occlusion intervals of one model, and the share of its Grad-CAM heat
    inside the lung box where it was measured."""

    def iv(key: str) -> str:
        c = check[key]
        return f"{c['value']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}]"

    figures = (
        f"test AUC {check['full']['value']:.3f} as is; with the lung box hidden {iv('lungs_hidden')} (filled with the training mean grey)"
        + (f" and {iv('lungs_hidden_fill_visible')} (filled with the visible part's mean)" if "lungs_hidden_fill_visible" in check else "")
        + f"; with only the lung box shown {iv('outside_hidden')}"
        + (f" and {iv('outside_hidden_fill_visible')}" if "outside_hidden_fill_visible" in check else "")
        + (
            f"; {100 * saliency_in_box:.0f} % of its Grad-CAM heat falls in the lung box, which is {100 * box_area():.0f} % of the image"
            if saliency_in_box is not None
            else ""
        )
    )
    kind, why = shortcut_verdict(check)
    if kind == "without_lung_box":
        return (
            f"{name} separates the classes without the lung box ({figures}): {why}. What it reads outside the box is not "
            "known from this check, and may not hold on another hospital's images."
        )
    if kind == "lung_box":
        return f"{name} relies on the lung box ({figures}): {why}; no sign that it relies on what lies outside it."
    return f"{name}: {figures}; the check cannot tell whether it relies on the lung box: {why}."
