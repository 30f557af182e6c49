"""Faster than the libraries it stands on: prepare, tracking, precision and compile, each
measured side by side in this one run, which adds its section to RESULTS.md.

    python benchmarks/speed.py                  # about 15 minutes on 2 CPU cores
    python benchmarks/speed.py --device cuda    # the same on a GPU (AMP and channels_last there)

1. prepare (listing, the three hashes, decode, resize, cache, checks and data report) against
   the plain PIL loop (open, convert to L, resize to the target: one process per core, started
   before the clock), alternated in pairs, on kermany-2400 at 224 and 64 px and on 1,000
   generated 1024 px JPEGs at 224 px; each part's cost an image beside what Pillow's reduced
   decode and SHA-256 cost. Fidelity: the mean and largest absolute grey-level difference of
   what prepare stored against a full decode and resize of the same files, and the test accuracy
   of one model trained on each.
2. tracking: the train step's recorder (metrics, every checkpoint, until the last is stored)
   against none, fine-tune and frozen, ResNet50 and EfficientNet-B0, paired and alternated.
3. precision: fp32 against bf16 autocast at 224 px: extraction and fine-tune images per
   second, and a frozen EfficientNet-B0's validation accuracy from each, with intervals.
4. torch.compile: the first compile in an empty compile cache and the second, in a new process
   with the cache the first left, and the images after which each has paid.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

import mlflow
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from large import generate, plain_pil  # noqa: E402
from run import KERMANY, Bench, machine, timed, tracking_overhead  # noqa: E402

from pipeline import tracking  # noqa: E402
from pipeline.analysis.uncertainty import mcnemar_exact, proportion_interval  # noqa: E402
from pipeline.data import Preparation, prepare_dataset  # noqa: E402
from pipeline.data import cache as data_cache  # noqa: E402
from pipeline.engine.device import cpu_has_bf16, pick_device, to_model_input  # noqa: E402
from pipeline.engine.features import FeatureCache  # noqa: E402
from pipeline.engine.loop import predict_proba, train_classifier  # noqa: E402
from pipeline.engine.setup import setup_training  # noqa: E402
from pipeline.models import build_classifier, parameter_groups, resolve_weights  # noqa: E402
from pipeline.settings import DataConfig, FitConfig, ModelConfig  # noqa: E402
from pipeline.tracking import recorder  # noqa: E402

# -- 1. prepare ----------------------------------------------------------------------------------


REPEATS = 5  # prepare runs for about a second, and this machine's speed drifts from one second to the next: alternated pairs, their median


def prepare_row(name: str, data_dir: str, size: int, work: Path, workers: int) -> dict:
    """The plain loop and prepare (cold: a new cache each time) alternated `REPEATS` times, so
    that a drift of the machine's speed reaches both sides of a pair alike; the loop's pool is
    started and warmed before its clock."""
    files = sorted(str(p) for p in Path(data_dir).rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    cache = work / f"cache-{name}-{size}"
    plain, seconds, fast = [], [], None
    with ProcessPoolExecutor(workers) as pool, PhaseClock() as phases:
        list(pool.map(plain_pil, [(files[:8], size)] * workers))
        for _ in range(REPEATS):
            start = time.perf_counter()
            list(pool.map(plain_pil, [(files[k::workers], size) for k in range(workers)]))
            plain.append(time.perf_counter() - start)
            shutil.rmtree(cache, ignore_errors=True)
            took, fast = prepared(data_dir, size, cache)
            seconds.append(took)
    shutil.rmtree(f"{cache}-full", ignore_errors=True)
    _, full = prepared(data_dir, size, Path(f"{cache}-full"), full_decode=True)
    ratios = sorted(p / s for p, s in zip(plain, seconds))
    return {
        "name": name,
        "size": size,
        "n": len(files),
        "stored": sorted({Image.open(f).size[0] for f in files[::50]}),  # widths, a sample
        "costs": cost_per_image(files, size),
        "plain_img_s": len(files) / statistics.median(plain),
        "prepare_img_s": len(files) / statistics.median(seconds),
        "prepare_s": statistics.median(seconds),
        "ratio": statistics.median(ratios),
        "ratio_range": (ratios[0], ratios[-1]),
        "phases": phases.medians(),
        "fidelity": fidelity(fast, full),
        "full": full,
        "fast": fast,
    }


class PhaseClock:
    """Where a prepare's time goes, from its own steps: listing (and naming the cache entry),
    decoding (both processes), writing the entry, and the checks and data report; the median of
    each over the runs timed while the clock is on."""

    PHASES = {"locate_dataset": "listing", "decode_images": "decoding", "build_entry": "entry", "data_report": "report"}

    def __enter__(self) -> PhaseClock:
        from pipeline import data

        self.seconds: dict[str, list[float]] = {phase: [] for phase in self.PHASES.values()}
        self.originals = {name: getattr(data, name) for name in self.PHASES}
        for name, phase in self.PHASES.items():
            setattr(data, name, self._clocked(self.originals[name], phase))
        return self

    def _clocked(self, function, phase: str):
        def clocked(*args, **kwargs):
            seconds, result = timed(lambda: function(*args, **kwargs))
            self.seconds[phase].append(seconds)
            return result

        return clocked

    def __exit__(self, *_) -> None:
        from pipeline import data

        for name, function in self.originals.items():
            setattr(data, name, function)

    def medians(self) -> dict[str, float]:
        return {phase: statistics.median(s) for phase, s in self.seconds.items() if s}


def prepared(data_dir: str, size: int, cache: Path, full_decode: bool = False):
    """prepare_dataset into a fresh cache, timed; `full_decode` reads every file at full scale
    and resizes it in one bilinear pass, as the plain loop does, for the fidelity reference."""
    decode, resize = data_cache.decode, data_cache.resize_square
    if full_decode:  # the decoding workers are forked from here: they see the patched names
        data_cache.decode = lambda image, max_pixels, at_least=0: decode(image, max_pixels)
        data_cache.resize_square = lambda grey, size: np.asarray(Image.fromarray(grey).resize((size, size), Image.Resampling.BILINEAR))
    try:
        # generated files name no patients (kermany's do, in their names)
        config = DataConfig(data_dir=data_dir, image_size=size, cache_dir=str(cache), **({"patient_pattern": ""} if "generated" in data_dir else {}))
        seconds, prep = timed(lambda: prepare_dataset(config))
    finally:
        data_cache.decode, data_cache.resize_square = decode, resize
    return seconds, prep.dataset


def fidelity(fast, full) -> dict:
    """Grey-level differences, every stored pixel of every split."""
    diffs = [np.abs(fast.images(s).astype(np.int16) - full.images(s).astype(np.int16)) for s in ("train", "val", "test")]
    return {"mean": float(np.mean(np.concatenate([d.ravel() for d in diffs]))), "max": int(max(d.max() for d in diffs))}


def _pillow_reduced(data: bytes, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img.draft("L", (size, size))
        return np.asarray(img.convert("L"))


def cost_per_image(files: list[str], size: int) -> dict[str, float]:
    """Microseconds an image of each part of prepare's work, one process, on a sample; beside
    them what the same part cost done the libraries' plain way (Pillow's reduced decode, SHA-256
    of the pixels), which prepare replaced."""
    from pipeline.data.sources import fingerprint, pixel_hash, read_image
    from pipeline.data.units import perceptual_hash

    data = [Path(f).read_bytes() for f in files[:300]]
    grey = [read_image(d, at_least=size).pixels for d in data]
    small = [data_cache.resize_square(g, size) for g in grey]
    parts = {
        "plain loop": lambda: [np.asarray(Image.open(io.BytesIO(d)).convert("L").resize((size, size), Image.Resampling.BILINEAR)) for d in data],
        "decode": lambda: [read_image(d, at_least=size) for d in data],
        "resize": lambda: [data_cache.resize_square(g, size) for g in grey],
        "file hash": lambda: [fingerprint(d) for d in data],
        "pixel hash": lambda: [pixel_hash(g) for g in grey],
        "perceptual hash": lambda: [perceptual_hash(x) for x in small],
        "pillow decode": lambda: [_pillow_reduced(d, size) for d in data],
        "pixel sha256": lambda: [hashlib.sha256(g).hexdigest() for g in grey],
    }
    costs = {name: 1e6 * min(timed(fn)[0] for _ in range(3)) / len(data) for name, fn in parts.items()}
    return {**costs, "hashes": costs["file hash"] + costs["pixel hash"] + costs["perceptual hash"]}


def accuracy_on(data, backbone: str, size: int, device: str, split: str) -> np.ndarray:
    """Which `split` images a frozen model (weights none, 10 epochs) trained on `data` gets right."""
    # Both variants have the same data digest (same files): features are kept in each one's cache.
    FeatureCache._memory.clear()
    config = DataConfig(data_dir=data.source, image_size=size, cache_dir=str(data.root.parents[1]))
    fit = FitConfig(epochs=10, batch_size=32, device=device, patience=0, precision="fp32")
    setup = setup_training(config, ModelConfig(backbone, True, "none"), fit, prep=Preparation(data, {}, "", True))
    model = setup.new_model()
    features = setup.features(model)
    train_classifier(model, data, setup.fit_config, 1e-3, setup.device, 0, features=features.splits)
    return predict_proba(model, data.images(split), 32, setup.device).argmax(1) == data.labels(split)


class WriteClock:
    """Each checkpoint write's wall time and the CPU time of the thread that makes it, while the
    recorder runs as it does in training (the cause where tracking costs more than the write)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __enter__(self) -> WriteClock:
        self.original = recorder.write_checkpoint

        def clocked(checkpoint, path, buffer):
            wall, cpu = time.perf_counter(), time.thread_time()
            self.original(checkpoint, path, buffer)
            self.wall.append(time.perf_counter() - wall)
            self.cpu.append(time.thread_time() - cpu)

        recorder.write_checkpoint = clocked
        return self

    def __exit__(self, *_) -> None:
        recorder.write_checkpoint = self.original

    def summary(self) -> dict:
        return {"write_ms": 1000 * statistics.median(self.wall), "write_cpu_ms": 1000 * statistics.median(self.cpu)} if self.wall else {}


def measured_tracking(bench: Bench, backbone: str, frozen: bool, epochs: int, images: int | None, repeats: int) -> dict:
    with WriteClock() as clock:
        overhead = tracking_overhead(bench, backbone, frozen, epochs, images, repeats)
    return {**overhead, **clock.summary(), "images": images, "image_size": bench.image_size}


def metrics_transaction(epochs: int = 10, repeats: int = 7) -> dict:
    """One tracking-store transaction holding a run's epoch metrics (as the recorder stores a
    frozen run's, all at once): the floor under any tracked run, whatever the checkpoint."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client, seconds = MlflowClient(), []
    with tracking.step_run("train", "resnet50", "frozen", name="metrics-transaction") as run:
        for k in range(repeats):
            metrics = [Metric(name, 0.5, 0, k * epochs + e) for e in range(epochs) for name in tracking.EPOCH_METRICS]
            seconds.append(timed(lambda metrics=metrics: client.log_batch(run.info.run_id, metrics=metrics))[0])
    return {"ms": 1000 * statistics.median(seconds), "epochs": epochs, "metrics": epochs * len(tracking.EPOCH_METRICS), "repeats": repeats}


# -- 3. precision --------------------------------------------------------------------------------


def images_per_second(device_setting: str, precision: str, backbone: str, train: bool, n: int = 64) -> float:
    """A backbone's forward (extraction) or forward-backward-step (fine-tune) at 224 px on
    random batches of 32, the first batch left out."""
    device = pick_device(device_setting, precision=precision)
    torch.manual_seed(0)
    model = build_classifier(backbone, resolve_weights(backbone, "none", 0), 2, not train, 0).to(device.torch_device)
    x = to_model_input(torch.randint(0, 255, (32, 224, 224), dtype=torch.uint8), device)
    y = torch.randint(0, 2, (32,), device=device.torch_device)
    optimizer = torch.optim.AdamW(parameter_groups(model, 1e-4, 0.1))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def batch():
        if train:
            model.train()
            with device.autocast():
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        else:
            with torch.inference_mode(), device.autocast():
                model.features(x)

    batch()
    sync()
    start = time.perf_counter()
    for _ in range(n // 32):
        batch()
    sync()
    return n / (time.perf_counter() - start)


def frozen_val_accuracy(data_dir: str, cache: Path, device: str, precision: str) -> tuple[np.ndarray, float]:
    """A frozen EfficientNet-B0 (weights none) at 224 px: its features in this precision, then
    10 epochs of the head; which validation images it gets right, and the extraction's seconds."""
    config = DataConfig(data_dir=data_dir, image_size=224, cache_dir=str(cache))
    setup = setup_training(
        config, ModelConfig("efficientnet_b0", True, "none"), FitConfig(epochs=10, batch_size=32, device=device, patience=0, precision=precision)
    )
    model = setup.new_model()
    seconds, features = timed(lambda: setup.features(model))
    train_classifier(model, setup.prep.dataset, setup.fit_config, 1e-3, setup.device, 0, features=features.splits)
    right = predict_proba(model, setup.prep.dataset.images("val"), 32, setup.device).argmax(1) == setup.prep.dataset.labels("val")
    return right, seconds


# -- 4. compile ----------------------------------------------------------------------------------

COMPILE_CHILD = r"""
import json, sys, time
from dataclasses import replace
import torch
from pipeline.engine.setup import setup_training
from pipeline.settings import DataConfig, FitConfig, ModelConfig
cache, device = sys.argv[1], sys.argv[2]
setup = setup_training(DataConfig(data_dir="", image_size=224, cache_dir=cache), ModelConfig("efficientnet_b0", True, "none"), FitConfig(device=device, compile=True))
model = setup.new_model().eval().to(setup.device.torch_device)
x = torch.rand(32, 1, 224, 224, device=setup.device.torch_device)
sync = torch.cuda.synchronize if setup.device.type == "cuda" else (lambda: None)
def rate(forward, batches=3):
    forward(x); sync(); start = time.perf_counter()
    for _ in range(batches): forward(x)
    sync(); return batches * 32 / (time.perf_counter() - start)
with torch.inference_mode(), setup.device.autocast():
    eager = rate(model.features)
    compiled = torch.compile(model.features)
    start = time.perf_counter(); compiled(x); sync(); compile_s = time.perf_counter() - start
    fast = rate(compiled)
print(json.dumps({"eager": eager, "compiled": fast, "compile_s": compile_s, "precision": setup.precision}))
"""


def compile_twice(cache: Path, device: str) -> list[dict]:
    """Two processes, one after the other, sharing the data cache (and so the compile cache)."""
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", COMPILE_CHILD, str(cache), device], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return runs


def break_even(compile_s: float, eager: float, compiled: float) -> float:
    saved = 1 / eager - 1 / compiled
    return compile_s / saved if saved > 0 else float("inf")


# -- the run -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    parser.add_argument("--work", default="", help="scratch folder (default: a new temporary one)")
    args = parser.parse_args()
    if not KERMANY.is_dir():
        raise SystemExit(f"error: this benchmark reads kermany-2400 at {KERMANY}; set CXR_KERMANY_DIR to its folder")
    work = Path(args.work or tempfile.mkdtemp(prefix="cxr-speed-"))
    for stale in work.glob("cache-*"):  # every measure starts cold, also where --work is reused
        shutil.rmtree(stale)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    workers = os.cpu_count() or 1
    started = time.perf_counter()
    r: dict = {}

    print("1/4 prepare against the plain PIL loop ...", flush=True)
    big = work / "generated-1024"
    generate(big, 1000, workers, size=1024)
    r["prepare"] = [
        prepare_row("kermany-2400", str(KERMANY), 224, work, workers),
        prepare_row("kermany-2400", str(KERMANY), 64, work, workers),
        prepare_row("generated 1024 px", str(big), 224, work, workers),
    ]
    small = r["prepare"][1]
    fast_right = accuracy_on(small["fast"], "efficientnet_b0", 64, args.device, "test")
    full_right = accuracy_on(small["full"], "efficientnet_b0", 64, args.device, "test")
    r["prepare_accuracy"] = {
        "fast": proportion_interval(fast_right.sum(), len(fast_right)),
        "full": proportion_interval(full_right.sum(), len(full_right)),
        "paired": mcnemar_exact(fast_right, full_right),
    }

    print("2/4 tracking overhead ...", flush=True)
    bench = Bench(str(KERMANY), 64, 32, 10, "efficientnet_b0", "resnet50", 320, 0, args.device, workers, work / "cache-tracking")
    r["tracking"] = {
        # 5 epochs: four checkpoints (the last epoch writes none: nothing resumes from it), the
        # first two into new slot files, the others rewriting them in place, as in a longer run
        ("resnet50", "fine-tune"): measured_tracking(bench, "resnet50", False, 5, 320, 5),
        ("efficientnet_b0", "fine-tune"): measured_tracking(bench, "efficientnet_b0", False, 5, 320, 5),
        ("resnet50", "frozen"): measured_tracking(bench, "resnet50", True, 10, None, 15),
        ("efficientnet_b0", "frozen"): measured_tracking(bench, "efficientnet_b0", True, 10, None, 15),
    }
    r["metrics_transaction"] = metrics_transaction()

    print("3/4 precision ...", flush=True)
    bf16 = pick_device(args.device).type == "cuda" or cpu_has_bf16()
    precisions = ("fp32", "bf16") if bf16 else ("fp32",)
    r["precision"] = {
        p: {
            "extract": {b: images_per_second(args.device, p, b, False, 96) for b in ("efficientnet_b0", "resnet50")},
            "finetune": {b: images_per_second(args.device, p, b, True, 64) for b in ("efficientnet_b0", "resnet50")},
            "val": frozen_val_accuracy(str(KERMANY), work / f"cache-precision-{p}", args.device, p),
        }
        for p in precisions
    }

    print("4/4 torch.compile, twice ...", flush=True)
    r["compile"] = compile_twice(work / "cache-compile", args.device)

    # The measurements, kept so that the table can be written again without measuring again.
    (work / "measured.pkl").write_bytes(pickle.dumps(r))
    command = "python benchmarks/speed.py" + "".join(f" {a}" for a in sys.argv[1:])
    report = render(r, command, time.perf_counter() - started, args.device)
    print("\n" + report)
    path = Path(args.results)
    path.write_text(path.read_text().rstrip() + "\n\n" + report)


def _prepare_cause(p: dict, in_run: float) -> str:
    """Why a prepare row falls short of 1.5 x, from its measured parts."""
    c, ph = p["costs"], p["phases"]
    fixed = ph["listing"] + ph["entry"] + ph["report"]
    if p["stored"] == [p["size"]]:
        return (
            "the files are stored at the target size, so a reduced-scale decode has nothing to skip: prepare decodes what the loop "
            f"decodes (its decode {c['decode']:.0f} us, the loop's whole work {c['plain loop']:.0f}), and hashes it ({c['hashes']:.0f} us)"
        )
    if c["plain loop"] / in_run >= 1.5:
        return (
            f"an image's share of the decoding is {c['plain loop'] / in_run:.2f} x the loop's rate, but the listing, the entry and the report "
            f"({fixed:.3f} s, {100 * fixed / p['prepare_s']:.0f} % of prepare) are work the loop does not do, which {p['n']:,} images do not amortise"
        )
    own = c["decode"] + c["resize"] + c["hashes"]
    return (
        f"an image's share of the decoding, in each process with the worker's start and the hand-over of runs, is {in_run:.0f} us against "
        f"the loop's {c['plain loop']:.0f}, where its parts alone take {own:.0f}: the decode {c['decode']:.0f} (DCT scaling leaves the "
        f"entropy decoding whole), the file's SHA-256 for the data digest {c['file hash']:.0f}"
    )


def render(r: dict, command: str, seconds: float, device_setting: str) -> str:
    rows = []
    for p in r["prepare"]:
        ratio, (low, high) = p["ratio"], p["ratio_range"]
        widths = str(p["stored"][0]) if len(p["stored"]) == 1 else f"{p['stored'][0]}-{p['stored'][-1]}"
        rows.append(
            (
                f"prepare {p['name']} ({p['n']:,} images, stored {widths} px wide) at {p['size']} px: images per second / the plain PIL loop (open, convert to L, resize) on the same {os.cpu_count()} cores",
                f"{ratio:.2f}, {low:.2f} to {high:.2f} over {REPEATS} alternated pairs (medians {p['prepare_img_s']:.0f} vs {p['plain_img_s']:.0f} img/s; {p['prepare_s']:.2f} s); grey levels against a full decode + resize: mean {p['fidelity']['mean']:.3f}, largest {p['fidelity']['max']}",
                ">= 1.5",
                "met" if ratio >= 1.5 else "NOT met",
            )
        )
    costs = []
    for p in r["prepare"]:
        c, ph = p["costs"], p["phases"]
        own = c["decode"] + c["resize"] + c["hashes"]
        in_run = ph["decoding"] * os.cpu_count() / p["n"] * 1e6  # an image's share of the decoding, in each process
        costs.append(
            f"- prepare {p['name']} at {p['size']} px: {p['prepare_s']:.2f} s, of which listing {ph['listing']:.3f} s, decoding "
            f"{ph['decoding']:.3f} s ({in_run:.0f} us an image in each of {os.cpu_count()} processes, start included), writing the entry "
            f"{ph['entry']:.3f} s, checks and data report {ph['report']:.3f} s. Microseconds an image, its parts timed alone in one process: "
            f"plain loop {c['plain loop']:.0f}; prepare's decode {c['decode']:.0f} (Pillow's reduced decode {c['pillow decode']:.0f}), resize "
            f"{c['resize']:.0f}, hashes {c['hashes']:.0f}: the file's SHA-256 {c['file hash']:.0f}, the pixels' XXH3 {c['pixel hash']:.0f} "
            f"(SHA-256 {c['pixel sha256']:.0f}), the perceptual {c['perceptual hash']:.0f}; {own:.0f} in all, {c['plain loop'] / own:.2f} x the loop's rate"
            + ("" if p["ratio"] >= 1.5 else f". Not met: {_prepare_cause(p, in_run)}")
        )
    a = r["prepare_accuracy"]
    held = a["paired"]["p_value"] >= 0.05
    rows.append(
        (
            "test accuracy, frozen efficientnet_b0 (weights none, 64 px, 10 epochs) trained on kermany-2400 as prepared vs fully decoded",
            f"{a['fast'].value:.3f} [{a['fast'].low:.3f}, {a['fast'].high:.3f}] vs {a['full'].value:.3f} [{a['full'].low:.3f}, {a['full'].high:.3f}]; McNemar p = {a['paired']['p_value']:.2f} ({a['paired']['only_a_right']} / {a['paired']['only_b_right']} images only one gets right)",
            "unchanged within its interval",
            "met" if held and a["full"].low <= a["fast"].value <= a["full"].high else "NOT met",
        )
    )
    for (backbone, kind), o in r["tracking"].items():
        rows.append(
            (
                f"tracking overhead, {kind} ({backbone}, {1000 * o['epoch_s']:.0f} ms epochs, runs of {o['run_s']:.1f} s, checkpoint {o['checkpoint_mb']:.1f} MB): with vs without, median of {o['repeats']} paired runs, every write included",
                f"{o['overhead_pct']:+.1f} % ({o['overhead_ms']:+.0f} ms a run; pairs from {o['spread_pct'][0]:+.1f} to {o['spread_pct'][1]:+.1f} %); "
                f"per checkpointed epoch {o['overhead_ms'] / (o['epochs'] - 1):+.0f} ms, {o['overhead_ms'] / 10 / (o['epochs'] - 1) / o['epoch_s']:+.1f} % of an epoch"
                + (
                    f"; a checkpoint write {o['write_ms']:.0f} ms, {o['write_cpu_ms']:.0f} ms of its thread's CPU (median)" if "write_ms" in o else ""
                ),
                "<= 2 %",
                "met" if o["overhead_pct"] <= 2 else "NOT met",
            )
        )
    for (backbone, kind), o in r["tracking"].items():
        per_epoch = o["overhead_ms"] / (o["epochs"] - 1)
        if kind == "fine-tune" and o["overhead_pct"] > 2 and "write_ms" in o:
            costs.append(
                f"- tracking, {backbone} fine-tune: each checkpoint ({o['checkpoint_mb']:.0f} MB) costs the run {per_epoch:.0f} ms, its write "
                f"{o['write_cpu_ms']:.0f} ms of CPU: training's threads fill the {os.cpu_count()} cores, so the writer's time is taken from them "
                f"(and they wait for each other at every operator while one is preempted); per epoch that is 2 % of an epoch of "
                f"{per_epoch / 20:.0f} s or more, where this benchmark's are {o['epoch_s']:.1f} s ({o['images']} images at {o['image_size']} px)"
            )
    t = r["metrics_transaction"]
    floor = t["ms"]
    frozen_run_s = min(o["run_s"] for (_, kind), o in r["tracking"].items() if kind == "frozen")
    costs.append(
        f"- tracking's floor: one transaction storing a {t['epochs']}-epoch run's {t['metrics']} metrics in the SQLite store takes {floor:.1f} ms "
        f"(median of {t['repeats']}), {100 * floor / 1000 / frozen_run_s:.1f} % of a {frozen_run_s:.2f} s frozen run by itself"
        + (
            ": at that length storing the metrics durably alone exceeds the 2 % target, whatever the checkpoint"
            if floor / 1000 / frozen_run_s > 0.02
            else ""
        )
    )
    prec = r["precision"]
    if "bf16" in prec:
        for what in ("extract", "finetune"):
            for backbone in ("efficientnet_b0", "resnet50"):
                fp, bf = prec["fp32"][what][backbone], prec["bf16"][what][backbone]
                label = "frozen feature extraction" if what == "extract" else "fine-tune step (forward, backward, AdamW)"
                rows.append(
                    (
                        f"224 px, {label} ({backbone}, batch 32): bf16 autocast / fp32 images per second",
                        f"{bf / fp:.2f} ({bf:.1f} vs {fp:.1f} img/s)",
                        "> 1 to pick bf16",
                        "pays" if bf > fp else "does not pay",
                    )
                )
        (fp_right, fp_s), (bf_right, bf_s) = prec["fp32"]["val"], prec["bf16"]["val"]
        fi, bi = proportion_interval(fp_right.sum(), len(fp_right)), proportion_interval(bf_right.sum(), len(bf_right))
        paired = mcnemar_exact(bf_right, fp_right)  # only_a_right: images bf16 alone gets right
        holds = paired["p_value"] >= 0.05 and fi.low <= bi.value <= fi.high
        rows.append(
            (
                "224 px, frozen efficientnet_b0 (weights none) on kermany-2400: validation accuracy, bf16 vs fp32 features and head",
                f"{bi.value:.3f} [{bi.low:.3f}, {bi.high:.3f}] vs {fi.value:.3f} [{fi.low:.3f}, {fi.high:.3f}]; McNemar p = {paired['p_value']:.2f} ({paired['only_a_right']} / {paired['only_b_right']} images only one gets right); extraction {bf_s:.0f} s vs {fp_s:.0f} s",
                "within fp32's interval",
                "holds" if holds else "does NOT hold",
            )
        )
    first, second = r["compile"]
    rows.append(
        (
            f"torch.compile of efficientnet_b0's forward at 224 px ({first['precision']}): first compile (empty cache) / second (a new process, the cache the first left)",
            f"{first['compile_s']:.1f} s / {second['compile_s']:.1f} s; compiled {second['compiled']:.1f} vs eager {second['eager']:.1f} img/s; pays after {break_even(first['compile_s'], first['eager'], first['compiled']):,.0f} images the first time, {break_even(second['compile_s'], second['eager'], second['compiled']):,.0f} after",
            "second compile in seconds",
            "met" if second["compile_s"] < 10 else "NOT met",
        )
    )
    device = pick_device(device_setting)
    lines = [
        f"## {date.today().isoformat()}, speed past the libraries, {device.type}",
        "",
        f"- machine: {machine()}; bf16 in hardware: {cpu_has_bf16() if device.type == 'cpu' else 'n/a'}",
        f"- command: `{command}` ({seconds / 60:.0f} min)",
        "- prepare: a JPEG is decoded by libjpeg-turbo's own API (simplejpeg) at the smallest M/8 scale that keeps both sides at least the "
        "target size, luma only; this process and one forked worker share the runs of images; the hashes prepare makes (the file's bytes "
        "for the data digest: SHA-256; the pixels: XXH3; the perceptual hash) are in prepare's time, not in the plain loop's",
        "- tracking: the checkpoint holds the live weights and is serialised by the recorder's thread while the next epoch's first batch runs; "
        "training waits for it only at its next optimizer step; the best weights are copied on a thread of their own; checkpoints go to two "
        "slot files in turn, written with O_DIRECT from one reused aligned buffer (around the page cache), and checkpoints/last.pt is a "
        "hard link to the one last finished",
        "",
        "| measure | result | target | |",
        "|---|---|---|---|",
        *[f"| {m} | {res} | {t} | {v} |" for m, res, t, v in rows],
        "",
        *costs,
        "",
    ]
    if device.type != "cuda":
        lines.append(
            "GPU: not run. No GPU machine was lent to this task; `python benchmarks/speed.py --device cuda` and "
            "`python benchmarks/run.py --device cuda --full` record AMP, channels_last and the four-way compare there."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
