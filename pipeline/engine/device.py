"""Where to compute and how: the device, its precision and memory layout, and how a batch of
uint8 images becomes the model's input there."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.distributed import World
from pipeline.errors import UserError
from pipeline.loading import InMemory, Streamed, image_source, memory_budget
from pipeline.settings import FitConfig


@dataclass(frozen=True)
class Device:
    """Where to compute and how: mixed precision and channels_last pay off on CUDA only."""

    torch_device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    @property
    def type(self) -> str:
        return self.torch_device.type

    def autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.type, enabled=False)
        return torch.autocast(self.type, dtype=self.amp_dtype)


def pick_device(setting: str, num_threads: int = 0) -> Device:
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if setting == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device=cuda but no CUDA device is available; pass device=auto or device=cpu")
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return Device(torch.device("cuda"), dtype, channels_last=True)
    if setting == "mps":
        if not torch.backends.mps.is_available():
            raise UserError("device=mps but MPS is not available; pass device=auto or device=cpu")
        return Device(torch.device("mps"))
    return Device(torch.device("cpu"))


def source_of(images: np.ndarray, device: Device, budget: int | None = None) -> InMemory | Streamed:
    """A split's images for the loops: in memory within `budget` bytes (default: half of the
    memory available), else streamed from the decoded cache."""
    return image_source(images, device.type, device.torch_device, memory_budget(None) if budget is None else budget)


def to_model_input(batch: torch.Tensor, device: Device) -> torch.Tensor:
    """uint8 (N, H, W) -> float (N, 1, H, W) in 0..1 on the device; converted after the copy,
    which moves a quarter of the bytes."""
    x = batch.to(device.torch_device, non_blocking=True).unsqueeze(1).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if device.channels_last else x


def process_budget(fit: FitConfig, world: World) -> int:
    """Bytes of decoded images this process may hold: `max_memory_gb` (or the machine's share),
    divided among the processes on this machine, each of which holds its own."""
    return memory_budget(fit.max_memory_gb) // max(1, world.local_size)


def batches(n: int, batch_size: int, generator: torch.Generator | None = None, world: World = World()) -> list[torch.Tensor]:
    """Global index batches over n items: shuffled when a generator is given (training), in
    order otherwise. In training each of the world's ranks must get at least two items of every
    batch (batch norm cannot train on one, and DDP needs every rank to step): a last batch
    smaller than that joins the batch before it."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    parts = list(order.split(batch_size))
    if generator is not None and len(parts) > 1 and len(parts[-1]) < 2 * world.size:
        parts[-2:] = [torch.cat(parts[-2:])]
    return parts
