"""Data: find the source, check it, decode it once into the cache, and report what it holds.

`prepare_dataset` is the one entry: the `prepare` step logs its result, and the other steps call
it to get the same arrays back from the cache without decoding again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import DataConfig
from pipeline.data.cache import PreparedData, build_entry, cache_root, entry_folder, load_entry
from pipeline.data.checks import check_every_class_present, data_report
from pipeline.data.sources import Listing, list_source
from pipeline.data.synthetic import demo_dataset

__all__ = ["Preparation", "PreparedData", "prepare_dataset", "dataset_digest"]


@dataclass
class Preparation:
    data: PreparedData
    report: dict
    name: str  # a short name for the data set, shown in the MLflow UI
    cache_reused: bool


def dataset_digest(listing: Listing) -> str:
    """Identity of the data as split: file contents, labels and split assignment, not paths on disk."""
    digest = hashlib.sha256("\t".join(listing.classes).encode())
    for image in listing.images:
        digest.update(f"\n{image.split}\t{image.label}\t{image.relpath}\t{image.fingerprint()}".encode())
    return digest.hexdigest()[:16]


def prepare_dataset(config: DataConfig) -> Preparation:
    root = cache_root(config.cache_dir)
    if config.data_dir == "":
        location, kind, name = demo_dataset(root, config.seed), "demo", "demo"
    else:
        location, kind = Path(config.data_dir), None
        name = location.stem if location.suffix.lower() == ".npz" else location.resolve().name
    listing = list_source(str(location), config.val_fraction, config.seed)
    kind = kind or listing.kind
    digest = dataset_digest(listing)
    folder = entry_folder(root, digest, config.image_size)
    data = load_entry(folder)
    cache_reused = data is not None
    if data is None:
        data = build_entry(
            folder,
            listing.images,
            digest=digest,
            classes=listing.classes,
            image_size=config.image_size,
            source=listing.location,
            kind=kind,
            val_origin=listing.val_origin,
        )
    rows = data.manifest()
    check_every_class_present(rows, data.classes)
    report = data_report(
        rows,
        source=data.source,
        kind=kind,
        digest=digest,
        classes=data.classes,
        image_size=config.image_size,
        val_origin=data.val_origin,
        rejected=data.rejected,
        ignored=listing.ignored,
        patient_pattern=config.patient_pattern,
    )
    return Preparation(data, report, name, cache_reused)
