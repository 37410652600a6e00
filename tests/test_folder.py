"""The folder source: layouts and labels, image modes, resizing, bad files, ids, the decode cache,
test fractions and errors (images written with Pillow into tmp_path)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scan.config import DataConfig, build_config
from scan.data import decode
from scan.data import folder
from scan.data.folder import list_images, split_indices
from scan.data.sources import load_source
from scan.errors import ScanError


def load_folder(*args, **kwargs):
    """The folder source's splits read into memory (the loader leaves them in the decode cache)."""
    return folder.load_folder(*args, **kwargs).in_memory()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    """Every test decodes into its own cache folder, never ~/.cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache / "scan" / "decoded"


def solid(path: Path, colour, size=(12, 10), mode: str = "RGB", fmt: str | None = None) -> Path:
    """Write a one-colour image (size is W×H) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, format=fmt)
    return path


def tree(root: Path, files: dict[str, tuple[int, int, int]]) -> Path:
    """Solid RGB PNGs (or JPEGs by extension) at the given relative paths."""
    for rel, colour in files.items():
        solid(root / rel, colour)
    return root


# ---------------------------------------------------------------------------------------------
# Layouts, labels and ids


def test_nested_layout_gives_sorted_classes_labels_and_ids(tmp_path):
    root = tree(tmp_path / "imgs", {
        "zebra/b.png": (0, 0, 200), "zebra/a.png": (0, 0, 210),
        "ant/x.png": (200, 0, 0), "ant/deeper/y.png": (210, 0, 0),
        "moth/m.PNG": (0, 200, 0),
    })
    data = load_folder(root, size=8, channels=3)
    assert data.classes == ["ant", "moth", "zebra"]
    assert data.train_ids == ["ant/deeper/y.png", "ant/x.png", "moth/m.PNG", "zebra/a.png", "zebra/b.png"]
    assert data.train_labels.tolist() == [0, 0, 1, 2, 2]
    assert data.train.shape == (5, 3, 8, 8) and data.train.dtype == torch.uint8
    # lossless PNG of one colour: every pixel keeps it exactly
    assert (data.train[0] == torch.tensor([210, 0, 0]).view(3, 1, 1)).all()
    assert (data.train[3] == torch.tensor([0, 0, 210]).view(3, 1, 1)).all()
    # no test split: test is the same images, labels and ids
    assert data.test is data.train and data.test_labels is data.train_labels and data.test_ids == data.train_ids
    assert data.ids("test") == data.train_ids and data.skipped == []


def test_flat_layout_has_no_labels(tmp_path):
    root = tree(tmp_path / "flat", {"b.png": (1, 2, 3), "a.jpg": (9, 9, 9), "c.bmp": (4, 5, 6)})
    data = load_folder(root, size=6, channels=3)
    assert data.train_ids == ["a.jpg", "b.png", "c.bmp"]
    assert data.train_labels is None and data.test_labels is None and data.classes is None


def test_mixed_layout_single_class_and_labels_off_give_no_labels(tmp_path):
    mixed = tree(tmp_path / "mixed", {"cat/a.png": (1, 1, 1), "dog/b.png": (2, 2, 2), "top.png": (3, 3, 3)})
    data = load_folder(mixed, size=4, channels=1)
    assert data.train_labels is None and data.train_ids == ["cat/a.png", "dog/b.png", "top.png"]
    single = tree(tmp_path / "single", {"only/a.png": (1, 1, 1), "only/b.png": (2, 2, 2)})
    assert load_folder(single, size=4, channels=1).train_labels is None
    nested = tree(tmp_path / "nested", {"cat/a.png": (1, 1, 1), "dog/b.png": (2, 2, 2)})
    assert load_folder(nested, size=4, channels=1).train_labels.tolist() == [0, 1]
    assert load_folder(nested, size=4, channels=1, labels=False).train_labels is None


def test_non_image_and_hidden_files_are_ignored_silently(tmp_path, capsys):
    root = tree(tmp_path / "f", {"a.png": (1, 1, 1), ".hidden.png": (2, 2, 2), ".git/c.png": (3, 3, 3)})
    (root / "readme.txt").write_text("hello")
    (root / "data.csv").write_text("1,2")
    assert list_images(root) == ["a.png"]
    data = load_folder(root, size=4, channels=3)
    assert data.train_ids == ["a.png"] and data.skipped == []
    assert "warning" not in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Image modes and geometry


def test_modes_grey_rgba_palette_cmyk(tmp_path):
    root = tmp_path / "modes"
    solid(root / "1_grey.png", 77, mode="L")
    solid(root / "2_rgba.png", (10, 20, 30, 0), mode="RGBA")  # fully transparent: alpha is dropped
    palette = Image.new("P", (12, 10), 0)
    palette.putpalette([40, 50, 60] + [0, 0, 0] * 255)
    palette.save(root / "3_palette.gif")
    solid(root / "4_cmyk.jpg", (0, 0, 0, 0), mode="CMYK")  # CMYK 0 = white
    rgb = load_folder(root, size=8, channels=3).train
    assert rgb.shape == (4, 3, 8, 8)
    assert (rgb[0] == 77).all()
    assert (rgb[1] == torch.tensor([10, 20, 30]).view(3, 1, 1)).all()
    assert (rgb[2] == torch.tensor([40, 50, 60]).view(3, 1, 1)).all()
    assert (rgb[3] >= 250).all()
    grey = load_folder(root, size=8, channels=1).train
    assert grey.shape == (4, 1, 8, 8)
    assert (grey[0] == 77).all()
    # ITU-R 601 luma of (10, 20, 30): 2.99 + 11.74 + 3.42 = 18.15
    assert abs(int(grey[1, 0, 0, 0]) - 18) <= 1


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    root = tmp_path / "deep"
    root.mkdir()
    values = np.array([0, 257, 1000, 32896, 40000, 65535, 12345, 50000], dtype=np.uint16)
    pixels = np.tile(values, (8, 1))  # 8×8, each column one value
    Image.fromarray(pixels).save(root / "deep.png")
    with Image.open(root / "deep.png") as im:
        assert im.mode.startswith("I")  # really a 16-bit PNG
    out = load_folder(root, size=8, channels=1).train[0, 0]  # same size: no resampling
    expected = np.round(values / 257.0).astype(np.uint8)  # 0, 1, 4, 128, 156, 255, 48, 195
    np.testing.assert_array_equal(out[3].numpy(), expected)
    assert out[0, 3] == 128 and out[0, 5] == 255


def test_odd_sizes_are_resized_short_side_and_centre_cropped(tmp_path):
    root = tmp_path / "odd"
    root.mkdir()
    tall = np.zeros((29, 13, 3), dtype=np.uint8)  # H×W: 13 wide, 29 high
    tall[:8] = (255, 0, 0)  # above the centred 13×13 square
    tall[8:21] = (0, 255, 0)  # the centred square
    tall[21:] = (0, 0, 255)  # below it
    Image.fromarray(tall).save(root / "tall.png")
    Image.fromarray(np.ascontiguousarray(tall.transpose(1, 0, 2))).save(root / "wide.png")
    out = load_folder(root, size=8, channels=3).train
    assert out.shape == (2, 3, 8, 8)
    for image in out:
        inner = image[:, 1:7, 1:7]
        assert (inner[1] == 255).all() and (inner[0] == 0).all() and (inner[2] == 0).all()
        assert image[1].float().mean() > 200  # the red and blue bands were cropped away


def test_exif_orientation_is_applied(tmp_path):
    root = tmp_path / "exif"
    root.mkdir()
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    pixels[:4] = (255, 0, 0)  # stored: red on top, blue below
    pixels[4:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(pixels).save(root / "photo.png", exif=exif)
    out = load_folder(root, size=8, channels=3).train[0]
    assert (out[0, :, 4:] == 255).all() and (out[0, :, :4] == 0).all()  # red is now on the right


# ---------------------------------------------------------------------------------------------
# Bad files


def write_bad_files(root: Path) -> list[str]:
    """A corrupt JPEG, a truncated PNG, an empty file and a text file named .png; their names."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "corrupt.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "whole.png")
    data = (root / "whole.png").read_bytes()
    (root / "whole.png").unlink()
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "truncated.png").write_bytes(data[: len(data) * 6 // 10])
    (root / "zero.JPG").write_bytes(b"")
    (root / "notes.png").write_text("not an image at all")
    return ["corrupt.jpg", "notes.png", "sub/truncated.png", "zero.JPG"]


def test_bad_files_are_skipped_with_one_warning(tmp_path, capsys):
    root = tree(tmp_path / "bad", {"good1.png": (5, 5, 5), "sub/good2.png": (6, 6, 6)})
    bad = write_bad_files(root)
    (root / "readme.txt").write_text("ignored without a word")
    data = load_folder(root, size=8, channels=3)
    assert data.train_ids == ["good1.png", "sub/good2.png"]
    assert data.skipped == bad
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "skipped 4 unreadable" in warnings[0] and "corrupt.jpg" in warnings[0]
    assert "readme.txt" not in warnings[0]
    # good1.png sits at the top level, so the sub-folders are not classes
    assert data.train_labels is None


def test_no_readable_image_missing_folder_and_no_images_are_errors(tmp_path):
    write_bad_files(tmp_path / "allbad")
    with pytest.raises(ScanError, match="none of the 4 image files could be read"):
        load_folder(tmp_path / "allbad", size=8, channels=3)
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    with pytest.raises(ScanError, match="no image files"):
        load_folder(tmp_path / "texts", size=8, channels=3)
    with pytest.raises(ScanError, match="no such folder"):
        load_folder(tmp_path / "nowhere", size=8, channels=3)
    with pytest.raises(ScanError, match="not a folder"):
        load_folder(tmp_path / "texts" / "a.txt", size=8, channels=3)


# ---------------------------------------------------------------------------------------------
# Decoding once: the cache


def test_second_load_reads_the_cache(tmp_path, monkeypatch, private_cache, capsys):
    root = tree(tmp_path / "c", {"x/a.png": (10, 10, 10), "y/b.png": (20, 20, 20)})
    write_bad_files(root / "x" / "junk")
    first = load_folder(root, size=8, channels=3)
    assert len(list(private_cache.glob("*.npy"))) == 1 and len(list(private_cache.glob("*.json"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(decode, "decode_files", no_decoding)
    capsys.readouterr()
    second = load_folder(root, size=8, channels=3)
    assert torch.equal(first.train, second.train) and first.train_ids == second.train_ids
    assert torch.equal(first.train_labels, second.train_labels) and second.classes == ["x", "y"]
    assert second.skipped == first.skipped and len(second.skipped) == 4
    assert "skipped 4" in capsys.readouterr().out  # the warning is repeated on a cache hit
    # another size or channel count is another cache entry
    with pytest.raises(AssertionError, match="decoded again"):
        load_folder(root, size=4, channels=3)


def test_cache_is_invalidated_when_a_file_changes(tmp_path, monkeypatch):
    root = tree(tmp_path / "c", {"a.png": (10, 10, 10), "b.png": (20, 20, 20)})
    assert load_folder(root, size=8, channels=3).train[1, 0, 0, 0] == 20
    solid(root / "b.png", (99, 99, 99))
    stat = os.stat(root / "b.png")
    os.utime(root / "b.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    real = decode.decode_files
    calls = []
    monkeypatch.setattr(decode, "decode_files", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert load_folder(root, size=8, channels=3).train[1, 0, 0, 0] == 99
    assert calls == [1]
    solid(root / "c.png", (1, 2, 3))  # an added file changes the key too
    assert len(load_folder(root, size=8, channels=3).train) == 3 and calls == [1, 1]


def test_unreadable_cache_is_decoded_again(tmp_path, private_cache):
    root = tree(tmp_path / "c", {"a.png": (10, 10, 10)})
    load_folder(root, size=8, channels=3)
    for npy in private_cache.glob("*.npy"):
        npy.write_bytes(b"garbage")
    assert load_folder(root, size=8, channels=3).train[0, 0, 0, 0] == 10


def test_decode_files_with_workers_keeps_order_and_skips(tmp_path, monkeypatch):
    root = tree(tmp_path / "w", {f"{i:02d}.png": (i, i, i) for i in range(6)})
    (root / "03.png").write_bytes(b"")
    monkeypatch.setattr(decode, "MIN_FILES_FOR_WORKERS", 0)
    paths = [str(root / f"{i:02d}.png") for i in range(6)]
    images, ok = decode.decode_files(paths, size=4, channels=1, workers=2)
    assert ok == [0, 1, 2, 4, 5]
    assert images[:, 0, 0, 0].tolist() == [0, 1, 2, 4, 5]


# ---------------------------------------------------------------------------------------------
# Test fraction


def test_test_fraction_stratified_split(tmp_path):
    files = {f"{c}/{i}.png": (i, i, i) for c in ("a", "b") for i in range(5)}
    root = tree(tmp_path / "s", files)
    data = load_folder(root, size=4, channels=1, test_fraction=0.4, seed=3)
    assert len(data.train) == 6 and len(data.test) == 4
    assert np.bincount(data.test_labels.numpy()).tolist() == [2, 2]
    assert sorted(data.train_ids + data.test_ids) == sorted(files)
    assert not set(data.train_ids) & set(data.test_ids)
    assert data.train_ids == sorted(data.train_ids, key=lambda p: p.split("/"))  # folder order kept
    again = load_folder(root, size=4, channels=1, test_fraction=0.4, seed=3)
    assert again.test_ids == data.test_ids  # seeded
    # labels and pixels follow their ids
    for i, rel in enumerate(data.test_ids):
        assert data.test_labels[i] == "ab".index(rel[0])
        assert data.test[i, 0, 0, 0] == int(rel.split("/")[1][0])


def test_test_fraction_unlabelled_and_bad_values(tmp_path):
    root = tree(tmp_path / "u", {f"{i}.png": (i, i, i) for i in range(10)})
    data = load_folder(root, size=4, channels=1, test_fraction=0.3)
    assert (len(data.train), len(data.test)) == (7, 3) and data.test_labels is None
    with pytest.raises(ScanError, match="test_fraction must be in"):
        load_folder(root, size=4, channels=1, test_fraction=1.0)
    with pytest.raises(ScanError, match="leaves 0 train"):
        split_indices(2, None, 0.9)


# ---------------------------------------------------------------------------------------------
# Registry and --data


def test_registry_entry_and_optional_config_fields(tmp_path):
    root = tree(tmp_path / "r", {"cat/a.png": (1, 1, 1), "dog/b.png": (2, 2, 2), "dog/c.png": (3, 3, 3)})
    cfg = DataConfig(source="folder", path=str(root), size=4, channels=3)
    assert load_source(cfg).classes == ["cat", "dog"]
    # data.labels / data.test_fraction are read when the config has them
    cfg.labels, cfg.test_fraction = "none", 0.34
    data = load_source(cfg)
    assert data.train_labels is None and len(data.test) == 1
    cfg.labels = "maybe"
    with pytest.raises(ScanError, match="data.labels must be one of auto, none"):
        load_source(cfg)
    with pytest.raises(ScanError, match="pass --data DIR"):
        load_source(DataConfig(source="folder"))


def test_data_option_directory_selects_folder(tmp_path):
    root = tree(tmp_path / "r", {"a.png": (1, 1, 1)})
    cfg = build_config(data=str(root))
    assert (cfg.data.source, cfg.data.path) == ("folder", str(root))
    assert build_config(data=str(tmp_path / "x.npz")).data.source == "npz"
    with pytest.raises(ScanError, match="no such folder or file"):
        build_config(data=str(tmp_path / "missing"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ScanError, match="not a folder or an .npz file"):
        build_config(data=str(tmp_path / "file.txt"))
