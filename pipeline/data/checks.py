"""What a data set holds, checked: the manifest, duplicates, patient overlap and the data report.

All of it works on `ManifestRow`s (one per decoded image) and plain dicts, so it can be tested
without images and reused by the test-set analysis.
"""

from __future__ import annotations

import csv
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, fields
from itertools import combinations
from pathlib import Path

import numpy as np

from pipeline.data.units import NEAR_DUPLICATE_BITS, hash_bits, near_duplicate_index_pairs, patient_of, unit_groups
from pipeline.errors import UserError

SPLIT_ORDER = ("train", "val", "test")


@dataclass(frozen=True)
class ManifestRow:
    path: str  # relative to the data set's root (or split/index for an npz)
    split: str
    label: str
    width: int
    height: int
    mode: str
    content_hash: str  # of the decoded grey pixels and their shape
    patient: str = ""  # as the source gave it (a CSV's patient column); else patient_pattern finds it
    phash: str = ""  # perceptual hash (hex) of the decoded image, for near-duplicates
    site: str = ""  # the hospital or scanner, where the source names it


MANIFEST_COLUMNS = [f.name for f in fields(ManifestRow)]


def write_manifest(rows: list[ManifestRow], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        # not `astuple`, which deep-copies every field: nine tenths of the write's time (profiled on kermany-2400)
        writer.writerows([getattr(r, c) for c in MANIFEST_COLUMNS] for r in rows)


def read_manifest(path: Path) -> list[ManifestRow]:
    with open(path, newline="") as f:
        return [
            ManifestRow(
                r["path"],
                r["split"],
                r["label"],
                int(r["width"]),
                int(r["height"]),
                r["mode"],
                r["content_hash"],
                r.get("patient", ""),
                r.get("phash", ""),
                r.get("site", ""),
            )
            for r in csv.DictReader(f)
        ]


def check_every_class_present(rows: list[ManifestRow], classes: list[str]) -> None:
    """After decoding: a class whose images were all unreadable is as bad as an empty folder."""
    present = {(r.split, r.label) for r in rows}
    for split in sorted({r.split for r in rows}, key=SPLIT_ORDER.index):
        for label in classes:
            if (split, label) not in present:
                raise UserError(f"{split}/{label} has no readable image (see the rejected files); every class needs images in every split")


# -- duplicates -------------------------------------------------------------------------------


def duplicate_groups(rows: list[ManifestRow]) -> list[list[ManifestRow]]:
    """Groups of two or more images with identical decoded pixels, largest first."""
    by_hash: dict[str, list[ManifestRow]] = defaultdict(list)
    for r in rows:
        by_hash[r.content_hash].append(r)
    groups = [g for g in by_hash.values() if len(g) > 1]
    return sorted(groups, key=lambda g: (-len(g), g[0].path))


def describe_duplicates(rows: list[ManifestRow]) -> dict:
    groups = duplicate_groups(rows)
    across = [g for g in groups if len({r.split for r in g}) > 1]
    within = [g for g in groups if len({r.split for r in g}) == 1]
    return {
        "n_groups": len(groups),
        "n_groups_across_splits": len(across),
        "n_groups_within_split": len(within),
        "n_groups_with_conflicting_labels": sum(len({r.label for r in g}) > 1 for g in groups),
        "across_splits": [_group(g) for g in across],
        "within_split": [_group(g) for g in within],
    }


def _group(group: list[ManifestRow]) -> dict:
    return {
        "content_hash": group[0].content_hash,
        "files": [{"path": r.path, "split": r.split, "label": r.label} for r in group],
    }


# -- patients ---------------------------------------------------------------------------------


def patients_by_split(rows: list[ManifestRow], pattern: str) -> dict[str, dict[str, list[str]]]:
    """split -> patient id -> files."""
    compiled = re.compile(pattern) if pattern else None
    result: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        pid = patient_of(r.path, r.patient, compiled)
        if pid is not None:
            result[r.split][pid].append(r.path)
    return result


def units_of(rows: list[ManifestRow], pattern: str, near_duplicate_bits: int = NEAR_DUPLICATE_BITS) -> np.ndarray:
    """The unit of independence of every row (manifest order): patient, identical pixels or
    near-duplicate, linked through every split (`units.unit_groups`)."""
    compiled = re.compile(pattern) if pattern else None
    return unit_groups(
        [patient_of(r.path, r.patient, compiled) for r in rows], [r.content_hash for r in rows], [r.phash for r in rows], near_duplicate_bits
    )


def patients_known(rows: list[ManifestRow], pattern: str) -> bool:
    """Whether any image has a patient id (the source's column, or found by the pattern)."""
    compiled = re.compile(pattern) if pattern else None
    return any(patient_of(r.path, r.patient, compiled) for r in rows)


def seen_in_train(
    rows: list[ManifestRow], split: str, pattern: str, near_duplicate_bits: int = NEAR_DUPLICATE_BITS, units: np.ndarray | None = None
) -> np.ndarray:
    """For each image of `split` (manifest order): does train hold its patient, its exact pixels
    or a near-duplicate of it (its unit)? Such an image tests memory of a child or a picture, not
    diagnosis. `units`: `units_of(rows, ...)` where the caller has it already."""
    units = units_of(rows, pattern, near_duplicate_bits) if units is None else units
    in_train = {u for u, r in zip(units, rows) if r.split == "train"}
    return np.array([u in in_train for u, r in zip(units, rows) if r.split == split], dtype=bool)


# The near-duplicate pairs named in a report: the closest ones. A set of near-copies has pairs by the
# million (a picture copied 400 times alone has 80,000); every pair is counted.
LISTED_PAIRS = 1000


def near_duplicates_across_splits(rows: list[ManifestRow], max_bits: int, listed: int = LISTED_PAIRS) -> dict:
    """Pairs of images in different splits whose perceptual hashes are within `max_bits` bits:
    how many there are (`n_pairs`), between each two splits (`n_by_splits`), how many are not
    identical pixels (`n_not_exact`), and the `listed` closest named (`pairs`, closest first;
    among pairs as close as the last listed, those first in the manifest)."""
    hashed = [r for r in rows if r.phash]
    i, j, distance = near_duplicate_index_pairs(hash_bits([r.phash for r in hashed]), max_bits)
    split = np.array([SPLIT_ORDER.index(r.split) for r in hashed], dtype=int)
    across = split[i] != split[j]
    i, j, distance = i[across], j[across], distance[across]
    content = np.array([r.content_hash for r in hashed], dtype=object)
    first, second = np.minimum(split[i], split[j]), np.maximum(split[i], split[j])
    pairs = []
    closest = np.lexsort((j, i, distance))[:listed]
    for a, b, bits in zip(i[closest], j[closest], distance[closest]):
        one, other = sorted((hashed[a], hashed[b]), key=lambda r: (SPLIT_ORDER.index(r.split), r.path))
        pairs.append({"split_a": one.split, "file_a": one.path, "split_b": other.split, "file_b": other.path, "bits": int(bits)})
    return {
        "n_pairs": len(i),
        "n_by_splits": {
            f"{SPLIT_ORDER[a]}-{SPLIT_ORDER[b]}": int(((first == a) & (second == b)).sum()) for a, b in combinations(range(len(SPLIT_ORDER)), 2)
        },
        "n_not_exact": int((content[i] != content[j]).sum()) if len(i) else 0,
        "pairs": sorted(pairs, key=lambda p: (p["bits"], p["file_a"], p["file_b"])),
    }


def describe_patients(rows: list[ManifestRow], pattern: str) -> dict:
    from_source = any(r.patient for r in rows)
    if not pattern and not from_source:
        return {"pattern": "", "checked": False}
    per_split = patients_by_split(rows, pattern)
    with_id = sum(len(files) for patients in per_split.values() for files in patients.values())
    overlaps = {}
    splits = [s for s in SPLIT_ORDER if s in per_split]
    for a, b in combinations(splits, 2):
        shared = sorted(set(per_split[a]) & set(per_split[b]))
        overlaps[f"{a}-{b}"] = {
            "n_patients": len(shared),
            "n_images": {a: sum(len(per_split[a][p]) for p in shared), b: sum(len(per_split[b][p]) for p in shared)},
            "patients": [{"patient": p, a: per_split[a][p], b: per_split[b][p]} for p in shared],
        }
    return {
        "pattern": pattern,
        "key": "the patient column of the source's table" if from_source else f"`{pattern}` on the file name",
        "checked": True,
        "images_with_id": with_id,
        "images_without_id": len(rows) - with_id,
        "patients_per_split": {s: len(per_split[s]) for s in splits},
        "overlap": overlaps,
    }


# -- the report -------------------------------------------------------------------------------


def data_report(
    rows: list[ManifestRow],
    *,
    source: str,
    kind: str,
    digest: str,
    classes: list[str],
    image_size: int,
    validation: dict,
    rejected: list[tuple[str, str]],
    ignored: list[tuple[str, str]],
    patient_pattern: str,
    near_duplicate_bits: int = NEAR_DUPLICATE_BITS,
    absolute_paths: int = 0,
) -> dict:
    splits = [s for s in SPLIT_ORDER if any(r.split == s for r in rows)]
    counts = {s: {c: 0 for c in classes} for s in splits}
    for r in rows:
        counts[r.split][r.label] += 1
    totals = {s: sum(counts[s].values()) for s in splits}
    return {
        "source": source,
        "kind": kind,
        "digest": digest,
        "classes": classes,
        "image_size": image_size,
        "validation": validation,
        "counts": counts,
        "totals": totals,
        "balance": {s: {c: round(counts[s][c] / totals[s], 4) for c in classes} for s in splits},
        "width_range": [min(r.width for r in rows), max(r.width for r in rows)],
        "height_range": [min(r.height for r in rows), max(r.height for r in rows)],
        "modes": dict(Counter(r.mode for r in rows)),
        "rejected": [{"path": p, "reason": why} for p, why in rejected],
        "ignored": [{"path": p, "reason": why} for p, why in ignored],
        "absolute_paths": absolute_paths,
        "duplicates": describe_duplicates(rows),
        "near_duplicates": near_duplicate_summary(rows, near_duplicate_bits),
        "patients": describe_patients(rows, patient_pattern),
        "sites": images_per_site(rows),
    }


def near_duplicate_summary(rows: list[ManifestRow], max_bits: int) -> dict:
    near = near_duplicates_across_splits(rows, max_bits)
    return {"max_bits": max_bits, "n_across_splits": near["n_pairs"], "n_by_splits": near["n_by_splits"], "across_splits": near["pairs"]}


def images_per_site(rows: list[ManifestRow]) -> dict[str, dict[str, int]]:
    """Images per site and split, where the source names sites (else empty)."""
    if not any(r.site for r in rows):
        return {}
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        split_counts = counts.setdefault(r.site or "(no site)", {s: 0 for s in SPLIT_ORDER})
        split_counts[r.split] += 1
    return dict(sorted(counts.items()))


def render_report(report: dict, max_listed: int = 50) -> str:
    """The report as Markdown, for people; the JSON beside it keeps every entry."""
    classes = report["classes"]
    lines = [
        "# Data report",
        "",
        f"- source: `{report['source']}` ({report['kind']})",
        f"- digest: `{report['digest']}`",
        f"- validation: {report['validation']['source']} ({report['validation']['reason']})",
        *([f"- validation split: {report['validation']['how']}"] if report["validation"].get("how") else []),
        f"- images decoded to {report['image_size']} x {report['image_size']} grey",
        *([f"- {report['absolute_paths']} rows of the label table named absolute paths (taken as given)"] if report.get("absolute_paths") else []),
        f"- original sizes: width {report['width_range'][0]}-{report['width_range'][1]} px, "
        f"height {report['height_range'][0]}-{report['height_range'][1]} px; "
        f"modes: {', '.join(f'{m} ({n})' for m, n in sorted(report['modes'].items()))}",
        "",
        "## Images per split and class",
        "",
        "| split | " + " | ".join(classes) + " | total | " + " | ".join(f"% {c}" for c in classes) + " |",
        "|---" * (2 * len(classes) + 2) + "|",
    ]
    for split, per_class in report["counts"].items():
        shares = [f"{100 * report['balance'][split][c]:.1f}" for c in classes]
        lines.append(
            f"| {split} | " + " | ".join(str(per_class[c]) for c in classes) + f" | {report['totals'][split]} | " + " | ".join(shares) + " |"
        )
    if report.get("sites"):
        lines += ["", "## Images per site and split", "", "| site | " + " | ".join(SPLIT_ORDER) + " |", "|---" * (len(SPLIT_ORDER) + 1) + "|"]
        lines += [f"| {site} | " + " | ".join(str(n[s]) for s in SPLIT_ORDER) + " |" for site, n in report["sites"].items()]
    for title, key in (("Rejected files (could not be decoded)", "rejected"), ("Ignored files", "ignored")):
        entries = report[key]
        lines += ["", f"## {title}: {len(entries)}", ""]
        lines += [f"- `{e['path']}`: {e['reason']}" for e in entries[:max_listed]]
        if len(entries) > max_listed:
            lines.append(f"- ... and {len(entries) - max_listed} more (see data_report.json)")
    dup = report["duplicates"]
    lines += [
        "",
        "## Exact duplicates (identical decoded pixels)",
        "",
        f"{dup['n_groups']} groups: {dup['n_groups_across_splits']} across splits, "
        f"{dup['n_groups_within_split']} within one split; {dup['n_groups_with_conflicting_labels']} with conflicting labels.",
        "",
    ]
    for group in (dup["across_splits"] + dup["within_split"])[:max_listed]:
        lines.append("- " + ", ".join(f"`{f['path']}` ({f['split']}, {f['label']})" for f in group["files"]))
    near = report.get("near_duplicates")
    if near is not None:
        lines += [
            "",
            f"## Near-duplicates across splits (perceptual hashes within {near['max_bits']} of 255 bits)",
            "",
            f"{near['n_across_splits']} pairs; each counts as one unit with its partner (the validation split keeps them together, "
            "and a test image near a train image counts as seen)"
            + (
                f"; the {len(near['across_splits'])} closest are in data_report.json."
                if len(near["across_splits"]) < near["n_across_splits"]
                else "."
            ),
            "",
        ]
        lines += [
            f"- `{p['file_a']}` ({p['split_a']}) ~ `{p['file_b']}` ({p['split_b']}): {p['bits']} bits" for p in near["across_splits"][:max_listed]
        ]
    patients = report["patients"]
    lines += ["", "## Patients", ""]
    if not patients["checked"]:
        lines.append("Not checked (patient_pattern is empty and the source gives no patient ids).")
    else:
        lines += [
            f"Key: {patients['key']}; {patients['images_with_id']} images carry a patient id, {patients['images_without_id']} do not.",
            "",
            "| splits | shared patients | their images |",
            "|---|---|---|",
        ]
        for pair, o in patients["overlap"].items():
            a, b = pair.split("-")
            lines.append(f"| {a} & {b} | {o['n_patients']} | {o['n_images'][a]} in {a}, {o['n_images'][b]} in {b} |")
        for pair, o in patients["overlap"].items():
            if o["patients"]:
                lines += [
                    "",
                    f"Shared by {pair.replace('-', ' and ')}: "
                    + ", ".join(p["patient"] for p in o["patients"][:max_listed])
                    + (f" ... ({o['n_patients']} in all)" if o["n_patients"] > max_listed else ""),
                ]
    return "\n".join(lines) + "\n"
