"""A label table as the source: one row per image, paths relative to the table's folder.

This is how the large public sets and hospital exports come: NIH ChestX-ray14's
`Data_Entry_2017.csv` (`Image Index`, `Finding Labels`, `Patient ID`; images spread over
`images_001/` .. `images_012/`), RSNA Pneumonia's `stage_2_train_labels.csv` (`patientId`,
`Target`, one row per box; files `<patientId>.dcm`). Columns are named by `csv_columns`; a label
is a class name (NORMAL / PNEUMONIA, or 0 / 1), or, with `positive_labels`, any text whose
`|`-separated findings include one of them is PNEUMONIA and every other is NORMAL (NIH's
"No Finding" and "Effusion" alike). The patient column is what keeps a patient on one side of
every split; the site column (a hospital, a scanner) lets `test_site` hold one site out as the
test set, the way another hospital would meet the model. A relative path that climbs out of the table's folder is a rejected row, never opened;
absolute paths are taken as given, and the data report counts the rows that used them. Rows that cannot be used (file missing, label unknown, two labels for one file)
are listed with the reason and the rest go on; identical repeated rows (RSNA's boxes) count once.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.data.sources import DEAD_LINK, IMAGE_EXTENSIONS, NPZ_CLASSES, Listing, SourceImage
from pipeline.errors import UserError
from pipeline.parsers import CSV_COLUMN_DEFAULTS

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
LABEL_ALIASES = {"0": NPZ_CLASSES[0], "1": NPZ_CLASSES[1], "normal": NPZ_CLASSES[0], "pneumonia": NPZ_CLASSES[1]}


@dataclass(frozen=True)
class CsvSettings:
    columns: dict[str, str]  # role (file, label, patient, split, site) -> column name
    positive_labels: tuple[str, ...] = ()
    test_list: str = ""  # a file naming the test images (NIH's test_list.txt), relative to the table
    test_site: str = ""  # the site whose images form the test set (the others train and validate)

    @property
    def explicit(self) -> set[str]:
        """Roles whose column the user named: missing, they are an error, not a default to skip."""
        return {role for role, name in self.columns.items() if name != CSV_COLUMN_DEFAULTS[role]}


def list_csv(path: Path, settings: CsvSettings) -> Listing:
    root = path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            rows = list(reader)
    except UnicodeDecodeError:
        with open(path, "rb") as f:
            start = f.read(4)
        found = "UTF-16" if start[:2] in (b"\xff\xfe", b"\xfe\xff") else "not UTF-8"
        raise UserError(f"{path} is {found}: save the table as UTF-8 (in Excel: Save As, 'CSV UTF-8') and run again") from None
    except (OSError, csv.Error) as e:
        raise UserError(f"cannot read {path} as a CSV table: {e}") from None
    columns = {role: name for role, name in settings.columns.items() if name in header}
    missing = [
        f"{role}={settings.columns[role]!r}"
        for role in settings.columns
        if role not in columns and (role in ("file", "label") or role in settings.explicit)
    ]
    if missing:
        raise UserError(
            f"{path.name} has no column for {', '.join(missing)} (its columns: {', '.join(header) or 'none'}); "
            "name them with csv_columns, e.g. csv_columns='file=Image Index,label=Finding Labels,patient=Patient ID'"
        )
    test_names = _read_test_list(root / settings.test_list) if settings.test_list else None
    if test_names is not None and "split" in columns:
        raise UserError(
            f"{path.name} has a split column ({columns['split']!r}) and test_list is given: use one; set csv_columns split= to a column that does not exist to ignore it"
        )
    if settings.test_site:
        _check_test_site(path.name, columns, settings)
    finder = FileFinder(root)
    ignored: list[tuple[str, str]] = []
    absolute = 0
    by_file: dict[str, dict] = {}
    repeated = 0
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        name = (row.get(columns["file"]) or "").strip()
        where = f"{path.name}:{line}"
        if not name:
            ignored.append((where, "empty file name"))
            continue
        label = _label(row.get(columns["label"]) or "", settings.positive_labels)
        if label is None:
            ignored.append(
                (f"{where} {name}", f"unknown label {row.get(columns['label'])!r} (expected NORMAL/PNEUMONIA or 0/1, or give positive_labels)")
            )
            continue
        split = "train"
        site = (row.get(columns["site"]) or "").strip() if "site" in columns else ""
        if settings.test_site:
            split = "test" if site == settings.test_site else "train"
        elif "split" in columns:
            given = (row.get(columns["split"]) or "").strip().lower()
            if given not in SPLIT_ALIASES:
                ignored.append((f"{where} {name}", f"unknown split {row.get(columns['split'])!r} (expected train, val or test)"))
                continue
            split = SPLIT_ALIASES[given]
        elif test_names is not None and Path(name).name in test_names:
            split = "test"
        patient = (row.get(columns["patient"]) or "").strip() if "patient" in columns else ""
        entry = {"label": label, "split": split, "patient": patient, "site": site, "where": where}
        if name in by_file:
            if {k: v for k, v in by_file[name].items() if k != "where"} != {k: v for k, v in entry.items() if k != "where"}:
                by_file[name]["conflict"] = f"{by_file[name]['where']} and {where} disagree (label, split, patient or site)"
            else:
                repeated += 1
            continue
        by_file[name] = entry
    images: list[SourceImage] = []
    for name, entry in by_file.items():
        if "conflict" in entry:
            ignored.append((name, entry["conflict"]))
            continue
        file = finder.find(name)
        if isinstance(file, str):
            ignored.append((name, file))
            continue
        absolute += Path(name).is_absolute()
        # Named relative to the table where it lies below it, else as the table gives it (absolute).
        relpath = file.relative_to(root).as_posix() if file.is_relative_to(root) else file.as_posix()
        images.append(SourceImage(relpath, entry["split"], entry["label"], path=file, patient=entry["patient"], site=entry["site"]))
    if repeated:
        ignored.append((path.name, f"{repeated} repeated rows (same file, label, split and patient) counted once"))
    if not images:
        raise UserError(
            f"{path.name}: no usable row ({len(ignored)} listed as unusable; first: {ignored[0][0]}: {ignored[0][1]})"
            if ignored
            else f"{path.name} has no rows"
        )
    if settings.test_site and not any(i.split == "test" for i in images):
        sites = sorted({i.site for i in images})
        raise UserError(f"{path.name}: no usable image of site {settings.test_site!r} to test on; its sites: {', '.join(sites)}")
    classes = sorted({i.label for i in images})
    if len(classes) < 2:
        raise UserError(f"{path.name}: every usable row is {classes[0]}; a classifier needs both classes (check the label column or positive_labels)")
    return Listing("csv", str(path.resolve()), classes, images, ignored, absolute)


def _check_test_site(table: str, columns: dict[str, str], settings: CsvSettings) -> None:
    """test_site chooses the test set: the table must name sites, and nothing else may choose it."""
    if "site" not in columns:
        raise UserError(f"test_site needs a site column; {table} has no {settings.columns['site']!r} column: name it with csv_columns site=<column>")
    if "split" in columns or settings.test_list:
        chooser = f"a split column ({columns['split']!r})" if "split" in columns else "test_list"
        raise UserError(
            f"test_site and {chooser} both choose the test set of {table}: use one (set csv_columns split= to a column that does not exist to ignore it)"
        )


def sites_of(path: Path, settings: CsvSettings) -> list[str]:
    """The sites a label table names, each once, in order (leave-one-site-out runs one per site)."""
    return sorted({i.site for i in list_csv(path, replace(settings, test_site="")).images if i.site})


def _label(value: str, positive: tuple[str, ...]) -> str | None:
    value = value.strip()
    if positive:
        if not value:
            return None
        findings = {part.strip().lower() for part in value.split("|")}
        return NPZ_CLASSES[1] if findings & {p.lower() for p in positive} else NPZ_CLASSES[0]
    return LABEL_ALIASES.get(value.lower())


def _read_test_list(path: Path) -> set[str]:
    if not path.is_file():
        raise UserError(f"test_list {path} does not exist; give a file (relative to the CSV's folder) naming one test image per line")
    return {Path(line.strip()).name for line in path.read_text().splitlines() if line.strip()}


class FileFinder:
    """A listed name to a file under the table's folder: the path as given, else the one file of
    that name (or that name plus an image extension) anywhere below, since public sets spread
    their images over sub-folders (`images_001/images/...`) the table does not name."""

    def __init__(self, root: Path):
        self.root = root
        self._by_name: dict[str, list[Path]] | None = None

    def find(self, name: str) -> Path | str:
        """The file, or why there is none. A relative name that climbs out of the table's folder
        (`../../etc/passwd`) is refused unread; an absolute one is taken as given (documented)."""
        if not Path(name).is_absolute() and os.path.normpath(name).split(os.sep)[0] == os.pardir:
            return f"outside the table's folder ({self.root}): a relative path must stay below it (give an absolute path to use a file elsewhere)"
        direct = self.root / name
        if direct.is_symlink() and not direct.exists():
            return DEAD_LINK
        if direct.is_file():
            return direct
        if self._by_name is None:
            self._by_name = defaultdict(list)
            for file in self.root.rglob("*"):
                if file.is_file():
                    self._by_name[file.name].append(file)
        base = Path(name).name
        for candidate in [base] + [base + ext for ext in sorted(IMAGE_EXTENSIONS)]:
            found = self._by_name.get(candidate, [])
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                return f"{len(found)} files named {candidate} under {self.root} ({', '.join(str(f.relative_to(self.root)) for f in found[:3])}); give the path in the table"
        return f"listed in the table but not found under {self.root}"
