"""Tuning workers started together: processes racing to set up one new SQLite study."""

import multiprocessing

import optuna

from pipeline.errors import UserError
from pipeline.tuning import open_study


def open_shared_study(folder: str) -> str:
    try:
        open_study(
            "s", f"sqlite:///{folder}/o.db", seed=0, pruner_kind="median", epochs=3, lr_range=(1e-4, 1e-1), settings={"image_size": "32"}, n_trials=4
        )
        return "ok"
    except UserError as e:
        return str(e)


def test_workers_starting_together_on_a_new_sqlite_file_all_open_one_seeded_study(tmp_path):
    # Without the setup lock, some of them fail creating the tables ("table ... already exists").
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        outcomes = pool.map(open_shared_study, [str(tmp_path)] * 6)
    assert outcomes == ["ok"] * 6
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/o.db")
    assert len(study.trials) == 4 and study.user_attrs["settings"]["image_size"] == "32"  # one grid
