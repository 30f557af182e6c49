"""Data: find the source, check it, decode it once into the cache, and report what it holds.

`prepare_dataset` is the one entry: the `prepare` step logs its result, and the other steps call
it to get the same arrays back from the cache without decoding again.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.data.cache import PreparedData, build_entry, cache_root, decode_images, entry_folder, load_entry
from pipeline.data.checks import check_every_class_present, data_report
from pipeline.data.csv_source import CsvSettings, list_csv
from pipeline.data.csv_source import sites_of as csv_sites
from pipeline.data.sources import Listing, SourceImage, list_source
from pipeline.data.synthetic import demo_dataset
from pipeline.data.validation import ValidationPlan, choose_validation, split_by_patient
from pipeline.errors import UserError
from pipeline.parsers import column_map
from pipeline.settings import DataConfig

__all__ = ["Located", "Preparation", "PreparedData", "dataset_digest", "locate_dataset", "prepare_dataset", "sites_of"]


@dataclass
class Preparation:
    dataset: PreparedData
    report: dict
    name: str  # a short name for the data set, shown in the MLflow UI
    cache_reused: bool


def dataset_digest(classes: list[str], images: list[SourceImage], identities: list[str], settings: str = "") -> str:
    """A hash of the data as split: each image's label, split, name and identity (`identities`:
    its stored bytes' fingerprint for the data digest, or its size and modification time for
    the cache key, known without reading 10^5 files twice). Before the split is made,
    `settings` (what decides it) stands in for it."""
    digest = hashlib.sha256("\t".join(classes).encode() + settings.encode())
    for image, identity in zip(images, identities):
        digest.update(f"\n{image.split}\t{image.label}\t{image.relpath}\t{identity}".encode())
    return digest.hexdigest()[:16]


@dataclass
class Located:
    """A data set found and listed, its cache entry named, nothing decoded yet: enough to tell
    whether an earlier `prepare` did this very work (`key`)."""

    listing: Listing
    kind: str
    name: str
    plan: ValidationPlan
    folder: Path

    @property
    def key(self) -> str:
        return self.folder.name


def locate_dataset(config: DataConfig) -> Located:
    root = cache_root(config.cache_dir)
    # '' is the lab's data where the environment names it (a docker worker), else the demo set.
    data_dir = config.data_dir or os.environ.get("CXR_DATA_DIR", "")
    if data_dir == "":
        location, kind, name = demo_dataset(root, config.seed), "demo", "demo"
    else:
        location, kind = Path(data_dir), None
        # a table is named with its folder: NIH's and RSNA's tables alone say little
        suffix = location.suffix.lower()
        name = (
            location.stem
            if suffix == ".npz"
            else f"{location.resolve().parent.name}-{location.stem}"
            if suffix == ".csv"
            else location.resolve().name
        )
    if config.test_site == "each":
        raise UserError("test_site=each is leave-one-site-out, which the main step runs; other steps take one site's name")
    if location.suffix.lower() == ".csv" and location.is_file():
        listing = list_csv(location, csv_settings(config))
    else:
        if config.test_site:
            raise UserError(f"test_site needs a label table with a site column; {data_dir} is not a .csv table")
        listing = list_source(str(location))
    kind = kind or listing.kind
    plan = choose_validation(listing.images, listing.classes, config.val_source)
    # The cache entry is found before anything is decoded, by the source and all that decides
    # the split; the data digest (the split as made) is computed once, when the entry is built.
    split_settings = f"{plan.source}|{config.val_fraction}|{config.seed}|{config.patient_pattern}" if plan.source == "split" else "folder"
    if cut_test(listing):
        split_settings += f"|test {config.test_fraction}"
    if plan.source == "split" or cut_test(listing):
        split_settings += f"|near {config.near_duplicate_bits}"
    split_settings += f"|max pixels {config.max_image_pixels}"  # decides which files are readable
    # Files by size and modification time: a changed file changes the key; the data digest
    # itself (content) is computed from the bytes the decoding reads anyway.
    identities = [image.stat_identity() for image in listing.images]
    folder = entry_folder(
        root, dataset_digest(listing.classes, listing.images, identities, f"{listing.location}|{split_settings}"), config.image_size
    )
    return Located(listing, kind, name, plan, folder)


def csv_settings(config: DataConfig) -> CsvSettings:
    return CsvSettings(column_map(config.csv_columns), config.positive_labels, config.test_list, config.test_site)


def sites_of(config: DataConfig) -> list[str]:
    """The sites the label table at `data_dir` names (its site column), each once."""
    location = Path(config.data_dir)
    if location.suffix.lower() != ".csv" or not location.is_file():
        raise UserError(f"test_site needs a label table with a site column; {config.data_dir or 'the demo set'} is not a .csv table")
    return csv_sites(location, csv_settings(replace(config, test_site="")))


def cut_test(listing: Listing) -> bool:
    """A table with no split column and no test list: test is held out by patient here."""
    return not any(i.split == "test" for i in listing.images)


def prepare_dataset(config: DataConfig, located: Located | None = None) -> Preparation:
    """The data set decoded and checked: from the cache when an entry exists, else built now."""
    located = located or locate_dataset(config)
    listing, kind, plan, folder = located.listing, located.kind, located.plan, located.folder
    data = load_entry(folder)
    cache_reused = data is not None
    if data is None:
        decoded = decode_images(listing.images, config.image_size, scratch=folder.parent, max_pixels=config.max_image_pixels)
        try:
            images, how = listing.images, None
            units = dict(
                content_hashes=decoded.content_hashes(),
                perceptual_hashes=decoded.perceptual_hashes(),
                near_duplicate_bits=config.near_duplicate_bits,
                pattern=config.patient_pattern,
                seed=config.seed,
                classes=listing.classes,
            )
            if cut_test(listing):
                images, how_test = split_by_patient(images, fraction=config.test_fraction, held_out="test", **units)
            if plan.source == "split":
                images, how = split_by_patient(images, fraction=config.val_fraction, **units)
            if cut_test(listing):
                how = f"the source names no test images, so test was cut from it first: {how_test}; then {how or 'validation as given'}"
            data = build_entry(
                folder,
                images,
                decoded,
                digest=dataset_digest(listing.classes, images, decoded.fingerprints(), f"max pixels {config.max_image_pixels}"),
                classes=listing.classes,
                image_size=config.image_size,
                source=listing.location,
                kind=kind,
                validation={"source": plan.source, "reason": plan.reason, "how": how},
            )
        finally:
            decoded.discard()
    rows = data.manifest()
    check_every_class_present(rows, data.classes)
    report = data_report(
        rows,
        source=data.source,
        kind=kind,
        digest=data.digest,
        classes=data.classes,
        image_size=config.image_size,
        validation=data.validation,
        rejected=data.rejected,
        ignored=listing.ignored,
        patient_pattern=config.patient_pattern,
        near_duplicate_bits=config.near_duplicate_bits,
        absolute_paths=listing.absolute_paths,
    )
    return Preparation(data, report, located.name, cache_reused)
