"""prepare: find and check the data set, decode it once into the cache, and log what it holds.

Inputs: data_dir (a Kaggle-layout folder, a MedMNIST .npz, a label table .csv, or '' for the
demo set), image_size, val_source, val_fraction, seed, cache_dir, patient_pattern, and for a label
table csv_columns, positive_labels, test_list, test_fraction.
Outputs (run `prepare`): those settings plus `data_digest`, `data_path`, `n_train`, `n_val`,
`n_test` as parameters; the data set as the run's input (name and digest); metrics
`n_rejected`, `n_ignored`, `n_duplicate_groups`, `n_cross_split_duplicate_groups` and
`n_shared_patients_<a>_<b>`; tag `validation` (folder or split: how validation was obtained, the
reason in the data report); artifacts `data/manifest.csv`, `data/data_report.md` and `.json`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import mlflow

from pipeline import tracking
from pipeline.data import Preparation, locate_dataset, prepare_dataset
from pipeline.data.checks import render_report
from pipeline.settings import DataConfig, as_params

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    preparation: Preparation
    run_id: str
    reused: bool


def data_params(prep: Preparation) -> dict[str, str]:
    """What every run that reads the data records about it."""
    sizes = prep.dataset.split_sizes
    return {
        "data_digest": prep.dataset.digest,
        "data_path": prep.dataset.source,
        **{f"n_{split}": str(n) for split, n in sizes.items()},
    }


def run(data: DataConfig, backbone: str | None = None, mode: str | None = None, reuse: bool = False) -> Prepared:
    # Found and listed first (no decoding), so a reused run is known before any work, and the
    # run of a new one spans the decoding it does.
    located = locate_dataset(data)
    params = as_params(data)
    key = tracking.input_key("prepare", params, located.key)
    if reuse and (previous := tracking.find_reusable("prepare", key)):
        return Prepared(prepare_dataset(data, located), previous.info.run_id, reused=True)
    with tracking.step_run("prepare", backbone, mode) as active:
        mlflow.set_tag("input_key", key)
        prep = prepare_dataset(data, located)
        tracking.log_params({**params, **data_params(prep)})
        tracking.log_settings(params)
        tracking.log_dataset(prep.name, prep.dataset.source, prep.dataset.digest, prep.dataset.split_sizes)
        report = prep.report
        metrics = {
            "n_rejected": len(report["rejected"]),
            "n_ignored": len(report["ignored"]),
            "n_duplicate_groups": report["duplicates"]["n_groups"],
            "n_cross_split_duplicate_groups": report["duplicates"]["n_groups_across_splits"],
        }
        if report["patients"]["checked"]:
            for pair, overlap in report["patients"]["overlap"].items():
                metrics[f"n_shared_patients_{pair.replace('-', '_')}"] = overlap["n_patients"]
        mlflow.log_metrics(metrics)
        tracking.log_file(prep.dataset.manifest_path, "data")
        tracking.log_text(render_report(report), "data/data_report.md")
        tracking.log_json(report, "data/data_report.json")
        mlflow.set_tags({"cache_reused": str(prep.cache_reused).lower(), "validation": prep.dataset.validation["source"]})
    log.info(_summary(prep))
    return Prepared(prep, active.info.run_id, reused=False)


def _summary(prep: Preparation) -> str:
    r = prep.report
    sizes = ", ".join(f"{s} {n}" for s, n in prep.dataset.split_sizes.items())
    return (
        f"prepared {prep.name} ({prep.dataset.digest}): {sizes}; {len(r['rejected'])} rejected, "
        f"{len(r['ignored'])} ignored, {r['duplicates']['n_groups_across_splits']} duplicate groups across splits\n"
        f"validation: {prep.dataset.val_origin}"
    )


def main(data: DataConfig) -> None:
    run(data)
