"""Frozen mode's features: the backbone run once per split, cached in memory and on disk, so
every epoch and every tuning trial trains only the head."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.console import bars_disabled
from pipeline.data import PreparedData
from pipeline.distributed import World
from pipeline.engine.device import Device, batches, source_of, to_model_input
from pipeline.models import Classifier


@torch.inference_mode()
def extract_features(
    model: Classifier,
    images: np.ndarray,
    batch_size: int,
    device: Device,
    desc: str = "features",
    world: World = World(),
    budget: int | None = None,
    compile_backbone: bool = False,
) -> torch.Tensor:
    """Backbone features of every image, in order. Across a world each rank extracts one
    contiguous share and every rank ends with all of them. `compile_backbone`: through
    torch.compile, which pays after a few thousand images (benchmarks/RESULTS.md)."""
    model.eval()
    backbone = torch.compile(model.features) if compile_backbone else model.features
    share = torch.arange(len(images)).tensor_split(world.size)[world.rank]
    source = source_of(images, device, budget)
    out = []
    parts = [share[b] for b in batches(len(share), batch_size)]
    for x in tqdm(source.batches(parts), total=len(parts), desc=desc, unit="batch", disable=bars_disabled(), leave=False):
        with device.autocast():
            out.append(backbone(to_model_input(x, device)).float())
    local = torch.cat(out) if out else torch.zeros((0, model.head.in_features))
    return world.gather_rows(local, device.torch_device if device.type == "cuda" else None)


@dataclass
class Features:
    """Backbone features of some splits. `extraction_s` is what extracting cost in this process,
    now; features found cached cost `cached_extraction_s` when they were extracted, where
    `cached_from` says (each entry's `measured_in`, as its extractor gave it)."""

    splits: dict[str, torch.Tensor]
    extraction_s: float
    cached_extraction_s: float = 0.0
    cached_from: list[dict] = field(default_factory=list)

    @property
    def cached(self) -> bool:
        """Every split was found cached: nothing was extracted in this process now."""
        return self.extraction_s == 0.0 and bool(self.splits)


class FeatureCache:
    """Backbone features per split, computed once: in memory for this process (a tuning study's
    trials), on disk for later runs, keyed by all that decides them (see `TrainingSetup.feature_key`).
    Each split is extracted when first asked for: training needs train and val, not test.
    Each entry keeps how long its extraction took and where (`measured_in`), so a later run
    that reuses it can say so instead of passing that time off as its own."""

    _memory: dict[str, dict] = {}

    def __init__(self, root: Path):
        self.root = root / "features"

    def get_or_extract(
        self,
        key: str,
        model: Classifier,
        data: PreparedData,
        batch_size: int,
        device: Device,
        splits: tuple[str, ...],
        measured_in: dict | None = None,
        world: World = World(),
        budget: int | None = None,
        compile_backbone: bool = False,
    ) -> Features:
        found: dict[str, torch.Tensor] = {}
        result = Features(found, 0.0)
        for split in splits:
            entry_key = f"{key}-{split}"
            extracted_now = False
            path = self.root / f"{entry_key}.pt"
            # Extraction is collective across a world: every rank must take the same branch, so
            # the file is loaded only where every rank (every node's disk) has it.
            if not all(world.all_values(entry_key in self._memory or path.exists())):
                start = time.perf_counter()
                features = extract_features(model, data.images(split), batch_size, device, f"{split} features", world, budget, compile_backbone).cpu()
                entry = {"features": features, "extraction_s": time.perf_counter() - start, "measured_in": dict(measured_in or {}, split=split)}
                if world.main:
                    self.root.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(f".{time.time_ns()}.tmp")
                    torch.save(entry, tmp)
                    tmp.replace(path)
                self._memory[entry_key] = entry
                extracted_now = True
            elif entry_key not in self._memory:
                self._memory[entry_key] = torch.load(path, map_location="cpu", weights_only=True)
            entry = self._memory[entry_key]
            found[split] = entry["features"]
            if extracted_now:
                result.extraction_s += float(entry["extraction_s"])
            else:
                result.cached_extraction_s += float(entry["extraction_s"])
                result.cached_from.append(entry.get("measured_in", {"split": split}))
        return result
