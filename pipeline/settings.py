"""The settings: one dataclass field per setting, with its type, default, parser and help. This is
the only place a setting is declared: the command line (`cli.py`), `--help`, the MLflow
parameters (`as_params`) and docs/parameters.md are all made from these fields.

Settings come in small groups (data, model, fit, ...) so the core functions take only what they
use; an entry point names the groups it takes (`STEP_SETTINGS`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pipeline.parsers import (
    backbone_name,
    boolean,
    choice,
    csv_columns,
    fraction_or_auto,
    integer,
    label_list,
    learning_rate,
    lr_range,
    memory_or_auto,
    name_list,
    number,
    option,
    path_list,
    patient_pattern,
    seed_or_auto,
    text,
    threshold_or_auto,
    weights_spec,
)
from pipeline.secrets import storage_url

# No radiograph comes near this (a 43 x 43 cm detector at 0.1 mm is 18.5 Mpx); a file above it is
# refused from its header, before any pixel is decoded: a few hundred kB of PNG can claim 13,000 x
# 13,000 16-bit pixels, gigabytes once decoded.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


def weights_option():
    """`weights`, declared once: ModelConfig (one configuration) and CompareConfig (all of them) take it."""
    return option("imagenet", weights_spec, "imagenet (torchvision's IMAGENET1K_V1), none (random initialisation), or the path of a state_dict file")


DEFAULT_PATIENT_PATTERN = r"^(?P<patient>person\d+_(?:bacteria|virus)|(?:NORMAL2-)?IM-\d+)"


@dataclass(frozen=True)
class DataConfig:
    data_dir: str = option("", text, "Kaggle-layout folder, MedMNIST .npz file, label table (.csv), or '' ($CXR_DATA_DIR if set, else the demo set)")
    image_size: int = option(224, integer(16, 1024), "side of the square images the models see")
    val_source: str = option(
        "auto",
        choice("auto", "folder", "split"),
        "validation: val/ as given (folder), re-split from train/ by patient (split), or auto: val/ if it has >= 50 images of every class",
    )
    val_fraction: float = option(
        0.2, number(0.0, 0.5, high_open=False), "share of train/ held out as validation (by patient) when validation is split"
    )
    seed: int = option(42, integer(0, 2**31 - 1), "seed of the demo set, the validation split, the model and training")
    cache_dir: str = option("", text, "where decoded images and features are cached ('' = $CXR_TRANSFER_CACHE or the user cache)")
    patient_pattern: str = option(
        DEFAULT_PATIENT_PATTERN, patient_pattern, "regex whose 'patient' group is a file's patient id (where the source gives none)"
    )
    csv_columns: str = option(csv_columns("csv_columns", ""), csv_columns, "CSV source: role=column pairs for file, label, patient, split")
    positive_labels: tuple[str, ...] = option(
        (),
        label_list,
        "CSV source: findings (comma-separated) that make a row PNEUMONIA, every other NORMAL ('' = the label column holds NORMAL/PNEUMONIA or 0/1)",
    )
    test_list: str = option("", text, "CSV source without a split column: a file naming the test images, one per line (e.g. NIH's test_list.txt)")
    test_site: str = option(
        "",
        text,
        "CSV source with a site column: the site held out as the test set (the other sites train and validate); "
        "each: main runs leave-one-site-out, one evaluation per site, summarised",
    )
    test_fraction: float = option(
        0.2, number(0.0, 0.5, high_open=False), "CSV source with neither split column nor test_list: share held out as test, by patient"
    )
    max_image_pixels: int = option(
        DEFAULT_MAX_IMAGE_PIXELS,
        integer(1, 10**10),
        "images larger than this many pixels (width x height, DICOM included) are refused from their header, before decoding: listed as unreadable with their size",
    )
    near_duplicate_bits: int = option(
        16,
        integer(0, 254),
        "images whose perceptual hashes differ in at most this many of 255 bits are near-duplicates: one unit with their copy in the split, the seen masks and every interval",
    )


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = option("efficientnet_b0", backbone_name, "torchvision classification model")
    frozen: bool = option(True, boolean, "true: fixed feature extractor + new head; false: fine-tune all layers")
    weights: str = weights_option()

    @property
    def mode(self) -> str:
        return "frozen" if self.frozen else "finetune"


@dataclass(frozen=True)
class FitConfig:
    epochs: int = option(10, integer(1, 10_000), "training epochs (the most; early stopping may end sooner)")
    batch_size: int = option(32, integer(1, 65_536), "images (or feature vectors) per step")
    lr: float | None = option(None, learning_rate, "learning rate of the head, or auto")
    backbone_lr_scale: float = option(0.1, number(0.0, 1.0, high_open=False), "fine-tune: backbone lr = lr x this")
    weight_decay: float = option(1e-4, number(0.0, 1.0, low_open=False), "AdamW weight decay")
    patience: int = option(5, integer(0, 10_000), "stop after this many epochs without a better val_loss (0 = never)")
    class_weights: str = option("auto", choice("auto", "none"), "auto: weight the loss by inverse class frequency")
    augment: bool = option(True, boolean, "fine-tune: light augmentation of training images")
    device: str = option("auto", choice("auto", "cpu", "cuda", "mps"), "auto = cuda, then mps, then cpu")
    num_threads: int = option(0, integer(0, 1024), "CPU threads for torch (0 = torch's default)")
    precision: str = option(
        "auto",
        choice("auto", "fp32", "bf16"),
        "arithmetic of training, extraction and evaluation: bf16 autocast, or fp32; auto = bf16 autocast on CUDA (float16 where the GPU has no bf16) and on CPUs with bf16 instructions (AVX-512 BF16, AMX), fp32 on other CPUs (measured: benchmarks/RESULTS.md)",
    )
    train_seed: int | None = option(
        None, seed_or_auto, "seed of the model's initialisation and training order (auto = seed); compare's seeds vary it"
    )
    calibrate: bool = option(
        False,
        boolean,
        "fit a temperature on validation so the model's probabilities mean what they say (ECE before, and after cross-fitted on folds of validation, logged)",
    )
    target_sensitivity: float | None = option(
        None,
        fraction_or_auto,
        "operating threshold stored with the model: auto = Youden's J on validation, or the highest reaching this sensitivity on validation (e.g. 0.95)",
    )
    nproc: int = option(
        1, integer(1, 1024), "train: processes on this machine (one per GPU), started with torchrun; > 1 trains with DistributedDataParallel"
    )
    compile: bool = option(
        False,
        boolean,
        "torch.compile the backbone (frozen extraction) or the model (fine-tune): faster per image after a one-time compile, so it pays on large sets only (compile time and break-even: benchmarks/RESULTS.md)",
    )
    max_memory_gb: float | None = option(
        None,
        memory_or_auto,
        "decoded images a process may hold in memory, GB (auto = half of what is available); a larger split is streamed from the cache",
    )


@dataclass(frozen=True)
class TuneConfig:
    storage: str = option(
        "",
        storage_url,
        "Optuna storage URL, no password ('' = $CXR_OPTUNA_STORAGE, which may hold one, else a SQLite file beside the tracking store)",
    )
    study_name: str = option("", text, "'' = <backbone>-<mode>-<digest8>")
    lr_range: tuple[float, float] | None = option(None, lr_range, "LOW,HIGH searched log-uniformly, or auto")
    pruner: str = option("median", choice("median", "hyperband", "none"), "how hopeless trials are stopped early")


@dataclass(frozen=True)
class TrialsConfig:
    tune_trials: int = option(
        10,
        integer(0, 100_000),
        "Optuna trials of the learning-rate search: tune adds this many to its study; main and compare run them before training when lr=auto (0 skips tuning)",
    )


@dataclass(frozen=True)
class ResumeConfig:
    resume: str = option("", text, "run id of a killed train run to continue")


@dataclass(frozen=True)
class EvaluateConfig:
    model_uri: str = option("", text, "model to score (models:/..., runs:/.../model)")
    train_run_id: str = option("", text, "or: the train run whose model to score")


@dataclass(frozen=True)
class ExternalConfig:
    external_split: str = option(
        "all", choice("all", "test"), "external: all its labelled images form the external set (all), or only its test split (test)"
    )


@dataclass(frozen=True)
class PredictConfig:
    model_uri: str = option("", text, "model to use (models:/..., runs:/.../model)")
    input: str = option("", text, "an image file or a folder of images")
    output: str = option("predictions.csv", text, "CSV file to write")
    overwrite: bool = option(False, boolean, "replace output if it is an existing CSV file (else refused)")
    threshold: float | None = option(
        None, threshold_or_auto, "probability of the positive class at which to call it (auto = the threshold stored with the model)"
    )


@dataclass(frozen=True)
class CompareConfig:
    backbones: tuple[str, ...] = option(("resnet50", "efficientnet_b0"), name_list, "comma-separated backbones")
    modes: tuple[str, ...] = option(("finetune", "frozen"), name_list, "comma-separated modes: frozen, finetune")
    weights: str = weights_option()  # compare trains every configuration from the same weights
    report_for: str = option("", text, "run id of an earlier compare run: rebuild its report from the store, train nothing")
    seeds: int = option(1, integer(1, 100), "train every configuration with this many training seeds (seed, seed+1, ...) and report mean +- sd")
    external: tuple[str, ...] = option(
        (),
        path_list,
        "comma-separated data sets from other hospitals, read as data_dir is: every configuration is scored on each (the external step) "
        "and the report compares them there",
    )


@dataclass(frozen=True)
class ConsoleConfig:
    quiet: bool = option(False, boolean, "only warnings and errors on the console, no progress bars (the runs record the same)")


# The settings each entry point takes, parsed before the step (and torch) is even imported; the
# console's settings, last, are the step runner's own (`python -m pipeline`).
STEP_SETTINGS: dict[str, tuple[type, ...]] = {
    "prepare": (DataConfig, ConsoleConfig),
    "train": (DataConfig, ModelConfig, FitConfig, ResumeConfig, ConsoleConfig),
    "tune": (DataConfig, ModelConfig, FitConfig, TuneConfig, TrialsConfig, ConsoleConfig),
    "evaluate": (EvaluateConfig, ConsoleConfig),
    "main": (DataConfig, ModelConfig, FitConfig, TrialsConfig, TuneConfig, ConsoleConfig),
    "external": (EvaluateConfig, DataConfig, ExternalConfig, ConsoleConfig),
    "predict": (PredictConfig, ConsoleConfig),
    "compare": (DataConfig, FitConfig, TrialsConfig, TuneConfig, CompareConfig, ConsoleConfig),
}


def as_params(*groups: Any) -> dict[str, str]:
    """Settings as MLflow parameters: flat, stringified, tuples joined by commas, None as auto."""
    params = {}
    for g in groups:
        for key, value in asdict(g).items():
            if value is None:
                value = "auto"
            elif isinstance(value, (tuple, list)):
                value = ",".join(str(v) for v in value)
            elif isinstance(value, bool):
                value = str(value).lower()
            params[key] = str(value)
    return params
