"""Run-directory paths and safe files: atomic writes, weights-only loading, safetensors export."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from scan.errors import ScanError
from scan.stage_table import STAGE_NAMES as STAGES

_UMASK = os.umask(0)
os.umask(_UMASK)


class RunDir:
    """The layout of one run directory (the contract in the architecture document)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

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

    def is_done(self, stage: str, fingerprint: str) -> bool:
        """True when `stage` finished with the same config inputs."""
        path = self.done(stage)
        return path.is_file() and json.loads(path.read_text()).get("fingerprint") == fingerprint

    def stage_seconds(self) -> dict[str, float]:
        """Wall time of each finished stage, from its done.json."""
        return {s: json.loads(self.done(s).read_text())["seconds"] for s in STAGES if self.done(s).is_file()}


def _atomic(path: Path, write) -> None:
    """Write through a temp file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(obj: Any, path: Path) -> None:
    """torch.save, atomically. Only tensors, numbers, strings, lists and dicts go in."""
    _atomic(path, lambda tmp: torch.save(obj, tmp))


def save_json(obj: Any, path: Path) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def save_text(text: str, path: Path) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_text(text))


def save_npy(array: np.ndarray, path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    _atomic(path, write)


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """A state dict as safetensors, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    _atomic(path, lambda tmp: save_file(tensors, tmp))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors state dict (never a pickle)."""
    if not path.is_file():
        raise ScanError(f"missing weights file {path}")
    return load_file(str(path))


def load_torch(path: Path) -> Any:
    """torch.load with weights_only=True: a file that needs arbitrary objects is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # PyTorch's message opens with advice to retry unsafely; keep only the line naming the object.
        lines = [line.strip() for line in str(err).splitlines()]
        reason = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), "unsupported object")
        raise ScanError(f"refusing to load {path}: it needs arbitrary Python objects ({reason})") from None


def rewrite_jsonl(records: list[dict[str, Any]], path: Path) -> None:
    """history.jsonl as of the last checkpoint, so a resumed stage never logs an epoch twice."""
    save_text("".join(json.dumps(r) + "\n" for r in records), path)
