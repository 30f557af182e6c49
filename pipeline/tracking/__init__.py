"""All that speaks to MLflow, beside `serving.py` and the steps; the core knows none of it.

- `runs`: runs of steps, their names, tags and life, launched and nested runs, the UI's address;
- `records`: parameters, settings, datasets, texts, files and figures, and artifacts read back;
- `reuse`: what makes two runs of a step interchangeable, and finding a finished one;
- `recorder`: each epoch's metrics and checkpoint, stored from a background thread;
- `comparison`: the comparison table and the external validations read back from the store;
- `registry`: the Model Registry's champion and challenger, and their cards updated.

The steps use them as one namespace, `tracking.<name>`.
"""

from pipeline.tracking.comparison import COMPARED_METRICS, comparison, external_validations
from pipeline.tracking.recorder import EPOCH_METRICS, EpochRecorder
from pipeline.tracking.records import download, has_artifact, log_dataset, log_figure, log_file, log_json, log_params, log_settings, log_text
from pipeline.tracking.registry import register_champion, update_model_card
from pipeline.tracking.reuse import code_version, find_reusable, input_key, library_versions
from pipeline.tracking.runs import (
    PARENT_RUN_ID,
    RUN_ID_FILE,
    fail_pending_run,
    get_run,
    launched_run,
    mask_secret_params,
    report_run_id,
    retire_pending_run,
    run_name,
    step_run,
    ui_hint,
)

__all__ = [
    "COMPARED_METRICS",
    "EPOCH_METRICS",
    "PARENT_RUN_ID",
    "RUN_ID_FILE",
    "EpochRecorder",
    "code_version",
    "comparison",
    "download",
    "external_validations",
    "fail_pending_run",
    "find_reusable",
    "get_run",
    "has_artifact",
    "input_key",
    "launched_run",
    "library_versions",
    "log_dataset",
    "log_figure",
    "log_file",
    "log_json",
    "log_params",
    "log_settings",
    "log_text",
    "mask_secret_params",
    "register_champion",
    "report_run_id",
    "retire_pending_run",
    "run_name",
    "step_run",
    "ui_hint",
    "update_model_card",
]
