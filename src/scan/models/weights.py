"""Backbone weights from a local file, whatever wrote it: safetensors, or a `.pth`/`.pth.tar`
state dict from timm, torchvision, DINO, MoCo v2 or this project (RUN/pretext/backbone.safetensors).

Files are read with safetensors or `torch.load(weights_only=True)`, never as arbitrary pickles.
The state dict is found inside the usual wrappers and its keys are brought to the backbone's own
network (`backbone.net`):

    {'state_dict': ...} / {'model': ...}      timm, torchvision and most training scripts
    {'teacher': ..., 'student': ...}          DINO (the teacher, the network DINO evaluates)
    module.encoder_q.*                        MoCo v2 (scan.models.pretrained's mapping)
    module. / backbone. / net.                DDP, DINO's wrapper, this project's backbones

The classifier the backbone drops (a layer that is nn.Identity here) and DINO's projection head
are left out; any other missing, unexpected or mis-shaped key is a one-line error naming them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn

from scan.checkpoint import load_torch
from scan.errors import ScanError
from scan.models.pretrained import moco_to_scan_keys

# Wrappers around a state dict, tried in this order; DINO's teacher before its student.
WRAPPERS = ("state_dict", "model", "teacher", "student")
# Prefixes stripped from every key (repeatedly, in any order): DDP, DINO's MultiCropWrapper, ours.
PREFIXES = ("module.", "backbone.", "net.")
SHOWN_KEYS = 4


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weight file: safetensors by extension, anything else through
    torch.load(weights_only=True), unwrapped from the wrappers in WRAPPERS."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ScanError(f"pretext.weights {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ScanError(f"pretext.weights {path}: not a readable safetensors file ({err})") from None
    try:
        state = load_torch(path)
    except ScanError:  # a file that needs arbitrary Python objects: load_torch's refusal
        raise
    except Exception as err:  # a damaged file fails anywhere in the unpickler, with any error type
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise ScanError(f"pretext.weights {path}: not a readable PyTorch file ({reason})") from None
    for key in WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ScanError(f"pretext.weights {path}: no state dict of tensors in it "
                        f"(looked at the top level and under {', '.join(WRAPPERS)})")
    return state


def to_backbone_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of any supported layout -> keys of the backbone's network (`backbone.net`).

    A MoCo v2 query encoder goes through `moco_to_scan_keys` (its MLP head `head.*` is dropped);
    otherwise the PREFIXES are stripped. DINO's projection head (`head.mlp.*`, `head.last_layer.*`)
    is dropped.
    """
    if any(k.removeprefix("module.").startswith("encoder_q.") for k in state):
        return {k.removeprefix("backbone.net."): v for k, v in moco_to_scan_keys(state).items()
                if k.startswith("backbone.net.")}
    mapped = {}
    for key, value in state.items():
        while key.startswith(PREFIXES):
            key = next(key.removeprefix(p) for p in PREFIXES if key.startswith(p))
        if key.startswith(("head.mlp.", "head.last_layer.")):  # DINO's projection head
            continue
        mapped[key] = value
    return mapped


def _is_dropped_classifier(net: nn.Module, key: str) -> bool:
    """True when `key` belongs to a layer that is an nn.Identity in `net` (its removed classifier)."""
    path = key.split(".")[:-1]
    while path:
        try:
            return isinstance(net.get_submodule(".".join(path)), nn.Identity)
        except AttributeError:
            path.pop()
    return False


def _names(keys: list[str]) -> str:
    more = f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def load_backbone_weights(backbone: nn.Module, path: str | Path, name: str) -> None:
    """Load the weight file `path` into `backbone.net`, strictly up to its dropped classifier.

    backbone: a scan backbone (every one keeps its network in `.net`); name: pretext.backbone,
    for the error line. timm models' own checkpoint filter runs first when the model has one (it
    adapts, e.g., a ViT's position embedding to another input size).
    """
    net = backbone.net
    state = to_backbone_keys(read_state_dict(path))
    timm_filter = getattr(sys.modules.get(type(net).__module__), "checkpoint_filter_fn", None)
    if timm_filter is not None and type(net).__module__.startswith("timm."):
        state = timm_filter(state, net)
    own = net.state_dict()
    unexpected = [k for k in state if k not in own and not _is_dropped_classifier(net, k)]
    # Older files lack BatchNorm's step counter; BatchNorm fills it in itself.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    misshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                 if k in state and state[k].shape != v.shape]
    problems = [f"{what} {len(keys)} key(s): {_names(keys)}"
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys]
    if problems:
        raise ScanError(f"pretext.weights {path} does not fit pretext.backbone {name}: {'; '.join(problems)}")
    net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
