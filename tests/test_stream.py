"""Streaming images larger than memory: DiskImages, batches through DataLoader workers, the
choice between memory and disk, and a folder run streamed end to end."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from scan.cli import main
from scan.config import DataConfig
from scan.data import decode
from scan.data.folder import load_folder
from scan.data.sources import load_source, place_images
from scan.data.splits import ImageSplits
from scan.data.stream import DiskImages, image_batches, on_device
from scan.errors import ScanError
from scan.training.batches import anchor_neighbor_batches, shuffled_batches
from scan.training.context import RunContext, Runtime
from test_folder_run import TINY, shapes  # noqa: F401 - the generated image folder fixture


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "scan" / "decoded"


@pytest.fixture
def on_disk(tmp_path) -> tuple[DiskImages, np.ndarray]:
    """DiskImages over 10 random 3×4×4 images in a 12-row file (the last two rows unused)."""
    array = np.random.default_rng(0).integers(0, 256, (12, 3, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "x.npy", array)
    return DiskImages(tmp_path / "x.npy", length=10), array[:10]


def test_disk_images_index_like_a_tensor(on_disk):
    images, array = on_disk
    assert len(images) == 10 and images.shape == (10, 3, 4, 4) and images.nbytes == 480
    index = torch.tensor([7, 2, 2, 9, 0])  # unsorted, with a repeat
    assert torch.equal(images[index], torch.from_numpy(array[[7, 2, 2, 9, 0]]))
    assert torch.equal(images[2:5], torch.from_numpy(array[2:5]))
    assert torch.equal(images[3], torch.from_numpy(array[3]))
    assert torch.equal(images.load(), torch.from_numpy(array))
    part = images.subset(np.array([8, 1, 4]))
    assert part.shape == (3, 3, 4, 4) and torch.equal(part[torch.tensor([2, 0])], torch.from_numpy(array[[4, 8]]))
    again = pickle.loads(pickle.dumps(part))  # what a DataLoader worker receives
    assert torch.equal(again.load(), torch.from_numpy(array[[8, 1, 4]]))


def test_disk_images_refuse_a_file_too_short(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="with 3 rows"):
        DiskImages(tmp_path / "x.npy", length=3)


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_equal_in_memory_ones(on_disk, workers):
    images, array = on_disk
    torch.manual_seed(5)
    expected = [(i.clone(), p.clone()) for i, p in image_batches(torch.from_numpy(array), shuffled_batches(_cpu_context(5), 10, 3), torch.device("cpu"))]
    after_memory = torch.rand(1)
    torch.manual_seed(5)
    streamed = list(image_batches(images, shuffled_batches(_cpu_context(5), 10, 3), torch.device("cpu"), workers))
    assert len(streamed) == len(expected) == 3
    for (i, p), (j, q) in zip(expected, streamed):
        assert torch.equal(i, j) and torch.equal(p, q)
    # the loader's own seed does not come from the global stream that shuffling and augmentation use
    assert torch.equal(torch.rand(1), after_memory)


def _cpu_context(seed: int) -> RunContext:
    ctx = RunContext(Runtime(torch.device("cpu")))
    ctx.shuffle.manual_seed(seed)
    return ctx


def test_anchor_neighbor_batches_pair_each_anchor_with_one_of_its_neighbours():
    neighbors = torch.tensor([[1, 2], [2, 3], [3, 0], [0, 1], [1, 2], [2, 3]])
    batches = list(anchor_neighbor_batches(_cpu_context(0), neighbors, 2))
    assert len(batches) == 3
    anchors = torch.cat([b[:2] for b in batches])
    assert sorted(anchors.tolist()) == list(range(6))
    for batch in batches:
        for a, n in zip(batch[:2].tolist(), batch[2:].tolist()):
            assert n in neighbors[a].tolist()


# ---------------------------------------------------------------------------------------------
# Memory or disk


def _folder(tmp_path: Path, n: int = 6) -> Path:
    from PIL import Image

    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(n):
        Image.new("RGB", (10, 10), (i * 40, 0, 0)).save(root / f"{i}.png")
    return root


def test_a_folder_that_fits_is_read_into_memory_and_one_that_does_not_is_streamed(tmp_path, monkeypatch, capsys):
    cfg = DataConfig(source="folder", path=str(_folder(tmp_path)), size=8, channels=3)
    data = load_source(cfg)
    assert not data.streamed and isinstance(data.train, torch.Tensor) and data.test is data.train
    monkeypatch.setattr(decode, "available_memory", lambda: 1000)  # 6·3·8·8 = 1152 bytes do not fit
    streamed = load_source(cfg)
    assert streamed.streamed and isinstance(streamed.train, DiskImages)
    assert torch.equal(streamed.train.load(), data.train)
    assert "streaming the decoded images" in capsys.readouterr().out
    with pytest.raises(ScanError, match="leave runtime.stream at auto"):
        load_source(cfg, stream=False)


def test_stream_true_streams_what_would_fit_and_is_a_no_op_for_in_memory_sources(tmp_path, capsys):
    cfg = DataConfig(source="folder", path=str(_folder(tmp_path)), size=8, channels=3, test_fraction=0.5)
    data = load_source(cfg, stream=True)
    assert isinstance(data.train, DiskImages) and isinstance(data.test, DiskImages)
    assert len(data.train) == len(data.test) == 3
    memory = ImageSplits(train=torch.zeros(2, 1, 4, 4, dtype=torch.uint8), test=torch.zeros(1, 1, 4, 4, dtype=torch.uint8))
    assert place_images(memory, True) is memory
    assert "has no effect" in capsys.readouterr().out


def test_without_room_on_disk_the_folder_is_decoded_into_memory(tmp_path, monkeypatch, private_cache, capsys):
    root = _folder(tmp_path)
    monkeypatch.setattr(decode.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 0))
    data = load_folder(root, size=8, channels=3)
    assert isinstance(data.train, torch.Tensor) and data.train[5, 0, 0, 0] == 200
    assert "not caching decoded images" in capsys.readouterr().err
    assert not list(private_cache.glob("*"))
    monkeypatch.setattr(decode, "available_memory", lambda: 1000)
    with pytest.raises(ScanError, match="free disk space in the cache folder"):
        load_folder(root, size=8, channels=3)


def test_an_interrupted_decode_leaves_no_cache(tmp_path, monkeypatch, private_cache):
    root = _folder(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(decode, "decode_files", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_folder(root, size=8, channels=3)
    assert not list(private_cache.glob("*"))


# ---------------------------------------------------------------------------------------------
# A streamed run


def _run(shapes: Path, out: Path, *extra: str) -> dict:
    """Run the folder preset on `shapes`; its metrics without the wall times."""
    assert main(["run", "folder", "--data", str(shapes), "--out", str(out), *TINY, *extra]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.pop("seconds")
    return metrics


def test_a_streamed_run_equals_an_in_memory_run(shapes, tmp_path, capsys):  # noqa: F811
    memory = _run(shapes, tmp_path / "memory", "runtime.stream=false")
    # Without workers nothing is prefetched: every random draw happens in the same order.
    streamed = _run(shapes, tmp_path / "streamed", "runtime.stream=true", "runtime.workers=0")
    assert "streaming the decoded images" in capsys.readouterr().out
    assert streamed == memory
    for step in ("pretext/backbone", "selflabel/model"):
        a, b = (load_file(tmp_path / run / f"{step}.safetensors") for run in ("memory", "streamed"))
        assert all(torch.equal(a[k], b[k]) for k in a)
    # With workers the pretext stage and mining still match exactly.
    _run(shapes, tmp_path / "workers", "runtime.stream=true", "runtime.workers=2")
    a, b = (load_file(tmp_path / run / "pretext/backbone.safetensors") for run in ("memory", "workers"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert np.array_equal(np.load(tmp_path / "memory/mine/neighbors.npy"), np.load(tmp_path / "workers/mine/neighbors.npy"))


def test_images_too_large_for_the_gpu_stay_on_the_host(monkeypatch):
    images = torch.zeros(10, 3, 4, 4, dtype=torch.uint8)  # 480 bytes
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (900, 10**9))  # half: 450 < 480
    assert on_device(images, torch.device("cuda")) is images
    assert on_device(images, torch.device("cpu")) is images
    batches = list(image_batches(images, [torch.tensor([3, 1])], torch.device("cpu")))
    assert torch.equal(batches[0][1], images[[3, 1]])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_images_that_fit_move_to_the_gpu():
    images = torch.zeros(10, 3, 4, 4, dtype=torch.uint8)
    assert on_device(images, torch.device("cuda")).device.type == "cuda"


def test_anchor_neighbor_batches_draw_the_anchor_itself_one_time_in_k_plus_one_when_asked():
    neighbors = torch.randint(5000, 6000, (5000, 4))  # never an anchor's own index

    def share_of_self(include_self: bool) -> float:
        batches = anchor_neighbor_batches(_cpu_context(0), neighbors, 500, include_self=include_self)
        anchors, partners = torch.stack(list(batches)).view(-1, 2, 500).unbind(1)
        return (anchors == partners).float().mean().item()

    assert abs(share_of_self(True) - 1 / 5) < 0.02
    assert share_of_self(False) == 0.0
