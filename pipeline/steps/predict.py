"""predict: classify an image file, or every image in a folder, with a logged model.

Inputs: `model_uri`, `input` (an image file or a folder, searched recursively), `output` (CSV,
default predictions.csv; an existing CSV is replaced only with `overwrite=true`, and an output
that is an input file, a folder or another existing file is refused before any work),
`threshold` (probability of the positive class at which to call it; auto = the threshold stored
with the model, chosen on validation when it was trained).
Outputs: the CSV, written as it goes, one row per file: `file`, `label`, `probability` (of the
positive class), `p_<class>` for every class, `threshold` (the one used), `error` (why a file
could not be read or decoded; such files never stop the run). Also logged to the step's run as
`predictions/predictions.csv`, with the counts. Files that are not images (hidden, system, other
extensions, links that lead nowhere) are listed as ignored with the reason, and counted.

The images go through the model's python_function face, as they would through
`mlflow models serve`: base64 file bytes in, decoded and resized inside the model, images above
the model's `max_image_pixels` refused from their header.
"""

from __future__ import annotations

import base64
import csv
import logging
from pathlib import Path

import mlflow
import pandas as pd
from tqdm import tqdm

from pipeline import tracking
from pipeline.console import bars_disabled
from pipeline.data.sources import DEAD_LINK, IMAGE_EXTENSIONS, read_file, walk_files
from pipeline.data.unreadable import UnreadableImage
from pipeline.errors import UserError
from pipeline.settings import PredictConfig, as_params

log = logging.getLogger(__name__)

BATCH = 64


def input_files(location: str) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The images to classify, and the other files found with why each was left out."""
    path = Path(location).expanduser()
    if location and path.is_symlink() and not path.exists():
        raise UserError(f"input {location!r} is {DEAD_LINK}; give an image file or a folder of images")
    if not location or not path.exists():
        raise UserError(f"input {location!r} does not exist; give an image file or a folder of images")
    if path.is_file():
        return [path], []
    found = walk_files(path)
    files = [p for p, _, reason in found if reason is None]
    ignored = [(p, reason) for p, _, reason in found if reason is not None]
    if not files:
        raise UserError(
            f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {location}" + (f" ({len(ignored)} other files)" if ignored else "")
        )
    return files, ignored


def check_output(output: Path, files: list[Path], overwrite: bool) -> None:
    """Refuse, before any work, an output that would destroy what the user gave or holds."""
    if output.is_dir():
        raise UserError(f"output {str(output)!r} is a folder; give the path of a CSV file, e.g. {output / 'predictions.csv'}")
    resolved = output.resolve()
    if any(f.resolve() == resolved for f in files):
        raise UserError(f"output {str(output)!r} is one of the input images; give another path for the CSV")
    if output.exists():
        if output.suffix.lower() != ".csv":
            raise UserError(f"output {str(output)!r} exists and is not a CSV file; give a new path ending in .csv")
        if not overwrite:
            raise UserError(f"output {str(output)!r} exists; pass overwrite=true to replace it, or give another path")


def load(model_uri: str):
    if not model_uri:
        raise UserError("predict needs model_uri (models:/<id> or runs:/<run id>/model, as printed by train and main)")
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except Exception as e:
        raise UserError(f"cannot load model {model_uri!r}: {str(e).splitlines()[0]}") from None


def output_columns(model) -> list[str]:
    return [c.name for c in model.metadata.get_output_schema().inputs]


def predict_batch(model, files: list[Path], root: Path, threshold: float | None, columns: list[str]) -> pd.DataFrame:
    """One batch: readable files through the model, unreadable ones answered here, in order."""
    encoded, rows = [], []
    for f in files:
        try:
            encoded.append(base64.b64encode(read_file(f)).decode("ascii"))
            rows.append(None)
        except UnreadableImage as e:
            rows.append({c: None for c in columns} | {"error": str(e)})
    answered = (
        model.predict(pd.DataFrame({"image": encoded}), params={"threshold": threshold} if threshold is not None else None) if encoded else None
    )
    answers = iter(answered.to_dict("records")) if answered is not None else iter(())
    table = pd.DataFrame([row if row is not None else next(answers) for row in rows], columns=columns)
    table.insert(0, "file", [str(f.relative_to(root)) if f != root else f.name for f in files])
    return table


def run(config: PredictConfig) -> pd.DataFrame:
    files, ignored = input_files(config.input)
    output = Path(config.output).expanduser()
    check_output(output, files, config.overwrite)
    model = load(config.model_uri)
    root = Path(config.input).expanduser()
    columns = output_columns(model)
    # The model's own rule, from its python_function implementation (serving.ImageClassifier).
    own = getattr(getattr(model, "_model_impl", None), "operating", None)
    used = config.threshold if config.threshold is not None else own.threshold if own else 0.5
    with tracking.step_run("predict"):
        tracking.log_params({"model_uri": config.model_uri, "input": str(root.resolve()), "threshold": f"{used:.6g}"})
        tracking.log_settings(as_params(config))
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(output, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", *columns])
            with tqdm(total=len(files), desc="predict", unit="img", disable=bars_disabled()) as progress:
                for start in range(0, len(files), BATCH):
                    batch = predict_batch(model, files[start : start + BATCH], root, config.threshold, columns)
                    batch["threshold"] = used
                    writer.writerows(batch.itertuples(index=False))
                    progress.update(len(batch))
        table = pd.read_csv(output)
        unreadable = int(table["error"].notna().sum())
        mlflow.log_metrics({"n_images": len(table), "n_unreadable": unreadable, "n_ignored": len(ignored)})
        tracking.log_file(output, "predictions")
    rule = "given" if config.threshold is not None else own.rule if own else "the model's own"
    log.info(f"threshold {used:.4g} ({rule})")
    log.info(summary(table, output, unreadable))
    for _, row in table[table["error"].notna()].iterrows():
        log.info(f"  {row['file']}: {row['error']}")
    if ignored:
        log.info(
            f"{plural(len(ignored), 'other file')} ignored: "
            + ", ".join(f"{p.relative_to(root)} ({reason})" for p, reason in ignored[:10])
            + (", ..." if len(ignored) > 10 else "")
        )
    return table


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def summary(table: pd.DataFrame, output: Path, unreadable: int) -> str:
    counts = table["label"].value_counts().to_dict()
    parts = [f"{n} {label}" for label, n in counts.items()] + ([f"{unreadable} unreadable"] if unreadable else [])
    return f"{plural(len(table), 'image')} -> {output}: " + ", ".join(parts)


def main(config: PredictConfig) -> None:
    run(config)
