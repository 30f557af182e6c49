"""Backbones from torchvision with a new head, weights resolved in one place, and freezing.

`build_classifier` returns a `Classifier`: grey images (N, 1, H, W, values 0..1) in, class
logits out. The grey channel is repeated to three and normalised with the weights' own mean
and std inside the module, so the logged model needs no preprocessing but a resize.
Any torchvision classification model whose ImageNet classifier ends in a Linear layer works;
that layer becomes the new head (`Classifier.head`), the rest is `Classifier.backbone`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from pipeline.errors import UserError

# Their forward passes need more than a Linear head swap (auxiliary outputs, a conv classifier).
UNSUPPORTED = {"googlenet", "inception_v3", "squeezenet1_0", "squeezenet1_1"}
# Weights=none still needs a normalisation; ImageNet's keeps inputs in the range the layers expect.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def available_backbones() -> list[str]:
    return sorted(set(torchvision.models.list_models(module=torchvision.models)) - UNSUPPORTED)


class Classifier(nn.Module):
    """Normalisation, backbone and head; in frozen mode the backbone never leaves eval mode."""

    def __init__(self, backbone: nn.Module, head: nn.Linear, mean, std, frozen: bool):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.frozen = frozen
        if frozen:
            backbone.requires_grad_(False)
            backbone.eval()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.expand(-1, 3, -1, -1)
        return self.backbone((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def train(self, mode: bool = True) -> Classifier:
        # A fixed feature extractor: batch-norm statistics and dropout stay as in eval, always.
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self


@dataclass(frozen=True)
class Weights:
    """What a `weights` setting resolved to: a state_dict (or None) and how to normalise."""

    state_dict: dict[str, torch.Tensor] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    key: str  # identifies the weights in cache keys: imagenet-IMAGENET1K_V1, none-seed42, file-<hash>


def resolve_weights(backbone: str, spec: str, seed: int) -> Weights:
    if spec == "none":
        return Weights(None, IMAGENET_MEAN, IMAGENET_STD, f"none-seed{seed}")
    if spec == "imagenet":
        return _imagenet_weights(backbone)
    path = Path(spec)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # PyTorch's own message suggests weights_only=False, which would run whatever code the file holds.
        raise UserError(
            f"weights file {path} is not a file of tensors PyTorch can load safely ({type(e).__name__}): give a state_dict saved with "
            "torch.save(model.state_dict(), path), such as checkpoints/best.pt of a train run or torchvision's .pth, or pass weights=none"
        ) from None
    state_dict = _unwrap_state_dict(loaded, path)
    file_hash = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return Weights(state_dict, IMAGENET_MEAN, IMAGENET_STD, f"file-{file_hash}")


def imagenet_enum(backbone: str):
    """torchvision's IMAGENET1K_V1 weights (as in the study), or the model's default if it has none."""
    enum = torchvision.models.get_model_weights(backbone)
    return getattr(enum, "IMAGENET1K_V1", None) or enum.DEFAULT


def imagenet_cache_file(backbone: str) -> Path:
    """Where torch looks for the downloaded ImageNet weights (the file to place when offline)."""
    url = imagenet_enum(backbone).url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _imagenet_weights(backbone: str) -> Weights:
    enum = imagenet_enum(backbone)
    cached = imagenet_cache_file(backbone)
    if cached.exists():
        try:
            state_dict = enum.get_state_dict(progress=False, check_hash=False)
        except Exception as e:  # the file is there: it is damaged, not missing
            raise UserError(
                f"the cached ImageNet weights {cached} cannot be loaded ({type(e).__name__}: {str(e)[:200]}); "
                f"delete the file to download it again, or replace it with a good copy of {enum.url}"
            ) from None
    else:
        try:
            state_dict = enum.get_state_dict(progress=True, check_hash=False)
        except OSError as e:  # offline: URLError, HTTPError and socket errors are all OSErrors
            raise UserError(
                f"ImageNet weights for {backbone} are not in torch's cache and cannot be downloaded ({type(e).__name__}: {str(e)[:200]}); "
                f"download {enum.url} on a connected machine and place it at {cached}, or pass weights=none"
            ) from None
    transform = enum.transforms()
    return Weights(state_dict, tuple(transform.mean), tuple(transform.std), f"imagenet-{enum.name}")


def _unwrap_state_dict(loaded, path: Path) -> dict[str, torch.Tensor]:
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise UserError(f"weights file {path} does not hold a state_dict (a dict of tensors)")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def _head_name(net: nn.Module) -> str:
    linears = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise UserError(f"{type(net).__name__} has no Linear classifier to replace; choose another backbone")
    return linears[-1]


def _replace(net: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent_name) if parent_name else net, child, module)


def load_into(net: nn.Module, state_dict: dict[str, torch.Tensor], head_name: str) -> bool:
    """Load a torchvision-format state_dict; head keys whose shape differs are dropped (the new
    head keeps its fresh initialisation). Any other mismatch is an error naming the keys.
    Checkpoints of a `Classifier` (`backbone.*`, `head.*`) are translated first.
    Returns whether the head's weights were loaded too."""
    if any(k.startswith("backbone.") for k in state_dict):
        state_dict = {
            (k.removeprefix("backbone.") if k.startswith("backbone.") else f"{head_name}.{k.removeprefix('head.')}"): v
            for k, v in state_dict.items()
            if k.startswith(("backbone.", "head."))
        }
    own = net.state_dict()
    dropped = [k for k, v in state_dict.items() if k.startswith(head_name + ".") and k in own and own[k].shape != v.shape]
    kept = {k: v for k, v in state_dict.items() if k not in dropped}
    mismatched = [k for k, v in kept.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in kept and k not in dropped]
    unexpected = [k for k in kept if k not in own]
    if mismatched or missing or unexpected:
        parts = [
            f"{label}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''} ({len(keys)})"
            for label, keys in (("shape differs", mismatched), ("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise UserError(f"the weights do not fit {type(net).__name__}: " + "; ".join(parts))
    net.load_state_dict(kept, strict=False)
    return any(k.startswith(head_name + ".") for k in kept)


def build_classifier(backbone: str, weights: Weights, num_classes: int, frozen: bool, seed: int) -> Classifier:
    if backbone not in available_backbones():
        raise UserError(f"unknown backbone {backbone!r}; choices: {', '.join(available_backbones())}")
    torch.manual_seed(seed)  # the new head (and, with weights=none, the backbone) start the same every run
    net = torchvision.models.get_model(backbone, weights=None, num_classes=num_classes)
    head_name = _head_name(net)
    head_loaded = weights.state_dict is not None and load_into(net, weights.state_dict, head_name)
    head = net.get_submodule(head_name)
    if not head_loaded:
        init_head(head, seed)
    _replace(net, head_name, nn.Identity())
    return Classifier(net, head, weights.mean, weights.std, frozen)


def init_head(head: nn.Linear, seed: int) -> None:
    """PyTorch's default Linear initialisation, from the seed alone: the same head for every
    backbone (torchvision's own inits differ: EfficientNet's gives logits of +-14 on
    standardised features) and for every tuning trial."""
    torch.manual_seed(seed)
    head.reset_parameters()


def check_input_size(model: Classifier, image_size: int) -> None:
    """Some backbones fix their input size (ViT, MaxViT); say so before any data is read."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, 1, image_size, image_size))
    except (RuntimeError, AssertionError, ValueError) as e:
        raise UserError(f"the backbone cannot take image_size={image_size}: {str(e).splitlines()[0]}") from None
    finally:
        model.train(was_training)


def parameter_groups(model: Classifier, lr: float, backbone_lr_scale: float) -> list[dict]:
    """Head at `lr`; in fine-tune mode the backbone too, at `lr * backbone_lr_scale`: pretrained
    layers need smaller steps than a freshly initialised head."""
    groups = [{"params": list(model.head.parameters()), "lr": lr, "name": "head"}]
    if not model.frozen:
        groups.append({"params": list(model.backbone.parameters()), "lr": lr * backbone_lr_scale, "name": "backbone"})
    return groups
