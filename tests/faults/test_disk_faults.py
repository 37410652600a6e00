"""Read-only and full disks: one line, and the finished work stays. Full and read-only file
systems are small tmpfs mounts, made when the test runs as root (skipped otherwise)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from faultkit import TINY, assert_one_line_error, copy_run, finished_run, own_cache, run_cli, snapshot  # noqa: F401



@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh tmpfs of that many bytes; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounts = []

    def mount(size: int, name: str = "disk") -> Path:
        where = tmp_path / name
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
        mounts.append(where)
        return where

    yield mount
    for where in reversed(mounts):
        subprocess.run(["umount", "-l", str(where)], check=False)


def _remount_read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)


def test_disk_full_during_training_is_one_line_without_temp_files(tmpfs, capsys):
    disk = tmpfs(2**20)  # less than the first pretext checkpoint
    out = disk / "run"
    line = assert_one_line_error(run_cli(capsys, "run", "--out", out, *TINY), "No space left on device")
    assert "pretext/checkpoint.pt" in line and "finished work is kept" in line
    assert not [p for p in snapshot(out) if p.endswith(".tmp")]


def test_full_disk_under_a_finished_run_is_one_line_and_changes_nothing(tmpfs, finished_run, capsys):
    disk = tmpfs(32 * 2**20)
    run = copy_run(finished_run, disk / "run")
    with open(disk / "filler", "wb") as filler:  # take every free byte
        try:
            while True:
                filler.write(bytes(2**16))
                filler.flush()
        except OSError:
            pass
    kept = (run / "log.txt", run / ".lock")
    before = snapshot(run, skip=kept)
    for args in (["run", "--out", run, *TINY], ["evaluate", run], ["report", run]):
        assert_one_line_error(run_cli(capsys, *args, "--device", "cpu"), "No space left on device")
    assert snapshot(run, skip=kept) == before


def test_read_only_run_is_one_line_for_writers_and_readable_by_predict(tmpfs, finished_run, tmp_path, capsys):
    disk = tmpfs(64 * 2**20)
    run = copy_run(finished_run, disk / "run")
    before = snapshot(run)
    _remount_read_only(disk)
    assert_one_line_error(run_cli(capsys, "run", "--out", run, *TINY), "cannot write to --out")
    for command in ("evaluate", "report"):
        assert_one_line_error(run_cli(capsys, command, run, "--device", "cpu"), "Read-only file system")
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(Path(__file__).parent / "faultkit.py", images / "not-an-image.png")
    result = run_cli(capsys, "predict", run, images, "--device", "cpu")
    assert result.code == 0 and "skipped" in result.err
    assert snapshot(run) == before
