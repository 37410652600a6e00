"""Bad input to the `scan` CLI: a non-zero exit and exactly one 'scan: error:' line, no traceback."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from scan.cli import main
from scan.config import preset_names
from scan.console import set_log_file
from scan.models.backbones import BACKBONES

# Keeps any command that wrongly gets past its check down to a second of work.
TINY = ("pretext.epochs=1", "cluster.epochs=1", "selflabel.epochs=1", "selflabel.min_confident=0", "selflabel.max_balance_drop=1", "selflabel.max_agreement_drop=1", "pretext.batch_size=8",
        "cluster.batch_size=8", "selflabel.batch_size=8", "mine.k=5")


def cli(command: str, *args, out=None, data=None, clusters=None, device: str = "cpu") -> list[str]:
    """argv for `scan COMMAND [key=value ...] [PRESET] [key=value ...] --options`: all positionals
    first and contiguous (see test_overrides_may_follow_options for why), the TINY overrides
    before `args` so that overrides in `args` win, then the options."""
    argv = [command, *TINY, *map(str, args)]
    for flag, value in (("--out", out), ("--data", data), ("--clusters", clusters), ("--device", device)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    """Run in tmp_path (a missing --out would default to runs/PRESET there) and stop the
    console from mirroring into a deleted run's log.txt after the test."""
    monkeypatch.chdir(tmp_path)
    yield
    set_log_file(None)


def fails(capsys, argv: list[str]) -> str:
    """Run main(argv) expecting a user error; return its single stderr line."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse usage errors exit through SystemExit
        code = exit_.code
    err = capsys.readouterr().err
    assert code not in (0, None), f"expected failure, got exit {code}"
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, f"stderr should be one line, got: {err!r}"
    assert lines[0].startswith("scan: error:")
    return lines[0]


def test_presets_prints_one_line_per_preset(capsys):
    assert main(["presets"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    names = preset_names()
    assert len(lines) == len(names)
    for name, line in zip(names, lines):
        assert line.startswith(f"{name}: source ")
    assert captured.err == ""


def test_unknown_preset(capsys, tmp_path):
    line = fails(capsys, cli("run", "nosuchpreset", out=tmp_path / "r"))
    assert "unknown preset 'nosuchpreset'" in line and "digits" in line


def test_two_presets(capsys, tmp_path):
    line = fails(capsys, cli("run", "digits", "digits2", out=tmp_path / "r"))
    assert "at most one preset" in line


def test_unknown_backbone_lists_valid(capsys, tmp_path):
    line = fails(capsys, cli("pretext", "pretext.backbone=vgg", out=tmp_path / "r"))
    assert "pretext.backbone" in line and "'vgg'" in line
    for name in BACKBONES:
        assert name in line


def test_unknown_key_suggests(capsys, tmp_path):
    line = fails(capsys, cli("run", "pretext.epoch=5", out=tmp_path / "r"))
    assert "did you mean 'epochs'" in line


def test_one_cluster(capsys, tmp_path):
    line = fails(capsys, cli("run", clusters=1, out=tmp_path / "r"))
    assert "--clusters must be at least 2" in line


def test_non_integer_clusters_is_a_usage_error(capsys):
    line = fails(capsys, ["run", "--clusters", "many"])
    assert "--clusters" in line


def test_more_clusters_than_train_images(capsys, tmp_path, tiny_npz):
    line = fails(capsys, cli("run", data=tiny_npz, clusters=50, out=tmp_path / "r"))
    assert "--clusters 50 is larger than the number of train images (30)" in line


@pytest.mark.parametrize("k", [30, 31])
def test_mine_k_not_below_train_images(capsys, tmp_path, tiny_npz, k):
    line = fails(capsys, cli("pretext", f"mine.k={k}", data=tiny_npz, clusters=3, out=tmp_path / "r"))
    assert f"mine.k={k} must be smaller than the number of train images (30)" in line


def test_out_under_a_file(capsys, tmp_path, tiny_npz):
    blocker = tmp_path / "file.txt"
    blocker.write_text("I am a file")
    line = fails(capsys, cli("run", data=tiny_npz, clusters=3, out=blocker / "run"))
    assert "cannot create --out" in line
    assert blocker.read_text() == "I am a file"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_out_in_read_only_dir(capsys, tmp_path, tiny_npz):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = fails(capsys, cli("run", data=tiny_npz, clusters=3, out=locked / "run"))
        assert "--out" in line
        line = fails(capsys, cli("run", data=tiny_npz, clusters=3, out=locked))
        assert "cannot write to --out" in line
    finally:
        locked.chmod(0o700)


def test_run_dir_with_another_config_needs_force(capsys, tmp_path, tiny_npz):
    out = tmp_path / "run"
    # the brief's tiny pretext run, with the overrides kept together before the options
    first = ["pretext", "pretext.epochs=1", "pretext.batch_size=8", "cluster.batch_size=8", "selflabel.batch_size=8",
             "mine.k=5", "--out", out, "--data", tiny_npz, "--clusters", "3", "--device", "cpu"]
    assert main([str(a) for a in first]) == 0
    assert (out / "config.yaml").is_file() and (out / "pretext" / "done.json").is_file()
    config_before = (out / "config.yaml").read_text()

    changed = [a if a != "pretext.epochs=1" else "pretext.epochs=2" for a in first]
    line = fails(capsys, changed)
    assert "--force" in line
    assert "pretext.epochs: 1 -> 2" in line
    assert (out / "config.yaml").read_text() == config_before  # the refused config is not written

    # only the runtime device differs: accepted, and the finished stage is skipped
    same_but_device = [a if a != "cpu" else "auto" for a in first]
    capsys.readouterr()
    assert main([str(a) for a in same_but_device]) == 0
    assert "skipped" in capsys.readouterr().out


def test_overrides_may_follow_options(capsys, tmp_path, tiny_npz):
    out = tmp_path / "run"
    argv = ["pretext", "--out", out, "pretext.epochs=1", "--data", tiny_npz, "pretext.batch_size=8",
            "cluster.batch_size=8", "selflabel.batch_size=8", "mine.k=5", "--clusters", "3", "--device", "cpu"]
    assert main([str(a) for a in argv]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["pretext"]["epochs"] == 1 and saved["pretext"]["batch_size"] == 8
    assert saved["mine"]["k"] == 5 and saved["selflabel"]["batch_size"] == 8
    assert saved["clusters"] == 3 and saved["data"]["source"] == "npz"


def test_config_rejected_by_data_checks_does_not_poison_the_run_dir(capsys, tmp_path, tiny_npz):
    out = tmp_path / "run"
    line = fails(capsys, cli("pretext", data=tiny_npz, clusters=50, out=out))
    assert "--clusters 50 is larger" in line
    capsys.readouterr()
    code = main(cli("pretext", data=tiny_npz, clusters=3, out=out))  # the corrected command
    err = capsys.readouterr().err
    assert "another config" not in err
    assert code == 0


def test_npz_missing_arrays(capsys, tmp_path, make_npz):
    path = make_npz("partial.npz", drop=("x_test", "y_test"))
    line = fails(capsys, cli("run", data=path, clusters=3, out=tmp_path / "r"))
    assert "missing array(s) x_test, y_test" in line


def test_npz_mismatched_lengths(capsys, tmp_path, make_npz):
    path = make_npz("uneven.npz", y_test=np.zeros(9, dtype=np.int64))
    line = fails(capsys, cli("run", data=path, clusters=3, out=tmp_path / "r"))
    assert "x_test has 10 images but y_test has 9 labels" in line


def test_npz_non_uint8_images(capsys, tmp_path, make_npz):
    path = make_npz("floaty.npz", x_train=np.zeros((30, 8, 8), dtype=np.float32))
    line = fails(capsys, cli("run", data=path, clusters=3, out=tmp_path / "r"))
    assert "uint8" in line


def test_data_file_missing(capsys, tmp_path):
    missing = tmp_path / "nowhere.npz"
    line = fails(capsys, cli("run", data=missing, clusters=3, out=tmp_path / "r"))
    assert str(missing) in line and "no such file" in line


def test_evaluate_non_run_dir(capsys, tmp_path):
    line = fails(capsys, ["evaluate", tmp_path])
    assert "not a run directory" in line


def test_failed_commands_leave_no_default_run_dir(capsys, tmp_path):
    # an error in the config is found before any directory is created
    fails(capsys, cli("run", clusters=1))
    assert not Path("runs").exists()



def test_data_root_is_another_name_for_data(tmp_path, capsys):
    missing = tmp_path / "nowhere.txt"
    assert main(["run", "--data-root", str(missing), "--out", str(tmp_path / "run")]) != 0
    assert f"--data {missing}: no such folder or file" in capsys.readouterr().err


def test_a_closed_pipe_stops_quietly():
    """`scan presets | head -1`: no BrokenPipeError traceback when the reader goes away."""
    import subprocess
    import sys

    reader = subprocess.run(f"{sys.executable} -m scan presets | head -c 10", shell=True,
                            capture_output=True, text=True, timeout=120)
    assert len(reader.stdout) == 10 and reader.stderr == ""
