"""The Optuna side of tuning the learning rate: storage, study, sampler, pruner, results.

Nothing here knows MLflow or training; `steps/tune.py` supplies the objective.

A study is shared safely by any number of workers (processes or machines) through an RDB
storage: each trial is a row that one worker claims. The first worker to create a study seeds
it with a small log-spaced grid of learning rates (enqueued trials, each taken by exactly one
worker), so workers started at the same moment do not all try the same random values; the
seeded TPE sampler (with its constant liar for running trials) takes over from there.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import optuna

from pipeline.errors import UserError
from pipeline.secrets import safe_url
from pipeline.sqlite_lock import sqlite_setup_lock

# Our own lines say what each trial did; Optuna's would repeat them.
optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

DEFAULT_LR_RANGE = {"frozen": (1e-4, 1e-1), "finetune": (1e-5, 1e-2)}
STARTUP_TRIALS = 5


def default_study_name(backbone: str, mode: str, digest: str) -> str:
    return f"{backbone}-{mode}-{digest[:8]}"


def default_storage(tracking_uri: str) -> str:
    """A SQLite file beside a local tracking store (`optuna.db` next to `mlflow.db` or `mlruns/`);
    for a remote tracking server, `optuna.db` in the working folder."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        folder = Path(tracking_uri.removeprefix("sqlite:///")).parent
    elif parsed.scheme in ("", "file"):
        folder = Path(parsed.path or tracking_uri).parent
    else:
        folder = Path.cwd()
    return f"sqlite:///{(folder / 'optuna.db').resolve()}"


def resolve_storage(setting: str, tracking_uri: str) -> str:
    """The `storage` setting, else $CXR_OPTUNA_STORAGE (never logged, so it may hold a
    password), else a SQLite file beside the tracking store."""
    return setting or os.environ.get("CXR_OPTUNA_STORAGE") or default_storage(tracking_uri)


def storage(url: str) -> optuna.storages.RDBStorage:
    # Heartbeats let a later worker mark the running trial of a killed worker as failed.
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=30, grace_period=90)
    except Exception as e:
        raise UserError(f"cannot open the Optuna storage {safe_url(url)}: {str(e).splitlines()[0]}") from None


def startup_grid(low: float, high: float, n: int) -> list[float]:
    """n learning rates at the centres of n equal slices of [log low, log high]."""
    a, b = math.log10(low), math.log10(high)
    return [10 ** (a + (b - a) * (k + 0.5) / n) for k in range(n)]


def pruner(kind: str, epochs: int) -> optuna.pruners.BasePruner:
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    if kind == "median":
        # Compare from the second epoch on (the first is noisy), once three trials have finished.
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    return optuna.pruners.NopPruner()


def open_study(
    name: str, url: str, *, seed: int, pruner_kind: str, epochs: int, lr_range: tuple[float, float], settings: dict[str, str], n_trials: int
) -> optuna.Study:
    """Create the study, or load it to add trials. A study is bound to the settings its trials
    were trained with; loading it with others would mix incomparable trials, so it is refused."""
    with sqlite_setup_lock(url):  # creating, then seeding, is one step for workers sharing a file
        return _open_study(name, url, seed=seed, pruner_kind=pruner_kind, epochs=epochs, lr_range=lr_range, settings=settings, n_trials=n_trials)


def _open_study(
    name: str, url: str, *, seed: int, pruner_kind: str, epochs: int, lr_range: tuple[float, float], settings: dict[str, str], n_trials: int
) -> optuna.Study:
    rdb = storage(url)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS)
    settings = {**settings, "lr_range": f"{lr_range[0]:g},{lr_range[1]:g}"}
    try:
        study = optuna.create_study(study_name=name, storage=rdb, sampler=sampler, pruner=pruner(pruner_kind, epochs), direction="minimize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=rdb, sampler=sampler, pruner=pruner(pruner_kind, epochs))
        previous = study.user_attrs.get("settings", {})
        differing = sorted(k for k in settings if k in previous and previous[k] != settings[k])
        if differing:
            described = ", ".join(f"{k}={previous[k]} (now {settings[k]})" for k in differing)
            raise UserError(f"study {name!r} was run with {described}; pass study_name=... to start another study") from None
        return study
    study.set_user_attr("settings", settings)
    for lr in startup_grid(*lr_range, min(STARTUP_TRIALS, n_trials)):
        study.enqueue_trial({"lr": lr})
    return study


@dataclass(frozen=True)
class StudySummary:
    best_lr: float
    best_val_loss: float
    n_complete: int
    n_pruned: int
    n_failed: int


def summarise(study: optuna.Study) -> StudySummary:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    count = lambda s: sum(state == s for state in states)  # noqa: E731
    complete = count(optuna.trial.TrialState.COMPLETE)
    if not complete:
        failed = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.FAIL]
        reason = failed[-1].user_attrs.get("error", "see the trial runs") if failed else "every trial was pruned"
        raise UserError(f"no trial of study {study.study_name!r} completed ({reason}); check the lr range and the data")
    best = study.best_trial
    return StudySummary(best.params["lr"], best.value, complete, count(optuna.trial.TrialState.PRUNED), count(optuna.trial.TrialState.FAIL))


def worker_label() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"
