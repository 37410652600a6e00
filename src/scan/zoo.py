"""The original SCAN code's checkpoints (its released model zoo, `*.pth.tar`): read them without
the original code, as a run directory (`scan import`) or for evaluation (`scan evaluate PRESET
--model FILE`).

File contents (reference Appendix C): pretext files are the ContrastiveModel state dict
(`backbone.*`, `contrastive_head.{0,2}.*`); SCAN files are {'model': state dict with
`cluster_head.{h}.*`, 'head': best head}; self-label files are a state dict with one head
(`cluster_head.0.*`); training checkpoints hold the state dict under 'model'; MoCo v2 files
(the ImageNet pretext) hold it under 'state_dict' as `encoder_q.*` (renamed by
scan.models.pretrained, as for `pretext.weights`). DataParallel prefixes every key with `module.`. The original's CIFAR/STL ResNet-18 names its projection shortcut
`shortcut.{0,1}` where torchvision (our ResNets, and the original's ResNet-50) says
`downsample.{0,1}`. Files are read with weights_only=True: only tensors, numbers, strings and
containers; anything else is refused.
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from scan.checkpoint import STAGES, RunDir, load_torch, save_json
from scan.config import RunConfig, build_config, fingerprint
from scan.console import echo
from scan.errors import ScanError
from scan.evaluate import format_table, num_classes
from scan.metrics import cluster_metrics
from scan.models.backbones import build_backbone
from scan.models.heads import ClusteringModel, ContrastiveModel
from scan.models.pretrained import moco_to_scan_keys
from scan.pipeline import load_data
from scan.rundir import commit_config, open_run
from scan.predict import ClusterModel
from scan.stages.artifacts import model_card, save_clustering_model, save_pretext_model

# The file's names -> ours, applied in order to every key (after `module.` is stripped).
RENAMES = (
    (r"^backbone\.", "backbone.net."),  # our backbones keep their layers in `net`
    (r"\.shortcut\.", ".downsample."),
    (r"^contrastive_head\.", "head."),
    (r"^cluster_head\.", "cluster_heads.heads."),
)
# Ours -> the file's, for naming keys in messages (and building files in tests).
INVERSE = (
    (r"^backbone\.net\.", "backbone."),
    (r"^head\.", "contrastive_head."),
    (r"^cluster_heads\.heads\.", "cluster_head."),
)
MODEL_PREFIXES = ("backbone.", "head.", "cluster_heads.")


def to_ours(key: str) -> str:
    """An original key (without `module.`) in our naming, e.g. backbone.layer2.0.shortcut.1.weight
    -> backbone.net.layer2.0.downsample.1.weight."""
    for pattern, repl in RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def to_original(key: str, shortcut: bool) -> str:
    """One of our keys in the original naming; `shortcut`: the original's own ResNet-18 naming."""
    for pattern, repl in INVERSE:
        key = re.sub(pattern, repl, key)
    return key.replace(".downsample.", ".shortcut.") if shortcut else key


@dataclass
class ZooCheckpoint:
    """A model read from an original checkpoint, with its keys in our naming."""

    path: Path
    stage: str  # 'pretext', 'cluster' or 'selflabel': the run stage it stands for
    state: dict[str, torch.Tensor]
    head: int  # the selected cluster head (0 for pretext and self-label files)
    shortcut: bool  # the file used the original ResNet-18's `shortcut` names

    @property
    def num_heads(self) -> int:
        return len({k.split(".")[2] for k in self.state if k.startswith("cluster_heads.heads.")})

    @property
    def num_clusters(self) -> int | None:
        """K of a clustering model (rows of its first head), None for a pretext model."""
        weight = self.state.get("cluster_heads.heads.0.weight")
        return None if weight is None else int(weight.shape[0])

    def build(self, cfg: RunConfig) -> ContrastiveModel | ClusteringModel:
        """Our model for `cfg`'s backbone with the file's weights; a one-line ScanError naming the
        missing and unexpected keys (in the file's naming) or mismatched shapes when they differ."""
        backbone = build_backbone(cfg.pretext.backbone, cfg.data.channels)
        if self.stage == "pretext":
            model: nn.Module = ContrastiveModel(backbone, cfg.pretext.feature_dim)
        else:
            model = ClusteringModel(backbone, self.num_clusters, self.num_heads)
        expected = model.state_dict()
        # Files written before PyTorch 0.4.1 have no BatchNorm batch counters; they are unused here.
        missing = [k for k in expected if k not in self.state and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in self.state if k not in expected]
        what = f"the {cfg.pretext.backbone} backbone of preset {cfg.preset!r} ({cfg.data.channels} channel(s))"
        if missing or unexpected:
            raise ScanError(f"{self.path} does not fit {what}: missing {self._names(missing)}; "
                            f"unexpected {self._names(unexpected)}")
        wrong = [f"{to_original(k, self.shortcut)} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
                 for k, v in self.state.items() if v.shape != expected[k].shape]
        if wrong:
            raise ScanError(f"{self.path} does not fit {what}: wrong shape of {self._names(wrong, named=True)}")
        model.load_state_dict(self.state, strict=False)
        return model.eval()

    def _names(self, keys: list[str], named: bool = False, limit: int = 4) -> str:
        if not keys:
            return "none"
        shown = keys[:limit] if named else [to_original(k, self.shortcut) for k in keys[:limit]]
        return f"{len(keys)} key(s): " + ", ".join(shown) + (", ..." if len(keys) > limit else "")


def _warn(message: str) -> None:
    print(f"scan: warning: {message}", file=sys.stderr)


def read_checkpoint(path: str | Path) -> ZooCheckpoint:
    """Read an original checkpoint (weights_only) and tell which stage it stands for."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ScanError(f"{path}: no such file")
    try:
        obj = load_torch(path)
    except ScanError:
        raise
    except Exception as err:  # noqa: BLE001 - a file that is not a torch checkpoint fails in many ways
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ScanError(f"cannot read {path} as a PyTorch checkpoint ({reason})") from None
    if not isinstance(obj, dict):
        raise ScanError(f"{path} holds a {type(obj).__name__}, not a state dict")
    head = obj.get("head")
    raw = next((obj[k] for k in ("model", "state_dict") if isinstance(obj.get(k), dict)), obj)
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            raise ScanError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; not a model state dict")
    if any(k.removeprefix("module.").startswith("encoder_q.") for k in raw):
        return ZooCheckpoint(path, "pretext", moco_to_scan_keys(raw), 0, shortcut=False)
    state: dict[str, torch.Tensor] = {}
    extras: list[str] = []
    for key, value in raw.items():
        ours = to_ours(key.removeprefix("module."))
        if ours.startswith(MODEL_PREFIXES):
            state[ours] = value
        else:
            extras.append(key)
    if extras:
        shown = ", ".join(extras[:3]) + (", ..." if len(extras) > 3 else "")
        _warn(f"{path}: ignoring {len(extras)} entries that are not model weights ({shown})")
    shortcut = any(".shortcut." in k for k in raw)
    if any(k.startswith("head.") for k in state):
        return ZooCheckpoint(path, "pretext", state, 0, shortcut)
    ckpt = ZooCheckpoint(path, "cluster", state, 0, shortcut)
    if ckpt.num_clusters is None:
        raise ScanError(f"{path} has neither a projection head (contrastive_head.*) nor cluster heads "
                        f"(cluster_head.*); not a SCAN checkpoint")
    if head is not None:
        if not isinstance(head, int) or not 0 <= head < ckpt.num_heads:
            raise ScanError(f"{path}: 'head' is {head!r}, not one of its {ckpt.num_heads} heads")
        ckpt.head = head
    elif ckpt.num_heads == 1:
        ckpt.stage = "selflabel"  # the self-label model keeps the selected head alone
    else:
        _warn(f"{path} names no selected head ('head'); using head 0 of {ckpt.num_heads}")
    return ckpt


def checkpoint_config(ckpt: ZooCheckpoint, preset: str, data: str | None = None,
                      overrides: Sequence[str] = ()) -> RunConfig:
    """The preset's config for this checkpoint: K is the file's number of clusters."""
    return build_config(preset, overrides=overrides, data=data, clusters=ckpt.num_clusters)


def import_checkpoint(path: str | Path, preset: str, out: str | Path, data: str | None = None,
                      overrides: Sequence[str] = (), force: bool = False) -> RunDir:
    """Write a run directory holding the checkpoint as its finished stage: config.yaml from the
    preset, RUN/<stage>/done.json, and the pretext weights (so `scan mine`/`scan cluster` can
    follow) or the exported clustering model (for `scan evaluate`/`report`/`predict`)."""
    ckpt = read_checkpoint(path)
    cfg = checkpoint_config(ckpt, preset, data, overrides)
    model = ckpt.build(cfg)
    run = open_run(cfg, out, force)
    commit_config(run, cfg)
    # What this run held for the imported stage and the ones after it is replaced or stale.
    for stage in STAGES[STAGES.index(ckpt.stage):]:
        shutil.rmtree(run.stage(stage), ignore_errors=True)
    run.metrics.unlink(missing_ok=True)
    if isinstance(model, ContrastiveModel):
        save_pretext_model(run, model)
    else:
        save_clustering_model(run, ckpt.stage, model, cfg, ckpt.head)
    save_json({"fingerprint": fingerprint(cfg, ckpt.stage), "seconds": 0.0,
               "summary": {"imported": str(ckpt.path)}}, run.done(ckpt.stage))
    detail = "" if ckpt.stage == "pretext" else f", {ckpt.num_clusters} clusters, head {ckpt.head} of {ckpt.num_heads}"
    echo(f"import: {ckpt.path} -> {run.root} as the finished {ckpt.stage} stage (preset {preset}, "
         f"backbone {cfg.pretext.backbone}{detail})")
    return run


def evaluate_checkpoint(path: str | Path, preset: str, data: str | None = None, overrides: Sequence[str] = (),
                        device: str = "auto") -> dict:
    """Metrics of a SCAN or self-label checkpoint on the preset's test split (printed as the
    `scan evaluate` table and returned; nothing is written)."""
    ckpt = read_checkpoint(path)
    if ckpt.stage == "pretext":
        raise ScanError(f"{ckpt.path} is a pretext model without cluster heads; import it with "
                        f"`scan import {ckpt.path} --preset {preset} --out RUN`, then run `scan mine` and `scan cluster`")
    cfg = checkpoint_config(ckpt, preset, data, overrides)
    model = ckpt.build(cfg)
    splits = load_data(cfg)
    probs = ClusterModel(model, model_card(cfg, model, ckpt.head), device).probs(splits.test, cfg.mine.batch_size)
    metrics: dict = {ckpt.stage: {}}
    if splits.test_labels is not None:
        metrics[ckpt.stage] = cluster_metrics(probs.numpy(), splits.test_labels.numpy(), num_classes(splits))
    if ckpt.stage == "cluster":
        metrics["cluster"]["head"] = ckpt.head
    echo(format_table(metrics))
    return metrics
