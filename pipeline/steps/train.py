"""train: train one configuration (backbone x mode), keep the epoch with the best validation loss.

Inputs: the data settings (data_dir, image_size, val_source, val_fraction, seed, cache_dir,
patient_pattern, csv_columns, positive_labels, test_list, test_fraction), backbone, frozen, weights, the fit settings (epochs, batch_size, lr,
backbone_lr_scale, weight_decay, patience, class_weights, augment, device, num_threads,
train_seed, nproc, compile, max_memory_gb), and `resume` (a run id of a killed train run;
refused if its data, code or weights have changed since). With `nproc` > 1 the step runs as that
many processes under torchrun (DistributedDataParallel); rank 0 alone logs, into one run
(parameter `world_size`).
Outputs (run `<backbone>-<mode>-train`): those settings with the resolved `lr`, `data_digest`
and split sizes as parameters; `train_loss`, `train_acc`, `val_loss`, `val_acc`, `lr`,
`epoch_time_s` at step = epoch; `train_time_s` (this run's wall clock: getting the frozen
features, extracted or loaded, and every epoch), `best_epoch`, `best_val_acc`, `best_val_loss`;
frozen mode: `feature_extraction_s` where this run extracted them, else
`cached_features_cost_s` (what the extraction cost where it was measured: tag
`cached_features_measured_in` names the run and device); tags `early_stopped`, `epochs_run`,
`features_cached`; artifacts
`plots/learning_curves.png`, `checkpoints/last.pt` (after every epoch, for `resume`),
`checkpoints/best.pt` (the kept weights) and the model `model`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch

from pipeline import plots, serving, tracking
from pipeline.analysis.gap import calibration
from pipeline.calibration import TemperatureScaled, cross_fitted, fit_temperature, softmax
from pipeline.cli import from_params
from pipeline.data import Preparation
from pipeline.data.checks import units_of
from pipeline.distributed import World, launch, under_torchrun
from pipeline.engine.device import pick_device
from pipeline.engine.loop import EpochStats, FitState, predict_logits, train_classifier
from pipeline.engine.setup import DEFAULT_LR, TrainingSetup, setup_training
from pipeline.errors import UserError
from pipeline.metrics import operating_threshold, positive_index
from pipeline.settings import DataConfig, FitConfig, ModelConfig, ResumeConfig, as_params
from pipeline.steps.prepare import data_params

log = logging.getLogger(__name__)

# Folds of validation for the cross-fitted calibration error.
CALIBRATION_FOLDS = 5


@dataclass
class Trained:
    run_id: str
    model_uri: str
    lr: float
    reused: bool


def resolve_lr(fit: FitConfig, mode: str, tuned: float | None = None) -> float:
    """An explicit lr wins; `auto` takes the tuned value where tuning ran, else the mode's default."""
    return fit.lr or tuned or DEFAULT_LR[mode]


def epoch_line(stats: EpochStats, epochs: int) -> str:
    return (
        f"epoch {stats.epoch}/{epochs}: train loss {stats.train_loss:.4f} acc {stats.train_acc:.3f} | "
        f"val loss {stats.val_loss:.4f} acc {stats.val_acc:.3f} | lr {stats.lr:.2e} | {stats.epoch_time_s:.1f}s"
    )


def run(
    data: DataConfig,
    model_cfg: ModelConfig,
    fit: FitConfig,
    *,
    prep: Preparation | None = None,
    tuned_lr: float | None = None,
    reuse: bool = False,
) -> Trained:
    """Train one configuration in this process, or with `nproc` > 1 in that many processes
    under torchrun (this process then waits for them, and returns the run rank 0 made)."""
    if fit.nproc > 1 and not under_torchrun():
        return _launch(data, model_cfg, fit, prep=prep, tuned_lr=tuned_lr, reuse=reuse)
    world = World.from_environment(pick_device(fit.device).type)
    try:
        setup = setup_training(data, model_cfg, fit, prep, world)
        lr = resolve_lr(fit, model_cfg.mode, tuned_lr)
        if not world.main:
            os.environ.pop("MLFLOW_RUN_ID", None)  # only rank 0 talks to MLflow
            _fit(setup, lr, checkpoint=None)
            return Trained("", "", lr, reused=False)
        params, key, previous = _reuse_key(setup, lr, reuse)
        if previous is not None:
            return previous
        with tracking.step_run("train", model_cfg.backbone, model_cfg.mode) as active:
            tracking.report_run_id(active.info.run_id)
            mlflow.set_tags({"input_key": key, "settings": json.dumps(params)})
            tracking.log_params(
                {**params, **data_params(setup.prep), "device": setup.device.type, "weights_key": setup.weights.key, "world_size": str(world.size)}
            )
            tracking.log_settings(params)
            tracking.log_dataset(setup.prep.name, setup.prep.dataset.source, setup.prep.dataset.digest, setup.prep.dataset.split_sizes)
            model_uri = _train_and_log(setup, lr, checkpoint=None)
        return Trained(active.info.run_id, model_uri, lr, reused=False)
    finally:
        world.close()


def _launch(data: DataConfig, model_cfg: ModelConfig, fit: FitConfig, *, prep, tuned_lr, reuse) -> Trained:
    """`nproc` workers under torchrun, each running this step; the run is rank 0's, made a child
    of this process's active run (main, compare) or the run `mlflow run` made."""
    setup = setup_training(data, model_cfg, fit, prep)
    lr = resolve_lr(fit, model_cfg.mode, tuned_lr)
    _, _, previous = _reuse_key(setup, lr, reuse)
    if previous is not None:
        return previous
    argv = command_line("train", {**as_params(data, model_cfg, fit), "lr": repr(lr)})
    run_id = tracking.launched_run(lambda env: launch(argv, fit.nproc, env))
    return Trained(run_id, tracking.get_run(run_id).data.tags["model_uri"], lr, reused=False)


def _reuse_key(setup: TrainingSetup, lr: float, reuse: bool) -> tuple[dict[str, str], str, Trained | None]:
    """The run's parameters, its reuse key, and (with `reuse`) a finished run with that key."""
    params = {**as_params(setup.data_config, setup.model_config, setup.fit_config), "lr": f"{lr:.6g}"}
    key = tracking.input_key("train", {**params, **setup.identity()}, setup.prep.dataset.digest)
    previous = tracking.find_reusable("train", key) if reuse else None
    found = Trained(previous.info.run_id, previous.data.tags["model_uri"], lr, reused=True) if previous else None
    return params, key, found


def command_line(step: str, settings: dict[str, str]) -> list[str]:
    """`<step> --name value ...`: what a launched worker is started with."""
    return [step] + [token for name, value in settings.items() for token in (f"--{name}", value)]


def resume(run_id: str, given: tuple[DataConfig, ModelConfig, FitConfig] | None = None) -> Trained:
    """Continue a killed or interrupted train run from its last finished epoch, in that run;
    a run of several processes goes on with as many (`given`: the settings its workers got)."""
    world = World.from_environment(pick_device(given[2].device).type) if under_torchrun() and given else World()
    try:
        inputs = None
        if world.main:
            try:
                inputs = _resume_inputs(run_id, world)
            except UserError:
                world.from_main(None)  # the other ranks stop quietly; this one says why
                raise
            if inputs is None:  # launched: its workers did the work
                run = tracking.get_run(run_id)
                return Trained(run_id, run.data.tags["model_uri"], float(run.data.params["lr"]), reused=False)
        inputs = world.from_main(inputs)
        if inputs is None:
            raise SystemExit(2)
        settings, checkpoint = inputs
        data, model_cfg, fit = from_params(settings, DataConfig, ModelConfig, FitConfig)
        lr = float(settings["lr"])
        setup = setup_training(data, model_cfg, fit, world=world)
        if not world.main:
            os.environ.pop("MLFLOW_RUN_ID", None)
            _fit(setup, lr, checkpoint)
            return Trained(run_id, "", lr, reused=False)
        check_unchanged(tracking.get_run(run_id), setup)
        tracking.retire_pending_run(run_id)
        log.info(f"resuming run {run_id} after epoch {checkpoint['state']['epoch']}")
        with tracking.step_run("train", model_cfg.backbone, model_cfg.mode, run_id=run_id):
            mlflow.set_tag("resumed", "true")
            model_uri = _train_and_log(setup, lr, checkpoint)
        return Trained(run_id, model_uri, lr, reused=False)
    finally:
        world.close()


def _resume_inputs(run_id: str, world: World) -> tuple[dict, dict] | None:
    """The run's settings and last checkpoint, checked; None where this process launched the
    run's `nproc` workers instead (they resume it)."""
    previous = tracking.get_run(run_id)
    if previous.data.tags.get("step") != "train":
        raise UserError(f"run {run_id} is not a train run; resume takes the id of a train run")
    if previous.info.status == "FINISHED":
        raise UserError(f"run {run_id} already finished; nothing to resume")
    settings = json.loads(previous.data.tags["settings"])
    if not tracking.has_artifact(run_id, "checkpoints/last.pt"):
        raise UserError(f"run {run_id} has no checkpoints/last.pt: it stopped before the first epoch's checkpoint was stored; start it again")
    nproc = from_params(settings, FitConfig)[0].nproc
    if nproc > 1 and not world.distributed:
        argv = command_line("train", {**settings, "resume": run_id})
        tracking.launched_run(lambda env: launch(argv, nproc, env), run_id=run_id)
        return None
    try:
        checkpoint = tracking.download(run_id, "checkpoints/last.pt")
    except Exception as e:  # it is there (listed above): the store or the network failed, say so
        raise UserError(f"cannot download checkpoints/last.pt of run {run_id}: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
    return settings, torch.load(io.BytesIO(checkpoint), map_location="cpu", weights_only=True)


def check_unchanged(previous, setup: TrainingSetup) -> None:
    """A resumed run must go on in the world it started in: same data, code and weights."""
    now = {"data digest": setup.prep.dataset.digest, "code version": tracking.code_version(), "weights": setup.weights.key}
    then = {
        "data digest": previous.data.params.get("data_digest"),
        "code version": previous.data.tags.get("code_version"),
        "weights": previous.data.params.get("weights_key"),
    }
    changed = [f"{what} {then[what]} -> {now[what]}" for what in now if then[what] != now[what]]
    if changed:
        raise UserError(
            f"cannot resume run {previous.info.run_id}: {'; '.join(changed)} since it started; "
            "its epochs would mix two worlds. Start a new train run instead"
        )


def _fit(setup: TrainingSetup, lr: float, checkpoint: dict | None, on_epoch=None, measured_in: dict | None = None):
    """The model trained (every rank of a world calls this alike); the features and their time."""
    model = setup.new_model()
    start = time.perf_counter()
    features = setup.features(model, measured_in=measured_in)
    features_s = time.perf_counter() - start
    state = train_classifier(
        model,
        setup.prep.dataset,
        setup.fit_config,
        lr,
        setup.device,
        setup.seed,
        features=features.splits if features else None,
        on_epoch=on_epoch,
        checkpoint=checkpoint,
        world=setup.world,
    )
    return model, state, features, features_s


def _train_and_log(setup: TrainingSetup, lr: float, checkpoint: dict | None) -> str:
    fit = setup.fit_config
    # Checkpoints pass through here on their way to the store; nothing is left behind.
    with tempfile.TemporaryDirectory() as folder, tracking.EpochRecorder(Path(folder)) as recorder:
        checkpoint_dir = Path(folder)

        def on_epoch(stats: EpochStats, state: FitState, make_checkpoint) -> Future | None:
            serialised = recorder(stats, state, make_checkpoint)  # training waits for it before its next step
            log.info(epoch_line(stats, fit.epochs))
            return serialised

        measured_in = {"run_id": mlflow.active_run().info.run_id, "device": setup.device.type}
        model, state, features, features_s = _fit(setup, lr, checkpoint, on_epoch, measured_in)
        # Only what this run spent counts as its time; features extracted by an earlier run are
        # loaded (that load is timed), and what their extraction cost is logged apart, with where.
        if features:
            mlflow.set_tag("features_cached", str(features.cached).lower())
            if features.extraction_s:
                mlflow.log_metric("feature_extraction_s", features.extraction_s)
            if features.cached_from:
                mlflow.log_metric("cached_features_cost_s", features.cached_extraction_s)
                mlflow.set_tag("cached_features_measured_in", json.dumps(features.cached_from))
        # The recorder's last write goes on beside the summary, the plot and the model export.
        return _log_outcome(setup, model, state, features_s, checkpoint_dir, features)


def val_logits(setup: TrainingSetup, model, features) -> np.ndarray:
    """The kept model's logits on validation, once: through the head alone on the cached
    features in frozen mode (the backbone has already seen these images), else the model. Features
    extracted in reduced precision differ from what the served model (float32) computes, so then
    the model sees the images again: the threshold is chosen on what will be served."""
    if features is None or setup.device.amp_dtype is not None:
        return predict_logits(model, setup.prep.dataset.images("val"), setup.fit_config.batch_size, setup.device)
    with torch.inference_mode():
        logits = model.head(features.splits["val"].to(setup.device.torch_device))
    return logits.float().cpu().numpy()


def _log_outcome(setup: TrainingSetup, model, state: FitState, features_s: float, checkpoint_dir: Path, features) -> str:
    """The run's summary metrics and tags, learning curves, best weights and logged model."""
    model_cfg, best = setup.model_config, state.best
    mlflow.log_metrics(
        {
            "train_time_s": features_s + state.train_time_s,
            "best_epoch": state.best_epoch,
            "best_val_acc": best.val_acc,
            "best_val_loss": best.val_loss,
        }
    )
    mlflow.set_tags({"early_stopped": str(state.stopped_early).lower(), "epochs_run": str(state.epoch)})
    history = [vars(h) for h in state.history]
    figure = plots.learning_curves(history, f"{model_cfg.backbone} ({model_cfg.mode})", state.best_epoch)
    tracking.log_figure(figure, "plots/learning_curves.png")
    plots.close(figure)
    # The logged model is the classifier, or with calibrate=true the classifier and its temperature;
    # best.pt keeps the classifier's own weights (usable as weights= of a later run).
    logits = val_logits(setup, model, features)
    probs, exported = softmax(logits), model
    if setup.fit_config.calibrate:
        temperature, probs = calibrated(setup, logits)
        exported = TemperatureScaled(model, temperature).eval()
    operating = operating_point(setup, probs)
    mlflow.log_metric("operating_threshold", operating.threshold)
    mlflow.set_tag("operating_threshold_rule", operating.rule)
    exported.cpu()
    torch.save(model.state_dict(), checkpoint_dir / "best.pt")
    tracking.log_file(checkpoint_dir / "best.pt", "checkpoints")
    info = serving.log_model(
        exported, setup.prep.dataset.image_size, setup.prep.dataset.classes, operating, max_image_pixels=setup.data_config.max_image_pixels
    )
    mlflow.set_tag("model_uri", info.model_uri)
    log.info(
        f"kept epoch {state.best_epoch} (val acc {best.val_acc:.3f}, val loss {best.val_loss:.4f}); "
        f"training took {features_s + state.train_time_s:.1f}s; model {info.model_uri}"
    )
    return info.model_uri


def calibrated(setup: TrainingSetup, logits: np.ndarray) -> tuple[float, np.ndarray]:
    """Temperature scaling fitted on the validation logits: T and the calibrated validation
    probabilities. The expected calibration error after it is cross-fitted (each fold of
    validation calibrated by a T fitted on the others, whole patients per fold), so it is not
    judged on the images T was fitted on; logged beside the error before."""
    data = setup.prep.dataset
    pos = positive_index(data.classes)
    labels = data.labels("val")
    temperature = fit_temperature(logits, labels)
    rows = data.manifest()
    units = units_of(rows, setup.data_config.patient_pattern, setup.data_config.near_duplicate_bits)[[r.split == "val" for r in rows]]
    held_out = cross_fitted(logits, labels, units, CALIBRATION_FOLDS, setup.seed)
    before_ece, after_ece = (calibration(labels == pos, p[:, pos])["ece"] for p in (softmax(logits), held_out))
    mlflow.log_metrics({"temperature": temperature, "val_ece_before_calibration": before_ece, "val_ece_after_calibration": after_ece})
    log.info(
        f"calibrated on validation: temperature {temperature:.3f}, expected calibration error {before_ece:.4f} -> {after_ece:.4f} "
        f"({CALIBRATION_FOLDS}-fold cross-fitted)"
    )
    return temperature, softmax(logits, temperature)


def operating_point(setup: TrainingSetup, probs: np.ndarray) -> serving.OperatingPoint:
    """The kept model's threshold, chosen on validation probabilities (never test): it travels
    with the model, so `predict` and `mlflow models serve` call labels at it unless told otherwise."""
    data = setup.prep.dataset
    pos = positive_index(data.classes)
    threshold, rule = operating_threshold(data.labels("val") == pos, probs[:, pos], setup.fit_config.target_sensitivity)
    return serving.OperatingPoint(threshold, rule)


def main(data: DataConfig, model_cfg: ModelConfig, fit: FitConfig, resume_cfg: ResumeConfig) -> None:
    if resume_cfg.resume:
        resume(resume_cfg.resume, (data, model_cfg, fit))
    else:
        run(data, model_cfg, fit)
