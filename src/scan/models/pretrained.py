"""Pretext weights trained elsewhere: the MoCo v2 checkpoints the original uses for ImageNet."""

from __future__ import annotations

from pathlib import Path

import torch

from scan.checkpoint import load_torch
from scan.errors import ScanError
from scan.models.heads import ContrastiveModel


def moco_to_scan_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a MoCo checkpoint's query encoder to our ContrastiveModel's keys.

    `module.encoder_q.fc.{0,2}.*` (the MLP head) -> `head.{0,2}.*`; every other
    `module.encoder_q.*` (a torchvision ResNet) -> `backbone.net.*`. The key encoder
    (`encoder_k.*`) and the queue are not needed for SCAN and are dropped, as in the original.
    """
    mapped = {}
    for key, value in state.items():
        name = key.removeprefix("module.")
        if not name.startswith("encoder_q."):
            continue
        name = name.removeprefix("encoder_q.")
        mapped[f"head.{name[3:]}" if name.startswith("fc.") else f"backbone.net.{name}"] = value
    return mapped


def load_moco_v2(path: str | Path, model: ContrastiveModel) -> None:
    """Load a MoCo v2 checkpoint ({'state_dict': ...}, weights only) into `model`, strictly:
    missing or unexpected keys are a one-line error that names them."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ScanError(f"pretext.weights {path}: no such file")
    checkpoint = load_torch(path)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ScanError(f"pretext.weights {path}: not a state dict")
    result = model.load_state_dict(moco_to_scan_keys(state), strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)} key(s): {', '.join(result.missing_keys[:5])}"
                        f"{' ...' if len(result.missing_keys) > 5 else ''}")
    if result.unexpected_keys:
        problems.append(f"unexpected {len(result.unexpected_keys)} key(s): {', '.join(result.unexpected_keys[:5])}"
                        f"{' ...' if len(result.unexpected_keys) > 5 else ''}")
    if problems:
        raise ScanError(f"pretext.weights {path} does not fit pretext.backbone: {'; '.join(problems)}")
