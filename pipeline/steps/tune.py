"""tune: Optuna search of the learning rate for one configuration; each trial a nested run.

Inputs: the data, model and fit settings of `train` (`epochs` is each trial's budget), `tune_trials`
(trials this run adds), `storage` (Optuna RDB URL; '' = SQLite beside the tracking store),
`study_name` ('' = `<backbone>-<mode>-<digest8>`), `lr_range` (auto = 1e-4..1e-1 frozen,
1e-5..1e-2 fine-tune, searched log-uniformly) and `pruner` (median, hyperband, none).
Outputs (run `<backbone>-<mode>-tune`): `best_lr`, `best_val_loss`, `n_trials_complete`,
`n_trials_pruned`, `n_trials_failed` (of the whole study, which reruns and other workers add to)
and `n_trials_run` (this run's); tags `study_name` and `storage` (password masked) as resolved;
`plots/optimization_history.png`, `plots/val_loss_vs_lr.png`. Each trial is a nested run
`<backbone>-<mode>-tune-trial-<n>` with its `lr` and the per-epoch metrics, ended FINISHED,
KILLED (pruned) or FAILED (with the error in tag `error`).

Frozen mode extracts the backbone's features once for the whole study; every trial trains
only a new head on them.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

import mlflow
import optuna

from pipeline import plots, tracking, tuning
from pipeline.data import Preparation
from pipeline.engine.features import Features
from pipeline.engine.loop import Diverged, EpochStats, train_classifier
from pipeline.engine.setup import TrainingSetup, setup_training
from pipeline.errors import UserError
from pipeline.secrets import safe_url
from pipeline.settings import DataConfig, FitConfig, ModelConfig, TrialsConfig, TuneConfig, as_params
from pipeline.steps.prepare import data_params

log = logging.getLogger(__name__)

# What a trial may raise without stopping the study: numerical trouble, a bad batch... The
# trial is FAILED with the message; a user's mistake (UserError) still stops everything.
TRIAL_ERRORS = (RuntimeError, ValueError, FloatingPointError, ArithmeticError)


@dataclass
class Tuned:
    run_id: str
    best_lr: float
    reused: bool


def run(
    data: DataConfig,
    model: ModelConfig,
    fit: FitConfig,
    tune_cfg: TuneConfig,
    tune_trials: int,
    *,
    prep: Preparation | None = None,
    reuse: bool = False,
) -> Tuned:
    setup = setup_training(data, model, fit, prep)
    digest = setup.prep.dataset.digest
    name = tune_cfg.study_name or tuning.default_study_name(model.backbone, model.mode, digest)
    url = tuning.resolve_storage(tune_cfg.storage, mlflow.get_tracking_uri())
    lr_range = tune_cfg.lr_range or tuning.DEFAULT_LR_RANGE[model.mode]
    if tune_trials < 1:
        raise UserError("tune_trials must be at least 1 for the tune step (it is the number of trials this run adds to the study)")
    params = {**as_params(data, model, fit, tune_cfg), "tune_trials": str(tune_trials), "storage": safe_url(tune_cfg.storage)}
    key = tracking.input_key("tune", {**params, **setup.identity(), "study_name": name, "storage": safe_url(url)}, digest)
    # What makes trials comparable; not where files are (workers on other machines mount data
    # and weights elsewhere), which the data digest and the weights key stand for.
    trial_settings = {k: v for k, v in as_params(model, fit).items() if k not in ("lr", "device", "num_threads", "weights")}
    trial_settings.update(weights=setup.weights.key, image_size=str(data.image_size), seed=str(data.seed), data_digest=digest)
    study = tuning.open_study(
        name,
        url,
        seed=data.seed,
        pruner_kind=tune_cfg.pruner,
        epochs=fit.epochs,
        lr_range=lr_range,
        settings=trial_settings,
        n_trials=tune_trials,
    )
    # An earlier run stands for this one only while its study is as it left it, and only in a
    # private store: on a shared `storage` a tune step adds its trials, as the lab expects.
    if reuse and not tune_cfg.storage and (previous := tracking.find_reusable("tune", key)):
        if previous.data.tags.get("study_trials_at_end") == str(len(study.get_trials(deepcopy=False))):
            return Tuned(previous.info.run_id, previous.data.metrics["best_lr"], reused=True)
    with tracking.step_run("tune", model.backbone, model.mode) as active:
        # The resolved study and storage are tags: under `mlflow run` the parameters keep what was typed ('').
        mlflow.set_tags({"input_key": key, "worker": tuning.worker_label(), "study_name": name, "storage": safe_url(url)})
        tracking.log_params({**params, **data_params(setup.prep)})
        tracking.log_settings(params)
        tracking.log_dataset(setup.prep.name, setup.prep.dataset.source, digest, setup.prep.dataset.split_sizes)
        objective = Objective(setup, lr_range)
        log.info(f"study {name} in {safe_url(url)}: {tune_trials} trials of up to {fit.epochs} epochs")
        study.optimize(objective, n_trials=tune_trials, catch=TRIAL_ERRORS)
        summary = tuning.summarise(study)
        mlflow.set_tag("study_trials_at_end", str(len(study.get_trials(deepcopy=False))))
        mlflow.log_metrics(
            {
                "best_lr": summary.best_lr,
                "best_val_loss": summary.best_val_loss,
                "n_trials_complete": summary.n_complete,
                "n_trials_pruned": summary.n_pruned,
                "n_trials_failed": summary.n_failed,
                "n_trials_run": objective.trials_run,
            }
        )
        if objective.features is not None:
            # Measured here only if a trial of this run extracted them; else their cost, and where.
            mlflow.set_tag("features_cached", str(objective.features.cached).lower())
            if objective.features.extraction_s:
                mlflow.log_metric("feature_extraction_s", objective.features.extraction_s)
            if objective.features.cached_from:
                mlflow.log_metric("cached_features_cost_s", objective.features.cached_extraction_s)
                mlflow.set_tag("cached_features_measured_in", json.dumps(objective.features.cached_from))
        _log_figures(study)
    log.info(
        f"best lr {summary.best_lr:.3g} (val loss {summary.best_val_loss:.4f}); study {name}: "
        f"{summary.n_complete} complete, {summary.n_pruned} pruned, {summary.n_failed} failed"
    )
    return Tuned(active.info.run_id, summary.best_lr, reused=False)


class Objective:
    """One trial: a fresh model (a fresh head, in frozen mode) trained at the suggested lr, in a
    nested run; reports each epoch's validation loss so the pruner can stop it."""

    def __init__(self, setup: TrainingSetup, lr_range: tuple[float, float]):
        self.setup = setup
        self.lr_range = lr_range
        self.trials_run = 0
        self.features: Features | None = None  # as found by the first trial

    def __call__(self, trial: optuna.Trial) -> float:
        s = self.setup
        lr = trial.suggest_float("lr", *self.lr_range, log=True)
        self.trials_run += 1
        name = f"{tracking.run_name('tune', s.model_config.backbone, s.model_config.mode)}-trial-{trial.number}"
        try:
            with tracking.step_run("tune", s.model_config.backbone, s.model_config.mode, name=name, killed_on=(optuna.TrialPruned,)):
                mlflow.set_tags({"trial": str(trial.number), "study_name": trial.study.study_name})
                mlflow.log_params({"lr": f"{lr:.6g}", "trial": str(trial.number)})
                model = s.new_model()
                features = s.features(model, measured_in={"run_id": mlflow.active_run().info.run_id, "device": s.device.type})
                if self.features is None:
                    self.features = features

                def should_stop(stats: EpochStats) -> bool:
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"pruned at epoch {stats.epoch}")
                    return False

                with tracking.EpochRecorder() as recorder:

                    def on_epoch(stats: EpochStats, state, make_checkpoint) -> None:
                        recorder(stats, state, make_checkpoint)
                        trial.report(stats.val_loss, stats.epoch)

                    try:
                        state = train_classifier(
                            model,
                            s.prep.dataset,
                            s.fit_config,
                            lr,
                            s.device,
                            s.seed,
                            features=features.splits if features else None,
                            on_epoch=on_epoch,
                            should_stop=should_stop,
                        )
                    except Diverged as e:  # a rate too high for this configuration: the search moves on
                        raise optuna.TrialPruned(str(e).split(";")[0]) from None
                mlflow.log_metrics({"best_val_loss": state.best_val_loss, "best_epoch": state.best_epoch})
        except optuna.TrialPruned as e:
            log.info(f"trial {trial.number}: lr {lr:.3g} -> {e}")
            raise
        except TRIAL_ERRORS as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:500])
            log.info(f"trial {trial.number}: lr {lr:.3g} -> failed: {trial.user_attrs['error']}")
            raise
        log.info(f"trial {trial.number}: lr {lr:.3g} -> val loss {state.best_val_loss:.4f}")
        return state.best_val_loss


def _log_figures(study: optuna.Study) -> None:
    trials = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)):
        value = t.value if t.value is not None else min(t.intermediate_values.values(), default=None)
        if value is not None and not math.isfinite(value):
            value = None
        trials.append({"number": t.number, "lr": t.params["lr"], "value": value, "state": t.state.name})
    for figure, path in (
        (plots.optimisation_history(trials), "plots/optimization_history.png"),
        (plots.loss_against_lr(trials), "plots/val_loss_vs_lr.png"),
    ):
        tracking.log_figure(figure, path)
        plots.close(figure)


def main(data: DataConfig, model: ModelConfig, fit: FitConfig, tune_cfg: TuneConfig, trials: TrialsConfig) -> None:
    run(data, model, fit, tune_cfg, trials.tune_trials)
