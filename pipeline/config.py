"""Typed settings parsed from an entry point's parameters: the one place a bad value is caught.

MLflow passes every parameter as a string (`--name value` on the command line of the entry
point), so each setting carries its own parser and a plain-words description of what it allows.
A bad value raises `UserError`, which the step runner turns into one `error:` line and exit 2.

Settings come in small groups (data, model, fit, ...) so the core functions take only what they
use; an entry point names the groups it accepts and `parse_cli` fills them from one argv.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit


class UserError(Exception):
    """A mistake the user can fix (bad parameter, missing folder): reported, never a traceback."""


# -- parsers: each takes the parameter's name and its text, returns the typed value ------------

Parser = Callable[[str, str], Any]


def integer(minimum: int | None = None, maximum: int | None = None) -> Parser:
    def parse(name: str, text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            value = None
        if value is None or (minimum is not None and value < minimum) or (
            maximum is not None and value > maximum
        ):
            raise UserError(f"{name} must be {_range_words('an integer', minimum, maximum)}, got {text!r}")
        return value

    return parse


def number(low: float, high: float | None = None, low_open: bool = True, high_open: bool = True) -> Parser:
    """A finite float in the interval given; `high=None` means unbounded above."""

    def parse(name: str, text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            value = math.nan
        below = value <= low if low_open else value < low
        above = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or below or above:
            left = "(" if low_open else "["
            right = ")" if high_open else "]"
            interval = f"{left}{low:g}, {high:g}{right}" if high is not None else f"{left}{low:g}, inf)"
            raise UserError(f"{name} must be a number in {interval}, got {text!r}")
        return value

    return parse


_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def boolean(name: str, text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise UserError(f"{name} must be one of true/false, 1/0, yes/no, got {text!r}")


def choice(*allowed: str) -> Parser:
    def parse(name: str, text: str) -> str:
        if text not in allowed:
            raise UserError(f"{name} must be one of {', '.join(allowed)}, got {text!r}")
        return text

    return parse


def text(name: str, value: str) -> str:
    return value


def auto_or(parse: Parser, allowed: str, auto: tuple[str, ...] = ("auto",)) -> Parser:
    """`auto` (None: the setting's own default, which its help names) or what `parse` takes."""

    def parse_or_auto(name: str, value: str):
        if value.strip().lower() in auto:
            return None
        try:
            return parse(name, value)
        except UserError:
            raise UserError(f"{name} must be 'auto' or {allowed}, got {value!r}") from None

    return parse_or_auto


# auto: tuned where tuning ran, else the mode's default
learning_rate = auto_or(number(0.0, 1e6, high_open=False), "a number in (0, 1e6]")
# auto: the threshold stored with the model
threshold_or_auto = auto_or(number(0.0, 1.0), "a number in (0, 1) (auto = the model's own)")
# auto: the data seed
seed_or_auto = auto_or(integer(0, 2**31 - 1), f"an integer from 0 to {2**31 - 1}")
# auto: half of the memory available
memory_or_auto = auto_or(number(0.0), "a number of GB > 0")
# auto: Youden's J
fraction_or_auto = auto_or(number(0.0, 1.0), "a number in (0, 1)", auto=("auto", "none", ""))


def lr_range(name: str, value: str) -> tuple[float, float] | None:
    """`auto` (the mode's default range) or `LOW,HIGH` with 0 < LOW < HIGH."""
    if value.strip().lower() in ("auto", ""):
        return None
    parts = value.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        low = high = math.nan
    if not (0 < low < high < 10):
        raise UserError(f"{name} must be 'auto' or LOW,HIGH with 0 < LOW < HIGH < 10, got {value!r}")
    return (low, high)


def name_list(name: str, value: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(p.strip() for p in value.split(",") if p.strip()))
    if not items:
        raise UserError(f"{name} must be a comma-separated list with at least one entry, got {value!r}")
    return items


def patient_pattern(name: str, value: str) -> str:
    """A regular expression applied to file names; its `patient` group (or whole match) is the key."""
    if value == "":
        return value
    try:
        re.compile(value)
    except re.error as e:
        raise UserError(f"{name} must be a valid regular expression ('' disables patient checks): {e}") from None
    return value


SECRET_QUERY_KEYS = {"password", "passwd", "pwd", "pass"}


def has_secret(value: str) -> bool:
    """A URL carrying a password, in its user part (`u:pw@host`) or its query (`?password=pw`)."""
    try:
        parts = urlsplit(value)
        return bool(parts.password) or any(key.lower() in SECRET_QUERY_KEYS for key in parse_qs(parts.query, keep_blank_values=True))
    except ValueError:
        return False


def storage_url(name: str, value: str) -> str:
    """An Optuna storage URL without a password: parameters are logged, so a password in one
    would be stored in the tracking server for anyone to read."""
    if has_secret(value):
        raise UserError(
            f"{name} must not contain a password (parameters are logged in MLflow); give e.g. "
            "postgresql://user@host/optuna and set PGPASSWORD (or ~/.pgpass), or put the whole URL in the environment "
            "variable CXR_OPTUNA_STORAGE and leave storage empty. If `mlflow run` started this, the parameter it recorded "
            "has been masked in its run"
        )
    return value


def backbone_name(name: str, value: str) -> str:
    from pipeline.models import available_backbones  # torchvision is imported only when asked

    choices = available_backbones()
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=2, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise UserError(
            f"{name} {value!r} is not a torchvision classification model; {hint}the study's backbones are resnet50 and "
            f"efficientnet_b0 (any of torchvision's {len(choices)} classification models works, e.g. resnet18 or mobilenet_v3_small)"
        )
    return value


def weights_spec(name: str, value: str) -> str:
    if value in ("imagenet", "none"):
        return value
    if not os.path.isfile(value):
        raise UserError(
            f"{name} must be imagenet, none, or the path of a state_dict file; no file at {value!r}"
        )
    return os.path.abspath(value)


def _range_words(kind: str, minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"{kind} from {minimum} to {maximum}"
    if minimum is not None:
        return f"{kind} >= {minimum}"
    if maximum is not None:
        return f"{kind} <= {maximum}"
    return kind


def option(default: Any, parse: Parser, help: str) -> Any:
    """A dataclass field that the command line can set; `default` is already parsed."""
    return field(default=default, metadata={"parse": parse, "help": help})


# -- the groups ---------------------------------------------------------------------------------

CSV_COLUMN_DEFAULTS = {"file": "file", "label": "label", "patient": "patient", "split": "split"}


def csv_columns(name: str, value: str) -> str:
    """`role=column` pairs, comma-separated; roles file, label, patient, split; unnamed roles keep
    their default column names. Returned whole (every role), so the logged parameter says it all."""
    columns = dict(CSV_COLUMN_DEFAULTS)
    for part in filter(None, (p.strip() for p in value.split(","))):
        role, sep, column = (x.strip() for x in part.partition("="))
        if not sep or role not in columns or not column:
            raise UserError(
                f"{name} takes role=column pairs for the roles {', '.join(columns)}, e.g. "
                f"'file=Image Index,label=Finding Labels,patient=Patient ID'; got {part!r}"
            )
        columns[role] = column
    return ",".join(f"{role}={column}" for role, column in columns.items())


def column_map(value: str) -> dict[str, str]:
    """A parsed `csv_columns` value as role -> column."""
    return dict(part.split("=", 1) for part in value.split(","))


def label_list(name: str, value: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p.strip() for p in value.split(",") if p.strip()))


# No radiograph comes near this (a 43 x 43 cm detector at 0.1 mm is 18.5 Mpx); a file above it is
# refused from its header, before any pixel is decoded: a few hundred kB of PNG can claim 13,000 x
# 13,000 16-bit pixels, gigabytes once decoded.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000

DEFAULT_PATIENT_PATTERN = r"^(?P<patient>person\d+_(?:bacteria|virus)|(?:NORMAL2-)?IM-\d+)"


@dataclass(frozen=True)
class DataConfig:
    data_dir: str = option("", text, "Kaggle-layout folder, MedMNIST .npz file, label table (.csv), or '' ($CXR_DATA_DIR if set, else the demo set)")
    image_size: int = option(224, integer(16, 1024), "side of the square images the models see")
    val_source: str = option("auto", choice("auto", "folder", "split"), "validation: val/ as given (folder), re-split from train/ by patient (split), or auto: val/ if it has >= 50 images of every class")
    val_fraction: float = option(0.2, number(0.0, 0.5, high_open=False), "share of train/ held out as validation (by patient) when validation is split")
    seed: int = option(42, integer(0, 2**31 - 1), "seed of the demo set, the validation split, the model and training")
    cache_dir: str = option("", text, "where decoded images and features are cached ('' = $CXR_TRANSFER_CACHE or the user cache)")
    patient_pattern: str = option(DEFAULT_PATIENT_PATTERN, patient_pattern, "regex whose 'patient' group is a file's patient id (where the source gives none)")
    csv_columns: str = option(csv_columns("csv_columns", ""), csv_columns, "CSV source: role=column pairs for file, label, patient, split")
    positive_labels: tuple[str, ...] = option((), label_list, "CSV source: findings (comma-separated) that make a row PNEUMONIA, every other NORMAL ('' = the label column holds NORMAL/PNEUMONIA or 0/1)")
    test_list: str = option("", text, "CSV source without a split column: a file naming the test images, one per line (e.g. NIH's test_list.txt)")
    test_fraction: float = option(0.2, number(0.0, 0.5, high_open=False), "CSV source with neither split column nor test_list: share held out as test, by patient")
    max_image_pixels: int = option(DEFAULT_MAX_IMAGE_PIXELS, integer(1, 10**10), "images larger than this many pixels (width x height, DICOM included) are refused from their header, before decoding: listed as unreadable with their size")
    near_duplicate_bits: int = option(16, integer(0, 254), "images whose perceptual hashes differ in at most this many of 255 bits are near-duplicates: one unit with their copy in the split, the seen masks and every interval")


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = option("efficientnet_b0", backbone_name, "torchvision classification model")
    frozen: bool = option(True, boolean, "true: fixed feature extractor + new head; false: fine-tune all layers")
    weights: str = option("imagenet", weights_spec, "imagenet, none, or a state_dict path")

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
    train_seed: int | None = option(None, seed_or_auto, "seed of the model's initialisation and training order (auto = seed); compare's seeds vary it")
    calibrate: bool = option(False, boolean, "fit a temperature on validation so the model's probabilities mean what they say (ECE before, and after cross-fitted on folds of validation, logged)")
    target_sensitivity: float | None = option(None, fraction_or_auto, "operating threshold stored with the model: auto = Youden's J on validation, or the highest reaching this sensitivity on validation (e.g. 0.95)")
    nproc: int = option(1, integer(1, 1024), "train: processes on this machine (one per GPU), started with torchrun; > 1 trains with DistributedDataParallel")
    compile: bool = option(False, boolean, "torch.compile the backbone (frozen extraction) or the model (fine-tune): faster per image after a one-time compile, so it pays on large sets only (compile time and break-even: benchmarks/RESULTS.md)")
    max_memory_gb: float | None = option(None, memory_or_auto, "decoded images a process may hold in memory, GB (auto = half of what is available); a larger split is streamed from the cache")


@dataclass(frozen=True)
class TuneConfig:
    storage: str = option("", storage_url, "Optuna storage URL, no password ('' = $CXR_OPTUNA_STORAGE, which may hold one, else a SQLite file beside the tracking store)")
    study_name: str = option("", text, "'' = <backbone>-<mode>-<digest8>")
    lr_range: tuple[float, float] | None = option(None, lr_range, "LOW,HIGH searched log-uniformly, or auto")
    pruner: str = option("median", choice("median", "hyperband", "none"), "how hopeless trials are stopped early")


@dataclass(frozen=True)
class TrialsConfig:
    n_trials: int = option(20, integer(1, 100_000), "trials this tune run adds to the study")


@dataclass(frozen=True)
class MainConfig:
    tune_trials: int = option(10, integer(0, 100_000), "Optuna trials before training (0 skips tuning)")


@dataclass(frozen=True)
class ResumeConfig:
    resume: str = option("", text, "run id of a killed train run to continue")


@dataclass(frozen=True)
class EvaluateConfig:
    model_uri: str = option("", text, "model to score (models:/..., runs:/.../model)")
    train_run_id: str = option("", text, "or: the train run whose model to score")


@dataclass(frozen=True)
class PredictConfig:
    model_uri: str = option("", text, "model to use (models:/..., runs:/.../model)")
    input: str = option("", text, "an image file or a folder of images")
    output: str = option("predictions.csv", text, "CSV file to write")
    overwrite: bool = option(False, boolean, "replace output if it is an existing CSV file (else refused)")
    threshold: float | None = option(None, threshold_or_auto, "probability of the positive class at which to call it (auto = the threshold stored with the model)")


@dataclass(frozen=True)
class CompareConfig:
    backbones: tuple[str, ...] = option(("resnet50", "efficientnet_b0"), name_list, "comma-separated backbones")
    modes: tuple[str, ...] = option(("finetune", "frozen"), name_list, "comma-separated modes: frozen, finetune")
    weights: str = option("imagenet", weights_spec, "imagenet, none, or a state_dict path (every configuration)")
    report_for: str = option("", text, "run id of an earlier compare run: rebuild its report from the store, train nothing")
    seeds: int = option(1, integer(1, 100), "train every configuration with this many training seeds (seed, seed+1, ...) and report mean +- sd")


# -- the command line ---------------------------------------------------------------------------

# The settings each entry point takes, parsed before the step (and torch) is even imported.
STEP_SETTINGS: dict[str, tuple[type, ...]] = {
    "prepare": (DataConfig,),
    "train": (DataConfig, ModelConfig, FitConfig, ResumeConfig),
    "tune": (DataConfig, ModelConfig, FitConfig, TuneConfig, TrialsConfig),
    "evaluate": (EvaluateConfig,),
    "main": (DataConfig, ModelConfig, FitConfig, MainConfig, TuneConfig),
    "predict": (PredictConfig,),
    "compare": (DataConfig, FitConfig, MainConfig, TuneConfig, CompareConfig),
}


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, but a mistake is a `UserError` (one `error:` line, exit 2, the run marked
    FAILED) rather than argparse's usage text and exit."""

    def error(self, message: str):
        names = ", ".join(a.dest for a in self._actions if a.option_strings and a.dest != "help")
        raise UserError(f"{message}; parameters are given as --name value, and {self.prog} takes: {names} (--help says what each means)")


def add_settings(parser: argparse.ArgumentParser, *groups: type) -> None:
    """One `--name value` option per setting, with its help and its default."""
    for group in groups:
        defaults = as_params(group())
        section = parser.add_argument_group(group.__name__.removesuffix("Config").lower() + " settings")
        for f in fields(group):
            shown = defaults[f.name] or "''"
            section.add_argument(
                f"--{f.name}", metavar="VALUE", default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {shown})",
                type=functools.partial(f.metadata["parse"], f.name),
            )


def settings_parser(prog: str, *groups: type, description: str | None = None) -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog=prog, description=description, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings(parser, *groups)
    return parser


def parse_cli(argv: list[str], *groups: type, prog: str = "this entry point", description: str | None = None) -> tuple:
    """Fill each settings group from `--name value` pairs; every name must belong to some group.
    `--help` prints every setting with its help and default, and exits."""
    given = vars(settings_parser(prog, *groups, description=description).parse_args(argv))
    result = tuple(group(**{f.name: given[f.name] for f in fields(group) if f.name in given}) for group in groups)
    _check_together(result)
    return result


def from_params(params: dict[str, str], *groups: type) -> tuple:
    """Settings read back from a run's logged parameters; keys of other groups are ignored."""
    names = {f.name for group in groups for f in fields(group)}
    return parse_cli([token for key, value in params.items() if key in names for token in (f"--{key}", value)], *groups)


def _check_together(groups: list) -> None:
    for g in groups:
        if isinstance(g, CompareConfig):
            bad = [m for m in g.modes if m not in ("frozen", "finetune")]
            if bad:
                raise UserError(f"modes must list frozen and/or finetune, got {', '.join(bad)}")
            for b in g.backbones:
                backbone_name("backbones", b)


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
