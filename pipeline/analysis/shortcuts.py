"""Does a model look at the lungs? The test set scored with the lung field hidden, and with
everything outside it hidden.

Chest X-ray classifiers are known to learn shortcuts that hold inside one data set: laterality
markers and text in the corners, positioning, body size, the exposure of one hospital's machine.
A model that still separates the classes with the lungs hidden (its AUC interval clear above
`SHORTCUT_AUC`) is reading something other than the lungs. Hiding fills a region with the
image's own mean grey, so brightness overall stays what it was.
"""

from __future__ import annotations

import numpy as np

# The lung field, as fractions of width and height (x0, y0, x1, y1), defined once: the squashed
# radiographs put both lungs inside it, from the clavicles to the diaphragm, and the corners
# (markers, text) and the neck and abdomen outside.
LUNG_BOX = (0.12, 0.10, 0.88, 0.85)
# AUC an interval must stay above to say a model separates the classes without what was hidden.
SHORTCUT_AUC = 0.6


def box_pixels(height: int, width: int, box: tuple[float, float, float, float] = LUNG_BOX) -> tuple[int, int, int, int]:
    """Rows r0:r1 and columns c0:c1 of the box in an image of this size."""
    x0, y0, x1, y1 = box
    return round(y0 * height), round(y1 * height), round(x0 * width), round(x1 * width)


def box_area(box: tuple[float, float, float, float] = LUNG_BOX) -> float:
    """The share of the image the box covers: the heat share a model looking everywhere alike would get."""
    x0, y0, x1, y1 = box
    return (x1 - x0) * (y1 - y0)


def hide_lungs(images: np.ndarray, box: tuple[float, float, float, float] = LUNG_BOX) -> np.ndarray:
    """uint8 (N, H, W) with the box filled with each image's mean grey."""
    out = np.array(images, copy=True)
    r0, r1, c0, c1 = box_pixels(*out.shape[1:], box)
    means = np.round(out.reshape(len(out), -1).mean(axis=1)).astype(out.dtype)
    out[:, r0:r1, c0:c1] = means[:, None, None]
    return out


def hide_outside(images: np.ndarray, box: tuple[float, float, float, float] = LUNG_BOX) -> np.ndarray:
    """uint8 (N, H, W) with everything but the box filled with each image's mean grey."""
    images = np.asarray(images)
    r0, r1, c0, c1 = box_pixels(*images.shape[1:], box)
    means = np.round(images.reshape(len(images), -1).mean(axis=1)).astype(images.dtype)
    out = np.broadcast_to(means[:, None, None], images.shape).copy()
    out[:, r0:r1, c0:c1] = images[:, r0:r1, c0:c1]
    return out


def shortcut_finding(name: str, lungs_hidden: dict, outside_hidden: dict, full_auc: float, saliency_in_box: float | None = None) -> str:
    """One sentence from the two occlusion AUCs (value, ci_low, ci_high) of one model, and the
    share of its Grad-CAM heat inside the lung box where it was measured."""
    figures = (
        f"test AUC {full_auc:.3f} as is, {lungs_hidden['value']:.3f} [{lungs_hidden['ci_low']:.3f}, {lungs_hidden['ci_high']:.3f}] with the lungs "
        f"hidden, {outside_hidden['value']:.3f} [{outside_hidden['ci_low']:.3f}, {outside_hidden['ci_high']:.3f}] with only the lungs shown"
        + (f"; {100 * saliency_in_box:.0f} % of its Grad-CAM heat falls in the lung box, which is {100 * box_area():.0f} % of the image"
           if saliency_in_box is not None else "")
    )
    if lungs_hidden["ci_low"] > SHORTCUT_AUC:
        return (f"{name} still separates the classes with the lungs hidden ({figures}): it is reading something other than the lungs "
                "(markers, text, positioning, body size or exposure), a shortcut that may not hold outside this data set.")
    if lungs_hidden["ci_high"] < SHORTCUT_AUC:
        return f"{name} loses its discrimination when the lungs are hidden ({figures}): no sign that it relies on what lies outside them."
    return f"{name}: {figures}; this test set cannot say whether it relies on what lies outside the lungs (the interval spans {SHORTCUT_AUC})."
