"""The loops: one pass over a split (train or evaluate), the whole training with early stopping
and resumable state, and prediction.

Nothing here knows MLflow: `train_classifier` takes the model, the prepared data and the fit
settings, calls back after every epoch with the epoch's numbers and a checkpoint, and returns
the final state. Frozen mode trains only the head, on cached features; fine-tune mode trains
every layer on (lightly augmented) images.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipeline.console import bars_disabled
from pipeline.data import PreparedData
from pipeline.distributed import World
from pipeline.engine.augmentation import augment
from pipeline.engine.device import Device, batches, process_budget, source_of, to_model_input
from pipeline.engine.snapshots import PendingReads, done, live_state
from pipeline.errors import UserError
from pipeline.loading import InMemory, Streamed
from pipeline.models import Classifier, parameter_groups
from pipeline.settings import FitConfig


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    epoch_time_s: float


@dataclass
class FitState:
    """Where training stands: all a checkpoint needs besides the weights and optimizer."""

    epoch: int = 0
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    train_time_s: float = 0.0

    @property
    def best(self) -> EpochStats:
        return self.history[self.best_epoch - 1]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["history"] = [asdict(h) for h in self.history]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FitState:
        return cls(**{**d, "history": [EpochStats(**h) for h in d["history"]]})


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, normalised so a balanced set gets weight 1 for every class."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return torch.tensor(len(labels) / (num_classes * np.maximum(counts, 1)), dtype=torch.float32)


def run_epoch(
    module: nn.Module,
    source: InMemory | Streamed,
    labels: torch.Tensor,
    weight: torch.Tensor | None,
    device: Device,
    batch_size: int,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    images: bool = False,
    augment_images: bool = False,
    desc: str = "",
    scaler: torch.amp.GradScaler | None = None,
    world: World = World(),
) -> tuple[float, float]:
    """One pass over a split: trains when given an optimizer, else evaluates. Returns the loss
    (class-weighted mean over the epoch, `weight` per class or None) and the accuracy, over the
    whole split: across a world each rank takes its shard of every batch and the sums are
    all-reduced. `images`: the source holds uint8 images, else ready feature vectors.
    `scaler` (float16 autocast only) carries its loss scale from one epoch to the next."""
    training = optimizer is not None
    module.train(training)
    scaler = scaler or torch.amp.GradScaler(enabled=False)
    parts = batches(len(labels), batch_size, generator if training else None, world)
    # Drawn for whole global batches after the permutation, alike on every rank.
    draws = [torch.rand(len(p), 6, generator=generator) for p in parts] if augment_images else None
    item_weight = weight[labels] if weight is not None else torch.ones(len(labels))
    shards = [world.shard(p) for p in parts]
    # Weighted loss, weight, correct, seen: summed where they are computed and read once at the
    # end, so a GPU is not made to wait for every batch (float32 on MPS, which has no float64).
    sums = torch.zeros(4, dtype=torch.float32 if device.type == "mps" else torch.float64, device=device.torch_device)
    with torch.set_grad_enabled(training):
        for k, x in enumerate(tqdm(source.batches(shards), total=len(shards), desc=desc, unit="batch", disable=bars_disabled(), leave=False)):
            idx = shards[k]
            if not len(idx):  # evaluation of a batch smaller than the world
                continue
            x = to_model_input(x, device) if images else x.to(device.torch_device)
            if augment_images:
                x = augment(x, world.shard(draws[k]))
            y, w = labels[idx].to(device.torch_device), item_weight[idx].to(device.torch_device)
            # Reduced precision where it pays, the backbone's convolutions; a frozen run's head
            # is one matrix product on standardised features, kept in float32.
            with device.autocast() if images else contextlib.nullcontext():
                logits = module(x)
            weighted = F.cross_entropy(logits.float(), y, reduction="none") * w
            if training:
                # The global batch's weighted mean: this shard's part of the sum over the whole
                # batch's weight, times the world size since DDP averages gradients over ranks.
                loss = weighted.sum() * world.size / item_weight[parts[k]].sum().to(device.torch_device)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            correct = (logits.argmax(1) == y).sum()
            sums += torch.stack([t.to(sums.dtype) for t in (weighted.detach().sum(), w.sum(), correct, torch.tensor(len(y), device=correct.device))])
    loss_sum, weight_sum, correct, seen = world.sum(sums.tolist())
    return loss_sum / weight_sum, correct / seen


# The callback may hand back a future that reads the checkpoint's live tensors (the recorder's
# write); training waits for it before its next optimizer step. After the last epoch it is
# given no checkpoint (None).
EpochCallback = Callable[[EpochStats, FitState, Callable[[], dict] | None], Future | None]


class Diverged(UserError):
    """The loss became NaN, infinite or absurd: the weights are lost, no later epoch can mend them."""


# A training loss above this is divergence even while it is finite: chance scores ln 2 = 0.69,
# and a mean cross-entropy of 1,000 means the true class got probability e^-1000 on average.
DIVERGED_LOSS = 1000.0


def check_finite(stats: EpochStats, lr: float) -> None:
    if math.isfinite(stats.train_loss) and math.isfinite(stats.val_loss) and stats.train_loss <= DIVERGED_LOSS:
        return
    raise Diverged(
        f"training diverged at epoch {stats.epoch}: train loss {stats.train_loss}, val loss {stats.val_loss} "
        f"at lr {lr:g}; no model was kept. Try a smaller lr (e.g. lr={lr / 10:g}) or lr=auto"
    )


def train_classifier(
    model: Classifier,
    data: PreparedData,
    fit: FitConfig,
    lr: float,
    device: Device,
    seed: int,
    *,
    features: dict[str, torch.Tensor] | None = None,
    on_epoch: EpochCallback | None = None,
    checkpoint: dict | None = None,
    should_stop: Callable[[EpochStats], bool] | None = None,
    world: World = World(),
) -> FitState:
    """Train, keeping the epoch with the lowest validation loss (smoother than accuracy on a
    small validation set), stopping after `fit.patience` epochs without improvement.

    Frozen mode needs `features` (from `FeatureCache`); fine-tune mode reads the images.
    `on_epoch(stats, state, make_checkpoint)` is called after every epoch (`make_checkpoint`
    None after the last, which nothing would resume from); the checkpoint
    holds the live weights (see `snapshots.py`), so a callback that reads it later hands back
    a future, which training waits for before it next changes them. A checkpoint given back
    here continues training from its epoch. `should_stop(stats)` lets a caller (the tuner's
    pruner) end training early. At the end the model holds the kept epoch's weights.

    Across a `world` (torchrun), every rank calls this with the same arguments; the trainable
    part is wrapped in DistributedDataParallel, each rank steps on its shard of every global
    batch of `fit.batch_size`, and every rank sees the same epoch figures (give `on_epoch` on
    rank 0 only). Fine-tuning's batch norm normalises over each rank's shard, as DDP does.
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.to(device.torch_device)
    if device.channels_last:
        model.to(memory_format=torch.channels_last)
    if model.frozen:
        if features is None:
            raise ValueError("frozen mode trains on cached features; pass features=")
        trainable: nn.Module = model.head
        # The head learns on standardised features (the backbones' raw scales differ by orders
        # of magnitude: ~5 for ResNet50, ~1e-14 for an untrained EfficientNet); the scaling is
        # folded into the head's weights at the end, so the model still takes raw features.
        mean, std = feature_scale(features["train"])
        inputs = {s: ((features[s] - mean) / std).to(device.torch_device) for s in ("train", "val")}
        inputs = {s: InMemory(t) for s, t in inputs.items()}
    else:
        trainable = model
        inputs = {s: source_of(data.images(s), device, process_budget(fit, world)) for s in ("train", "val")}
    labels = {s: torch.from_numpy(data.labels(s)) for s in ("train", "val")}
    if len(labels["train"]) < 2 * world.size or fit.batch_size < 2 * world.size:
        raise UserError(
            f"{world.size} processes need at least two images each in every batch (batch norm cannot train on one): "
            f"batch_size is {fit.batch_size} and train holds {len(labels['train'])}; raise batch_size to {2 * world.size} or more, or lower nproc"
        )
    weight = class_weights(data.labels("train"), len(data.classes)) if fit.class_weights == "auto" else None
    stepped = trainable
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        stepped = DistributedDataParallel(trainable, device_ids=[world.local_rank] if device.type == "cuda" else None)
    if fit.compile and not model.frozen:  # a frozen run's head is one matrix product: nothing to gain
        stepped = torch.compile(stepped)
    optimizer = torch.optim.AdamW(parameter_groups(model, lr, fit.backbone_lr_scale), weight_decay=fit.weight_decay)
    # Cosine decay to 1 % over the planned epochs, stepped once per epoch.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(e, fit.epochs) / fit.epochs)))
    state = FitState()
    # float16 needs loss scaling (bfloat16 and float32 do not); its scale lives across epochs.
    scaler = torch.amp.GradScaler(device.type, enabled=device.amp_dtype == torch.float16)
    reads = PendingReads()
    # Scaler, DDP and compile all step through the optimizer: nothing changes the weights sooner.
    optimizer.register_step_pre_hook(lambda *_: reads.settle())
    best_weights: Future | None = None  # the first epoch is always the best so far
    if checkpoint is not None:
        trainable.load_state_dict(checkpoint["trainable"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state = FitState.from_dict(checkpoint["state"])
        # The kept weights, or (None) the checkpoint's own, which training goes on from.
        best_weights = done(checkpoint["best_trainable"]) if checkpoint["best_trainable"] else reads.copy(live_state(trainable))
        generator.set_state(checkpoint["generator"])
        torch.set_rng_state(checkpoint["torch_rng"])
        if checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        if checkpoint.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
    resumed_time = state.train_time_s

    def make_checkpoint() -> dict:
        return {
            "trainable": live_state(trainable),
            "optimizer": optimizer.state_dict(),  # its tensors change only at the next step
            "scheduler": scheduler.state_dict(),
            "state": state.to_dict(),
            # The kept weights, unless they are this very epoch's (then `trainable` holds them):
            # a fine-tuned ResNet50 checkpoint is 100 MB lighter in every improving epoch.
            "best_trainable": None if state.best_epoch == state.epoch else best_weights.result(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            # CUDA kernels are not all deterministic, so a resumed CUDA run is close, not bit-exact.
            "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        }

    images = not model.frozen
    while state.epoch < fit.epochs and not state.stopped_early:
        epoch = state.epoch + 1
        epoch_start = time.perf_counter()
        lr_now = optimizer.param_groups[0]["lr"]
        train_loss, train_acc = run_epoch(
            stepped,
            inputs["train"],
            labels["train"],
            weight,
            device,
            fit.batch_size,
            optimizer,
            generator,
            images=images,
            augment_images=images and fit.augment,
            desc=f"epoch {epoch} train",
            scaler=scaler,
            world=world,
        )
        # Validation through the plain module: DDP's forward would broadcast buffers, a collective
        # that ranks with different numbers of batches would wait on forever.
        val_loss, val_acc = run_epoch(
            trainable,
            inputs["val"],
            labels["val"],
            weight,
            device,
            fit.batch_size,
            images=images,
            desc=f"epoch {epoch} val",
            world=world,
        )
        scheduler.step()
        stats = EpochStats(epoch, train_loss, train_acc, val_loss, val_acc, lr_now, time.perf_counter() - epoch_start)
        check_finite(stats, lr)
        state.epoch = epoch
        state.history.append(stats)
        if val_loss < state.best_val_loss:
            state.best_epoch, state.best_val_loss, state.epochs_without_improvement = epoch, val_loss, 0
            best_weights = reads.copy(live_state(trainable))
        else:
            state.epochs_without_improvement += 1
        if fit.patience and state.epochs_without_improvement >= fit.patience and epoch < fit.epochs:
            state.stopped_early = True
        state.train_time_s = resumed_time + time.perf_counter() - start
        if on_epoch is not None:
            # After the last epoch there is nothing to resume: the model is saved next, and a run
            # killed before that repeats one epoch. No checkpoint (None) spares its write.
            last = state.epoch >= fit.epochs or state.stopped_early
            reads.add(on_epoch(stats, state, None if last else make_checkpoint))
        if should_stop is not None and should_stop(stats):
            break
    reads.settle()
    if best_weights is not None:
        trainable.load_state_dict(best_weights.result())
    if model.frozen:
        fold_scale_into(model.head, mean.to(device.torch_device), std.to(device.torch_device))
    model.eval()
    return state


def feature_scale(train_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train_features.mean(0), train_features.std(0)
    return mean, std.clamp_min(1e-6 * float(std.max()) + 1e-30)


@torch.no_grad()
def fold_scale_into(head: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> None:
    """W (f - m) / s + b  ==  (W / s) f + (b - (W / s) m): the same head on raw features."""
    head.weight.div_(std)
    head.bias.sub_(head.weight @ mean)


@torch.inference_mode()
def predict_logits(model: nn.Module, images: np.ndarray, batch_size: int, device: Device) -> np.ndarray:
    """Class logits (N, C) of uint8 images (N, H, W), no augmentation. The model must be in
    eval mode already (an exported program cannot be switched). In float32 whatever precision
    it was trained in: the model is scored as it is served, so a threshold chosen on these
    probabilities means the same in the served model."""
    parts = batches(len(images), batch_size)
    out = []
    for x in tqdm(source_of(images, device).batches(parts), total=len(parts), desc="predict", unit="batch", disable=bars_disabled(), leave=False):
        out.append(model(to_model_input(x, device)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def predict_proba(model: nn.Module, images: np.ndarray, batch_size: int, device: Device) -> np.ndarray:
    """Class probabilities (N, C): the softmax of `predict_logits`."""
    logits = predict_logits(model, images, batch_size, device)
    return torch.softmax(torch.from_numpy(logits), 1).numpy() if len(logits) else logits
