"""Light, radiograph-safe augmentation of fine-tuning batches."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Light, radiograph-safe augmentation of a batch: small rotation (+-7 deg), scale (+-8 %),
    shift (+-5 %), brightness and contrast (+-10 %). No flips: the heart sits on the left, and a
    mirrored chest is an anatomy the test set never shows. `draws` (N, 6) in [0, 1) are drawn
    for the whole global batch by every rank alike, so sharding changes no image's augmentation."""
    n = x.shape[0]
    r = draws.to(x.device) * 2 - 1
    angle, scale = r[:, 0] * math.radians(7), 1 + r[:, 1] * 0.08
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, r[:, 2] * 0.05], 1), torch.stack([sin, cos, r[:, 3] * 0.05], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast, brightness = (1 + r[:, 4] * 0.1).view(n, 1, 1, 1), (r[:, 5] * 0.1).view(n, 1, 1, 1)
    return ((x - mean) * contrast + mean + brightness).clamp_(0, 1)
