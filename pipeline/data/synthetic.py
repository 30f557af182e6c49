"""The built-in demo set: synthetic chest radiographs, so the project runs with no download.

Each image is drawn from its own seed (seed, split, class, index), so the set is the same on
every machine and does not depend on the order of generation. A NORMAL image has a dark
background, a soft-tissue thorax, two air-filled lung fields, ribs, clavicles, a spine and a
mediastinum with the heart; a PNEUMONIA image adds patchy opacities inside the lungs. Pose,
size, exposure, noise and faint vessel markings vary in both classes, and some opacities are
faint, so the task is learnable but not trivial.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

# Bump when the drawing changes, so caches of older demo sets are not mistaken for this one.
VERSION = 1
DEFAULT_COUNTS = {"train": 120, "val": 50, "test": 40}  # val: enough to choose on (validation.py)
CLASSES = ("NORMAL", "PNEUMONIA")


def demo_dataset(cache_root: Path, seed: int, counts: dict[str, int] | None = None, size: int = 224) -> Path:
    """The demo set in the Kaggle layout under the cache, generated on first use."""
    counts = counts or DEFAULT_COUNTS
    tag = "-".join(f"{s}{n}" for s, n in counts.items())
    target = cache_root / "demo" / f"v{VERSION}-seed{seed}-{tag}-{size}px"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".building-"))
        write_demo(tmp, seed, counts, size)
        try:
            os.rename(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (target / "test").is_dir():  # not a rival's finished copy: a real failure
                raise
    return target


def write_demo(root: Path, seed: int, counts: dict[str, int], size: int) -> None:
    jobs = []
    patient = 0
    for split_index, (split, n) in enumerate(counts.items()):
        for class_index, label in enumerate(CLASSES):
            (root / split / label).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                patient += 1
                # Kaggle-style names, one patient per image, so the patient checks have keys to read.
                if label == "NORMAL":
                    name = f"IM-{patient:04d}-0001.png"
                else:
                    name = f"person{patient}_{'bacteria' if k % 3 else 'virus'}_{k}.png"
                jobs.append(((seed, split_index, class_index, k), size, root / split / label / name))
    if len(jobs) >= 64 and (os.cpu_count() or 1) > 1:
        with ProcessPoolExecutor() as pool:
            list(pool.map(_draw, jobs, chunksize=8))
    else:
        for job in jobs:
            _draw(job)


def _draw(job: tuple[tuple[int, ...], int, Path]) -> None:
    image_seed, size, path = job
    pneumonia = image_seed[2] == 1
    Image.fromarray(radiograph(np.random.default_rng(list(image_seed)), size, pneumonia)).save(path)


def radiograph(rng: np.random.Generator, size: int, pneumonia: bool) -> np.ndarray:
    # Normalised coordinates after a random pose: scale, shift and a small rotation.
    scale = rng.uniform(0.9, 1.1)
    angle = np.deg2rad(rng.uniform(-5, 5))
    shift = rng.uniform(-0.06, 0.06, size=2)
    v = np.linspace(-1, 1, size)
    yy, xx = np.meshgrid(v, v, indexing="ij")
    x = (np.cos(angle) * xx - np.sin(angle) * yy) / scale - shift[0]
    y = (np.sin(angle) * xx + np.cos(angle) * yy) / scale - shift[1]

    image = np.full((size, size), rng.uniform(8, 25))
    thorax = _soft_ellipse(x, y, 0.0, 0.1, 0.86, 1.05, 0.05)
    image += thorax * rng.uniform(95, 125)

    lung_width = rng.uniform(0.24, 0.3)
    lungs = np.zeros_like(image)
    for side, height in ((-1, rng.uniform(0.55, 0.65)), (1, rng.uniform(0.5, 0.6))):
        lungs = np.maximum(lungs, _soft_ellipse(x, y, side * 0.38, -0.05, lung_width, height, 0.06))
    image -= lungs * rng.uniform(55, 75)

    heart = _soft_ellipse(x, y, 0.12, 0.32, rng.uniform(0.26, 0.34), 0.26, 0.06)
    mediastinum = _soft_ellipse(x, y, 0.0, -0.1, 0.12, 1.3, 0.04)
    spine = _soft_ellipse(x, y, 0.0, 0.1, 0.05, 1.5, 0.02)
    diaphragm = thorax * (1 - lungs) / (1 + np.exp(np.minimum((0.45 + 0.15 * x**2 - y) / 0.03, 50.0)))
    image += np.maximum(heart, mediastinum) * rng.uniform(50, 70) + spine * 25 + diaphragm * rng.uniform(15, 30)

    # Posterior ribs: bands that run out from the spine and slope down towards the sides.
    ax = np.abs(x)
    beside_spine = (ax > 0.06) * (ax < 0.78) * thorax
    n_ribs = rng.integers(8, 11)
    for k in range(n_ribs):
        y0 = -0.7 + k * 1.15 / n_ribs + rng.normal(0, 0.01)
        curve = y0 + 0.9 * (ax - 0.15) ** 2 + 0.05 * ax
        image += np.exp(-(((y - curve) / 0.022) ** 2)) * beside_spine * rng.uniform(14, 24)
    clavicle = y - (-0.74 + 0.25 * ax)
    image += np.exp(-((clavicle / 0.03) ** 2)) * (ax > 0.05) * (ax < 0.55) * 30

    # Vessel markings in both classes: small faint blobs that a model must not call pneumonia.
    for _ in range(rng.integers(5, 12)):
        cx, cy = rng.choice([-1, 1]) * rng.uniform(0.2, 0.5), rng.uniform(-0.5, 0.4)
        image += _blob(x, y, cx, cy, rng.uniform(0.02, 0.05)) * lungs * rng.uniform(6, 14)

    if pneumonia:
        faint = rng.random() < 0.25
        for _ in range(rng.integers(1, 4)):
            side = rng.choice([-1, 1])
            cx, cy = side * rng.uniform(0.25, 0.5), rng.uniform(-0.3, 0.45)
            patch = sum(_blob(x, y, cx + rng.normal(0, 0.07), cy + rng.normal(0, 0.07), rng.uniform(0.04, 0.12)) for _ in range(rng.integers(3, 7)))
            texture = 0.6 + 0.4 * rng.random(image.shape)
            amplitude = rng.uniform(12, 22) if faint else rng.uniform(25, 55)
            image += np.clip(patch, 0, 1.5) * texture * lungs * amplitude

    contrast, gamma = rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.15)
    image = np.clip(image * contrast, 0, 255)
    image = 255 * (image / 255) ** gamma
    image += rng.normal(0, rng.uniform(2, 6), image.shape)
    image = _box_blur(image)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _soft_ellipse(x, y, cx, cy, rx, ry, edge):
    r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return 1.0 / (1.0 + np.exp(np.minimum((r - 1.0) / edge, 50.0)))


def _blob(x, y, cx, cy, sigma):
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))


def _box_blur(image: np.ndarray) -> np.ndarray:
    """A 3x3 mean: radiographs are never pixel-sharp, and it takes the edge off the noise."""
    padded = np.pad(image, 1, mode="edge")
    h, w = image.shape
    return sum(padded[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0
