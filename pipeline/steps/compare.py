"""compare: the four-way study (or any set of backbones x modes), its report, and its analysis.

Inputs: the data, fit and tuning settings of `main`, `tune_trials`, `backbones` (default
resnet50,efficientnet_b0), `modes` (default finetune,frozen), `weights`, `seeds` (training
seeds per configuration, default 1), `external` (data sets from other hospitals: every
configuration is scored on each, `external_study.py`) and `report_for` (the id of an earlier
compare run whose report to rebuild from the store, training nothing).
Children of the compare run: `prepare`, then one `<backbone>-<mode>-main` run per configuration
and training seed (tag `seed_index`) with its own prepare, tune (first seed only), train and
evaluate children, each reused where a finished run with identical inputs exists. A
configuration whose training diverges is skipped (tag `skipped_configurations`, and a finding).
Outputs (artifacts under `report/`): `comparison.md`, `comparison.csv`, `comparison.html`
(self-contained, figures embedded): the table with 95 % intervals, the paired tests of every
pair of configurations, the findings; `learning_curves.png`, `accuracy_and_time.png`,
`roc_curves.png`, `calibration.png`, and `analysis/` (`analysis.md`, `analysis.json`,
`label_noise_candidates.png`): leakage, distribution shift, label-noise candidates, errors, the
validation - test gap cause by cause, and the plain-language findings; with `external`, an
internal-vs-external table per set, the paired tests on its images and which model travels
best. All numbers are read back from the tracking store.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np

from pipeline import analysis, plots, report, tracking
from pipeline.analysis.resampling import BOOTSTRAP_RESAMPLES, Resampling
from pipeline.analysis.shortcuts import occlusion_intervals
from pipeline.analysis.simulation import design_of, null_false_cause_rates
from pipeline.cli import from_params
from pipeline.data import Preparation, locate_dataset, prepare_dataset
from pipeline.data.checks import patients_known, units_of
from pipeline.engine.loop import Diverged
from pipeline.engine.setup import setup_training, training_seed
from pipeline.errors import UserError
from pipeline.metrics import positive_index
from pipeline.settings import DEFAULT_PATIENT_PATTERN, CompareConfig, DataConfig, FitConfig, ModelConfig, TrialsConfig, TuneConfig, as_params
from pipeline.steps import external_study, prepare
from pipeline.steps.main import run_configuration

log = logging.getLogger(__name__)

LABEL_NOISE_CONFIDENCE = 0.8
# Null studies of each model's own design simulated for its verdicts' false-cause rates.
NULL_STUDIES = 100


def run(data: DataConfig, fit: FitConfig, trials: TrialsConfig, tune_cfg: TuneConfig, cmp: CompareConfig) -> str:
    with tracking.step_run("compare") as parent:
        settings = as_params(data, fit, trials, tune_cfg, cmp)
        tracking.log_params(settings)
        tracking.log_settings(settings)
        mlflow.set_tag("settings", json.dumps(settings))
        if cmp.report_for:
            # Rebuild an earlier run's report with that run's own data and weights.
            source = tracking.get_run(cmp.report_for)
            if source.data.tags.get("step") != "compare" or "settings" not in source.data.tags:
                raise UserError(f"run {cmp.report_for} is not a compare run; report_for takes the id of one")
            data, fit, cmp = from_params(json.loads(source.data.tags["settings"]), DataConfig, FitConfig, CompareConfig)
            mlflow.set_tag("report_for", source.info.run_id)
            prep = prepare_dataset(data)
            compare_id = source.info.run_id
        else:
            prep = prepare.run(data, reuse=True).preparation
            for data_dir in cmp.external:  # an unreadable external set stops the study before it trains
                locate_dataset(replace(data, data_dir=data_dir))
            skipped = run_configurations(data, fit, trials, tune_cfg, cmp)
            if skipped:
                mlflow.set_tag("skipped_configurations", json.dumps(skipped))
            compare_id = parent.info.run_id
            if cmp.external:
                external_study.validate([r for r in tracking.comparison(compare_id) if r["seed_index"] == 0], data, cmp.external)
        folder, evaluate_ids = write_report(compare_id, prep, data, fit, cmp)
        mlflow.log_artifacts(str(folder), "report")
        # The run's description in the UI: the table and the findings, so its page reads like the report.
        mlflow.set_tag("mlflow.note.content", (folder / "comparison.md").read_text())
        if not cmp.report_for:
            register(folder, prep)
    log.info("\n" + (folder / "comparison.md").read_text())
    log.info(f"report: {folder / 'comparison.html'} (logged under report/ in run {parent.info.run_id})")
    log.info(tracking.ui_hint(parent.info.experiment_id, evaluate_ids))
    return parent.info.run_id


def run_configurations(data: DataConfig, fit: FitConfig, trials: TrialsConfig, tune_cfg: TuneConfig, cmp: CompareConfig) -> dict[str, str]:
    """Every backbone x mode, each with `cmp.seeds` training seeds, as `main` children of the
    active run. A configuration whose training diverges is skipped, with the reason; the others go on.
    The learning rate is tuned once per configuration (first seed) and reused by the other seeds."""
    skipped = {}
    for backbone in cmp.backbones:
        for mode in cmp.modes:
            model = ModelConfig(backbone, mode == "frozen", cmp.weights)
            # One study per configuration: a given study_name becomes a prefix.
            study = replace(tune_cfg, study_name=f"{tune_cfg.study_name}-{backbone}-{mode}") if tune_cfg.study_name else tune_cfg
            seed_fit, tune_trials, lr_source = fit, trials.tune_trials, None
            first_seed = training_seed(data, fit)
            for k in range(cmp.seeds):
                if k:  # the k-th seed counts from the first seed trained, whatever train_seed made it
                    seed_fit, tune_trials = replace(seed_fit, train_seed=first_seed + k), 0
                log.info(f"\n== {backbone} ({mode})" + (f", training seed {k + 1} of {cmp.seeds}" if cmp.seeds > 1 else ""))
                try:
                    with tracking.step_run("main", backbone, mode):
                        mlflow.set_tag("seed_index", str(k))
                        tracking.log_params(as_params(data, model, seed_fit, TrialsConfig(tune_trials), study))
                        outcome = run_configuration(data, model, seed_fit, tune_trials, study, lr_source)
                except Diverged as e:  # the seeds left are skipped too: they would train at the same rate
                    which = f"{backbone} ({mode})" + (f", training seeds {k + 1} to {cmp.seeds}" if k else "")
                    skipped[which] = str(e)
                    log.info(f"skipped {which}: {e}")
                    break
                if k == 0 and fit.lr is None:
                    # The other seeds train at the rate the first one used, tuned once.
                    seed_fit, lr_source = replace(seed_fit, lr=outcome.lr), f"{mlflow.get_run(outcome.run_id).data.tags['lr_source']}, first seed"
    return skipped


def write_report(compare_id: str, prep: Preparation, data: DataConfig, fit: FitConfig, cmp: CompareConfig) -> tuple[Path, list[str]]:
    """The report's folder, and the evaluate runs it compares (every configuration and seed)."""
    all_rows = tracking.comparison(compare_id)
    if not all_rows:
        raise UserError(f"compare run {compare_id} has no finished configuration to report on")
    used = {r["data_digest"] for r in all_rows}
    if used != {prep.dataset.digest}:
        raise UserError(
            f"the data at {prep.dataset.source} changed since compare run {compare_id} (digest now {prep.dataset.digest}, "
            f"its runs used {', '.join(sorted(map(str, used)))}); rebuild the report on the data the runs used"
        )
    # One row per configuration: the first training seed's model (the one whose intervals and
    # tests are shown), with the spread over every seed beside it.
    rows = report.with_seed_spread([r for r in all_rows if r["seed_index"] == 0] or all_rows, all_rows)
    skipped = json.loads(tracking.get_run(compare_id).data.tags.get("skipped_configurations", "{}"))
    folder = Path(tempfile.mkdtemp()) / "report"
    (folder / "analysis").mkdir(parents=True)
    study = test_set_analysis(rows, prep, data, fit, cmp)
    study["skipped_configurations"] = skipped
    study["findings"] = analysis.findings(study)
    if cmp.external:
        study["external"] = external_study.external_study(rows, cmp.external, positive_label(prep), data.seed, study["pairwise"])
        study["findings"] += [s["finding"] for s in study["external"].values()]
    (folder / "analysis" / "analysis.json").write_text(json.dumps(study, indent=1, default=str))
    analysis_md = analysis.render(study) + report.external_markdown(study.get("external", {}))
    (folder / "analysis" / "analysis.md").write_text(analysis_md)
    figures = {
        "learning_curves.png": report.figure_png(report.learning_curves_figure(rows)),
        "accuracy_and_time.png": report.figure_png(report.accuracy_and_time_figure(rows)),
        "roc_curves.png": report.figure_png(report.roc_figure(rows, positive_label(prep))),
        "calibration.png": report.figure_png(report.reliability_figure(study["gap"])),
        "gap_waterfall.png": report.figure_png(report.gap_waterfall_figure(study["gap"])),
    }
    figures["analysis/label_noise_candidates.png"] = report.figure_png(label_noise_grid(study["label_noise_candidates"], prep))
    for r in rows:  # each model's Grad-CAM grid, as its evaluate run drew it
        if tracking.has_artifact(r["evaluate_run_id"], "plots/gradcam.png"):
            figures[f"gradcam/{r['backbone']}-{r['mode']}.png"] = tracking.download(r["evaluate_run_id"], "plots/gradcam.png")
    (folder / "gradcam").mkdir()
    for name, png in figures.items():
        (folder / name).write_bytes(png)
    title = f"{prep.name}: {len(rows)} configurations (compare run {compare_id})"
    answer = (
        "## The answer: why the test set disagrees\n\n![validation to test, cause by cause](gap_waterfall.png)\n\n"
        + analysis.verdicts_markdown(study)
        + "\n"
    )
    tables = report.table_markdown(rows) + "\n" + report.pairwise_markdown(study["pairwise"]) + report.external_markdown(study.get("external", {}))
    (folder / "comparison.md").write_text(
        f"# {title}\n\n{answer}## The configurations\n\n{tables}\n## Findings\n\n" + "".join(f"- {f}\n" for f in study["findings"])
    )
    (folder / "comparison.csv").write_text(report.table_csv(all_rows))
    (folder / "comparison.html").write_text(
        report.html_page(title, rows, study["pairwise"], figures, analysis_md, study["findings"], analysis.verdict_rows(study))
    )
    (folder / "model_cards").mkdir()
    kaggle_names = data.patient_pattern == DEFAULT_PATIENT_PATTERN and prep.report["patients"].get("images_with_id", 0) > 0
    data_facts = {
        "name": prep.name,
        "digest": prep.dataset.digest,
        "sizes": prep.dataset.split_sizes,
        "validation": prep.dataset.val_origin,
        "population": report.population(prep.name, kaggle_names),
    }
    for r in rows:
        (folder / "model_cards" / f"{r['backbone']}-{r['mode']}.md").write_text(report.model_card(r, study, data_facts))
    keep = ("backbone", "mode", "model_uri", "val_auc", "val_acc")
    (folder / "model_cards" / "rows.json").write_text(json.dumps([{k: r.get(k) for k in keep} for r in rows]))
    return folder, [r["evaluate_run_id"] for r in all_rows]


def register(folder: Path, prep: Preparation) -> None:
    """Every configuration's model in the registry, one registered model per data set, with its
    card; champion and challenger chosen on validation."""
    rows = json.loads((folder / "model_cards" / "rows.json").read_text())
    cards = {report.label(r): (folder / "model_cards" / f"{r['backbone']}-{r['mode']}.md").read_text() for r in rows}
    name = f"cxr-{prep.name}-{prep.dataset.digest[:8]}"
    ranking = report.rank_on_validation(rows)
    versions = tracking.register_champion(name, rows, cards, ranking)
    mlflow.set_tags({"registered_model": name, "champion": ranking[0]})
    log.info(
        f"registered {name}: "
        + ", ".join(f"{label} version {v}" for label, v in versions.items())
        + f"; champion {ranking[0]}"
        + (f", challenger {ranking[1]}" if len(ranking) > 1 else "")
        + " (by validation AUC)"
    )
    log.info(f"serve the champion: mlflow models serve -m models:/{name}@champion --env-manager local -p 5001")


def positive_label(prep: Preparation) -> str:
    return prep.dataset.classes[positive_index(prep.dataset.classes)]


def _scores(predictions: list[dict], files: list[str], positive: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels (1 = positive) and positive probabilities of a model's predictions, in `files` order."""
    by_file = {p["file"]: p for p in predictions}
    missing = [f for f in files if f not in by_file]
    if missing:
        raise UserError(f"the logged predictions lack {len(missing)} images of the data set (e.g. {missing[0]}): evaluate again")
    return (np.array([by_file[f]["true_label"] == positive for f in files], dtype=int), np.array([float(by_file[f]["probability"]) for f in files]))


def test_set_analysis(rows: list[dict], prep: Preparation, data: DataConfig, fit: FitConfig, cmp: CompareConfig) -> dict:
    d = prep.dataset
    manifest = d.manifest()
    images = {s: d.images(s) for s in ("train", "val", "test")}
    positive = positive_label(prep)
    shift = {"class_balance": analysis.class_balance(manifest, positive), "image_statistics": analysis.image_statistics(manifest, images)}
    # Train-vs-test separability on the features of the first backbone, frozen: the cached
    # features of a frozen configuration, so usually no extraction at all.
    backbone = next((r["backbone"] for r in rows if r["mode"] == "frozen"), rows[0]["backbone"])
    setup = setup_training(data, ModelConfig(backbone, True, cmp.weights), fit, prep)
    features = setup.features(setup.new_model(), ("train", "test")).splits
    units = units_of(manifest, data.patient_pattern, data.near_duplicate_bits)
    split_of = np.array([r.split for r in manifest])
    found = analysis.domain_shift(
        features["train"].numpy(), features["test"].numpy(), data.seed, np.r_[units[split_of == "train"], units[split_of == "test"]]
    )
    shift["domain_auc"], shift["domain_auc_ci_low"], shift["domain_auc_ci_high"] = found.value, found.low, found.high
    shift["domain_features"] = f"{backbone} ({setup.weights.key})"
    predictions = {report.label(r): r["test_predictions"] for r in rows}
    errors = {}
    for r in rows:  # at the operating threshold, as the model is used
        wrong = [p for p in r["test_predictions"] if p["predicted_label_at_val_threshold"] != p["true_label"]]
        errors[report.label(r)] = {
            "fp": sum(p["true_label"] != positive for p in wrong),
            "fn": sum(p["true_label"] == positive for p in wrong),
            "val_acc": r["val_acc_at_val_threshold"],
            "test_acc": r["test_acc_at_val_threshold"],
        }
    files = {s: d.files(s) for s in ("val", "test")}
    units = units_of(manifest, data.patient_pattern, data.near_duplicate_bits)
    known = patients_known(manifest, data.patient_pattern)
    in_split = {s: np.array([r.split == s for r in manifest]) for s in ("train", "val", "test")}
    in_train = np.isin(units, units[in_split["train"]])
    seen = {s: in_train[in_split[s]] for s in ("val", "test")}
    split_units = {s: units[in_split[s]] for s in ("val", "test")}
    test_scores, thresholds, gap, false_causes = {}, {}, {}, {}
    for r in rows:
        name = report.label(r)
        y_val, p_val = _scores(r["val_predictions"], files["val"], positive)
        y_test, p_test = _scores(r["test_predictions"], files["test"], positive)
        test_scores[name] = p_test
        thresholds[name] = operating_threshold_of(r)
        gap[name] = analysis.gap_causes(
            y_val,
            p_val,
            seen["val"],
            y_test,
            p_test,
            thresholds[name],
            data.seed,
            seen["test"],
            split_units["val"],
            split_units["test"],
            fit.target_sensitivity,
            patients_known=known,
        )
        sens, spec = _unseen_rates(y_val, p_val, seen["val"], thresholds[name])
        design = design_of(y_val, seen["val"], y_test, seen["test"], np.r_[split_units["val"], split_units["test"]], sens, spec)
        false_causes[name] = null_false_cause_rates(design, NULL_STUDIES, data.seed, BOOTSTRAP_RESAMPLES)
    y_test = _scores(rows[0]["test_predictions"], files["test"], positive)[0]
    test_resampling = Resampling.of(split_units["test"], y_test, data.seed, patients_known=known)
    return {
        "leakage": analysis.leakage(manifest, data.patient_pattern, data.near_duplicate_bits),
        "shift": shift,
        "label_noise_candidates": analysis.label_noise_candidates(predictions, positive, LABEL_NOISE_CONFIDENCE),
        "label_noise_confidence": LABEL_NOISE_CONFIDENCE,
        "errors": analysis.error_breakdown(errors),
        "interval_method": test_resampling.describe(),
        "intervals": {
            report.label(r): {m: [r.get(f"test_{m}"), r.get(f"test_{m}_ci_low"), r.get(f"test_{m}_ci_high")] for m in ("acc_at_val_threshold", "auc")}
            for r in rows
        },
        "seeds": {report.label(r): r["seed_spread"] for r in rows if r["seed_spread"]["n"] > 1},
        "pairwise": analysis.pairwise_tests(y_test, test_scores, thresholds, test_resampling) if len(rows) > 1 else [],
        "shortcuts": {
            report.label(r): {**occlusion_intervals(r), "saliency_in_lung_box": r.get("saliency_in_lung_box")}
            for r in rows
            if r.get("test_auc_lungs_hidden") is not None
        },
        "gap": gap,
        "false_cause_rates": {"studies": NULL_STUDIES, "rates": false_causes},
    }


def operating_threshold_of(row: dict) -> float:
    """The threshold the model is used at (stored by its train run), else 0.5."""
    for key in ("operating_threshold", "val_threshold"):
        if row.get(key) is not None:
            return float(row[key])
    return 0.5


def _unseen_rates(y: np.ndarray, p: np.ndarray, seen: np.ndarray, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity on the unseen images (NaN where a class has none)."""
    called, unseen = p >= threshold, ~seen
    positives, negatives = unseen & (y == 1), unseen & (y == 0)
    sens = float(called[positives].mean()) if positives.any() else float("nan")
    spec = float((~called[negatives]).mean()) if negatives.any() else float("nan")
    return sens, spec


def label_noise_grid(candidates: list[dict], prep: Preparation):
    index = {path: k for k, path in enumerate(prep.dataset.files("test"))}
    test_images = prep.dataset.images("test")
    shown = candidates[:24]
    return plots.image_grid(
        [np.asarray(test_images[index[c["file"]]]) for c in shown],
        [f"{Path(c['file']).name}\nlabel {c['true_label']}, wrong at {c['mean_probability_of_wrong_class']:.2f}" for c in shown],
        title=f"test images every model gets confidently wrong ({len(candidates)})",
    )


def main(data: DataConfig, fit: FitConfig, trials: TrialsConfig, tune_cfg: TuneConfig, cmp: CompareConfig) -> None:
    run(data, fit, trials, tune_cfg, cmp)
