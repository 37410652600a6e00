"""kill -9 at seeded random points of every stage, then the same command again: the run must end
with exactly the metrics of an uninterrupted run (timings aside), and hold no temp file."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

from faultkit import TINY, snapshot, start_cli

# Lines a run prints as it goes, in order; each kill waits for one of them (or a later one, when
# the point was passed while the process resumed), then a random delay short against an epoch
# (so the next point is not passed before the kill), then SIGKILL. Together they put kills in
# every stage, the evaluation included.
EVENTS = ("data:", "pretext 1/", "pretext 2/", "pretext 3/", "mine:", "cluster 1/", "cluster 2/", "cluster 3/",
          "selflabel 1/", "selflabel 2/")


def _metrics(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("seconds")
    return metrics


def _kill_at(cache: Path, out: Path, first: int, delay: float) -> int | None:
    """Run until the line of EVENTS[first] or a later one, wait `delay` s, kill -9. Returns the
    index of the event seen, or None when the run finished first."""
    proc = start_cli(cache, "run", "--out", out, *TINY)
    seen = None
    for line in proc.stdout:
        hits = [i for i, event in enumerate(EVENTS) if i >= first and line.startswith(event)]
        if hits:
            seen = hits[0]
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    return seen if proc.returncode == -signal.SIGKILL else None


def test_kill_anywhere_then_rerun_gives_the_uninterrupted_metrics(tmp_path):
    cache = tmp_path / "cache"
    reference = tmp_path / "reference"
    proc = start_cli(cache, "run", "--out", reference, *TINY)
    _, err = proc.communicate()
    assert proc.returncode == 0, err

    rng = random.Random(12)
    out = tmp_path / "killed"
    kills, event = [], 0
    while event < len(EVENTS):
        seen = _kill_at(cache, out, event, rng.uniform(0.0, 0.1))
        if seen is None:
            break
        kills.append(EVENTS[seen])
        event = seen + 1
    assert len(kills) >= 10, kills
    assert {k.split()[0].rstrip(":") for k in kills} >= {"pretext", "mine", "cluster", "selflabel"}

    proc = start_cli(cache, "run", "--out", out, *TINY)
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert _metrics(out) == _metrics(reference)
    assert not [p for p in snapshot(out) if p.endswith(".tmp")]
