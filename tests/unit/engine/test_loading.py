"""Batches from memory or streamed from the cache: the same pixels, the same training."""

import numpy as np
import torch
from conftest import make_dataset
from test_engine import fit_once, setup

from pipeline.loading import InMemory, Streamed, image_source


def test_streamed_batches_hold_the_same_pixels_in_the_order_asked(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (37, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    parts = list(torch.randperm(37, generator=torch.Generator().manual_seed(1)).split(5))
    streamed = list(Streamed(mapped).batches(parts))
    in_memory = list(InMemory(torch.from_numpy(images)).batches(parts))
    assert len(streamed) == len(parts) == 8
    assert all(torch.equal(a, b) for a, b in zip(streamed, in_memory))


def test_the_budget_decides_where_a_split_lives(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((10, 8, 8), np.uint8))
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert isinstance(image_source(mapped, "cpu", torch.device("cpu"), budget=640), InMemory)
    assert isinstance(image_source(mapped, "cpu", torch.device("cpu"), budget=639), Streamed)


def test_fine_tuning_streamed_from_the_cache_trains_exactly_as_in_memory(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "d", {"train": 12, "val": 4, "test": 4}, size=32)
    _, in_memory = fit_once(setup(data, tmp_path, frozen=False), epochs=2)
    reads = []
    real_read = Streamed.read
    monkeypatch.setattr(Streamed, "read", lambda self, idx, fd: reads.append(len(idx)) or real_read(self, idx, fd))
    _, streamed = fit_once(setup(data, tmp_path, frozen=False, max_memory_gb=1e-9), epochs=2)
    assert sum(reads) == 2 * (24 + 8)  # every train and val image of both epochs came from the file
    assert [h.train_loss for h in streamed.history] == [h.train_loss for h in in_memory.history]
    assert [h.val_acc for h in streamed.history] == [h.val_acc for h in in_memory.history]
