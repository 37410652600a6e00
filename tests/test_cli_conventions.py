"""The CLI's conventions: --version, help with examples, "did you mean", --config FILE, `scan config`,
numbered default run folders, the closing block of `scan run` and the busy-cores note."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import scan
from scan.api import resolve_out
from scan.cli import main
from scan.config import KEY_HELP, RunConfig, build_config, flatten
from scan.console import busy_cores_note, set_log_file

from conftest import TINY_RUN


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield
    set_log_file(None)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"scan {scan.__version__}"


@pytest.mark.parametrize("argv", [[], ["help"], ["--help"]])
def test_bare_scan_and_help_print_usage_with_examples(capsys, argv):
    try:
        code = main(argv)
    except SystemExit as exit_:  # --help exits through argparse
        code = exit_.code
    out = capsys.readouterr().out
    assert code == 0
    assert "usage: scan" in out and "examples:" in out and "scan report runs/digits" in out


def test_help_of_one_command(capsys):
    assert main(["help", "run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: scan run") and "--config FILE.yaml" in out


@pytest.mark.parametrize("argv, hint", [
    (["rn"], "did you mean 'run'?"),
    (["reprot", "x"], "did you mean 'report'?"),
    (["digits"], "did you mean 'scan run digits'?"),
    (["help", "prdict"], "did you mean 'predict'?"),
    (["run", "digts"], "did you mean 'digits'?"),
])
def test_did_you_mean(capsys, argv, hint):
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert err.startswith("scan: error:") and hint in err and err.count("\n") == 1
    assert not Path("runs").exists()


def test_every_config_key_has_a_description():
    keys = set(flatten(RunConfig().to_dict()))
    assert keys == set(KEY_HELP), f"missing: {keys - set(KEY_HELP)}, stale: {set(KEY_HELP) - keys}"
    assert all(text and "\n" not in text for text in KEY_HELP.values())


def test_scan_config_prints_the_resolved_config_with_a_comment_per_key(capsys, tmp_path):
    assert main(["config", "mnist", "cluster.restarts=4", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    printed = yaml.safe_load(out)
    assert printed == build_config("mnist", overrides=["cluster.restarts=4"], seed=4).to_dict()
    leaves = [line for line in out.splitlines() if not line.startswith("#") and not line.rstrip().endswith(":")]
    assert len(leaves) == len(KEY_HELP) and all(" # " in line for line in leaves)
    assert "# train the SCAN step this many times" in out
    # The printed config is a valid --config file for the same preset.
    (tmp_path / "printed.yaml").write_text(out)
    assert main(["config", "mnist", "--config", "printed.yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == printed


def test_config_file_sits_between_the_preset_and_the_overrides(capsys, tmp_path):
    (tmp_path / "partial.yaml").write_text("pretext:\n  epochs: 7\n  lr: 0.05\ncluster:\n  restarts: 2\n")
    assert main(["config", "--config", "partial.yaml", "pretext.epochs=9", "--clusters", "12"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["pretext"]["epochs"], cfg["pretext"]["lr"], cfg["cluster"]["restarts"]) == (9, 0.05, 2)
    assert cfg["clusters"] == 12 and cfg["pretext"]["batch_size"] == 256  # the rest: digits preset


@pytest.mark.parametrize("text, message", [
    (None, "no such file"),
    ("pretext: [1, 2\n", "not valid YAML"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("pretext:\n  epoch: 3\n", "did you mean 'epochs'"),
    ("preset: mnist\n", "is for preset 'mnist'"),
])
def test_bad_config_file_is_one_line(capsys, tmp_path, text, message):
    if text is not None:
        (tmp_path / "bad.yaml").write_text(text)
    assert main(["run", "--config", "bad.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("scan: error: --config bad.yaml") and message in err and err.count("\n") == 1
    assert not Path("runs").exists()


def _write_config(folder: Path, cfg: RunConfig) -> None:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))


def test_another_config_in_the_default_folder_gets_a_numbered_one(capsys):
    first = build_config("digits")
    second = build_config("digits", overrides=["cluster.restarts=3"])
    assert resolve_out(first, None) == Path("runs/digits")
    _write_config(Path("runs/digits"), first)
    assert resolve_out(build_config("digits", overrides=["runtime.workers=0"]), None) == Path("runs/digits")
    capsys.readouterr()
    assert resolve_out(second, None) == Path("runs/digits-2")
    assert "runs/digits holds a run with another config; this run goes to runs/digits-2" in capsys.readouterr().out
    _write_config(Path("runs/digits-2"), second)
    # The same commands again resume their own folders; a third config gets -3.
    assert resolve_out(second, None) == Path("runs/digits-2")
    assert resolve_out(first, None) == Path("runs/digits")
    assert resolve_out(build_config("digits", seed=5), None) == Path("runs/digits-3")
    # An explicit --out, or --force, is taken as given.
    assert resolve_out(second, "elsewhere") == Path("elsewhere")
    assert resolve_out(second, None, force=True) == Path("runs/digits")


def test_run_ends_with_metrics_folder_and_next_commands(capsys):
    assert main(["run", *TINY_RUN]) == 0
    out = capsys.readouterr().out
    tail = out[out.index("finished in"):]
    assert "finished in" in tail and "runs/digits" in tail
    final = json.loads(Path("runs/digits/metrics.json").read_text())["final"]["step"]
    assert f"{final} model, test split: ACC " in tail and "NMI" in tail
    assert "scan report runs/digits" in tail and "scan predict runs/digits IMAGES..." in tail
    # two epochs leave a poor model, and the closing block says so with the remedy
    assert "settled in a poor solution ended: rerun with cluster.restarts=3" in tail
    assert tail in Path("runs/digits/log.txt").read_text()


def test_busy_cores_note():
    assert busy_cores_note(threads=2, cores=2, load=0.2) is None
    assert busy_cores_note(threads=1, cores=2, load=1.9) is None
    note = busy_cores_note(threads=2, cores=2, load=1.4)
    assert "2 threads" in note and "only 1 of 2 cores" in note and "OMP_NUM_THREADS=1" in note


def test_closing_block_without_labels_shows_label_free_diagnostics(capsys, tmp_path):
    from scan.cli import closing_block

    metrics = {"cluster": {"confidence": 0.95}, "selflabel": {"confidence": 0.9, "empty_clusters": 0,
                                                              "smallest_share": 0.05, "largest_share": 0.2}}
    closing_block(tmp_path / "run", build_config("digits"), metrics, 12.3)
    out = capsys.readouterr().out
    assert f"finished in 12 s: {tmp_path / 'run'}" in out
    assert ("selflabel model, test split (no labels: label-free diagnostics): mean confidence 0.900, "
            "empty clusters 0, smallest cluster share 0.050, largest cluster share 0.200") in out
    assert "warning" not in out  # no cluster stage and no neighbours in this folder: nothing to judge


def test_stage_progress_is_a_bar_on_a_terminal_only(monkeypatch):
    import io

    from scan.console import stage_progress

    assert stage_progress("pretext", 100) is None  # pytest captures stderr: not a terminal
    terminal = io.StringIO()
    terminal.isatty = lambda: True
    monkeypatch.setattr("sys.stderr", terminal)
    bar = stage_progress("pretext", 100, done_steps=40)
    bar.update(10)
    assert bar.n == 50 and bar.total == 100 and bar.desc == "pretext"
    bar.close()
