"""predict: classify an image file, or every image in a folder, with a logged model.

Inputs: `model_uri`, `input` (an image file or a folder, searched recursively), `output` (CSV,
default predictions.csv), `threshold` (probability of the positive class at which to call it;
auto = the threshold stored with the model, chosen on validation when it was trained).
Outputs: the CSV, one row per file: `file`, `label`, `probability` (of the positive class),
`p_<class>` for every class, `threshold` (the one used), `error` (why a file could not be
read; such files never stop the run). Also logged to the step's run as `predictions/predictions.csv`, with the counts.

The images go through the model's python_function face, as they would through
`mlflow models serve`: base64 file bytes in, decoded and resized inside the model.
"""

from __future__ import annotations

import base64
from pathlib import Path

import mlflow
import pandas as pd

from pipeline import tracking
from pipeline.config import PredictConfig, UserError
from pipeline.data.sources import IMAGE_EXTENSIONS, ignore_reason

BATCH = 64


def input_files(location: str) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The images to classify, and the other files found with why each was left out."""
    path = Path(location).expanduser()
    if not location or not path.exists():
        raise UserError(f"input {location!r} does not exist; give an image file or a folder of images")
    if path.is_file():
        return [path], []
    files, ignored = [], []
    for p in sorted(p for p in path.rglob("*") if p.is_file()):
        reason = ignore_reason(p)
        if reason:
            ignored.append((p, reason))
        else:
            files.append(p)
    if not files:
        raise UserError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {location}")
    return files, ignored


def load(model_uri: str):
    if not model_uri:
        raise UserError("predict needs model_uri (models:/<id> or runs:/<run id>/model, as printed by train and main)")
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except Exception as e:
        raise UserError(f"cannot load model {model_uri!r}: {str(e).splitlines()[0]}") from None


def predict(model, files: list[Path], root: Path, threshold: float | None) -> pd.DataFrame:
    frames = []
    for start in range(0, len(files), BATCH):
        chunk = files[start : start + BATCH]
        images = pd.DataFrame({"image": [base64.b64encode(f.read_bytes()).decode("ascii") for f in chunk]})
        result = model.predict(images, params={"threshold": threshold} if threshold is not None else None)
        result.insert(0, "file", [str(f.relative_to(root)) if f != root else f.name for f in chunk])
        frames.append(result)
    return pd.concat(frames, ignore_index=True)


def run(config: PredictConfig) -> pd.DataFrame:
    files, ignored = input_files(config.input)
    model = load(config.model_uri)
    root = Path(config.input).expanduser()
    with tracking.step_run("predict"):
        table = predict(model, files, root, config.threshold)
        used = float(table["threshold"].iloc[0])
        tracking.log_params({"model_uri": config.model_uri, "input": str(root.resolve()), "threshold": f"{used:.6g}"})
        output = Path(config.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(output, index=False)
        unreadable = int(table["error"].notna().sum())
        mlflow.log_metrics({"n_images": len(table), "n_unreadable": unreadable, "n_ignored": len(ignored)})
        tracking.log_file(output, "predictions")
    counts = table["label"].value_counts().to_dict()
    # The model's own rule, from its python_function implementation (serving.ImageClassifier).
    own = getattr(getattr(model, "_model_impl", None), "operating", None)
    rule = "given" if config.threshold is not None else own.rule if own else "the model's own"
    print(f"threshold {used:.4g} ({rule})")
    print(f"{len(table)} images -> {output}: " + ", ".join(f"{n} {label}" for label, n in counts.items()) + f"; {unreadable} unreadable")
    for _, row in table[table["error"].notna()].iterrows():
        print(f"  {row['file']}: {row['error']}")
    if ignored:
        print(f"{len(ignored)} other files ignored: " + ", ".join(f"{p.relative_to(root)} ({reason})" for p, reason in ignored[:10])
              + (", ..." if len(ignored) > 10 else ""))
    return table


def main(config: PredictConfig) -> None:
    run(config)
