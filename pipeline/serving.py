"""The logged model: one MLflow model with two faces.

- PyTorch flavour: `mlflow.pytorch.load_model(uri)` gives the classifier exported with
  torch.export (pt2): float tensor (N, 1, S, S) of grey values 0..1 in, class logits out.
- python_function flavour (this module is its loader): a DataFrame column `image` of base64
  encoded image files in; `label`, `probability` (of the positive class), `p_<class>`,
  `threshold` (the one the label was called at) and `error` out, one row per image. The
  threshold chosen on validation travels with the model and is used unless a request's
  `threshold` parameter says otherwise. This is what `mlflow models serve` answers, so a client sends
  image files as they are; the model decodes, greys and resizes them as `prepare` did.
  An unreadable image gets its reason in `error`, never fails the request, and neither does one
  above the model's `max_image_pixels` (refused from its header, before decoding). A request
  with more than `max_request_images` images, or a threshold outside (0, 1), is refused at once
  with a 400 that says so (a served model cannot be stopped once it computes: a request the
  server times out on would go on computing). The server's operator can change both limits
  with the environment variables CXR_MAX_IMAGE_PIXELS and CXR_MAX_REQUEST_IMAGES.

Logged through `mlflow.models.Model.log` with this module as the flavor, which is how MLflow
lets a package define what `save_model` writes.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec
from PIL import Image

from pipeline.data.cache import resize_square
from pipeline.data.sources import UnreadableImage, read_image
from pipeline.data.synthetic import radiograph
from pipeline.engine.device import Device
from pipeline.engine.loop import predict_proba
from pipeline.metrics import positive_index
from pipeline.settings import DEFAULT_MAX_IMAGE_PIXELS

CONFIG_FILE = "cxr_transfer.json"
# At 224 px on 2 CPU cores a ResNet50 classifies about 5 images a second: 128 images fit in the
# scoring server's default 60 s timeout with room to spare.
DEFAULT_MAX_REQUEST_IMAGES = 128
LIMIT_VARIABLES = {"max_image_pixels": "CXR_MAX_IMAGE_PIXELS", "max_request_images": "CXR_MAX_REQUEST_IMAGES"}
PACKAGE_DIR = Path(__file__).resolve().parent
REQUIREMENTS = ("torch", "torchvision", "mlflow", "pillow", "simplejpeg", "xxhash", "numpy", "pandas", "tqdm", "scikit-learn", "matplotlib")


@dataclass(frozen=True)
class OperatingPoint:
    """The threshold a model is used at, and how it was chosen (on validation, never on test)."""

    threshold: float = 0.5
    rule: str = "the default 0.5"


def log_model(
    model: torch.nn.Module,
    image_size: int,
    classes: list[str],
    operating: OperatingPoint = OperatingPoint(),
    name: str = "model",
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
):
    """Export (pt2, batch dimension dynamic) and log; returns MLflow's ModelInfo."""
    return mlflow.models.Model.log(
        artifact_path=None,
        name=name,
        flavor=sys.modules[__name__],
        pytorch_model=model,
        image_size=image_size,
        classes=classes,
        operating=operating,
        max_image_pixels=max_image_pixels,
    )


def encode_image(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def save_model(
    path: str,
    mlflow_model,
    pytorch_model: torch.nn.Module,
    image_size: int,
    classes: list[str],
    operating: OperatingPoint = OperatingPoint(),
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    **kwargs,
) -> None:
    # A batch of 2: torch.export turns a batch of 1 into a fixed size, and the model would
    # then refuse any other batch.
    example = torch.rand(2, 1, image_size, image_size)
    tensor_signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, image_size, image_size))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(classes)))]),
    )
    mlflow.pytorch.save_model(
        pytorch_model.cpu().eval(),
        path,
        mlflow_model=mlflow_model,
        signature=tensor_signature,
        input_example=example.numpy(),
        pip_requirements=_requirements(),
        code_paths=[str(PACKAGE_DIR)],
    )
    root = Path(path)
    for cache in root.rglob("__pycache__"):
        for f in cache.iterdir():
            f.unlink()
        cache.rmdir()
    config = {
        "image_size": image_size,
        "classes": classes,
        "threshold": operating.threshold,
        "threshold_rule": operating.rule,
        "max_image_pixels": max_image_pixels,
        "max_request_images": DEFAULT_MAX_REQUEST_IMAGES,
    }
    (root / "data" / CONFIG_FILE).write_text(json.dumps(config))
    # The python_function face: images in, probabilities out.
    mlflow_model.flavors["python_function"]["loader_module"] = __name__
    mlflow_model.signature = ModelSignature(
        inputs=Schema([ColSpec("string", "image")]),
        outputs=Schema(
            [ColSpec("string", "label"), ColSpec("double", "probability")]
            + [ColSpec("double", f"p_{c}") for c in classes]
            + [ColSpec("double", "threshold"), ColSpec("string", "error", required=False)]
        ),
        # The default is the model's own threshold: a request without one gets it.
        params=ParamSchema([ParamSpec("threshold", "double", float(operating.threshold))]),
    )
    # The python_function face's example, in the MLmodel format's own files: a DataFrame in
    # pandas' split orient, and the same as a request. Synthetic radiographs, not the user's
    # images: a model may be shared where its data may not.
    pictures = [encode_image(radiograph(np.random.default_rng(k), image_size, pneumonia=k == 1)) for k in range(2)]
    example = {"columns": ["image"], "data": [[p] for p in pictures]}
    (root / "input_example.json").write_text(json.dumps(example))
    (root / "serving_input_example.json").write_text(json.dumps({"dataframe_split": example}))
    mlflow_model.saved_input_example_info = {
        "artifact_path": "input_example.json",
        "type": "dataframe",
        "pandas_orient": "split",
        "serving_input_path": "serving_input_example.json",
    }
    mlflow_model.save(str(root / "MLmodel"))


def _requirements() -> list[str]:
    pins = []
    for package in REQUIREMENTS:
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


@dataclass(frozen=True)
class Limits:
    """What one request may ask of a served model."""

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_request_images: int = DEFAULT_MAX_REQUEST_IMAGES


def bad_request(message: str) -> MlflowException:
    """A refusal the scoring server answers with a 400 and this message (and no stack trace)."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


class ImageClassifier:
    """What `mlflow.pyfunc.load_model` returns for our models."""

    def __init__(
        self, module: torch.nn.Module, image_size: int, classes: list[str], operating: OperatingPoint = OperatingPoint(), limits: Limits = Limits()
    ):
        self.module = module
        self.image_size = image_size
        self.classes = classes
        self.positive = positive_index(classes)
        self.operating = operating
        self.limits = limits

    def threshold(self, params: dict | None) -> float:
        given = (params or {}).get("threshold")
        if given is None:
            return self.operating.threshold
        try:
            value = float(given)
        except (TypeError, ValueError):
            value = math.nan
        if not (math.isfinite(value) and 0 < value < 1):
            raise bad_request(f"params.threshold must be a number in (0, 1), got {given!r}")
        return value

    def predict(self, model_input, params: dict | None = None) -> pd.DataFrame:
        threshold = self.threshold(params)
        images = model_input["image"] if isinstance(model_input, pd.DataFrame) else pd.Series(list(model_input))
        if len(images) > self.limits.max_request_images:
            raise bad_request(
                f"this request holds {len(images)} images; the model takes at most {self.limits.max_request_images} per request "
                f"(send them in smaller requests, or serve with {LIMIT_VARIABLES['max_request_images']} set higher and a longer --timeout)"
            )
        pixels, errors = [], []
        for item in images:
            try:
                pixels.append(resize_square(read_image(_image_bytes(item), self.limits.max_image_pixels, self.image_size).pixels, self.image_size))
                errors.append(None)
            except UnreadableImage as e:
                pixels.append(None)
                errors.append(str(e))
            except Exception as e:  # whatever a hostile input does, its row says so and the others are answered
                pixels.append(None)
                errors.append(f"cannot read: {type(e).__name__}: {str(e)[:300]}")
        good = [p for p in pixels if p is not None]
        probs = predict_proba(self.module, np.stack(good), 32, Device(torch.device("cpu"))) if good else np.zeros((0, len(self.classes)))
        rows, k = [], 0
        for error in errors:
            if error is not None:
                rows.append(
                    {"label": None, "probability": np.nan, **{f"p_{c}": np.nan for c in self.classes}, "threshold": threshold, "error": error}
                )
                continue
            p = probs[k]
            k += 1
            if len(self.classes) == 2:
                label = self.classes[self.positive] if p[self.positive] >= threshold else self.classes[1 - self.positive]
            else:
                label = self.classes[int(p.argmax())]
            rows.append(
                {
                    "label": label,
                    "probability": float(p[self.positive]),
                    **{f"p_{c}": float(v) for c, v in zip(self.classes, p)},
                    "threshold": threshold,
                    "error": None,
                }
            )
        table = pd.DataFrame(rows, columns=["label", "probability", *[f"p_{c}" for c in self.classes], "threshold", "error"])
        # None, not NaN, where there is no value: the scoring server's JSON then says null.
        return table.astype(object).where(table.notna(), None)


def _image_bytes(item) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if not isinstance(item, str):
        raise UnreadableImage(f"expected a base64 string, got {type(item).__name__}")
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise UnreadableImage("not valid base64") from None


def _load_pyfunc(data_path: str, model_config: dict | None = None) -> ImageClassifier:
    data = Path(data_path)
    config = json.loads((data / CONFIG_FILE).read_text())
    module = torch.export.load(str(data / "model.pt2")).module()
    operating = OperatingPoint(config["threshold"], config["threshold_rule"]) if "threshold" in config else OperatingPoint()
    return ImageClassifier(module, config["image_size"], config["classes"], operating, limits_of(config))


def limits_of(config: dict) -> Limits:
    """The model's own limits, unless the server's environment sets others."""
    values = {}
    for name, variable in LIMIT_VARIABLES.items():
        text = os.environ.get(variable) or str(config.get(name, getattr(Limits, name)))
        try:
            values[name] = int(text)
        except ValueError:
            raise MlflowException(f"{variable} must be a whole number, got {text!r}") from None
    return Limits(**values)
