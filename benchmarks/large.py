"""Larger than memory: 100,000 generated images prepared and trained with bounded memory.

    python benchmarks/large.py                       # 100,000 images; about 15 minutes on 2 cores, 9 GB of disk
    python benchmarks/large.py --images 20000        # a quicker look

1. generate: a Kaggle-layout folder of N unique 224 x 224 JPEG radiographs (80 / 10 / 10 %).
2. the decode ceiling: PIL's decode and resize of the same files, one process, times the cores.
3. prepare at 224 px (in a child process): wall clock, images per second against that ceiling
   (target >= 0.9), and peak resident memory of the process and of its decoding workers.
4. prepare again at 32 px, then one training epoch, frozen and fine-tuned (in child processes,
   with `max_memory_gb` below the split sizes so both stream from the cache): peak memory.
5. streamed against in-memory training throughput on the same batches, alternated (>= 0.9).
Appends its table, with the machine and the command, to RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import machine  # noqa: E402

from pipeline.data.synthetic import radiograph  # noqa: E402

BASES = 256  # drawn radiographs; every file is one of them with its own noise, so no two are equal
SMALL = 32  # the training size: an epoch over 100,000 images in minutes on 2 cores
BACKBONE = "mobilenet_v3_small"


def _write_chunk(job: tuple[Path, int, int, int, int]) -> None:
    root, start, stop, total, size = job
    rng = np.random.default_rng(0)
    bases = [radiograph(rng, 224, k % 2 == 1) for k in range(BASES)]
    bases = [np.asarray(Image.fromarray(b).resize((size, size), Image.Resampling.BILINEAR)).astype(np.int16) for b in bases]
    for k in range(start, stop):
        split = "train" if k < 0.8 * total else "val" if k < 0.9 * total else "test"
        label = "PNEUMONIA" if k % 2 else "NORMAL"
        noise = np.random.default_rng(k).integers(-6, 7, (size, size), dtype=np.int16)
        pixels = np.clip(bases[(k // 2) % (BASES // 2) * 2 + k % 2] + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / split / label / f"img_{k:07d}.jpeg", quality=92)


def generate(root: Path, n: int, workers: int, size: int = 224) -> float:
    """The files, unless a complete earlier generation of the same set is there (deterministic)."""
    done = root / ".generated"
    if done.exists() and done.read_text() == f"{n} {size}":
        return 0.0
    for split in ("train", "val", "test"):
        for label in ("NORMAL", "PNEUMONIA"):
            (root / split / label).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    step = max(1, min(2000, n // workers))
    chunks = [(root, a, min(a + step, n), n, size) for a in range(0, n, step)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_chunk, chunks))
    done.write_text(f"{n} {size}")
    return time.perf_counter() - start


def plain_pil(job: tuple[list[str], int]) -> int:
    """The plain loop prepare is set against: open, convert to L, resize to the target."""
    files, size = job
    for file in files:
        with Image.open(file) as img:
            np.asarray(img.convert("L").resize((size, size), Image.Resampling.BILINEAR))
    return len(files)


def decode_ceiling(root: Path, sample: int, size: int, workers: int) -> float:
    """PIL's images per second on these cores: each of `workers` processes reads, decodes and
    resizes its share of the files, and nothing else (no listing, hashing, writing or
    gathering). Its pool is started before the clock."""
    files = [str(f) for f in sorted((root / "train" / "NORMAL").iterdir())[:sample]]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(plain_pil, [(files[:workers], size)] * workers))  # start the workers, warm the code
        start = time.perf_counter()
        list(pool.map(plain_pil, [(files[k::workers], size) for k in range(workers)]))
        return len(files) / (time.perf_counter() - start)


CHILD = r"""
import json, resource, sys, time
from pipeline.settings import DataConfig, FitConfig, ModelConfig
def vm(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":")) / 1024
task = json.loads(sys.argv[1])
import importlib
importlib.import_module("pipeline.data" if task["kind"] == "prepare" else "pipeline.engine")  # the task's imports, before any work
imports_mb = vm("VmRSS")
start = time.perf_counter()
if task["kind"] == "prepare":
    from pipeline.data import prepare_dataset
    prep = prepare_dataset(DataConfig(data_dir=task["data"], image_size=task["size"], cache_dir=task["cache"], patient_pattern=""))
    out = {"sizes": prep.dataset.split_sizes, "root": str(prep.dataset.root)}
else:
    from pipeline.engine import setup_training, train_classifier
    data = DataConfig(data_dir=task["data"], image_size=task["size"], cache_dir=task["cache"], patient_pattern="")
    fit = FitConfig(epochs=1, batch_size=64, device="cpu", patience=0, max_memory_gb=task["budget_gb"])
    setup = setup_training(data, ModelConfig(task["backbone"], task["frozen"], "none"), fit)
    model = setup.new_model()
    features = setup.features(model)
    state = train_classifier(model, setup.prep.dataset, fit, 1e-3, setup.device, 0, features=features and features.splits)
    out = {"val_acc": state.history[-1].val_acc, "train_images": setup.prep.dataset.split_sizes["train"]}
out["seconds"] = time.perf_counter() - start
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so it would report the launcher's memory.
out["peak_rss_mb"] = vm("VmHWM")
out["imports_rss_mb"] = imports_mb
out["workers_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print("RESULT " + json.dumps(out))
"""


def child(task: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(task)], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{task['kind']} failed:\n{done.stderr[-3000:]}")
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])


def streamed_against_in_memory(data: str, cache: str, batches: int, repeats: int) -> dict:
    """Fine-tuning steps on the same batches, from memory and streamed, alternated."""
    import torch

    from pipeline.engine.device import source_of
    from pipeline.engine.loop import run_epoch
    from pipeline.engine.setup import setup_training
    from pipeline.models import parameter_groups
    from pipeline.settings import DataConfig, FitConfig, ModelConfig

    setup = setup_training(
        DataConfig(data_dir=data, image_size=SMALL, cache_dir=cache, patient_pattern=""),
        ModelConfig(BACKBONE, False, "none"),
        FitConfig(batch_size=64, device="cpu"),
    )
    images, labels = setup.prep.dataset.images("train"), torch.from_numpy(setup.prep.dataset.labels("train"))
    n = batches * 64
    model = setup.new_model()
    optimizer = torch.optim.AdamW(parameter_groups(model, 1e-4, 0.1))
    in_memory = source_of(images[:n], setup.device)  # a plain array: held in memory
    streamed = source_of(images, setup.device, budget=0)  # the cache file, read as it goes

    def epoch(source) -> float:
        start = time.perf_counter()
        run_epoch(model, source, labels[:n], None, setup.device, 64, optimizer, torch.Generator().manual_seed(0), images=True, augment_images=True)
        return time.perf_counter() - start

    epoch(in_memory)  # warm-up
    pairs = [(epoch(in_memory), epoch(streamed)) for _ in range(repeats)]
    ratios = [m / s for m, s in pairs]
    return {
        "images": n,
        "in_memory_img_s": n / statistics.median(m for m, _ in pairs),
        "streamed_img_s": n / statistics.median(s for _, s in pairs),
        "ratio": statistics.median(ratios),
        "spread": (min(ratios), max(ratios)),
        "streamed_class": type(streamed).__name__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--work", default="", help="a folder for the images and caches (default: a temporary one, removed after)")
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="cxr-large-"))
    data, cache, cores = work / "images", work / "cache", os.cpu_count() or 1
    print(f"generating {args.images} images in {data} ...", flush=True)
    shutil.rmtree(cache, ignore_errors=True)  # decoded images and features: everything is measured cold
    shutil.rmtree(work / "cache-1024", ignore_errors=True)
    generate_s = generate(data, args.images, cores)
    ceiling = decode_ceiling(data, 4000, 224, cores)
    print(f"decode ceiling {ceiling:.0f} img/s on {cores} cores; preparing at 224 px ...", flush=True)
    full = child({"kind": "prepare", "data": str(data), "size": 224, "cache": str(cache)})
    entry_gb = sum(f.stat().st_size for f in Path(full["root"]).glob("*_images.npy")) / 1024**3
    shutil.rmtree(full["root"])  # 5 GB at 100,000 images: the 32 px entry is what trains
    print(f"prepare 224: {full}; preparing at {SMALL} px ...", flush=True)
    small = child({"kind": "prepare", "data": str(data), "size": SMALL, "cache": str(cache)})
    split_mb = small["sizes"]["train"] * SMALL * SMALL / 1024**2
    budget_gb = round(split_mb / 1024 / 4, 4)  # a quarter of the train split: it must stream
    print(f"training one epoch, budget {budget_gb} GB ...", flush=True)
    frozen = child(
        {"kind": "train", "data": str(data), "size": SMALL, "cache": str(cache), "backbone": BACKBONE, "frozen": True, "budget_gb": budget_gb}
    )
    finetune = child(
        {"kind": "train", "data": str(data), "size": SMALL, "cache": str(cache), "backbone": BACKBONE, "frozen": False, "budget_gb": budget_gb}
    )
    print("streamed vs in memory ...", flush=True)
    throughput = streamed_against_in_memory(str(data), str(cache), batches=60, repeats=3)
    # The same measure on images of a radiograph's usual size, where decoding is most of the work.
    print("prepare of 1,000 images of 1024 px ...", flush=True)
    big = work / "images-1024"
    generate(big, 1000, cores, size=1024)
    big_ceiling = decode_ceiling(big, 400, 224, cores)
    big_prep = child({"kind": "prepare", "data": str(big), "size": 224, "cache": str(work / "cache-1024")})
    big_rate = 1000 / big_prep["seconds"]

    n = args.images
    rate = n / full["seconds"]
    rows = [
        (
            f"prepare {n:,} images at 224 px (listing, content hashes, decode, resize, cache): images per second / the plain PIL loop (open, convert to L, resize) on the same {cores} cores",
            f"{rate / ceiling:.2f} ({rate:.0f} vs {ceiling:.0f} img/s; {full['seconds']:.0f} s)",
            ">= 0.9",
            "met" if rate / ceiling >= 0.9 else "NOT met",
        ),
        (
            f"prepare 1,000 images of 1024 x 1024 px at 224 px: images per second / the plain PIL loop (open, convert to L, resize) on the same {cores} cores",
            f"{big_rate / big_ceiling:.2f} ({big_rate:.0f} vs {big_ceiling:.0f} img/s; {big_prep['seconds']:.1f} s)",
            ">= 0.9",
            "met" if big_rate / big_ceiling >= 0.9 else "NOT met",
        ),
        (
            f"prepare at 224 px: peak resident memory, main process / largest decoding worker (the decoded splits are {entry_gb:.1f} GB)",
            f"{full['peak_rss_mb']:.0f} MB / {full['workers_peak_rss_mb']:.0f} MB",
            "< 1 GB each",
            "met" if max(full["peak_rss_mb"], full["workers_peak_rss_mb"]) < 1024 else "NOT met",
        ),
        (
            f"one frozen epoch ({BACKBONE}, {SMALL} px, {frozen['train_images']:,} train images, features extracted streaming): peak resident memory",
            f"{frozen['peak_rss_mb']:.0f} MB ({frozen['seconds']:.0f} s)",
            "< 2 GB",
            "met" if frozen["peak_rss_mb"] < 2048 else "NOT met",
        ),
        (
            f"one fine-tune epoch ({BACKBONE}, {SMALL} px, {finetune['train_images']:,} train images, streamed, budget {budget_gb * 1024:.0f} MB): peak resident memory",
            f"{finetune['peak_rss_mb']:.0f} MB ({finetune['seconds']:.0f} s)",
            "< 2 GB",
            "met" if finetune["peak_rss_mb"] < 2048 else "NOT met",
        ),
        (
            f"fine-tune ({BACKBONE}, {SMALL} px, {throughput['images']} images a pass): streamed / in-memory images per second, median of 3 alternated pairs",
            f"{throughput['ratio']:.2f} ({throughput['streamed_img_s']:.0f} vs {throughput['in_memory_img_s']:.0f} img/s; pairs {throughput['spread'][0]:.2f} to {throughput['spread'][1]:.2f})",
            ">= 0.9",
            "met" if throughput["ratio"] >= 0.9 else "NOT met",
        ),
    ]
    command = "python benchmarks/large.py" + "".join(f" {a}" for a in sys.argv[1:])
    report = "\n".join(
        [
            f"## {date.today().isoformat()}, larger than memory, cpu",
            "",
            f"- machine: {machine()}",
            f"- command: `{command}`",
            f"- data: {n:,} generated 224 x 224 JPEG radiographs ({f'written in {generate_s:.0f} s' if generate_s else 'generated by an earlier run'}), splits {small['sizes']}; "
            f"prepared at 224 px into {entry_gb:.1f} GB of decoded arrays (never all in memory: decoding workers write their rows "
            "into a scratch file, splits are copied from it by the kernel), then at 32 px for training",
            f"- peak memory: the kernel's high-water mark of resident memory (VmHWM) of each child process, its imports included "
            f"(resident before any work: {full['imports_rss_mb']:.0f} MB for prepare, {finetune['imports_rss_mb']:.0f} MB with torch for training); for the decoding workers, the largest ru_maxrss among them (forked from "
            "the prepare process, so its pages count in theirs)",
            "",
            "| measure | result | target | |",
            "|---|---|---|---|",
            *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
            "",
        ]
    )
    print("\n" + report)
    path = Path(args.results)
    path.write_text((path.read_text().rstrip() + "\n\n" if path.exists() else "") + report)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
