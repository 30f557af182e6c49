import numpy as np

from pipeline.data.synthetic import radiograph, write_demo


def test_same_seed_same_images_other_seed_other_images(tmp_path):
    counts = {"train": 2, "val": 1, "test": 1}
    write_demo(tmp_path / "a", 3, counts, 32)
    write_demo(tmp_path / "b", 3, counts, 32)
    write_demo(tmp_path / "c", 4, counts, 32)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 8
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files)
    assert (tmp_path / "a" / "train" / "NORMAL" / "IM-0001-0001.png").exists()


def test_looks_like_a_radiograph_and_pneumonia_is_denser_in_the_lungs():
    normal = np.stack([radiograph(np.random.default_rng([0, k]), 64, False) for k in range(40)]).astype(float)
    sick = np.stack([radiograph(np.random.default_rng([1, k]), 64, True) for k in range(40)]).astype(float)
    corners = normal[:, :6, :6].mean()
    lungs = normal[:, 20:40, 12:24].mean()
    spine = normal[:, 20:40, 30:34].mean()
    assert corners < lungs < spine  # dark background, air-filled lungs, bright mediastinum
    lung_field = (slice(None), slice(16, 44), slice(8, 26))
    sick_lungs, normal_lungs = sick[lung_field].mean(axis=(1, 2)), normal[lung_field].mean(axis=(1, 2))
    assert sick_lungs.mean() > normal_lungs.mean()
    # ... but not separable by brightness alone: the classes overlap.
    assert sick_lungs.min() < normal_lungs.max()
