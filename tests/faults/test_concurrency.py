"""Two processes on one run directory: the second writer is refused with the first one's pid
(--force included), readers that write (evaluate, report) too, predict warns; once the writer is
killed, its lock is stale and taken over."""

from __future__ import annotations

import signal

from faultkit import TINY, assert_one_line_error, own_cache, run_cli, start_cli  # noqa: F401

from scan.checkpoint import RunDir
from scan.rundir import RunLock, writer_pid


def test_second_writer_is_refused_and_a_killed_writers_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    writer = start_cli(tmp_path / "cache", "run", "--out", out, *TINY, "pretext.epochs=500")
    try:
        for line in writer.stdout:
            if line.startswith("pretext 1/"):
                break
        pid = f"pid {writer.pid}"
        for extra in ([], ["--force"], ["pretext.epochs=4"]):
            assert_one_line_error(run_cli(capsys, "run", "--out", out, *TINY, "pretext.epochs=500", *extra), pid)
        assert_one_line_error(run_cli(capsys, "pretext", "--out", out, *TINY, "pretext.epochs=500"), pid)
        assert_one_line_error(run_cli(capsys, "evaluate", out), pid)
        assert_one_line_error(run_cli(capsys, "report", out), pid)
        predicted = run_cli(capsys, "predict", out, tmp_path)
        assert f"is being written by another scan process ({pid})" in predicted.err
        assert_one_line_error(predicted, "no finished cluster or selflabel stage")
        assert writer_pid(RunDir(out)) == str(writer.pid)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        writer.stderr.close()
    run = RunDir(out)
    assert writer_pid(run) is None  # the kernel dropped the dead writer's lock
    assert (out / ".lock").read_text().strip() == str(writer.pid)
    run.lock_held = RunLock.acquire(run)
    assert (out / ".lock").read_text().strip() != str(writer.pid)
