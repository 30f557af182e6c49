"""Units of independence: patients, identical pictures and near-copies, linked once for every use."""

import numpy as np
from conftest import make_dataset
from PIL import Image

from pipeline.data import prepare_dataset
from pipeline.data.checks import seen_in_train
from pipeline.data.synthetic import radiograph
from pipeline.data.units import hash_bits, near_duplicate_index_pairs, perceptual_hash, unit_groups
from pipeline.settings import DataConfig


def test_near_duplicates_are_found_by_their_hashes_and_nothing_else():
    rng = np.random.default_rng(0)
    pictures = [radiograph(np.random.default_rng(k), 96, k % 2 == 1) for k in range(60)]
    brighter = np.clip(pictures[0].astype(int) + 3, 0, 255).astype(np.uint8)
    smaller = np.asarray(Image.fromarray(pictures[1]).resize((80, 80)))
    hashes = [perceptual_hash(p) for p in pictures + [brighter, smaller]]
    i, j, bits = near_duplicate_index_pairs(hash_bits(hashes), 16)
    assert {(a, b) for a, b in zip(i.tolist(), j.tolist())} == {(0, 60), (1, 61)}
    assert bits.max() <= 16
    # Multi-index search finds what comparing every pair finds.
    noisy = hash_bits(hashes) ^ (rng.random((62, 255)) < 0.03)
    fast = near_duplicate_index_pairs(noisy, 16)
    a = noisy.astype(int)
    distance = a @ (1 - a).T + (1 - a) @ a.T
    brute = {(x, y) for x, y in zip(*np.nonzero(distance <= 16)) if x < y}
    assert {(x, y) for x, y in zip(fast[0].tolist(), fast[1].tolist())} == brute


def test_units_join_patients_pictures_and_near_copies():
    hashes = [perceptual_hash(radiograph(np.random.default_rng(k), 64, False)) for k in range(5)]
    hashes[4] = hashes[3]
    units = unit_groups(["p1", "p1", None, None, None], ["a", "b", "b", "c", "d"], hashes, 16)
    assert units[0] == units[1] == units[2]  # a patient, and a picture shared with a third image
    assert units[3] == units[4] != units[0]  # a near-copy
    assert len(set(unit_groups([None] * 5, ["a", "b", "b", "c", "d"], None).tolist())) == 4


def brightened_copy(data, tmp_path, target):
    """A copy of a train image, 3 grey levels brighter, under a name no patient pattern reads."""
    source = sorted((data / "train" / "NORMAL").iterdir())[0]
    copy = np.clip(np.asarray(Image.open(source)).astype(int) + 3, 0, 255).astype(np.uint8)
    Image.fromarray(copy).save(data / target / "NORMAL" / "scan-copy.png")
    return source


def test_a_near_copy_stays_with_its_picture_in_the_split_and_counts_as_seen(tmp_path):
    # Issue 19, case 4: a copy brightened by 3 grey levels was its own group, so a re-split could
    # put it on the other side and still report leakage 0.
    data = make_dataset(tmp_path / "d", {"train": 30, "val": 4, "test": 6}, size=48)
    source = brightened_copy(data, tmp_path, "train")
    prep = prepare_dataset(DataConfig(data_dir=str(data), image_size=48, val_source="split", cache_dir=str(tmp_path / "c"), patient_pattern=""))
    rows = prep.dataset.manifest()
    sides = {r.path: r.split for r in rows}
    assert sides[f"train/NORMAL/{source.name}"] == sides["train/NORMAL/scan-copy.png"]
    assert "near-duplicates (perceptual hashes within 16 bits)" in prep.dataset.validation["how"]


def test_a_near_copy_in_test_is_seen_within_the_distance_set(tmp_path):
    data = make_dataset(tmp_path / "d", {"train": 10, "val": 4, "test": 4}, size=64)
    source = sorted((data / "train" / "NORMAL").iterdir())[0]
    # Re-encoded smaller and brighter: its hash moves by a few bits, not none.
    Image.open(source).resize((56, 56)).save(tmp_path / "copy.jpeg", quality=70)
    Image.fromarray(np.clip(np.asarray(Image.open(tmp_path / "copy.jpeg")).astype(int) + 8, 0, 255).astype(np.uint8)).save(
        data / "test" / "NORMAL" / "scan-copy.png"
    )
    prep = prepare_dataset(DataConfig(data_dir=str(data), image_size=64, val_source="folder", cache_dir=str(tmp_path / "c"), patient_pattern=""))
    rows = prep.dataset.manifest()
    test_rows = [r for r in rows if r.split == "test"]
    (pair,) = prep.report["near_duplicates"]["across_splits"]
    assert (pair["file_a"], pair["file_b"]) == (f"train/NORMAL/{source.name}", "test/NORMAL/scan-copy.png") and 0 < pair["bits"] <= 16
    seen = seen_in_train(rows, "test", "", 16)
    assert [r.path for r, s in zip(test_rows, seen) if s] == ["test/NORMAL/scan-copy.png"]
    assert not seen_in_train(rows, "test", "", pair["bits"] - 1).any()  # the distance is the setting's


def test_clustered_hashes_are_paired_in_bounded_pieces_each_pair_once(monkeypatch):
    """Hashes as alike as generated radiographs (buckets far above LARGE_BUCKET): walked row by
    row and a few pairs at a time, the pairs are those of comparing every hash with every other."""
    from pipeline.data import units

    rng = np.random.default_rng(3)
    bases = rng.random((4, 255)) < 0.5
    bits = bases[rng.integers(0, 4, 300)] ^ (rng.random((300, 255)) < 0.02)  # four clusters of near-copies
    monkeypatch.setattr(units, "LARGE_BUCKET", 8)
    monkeypatch.setattr(units, "PAIRS_AT_ONCE", 50)
    i, j, distance = near_duplicate_index_pairs(bits, 16)
    every_i, every_j, every_distance = units._all_pairs(bits, 16)
    order = np.lexsort((every_j, every_i))
    assert len(i) > 5000 and len(set(zip(i.tolist(), j.tolist()))) == len(i)
    assert np.array_equal(i, every_i[order]) and np.array_equal(j, every_j[order]) and np.array_equal(distance, every_distance[order])


def test_a_report_counts_every_pair_across_splits_and_names_the_closest():
    from pipeline.data.checks import ManifestRow, near_duplicates_across_splits

    rng = np.random.default_rng(4)
    base = rng.random(255) < 0.5
    noisy = [base ^ (rng.random(255) < 0.02) for _ in range(12)]
    phashes = [np.packbits(b).tobytes().hex() for b in noisy]
    splits = ["train"] * 6 + ["val"] * 3 + ["test"] * 3
    content = ["same" if k in (0, 9) else f"c{k}" for k in range(12)]  # one pair of identical pixels, train and test
    rows = [ManifestRow(f"{s}/x{k}.png", s, "NORMAL", 8, 8, "L", content[k], phash=phashes[k]) for k, s in enumerate(splits)]
    near = near_duplicates_across_splits(rows, 255, listed=5)
    assert near["n_by_splits"] == {"train-val": 18, "train-test": 18, "val-test": 9} and near["n_pairs"] == 45
    assert near["n_not_exact"] == 44 and len(near["pairs"]) == 5
    every = near_duplicates_across_splits(rows, 255, listed=1000)["pairs"]
    assert len(every) == 45 and max(p["bits"] for p in near["pairs"]) <= min(p["bits"] for p in every if p not in near["pairs"])
