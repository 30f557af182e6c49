"""main: one configuration end to end, as child runs of one parent run.

Inputs: the data, model and fit settings of `train`, and `tune_trials` (Optuna trials before
training when `lr=auto`; 0 skips tuning).
Children, in order: `prepare`, `tune` (when it runs), `train`, `evaluate`; each is passed what
the one before made (the prepared data, the tuned lr, the model URI). A child whose finished
run with identical inputs (parameters, data digest, code version) is already in the store is
reused, not run again.
Outputs (run `<backbone>-<mode>-main`): the settings as parameters; tags `<step>_run_id` for
every child and `reused_steps`; the headline metrics (`test_acc`, `test_auc`, `val_acc`,
`train_time_s`) copied from the children; a printed summary with the command that opens the
MLflow UI on this store.
With `test_site=each` (a label table with a site column): leave-one-site-out, one child
`<backbone>-<mode>-main-<site>` per site held out as test (tag `test_site`), and in the parent
`site_test_auc_mean` / `_sd` / `_min` / `_max` (and the same for accuracy, sensitivity,
specificity), tag `worst_site`, `sites/leave_one_site_out.md` and `.json`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace

import mlflow

from pipeline import tracking
from pipeline.analysis.sites import site_markdown, site_summary
from pipeline.data import prepare_dataset, sites_of
from pipeline.errors import UserError
from pipeline.settings import DataConfig, EvaluateConfig, FitConfig, ModelConfig, TrialsConfig, TuneConfig, as_params
from pipeline.steps import evaluate, prepare, train, tune

log = logging.getLogger(__name__)


INTERVALS = tuple(f"test_{m}_ci_{side}" for m in ("acc", "auc") for side in ("low", "high"))


@dataclass
class Outcome:
    run_id: str
    run_ids: dict[str, str] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    lr: float = 0.0
    model_uri: str = ""
    time_spent: str = ""


def run_configuration(
    data: DataConfig, model: ModelConfig, fit: FitConfig, tune_trials: int, tune_cfg: TuneConfig = TuneConfig(), lr_source: str | None = None
) -> Outcome:
    """The children of one configuration, in the active (parent) run; shared with `compare`.
    Tag `lr_source` says how the rate was chosen: tuned, given, default (or what the caller says)."""
    outcome = Outcome(run_id=mlflow.active_run().info.run_id)

    def record(step: str, run_id: str, reused: bool) -> None:
        outcome.run_ids[step] = run_id
        if reused:
            outcome.reused.append(step)
        log.info(f"{step:<9} run {run_id}{' (reused: a finished run had the same inputs)' if reused else ''}")

    prepared = prepare.run(data, model.backbone, model.mode, reuse=True)
    record("prepare", prepared.run_id, prepared.reused)
    tuned_lr = None
    if fit.lr is None and tune_trials > 0:
        tuned = tune.run(data, model, fit, tune_cfg, tune_trials, prep=prepared.preparation, reuse=True)
        record("tune", tuned.run_id, tuned.reused)
        tuned_lr = tuned.best_lr
    trained = train.run(data, model, fit, prep=prepared.preparation, tuned_lr=tuned_lr, reuse=True)
    record("train", trained.run_id, trained.reused)
    evaluated = evaluate.run(EvaluateConfig(model_uri=trained.model_uri), reuse=True)
    record("evaluate", evaluated.run_id, evaluated.reused)
    train_run = tracking.get_run(trained.run_id)
    train_metrics = train_run.data.metrics
    outcome.lr, outcome.model_uri = trained.lr, trained.model_uri
    outcome.time_spent = where_time_went(train_metrics, train_run.data.tags, outcome.run_ids)
    outcome.metrics = {
        **{
            k: evaluated.metrics[k]
            for k in ("test_acc", "test_auc", "val_acc", "test_sensitivity", "test_specificity") + INTERVALS
            if k in evaluated.metrics
        },
        "train_time_s": train_metrics["train_time_s"],
    }
    mlflow.set_tags({f"{step}_run_id": run_id for step, run_id in outcome.run_ids.items()})
    mlflow.set_tag("reused_steps", ",".join(outcome.reused) or "none")
    mlflow.set_tag("lr_source", lr_source or ("tuned" if tuned_lr is not None else "given" if fit.lr is not None else "default"))
    mlflow.log_metrics(outcome.metrics)
    return outcome


def where_time_went(metrics: dict[str, float], tags: dict[str, str], run_ids: dict[str, str]) -> str:
    """The train run's time in words. A frozen run that found its features cached spent almost
    nothing, which reads as a bug unless the summary says who extracted them, and in how long."""
    spent = f"training {metrics['train_time_s']:.1f} s"
    if "feature_extraction_s" in metrics:
        return f"{spent}, of which feature extraction {metrics['feature_extraction_s']:.1f} s"
    if "cached_features_measured_in" in tags:
        source = json.loads(tags["cached_features_measured_in"])[0]  # one entry per split, all from one extraction
        by = f"run {source.get('run_id', '?')}"
        steps = {run_id: step for step, run_id in run_ids.items()}
        if source.get("run_id") in steps:
            by = f"the {steps[source['run_id']]} run"
        elif source.get("run_id"):
            extractor = tracking.get_run(source["run_id"]).data.tags
            if extractor.get("mlflow.parentRunId") in steps:  # a tuning trial
                by = f"trial {extractor.get('trial', '?')} of the {steps[extractor['mlflow.parentRunId']]} run"
        return f"{spent} (the head only); features extracted in {metrics['cached_features_cost_s']:.1f} s on {source.get('device', '?')} by {by}"
    return spent


def run(data: DataConfig, model: ModelConfig, fit: FitConfig, trials: TrialsConfig, tune_cfg: TuneConfig = TuneConfig()) -> Outcome:
    if data.test_site == "each":
        return leave_one_site_out(data, model, fit, trials, tune_cfg)
    with tracking.step_run("main", model.backbone, model.mode) as parent:
        tracking.log_params(as_params(data, model, fit, trials, tune_cfg))
        tracking.log_settings(as_params(data, model, fit, trials, tune_cfg))
        outcome = run_configuration(data, model, fit, trials.tune_trials, tune_cfg)
    m = outcome.metrics
    log.info(
        f"\n{model.backbone} ({model.mode}), lr {outcome.lr:.3g}: test accuracy {m['test_acc']:.3f} [{m['test_acc_ci_low']:.3f}, {m['test_acc_ci_high']:.3f}], "
        f"AUC {m['test_auc']:.3f} [{m['test_auc_ci_low']:.3f}, {m['test_auc_ci_high']:.3f}] (95 % intervals), "
        f"sensitivity {m['test_sensitivity']:.3f}, specificity {m['test_specificity']:.3f}; "
        f"{outcome.time_spent}"
    )
    log.info(f"model {outcome.model_uri}; parent run {outcome.run_id}; reused: {', '.join(outcome.reused) or 'nothing'}")
    log.info(tracking.ui_hint(parent.info.experiment_id))
    return outcome


def leave_one_site_out(data: DataConfig, model: ModelConfig, fit: FitConfig, trials: TrialsConfig, tune_cfg: TuneConfig) -> Outcome:
    """Every site of the label table held out as the test set in turn, one child configuration
    (its own prepare, tune, train, evaluate) per site, and the spread across sites."""
    sites = sites_of(data)
    if len(sites) < 2:
        raise UserError(f"test_site=each needs at least two sites; {data.data_dir} names {len(sites)} ({', '.join(sites) or 'none'})")
    with tracking.step_run("main", model.backbone, model.mode) as parent:
        tracking.log_params(as_params(data, model, fit, trials, tune_cfg))
        tracking.log_settings(as_params(data, model, fit, trials, tune_cfg))
        per_site, sizes, run_ids = {}, {}, {}
        for site in sites:
            held_out = replace(data, test_site=site)
            log.info(f"\n== test site {site}")
            with tracking.step_run("main", model.backbone, model.mode, name=f"{model.backbone}-{model.mode}-main-{site}"):
                mlflow.set_tag("test_site", site)
                outcome = run_configuration(held_out, model, fit, trials.tune_trials, tune_cfg)
            per_site[site], run_ids[site] = outcome.metrics, outcome.run_id
            sizes[site] = prepare_dataset(held_out).dataset.split_sizes["test"]
        summary = site_summary(per_site)
        mlflow.set_tags({"test_site": "each", "site_run_ids": json.dumps(run_ids), "worst_site": summary["worst_site"]})
        mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)})
        table = site_markdown(per_site, sizes, summary)
        tracking.log_text(table, "sites/leave_one_site_out.md")
        tracking.log_json({"per_site": per_site, "test_images": sizes, "summary": summary}, "sites/leave_one_site_out.json")
    log.info("\n" + table)
    log.info(tracking.ui_hint(parent.info.experiment_id))
    return Outcome(run_id=parent.info.run_id, run_ids=run_ids, metrics={k: v for k, v in summary.items() if isinstance(v, float)})


def main(data: DataConfig, model: ModelConfig, fit: FitConfig, trials: TrialsConfig, tune_cfg: TuneConfig) -> None:
    run(data, model, fit, trials, tune_cfg)
