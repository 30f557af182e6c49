"""The baseline: the plain loop of PyTorch's transfer-learning tutorial, frozen-backbone flavour.

As in https://pytorch.org/tutorials/beginner/transfer_learning_tutorial.html ("ConvNet as fixed
feature extractor"): `ImageFolder` decodes and transforms every image in every epoch, the frozen
backbone runs forward on every batch of every epoch, and only the new head trains. The model is
kept in eval mode here (the tutorial calls `model.train()`, which lets the frozen batch-norm
layers drift: a correctness bug, not a speed matter). Same head, optimizer, learning rate,
batch size and image size as the pipeline's frozen mode, so only the loop differs.
"""

from __future__ import annotations

import time

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from pipeline.models import IMAGENET_MEAN, IMAGENET_STD


def run_tutorial(
    data_root: str, backbone: str, image_size: int, epochs: int, batch_size: int, lr: float, weight_decay: float, device: torch.device, workers: int
) -> dict:
    """Train the head for `epochs` epochs; returns seconds and the last epoch's val accuracy."""
    start = time.perf_counter()
    transform = transforms.Compose(
        [
            transforms.Resize((image_size, image_size)),
            transforms.Grayscale(num_output_channels=3),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    loaders = {
        split: DataLoader(
            datasets.ImageFolder(f"{data_root}/{split}", transform),
            batch_size=batch_size,
            shuffle=split == "train",
            num_workers=workers,
            persistent_workers=workers > 0,
        )
        for split in ("train", "val")
    }
    torch.manual_seed(0)
    model = torchvision.models.get_model(backbone, weights=None)
    for p in model.parameters():
        p.requires_grad = False
    head_name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent, _, child = head_name.rpartition(".")
    old = model.get_submodule(head_name)
    head = nn.Linear(old.in_features, 2)
    setattr(model.get_submodule(parent) if parent else model, child, head)
    model.to(device).eval()
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    val_acc = 0.0
    for _ in range(epochs):
        for inputs, labels in loaders["train"]:
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(inputs), labels)
            loss.backward()
            optimizer.step()
        correct = seen = 0
        with torch.no_grad():
            for inputs, labels in loaders["val"]:
                outputs = model(inputs.to(device))
                correct += (outputs.argmax(1).cpu() == labels).sum().item()
                seen += len(labels)
        val_acc = correct / seen
    return {"seconds": time.perf_counter() - start, "val_acc": val_acc}
