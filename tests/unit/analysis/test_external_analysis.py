"""The external set against the internal one: drop, class balance, oracle threshold, shift, copies."""

import numpy as np
import pytest

from pipeline.analysis import external as ext
from pipeline.analysis.resampling import Resampling
from pipeline.data.checks import ManifestRow


def scored(n: int, prevalence: float, sens: float, spec: float, seed: int) -> ext.Scored:
    """A model's scores on n images: right with the given sensitivity and specificity at 0.5."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    right = np.where(y == 1, rng.random(n) < sens, rng.random(n) < spec)
    called = np.where(right, y, 1 - y)
    p = np.where(called == 1, 0.5 + 0.5 * rng.random(n), 0.5 * rng.random(n))
    return ext.Scored(y, p, Resampling.of(None, y, seed, resamples=1000))


def test_a_new_class_balance_alone_explains_the_drop():
    internal = scored(3000, 0.5, 0.95, 0.75, 0)
    external = scored(3000, 0.2, 0.95, 0.75, 1)  # the same rates, far fewer sick children
    d = ext.drop(internal, external, 0.5)
    # 0.5 x 0.95 + 0.5 x 0.75 = 0.85 against 0.2 x 0.95 + 0.8 x 0.75 = 0.79: six points, all from the balance.
    assert d["external_drop_acc"] == pytest.approx(0.06, abs=0.02)
    assert d["external_drop_acc_class_balance"] == pytest.approx(0.06, abs=0.01)
    assert d["external_drop_acc_class_balance_ci_low"] > 0
    assert d["external_drop_acc_ci_low"] <= d["external_drop_acc"] <= d["external_drop_acc_ci_high"]


def test_two_samples_of_one_population_show_no_drop_and_a_real_drop_is_found():
    same = ext.drop(scored(1500, 0.6, 0.9, 0.8, 2), scored(1500, 0.6, 0.9, 0.8, 3), 0.5)
    assert same["external_drop_acc_ci_low"] < 0 < same["external_drop_acc_ci_high"]
    assert same["external_drop_auc_ci_low"] < 0 < same["external_drop_auc_ci_high"]
    worse = ext.drop(scored(1500, 0.6, 0.9, 0.8, 2), scored(1500, 0.6, 0.7, 0.6, 3), 0.5)
    assert worse["external_drop_acc_ci_low"] > 0.1 and worse["external_drop_auc_ci_low"] > 0
    # The rates fell, not the balance: the balance explains next to nothing.
    assert abs(worse["external_drop_acc_class_balance"]) < 0.02


def test_the_figures_carry_intervals():
    f = ext.figures(scored(400, 0.5, 0.9, 0.8, 4), 0.5, "external")
    for k in ext.FIGURES:
        assert f[f"external_{k}_ci_low"] <= f[f"external_{k}"] <= f[f"external_{k}_ci_high"]
    assert f["external_sensitivity"] == pytest.approx(0.9, abs=0.06)


def test_the_oracle_threshold_keeps_the_internal_sensitivity_on_the_external_set():
    internal = scored(1000, 0.5, 0.9, 0.8, 5)
    outside = scored(1000, 0.5, 0.9, 0.8, 6)
    dimmer = ext.Scored(outside.y, outside.p * 0.6, outside.resampling)  # every score shrunk: fewer sick found at 0.5
    o = ext.oracle_threshold(internal, dimmer, 0.5)
    assert o["external_oracle_threshold"] < 0.5
    assert np.mean(dimmer.p[dimmer.y == 1] >= o["external_oracle_threshold"]) >= o["external_oracle_target_sensitivity"]
    # The highest such threshold: a hair above it, the sensitivity falls short.
    assert np.mean(dimmer.p[dimmer.y == 1] > o["external_oracle_threshold"]) < o["external_oracle_target_sensitivity"]


def test_shift_is_flagged_only_where_the_features_differ():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    alike = ext.shift(a, b, None, 0)
    assert alike["shift_auc_ci_low"] < 0.5 < alike["shift_auc_ci_high"]
    b[:, :3] += 1.5  # another scanner: three features move
    apart = ext.shift(a, b, None, 0)
    assert apart["shift_auc"] > 0.85 and apart["shift_auc_ci_low"] > 0.5


def row(path: str, content: str, phash: str, patient: str = "", split: str = "test") -> ManifestRow:
    return ManifestRow(path, split, "NORMAL", 64, 64, "L", content, patient, phash)


def test_copies_and_patients_of_training_and_validation_images_are_listed_with_their_reason():
    rng = np.random.default_rng(8)
    hashes = ["".join(rng.choice(list("0123456789abcdef"), 64)) for _ in range(3)]
    near = format(int(hashes[1], 16) ^ 0b1110, "064x")  # three of the 255 bits flipped (the 256th is unused)
    train = [
        row("train/a.png", "c1", hashes[0], "p1", "train"),
        row("train/b.png", "c2", hashes[1], "p2", "train"),
        row("train/c.png", "c3", hashes[2], "p3", "val"),  # validation re-split from train/
    ]
    outside = [
        row("x/copy.png", "c1", hashes[0]),
        row("x/near.png", "c9", near),
        row("x/patient.png", "c8", "", "p3"),
        row("x/new.png", "c7", "f" * 64, "p9"),
    ]
    shared = {s["path"]: s["reasons"] for s in ext.shared_with_train(train, outside, "", 16, same_source=True)}
    assert set(shared) == {"x/copy.png", "x/near.png", "x/patient.png"}
    assert shared["x/copy.png"] == ["identical pixels to train/a.png (training image)"]
    assert shared["x/near.png"] == ["near-duplicate (3 bits) of train/b.png (training image)"]
    assert shared["x/patient.png"] == ["patient p3, as train/c.png (validation image)"]
    # Another data set's patient p3 is not this one's: ids are compared within one source only.
    elsewhere = {s["path"] for s in ext.shared_with_train(train, outside, "", 16, same_source=False)}
    assert elsewhere == {"x/copy.png", "x/near.png"}


def external_figures(auc: float, drop: float) -> dict[str, float]:
    m = {"external_auc": auc, "external_drop_auc": drop}
    return m | {f"{k}_ci_low": v - 0.05 for k, v in m.items()} | {f"{k}_ci_high": v + 0.05 for k, v in m.items()}


def auc_pair(a: str, b: str, p: float) -> dict:
    return {"a": a, "b": b, "auc": {"p_holm": p, "distinguishable": p < 0.05}}


def test_the_model_that_travels_best_and_whether_the_test_set_could_tell():
    external = {"a (frozen)": external_figures(0.71, 0.22), "b (finetune)": external_figures(0.84, 0.10)}
    internal = {"a (frozen)": 0.95, "b (finetune)": 0.94}
    said = ext.travel_finding(
        "NIH", internal, external, [auc_pair("a (frozen)", "b (finetune)", 0.001)], [auc_pair("a (frozen)", "b (finetune)", 0.6)]
    )
    assert said.startswith("On NIH, b (finetune) travels best: external AUC 0.840 [0.790, 0.890], 0.100 [0.050, 0.150] below its internal test")
    assert "this set tells it from a (frozen) (AUC 0.710, paired p = 0.001, Holm)" in said
    assert "The internal test set ranked a (frozen) first (AUC 0.950 against 0.940): it could not tell which model travels" in said
    assert "did not tell b (finetune) from a (frozen) apart (p = 0.6)" in said
    # Where the internal ranking agrees and the external set cannot separate them, it says so.
    internal["b (finetune)"] = 0.97
    said = ext.travel_finding("NIH", internal, external, [auc_pair("b (finetune)", "a (frozen)", 0.3)], [])
    assert "this set cannot tell it from a (frozen)" in said and "The internal test set ranked b (finetune) first too." in said
    assert ext.travel_finding("NIH", {"a (frozen)": 0.9}, {"a (frozen)": external["a (frozen)"]}, [], []).endswith(
        "(one model: nothing to compare it with)."
    )
