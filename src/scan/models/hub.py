"""Pretrained backbones (pretext.source=pretrained): where their weights come from and how their
images are prepared.

Weights: `pretext.weights=FILE` when given (scan.models.weights reads any supported layout);
otherwise, for `timm:NAME`, the file timm itself downloads from the Hugging Face hub and, for
`torchvision:NAME`, the file of the model's DEFAULT weights enum in torch's hub cache. A file
already in those caches is used without the network; a missing one is downloaded when the host
answers; offline, the error says which file to put where.

Preprocessing: input size, mean/std and centre-crop share from timm's `pretrained_cfg` or from
torchvision's `weights.transforms()`, applied to the config when it is built (`resolve_preprocessing`)
so RUN/config.yaml holds what was used.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from scan.errors import ScanError
from scan.models.backbones import check_backbone_name, import_timm, split_backbone_name
from scan.models.weights import load_backbone_weights

HF_HOST = "huggingface.co"
TORCHVISION_HOST = "download.pytorch.org"
# Seconds to wait for a host before calling the machine offline (a download is tried only then:
# huggingface_hub itself retries an unreachable host for about 45 s).
ONLINE_TIMEOUT = 3.0


@dataclass(frozen=True)
class Preprocessing:
    """How a pretrained model's images were prepared: input side `size`, per-channel `mean`/`std`
    on the [0, 1] scale, `crop` = share of the short side kept by the centre crop
    (224/256 = 0.875 for torchvision's ResNets). Its resampling filter is not taken over: decoding
    here always resizes with Pillow's antialiased bilinear (timm's models name bicubic)."""

    size: int
    mean: list[float]
    std: list[float]
    crop: float


def online(host: str) -> bool:
    """True when `host` answers on port 443 within ONLINE_TIMEOUT seconds."""
    try:
        socket.create_connection((host, 443), timeout=ONLINE_TIMEOUT).close()
        return True
    except OSError:
        return False


def _timm_cfg(name: str, model: str):
    cfg = import_timm(name).models.get_pretrained_cfg(model)
    if cfg is None:
        raise ScanError(f"pretext.backbone {name}: timm has no pretrained weights for {model!r}; "
                        "pass pretext.weights=FILE or use pretext.source=train")
    return cfg


def _torchvision_weights(name: str, model: str):
    from torchvision.models import get_model_weights

    weights = get_model_weights(model).DEFAULT
    if weights is None:
        raise ScanError(f"pretext.backbone {name}: torchvision has no pretrained weights for {model!r}")
    return weights


def pretrained_preprocessing(name: str) -> Preprocessing | None:
    """The preprocessing of `name`'s pretrained weights (timm or torchvision), None for registry
    backbones (their preset says how). Reads configuration only: nothing is downloaded."""
    check_backbone_name(name)
    kind, model = split_backbone_name(name)
    if kind == "timm":
        cfg = _timm_cfg(name, model)
        return Preprocessing(int(cfg.input_size[-1]), list(cfg.mean), list(cfg.std), float(cfg.crop_pct))
    if kind == "torchvision":
        transform = _torchvision_weights(name, model).transforms()
        size, resize = transform.crop_size[0], transform.resize_size[0]
        return Preprocessing(int(size), list(transform.mean), list(transform.std), size / resize)
    return None


def resolve_preprocessing(cfg, explicit: set[str]) -> None:
    """Set data.size, data.mean, data.std and data.crop of a RunConfig from its pretrained
    backbone's preprocessing, except those in `explicit` (keys the preset, an option or an
    override set, such as 'data.size'). Does nothing unless pretext.source is pretrained."""
    if cfg.pretext.source != "pretrained":
        return
    prep = pretrained_preprocessing(cfg.pretext.backbone)
    if prep is None:
        return
    for key in ("size", "mean", "std", "crop"):
        if f"data.{key}" not in explicit:
            setattr(cfg.data, key, getattr(prep, key))


def _timm_file(name: str, model: str) -> Path:
    """timm's pretrained weight file for `model`: from the Hugging Face cache, else downloaded."""
    cfg = _timm_cfg(name, model)
    if not cfg.hf_hub_id:
        raise ScanError(f"pretext.backbone {name}: its weights are not on the Hugging Face hub; "
                        f"download {cfg.url} and pass pretext.weights=FILE")
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    # As timm does: the named file, else safetensors, else the older pickled state dict.
    filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    for filename in filenames:
        cached = try_to_load_from_cache(cfg.hf_hub_id, filename)
        if isinstance(cached, str):
            return Path(cached)
    if not online(HF_HOST):
        raise ScanError(f"pretext.backbone {name}: offline and no weights in the Hugging Face cache "
                        f"({constants.HF_HUB_CACHE}): download https://{HF_HOST}/{cfg.hf_hub_id}/resolve/main/{filenames[0]} "
                        f"elsewhere and pass pretext.weights=FILE")
    for filename in filenames:
        try:
            return Path(hf_hub_download(cfg.hf_hub_id, filename))
        except EntryNotFoundError:
            continue
    raise ScanError(f"pretext.backbone {name}: {cfg.hf_hub_id} on the Hugging Face hub has none of {', '.join(filenames)}; "
                    "pass pretext.weights=FILE")


def _torchvision_file(name: str, model: str) -> Path:
    """The DEFAULT weights file of torchvision `model`: from torch's hub cache, else downloaded."""
    import torch.hub

    url = _torchvision_weights(name, model).url
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / url.rsplit("/", 1)[-1]
    if path.is_file():
        return path
    if not online(TORCHVISION_HOST):
        raise ScanError(f"pretext.backbone {name}: offline and {path.name} is not in torch's hub cache: "
                        f"put {url} in {folder}/ or pass pretext.weights=FILE")
    folder.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(path))
    return path


def load_pretrained(backbone: nn.Module, name: str, weights: str | None) -> str:
    """Load pretrained weights into `backbone` (built by build_backbone(name, ...)): the file
    `weights` when given, else the model's own pretrained file (see the module docstring).
    Returns the file that was loaded."""
    kind, model = split_backbone_name(name)
    if weights:
        path = Path(weights).expanduser()
    elif kind == "timm":
        path = _timm_file(name, model)
    elif kind == "torchvision":
        path = _torchvision_file(name, model)
    else:
        raise ScanError(f"pretext.source=pretrained with backbone {name} needs pretext.weights=FILE "
                        "(or a timm:NAME or torchvision:NAME backbone, whose weights are downloaded)")
    load_backbone_weights(backbone, path, name)
    return str(path)
