"""Data sources: conform() layouts and channel conversions, the npz loader, the digits split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scan.config import DataConfig
from scan.data.sources import conform, load_digits_source, load_npz_source, load_source
from scan.errors import ScanError


def _rng_images(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# conform


def test_conform_grey_nhw():
    x = _rng_images(5, 8, 8)
    out = conform(x, size=8, channels=1)
    assert out.dtype == torch.uint8 and out.shape == (5, 1, 8, 8)
    np.testing.assert_array_equal(out[:, 0].numpy(), x)


def test_conform_grey_nhw1():
    x = _rng_images(5, 8, 8, 1)
    out = conform(x, size=8, channels=1)
    assert out.shape == (5, 1, 8, 8)
    np.testing.assert_array_equal(out[:, 0].numpy(), x[..., 0])


def test_conform_rgb_nhwc_to_channel_first():
    x = _rng_images(4, 10, 10, 3)
    out = conform(x, size=10, channels=3)
    assert out.dtype == torch.uint8 and out.shape == (4, 3, 10, 10)
    np.testing.assert_array_equal(out.numpy(), x.transpose(0, 3, 1, 2))


def test_conform_rgba_drops_alpha():
    x = _rng_images(3, 6, 6, 4)
    out = conform(x, size=6, channels=3)
    assert out.shape == (3, 3, 6, 6)
    np.testing.assert_array_equal(out.numpy(), x[..., :3].transpose(0, 3, 1, 2))
    # alpha plays no part in the grey value either
    x2 = x.copy()
    x2[..., 3] = 255 - x2[..., 3]
    assert torch.equal(conform(x, 6, 1), conform(x2, 6, 1))


def test_conform_grey_to_rgb_repeats():
    x = _rng_images(3, 8, 8)
    out = conform(x, size=8, channels=3)
    assert out.shape == (3, 3, 8, 8)
    for c in range(3):
        np.testing.assert_array_equal(out[:, c].numpy(), x)


def test_conform_rgb_to_grey_uses_601_weights():
    x = np.zeros((1, 6, 6, 3), dtype=np.uint8)
    x[0, 2, 3] = [200, 100, 50]
    x[0, 0, 0] = [255, 255, 255]
    x[0, 1, 1] = [10, 0, 0]
    out = conform(x, size=6, channels=1)
    assert out.shape == (1, 1, 6, 6) and out.dtype == torch.uint8
    # 0.299·200 + 0.587·100 + 0.114·50 = 59.8 + 58.7 + 5.7 = 124.2 -> 124
    assert out[0, 0, 2, 3].item() == 124
    assert out[0, 0, 0, 0].item() == 255
    assert out[0, 0, 1, 1].item() == 3  # 2.99 rounds to 3
    assert out[0, 0, 5, 5].item() == 0


def test_conform_resize_16_to_8_keeps_uint8():
    x = np.full((2, 16, 16), 200, dtype=np.uint8)
    x[1] = 37
    out = conform(x, size=8, channels=1)
    assert out.dtype == torch.uint8 and out.shape == (2, 1, 8, 8)
    # a constant image stays constant under antialiased bilinear
    assert (out[0] == 200).all() and (out[1] == 37).all()
    # left half black, right half white: the left half stays darker than the right
    y = np.zeros((1, 16, 16, 3), dtype=np.uint8)
    y[..., 8:, :] = 255
    out = conform(y, size=8, channels=3)
    assert out.shape == (1, 3, 8, 8) and out.dtype == torch.uint8
    assert (out[..., :3] == 0).all() and (out[..., 5:] == 255).all()


def test_conform_accepts_channel_first_tensor():
    x = torch.as_tensor(_rng_images(2, 3, 8, 8))
    out = conform(x, size=8, channels=3)
    assert torch.equal(out, x)


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint16])
def test_conform_rejects_non_uint8(dtype):
    with pytest.raises(ScanError, match="uint8"):
        conform(np.zeros((2, 8, 8), dtype=dtype), size=8, channels=1)


def test_conform_rejects_bad_rank():
    with pytest.raises(ScanError, match="N×H×W"):
        conform(np.zeros((2, 64), dtype=np.uint8), size=8, channels=1)


# ---------------------------------------------------------------------------------------------
# npz source


def _npz_cfg(path, size: int = 8, channels: int = 1) -> DataConfig:
    return DataConfig(source="npz", path=str(path), size=size, channels=channels,
                      mean=[0.5] * channels, std=[0.25] * channels)


def test_load_npz_without_classes(tiny_npz):
    data = load_npz_source(_npz_cfg(tiny_npz))
    raw = np.load(tiny_npz)
    assert data.train.shape == (30, 1, 8, 8) and data.test.shape == (10, 1, 8, 8)
    assert data.train.dtype == torch.uint8
    np.testing.assert_array_equal(data.train[:, 0].numpy(), raw["x_train"])
    np.testing.assert_array_equal(data.test[:, 0].numpy(), raw["x_test"])
    assert data.train_labels.dtype == torch.int64
    assert data.train_labels.tolist() == raw["y_train"].tolist()
    assert data.test_labels.tolist() == raw["y_test"].tolist()
    assert data.classes is None
    assert data.images("test") is data.test and data.labels("train") is data.train_labels


def test_load_npz_with_classes_and_conversion(make_npz):
    path = make_npz("named.npz", classes=np.array(["cat", "dog", "eel"]),
                    y_train=(np.arange(30) % 3).astype(np.int32))
    data = load_source(_npz_cfg(path, size=4, channels=3))
    assert data.classes == ["cat", "dog", "eel"]
    assert data.train.shape == (30, 3, 4, 4) and data.test.shape == (10, 3, 4, 4)
    assert data.train_labels.dtype == torch.int64


@pytest.mark.parametrize("drop", [("y_test",), ("x_train", "y_train")])
def test_load_npz_missing_arrays_named(make_npz, drop):
    path = make_npz("missing.npz", drop=drop)
    with pytest.raises(ScanError) as info:
        load_npz_source(_npz_cfg(path))
    assert f"missing array(s) {', '.join(drop)}" in str(info.value)


def test_load_npz_mismatched_lengths(make_npz):
    path = make_npz("bad.npz", y_train=np.zeros(29, dtype=np.int64))
    with pytest.raises(ScanError, match="x_train has 30 images but y_train has 29 labels"):
        load_npz_source(_npz_cfg(path))


def test_load_npz_non_integer_labels(make_npz):
    path = make_npz("float.npz", y_test=np.zeros(10, dtype=np.float32))
    with pytest.raises(ScanError, match="y_test must be a 1-D integer array"):
        load_npz_source(_npz_cfg(path))


def test_load_npz_missing_or_unreadable_file(tmp_path):
    with pytest.raises(ScanError, match="no such file"):
        load_npz_source(_npz_cfg(tmp_path / "nope.npz"))
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    with pytest.raises(ScanError, match="not a readable .npz"):
        load_npz_source(_npz_cfg(junk))
    with pytest.raises(ScanError, match="--data"):
        load_npz_source(DataConfig(source="npz", path=None))


# ---------------------------------------------------------------------------------------------
# digits source


@pytest.fixture(scope="module")
def digits_pair():
    cfg = DataConfig(source="digits", size=8, channels=1, mean=[0.3], std=[0.4])
    return load_digits_source(cfg), load_digits_source(cfg)


def test_digits_split_sizes_and_stratification(digits_pair):
    data, _ = digits_pair
    from sklearn.datasets import load_digits

    target = load_digits().target
    assert data.train.shape == (1437, 1, 8, 8) and data.test.shape == (360, 1, 8, 8)
    assert data.train.dtype == torch.uint8
    assert len(data.train_labels) == 1437 and len(data.test_labels) == 360
    assert data.classes == [str(c) for c in range(10)]
    train_counts = np.bincount(data.train_labels.numpy(), minlength=10)
    test_counts = np.bincount(data.test_labels.numpy(), minlength=10)
    full_counts = np.bincount(target, minlength=10)
    np.testing.assert_array_equal(train_counts + test_counts, full_counts)
    assert (np.abs(train_counts - 0.8 * full_counts) <= 1).all()


def test_digits_is_deterministic(digits_pair):
    a, b = digits_pair
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert torch.equal(a.train_labels, b.train_labels) and torch.equal(a.test_labels, b.test_labels)


def test_digits_values_are_scaled_and_in_source_order(digits_pair):
    data, _ = digits_pair
    from sklearn.datasets import load_digits

    digits = load_digits()
    expected = np.round(digits.images * 255.0 / 16.0).astype(np.uint8)
    # spot values of the scaling: 16 -> 255, 8 -> 127.5 -> 128, 1 -> 15.9375 -> 16, 0 -> 0
    lut = {0: 0, 1: 16, 8: 128, 16: 255}
    for v, u in lut.items():
        assert expected[digits.images == v].tolist() == [u] * int((digits.images == v).sum())
    allowed = {int(round(v * 255 / 16)) for v in range(17)}
    assert set(np.unique(data.train.numpy()).tolist()) <= allowed

    # every train/test image is a digits image with its label, train and test partition the
    # dataset, and each split keeps the source order (a subsequence of it)
    keys = [expected[i].tobytes() + bytes([digits.target[i]]) for i in range(len(expected))]
    used = np.zeros(len(keys), dtype=bool)
    for split in ("train", "test"):
        images, labels = data.images(split)[:, 0].numpy(), data.labels(split).numpy()
        pos = 0
        for img, lab in zip(images, labels):
            key = img.tobytes() + bytes([lab])
            while pos < len(keys) and (used[pos] or keys[pos] != key):
                pos += 1
            assert pos < len(keys), f"{split} image not found in source order"
            used[pos] = True
            pos += 1
    assert used.all()
