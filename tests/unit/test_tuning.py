import math

import optuna
import pytest

from pipeline.errors import UserError
from pipeline.secrets import safe_url
from pipeline.tuning import default_storage, default_study_name, open_study, startup_grid, summarise


def test_names_and_storage_beside_the_tracking_store(tmp_path, monkeypatch):
    assert default_study_name("resnet50", "finetune", "0123456789abcdef") == "resnet50-finetune-01234567"
    assert default_storage(f"sqlite:///{tmp_path}/mlflow.db") == f"sqlite:///{tmp_path}/optuna.db"
    assert default_storage(str(tmp_path / "mlruns")) == f"sqlite:///{tmp_path}/optuna.db"
    monkeypatch.chdir(tmp_path)
    assert default_storage("http://tracking:5000") == f"sqlite:///{tmp_path}/optuna.db"


def test_passwords_never_shown():
    assert safe_url("postgresql://lab:s3cret@db:5432/optuna") == "postgresql://lab:***@db:5432/optuna"
    assert "s3cret" not in safe_url("postgresql+psycopg2://lab:s3cret@db/optuna")


def test_startup_grid_is_log_spaced_inside_the_range():
    grid = startup_grid(1e-4, 1e-1, 3)
    assert [round(math.log10(v), 6) for v in grid] == [-3.5, -2.5, -1.5]


def make(tmp_path, **overrides):
    kwargs = dict(seed=0, pruner_kind="median", epochs=3, lr_range=(1e-4, 1e-1), settings={"image_size": "32"}, n_trials=4)
    kwargs.update(overrides)
    return open_study("s", f"sqlite:///{tmp_path}/o.db", **kwargs)


def test_a_new_study_starts_with_its_grid_and_is_loaded_again_with_the_same_settings(tmp_path):
    study = make(tmp_path)
    waiting = [t.system_attrs["fixed_params"]["lr"] for t in study.get_trials(states=(optuna.trial.TrialState.WAITING,))]
    assert waiting == pytest.approx(startup_grid(1e-4, 1e-1, 4))
    again = make(tmp_path)
    assert again._study_id == study._study_id and len(again.trials) == 4  # no second grid


def test_a_study_refuses_trials_with_other_settings(tmp_path):
    make(tmp_path)
    with pytest.raises(UserError, match=r"image_size=32 \(now 64\).*study_name"):
        make(tmp_path, settings={"image_size": "64"})
    with pytest.raises(UserError, match="lr_range"):
        make(tmp_path, lr_range=(1e-3, 1.0))


def test_a_study_where_nothing_completed_says_so(tmp_path):
    study = make(tmp_path, n_trials=1)

    def prune(trial):
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        raise optuna.TrialPruned()

    study.optimize(prune, n_trials=2)
    with pytest.raises(UserError, match="no trial of study 's' completed"):
        summarise(study)


def test_storage_comes_from_the_setting_then_the_environment_then_beside_the_store(monkeypatch):
    from pipeline.tuning import resolve_storage

    monkeypatch.delenv("CXR_OPTUNA_STORAGE", raising=False)
    assert resolve_storage("", "sqlite:////lab/mlflow.db") == "sqlite:////lab/optuna.db"
    monkeypatch.setenv("CXR_OPTUNA_STORAGE", "postgresql://lab:pw@db/optuna")
    assert resolve_storage("", "sqlite:////lab/mlflow.db") == "postgresql://lab:pw@db/optuna"
    assert resolve_storage("postgresql://lab@other/optuna", "x") == "postgresql://lab@other/optuna"
    assert safe_url("postgresql://lab:pw@db/optuna") == "postgresql://lab:***@db/optuna"
    assert safe_url("postgresql://lab@db/optuna?password=pw&sslmode=require") == "postgresql://lab@db/optuna?password=***&sslmode=require"
