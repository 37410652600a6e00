"""Reading and writing what stages hand to each other through the run directory: the pretext
weights, mined neighbours and exported clustering models with their JSON sidecar."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from scan.checkpoint import RunDir, damaged, load_torch, load_weights, read_json, read_npy, save_json, save_weights
from scan.config import DataConfig, RunConfig
from scan.data import imagenet
from scan.errors import ScanError
from scan.models.backbones import build_backbone, check_backbone_name
from scan.models.heads import ClusteringModel, ContrastiveModel

# The largest base resolution a model card may ask images to be brought to (ImageNet runs use
# 224; a larger value in a model.json is a tampered or damaged card, not a model).
MAX_INPUT_SIZE = 4096


def require(run: RunDir, stage: str, by: str) -> None:
    """Error unless `stage` has finished in `run` (its outputs are what `by` reads)."""
    if not run.done(stage).is_file():
        raise ScanError(f"{by} needs the finished {stage} stage in {run.root}; run `scan {stage}` first")


def save_pretext_model(run: RunDir, model: ContrastiveModel) -> None:
    """The pretext stage's hand-off: backbone.safetensors and projection_head.safetensors."""
    save_weights(model.backbone.state_dict(), run.stage("pretext") / "backbone.safetensors")
    save_weights(model.head.state_dict(), run.stage("pretext") / "projection_head.safetensors")


def save_pretext_backbone(run: RunDir, backbone: nn.Module) -> None:
    """The hand-off of a pretrained backbone taken as it is: backbone.safetensors alone."""
    save_weights(backbone.state_dict(), run.stage("pretext") / "backbone.safetensors")


def load_pretext_backbone(run: RunDir, cfg: RunConfig) -> nn.Module:
    """The backbone written by the pretext stage (trained here or pretrained)."""
    backbone = build_backbone(cfg.pretext.backbone, cfg.data.channels, img_size=cfg.data.size)
    load_into(backbone, run.stage("pretext") / "backbone.safetensors")
    return backbone


def load_pretext_model(run: RunDir, cfg: RunConfig) -> ContrastiveModel:
    """The SimCLR model (backbone + projection head) written by the pretext stage."""
    model = ContrastiveModel(load_pretext_backbone(run, cfg), cfg.pretext.feature_dim)
    load_into(model.head, run.stage("pretext") / "projection_head.safetensors")
    return model


def load_into(module: nn.Module, path: Path) -> None:
    """Load safetensors weights into `module`; weights that do not fit it are a damaged file."""
    try:
        module.load_state_dict(load_weights(path))
    except RuntimeError as err:
        raise damaged(path, f"its weights do not fit the model: {str(err).splitlines()[-1].strip()[:200]}") from None


def load_neighbors(run: RunDir) -> tuple[torch.Tensor, torch.Tensor]:
    """(train neighbours N×k, selection-split neighbours M×val_k), int64."""
    folder = run.stage("mine")
    return _neighbor_array(folder / "neighbors.npy"), _neighbor_array(folder / "val_neighbors.npy")


def _neighbor_array(path: Path) -> torch.Tensor:
    """Neighbour lists of a split, N×k int64: indices into that same split, so in 0..N-1."""
    array = torch.from_numpy(read_npy(path))
    if array.dtype != torch.int64 or array.ndim != 2 or array.shape[1] == 0:
        raise damaged(path, f"expected int64 N×k neighbour indices, got {array.dtype} {tuple(array.shape)}")
    if len(array) and (int(array.min()) < 0 or int(array.max()) >= len(array)):
        raise damaged(path, f"neighbour indices outside 0..{len(array) - 1}")
    return array


def load_features(run: RunDir) -> torch.Tensor:
    """The train features mining used, N×D float32 (stored as float16)."""
    path = run.stage("mine") / "features.npy"
    array = read_npy(path)
    if array.ndim != 2 or array.dtype.kind != "f":
        raise damaged(path, f"expected float N×D features, got {array.dtype} {array.shape}")
    return torch.from_numpy(array).float()


CLUSTERING_STEPS = ("cluster", "selflabel")


def model_card(cfg: RunConfig, model: ClusteringModel, head: int) -> dict:
    """The JSON sidecar of an exported clustering model: everything needed to rebuild it and to
    prepare images for it (decode crop, base size, channels, normalisation) and where its
    backbone came from (pretext.source: trained here or pretrained, and the weight file)."""
    return {
        "backbone": cfg.pretext.backbone,
        "backbone_source": cfg.pretext.source,
        "backbone_weights": cfg.pretext.weights,
        "in_channels": cfg.data.channels,
        "input_size": cfg.data.size,
        "crop": decode_crop(cfg.data),
        "mean": cfg.data.mean,
        "std": cfg.data.std,
        "num_clusters": cfg.clusters,
        "num_heads": len(model.cluster_heads.heads),
        "head": head,
    }


def decode_crop(data: DataConfig) -> float:
    """Share of an image file's short side that the source keeps when decoding (centre crop):
    the standard 224/256 for the ImageNet sources, data.crop for the others (1 by default)."""
    return imagenet.CROP if data.source in imagenet.LOADERS else data.crop


def save_clustering_model(run: RunDir, stage: str, model: ClusteringModel, cfg: RunConfig, head: int) -> None:
    """model.safetensors (every head) plus model.json: what is needed to rebuild and apply it."""
    folder = run.stage(stage)
    save_weights(model.state_dict(), folder / "model.safetensors")
    save_json(model_card(cfg, model, head), folder / "model.json")


def read_model_card(folder: Path) -> dict:
    """model.json of an exported model in `folder` (a run's cluster/ or selflabel/ folder, or a
    copy of its two files anywhere)."""
    path = folder / "model.json"
    if not path.is_file():
        raise ScanError(f"no exported model in {folder} (missing model.json)")
    card = read_json(path)
    problem = card_problem(card)
    if problem:
        raise damaged(path, problem)
    return card


def card_problem(card: object) -> str | None:
    """What makes a model card impossible (it would crash or mislead whoever applies it), or None."""
    if not isinstance(card, dict):
        return "not a JSON object"
    ints = {"in_channels": (1, 3), "input_size": (1, MAX_INPUT_SIZE), "num_clusters": (2, None), "num_heads": (1, None)}
    for key, (low, high) in ints.items():
        value = card.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            return f"{key} is {value!r}, expected an integer {'in ' + str(low) + '..' + str(high) if high else '>= ' + str(low)}"
    if card["in_channels"] == 2:
        return "in_channels is 2, expected 1 or 3"
    if not isinstance(card.get("backbone"), str):
        return f"backbone is {card.get('backbone')!r}, expected a name"
    try:
        check_backbone_name(card["backbone"])
    except ScanError as err:
        return f"unknown backbone {card['backbone']!r} ({err})"
    head = card.get("head")
    if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < card["num_heads"]:
        return f"head {head!r} is not one of its {card['num_heads']} heads"
    crop = card.get("crop", 1.0)
    if isinstance(crop, bool) or not isinstance(crop, (int, float)) or not 0 < crop <= 1:
        return f"crop is {crop!r}, expected a share in (0, 1]"
    for key in ("mean", "std"):
        values = card.get(key)
        if (not isinstance(values, list) or len(values) != card["in_channels"]
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
            return f"{key} must be a list of {card['in_channels']} numbers"
    if not all(v > 0 for v in card["std"]):
        return f"std must be > 0, got {card['std']}"
    names = card.get("cluster_names")
    if names is not None and (not isinstance(names, list) or len(names) != card["num_clusters"]):
        return f"cluster_names must list one name (or null) per cluster ({card['num_clusters']})"
    return None


def load_exported_model(folder: Path) -> tuple[ClusteringModel, dict]:
    """The clustering model in `folder` (model.safetensors + model.json) and its sidecar, checked
    against each other: the weights must hold exactly the heads and clusters the card names."""
    card = read_model_card(folder)
    path = folder / "model.safetensors"
    weights = load_weights(path)
    heads = {k.split(".")[2] for k in weights if k.startswith("cluster_heads.heads.")}
    first = weights.get(f"cluster_heads.heads.{card['head']}.weight")
    if len(heads) != card["num_heads"] or first is None or first.ndim != 2 or first.shape[0] != card["num_clusters"]:
        raise damaged(folder / "model.json", f"it names {card['num_heads']} head(s) of {card['num_clusters']} clusters; "
                                             f"{path.name} holds {len(heads)} head(s)"
                                             + (f" of {first.shape[0]} clusters" if first is not None and first.ndim == 2 else ""))
    backbone = build_backbone(card["backbone"], card["in_channels"], img_size=card["input_size"])
    model = ClusteringModel(backbone, card["num_clusters"], card["num_heads"])
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise damaged(path, f"its weights do not fit the model model.json describes: "
                            f"{str(err).splitlines()[-1].strip()[:200]}") from None
    return model, card


def load_clustering_model(run: RunDir, stage: str) -> tuple[ClusteringModel, int]:
    """The exported model of `stage` ('cluster' or 'selflabel') and its selected head."""
    model, card = load_exported_model(run.stage(stage))
    return model, card["head"]


def check_stage(run: RunDir, stage: str) -> None:
    """Read back every file of `stage` in `run` that a later step reads; a ScanError names the
    first one that is damaged."""
    folder = run.stage(stage)
    run.done_record(stage)
    if run.checkpoint(stage).is_file():
        load_torch(run.checkpoint(stage))
    if (folder / "model.json").is_file():
        load_exported_model(folder)
    for path in sorted(folder.glob("*.safetensors")):
        load_weights(path)
    for path in sorted(folder.glob("*.npy")):
        read_npy(path, mmap=True)


def final_step(run: RunDir) -> str:
    """The clustering step whose model is the run's result: 'selflabel' when it finished and its
    safeguard kept its model (scan.stages.safeguard), else 'cluster'."""
    record = run.done_record("selflabel")
    if record is not None and record.get("summary", {}).get("final", "selflabel") == "selflabel":
        return "selflabel"
    if run.done("cluster").is_file():
        return "cluster"
    raise ScanError(f"{run.root} has no finished cluster or selflabel stage; run `scan cluster` first")


def final_reason(run: RunDir) -> str | None:
    """Why the SCAN model stayed final although self-labelling ran (None when it did not say)."""
    record = run.done_record("selflabel")
    return None if record is None else record.get("summary", {}).get("reason")


def set_cluster_names(run: RunDir, stage: str, names: list[str | None]) -> None:
    """Record in `stage`'s model.json the class each cluster was matched to (None: unmatched).
    Written by evaluation, the only place that reads labels; predictions then carry the names."""
    folder = run.stage(stage)
    card = read_model_card(folder)
    card["cluster_names"] = names
    save_json(card, folder / "model.json")
