"""Where a model looks: Grad-CAM (captum's `LayerGradCam`) of its last convolutional layer.

The heatmap weighs the last convolutional layer's channels by the gradient of the positive
class's logit and keeps the positive part, upsampled to the image. `saliency_in_lung_box` is
the share of that heat falling inside the lung box of `shortcuts.py`, averaged over images: a
model that reads the lungs puts most of its heat there; one that reads a corner marker, text or
the body outline does not. Any torchvision backbone works: the layer is found by type, not name.
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from pipeline.analysis.shortcuts import box_pixels

OUTCOMES = ("true positive", "true negative", "false positive", "false negative")


def last_conv_layer(model: nn.Module) -> nn.Module:
    """The last `Conv2d` of the model: the end of its last convolutional block."""
    convolutions = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convolutions:
        raise ValueError(f"{type(model).__name__} has no convolutional layer for Grad-CAM")
    return convolutions[-1]


def gradcam(model: nn.Module, images: np.ndarray, target: int, batch_size: int = 16) -> np.ndarray:
    """Heatmaps (N, H, W), >= 0, of uint8 images (N, H, W) for class `target`. The model takes
    float (N, 1, H, W) in 0..1 (as the pipeline's classifiers do) and stays in eval mode."""
    model.eval()
    cam = LayerGradCam(model, last_conv_layer(model))
    size = images.shape[1:]
    maps = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.asarray(images[start : start + batch_size], dtype=np.float32) / 255.0).unsqueeze(1)
        heat = cam.attribute(x, target=target, relu_attributions=True)
        maps.append(LayerAttribution.interpolate(heat, size, interpolate_mode="bilinear").clamp_min(0).squeeze(1).detach().numpy())
    return np.concatenate(maps) if maps else np.zeros((0, *size), np.float32)


def share_in_box(heatmaps: np.ndarray) -> np.ndarray:
    """Per image, the share of its heat inside the lung box (nan where the map is all zero)."""
    r0, r1, c0, c1 = box_pixels(*heatmaps.shape[1:])
    total = heatmaps.sum(axis=(1, 2))
    inside = heatmaps[:, r0:r1, c0:c1].sum(axis=(1, 2))
    return np.where(total > 0, inside / np.where(total > 0, total, 1), np.nan)


def outcome_sample(y: np.ndarray, called: np.ndarray, per_outcome: int, seed: int) -> list[tuple[str, int]]:
    """A fixed, seeded sample of test images of each outcome: (outcome, index)."""
    rng = np.random.default_rng(seed)
    masks = {
        "true positive": (y == 1) & called,
        "true negative": (y == 0) & ~called,
        "false positive": (y == 0) & called,
        "false negative": (y == 1) & ~called,
    }
    sample = []
    for outcome in OUTCOMES:
        members = np.flatnonzero(masks[outcome])
        chosen = rng.choice(members, size=min(per_outcome, len(members)), replace=False) if len(members) else []
        sample += [(outcome, int(k)) for k in sorted(chosen)]
    return sample


def overlay(image: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """RGB uint8: the grey radiograph with the heatmap (scaled to its own maximum) in red on top."""
    grey = np.repeat(np.asarray(image, dtype=np.float32)[..., None] / 255.0, 3, axis=2)
    heat = heatmap / heatmap.max() if heatmap.max() > 0 else heatmap
    red = np.zeros_like(grey)
    red[..., 0] = 1.0
    alpha = 0.5 * heat[..., None]
    return np.round(255 * ((1 - alpha) * grey + alpha * red)).astype(np.uint8)
