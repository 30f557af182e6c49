"""Batches of images for the loops: from memory when a split fits the budget, else streamed.

A split that fits `max_memory_gb` is read from the decoded cache once and indexed in memory
(on the GPU when it is small); a larger one is read batch by batch from the cache file by a
background thread that keeps a few batches ahead of the model (into pinned memory on CUDA, so
the copy to the device overlaps compute). Streamed reads go through `os.pread`, not the memory
map: pages read that way sit in the kernel's page cache, which it can drop, instead of growing
this process's resident memory with every image an epoch touches.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

# Whole splits are moved to the GPU once when they are this small (uint8 bytes).
DEVICE_RESIDENT_LIMIT = 2 * 1024**3
PREFETCH_BATCHES = 4


def available_memory_bytes() -> int:
    """What the kernel says could be allocated without swapping (MemAvailable), else total RAM."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_budget(max_memory_gb: float | None) -> int:
    """Bytes of decoded images the loops may hold: the setting, or half of what is available now."""
    return int(max_memory_gb * 1024**3) if max_memory_gb is not None else available_memory_bytes() // 2


class InMemory:
    """A split held whole: uint8 images or feature vectors, indexed where they lie."""

    streamed = False

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def __len__(self) -> int:
        return len(self.tensor)

    def batches(self, parts: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        for idx in parts:
            yield self.tensor[idx.to(self.tensor.device)]


class Streamed:
    """A split read from its `.npy` file batch by batch, `PREFETCH_BATCHES` ahead."""

    streamed = True

    def __init__(self, images: np.memmap, pin: bool = False):
        self.path, self.offset = images.filename, images.offset
        self.shape, self.row_bytes = images.shape, int(np.prod(images.shape[1:]))
        self.pin = pin

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, idx: torch.Tensor, fd: int) -> torch.Tensor:
        out = torch.empty((len(idx), *self.shape[1:]), dtype=torch.uint8, pin_memory=self.pin)
        view = out.numpy().reshape(len(idx), self.row_bytes)
        for k, i in enumerate(idx.tolist()):
            view[k] = np.frombuffer(os.pread(fd, self.row_bytes, self.offset + i * self.row_bytes), np.uint8)
        return out

    def batches(self, parts: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as reader:
                pending: deque = deque()
                upcoming = iter(parts)
                for idx in upcoming:
                    pending.append(reader.submit(self.read, idx, fd))
                    if len(pending) >= PREFETCH_BATCHES:
                        break
                while pending:
                    batch = pending.popleft().result()
                    nxt = next(upcoming, None)
                    if nxt is not None:
                        pending.append(reader.submit(self.read, nxt, fd))
                    yield batch
        finally:
            os.close(fd)


def as_tensor(images: np.ndarray, device_type: str, torch_device: torch.device) -> torch.Tensor:
    """A whole split as a uint8 tensor, on the GPU when it fits: indexing it then costs nothing."""
    tensor = torch.from_numpy(np.array(images))  # a writable copy in RAM, read from the cache once
    if device_type == "cuda" and tensor.numel() <= DEVICE_RESIDENT_LIMIT:
        return tensor.to(torch_device)
    return tensor.pin_memory() if device_type == "cuda" else tensor


def image_source(images: np.ndarray, device_type: str, torch_device: torch.device, budget: int) -> InMemory | Streamed:
    """In memory when the split fits `budget` bytes, else streamed from its cache file."""
    if images.nbytes <= budget or not isinstance(images, np.memmap):
        return InMemory(as_tensor(images, device_type, torch_device))
    return Streamed(images, pin=device_type == "cuda")
