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


def pick_device(setting: str, num_threads: int = 0, precision: str = "auto") -> Device:
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if setting == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device=cuda but no CUDA device is available; pass device=auto or device=cpu")
        if precision == "fp32":
            return Device(torch.device("cuda"), None, channels_last=True)
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise UserError("precision=bf16 but this GPU has no bfloat16; pass precision=auto (float16 with loss scaling) or precision=fp32")
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return Device(torch.device("cuda"), dtype, channels_last=True)
    if setting == "mps":
        if not torch.backends.mps.is_available():
            raise UserError("device=mps but MPS is not available; pass device=auto or device=cpu")
        if precision == "bf16":
            raise UserError("precision=bf16 is for CUDA and for CPUs with bfloat16 instructions; on mps pass precision=auto or fp32")
        return Device(torch.device("mps"))
    if precision == "auto" and cpu_has_bf16():  # 1.3-2.4 x the images per second, accuracy within its interval (benchmarks/RESULTS.md)
        return Device(torch.device("cpu"), torch.bfloat16)
    if precision == "bf16":
        if not cpu_has_bf16():
            raise UserError(
                "precision=bf16 but this CPU has no bfloat16 instructions (avx512_bf16 or AMX), where it runs slower than fp32; pass precision=fp32"
            )
        return Device(torch.device("cpu"), torch.bfloat16)
    return Device(torch.device("cpu"))


def cpu_has_bf16() -> bool:
    """bfloat16 arithmetic in hardware: AVX-512 BF16 or AMX (oneDNN's own test)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


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
