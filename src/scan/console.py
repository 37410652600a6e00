"""What the user sees: lines to stdout mirrored into RUN/log.txt, and progress bars on stderr
only when stderr is a terminal (logs and CI get the per-epoch lines alone)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")
_log_path: Path | None = None


def set_log_file(path: Path | None) -> None:
    """Mirror every later `echo` into `path` (appending), or stop mirroring with None."""
    global _log_path
    _log_path = path


def printable(text: str) -> str:
    """`text` with the bytes of file names that are not valid UTF-8 (kept by Python as
    surrogates) shown as U+FFFD, so it can be printed and logged anywhere."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def echo(message: str) -> None:
    """Print one line and append it to the run's log.txt (as `printable`)."""
    message = printable(message)
    print(message, flush=True)
    if _log_path is not None:
        with open(_log_path, "a", encoding="utf-8") as f:
            f.write(message + "\n")


def progress(items: Iterable[T], total: int, desc: str) -> Iterator[T]:
    """A tqdm bar on stderr when it is a terminal; the bare iterable otherwise."""
    if not sys.stderr.isatty():
        return iter(items)
    return iter(tqdm(items, total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True))


def stage_progress(stage: str, total_steps: int, done_steps: int = 0) -> tqdm | None:
    """One bar for a whole stage (its steps over all epochs, with tqdm's rate and ETA) on stderr
    when it is a terminal; None otherwise, so logs and pipes get the epoch lines alone.
    A resumed stage starts the bar at `done_steps`. The caller calls `.update(n)` per step,
    `.set_postfix_str(...)` for the latest loss, and `.close()` at the end."""
    if not sys.stderr.isatty():
        return None
    return tqdm(total=total_steps, initial=done_steps, desc=stage, unit="step", leave=False,
                file=sys.stderr, dynamic_ncols=True)


_warned_threads = False


def busy_cores_note(threads: int, cores: int, load: float) -> str | None:
    """The note for torch using more threads than there are idle cores (cores minus the 1-minute
    load average, at least one), else None. Oversubscribed threads wait on each other at every
    parallel region, which can make a run several times slower."""
    idle = max(1, cores - round(load))
    if threads <= idle:
        return None
    return (f"note: torch uses {threads} threads but only {idle} of {cores} cores look idle "
            f"(load {load:.1f}): this run may be slow; OMP_NUM_THREADS={idle} fits the idle cores")


def warn_busy_cores() -> None:
    """Say once per process on stderr, when it is a terminal, that torch has more threads than
    idle cores (like the progress bars, a note for the person watching; logs and pipes, whose
    readers parse one-line errors, do not get it)."""
    global _warned_threads
    if _warned_threads or not hasattr(os, "getloadavg") or not sys.stderr.isatty():
        return
    import torch

    _warned_threads = True
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    note = busy_cores_note(torch.get_num_threads(), cores, os.getloadavg()[0])
    if note is not None:
        print(f"scan: {note}", file=sys.stderr, flush=True)
