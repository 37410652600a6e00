"""A corpus of bad inputs — command-line values, .npz files, folders, model files, output
folders — each answered with one `scan: error:` line, no traceback, no run folder left behind and
no file outside the run directory changed."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from faultkit import TINY, assert_one_line_error, cli_env, finished_run, npz_arrays, own_cache, run_cli, snapshot  # noqa: F401

# name -> (arguments after `scan`, a fragment of the one-line error). {npz}, {dir}, {file} are
# filled in by the test: a valid .npz, an empty folder, an ordinary file.
CLI_CASES = {
    "negative seed": (["run", "--seed", "-1"], "--seed must be between 0"),
    "seed too large": (["run", "--seed", str(2**32)], "--seed must be between 0"),
    "one cluster": (["run", "--clusters", "1"], "--clusters must be at least 2"),
    "size zero": (["run", "--size", "0"], "data.size must be > 0"),
    "unknown preset": (["run", "nope"], "unknown preset"),
    "two presets": (["run", "digits", "mnist"], "at most one preset"),
    "unknown key": (["run", "pretext.epoch=3"], "did you mean 'epochs'"),
    "wrong type": (["run", "pretext.epochs=abc"], "must be an integer"),
    "zero std": (["run", "data.std=[0]"], "data.std must be > 0"),
    "negative std": (["run", "data.std=[-0.2]"], "data.std must be > 0"),
    "mean above one": (["run", "data.mean=[2]"], "data.mean must lie in [0, 1]"),
    "nan mean": (["run", "data.mean=[.nan]"], "data.mean must lie in [0, 1]"),
    "wrong number of std values": (["run", "data.std=[0.2, 0.2]"], "data.std needs 1 values"),
    "k zero": (["run", "mine.k=0"], "mine.k must be > 0"),
    "threshold above one": (["run", "selflabel.threshold=1.5"], "selflabel.threshold"),
    "crop scale reversed": (["run", "data.crop_scale=[0.5, 0.2]"], "data.crop_scale"),
    "negative workers": (["run", "runtime.workers=-1"], "runtime.workers"),
    "preset as override": (["run", "preset=mnist"], "chosen by name"),
    "unknown device": (["run", "--device", "tpu"], "invalid choice"),
    "missing data": (["run", "--data", "/nonexistent/data"], "no such folder or file"),
    "data is an ordinary file": (["run", "--data", "{file}"], "not a folder or an .npz"),
    "empty folder": (["run", "--data", "{dir}"], "no image files"),
    "k above the images": (["run", "--data", "{npz}", "mine.k=500"], "mine.k=500 must be smaller"),
    "predict batch size zero": (["predict", "{dir}", "{file}", "--batch-size", "0"], "--batch-size"),
    "report per-cluster zero": (["report", "{dir}", "--per-cluster", "0"], "--per-cluster"),
    "report on a folder that is no run": (["report", "{dir}"], "not a run directory"),
    "evaluate a preset without --model": (["evaluate", "digits"], "is a preset"),
    "predict on nothing": (["predict", "/nonexistent/run", "{file}"], "no such run directory"),
    "import of a file that is no checkpoint": (["import", "{file}", "--preset", "digits", "--out", "{out}"], "damaged"),
}

# name -> (what to change in the tiny arrays, a fragment of the error)
NPZ_CASES = {
    "five channels": ({"x_train": np.zeros((30, 8, 8, 5), np.uint8)}, "C = 1, 3 or 4"),
    "two channels": ({"x_train": np.zeros((30, 8, 8, 2), np.uint8)}, "C = 1, 3 or 4"),
    "five dimensions": ({"x_train": np.zeros((30, 1, 8, 8, 1), np.uint8)}, "N×H×W or N×H×W×C"),
    "float pixels": ({"x_train": np.zeros((30, 8, 8), np.float32)}, "must be uint8"),
    "label minus one": ({"y_train": np.r_[-1, np.arange(29) % 3]}, "labels from -1"),
    "label beyond the classes": ({"y_test": np.arange(10) % 4, "classes": np.array(["a", "b", "c"])}, "0..2"),
    "two-dimensional labels": ({"y_train": np.zeros((30, 2), np.int64)}, "1-D integer array"),
    "fewer labels than images": ({"y_train": np.arange(29) % 3}, "29 labels"),
    "float labels": ({"y_test": np.zeros(10, np.float32)}, "1-D integer array"),
    "object array": ({"classes": np.array([{"a": 1}, None, 3], dtype=object)}, "not a readable .npz"),
    "no test images": ({"x_test": np.zeros((0, 8, 8), np.uint8), "y_test": np.zeros(0, np.int64)}, "0 test"),
    "zero-sized images": ({"x_train": np.zeros((30, 0, 8), np.uint8)}, "at least 1×1"),
}


def _npz(path: Path, drop: tuple[str, ...] = (), **change) -> Path:
    arrays = {**npz_arrays(), **change}
    for key in drop:
        arrays.pop(key)
    np.savez(path, **arrays)
    return path


def _lying_npz(path: Path) -> Path:
    """x_train's .npy header declares 10^12 bytes; the member holds 64."""
    arrays = npz_arrays()
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            data = buffer.getvalue()
            if name == "x_train":
                header = {"descr": "|u1", "fortran_order": False, "shape": (10**6, 1000, 1000)}
                buffer = io.BytesIO()
                np.lib.format.write_array_header_1_0(buffer, header)
                data = buffer.getvalue() + bytes(64)
            archive.writestr(f"{name}.npy", data)
    return path


@pytest.fixture
def places(tmp_path) -> dict[str, str]:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not data\n")
    return {"npz": str(_npz(tmp_path / "ok.npz")), "dir": str(tmp_path / "empty"),
            "file": str(tmp_path / "notes.txt"), "out": str(tmp_path / "out")}


def _check(capsys, tmp_path: Path, args: list, *fragments: str) -> str:
    """One-line error, and nothing created or changed in tmp_path (a run folder included)."""
    before = snapshot(tmp_path, skip=(tmp_path / "cache",))
    line = assert_one_line_error(run_cli(capsys, *args), *fragments)
    assert snapshot(tmp_path, skip=(tmp_path / "cache",)) == before
    assert not (tmp_path / "out").exists()
    return line


@pytest.mark.parametrize("name", sorted(CLI_CASES))
def test_bad_command_line(name, places, tmp_path, capsys):
    args, fragment = CLI_CASES[name]
    args = [a.format(**places) for a in args]
    if args[0] == "run":  # the tiny run's settings first, so that the case's own override wins
        args = [args[0], "--out", places["out"], *TINY, *args[1:]]
    _check(capsys, tmp_path, args, fragment)


@pytest.mark.parametrize("name", sorted(NPZ_CASES))
def test_bad_npz(name, tmp_path, capsys):
    change, fragment = NPZ_CASES[name]
    path = _npz(tmp_path / "bad.npz", **change)
    _check(capsys, tmp_path, ["run", "--data", path, "--out", tmp_path / "out", *TINY], fragment)


@pytest.mark.parametrize("make, fragment", [
    (lambda p: _npz(p, drop=("y_test",)), "missing array(s) y_test"),
    (lambda p: p.write_bytes(b""), "not a readable .npz"),
    (lambda p: p.write_bytes(b"PK\x03\x04 not really a zip"), "not a readable .npz"),
    (lambda p: np.save(p.open("wb"), np.zeros(3)), "a single array"),
    (_lying_npz, "declares"),
], ids=["missing array", "empty file", "broken zip", "single array", "header lies about its size"])
def test_bad_npz_file(make, fragment, tmp_path, capsys):
    path = tmp_path / "bad.npz"
    make(path)
    _check(capsys, tmp_path, ["run", "--data", path, "--out", tmp_path / "out", *TINY], fragment)


def test_npz_over_the_memory_budget_is_refused_before_inflating(tmp_path, capsys, monkeypatch):
    import scan.data.decode

    monkeypatch.setattr(scan.data.decode, "available_memory", lambda: 1000)
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda *a: pytest.fail("inflated"))
    path = _npz(tmp_path / "ok.npz")
    _check(capsys, tmp_path, ["run", "--data", path, "--out", tmp_path / "out", *TINY], "of memory available")


def test_folder_of_broken_images(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        (folder / name).write_text("not an image")
    _check(capsys, tmp_path, ["run", "folder", "--data", folder, "--size", "8", "--out", tmp_path / "out", *TINY],
           "none of the 2 image files could be read")


# ---------------------------------------------------------------------------------------------
# Output folders


def test_out_on_a_folder_that_is_no_run_is_refused_and_untouched(tmp_path, capsys):
    out = tmp_path / "mine-not-scan"
    for sub in ("mine", "cluster", "selflabel"):
        (out / sub).mkdir(parents=True)
        (out / sub / "precious.txt").write_text("user data\n")
    before = snapshot(tmp_path, skip=(tmp_path / "cache",))
    for extra in ([], ["--force"]):
        assert_one_line_error(run_cli(capsys, "run", "--out", out, *extra, *TINY), "not a scan run directory")
    assert snapshot(tmp_path, skip=(tmp_path / "cache",)) == before


def test_out_on_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "out").write_text("x")
    assert_one_line_error(run_cli(capsys, "run", "--out", tmp_path / "out", *TINY), "is a file")
    assert_one_line_error(run_cli(capsys, "run", "--out", tmp_path / "out" / "run", *TINY), "cannot create --out")


def test_failed_run_leaves_no_folder(tmp_path):
    out = tmp_path / "new" / "run"
    proc = subprocess.run([sys.executable, "-m", "scan", "run", "--data", tmp_path / "none.npz", "--out", out, *TINY],
                          env=cli_env(tmp_path / "cache"), capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.startswith("scan: error: --data") and "Traceback" not in proc.stderr
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------------------------------------
# Model files: an exported model.safetensors + model.json, tampered


@pytest.fixture
def exported(finished_run, tmp_path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("model.json", "model.safetensors"):
        shutil.copy(finished_run / "selflabel" / name, folder / name)
    (tmp_path / "img.png").write_bytes(_png())
    return folder


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


CARD_CASES = {
    "head out of range": ({"head": 7}, "head 7 is not one of its 1 heads"),
    "more heads than the weights": ({"num_heads": 3}, "holds 1 head(s)"),
    "K differs from the weights": ({"num_clusters": 12, "cluster_names": None}, "of 10 clusters"),
    "input size zero": ({"input_size": 0}, "input_size is 0"),
    "input size absurd": ({"input_size": 10**9}, "input_size is 1000000000"),
    "unknown backbone": ({"backbone": "os.system"}, "unknown backbone"),
    "five channels": ({"in_channels": 5}, "in_channels is 5"),
    "zero std": ({"std": [0.0]}, "std must be > 0"),
    "crop of zero": ({"crop": 0}, "crop is 0"),
    "not an object": ([1, 2], "not a JSON object"),
}


@pytest.mark.parametrize("name", sorted(CARD_CASES))
def test_tampered_model_card(name, exported, tmp_path, capsys):
    change, fragment = CARD_CASES[name]
    card = json.loads((exported / "model.json").read_text())
    card = change if isinstance(change, list) else {**card, **change}
    (exported / "model.json").write_text(json.dumps(card))
    assert_one_line_error(run_cli(capsys, "predict", exported, tmp_path / "img.png", "--device", "cpu"),
                          "model.json is damaged", fragment)


def _tamper_safetensors(path: Path, how: str) -> None:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    if how == "huge header":
        path.write_bytes(struct.pack("<Q", 2**60) + data[8:])
        return
    key = next(k for k in header if k != "__metadata__")
    if how == "absurd offsets":
        header[key]["data_offsets"] = [0, 2**60]
    else:  # shape that does not fit the model
        header[key]["shape"] = [1]
        header[key]["data_offsets"] = [header[key]["data_offsets"][0], header[key]["data_offsets"][0] + 4]
        header[key]["dtype"] = "F32"
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])


@pytest.mark.parametrize("how", ["huge header", "absurd offsets", "wrong shape"])
def test_tampered_safetensors(how, exported, tmp_path, capsys):
    _tamper_safetensors(exported / "model.safetensors", how)
    assert_one_line_error(run_cli(capsys, "predict", exported, tmp_path / "img.png", "--device", "cpu"),
                          "model.safetensors is damaged")


def test_checkpoint_with_a_pickle_payload_is_refused(tmp_path, capsys):
    import os

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"model": Payload()}, tmp_path / "evil.pth.tar")
    _check(capsys, tmp_path, ["import", tmp_path / "evil.pth.tar", "--preset", "digits", "--out", tmp_path / "out"],
           "arbitrary Python objects")
    assert not (tmp_path / "pwned").exists()
