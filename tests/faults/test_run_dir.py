"""What a run directory promises: an older run without the marker is adopted, temp files of
killed writers are cleaned up (run folder and decode cache), images that changed since a run
was built rerun it (and are refused by its readers), and file names that are not UTF-8 do not
crash the log, skipped.txt, assignments.csv or predict."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from PIL import Image

from faultkit import TINY, assert_one_line_error, copy_run, finished_run, npz_arrays, own_cache, run_cli  # noqa: F401

from scan.checkpoint import RunDir, save_text
from scan.console import echo, set_log_file
from scan.data.decode import cache_root
from scan.data.sources import load_source
from scan.config import build_config
from scan.report import Assigned, write_assignments
from scan.rundir import commit_config


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_run_made_before_the_marker_is_adopted(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    (run / ".scan-run").unlink()
    result = run_cli(capsys, "run", "--out", run, *TINY)
    assert result.code == 0 and result.out.count("finished earlier with this config, skipped") == 4
    assert (run / ".scan-run").is_file()


def test_temp_files_of_dead_writers_are_removed_and_live_ones_kept(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    dead, live = _dead_pid(), os.getppid()
    stale = run / "cluster" / f".checkpoint.pt.pid{dead}.x1y2z3.tmp"
    alive = run / "cluster" / f".checkpoint.pt.pid{live}.a1b2c3.tmp"
    for path in (stale, alive):
        path.write_bytes(b"partial")
    assert run_cli(capsys, "run", "--out", run, *TINY).code == 0
    assert not stale.exists() and alive.exists()


def test_partial_decode_of_a_killed_process_is_removed(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((6, 6), 40 * i, np.uint8)).save(folder / f"{i}.png")
    cache = cache_root() / "decoded"
    cache.mkdir(parents=True)
    legacy = cache / f"{'ab' * 32}.npy.{_dead_pid()}.tmp"  # how earlier versions named it
    current = cache / f".{'cd' * 32}.npy.pid{_dead_pid()}.part.tmp"
    for path in (legacy, current):
        path.write_bytes(bytes(1000))
    load_source(build_config("folder", data=str(folder), size=4).data)
    assert not legacy.exists() and not current.exists()
    assert "a partial decode left by a process that is gone" in capsys.readouterr().out


def test_changed_images_rerun_every_stage_and_are_refused_by_readers(tmp_path, capsys):
    arrays = npz_arrays(n_train=40, n_test=12)
    np.savez(tmp_path / "d.npz", **arrays)
    args = ["run", "--data", tmp_path / "d.npz", "--clusters", "3", "--out", tmp_path / "run", *TINY,
            "mine.k=5", "pretext.batch_size=16", "cluster.batch_size=16", "selflabel.batch_size=16"]
    assert run_cli(capsys, *args).code == 0
    arrays["x_train"][0, 0, 0] ^= 1  # one pixel of one image
    np.savez(tmp_path / "d.npz", **arrays)
    for command in ("evaluate", "report"):
        assert_one_line_error(run_cli(capsys, command, tmp_path / "run", "--device", "cpu"),
                              "the images differ", "the same number of images, other pixels")
    result = run_cli(capsys, *args)
    assert result.code == 0
    assert "data: the images differ from those this run was built from" in result.out
    assert "finished earlier" not in result.out and "pretext 1/3" in result.out
    assert run_cli(capsys, "evaluate", tmp_path / "run", "--device", "cpu").code == 0


def test_file_names_that_are_not_utf8(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    good, broken = os.fsdecode(b"caf\xe9-\xff.png"), os.fsdecode(b"\xfa\xfb.png")
    for i, name in enumerate((good, "plain.png")):
        Image.fromarray(np.full((6, 6), 90 * i, np.uint8)).save(folder / name)
    (folder / broken).write_bytes(b"not an image")
    cfg = build_config("folder", data=str(folder), size=4)
    data = load_source(cfg.data)
    assert good in data.ids("train") and data.skipped == [broken]

    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    set_log_file(run.log)
    try:
        echo(f"skipped {broken}")
        commit_config(run, cfg, data)
    finally:
        set_log_file(None)
    assert "\ufffd" in run.log.read_text(encoding="utf-8")
    assert (run.root / "skipped.txt").read_bytes() == b"\xfa\xfb.png\n"  # the name's own bytes

    n = len(data.train)
    assigned = {s: Assigned(np.zeros(n, np.int64), np.ones(n, np.float32)) for s in ("train", "test")}
    write_assignments(run.root / "assignments.csv", data, assigned)
    assert b"caf\xe9-\xff.png" in (run.root / "assignments.csv").read_bytes()
    save_text(good, tmp_path / "name.txt")
    assert (tmp_path / "name.txt").read_bytes() == b"caf\xe9-\xff.png"


def test_predict_prints_file_names_that_are_not_utf8(finished_run, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / os.fsdecode(b"\xff.png"))
    (folder / os.fsdecode(b"\xfe.png")).write_bytes(b"broken")
    result = run_cli(capsys, "predict", finished_run, folder, "--output", tmp_path / "p.csv", "--device", "cpu")
    assert result.code == 0, result.err
    assert "skipped" in result.err and "\ufffd.png" in result.err
    rows = (tmp_path / "p.csv").read_bytes().splitlines()
    assert len(rows) == 2 and rows[1].startswith(bytes(folder) + b"/\xff.png,")
