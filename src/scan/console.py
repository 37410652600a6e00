"""What the user sees: lines to stdout mirrored into RUN/log.txt, and progress bars on stderr
only when stderr is a terminal (logs and CI get the per-epoch lines alone)."""

from __future__ import annotations

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


def echo(message: str) -> None:
    """Print one line and append it to the run's log.txt."""
    print(message, flush=True)
    if _log_path is not None:
        with open(_log_path, "a", encoding="utf-8") as f:
            f.write(message + "\n")


def progress(items: Iterable[T], total: int, desc: str) -> Iterator[T]:
    """A tqdm bar on stderr when it is a terminal; the bare iterable otherwise."""
    if not sys.stderr.isatty():
        return iter(items)
    return iter(tqdm(items, total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True))
