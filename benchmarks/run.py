"""Speed claims, measured side by side in one process on the same data, sizes and epochs.

    python benchmarks/run.py              # about 10 minutes on 2 CPU cores (image size 64)
    python benchmarks/run.py --full       # image size 224, every image: for a GPU
    python benchmarks/run.py --device cuda --full

1. frozen mode, E epochs: the pipeline's training (the one-time decode into the cache, features
   extracted once, then E epochs of the head) against the tutorial loop (`tutorial_loop.py`:
   decode + transform + backbone forward in every epoch), same head, optimizer, learning rate,
   batch and image size.
2. fine-tune mode: images per second of the pipeline's training epoch (batches from the
   decoded cache, augmentation included) against the ceiling: the same model's forward,
   backward and optimizer step on random tensors already in memory.
3. tuning: a 20-trial frozen study (the tune step, MLflow tracking included) against one
   frozen train step (also tracked), like with like: the train step's model export (which the
   tune step does not do) is timed and left out, and shown; features cold for both.
4. tracking overhead: the full cost of the train step's MLflow recording (metrics and
   checkpoints, every write, until the last is stored) against the same epochs without,
   alternated after a warm-up; judged on the median of the paired differences.
Prints a table and adds it, with the machine, the command and the date, to RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

import mlflow
import torch

from pipeline import serving, tracking
from pipeline.data import prepare_dataset
from pipeline.data.cache import cache_root
from pipeline.engine.device import pick_device, source_of, to_model_input
from pipeline.engine.features import FeatureCache, extract_features
from pipeline.engine.loop import run_epoch, train_classifier
from pipeline.engine.setup import setup_training
from pipeline.models import parameter_groups
from pipeline.settings import DataConfig, FitConfig, ModelConfig, TuneConfig
from pipeline.steps import train, tune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tutorial_loop import run_tutorial  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# A sample of the Kaggle set (2,400 images) beside the checkout, or wherever CXR_KERMANY_DIR says.
KERMANY = Path(os.environ.get("CXR_KERMANY_DIR", ROOT.parent / "shared" / "data" / "kermany-2400"))


@dataclass(frozen=True)
class Bench:
    data_dir: str
    image_size: int
    batch_size: int
    epochs: int
    frozen_backbone: str
    finetune_backbone: str
    finetune_images: int | None  # None: the whole train split
    trials: int
    device: str
    workers: int
    cache: Path


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def cold_features(bench: Bench) -> None:
    """Forget extracted features (memory and disk); the decoded images stay cached."""
    FeatureCache._memory.clear()
    shutil.rmtree(cache_root(str(bench.cache)) / "features", ignore_errors=True)


def configs(bench: Bench, backbone: str, frozen: bool, **fit):
    return (
        DataConfig(data_dir=bench.data_dir, image_size=bench.image_size, cache_dir=str(bench.cache)),
        ModelConfig(backbone, frozen, "none"),
        FitConfig(epochs=bench.epochs, batch_size=bench.batch_size, device=bench.device, patience=0, **fit),
    )


def frozen_against_tutorial(bench: Bench, source: str) -> dict:
    data, model_cfg, fit = configs(bench, bench.frozen_backbone, True)
    cold_features(bench)
    # The pipeline's side pays its one-time decode too: into a fresh cache, as a first run would.
    data = replace(data, cache_dir=str(bench.cache / f"cold-{time.time_ns()}"))

    def pipeline():
        setup = setup_training(data, model_cfg, fit)  # decodes every image into the new cache
        model = setup.new_model()
        features = setup.features(model)
        return train_classifier(model, setup.prep.dataset, fit, 1e-3, setup.device, data.seed, features=features.splits)

    seconds, state = timed(pipeline)
    tutorial = run_tutorial(
        source,
        bench.frozen_backbone,
        bench.image_size,
        bench.epochs,
        bench.batch_size,
        1e-3,
        fit.weight_decay,
        pick_device(bench.device).torch_device,
        bench.workers,
    )
    return {
        "pipeline_s": seconds,
        "pipeline_val_acc": state.history[-1].val_acc,
        "tutorial_s": tutorial["seconds"],
        "tutorial_val_acc": tutorial["val_acc"],
        "speedup": tutorial["seconds"] / seconds,
    }


def finetune_against_ceiling(bench: Bench, backbone: str, images_used: int | None) -> dict:
    data, model_cfg, fit = configs(bench, backbone, False)
    setup = setup_training(data, model_cfg, fit)
    device = setup.device
    images = setup.prep.dataset.images("train")
    labels = torch.from_numpy(setup.prep.dataset.labels("train"))
    n = images_used or len(images)
    n -= n % bench.batch_size
    inputs = source_of(images[:n], device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def pipeline_epoch():
        model = setup.new_model().to(device.torch_device)
        if device.channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(parameter_groups(model, 1e-4, fit.backbone_lr_scale), weight_decay=fit.weight_decay)
        generator = torch.Generator().manual_seed(0)
        warm = bench.batch_size * 2
        run_epoch(model, inputs, labels[:warm], None, device, bench.batch_size, optimizer, generator, images=True, augment_images=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds, _ = timed(
            lambda: run_epoch(
                model, inputs, labels[:n], None, device, bench.batch_size, optimizer, generator, images=True, augment_images=fit.augment
            )
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        return seconds

    def ceiling():
        model = setup.new_model().to(device.torch_device).train()
        memory = torch.channels_last if device.channels_last else torch.contiguous_format
        model.to(memory_format=memory)
        optimizer = torch.optim.AdamW(parameter_groups(model, 1e-4, fit.backbone_lr_scale), weight_decay=fit.weight_decay)
        x = torch.rand(bench.batch_size, 1, bench.image_size, bench.image_size, device=device.torch_device).contiguous(memory_format=memory)
        y = torch.randint(0, 2, (bench.batch_size,), device=device.torch_device)
        scaler = torch.amp.GradScaler(enabled=device.amp_dtype == torch.float16)

        def step():
            with device.autocast():
                loss = loss_fn(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        for _ in range(2):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n // bench.batch_size):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    pipeline_s, ceiling_s = pipeline_epoch(), ceiling()
    return {"images": n, "pipeline_img_s": n / pipeline_s, "ceiling_img_s": n / ceiling_s, "ratio": ceiling_s / pipeline_s}


def extraction_against_forward(bench: Bench, backbone: str, images_used: int) -> dict:
    """Frozen mode's feature extraction (batches from the decoded cache) against the same
    backbone's forward on a random batch already on the device, same batch size."""
    data, model_cfg, fit = configs(bench, backbone, True)
    setup = setup_training(data, model_cfg, fit)
    device, model = setup.device, setup.new_model()
    model.to(device.torch_device)
    if device.channels_last:
        model.to(memory_format=torch.channels_last)
    n = images_used - images_used % bench.batch_size
    images = setup.prep.dataset.images("train")[:n]
    extract_features(model, images[: bench.batch_size], bench.batch_size, device)  # warm-up
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    pipeline_s, _ = timed(lambda: (extract_features(model, images, bench.batch_size, device), sync()))
    x = to_model_input(torch.from_numpy(images[: bench.batch_size].copy()), device)

    def forward():
        with torch.inference_mode(), device.autocast():
            for _ in range(n // bench.batch_size):
                model.features(x)
        sync()

    ceiling_s, _ = timed(forward)
    return {"images": n, "pipeline_img_s": n / pipeline_s, "ceiling_img_s": n / ceiling_s, "ratio": ceiling_s / pipeline_s}


def compile_against_eager(bench: Bench, backbone: str, batches: int) -> dict:
    """torch.compile of the backbone's forward: its one-time compile, and images per second
    after it, against eager; the break-even is the images after which compiling has paid."""
    data, model_cfg, fit = configs(bench, backbone, True)
    setup = setup_training(data, model_cfg, fit)
    device, model = setup.device, setup.new_model().eval()
    model.to(device.torch_device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x = torch.rand(bench.batch_size, 1, bench.image_size, bench.image_size, device=device.torch_device)

    def rate(forward) -> float:
        forward(x)
        sync()
        start = time.perf_counter()
        for _ in range(batches):
            forward(x)
        sync()
        return batches * bench.batch_size / (time.perf_counter() - start)

    with torch.inference_mode(), device.autocast():
        eager = rate(model.features)
        compiled = torch.compile(model.features)
        compile_s, _ = timed(lambda: (compiled(x), sync()))
        fast = rate(compiled)
    saved_per_image = 1 / eager - 1 / fast
    return {
        "eager_img_s": eager,
        "compiled_img_s": fast,
        "compile_s": compile_s,
        "break_even_images": compile_s / saved_per_image if saved_per_image > 0 else float("inf"),
    }


def tuning_against_training(bench: Bench, store: Path) -> dict:
    data, model_cfg, fit = configs(bench, bench.frozen_backbone, True)
    cold_features(bench)
    exports = []
    log_model = serving.log_model

    def timed_export(*args, **kwargs):  # the train step's model export, which tuning never does
        seconds, info = timed(lambda: log_model(*args, **kwargs))
        exports.append(seconds)
        return info

    serving.log_model = timed_export
    try:
        train_s, _ = timed(lambda: train.run(data, model_cfg, fit))
    finally:
        serving.log_model = log_model
    cold_features(bench)
    tune_cfg = TuneConfig(storage=f"sqlite:///{store / 'optuna.db'}", study_name=f"bench-{time.time_ns()}")
    tune_s, _ = timed(lambda: tune.run(data, model_cfg, fit, tune_cfg, bench.trials))
    train_no_export_s = train_s - sum(exports)
    return {
        "train_s": train_s,
        "export_s": sum(exports),
        "train_no_export_s": train_no_export_s,
        "tune_s": tune_s,
        "ratio_to_one_run": tune_s / train_no_export_s,
        "ratio_to_n_runs": tune_s / (bench.trials * train_no_export_s),
    }


def tracking_overhead(bench: Bench, backbone: str, frozen: bool, epochs: int, images: int | None, repeats: int) -> dict:
    """The full cost of the train step's recorder: the same epochs with it and without, each
    timed until the recorder has stored its last write (whether or not it overlapped training),
    alternated `repeats` times after a warm-up of both; judged on the median paired difference."""
    data, model_cfg, fit = configs(bench, backbone, frozen)
    fit = replace(fit, epochs=epochs)
    setup = setup_training(data, model_cfg, fit)
    if images:  # fine-tune on a subset: the overhead is per epoch, not per image
        subset = _Subset(setup.prep.dataset, images)
        setup = replace(setup, prep=replace(setup.prep, dataset=subset))
    features = setup.features(setup.new_model())

    checkpoint_bytes = []  # the size of what each recorded epoch writes besides its metrics

    def fit_once(record: bool) -> float:
        model = setup.new_model()
        with tracking.step_run("train", backbone, model_cfg.mode, name="tracking-overhead"):
            start = time.perf_counter()
            recorder = tracking.EpochRecorder(Path(tempfile.mkdtemp())) if record else None
            train_classifier(model, setup.prep.dataset, fit, 1e-3, setup.device, 0, features=features.splits if features else None, on_epoch=recorder)
            if recorder is None:
                return time.perf_counter() - start
            recorder.close()  # every write stored
            seconds = time.perf_counter() - start
            checkpoint_bytes.append((recorder.local_artifacts / "checkpoints" / "last.pt").stat().st_size)
            return seconds

    fit_once(False), fit_once(True)  # warm-up: first-run allocations favour neither side
    pairs = [(fit_once(False), fit_once(True)) for _ in range(repeats)]
    without = statistics.median(p[0] for p in pairs)
    differences = sorted(100 * (w - wo) / wo for wo, w in pairs)
    return {
        "epoch_s": without / epochs,
        "run_s": without,
        "epochs": epochs,
        "repeats": repeats,
        "overhead_pct": statistics.median(differences),
        "spread_pct": (differences[0], differences[-1]),
        "overhead_ms": 1000 * statistics.median(w - wo for wo, w in pairs),
        "checkpoint_mb": max(checkpoint_bytes) / 1e6,
    }


class _Subset:
    """The first `n` training images of a prepared data set (val as is)."""

    def __init__(self, data, n):
        self._data, self._n = data, n

    def __getattr__(self, name):
        return getattr(self._data, name)

    def images(self, split):
        return self._data.images(split)[: self._n] if split == "train" else self._data.images(split)

    def labels(self, split):
        return self._data.labels(split)[: self._n] if split == "train" else self._data.labels(split)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f"; GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads{gpu}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="image size 224 and every image (hours on a CPU)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cxr-bench-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    bench = Bench(
        data_dir=str(KERMANY) if KERMANY.is_dir() else "",
        image_size=224 if args.full else 64,
        batch_size=32,
        epochs=args.epochs,
        frozen_backbone="efficientnet_b0",
        finetune_backbone="resnet50",
        finetune_images=None if args.full else 320,
        trials=args.trials,
        device=args.device,
        workers=min(4, os.cpu_count() or 1),
        cache=work / "cache",
    )
    prep_s, prep = timed(lambda: prepare_dataset(DataConfig(data_dir=bench.data_dir, image_size=bench.image_size, cache_dir=str(bench.cache))))
    source = bench.data_dir or prep.dataset.source
    print(f"data: {prep.name} {prep.dataset.split_sizes} at {bench.image_size} px (decoded once in {prep_s:.1f} s)", flush=True)

    results = {}
    print("1/4 frozen: pipeline vs tutorial loop ...", flush=True)
    results["frozen"] = frozen_against_tutorial(bench, source)
    print("2/4 fine-tune: pipeline vs ceiling ...", flush=True)
    results["finetune"] = finetune_against_ceiling(bench, bench.finetune_backbone, bench.finetune_images)
    # Full size: few images, so the rows fit in minutes on 2 cores; every image with --full.
    full = replace(bench, image_size=224)
    print("    224 px: extraction vs forward, fine-tune vs ceiling, torch.compile ...", flush=True)
    results["extract224"] = extraction_against_forward(full, bench.frozen_backbone, 10_000 if args.full else 96)
    results["finetune224"] = finetune_against_ceiling(full, bench.frozen_backbone, None if args.full else 64)
    results["compile224"] = compile_against_eager(full, bench.frozen_backbone, 20 if args.full else 3)
    print("3/4 tuning ...", flush=True)
    results["tuning"] = tuning_against_training(bench, work)
    print("4/4 tracking overhead ...", flush=True)
    # Two fine-tune epochs of 320 images on a CPU (the share grows as epochs shorten, so this
    # errs high), alternated 3 times; frozen runs take a second, so 15 times.
    results["overhead_finetune"] = tracking_overhead(bench, bench.finetune_backbone, False, 2, None if args.full else 320, 3)
    results["overhead_frozen"] = tracking_overhead(bench, bench.frozen_backbone, True, bench.epochs, None, 15)

    command = "python benchmarks/run.py" + "".join(f" {a}" for a in sys.argv[1:])
    report = render(results, bench, prep, prep_s, command)
    print("\n" + report)
    path = Path(args.results)
    previous = (
        path.read_text()
        if path.exists()
        else "# Benchmark results\n\nEach section is one run of `benchmarks/run.py`; ratios are measured side by side in that run.\n"
    )
    path.write_text(previous.rstrip() + "\n\n" + report)
    shutil.rmtree(work, ignore_errors=True)


def render(r: dict, bench: Bench, prep, prep_s: float, command: str) -> str:
    f, ft, t, of, oz = r["frozen"], r["finetune"], r["tuning"], r["overhead_finetune"], r["overhead_frozen"]
    x, f2, c = r["extract224"], r["finetune224"], r["compile224"]
    device = setup_device_name(bench)
    rows = [
        (
            f"frozen, {bench.epochs} epochs ({bench.frozen_backbone}): pipeline (decode into the cache included) vs tutorial loop",
            f"{f['speedup']:.1f} x faster ({f['pipeline_s']:.1f} s vs {f['tutorial_s']:.1f} s)",
            ">= 8 x",
            verdict(f["speedup"] >= 8),
        ),
        (
            f"fine-tune ({bench.finetune_backbone}, {ft['images']} images): pipeline / ceiling images per second",
            f"{ft['ratio']:.2f} ({ft['pipeline_img_s']:.1f} vs {ft['ceiling_img_s']:.1f} img/s)",
            ">= 0.9",
            verdict(ft["ratio"] >= 0.9),
        ),
        (
            f"tuning: {bench.trials} frozen trials / one frozen train step, both without model export",
            f"{t['ratio_to_one_run']:.2f} ({t['tune_s']:.1f} s vs {t['train_no_export_s']:.1f} s); {t['ratio_to_n_runs']:.3f} of {bench.trials} runs",
            "<= 2",
            verdict(t["ratio_to_one_run"] <= 2),
        ),
        *(overhead_row(kind, o, bench) for kind, o in (("fine-tune", of), ("frozen", oz))),
        (
            f"224 px, frozen feature extraction ({bench.frozen_backbone}, {x['images']} images, batch {bench.batch_size}): pipeline / forward ceiling images per second",
            f"{x['ratio']:.2f} ({x['pipeline_img_s']:.1f} vs {x['ceiling_img_s']:.1f} img/s)",
            ">= 0.9",
            verdict(x["ratio"] >= 0.9),
        ),
        (
            f"224 px, fine-tune ({bench.frozen_backbone}, {f2['images']} images, batch {bench.batch_size}): pipeline / training ceiling images per second",
            f"{f2['ratio']:.2f} ({f2['pipeline_img_s']:.1f} vs {f2['ceiling_img_s']:.1f} img/s)",
            ">= 0.9",
            verdict(f2["ratio"] >= 0.9),
        ),
        (
            f"224 px, torch.compile of the backbone's forward ({bench.frozen_backbone}): compiled / eager images per second, compile time, break-even",
            f"{c['compiled_img_s'] / c['eager_img_s']:.2f} ({c['compiled_img_s']:.1f} vs {c['eager_img_s']:.1f} img/s); compiling took {c['compile_s']:.0f} s, "
            f"paid back after {c['break_even_images']:,.0f} images",
            "pays within one extraction of the train split",
            verdict(c["break_even_images"] <= prep.dataset.split_sizes["train"]),
        ),
    ]
    lines = [
        f"## {date.today().isoformat()}, {device}",
        "",
        f"- machine: {machine()}",
        f"- command: `{command}`",
        f"- data: {prep.name}, {prep.dataset.split_sizes}, {bench.image_size} x {bench.image_size} px, batch {bench.batch_size}, "
        f"weights none (speed does not depend on the values); decoding once took {prep_s:.1f} s",
        f"- frozen val accuracy after {bench.epochs} epochs: pipeline {f['pipeline_val_acc']:.3f}, tutorial loop {f['tutorial_val_acc']:.3f} "
        "(with random weights the tutorial's raw features are tiny and its head barely moves; the pipeline standardises them: "
        "a difference of method, not of speed)",
        f"- tuning: the train step took {t['train_s']:.1f} s in all, of which {t['export_s']:.1f} s exporting the model "
        "(left out above, since a tune step exports nothing)",
        "- tracking overhead: every write the recorder makes (metrics and checkpoint, stored from its own thread, at most "
        "once a second) is inside the timed span, which ends only when the last one is stored; the median of the paired "
        "with - without differences is judged, their range beside it",
        "",
        "| measure | result | target | |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
        *[
            f"- tracking overhead, {kind}: each epoch's checkpoint ({size(o['checkpoint_mb'])}) is copied in the training thread; the "
            f"recorder's thread, which shares the {os.cpu_count()} cores with training, writes the newest one and the queued metrics at most "
            f"once a second; {o['overhead_ms']:+.0f} ms on a run of {o['epochs']} epochs and {o['run_s']:.2f} s"
            for kind, o in (("fine-tune", of), ("frozen", oz))
        ],
        "",
    ]
    return "\n".join(lines)


def size(mb: float) -> str:
    return f"{mb:.1f} MB" if mb >= 1 else f"{1000 * mb:.0f} kB"


def overhead_row(kind: str, o: dict, bench: Bench) -> tuple[str, str, str, str]:
    epoch = f"{o['epoch_s']:.1f} s" if o["epoch_s"] >= 1 else f"{1000 * o['epoch_s']:.0f} ms"
    backbone = bench.finetune_backbone if kind == "fine-tune" else bench.frozen_backbone
    low, high = o["spread_pct"]
    return (
        f"tracking overhead, {kind} ({backbone}, {epoch} epochs, runs of {o['run_s']:.1f} s): with vs without, "
        f"median of {o['repeats']} paired runs, every write included",
        f"{o['overhead_pct']:+.1f} % ({o['overhead_ms']:+.0f} ms a run; pairs from {low:+.1f} to {high:+.1f} %)",
        "<= 2 %",
        verdict(o["overhead_pct"] <= 2),
    )


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def setup_device_name(bench: Bench) -> str:
    device = pick_device(bench.device)
    return f"{device.type}{' with AMP ' + str(device.amp_dtype).removeprefix('torch.') if device.amp_dtype else ''}"


if __name__ == "__main__":
    main()
