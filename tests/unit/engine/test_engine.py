import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import make_dataset

from pipeline.data.cache import FORMAT_VERSION
from pipeline.distributed import World
from pipeline.engine import device as engine_device
from pipeline.engine import features as engine_features
from pipeline.engine.augmentation import augment
from pipeline.engine.device import pick_device
from pipeline.engine.features import FeatureCache
from pipeline.engine.loop import class_weights, feature_scale, fold_scale_into, predict_proba, train_classifier
from pipeline.engine.setup import setup_training
from pipeline.errors import UserError
from pipeline.settings import DataConfig, FitConfig, ModelConfig


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("engine") / "d", {"train": 12, "val": 4, "test": 4}, size=32)


def setup(data_dir, tmp_path, frozen=True, **fit):
    """float32 unless a test asks otherwise: its figures are compared with float32 references."""
    return setup_training(
        DataConfig(data_dir=str(data_dir), image_size=32, cache_dir=str(tmp_path / "cache"), val_source="folder"),
        ModelConfig(backbone="resnet18", frozen=frozen, weights="none"),
        FitConfig(batch_size=8, device="cpu", **{"precision": "fp32", **fit}),
    )


def fit_once(s, epochs=3, **kwargs):
    model = s.new_model()
    features = s.features(model)
    state = train_classifier(
        model,
        s.prep.dataset,
        replace(s.fit_config, epochs=epochs),
        1e-3,
        s.device,
        s.data_config.seed,
        features=features and features.splits,
        **kwargs,
    )
    return model, state


def test_a_training_epoch_never_ends_on_a_batch_of_one():
    parts = engine_device.batches(17, 8, torch.Generator().manual_seed(0))
    assert [len(p) for p in parts] == [8, 9] and sorted(torch.cat(parts).tolist()) == list(range(17))
    assert [len(p) for p in engine_device.batches(17, 8)] == [8, 8, 1]  # evaluation keeps every batch as it is
    # Two processes: each needs two items of every batch, so a last batch of three joins the one before.
    assert [len(p) for p in engine_device.batches(19, 8, torch.Generator().manual_seed(0), World(0, 2))] == [8, 11]


def test_augmentation_keeps_shape_and_range_and_follows_the_draws():
    x = torch.rand(4, 1, 32, 32)
    draws = torch.rand(4, 6, generator=torch.Generator().manual_seed(1))
    a, b = augment(x, draws), augment(x, draws.clone())
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, x)
    # An image's augmentation is its own row of the draws: a shard of the batch gets the same pictures.
    assert torch.allclose(augment(x[1::2], draws[1::2]), a[1::2], atol=1e-6)


def test_class_weights_are_inverse_frequency():
    w = class_weights(np.array([0, 0, 0, 1]), 2)
    assert w.tolist() == pytest.approx([4 / 6, 2.0])
    assert class_weights(np.array([0, 1]), 2).tolist() == [1.0, 1.0]


def test_folding_the_feature_scale_gives_the_same_logits():
    features = torch.randn(50, 8) * 1e3 + 5
    mean, std = feature_scale(features)
    head = torch.nn.Linear(8, 2)
    expected = head((features - mean) / std)
    fold_scale_into(head, mean, std)
    assert torch.allclose(head(features), expected, rtol=1e-4, atol=1e-3)


def test_cpu_is_picked_when_nothing_else_is_there():
    device = pick_device("auto")
    assert device.type in ("cpu", "cuda", "mps")
    assert pick_device("cpu", precision="fp32").amp_dtype is None and not pick_device("cpu").channels_last


def test_auto_precision_on_the_cpu_is_bf16_only_where_the_cpu_computes_in_it(monkeypatch):
    monkeypatch.setattr(engine_device, "cpu_has_bf16", lambda: True)
    assert pick_device("cpu").amp_dtype == torch.bfloat16 and pick_device("cpu", precision="bf16").amp_dtype == torch.bfloat16
    monkeypatch.setattr(engine_device, "cpu_has_bf16", lambda: False)
    assert pick_device("cpu").amp_dtype is None
    with pytest.raises(UserError, match="no bfloat16 instructions .* pass precision=fp32"):
        pick_device("cpu", precision="bf16")


@pytest.mark.parametrize("frozen", [True, False])
def test_same_seed_same_metrics(data_dir, tmp_path, frozen):
    _, first = fit_once(setup(data_dir, tmp_path, frozen), epochs=2)
    _, second = fit_once(setup(data_dir, tmp_path, frozen), epochs=2)

    def strip(state):
        return [(h.train_loss, h.train_acc, h.val_loss, h.val_acc, h.lr) for h in state.history]

    assert strip(first) == strip(second)
    assert len(first.history) == 2 and first.history[1].lr < first.history[0].lr  # cosine decay


def test_frozen_training_leaves_the_backbone_untouched(data_dir, tmp_path):
    s = setup(data_dir, tmp_path)
    model = s.new_model()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    train_classifier(model, s.prep.dataset, replace(s.fit_config, epochs=2), 1e-2, s.device, 0, features=s.features(model).splits)
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())


def test_features_are_extracted_once_then_read_from_memory_or_disk(data_dir, tmp_path, monkeypatch):
    s = setup(data_dir, tmp_path)
    # Keyed by all that decides them, the decoded cache's format and the precision included.
    assert s.feature_key.endswith(f"-32px-v{FORMAT_VERSION}-float32") and s.weights.key in s.feature_key
    model = s.new_model()
    first = s.features(model, measured_in={"run_id": "r1", "device": "cpu"})
    assert not first.cached and first.extraction_s > 0 and first.cached_extraction_s == 0 and not first.cached_from
    assert set(first.splits) == {"train", "val"} and first.splits["train"].shape == (24, 512)
    test = s.features(model, ("train", "test"))  # test only when asked for; train is reused
    assert not test.cached and test.splits["test"].shape == (8, 512) and torch.equal(test.splits["train"], first.splits["train"])
    monkeypatch.setattr(engine_features, "extract_features", lambda *a, **k: pytest.fail("extracted again"))
    assert s.features(model).cached
    FeatureCache._memory.clear()  # as in a new process
    again = s.features(model, measured_in={"run_id": "r2", "device": "cpu"})
    # Nothing extracted now: the time is the first extraction's, said to be measured there.
    assert again.cached and again.extraction_s == 0
    assert again.cached_extraction_s == pytest.approx(first.extraction_s)
    assert again.cached_from == [{"run_id": "r1", "device": "cpu", "split": "train"}, {"run_id": "r1", "device": "cpu", "split": "val"}]
    assert torch.equal(again.splits["val"], first.splits["val"])


def test_frozen_head_learns_and_the_kept_model_predicts_on_raw_images(data_dir, tmp_path):
    s = setup(data_dir, tmp_path)
    model, state = fit_once(s, epochs=4)
    probs = predict_proba(model, s.prep.dataset.images("val"), 8, s.device)
    assert probs.shape == (8, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert state.best_epoch == min(range(1, 5), key=lambda e: state.history[e - 1].val_loss)
    # the kept epoch's val accuracy is what the folded model scores on the val images
    assert (probs.argmax(1) == s.prep.dataset.labels("val")).mean() == pytest.approx(state.best.val_acc)


def test_early_stopping_after_patience_epochs_without_a_better_val_loss(data_dir, tmp_path):
    s = setup(data_dir, tmp_path, patience=1)
    _, state = fit_once(s, epochs=30)
    assert state.stopped_early and state.epoch < 30
    assert state.epoch == state.best_epoch + 1


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resuming_from_a_checkpoint_continues_exactly(data_dir, tmp_path, monkeypatch, precision):
    monkeypatch.setattr(engine_device, "cpu_has_bf16", lambda: True)  # bf16 runs anywhere, only slower without
    s = setup(data_dir, tmp_path, frozen=False, augment=True, precision=precision)
    _, whole = fit_once(s, epochs=3)
    saved = {}

    def keep(stats, state, make_checkpoint):
        if stats.epoch == 2:
            saved["checkpoint"] = make_checkpoint()
            raise KeyboardInterrupt  # the run dies here

    with pytest.raises(KeyboardInterrupt):
        fit_once(s, epochs=3, on_epoch=keep)
    _, resumed = fit_once(s, epochs=3, checkpoint=saved["checkpoint"])
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    assert [(h.train_loss, h.val_loss) for h in resumed.history] == [(h.train_loss, h.val_loss) for h in whole.history]
    # All a CUDA run needs too (empty here: no float16 loss scaling, no CUDA generator on the CPU).
    assert {"scaler", "cuda_rng", "generator", "torch_rng", "optimizer", "scheduler"} <= set(saved["checkpoint"])
    # The run's identity for reuse: weights by content, the device and precision it resolved to.
    assert s.identity() == {"weights": s.weights.key, "device": "cpu", "precision": {"fp32": "float32", "bf16": "bfloat16"}[precision]}


def test_a_checkpoint_read_after_the_epoch_holds_that_epochs_weights(data_dir, tmp_path):
    """The checkpoint hands over the live weights; a reader that takes its time (the recorder's
    write) still reads the epoch's end, because training waits for it before its next step."""
    s = setup(data_dir, tmp_path, frozen=False)
    at_once, late = {}, {}

    def copy(checkpoint):
        return {k: v.clone() for k, v in checkpoint["trainable"].items()}

    def read_at_once(stats, state, make_checkpoint):
        if make_checkpoint is not None:  # none after the last epoch: nothing resumes from it
            at_once[stats.epoch] = copy(make_checkpoint())

    def read_late(stats, state, make_checkpoint):
        if make_checkpoint is None:
            return None
        checkpoint = make_checkpoint()

        def slow():
            time.sleep(0.5)  # the next epoch's first batches run meanwhile
            late[stats.epoch] = copy(checkpoint)

        return ThreadPoolExecutor(1).submit(slow)

    fit_once(s, epochs=3, on_epoch=read_at_once)
    fit_once(s, epochs=3, on_epoch=read_late)
    assert sorted(at_once) == sorted(late) == [1, 2]
    for epoch in (1, 2):
        assert all(torch.equal(at_once[epoch][k], late[epoch][k]) for k in at_once[epoch])
    assert not all(torch.equal(at_once[1][k], at_once[2][k]) for k in at_once[1])  # the weights did move


def test_compiled_extraction_gives_the_eager_features_and_keeps_its_kernels_for_the_next_run(data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    s = setup(data_dir, tmp_path, compile=True)
    model = s.new_model()
    images = s.prep.dataset.images("val")
    eager = engine_features.extract_features(model, images, 8, s.device)
    compiled = engine_features.extract_features(model, images, 8, s.device, compile_backbone=True)
    assert torch.allclose(compiled, eager, rtol=1e-3, atol=1e-4)
    # The compiled kernels are in the data cache, in a folder named by what decides them.
    assert s.compile_cache.parent == tmp_path / "cache" / "compiled" and f"resnet18-{s.weights.key}-frozen-32px-cpu-float32" in s.compile_cache.name
    assert any(p.is_file() for p in s.compile_cache.rglob("*"))


def test_compiled_fine_tuning_trains_like_eager(data_dir, tmp_path):
    _, eager = fit_once(setup(data_dir, tmp_path, frozen=False), epochs=1)
    _, compiled = fit_once(setup(data_dir, tmp_path, frozen=False, compile=True), epochs=1)
    assert compiled.history[0].train_loss == pytest.approx(eager.history[0].train_loss, rel=1e-3)
    assert compiled.history[0].val_loss == pytest.approx(eager.history[0].val_loss, rel=1e-3)
