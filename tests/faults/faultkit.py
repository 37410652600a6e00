"""Helpers and fixtures of the fault-injection suite (imported by its test modules; not a
conftest.py, whose module name would clash with tests/conftest.py's): run the CLI (in this process, or as a subprocess that
can be killed), check that an error is one line without a traceback, and snapshot folders to
prove that nothing outside a run directory changed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import tiny_arrays as npz_arrays  # noqa: F401 - the shared tiny dataset, for the suite

from scan.cli import main

# Each stage runs for a few seconds on digits (the fault suite's tiny run); the self-label
# safeguard is off, so that stage always trains and its model is the run's final one, and its
# threshold is low: after 3 SCAN epochs few images pass 0.99, and a stage whose steps are all
# skipped ends within the kill delay of test_kill_resume, so no kill would land in it.
TINY = ["pretext.epochs=3", "cluster.epochs=3", "selflabel.epochs=2", "cluster.num_heads=2", "device=cpu",
        "selflabel.min_confident=0", "selflabel.max_balance_drop=1", "selflabel.max_agreement_drop=1", "selflabel.threshold=0.5"]


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(capsys, *args: str) -> Result:
    """`scan ARGS` in this process: exit code, stdout and stderr. An exception other than the
    CLI's own exit would be a traceback for the user, so it fails the test as it is raised."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # usage errors exit through argparse
        code = exit_.code
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def assert_one_line_error(result: Result, *fragments: str) -> str:
    """The command failed with exactly one `scan: error:` line (warnings may precede it), no
    traceback, and the line holds each fragment."""
    assert result.code not in (0, None), f"expected an error, got exit 0; stderr: {result.err!r}"
    assert "Traceback" not in result.err + result.out
    errors = [line for line in result.err.splitlines() if line.startswith("scan: error:")]
    others = [line for line in result.err.splitlines()
              if line and not line.startswith(("scan: error:", "scan: warning:", "scan: note:"))]
    assert len(errors) == 1 and not others, result.err
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def cli_env(cache: Path) -> dict[str, str]:
    """Environment of a `python -m scan` subprocess: one thread, this source tree, its own cache."""
    src = str(Path(__file__).resolve().parents[2] / "src")
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(cache),
            "PYTHONPATH": src + (os.pathsep + path if path else "")}


def start_cli(cache: Path, *args: str) -> subprocess.Popen:
    """`python -m scan ARGS` as a subprocess with stdout as lines (stderr kept apart)."""
    return subprocess.Popen([sys.executable, "-m", "scan", *map(str, args)], env=cli_env(cache),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file below `root`, except below `skip`."""
    found = {}
    skip = tuple(s.resolve() for s in skip)
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if any(path.resolve().is_relative_to(s) for s in skip):
                continue
            st = path.lstat()
            found[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return found


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


_finished: list[Path] = []


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny digits run, made once per session in this process (each test module that
    imports the fixture shares it); tests copy it before changing it."""
    if not _finished:
        out = tmp_path_factory.mktemp("faults") / "run"
        assert main(["run", "--out", str(out), *TINY]) == 0
        _finished.append(out)
    return _finished[0]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test decodes into its own cache folder, so nothing outside tmp_path is written."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
