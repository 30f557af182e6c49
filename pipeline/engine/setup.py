"""One configuration, ready to train: its data, weights and device resolved once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.data import Preparation, prepare_dataset
from pipeline.data.cache import FORMAT_VERSION, cache_root
from pipeline.distributed import World
from pipeline.engine.device import Device, pick_device, process_budget
from pipeline.engine.features import FeatureCache, Features
from pipeline.models import Classifier, Weights, build_classifier, check_input_size, init_head, resolve_weights
from pipeline.settings import DataConfig, FitConfig, ModelConfig

DEFAULT_LR = {"frozen": 1e-3, "finetune": 1e-4}


@dataclass
class TrainingSetup:
    """The data, weights and device of one configuration, resolved once; a tuning study trains
    many models from one setup, and in frozen mode they all share one feature extraction."""

    data_config: DataConfig
    model_config: ModelConfig
    fit_config: FitConfig
    prep: Preparation
    weights: Weights
    device: Device
    world: World = World()
    _frozen_model: Classifier | None = None

    @property
    def seed(self) -> int:
        return training_seed(self.data_config, self.fit_config)

    @property
    def precision(self) -> str:
        return str(self.device.amp_dtype or torch.float32).removeprefix("torch.")

    @property
    def feature_key(self) -> str:
        """All that decides the features: backbone, weights, data, image size, the decoded
        cache's format and the precision they were computed in (bfloat16 on CUDA, float32 here)."""
        d = self.prep.dataset
        return f"{self.model_config.backbone}-{self.weights.key}-{d.digest}-{d.image_size}px-v{FORMAT_VERSION}-{self.precision}"

    @property
    def compile_cache(self) -> Path:
        """Where torch.compile keeps what it compiled for this configuration, so that the next
        run of it loads the kernels instead of compiling again (both times in benchmarks/RESULTS.md):
        keyed like a reuse key by all that decides the graph."""
        m, d = self.model_config, self.prep.dataset
        mode = "frozen" if m.frozen else "finetune"
        key = f"{m.backbone}-{self.weights.key}-{mode}-{d.image_size}px-{self.device.type}-{self.precision}-torch{torch.__version__}"
        return cache_root(self.data_config.cache_dir) / "compiled" / key

    def identity(self) -> dict[str, str]:
        """What a run's reuse key needs beyond its parameters: the weights by content (a path
        may be overwritten), and the device and precision it resolved to."""
        return {"weights": self.weights.key, "device": self.device.type, "precision": self.precision}

    def new_model(self) -> Classifier:
        """A model as at the start of training. In frozen mode the backbone is built once and
        only the head starts afresh (from the seed), since the backbone never changes."""
        if not self.model_config.frozen:
            return self._build()
        if self._frozen_model is None:
            self._frozen_model = self._build()
        else:
            init_head(self._frozen_model.head, self.seed)
        return self._frozen_model

    def _build(self) -> Classifier:
        model = build_classifier(self.model_config.backbone, self.weights, len(self.prep.dataset.classes), self.model_config.frozen, self.seed)
        check_input_size(model, self.prep.dataset.image_size)
        return model

    def features(self, model: Classifier, splits: tuple[str, ...] = ("train", "val"), measured_in: dict | None = None) -> Features | None:
        """Frozen mode: the backbone's features, extracted on first use, cached after.
        `measured_in` (e.g. the run and device) is stored with what this call extracts."""
        if not self.model_config.frozen:
            return None
        cache = FeatureCache(cache_root(self.data_config.cache_dir))
        return cache.get_or_extract(
            self.feature_key,
            model,
            self.prep.dataset,
            self.fit_config.batch_size,
            self.device,
            splits,
            measured_in,
            self.world,
            process_budget(self.fit_config, self.world),
            self.fit_config.compile,
        )


def training_seed(data: DataConfig, fit: FitConfig) -> int:
    """Seed of the model's initialisation (random weights included) and training order:
    `train_seed`, else the data's."""
    return fit.train_seed if fit.train_seed is not None else data.seed


def setup_training(data: DataConfig, model: ModelConfig, fit: FitConfig, prep: Preparation | None = None, world: World = World()) -> TrainingSetup:
    """Across a world, rank 0 prepares the data and fetches the weights first; the others then
    find them in the caches."""
    device = pick_device(fit.device, fit.num_threads, fit.precision)
    if device.type == "cuda" and world.distributed:
        device = Device(torch.device("cuda", world.local_rank), device.amp_dtype, device.channels_last)
    prep = prep or world.main_first(lambda: prepare_dataset(data))
    weights = world.main_first(lambda: resolve_weights(model.backbone, model.weights, training_seed(data, fit)))
    setup = TrainingSetup(data, model, fit, prep, weights, device, world)
    if fit.compile:  # read by inductor at each compile: this process's next compile uses it
        setup.compile_cache.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(setup.compile_cache)
    return setup
