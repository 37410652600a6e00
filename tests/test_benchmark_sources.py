"""Benchmark sources: the CIFAR-100 -> 20 mapping, the ImageNet subset lists, the shared .npz
copies of MNIST and CIFAR-10, torchvision-format folders written into tmp_path (CIFAR, MNIST,
STL-10), offline downloads, ImageNet folders and what `--data` selects. Nothing is downloaded."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image

from scan.config import DataConfig, build_config
from scan.data import decode, torchvision_sources
from scan.data.imagenet import SUBSETS, read_class_list
from scan.data.sources import SOURCES, data_path_settings, load_npz_source, load_source
from scan.data.torchvision_sources import CIFAR20_CLASSES, CIFAR100_TO_20
from scan.errors import ScanError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MNIST_NPZ = SHARED / "data" / "mnist.npz"
CIFAR10_NPZ = SHARED / "data" / "cifar10.npz"
REFERENCE = SHARED / "reference" / "scan-original.md"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Default roots and decode caches under tmp_path, never ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def cfg_for(source: str, path: Path | None, size: int, channels: int = 3) -> DataConfig:
    return DataConfig(source=source, path=None if path is None else str(path), size=size, channels=channels,
                      mean=[0.5] * channels, std=[0.25] * channels)


# ---------------------------------------------------------------------------------------------
# CIFAR-100 -> 20

# The reference's table (§5.2), grouped by superclass: coarse index -> fine indices.
REFERENCE_GROUPS = {
    0: (4, 30, 55, 72, 95), 1: (1, 32, 67, 73, 91), 2: (54, 62, 70, 82, 92), 3: (9, 10, 16, 28, 61),
    4: (0, 51, 53, 57, 83), 5: (22, 39, 40, 86, 87), 6: (5, 20, 25, 84, 94), 7: (6, 7, 14, 18, 24),
    8: (3, 42, 43, 88, 97), 9: (12, 17, 37, 68, 76), 10: (23, 33, 49, 60, 71), 11: (15, 19, 21, 31, 38),
    12: (34, 63, 64, 66, 75), 13: (26, 45, 77, 79, 99), 14: (2, 11, 35, 46, 98), 15: (27, 29, 44, 78, 93),
    16: (36, 50, 65, 74, 80), 17: (47, 52, 56, 59, 96), 18: (8, 13, 48, 58, 90), 19: (41, 69, 81, 85, 89),
}


def test_cifar20_mapping_matches_the_reference_groups():
    assert len(CIFAR100_TO_20) == 100
    groups = {c: tuple(f for f, coarse in enumerate(CIFAR100_TO_20) if coarse == c) for c in range(20)}
    assert groups == REFERENCE_GROUPS  # 20 superclasses × 5 fine classes
    assert len(CIFAR20_CLASSES) == 20 and len(set(CIFAR20_CLASSES)) == 20
    assert CIFAR20_CLASSES[6] == "household furniture"  # the original's "househould" typo, fixed
    assert CIFAR20_CLASSES[0] == "aquatic mammals" and CIFAR20_CLASSES[19] == "vehicles 2"


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference notes not present")
def test_cifar20_mapping_equals_the_reference_list():
    text = REFERENCE.read_text()
    listed = re.search(r"`\[(4, 1, 14, [0-9, ]+)\]`", text).group(1)
    assert tuple(int(v) for v in listed.split(",")) == CIFAR100_TO_20


# ---------------------------------------------------------------------------------------------
# ImageNet subset lists


def test_imagenet_subset_lists():
    lists = {name: read_class_list(name)[0] for name in SUBSETS}
    for name, wnids in lists.items():
        assert len(wnids) == int(name.split("_")[1])
        assert wnids == sorted(wnids) and len(set(wnids)) == len(wnids)
        assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    assert set(lists["imagenet_50"]) < set(lists["imagenet_100"]) < set(lists["imagenet_200"])
    assert lists["imagenet_50"][0] == "n01601694" and lists["imagenet_50"][-1] == "n07753592"


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference notes not present")
def test_imagenet_subset_lists_equal_the_reference_appendix():
    appendix = REFERENCE.read_text().split("## Appendix A", 1)[1].split("## Appendix B", 1)[0]
    for name in SUBSETS:
        block = appendix.split(f"**{name}.txt**", 1)[1]
        line = next(l for l in block.splitlines() if re.match(r"n\d{8} ", l))
        assert read_class_list(name)[0] == line.split()


# ---------------------------------------------------------------------------------------------
# The shared .npz copies (skipped where ../shared/data is absent)


@pytest.mark.skipif(not MNIST_NPZ.exists(), reason="../shared/data/mnist.npz not present")
def test_mnist_npz():
    data = load_npz_source(cfg_for("npz", MNIST_NPZ, size=28, channels=1))
    assert data.train.shape == (60000, 1, 28, 28) and data.test.shape == (10000, 1, 28, 28)
    assert np.bincount(data.train_labels.numpy()).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(data.test_labels.numpy()).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert data.classes == [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def cifar10_npz():
    """Read once per session: the LZMA-compressed file takes several seconds."""
    return load_npz_source(cfg_for("npz", CIFAR10_NPZ, size=32))


@pytest.mark.skipif(not CIFAR10_NPZ.exists(), reason="../shared/data/cifar10.npz not present")
def test_cifar10_npz(cifar10_npz):
    data = cifar10_npz
    assert data.train.shape == (50000, 3, 32, 32) and data.test.shape == (10000, 3, 32, 32)
    assert data.train.dtype == torch.uint8
    assert np.bincount(data.train_labels.numpy()).tolist() == [5000] * 10
    assert np.bincount(data.test_labels.numpy()).tolist() == [1000] * 10
    assert data.classes[0] == "airplane" and data.classes[-1] == "truck"


# ---------------------------------------------------------------------------------------------
# Offline downloads


@pytest.mark.parametrize("source, module, folder, where, files", [
    ("cifar10", "cifar", "cifar10", "", "cifar-10-python.tar.gz"),
    ("cifar20", "cifar", "cifar100", "", "cifar-100-python.tar.gz"),
    ("mnist", "mnist", "mnist", "MNIST/raw", "train-images-idx3-ubyte.gz"),
    ("stl10", "stl10", "stl10", "", "stl10_binary.tar.gz"),
])
def test_failed_download_names_the_folder_and_files(tmp_path, monkeypatch, source, module, folder, where, files):
    import importlib

    urls = []

    def offline(url, *args, **kwargs):
        urls.append(url)
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(importlib.import_module(f"torchvision.datasets.{module}"), "download_and_extract_archive", offline)
    root = tmp_path / "given"
    with pytest.raises(ScanError) as info:
        load_source(cfg_for(source, root, size=32))
    message = str(info.value)
    assert "\n" not in message and str(root / where if where else root) in message and files in message
    assert "download" in message and urls and urls[0].startswith("http")  # torchvision's real download path
    # without --data the files go to the per-user cache
    with pytest.raises(ScanError, match=re.escape(str(tmp_path / "cache" / "scan" / "datasets" / folder))):
        load_source(cfg_for(source, None, size=32))


# ---------------------------------------------------------------------------------------------
# torchvision-format folders written here


@pytest.fixture
def trust_cifar_files(monkeypatch):
    """torchvision checks the official md5s of the CIFAR files; our small fakes cannot match."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


def _cifar_rows(n: int, seed: int) -> np.ndarray:
    """n images as CIFAR stores them: rows of 3072 bytes (1024 R, 1024 G, 1024 B, row-major)."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def test_fake_cifar10_folder(tmp_path, trust_cifar_files):
    base = tmp_path / "c10" / "cifar-10-batches-py"
    rows = {}
    for b in range(1, 6):
        rows[b] = _cifar_rows(2, seed=b)
        _pickle(base / f"data_batch_{b}", {"data": rows[b], "labels": [b % 10, (b + 5) % 10]})
    test_rows = _cifar_rows(3, seed=9)
    _pickle(base / "test_batch", {"data": test_rows, "labels": [7, 8, 9]})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _pickle(base / "batches.meta", {"label_names": names})
    data = load_source(cfg_for("cifar10", tmp_path / "c10", size=32))
    assert data.train.shape == (10, 3, 32, 32) and data.test.shape == (3, 3, 32, 32)
    assert data.train_labels.tolist() == [1, 6, 2, 7, 3, 8, 4, 9, 5, 0] and data.test_labels.tolist() == [7, 8, 9]
    assert data.classes == names
    np.testing.assert_array_equal(data.train[0].numpy(), rows[1][0].reshape(3, 32, 32))
    np.testing.assert_array_equal(data.test[2].numpy(), test_rows[2].reshape(3, 32, 32))
    grey = load_source(cfg_for("cifar10", tmp_path / "c10", size=16, channels=1))
    assert grey.train.shape == (10, 1, 16, 16)


def test_fake_cifar100_folder_as_cifar100_and_cifar20(tmp_path, trust_cifar_files):
    base = tmp_path / "c100" / "cifar-100-python"
    fine_train = list(range(100))
    _pickle(base / "train", {"data": _cifar_rows(100, 1), "fine_labels": fine_train, "coarse_labels": [0] * 100})
    _pickle(base / "test", {"data": _cifar_rows(4, 2), "fine_labels": [4, 30, 5, 99], "coarse_labels": [0] * 4})
    fine_names = [f"fine{i}" for i in range(100)]
    _pickle(base / "meta", {"fine_label_names": fine_names, "coarse_label_names": []})
    c100 = load_source(cfg_for("cifar100", tmp_path / "c100", size=32))
    assert c100.classes == fine_names and c100.train_labels.tolist() == fine_train
    c20 = load_source(cfg_for("cifar20", tmp_path / "c100", size=32))
    assert c20.classes == list(CIFAR20_CLASSES)
    assert c20.train_labels.tolist() == list(CIFAR100_TO_20)
    assert c20.test_labels.tolist() == [0, 0, 6, 13]
    assert torch.equal(c20.train, c100.train)


def _idx(path: Path, array: np.ndarray) -> None:
    """Write an uncompressed IDX file (MNIST's format: magic, big-endian dims, uint8 data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    magic = bytes([0, 0, 0x08, array.ndim])
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(magic + dims + array.astype(np.uint8).tobytes())


def test_fake_mnist_raw_folder(tmp_path):
    raw = tmp_path / "m" / "MNIST" / "raw"
    rng = np.random.default_rng(0)
    x_train, x_test = rng.integers(0, 256, (6, 28, 28)), rng.integers(0, 256, (4, 28, 28))
    _idx(raw / "train-images-idx3-ubyte", x_train)
    _idx(raw / "train-labels-idx1-ubyte", np.array([0, 1, 2, 3, 4, 5]))
    _idx(raw / "t10k-images-idx3-ubyte", x_test)
    _idx(raw / "t10k-labels-idx1-ubyte", np.array([9, 8, 7, 6]))
    data = load_source(cfg_for("mnist", tmp_path / "m", size=28, channels=1))
    assert data.train.shape == (6, 1, 28, 28) and data.test.shape == (4, 1, 28, 28)
    np.testing.assert_array_equal(data.train[:, 0].numpy(), x_train)
    assert data.train_labels.tolist() == [0, 1, 2, 3, 4, 5] and data.test_labels.tolist() == [9, 8, 7, 6]
    assert data.classes == [str(d) for d in range(10)]
    rgb = load_source(cfg_for("mnist", tmp_path / "m", size=32, channels=3))
    assert rgb.train.shape == (6, 3, 32, 32)


def test_fake_stl10_folder_pretext_images_are_lazy(tmp_path, monkeypatch):
    import torchvision.datasets.stl10 as stl10

    monkeypatch.setattr(stl10.STL10, "_check_integrity", lambda self: True)
    base = tmp_path / "s" / "stl10_binary"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {split: rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
              for split, n in (("train", 4), ("test", 3), ("unlabeled", 5))}
    for split, x in images.items():
        # the files store each channel column-major: write the H/W transpose
        (base / f"{split}_X.bin").write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())
    (base / "train_y.bin").write_bytes(bytes([1, 2, 10, 3]))  # 1-based
    (base / "test_y.bin").write_bytes(bytes([10, 1, 5]))
    (base / "class_names.txt").write_text("\n".join(torchvision_sources.STL10_CLASSES) + "\n")
    data = load_source(cfg_for("stl10", tmp_path / "s", size=96))
    np.testing.assert_array_equal(data.train.numpy(), images["train"])
    np.testing.assert_array_equal(data.test.numpy(), images["test"])
    assert data.train_labels.tolist() == [0, 1, 9, 2] and data.test_labels.tolist() == [9, 0, 4]
    assert data.classes == list(torchvision_sources.STL10_CLASSES)
    assert data.pretext is None  # the 100,000 unlabelled images are not read eagerly
    pretext = data.pretext_images()
    assert pretext.shape == (9, 3, 96, 96)
    np.testing.assert_array_equal(pretext[:4].numpy(), images["train"])
    np.testing.assert_array_equal(pretext[4:].numpy(), images["unlabeled"])
    small = load_source(cfg_for("stl10", tmp_path / "s", size=32, channels=1))
    assert small.train.shape == (4, 1, 32, 32) and small.pretext_images().shape == (9, 1, 32, 32)


def test_pretext_images_defaults_to_train():
    from scan.data.splits import ImageSplits

    train = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    assert ImageSplits(train=train, test=train).pretext_images() is train
    extra = torch.ones(2, 1, 4, 4, dtype=torch.uint8)
    both = ImageSplits(train=train, test=train, pretext=extra).pretext_images()
    assert both.shape == (5, 1, 4, 4) and both[3:].eq(1).all()
    assert ImageSplits(train=train, test=train).ids("train") == ["0", "1", "2"]


# ---------------------------------------------------------------------------------------------
# ImageNet folders


def _imagenet(root: Path, wnids: list[str], per_class: int = 1, split_names=("train", "val")) -> Path:
    for split in split_names:
        for i, wnid in enumerate(wnids):
            for j in range(per_class):
                path = root / split / wnid / f"{wnid}_{j}.JPEG"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (10, 8), (i % 256, 0, 0)).save(path, format="PNG")  # PNG bytes: exact pixels
    return root


def test_imagenet_50_folder(tmp_path):
    wnids = read_class_list("imagenet_50")[0]
    root = _imagenet(tmp_path / "in", wnids + ["n99999999"])  # an extra class folder is ignored
    data = load_source(cfg_for("imagenet_50", root, size=8))
    assert data.train.shape == (50, 3, 8, 8) and data.test.shape == (50, 3, 8, 8)
    assert data.train_labels.tolist() == list(range(50)) and data.classes == wnids
    assert data.train_ids[0] == f"train/{wnids[0]}/{wnids[0]}_0.JPEG"
    assert data.test_ids[-1] == f"val/{wnids[-1]}/{wnids[-1]}_0.JPEG"
    assert (data.train[7, 0] == 7).all()


def test_imagenet_centre_crop_keeps_0875_of_the_short_side(tmp_path):
    root = tmp_path / "in"
    for split in ("train", "val"):
        pixels = np.zeros((64, 64, 3), dtype=np.uint8)
        pixels[4:60, 4:60] = (0, 255, 0)  # the central 56×56 = 0.875 of 64; red outside
        pixels[pixels[..., 1] == 0] = (255, 0, 0)
        (root / split / "n00000001").mkdir(parents=True)
        (root / split / "n00000002").mkdir(parents=True)
        Image.fromarray(pixels).save(root / split / "n00000001" / "a.JPEG", format="PNG")
        Image.fromarray(pixels).save(root / split / "n00000002" / "b.JPEG", format="PNG")
    data = load_source(cfg_for("imagenet", root, size=14))
    assert data.classes == ["n00000001", "n00000002"] and data.test_labels.tolist() == [0, 1]
    inner = data.train[:, :, 1:-1, 1:-1]  # the red border is cropped (only the filter edge reaches it)
    assert (inner[:, 1] == 255).all() and (inner[:, 0] == 0).all()
    # the same pixels as torchvision's Resize(round(14 / 0.875) = 16) + CenterCrop(14) on the image
    reference = Image.fromarray(pixels).resize((16, 16), Image.Resampling.BILINEAR).crop((1, 1, 15, 15))
    expected = torch.from_numpy(np.array(reference)).permute(2, 0, 1)
    assert (data.train[0].int() - expected.int()).abs().max() <= 1


def test_imagenet_errors(tmp_path, monkeypatch):
    with pytest.raises(ScanError, match="no ImageNet folder at"):
        load_source(cfg_for("imagenet_50", tmp_path / "none", size=8))
    wnids = read_class_list("imagenet_50")[0]
    root = _imagenet(tmp_path / "in", wnids[:-1])
    with pytest.raises(ScanError, match=f"1 of 50 class folders missing .e.g. {wnids[-1]}"):
        load_source(cfg_for("imagenet_50", root, size=8))
    flat = _imagenet(tmp_path / "flat", ["n00000001", "n00000002"], split_names=("train",))
    (flat / "val").mkdir()
    Image.new("RGB", (4, 4)).save(flat / "val" / "ILSVRC2012_val_00000001.JPEG", format="JPEG")
    with pytest.raises(ScanError, match="unsorted"):
        load_source(cfg_for("imagenet", flat, size=8))
    monkeypatch.setattr(decode, "available_memory", lambda: 10_000)
    streamed = load_source(cfg_for("imagenet", _imagenet(tmp_path / "ok", ["n00000001"], per_class=2), size=32))
    assert streamed.streamed and streamed.train.shape == (2, 3, 32, 32)  # larger than "memory": streamed


def test_imagenet_original_folder_names(tmp_path):
    root = _imagenet(tmp_path / "in", ["n00000001", "n00000002"], split_names=("ILSVRC2012_img_train", "ILSVRC2012_img_val"))
    data = load_source(cfg_for("imagenet", root, size=4))
    assert len(data.train) == 2 and data.train_ids[0].startswith("ILSVRC2012_img_train/")


# ---------------------------------------------------------------------------------------------
# What --data selects


def test_data_path_settings_per_source(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, source in SOURCES.items():
        if source.reads_dir:
            # a dataset root or image folder, even one not there yet (torchvision downloads into it)
            assert data_path_settings(name, str(tmp_path / "new")) == {"path": str(tmp_path / "new")}
    assert data_path_settings("cifar10", str(folder)) == {"path": str(folder)}
    assert data_path_settings("cifar10", "x.npz") == {"source": "npz", "path": "x.npz"}
    assert data_path_settings("digits", str(folder)) == {"source": "folder", "path": str(folder)}
    assert data_path_settings("npz", str(folder)) == {"source": "folder", "path": str(folder)}
    with pytest.raises(ScanError, match="--data .*expected an image folder, a dataset root or an .npz"):
        data_path_settings("digits", str(tmp_path / "nothing"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ScanError, match="not a folder or an .npz file"):
        data_path_settings("cifar10", str(tmp_path / "file.txt"))
    expected = {"digits", "npz", "array", "folder", "mnist", "cifar10", "cifar100", "cifar20", "stl10",
                "imagenet", "imagenet_50", "imagenet_100", "imagenet_200"}
    assert set(SOURCES) == expected
    assert {n for n, s in SOURCES.items() if not s.reads_dir} == {"digits", "npz", "array"}


def test_build_config_data_for_a_benchmark_source(tmp_path):
    # an override that picks a benchmark source keeps --data as its dataset root
    cfg = build_config(overrides=["data.source=cifar10"], data=str(tmp_path))
    assert (cfg.data.source, cfg.data.path) == ("cifar10", str(tmp_path))
