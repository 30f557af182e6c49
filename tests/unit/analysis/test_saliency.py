"""Grad-CAM through captum: the layer found for any backbone, the heat's share in the lung box,
and the seeded sample of outcomes."""

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.analysis.saliency import gradcam, last_conv_layer, outcome_sample, overlay, share_in_box
from pipeline.analysis.shortcuts import box_pixels
from pipeline.models import build_classifier, resolve_weights


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_b0", "mobilenet_v3_small"])
@pytest.mark.parametrize("frozen", [True, False])
def test_any_backbone_frozen_or_not_gets_a_heatmap_of_its_last_convolution(backbone, frozen):
    model = build_classifier(backbone, resolve_weights(backbone, "none", 0), 2, frozen, 0)
    layer = last_conv_layer(model)
    assert isinstance(layer, nn.Conv2d) and layer is [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)][-1]
    heat = gradcam(model, np.random.default_rng(0).integers(0, 256, (3, 64, 64), dtype=np.uint8), target=1)
    assert heat.shape == (3, 64, 64) and (heat >= 0).all()


class Brightness(nn.Module):
    """A one-channel convolution of positive weights, pooled: its heat follows the bright pixels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        nn.init.constant_(self.conv.weight, 1 / 9)
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[-1.0], [1.0]]))

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_the_share_in_the_lung_box_follows_where_the_heat_is():
    images = np.zeros((2, 48, 48), np.uint8)
    r0, r1, c0, c1 = box_pixels(48, 48)
    images[0, (r0 + r1) // 2 - 4 : (r0 + r1) // 2 + 4, (c0 + c1) // 2 - 4 : (c0 + c1) // 2 + 4] = 255  # a bright patch mid-lung
    images[1, 0:3, 0:3] = 255  # a bright marker in the corner
    shares = share_in_box(gradcam(Brightness(), images, target=1))
    assert shares[0] > 0.95 and shares[1] < 0.05
    assert np.isnan(share_in_box(np.zeros((1, 8, 8))))[0]


def test_the_outcome_sample_is_seeded_and_of_each_kind():
    y = np.array([1, 1, 1, 0, 0, 0, 1, 0, 1, 0])
    called = np.array([1, 1, 0, 0, 1, 0, 1, 0, 0, 1], dtype=bool)
    sample = outcome_sample(y, called, 2, seed=3)
    assert sample == outcome_sample(y, called, 2, seed=3)
    kinds = [k for k, _ in sample]
    assert kinds == ["true positive"] * 2 + ["true negative"] * 2 + ["false positive"] * 2 + ["false negative"] * 2
    for kind, index in sample:
        assert (y[index] == 1) == (kind in ("true positive", "false negative")) and called[index] == (kind in ("true positive", "false positive"))


def test_the_overlay_is_the_radiograph_reddened_where_the_heat_is():
    image = np.full((4, 4), 100, np.uint8)
    heat = np.zeros((4, 4))
    heat[0, 0] = 2.0
    rgb = overlay(image, heat)
    assert rgb.shape == (4, 4, 3) and tuple(rgb[1, 1]) == (100, 100, 100) and rgb[0, 0, 0] > rgb[0, 0, 1]
