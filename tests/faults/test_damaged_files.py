"""Every file of a finished run, emptied, truncated or overwritten with garbage: each command that
reads it stops with one line naming it (no traceback), and `--force` rebuilds what it damaged."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faultkit import TINY, assert_one_line_error, copy_run, finished_run, own_cache, run_cli, snapshot  # noqa: F401

EVALUATING = ("run", "evaluate")
# Which commands read each file of a finished run (`run` on a finished run evaluates it again).
READERS = {
    "config.yaml": ("run", "evaluate", "report"),
    "data.json": ("run", "evaluate", "report"),
    "metrics.json": ("report",),
    "pretext/done.json": ("run", "evaluate", "report"),
    "mine/done.json": ("run", "evaluate", "report"),
    "cluster/done.json": ("run", "evaluate", "report"),
    "selflabel/done.json": ("run", "evaluate", "report"),
    "mine/neighbors.npy": (*EVALUATING, "report"),
    "mine/val_neighbors.npy": (*EVALUATING, "report"),
    "cluster/model.safetensors": EVALUATING,
    "cluster/model.json": EVALUATING,
    "selflabel/model.safetensors": (*EVALUATING, "report", "predict"),
    "selflabel/model.json": (*EVALUATING, "report", "predict"),
}
# Read only by a stage that runs again (see test_unfinished_stage_reads_damaged_input), or never.
READ_BY_STAGES = {"pretext/checkpoint.pt", "cluster/checkpoint.pt", "selflabel/checkpoint.pt",
                  "pretext/backbone.safetensors", "pretext/projection_head.safetensors", "mine/features.npy"}
WRITE_ONLY = {"log.txt", ".scan-run", "pretext/history.jsonl", "cluster/history.jsonl", "selflabel/history.jsonl"}
DAMAGES = ("empty", "truncated", "garbage")


def damage(path: Path, how: str, rng: random.Random) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(bytes(rng.randrange(256) for _ in range(max(64, min(len(data), 4096)))))


def command(name: str, run: Path, images: Path) -> list:
    return {"run": ["run", "--out", run, *TINY], "evaluate": ["evaluate", run, "--device", "cpu"],
            "report": ["report", run, "--device", "cpu"], "predict": ["predict", run, images, "--device", "cpu"]}[name]


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8), 60 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_every_file_of_a_run_is_covered(finished_run):
    files = set(snapshot(finished_run)) - {".lock"}
    assert files == set(READERS) | READ_BY_STAGES | WRITE_ONLY


@pytest.mark.parametrize("name", sorted(READERS))
def test_damaged_file_is_one_line_for_every_command(name, finished_run, tmp_path, capsys, images):
    rng = random.Random(name)
    how = rng.choice(DAMAGES)
    run = copy_run(finished_run, tmp_path / "run")
    damage(run / name, how, rng)
    for cmd in READERS[name]:
        line = assert_one_line_error(run_cli(capsys, *command(cmd, run, images)), name.split("/")[-1])
        assert "damaged" in line, (how, cmd, line)
    for cmd in {"run", "evaluate", "report", "predict"} - set(READERS[name]) - {"run"}:
        result = run_cli(capsys, *command(cmd, run, images))
        assert result.code == 0 or assert_one_line_error(result), (cmd, result.err)


@pytest.mark.parametrize("name", ["cluster/model.safetensors", "mine/done.json", "data.json"])
def test_force_rebuilds_what_is_damaged(name, finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    damage(run / name, "truncated", random.Random(0))
    line = assert_one_line_error(run_cli(capsys, *command("run", run, run)))
    assert "rerun with --force" in line
    result = run_cli(capsys, "run", "--out", run, "--force", *TINY)
    assert result.code == 0, result.err
    assert "rebuilding it" in result.out or "recording the images" in result.out
    ours, theirs = (json.loads((r / "metrics.json").read_text()) for r in (run, finished_run))
    ours.pop("seconds"), theirs.pop("seconds")
    assert ours == theirs


@pytest.mark.parametrize("name, unfinished", [("pretext/backbone.safetensors", "mine"),
                                              ("cluster/checkpoint.pt", "cluster")])
def test_unfinished_stage_reads_damaged_input(name, unfinished, finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    (run / unfinished / "done.json").unlink()
    damage(run / name, "garbage", random.Random(1))
    assert_one_line_error(run_cli(capsys, *command("run", run, run)), name.split("/")[-1], "damaged")


def test_damaged_config_can_be_replaced_with_force(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    (run / "config.yaml").write_text("data: [unclosed\n")
    assert_one_line_error(run_cli(capsys, "run", "--out", run, *TINY), "config.yaml is damaged")
    result = run_cli(capsys, "run", "--out", run, "--force", *TINY)
    assert result.code == 0, result.err
    assert "skipped" in result.out  # the stages' fingerprints still match: nothing retrained
    shutil.rmtree(run)
