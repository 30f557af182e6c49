import urllib.error

import pytest
import torch
import torchvision

from pipeline import models
from pipeline.errors import UserError
from pipeline.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    available_backbones,
    build_classifier,
    check_input_size,
    imagenet_cache_file,
    parameter_groups,
    resolve_weights,
)


def none_weights(seed=0):
    return resolve_weights("resnet18", "none", seed)


def test_registry_has_the_study_backbones_and_small_ones():
    names = available_backbones()
    for name in ("resnet50", "efficientnet_b0", "resnet18", "mobilenet_v3_small", "convnext_tiny"):
        assert name in names
    assert "googlenet" not in names and "squeezenet1_0" not in names


@pytest.mark.parametrize("backbone,features", [("resnet50", 2048), ("efficientnet_b0", 1280), ("mobilenet_v3_small", 1024)])
def test_new_head_for_the_data_sets_classes(backbone, features):
    model = build_classifier(backbone, resolve_weights(backbone, "none", 0), num_classes=2, frozen=False, seed=0).eval()
    assert isinstance(model.head, torch.nn.Linear) and (model.head.in_features, model.head.out_features) == (features, 2)
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 2)


def test_grey_input_is_three_equal_channels_normalised_with_the_weights_statistics():
    model = build_classifier("resnet18", none_weights(), 2, frozen=True, seed=0)
    x = torch.rand(2, 1, 32, 32)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = model.backbone((x.repeat(1, 3, 1, 1) - mean) / std)
    assert torch.allclose(model.features(x), expected)


def test_frozen_backbone_does_not_train_and_its_batchnorm_statistics_never_move():
    model = build_classifier("resnet18", none_weights(), 2, frozen=True, seed=0)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model.train()
    assert model.head.training and not model.backbone.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    loss = model(torch.rand(4, 1, 32, 32)).sum()
    loss.backward()
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running_mean/var included
    assert [g["name"] for g in parameter_groups(model, 1e-3, 0.1)] == ["head"]


def test_finetune_trains_everything_with_a_smaller_backbone_rate():
    model = build_classifier("resnet18", none_weights(), 2, frozen=False, seed=0)
    model.train()
    assert model.backbone.training and all(p.requires_grad for p in model.parameters())
    groups = parameter_groups(model, 1e-3, 0.1)
    assert [(g["name"], g["lr"]) for g in groups] == [("head", 1e-3), ("backbone", pytest.approx(1e-4))]


def test_same_seed_same_initial_model():
    a = build_classifier("resnet18", none_weights(3), 2, frozen=False, seed=3)
    b = build_classifier("resnet18", none_weights(3), 2, frozen=False, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_state_dict_file_with_an_imagenet_head_loads_and_the_head_is_replaced(tmp_path):
    reference = torchvision.models.resnet18(num_classes=1000)
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    weights = resolve_weights("resnet18", str(tmp_path / "r18.pth"), 0)
    model = build_classifier("resnet18", weights, 2, frozen=True, seed=0)
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
    assert model.head.out_features == 2
    assert weights.key.startswith("file-")


def test_a_classifier_checkpoint_loads_head_included(tmp_path):
    trained = build_classifier("resnet18", none_weights(1), 2, frozen=False, seed=1)
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "best.pt")
    model = build_classifier("resnet18", resolve_weights("resnet18", str(tmp_path / "best.pt"), 0), 2, frozen=False, seed=0)
    assert torch.equal(model.head.weight, trained.head.weight)


def test_weights_of_another_architecture_name_the_keys(tmp_path):
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    with pytest.raises(UserError, match=r"do not fit ResNet: .*unexpected: layer1\.2\."):
        build_classifier("resnet18", resolve_weights("resnet18", str(tmp_path / "r34.pth"), 0), 2, False, 0)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="is not a file of tensors PyTorch can load safely"):
        resolve_weights("resnet18", str(tmp_path / "junk.pth"), 0)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(UserError, match="does not hold a state_dict"):
        resolve_weights("resnet18", str(tmp_path / "list.pth"), 0)


def test_imagenet_offline_and_not_cached_names_the_file_to_place(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.ResNet50_Weights, "get_state_dict", offline)
    with pytest.raises(UserError) as e:
        resolve_weights("resnet50", "imagenet", 0)
    message = str(e.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth") in message
    assert "weights=none" in message and "https://download.pytorch.org/models/resnet50-0676ba61.pth" in message


def test_imagenet_weights_in_torchs_cache_are_used_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = imagenet_cache_file("resnet18")
    cached.parent.mkdir(parents=True)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), cached)
    weights = resolve_weights("resnet18", "imagenet", 0)  # no network: torch finds the file
    assert weights.key == "imagenet-IMAGENET1K_V1" and weights.mean == IMAGENET_MEAN
    model = build_classifier("resnet18", weights, 2, frozen=True, seed=0)
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)


def test_fixed_size_backbones_are_refused_early():
    model = build_classifier("vit_b_16", resolve_weights("vit_b_16", "none", 0), 2, frozen=True, seed=0)
    with pytest.raises(UserError, match="cannot take image_size=64"):
        check_input_size(model, 64)


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(UserError, match="resnet5O.*choices: .*resnet50"):
        build_classifier("resnet5O", none_weights(), 2, False, 0)


def test_imagenet_means_imagenet1k_v1_for_the_study_backbones():
    assert models.imagenet_enum("efficientnet_b0").name == "IMAGENET1K_V1"
    assert models.imagenet_enum("resnet50").name == "IMAGENET1K_V1"  # V2 exists; the study uses V1


def test_a_damaged_cached_imagenet_file_is_called_damaged_not_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = imagenet_cache_file("resnet18")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a checkpoint, cut short")
    with pytest.raises(UserError) as e:
        resolve_weights("resnet18", "imagenet", 0)
    message = str(e.value)
    assert f"the cached ImageNet weights {cached} cannot be loaded" in message and "delete the file" in message
    assert "cannot be downloaded" not in message
