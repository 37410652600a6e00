"""Run-directory paths and safe files: atomic writes, and readers that turn a damaged, missing or
unreadable file into one line (`RUN/cluster/model.safetensors is damaged (...); rerun with --force
to rebuild the cluster stage`) instead of whatever the file format's library raises.

Every file the tool reads back goes through a reader here: `load_torch` (checkpoints, with
weights_only=True), `load_weights` (safetensors), `read_json`, `read_npy`. Writers go through a
temp file named after the writing process (`.NAME.pidPID.XXXX.tmp`) and a rename, so a reader never
sees half a file and a temp file left by a killed process can be told from a live one's.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from scan.errors import ScanError, WriteError
from scan.stage_table import STAGE_NAMES as STAGES

# Written when a run directory is created: only a folder holding it (or, for runs made before the
# marker existed, a config.yaml) is ever written into or cleaned by `scan`.
MARKER = ".scan-run"
LOCK = ".lock"
_UMASK = os.umask(0)
os.umask(_UMASK)
# Temp files: `.NAME.pidPID.RANDOM.tmp` (writers here) and, from older versions of the decode
# cache, `KEY.npy.PID.tmp`.
_TEMP = re.compile(r"^\..+\.pid(\d+)\.[^.]*\.tmp$|^[0-9a-f]{64}\.npy\.(\d+)\.tmp$")


class RunDir:
    """The layout of one run directory (the contract in the architecture document)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.lock_held: object | None = None  # the run's lock, held while this object lives (scan.rundir)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def data(self) -> Path:
        """data.json: the identity of the images the stages were trained on."""
        return self.root / "data.json"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    def stage(self, name: str) -> Path:
        return self.root / name

    def checkpoint(self, stage: str) -> Path:
        return self.root / stage / "checkpoint.pt"

    def history(self, stage: str) -> Path:
        return self.root / stage / "history.jsonl"

    def done(self, stage: str) -> Path:
        return self.root / stage / "done.json"

    def done_record(self, stage: str) -> dict[str, Any] | None:
        """The stage's done.json (fingerprint, seconds, summary), or None while it is unfinished."""
        path = self.done(stage)
        if not path.is_file():
            return None
        record = read_json(path)
        if (not isinstance(record, dict) or not isinstance(record.get("seconds"), (int, float))
                or not isinstance(record.get("summary", {}), dict)):
            raise damaged(path, "not a done record")
        return record

    def is_done(self, stage: str, fingerprint: str) -> bool:
        """True when `stage` finished with the same config inputs."""
        record = self.done_record(stage)
        return record is not None and record.get("fingerprint") == fingerprint

    def stage_seconds(self) -> dict[str, float]:
        """Wall time of each finished stage, from its done.json."""
        records = {s: self.done_record(s) for s in STAGES}
        return {s: r["seconds"] for s, r in records.items() if r is not None}


def is_run_dir(folder: Path) -> bool:
    """A folder `scan` created (its marker) or one made before the marker existed (config.yaml)."""
    return (folder / MARKER).is_file() or (folder / "config.yaml").is_file()


# What rewrites a damaged file at the top of a run directory.
ROOT_FILE_ADVICE = {
    "metrics.json": "`scan evaluate {run}` writes it again",
    "data.json": "rerun with --force to record the images the run reads now",
}


def damaged(path: Path, reason: str) -> ScanError:
    """The one-line error for a file that cannot be read back, with what rebuilds it."""
    folder = path.parent
    if folder.name in STAGES and is_run_dir(folder.parent):
        advice = f"; rerun with --force to rebuild the {folder.name} stage"
    elif path.name in ROOT_FILE_ADVICE and is_run_dir(folder):
        advice = "; " + ROOT_FILE_ADVICE[path.name].format(run=folder)
    else:
        advice = ""
    return ScanError(f"{path} is damaged ({reason}){advice}")


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _read(path: Path, read: Callable[[Path], Any]) -> Any:
    """read(path), with a missing or unreadable file as a one-line ScanError."""
    if not path.is_file():
        raise damaged(path, "missing")
    if path.stat().st_size == 0:
        raise damaged(path, "empty file")
    try:
        return read(path)
    except ScanError:
        raise
    except PermissionError:
        raise ScanError(f"cannot read {path}: permission denied") from None
    except (OSError, ValueError, EOFError, RuntimeError, KeyError, TypeError, IndexError,
            UnicodeDecodeError, zipfile.BadZipFile, SafetensorError, pickle.UnpicklingError) as err:
        raise damaged(path, _first_line(err)) from None


def load_torch(path: Path) -> Any:
    """torch.load with weights_only=True: a file that needs arbitrary objects is refused; a damaged
    one is a one-line error."""

    def load(p: Path) -> Any:
        try:
            return torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            # PyTorch's message opens with advice to retry unsafely; keep only the line naming the
            # object. Without one, the pickle stream itself is broken (a damaged file).
            lines = [line.strip() for line in str(err).splitlines()]
            found = next((line for line in lines if "GLOBAL" in line), None)
            if found is None:
                reason = next((line for line in lines if line.startswith("Unsupported")), "not a PyTorch file")
                raise damaged(p, reason) from None
            raise ScanError(f"refusing to load {p}: it needs arbitrary Python objects ({found})") from None

    return _read(path, load)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors state dict (never a pickle). A header that claims more bytes than the file
    holds is refused by safetensors before anything is allocated."""
    return _read(path, lambda p: load_file(str(p)))


def read_json(path: Path) -> Any:
    return _read(path, lambda p: json.loads(p.read_text(encoding="utf-8")))


def read_npy(path: Path, mmap: bool = False) -> np.ndarray:
    """An .npy array (never a pickle); the file's size must match what its header declares."""

    return _read(path, lambda p: np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False))


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temp file in the same folder, then rename: readers never see half a file.
    A failed write (disk full, read-only folder) removes the temp file and is a one-line
    WriteError; the file it would have replaced stays as it was."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.pid{os.getpid()}.", suffix=".tmp")
    except OSError as err:
        raise write_error(path, err) from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, err) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_error(path: Path, err: OSError) -> WriteError:
    """A failed write as one line; what was written before stays."""
    reason = err.strerror or _first_line(err)
    hint = {errno.ENOSPC: "free some disk space", errno.EDQUOT: "free some disk space"}.get(err.errno)
    return WriteError(f"cannot write {path}: {reason}; finished work is kept"
                      + (f" ({hint}, then run the same command again to continue)" if hint else ""))


def save_torch(obj: Any, path: Path) -> None:
    """torch.save, atomically. Only tensors, numbers, strings, lists and dicts go in."""
    buffer = io.BytesIO()  # serialised in memory and written by Python, so a full disk is an OSError
    torch.save(obj, buffer)
    _atomic(path, lambda tmp: Path(tmp).write_bytes(buffer.getbuffer()))


def save_json(obj: Any, path: Path) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8"))


def save_text(text: str, path: Path) -> None:
    """Text as UTF-8; file names that are not valid UTF-8 keep their original bytes."""
    _atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", errors="surrogateescape"))


def save_npy(array: np.ndarray, path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    _atomic(path, write)


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """A state dict as safetensors, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    # Serialised in memory and written by Python, so a full disk is an OSError.
    _atomic(path, lambda tmp: Path(tmp).write_bytes(safetensors_bytes(tensors)))


def rewrite_jsonl(records: list[dict[str, Any]], path: Path) -> None:
    """history.jsonl as of the last checkpoint, so a resumed stage never logs an epoch twice."""
    save_text("".join(json.dumps(r) + "\n" for r in records), path)


def temp_path(path: Path) -> Path:
    """A temp file name beside `path` that names this process (see `remove_stale_temps`)."""
    return path.with_name(f".{path.name}.pid{os.getpid()}.part.tmp")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(folders: list[Path]) -> list[Path]:
    """Delete the temp files in `folders` whose writing process is gone (killed mid-write);
    returns them. Files of live processes and all other files are left alone."""
    removed = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            match = _TEMP.match(path.name)
            if match and path.is_file() and not _alive(int(match.group(1) or match.group(2))):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
