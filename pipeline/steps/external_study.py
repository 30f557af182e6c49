"""compare's external validation: every configuration's model on each external set.

Inputs: a compare run's configurations (the first training seed's model of each) and
`external`, data sets from other hospitals, read with the study's data settings.
Outputs: one `<backbone>-<mode>-external` run per model and set (the external step, reused where
a finished one exists), and, read back from the store for the report, per set: each model's
external figures, the paired tests of every pair of models on that set's images (patient
bootstrap where its patients are known) and the finding saying which model travels best.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pipeline import report, tracking
from pipeline.analysis import external as ext
from pipeline.analysis.resampling import Resampling
from pipeline.analysis.uncertainty import pairwise_tests
from pipeline.errors import UserError
from pipeline.settings import DataConfig, EvaluateConfig, ExternalConfig
from pipeline.steps import external


def validate(rows: list[dict], data: DataConfig, data_dirs: tuple[str, ...]) -> None:
    """The external step for every model of `rows` on every set of `data_dirs`."""
    for data_dir in data_dirs:
        for r in rows:
            external.run(EvaluateConfig(train_run_id=r["train_run_id"]), replace(data, data_dir=data_dir), ExternalConfig(), reuse=True)


def external_study(rows: list[dict], data_dirs: tuple[str, ...], positive: str, seed: int, internal_pairs: list[dict]) -> dict[str, dict]:
    """Per external set, as its runs in the store recorded it: the models' metrics, the paired
    tests and the finding. A set no model was scored on is left out."""
    validations = {report.label(r): tracking.external_validations(r["train_run_id"], data_dirs) for r in rows}
    internal_auc = {report.label(r): r["test_auc"] for r in rows}
    sets = {}
    for data_dir in data_dirs:
        found = {name: v[data_dir] for name, v in validations.items() if data_dir in v}
        if not found:
            continue
        first = next(iter(found.values()))
        files = [p["file"] for p in first["predictions"]]
        scores = {}
        for name, v in found.items():
            by_file = {p["file"]: float(p["probability"]) for p in v["predictions"]}
            if set(by_file) != set(files):
                raise UserError(f"the external runs on {data_dir} scored different images (the data changed between them): run compare again")
            scores[name] = np.array([by_file[f] for f in files])
        y = np.array([p["label"] == positive for p in first["predictions"]], dtype=int)
        units = np.array([int(p["unit"]) for p in first["predictions"]])
        resampling = Resampling.of(units, y, seed, patients_known=first["patients_known"])
        thresholds = {name: v["metrics"]["operating_threshold"] for name, v in found.items()}
        pairs = pairwise_tests(y, scores, thresholds, resampling) if len(found) > 1 else []
        metrics = {name: v["metrics"] for name, v in found.items()}
        sets[data_dir] = {
            "source": first["source"],
            "n_images": len(files),
            "interval_method": resampling.describe(),
            "models": metrics,
            "run_ids": {name: v["run_id"] for name, v in found.items()},
            "pairwise": pairs,
            "finding": ext.travel_finding(first["source"], {n: internal_auc[n] for n in found}, metrics, pairs, internal_pairs),
        }
    return sets
