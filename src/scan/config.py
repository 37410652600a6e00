"""Typed run configuration: one dataclass per stage, YAML presets shipped in the package, and
`section.key=value` overrides from the command line, all validated with one-line errors."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from scan.errors import ScanError
from scan.stage_table import stage_spec

SECTIONS = ("data", "pretext", "mine", "cluster", "selflabel", "runtime")
OPTIMIZERS = ("sgd", "adam")
VIEW_NAMES = ("weak", "simclr", "strong")
DEVICES = ("auto", "cpu", "cuda")
# Seeds are 32-bit, as numpy's are (each stage derives its own from seed·1000, pipeline.run_stage).
MAX_SEED = 2**32 - 1


@dataclass
class DataConfig:
    """Where the images come from, their base resolution, and how views are augmented."""

    source: str = "digits"
    path: str | None = None
    size: int = 32
    channels: int = 3
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])
    hflip: bool = True
    crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])
    # Side of the SimCLR views as a share of data.size. Smaller views train faster; mining still
    # embeds whole images at data.size, which suits crops resized down (FixRes, Touvron et al.
    # 2019: a random resized crop magnifies objects, a smaller output undoes it).
    simclr_size_ratio: float = 1.0
    # Multi-crop's small crops (pretext.local_crops): their side in pixels and area share.
    local_size: int = 16
    local_crop_scale: list[float] = field(default_factory=lambda: [0.05, 0.2])
    jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.4, 0.1])
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    strong_ops: int = 4
    cutout: int = 16
    labels: str = "auto"
    test_fraction: float = 0.0
    # Share of an image file's short side kept by the centre crop when a folder is decoded
    # (a pretrained model's crop_pct; 1 keeps the whole centred square).
    crop: float = 1.0


@dataclass
class PretextConfig:
    """SimCLR: backbone, projection head and its SGD + cosine schedule. source=pretrained takes the
    backbone's weights as they are (timm:NAME, torchvision:NAME or `weights`), with no training."""

    source: str = "train"
    backbone: str = "resnet18_cifar"
    feature_dim: int = 128
    epochs: int = 500
    batch_size: int = 512
    lr: float = 0.4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    temperature: float = 0.1
    lr_decay_rate: float = 0.1
    warmup_epochs: int = 0
    # Multi-crop: this many small crops per image (data.local_size) beside the two full views.
    local_crops: int = 0
    weights: str | None = None


@dataclass
class MineConfig:
    """Nearest-neighbour mining in the pretext feature space."""

    k: int = 20
    val_k: int = 5
    features: str = "projection"
    batch_size: int = 512
    backend: str = "torch"
    # PCA whitening power of the features before the search (scan.whitening): 0 = plain cosine.
    whitening: float = 0.0


@dataclass
class ClusterConfig:
    """SCAN loss training of `num_heads` cluster heads and label-free head selection."""

    epochs: int = 50
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    entropy_weight: float = 5.0
    num_heads: int = 1
    # Train the whole step this many times from the pretext weights (new heads, the random stream
    # continuing) and keep the lowest validation loss over all of them. With the full network
    # trained, heads share one backbone and end in the same solution, so heads alone cannot escape
    # a poor one; restarts can, and the label-free loss tells them apart (digits: benchmarks/README.md).
    restarts: int = 1
    # Full network only: before each restart, train this many heads on the cached backbone features
    # and start the step from the num_heads of them with the lowest validation loss (0: random
    # heads, as the original). See scan.stages.warm_start.
    warm_start_heads: int = 0
    update_head_only: bool = False
    # The original draws each anchor's "neighbour" from its k neighbours and itself (1 time in k+1
    # the anchor is paired with another view of itself); by default scan draws from the k alone.
    include_self: bool = False
    augment: str = "strong"
    select_on: str = "train"
    select_entropy_weight: float = 1.0
    # The K that --clusters auto chooses from (inclusive).
    auto_range: list[int] = field(default_factory=lambda: [2, 20])


@dataclass
class SelfLabelConfig:
    """Self-labelling: confident weak-view predictions supervise strong views."""

    epochs: int = 200
    batch_size: int = 1000
    optimizer: str = "adam"
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    threshold: float = 0.99
    # Per cluster, lower the threshold until at least this share of the images the SCAN model puts
    # there pass it (safeguard.cluster_thresholds); 0 keeps one global threshold, as the original.
    cluster_quota: float = 0.0
    class_balance: bool = True
    ema: float = 0.0
    augment: str = "strong"
    # The safeguard (scan.stages.safeguard): self-labelling starts only when at least this share of
    # the train images is confident and every cluster has some, and its model replaces the SCAN
    # model only when the balance of the cluster sizes (normalised entropy) drops by at most
    # max_balance_drop. CIFAR-10 on a CPU had 4-8 % confident images, and self-labelling cost 3 points.
    # min_confident=0 and max_balance_drop=1 turn the checks off.
    min_confident: float = 0.1
    max_balance_drop: float = 0.05
    # ... and only when the share of (image, mined neighbour) pairs in one cluster rises by at least
    # agreement_z standard errors (paired over the train images) less max_agreement_drop
    # (safeguard.compare_agreement, which gives the evidence for 1.645, a one-sided 5 %).
    # max_agreement_drop=1 turns the check off; agreement_z=0 allows a drop of max_agreement_drop.
    max_agreement_drop: float = 0.0
    agreement_z: float = 1.645
    # Train the head alone on the cached backbone features (no augmentation: the confident
    # predictions of the features supervise the same features) instead of the whole network.
    update_head_only: bool = False


@dataclass
class RuntimeConfig:
    """How the network passes are computed and the images read, not what they compute: no stage's
    fingerprint depends on these. `auto` means bf16 autocast and channels-last on CUDA and on CPUs
    with native bf16 (AMX-BF16, AVX512-BF16), fp32 and contiguous on other CPUs; file datasets
    are streamed from their decode cache (`stream`) when they do not fit in memory, through
    `workers` DataLoader processes."""

    precision: str = "auto"
    channels_last: bool | str = "auto"
    compile: bool = False
    stream: bool | str = "auto"
    workers: int = 4


@dataclass
class RunConfig:
    """Everything one run needs; written to RUN/config.yaml and into every checkpoint."""

    preset: str = "digits"
    clusters: int | str = 10  # K, or "auto": estimated after mining (scan.kestimate)
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    pretext: PretextConfig = field(default_factory=PretextConfig)
    mine: MineConfig = field(default_factory=MineConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    selflabel: SelfLabelConfig = field(default_factory=SelfLabelConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fingerprint(cfg: RunConfig, stage: str) -> str:
    """A short hash of the config values that `stage`'s outputs depend on. Keys at their default
    value are left out, so adding a new key (with a default) never invalidates finished stages."""
    flat = flatten(cfg.to_dict())
    defaults = flatten(RunConfig().to_dict())
    keys = stage_spec(stage).inputs
    picked = {k: v for k, v in flat.items()
              if any(k == p or k.startswith(p + ".") for p in keys) and v != defaults.get(k, object())}
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable 'key: old -> new' lines for the keys that differ."""
    a, b = flatten(old), flatten(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


# ---------------------------------------------------------------------------------------------
# Presets


def preset_names() -> list[str]:
    """Names of the YAML presets shipped in scan/presets/."""
    folder = resources.files("scan") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """The raw nested dict of preset `name`; unknown names list the valid ones."""
    names = preset_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ScanError(f"unknown preset {name!r}; {hint}valid presets: {', '.join(names)}")
    text = (resources.files("scan") / "presets" / f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


# ---------------------------------------------------------------------------------------------
# Building and validating


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f"; valid keys: {', '.join(valid)}"


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against a dataclass field type; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(key, value, inner[0])
        for kind in inner:  # e.g. bool | str for 'auto', true or false: the first type that fits
            try:
                return _coerce(key, value, kind)
            except ScanError:
                pass
        raise ScanError(f"{key} must be a {' or '.join(a.__name__ for a in inner)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ScanError(f"{key} must be a list, got {value!r}")
        return [_coerce(key, v, args[0]) for v in value]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept it as the number everyone means.
        try:
            return float(value)
        except ValueError:
            pass
    if annotation is bool and not isinstance(value, bool):
        raise ScanError(f"{key} must be true or false, got {value!r}")
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ScanError(f"{key} must be an integer, got {value!r}")
    if annotation in (float, str) and not isinstance(value, annotation):
        raise ScanError(f"{key} must be a {annotation.__name__}, got {value!r}")
    return value


def _apply(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    """Set nested `values` on dataclass `obj`, with type checks and key suggestions."""
    hints = typing.get_type_hints(type(obj))
    valid = [f.name for f in dataclasses.fields(obj)]
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in valid:
            raise ScanError(f"unknown config key {full!r}{_suggest(key, valid)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ScanError(f"{full} is a section; set its keys as {full}.KEY=VALUE")
            _apply(current, value, full + ".")
        else:
            setattr(obj, key, _coerce(full, value, hints[key]))


def parse_override(text: str) -> dict[str, Any]:
    """'cluster.entropy_weight=2' -> {'cluster': {'entropy_weight': 2}} (values parsed as YAML)."""
    if "=" not in text:
        raise ScanError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    nested: dict[str, Any] = {}
    node = nested
    parts = dotted.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def _check_choice(key: str, value: str, choices: typing.Iterable[str]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ScanError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def _check_area_share(key: str, scale: list[float]) -> None:
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ScanError(f"{key} must be [min, max] with 0 < min <= max <= 1, got {scale}")


def _check_positive(cfg: RunConfig, keys: list[str]) -> None:
    flat = flatten(cfg.to_dict())
    for key in keys:
        if not flat[key] > 0:
            raise ScanError(f"{key} must be > 0, got {flat[key]!r}")


def validate(cfg: RunConfig) -> None:
    """Value checks that do not need the data (those live in the pipeline)."""
    from scan.data.sources import SOURCES
    from scan.knn import BACKENDS, FAISS_MISSING, faiss_available
    from scan.models.backbones import check_backbone_name

    _check_choice("data.source", cfg.data.source, SOURCES)
    _check_choice("pretext.source", cfg.pretext.source, ("train", "pretrained"))
    check_backbone_name(cfg.pretext.backbone)
    if cfg.pretext.source == "pretrained" and cfg.mine.features != "backbone":
        raise ScanError("pretext.source=pretrained has no projection head: set mine.features=backbone")
    if cfg.selflabel.update_head_only and cfg.mine.features != "backbone":
        raise ScanError("selflabel.update_head_only trains on the cached backbone features: set mine.features=backbone")
    _check_choice("device", cfg.device, DEVICES)
    _check_choice("mine.features", cfg.mine.features, ("projection", "backbone"))
    _check_choice("mine.backend", cfg.mine.backend, BACKENDS)
    if cfg.mine.backend == "faiss" and not faiss_available():
        raise ScanError(FAISS_MISSING)
    if not 0 <= cfg.mine.whitening <= 1:
        raise ScanError(f"mine.whitening must be in [0, 1] (0: plain cosine), got {cfg.mine.whitening}")
    _check_choice("runtime.precision", cfg.runtime.precision, ("auto", "fp32", "bf16"))
    for key in ("channels_last", "stream"):
        if getattr(cfg.runtime, key) not in ("auto", True, False):
            raise ScanError(f"runtime.{key} must be one of auto, true, false; got {getattr(cfg.runtime, key)!r}")
    if cfg.runtime.workers < 0:
        raise ScanError(f"runtime.workers must be 0 or more, got {cfg.runtime.workers}")
    _check_choice("cluster.optimizer", cfg.cluster.optimizer, OPTIMIZERS)
    _check_choice("selflabel.optimizer", cfg.selflabel.optimizer, OPTIMIZERS)
    _check_choice("cluster.augment", cfg.cluster.augment, VIEW_NAMES)
    _check_choice("selflabel.augment", cfg.selflabel.augment, VIEW_NAMES)
    _check_choice("cluster.select_on", cfg.cluster.select_on, ("train", "test"))
    _check_choice("data.labels", cfg.data.labels, ("auto", "none"))
    if not 0 < cfg.data.crop <= 1:
        raise ScanError(f"data.crop must be in (0, 1], got {cfg.data.crop}")
    if not 0 <= cfg.data.test_fraction < 1:
        raise ScanError(f"data.test_fraction must be in [0, 1), got {cfg.data.test_fraction}")
    _check_positive(cfg, [
        "data.size", "data.channels", "pretext.feature_dim", "pretext.batch_size",
        "pretext.lr", "pretext.temperature", "mine.k", "mine.val_k", "mine.batch_size",
        "cluster.epochs", "cluster.batch_size", "cluster.lr", "cluster.num_heads", "cluster.restarts",
        "selflabel.batch_size", "selflabel.lr",
    ])
    if not 0 <= cfg.seed <= MAX_SEED:
        raise ScanError(f"--seed must be between 0 and {MAX_SEED}, got {cfg.seed}")
    if cfg.clusters != "auto" and (isinstance(cfg.clusters, str) or cfg.clusters < 2):
        raise ScanError(f"--clusters must be at least 2 (or auto), got {cfg.clusters!r}")
    if cfg.cluster.warm_start_heads and cfg.cluster.warm_start_heads < cfg.cluster.num_heads:
        raise ScanError(f"cluster.warm_start_heads must be 0 (off) or at least cluster.num_heads "
                        f"({cfg.cluster.num_heads}), got {cfg.cluster.warm_start_heads}")
    auto_range = cfg.cluster.auto_range
    if len(auto_range) != 2 or not 2 <= auto_range[0] <= auto_range[1]:
        raise ScanError(f"cluster.auto_range must be [min, max] with 2 <= min <= max, got {cfg.cluster.auto_range}")
    if cfg.data.channels not in (1, 3):
        raise ScanError(f"data.channels must be 1 or 3, got {cfg.data.channels}")
    for key in ("mean", "std"):
        if len(getattr(cfg.data, key)) != cfg.data.channels:
            raise ScanError(f"data.{key} needs {cfg.data.channels} values (one per channel)")
    # Pixels are scaled to [0, 1] before normalisation; a zero std divides by zero (a NaN loss).
    if not all(0 <= m <= 1 for m in cfg.data.mean):
        raise ScanError(f"data.mean must lie in [0, 1] (pixels are scaled to [0, 1]), got {cfg.data.mean}")
    if not all(s > 0 for s in cfg.data.std):
        raise ScanError(f"data.std must be > 0 for every channel, got {cfg.data.std}")
    _check_area_share("data.crop_scale", cfg.data.crop_scale)
    _check_area_share("data.local_crop_scale", cfg.data.local_crop_scale)
    if cfg.pretext.local_crops < 0:
        raise ScanError(f"pretext.local_crops must be >= 0 (0 turns multi-crop off), got {cfg.pretext.local_crops}")
    if not 0 < cfg.data.simclr_size_ratio <= 1:
        raise ScanError(f"data.simclr_size_ratio must be in (0, 1], got {cfg.data.simclr_size_ratio}")
    if cfg.pretext.local_crops and not 1 <= cfg.data.local_size <= cfg.data.size:
        raise ScanError(f"data.local_size must be in [1, data.size={cfg.data.size}] for multi-crop, got {cfg.data.local_size}")
    if len(cfg.data.jitter) != 4:
        raise ScanError("data.jitter must be [brightness, contrast, saturation, hue]")
    if not 0 < cfg.selflabel.threshold < 1:
        raise ScanError(f"selflabel.threshold must be in (0, 1), got {cfg.selflabel.threshold}")
    for key in ("min_confident", "max_balance_drop", "max_agreement_drop", "cluster_quota"):
        if not 0 <= getattr(cfg.selflabel, key) <= 1:
            raise ScanError(f"selflabel.{key} must be in [0, 1], got {getattr(cfg.selflabel, key)}")
    if cfg.selflabel.agreement_z < 0:
        raise ScanError(f"selflabel.agreement_z must be >= 0 (0: no margin), got {cfg.selflabel.agreement_z}")
    if not 0 <= cfg.selflabel.ema < 1:
        raise ScanError(f"selflabel.ema must be in [0, 1) (0 turns EMA off), got {cfg.selflabel.ema}")
    if min(cfg.pretext.epochs, cfg.selflabel.epochs, cfg.pretext.warmup_epochs) < 0:
        raise ScanError("pretext.epochs, selflabel.epochs and pretext.warmup_epochs must be >= 0")
    if cfg.mine.val_k > cfg.mine.k and cfg.cluster.select_on == "train":
        raise ScanError(f"mine.val_k ({cfg.mine.val_k}) must not exceed mine.k ({cfg.mine.k})")


def build_config(
    preset: str = "digits",
    *,
    overrides: typing.Sequence[str] = (),
    data: str | None = None,
    clusters: int | str | None = None,
    seed: int | None = None,
    device: str | None = None,
    size: int | None = None,
    config_file: str | None = None,
) -> RunConfig:
    """Preset values, then a partial config file (`--config`), then command-line options, then
    `key=value` overrides; validated. With pretext.source=pretrained, the data keys none of these
    set come from the backbone's pretrained preprocessing (scan.models.hub.resolve_preprocessing)."""
    cfg = RunConfig(preset=preset)
    preset_values = load_preset(preset)
    _apply(cfg, preset_values)
    explicit = set(flatten(preset_values)) | ({"data.size"} if size is not None else set())
    if config_file is not None:
        values = load_config_file(config_file)
        named = values.pop("preset", preset)
        if named != preset:
            raise ScanError(f"--config {config_file} is for preset {named!r} but the command chose {preset!r} "
                            f"(the preset is chosen by name: scan run {named} --config {config_file})")
        try:
            _apply(cfg, values)
        except ScanError as err:
            raise ScanError(str(err) if str(err).startswith("--config") else f"--config {config_file}: {err}") from None
        explicit |= set(flatten(values))
    if data is not None:
        # An .npz, the preset's dataset root or image folder, or any image folder: the registry
        # knows which sources read a directory.
        from scan.data.sources import data_path_settings

        _apply(cfg, {"data": data_path_settings(cfg.data.source, str(data))})
    options = {"clusters": clusters, "seed": seed, "device": device}
    _apply(cfg, {k: v for k, v in options.items() if v is not None})
    if size is not None:
        _apply(cfg, {"data": {"size": size}})
    for text in overrides:
        values = parse_override(text)
        if "preset" in values:
            raise ScanError("the preset is chosen by name (scan run PRESET), not by an override")
        _apply(cfg, values)
        explicit |= set(flatten(values))
    if cfg.pretext.source == "pretrained":
        from scan.models.hub import resolve_preprocessing

        resolve_preprocessing(cfg, explicit)
    validate(cfg)
    return cfg


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from a resolved config dict (config.yaml or a checkpoint)."""
    cfg = RunConfig()
    _apply(cfg, values)
    return cfg


# ---------------------------------------------------------------------------------------------
# One line per key, printed by `scan config` (tests check that every key has one).

KEY_HELP: dict[str, str] = {
    "preset": "the preset these values start from (chosen by name: scan run PRESET)",
    "clusters": "number of clusters K, or auto to estimate it (--clusters)",
    "seed": "random seed of every stage (--seed); same seed, same CPU type: same results",
    "device": "auto, cpu or cuda (--device); auto picks cuda when available",
    "data.source": "where images come from: digits, npz, folder, mnist, cifar10, cifar20, stl10, imagenet...",
    "data.path": "the .npz file, image folder or dataset root (--data)",
    "data.size": "base resolution S: every image is brought to S×S (--size)",
    "data.channels": "1 (grey) or 3 (RGB)",
    "data.mean": "per-channel mean used to normalise images in [0, 1]",
    "data.std": "per-channel standard deviation used to normalise images in [0, 1]",
    "data.hflip": "random horizontal flips in the training views",
    "data.crop_scale": "[min, max] area share of the random resized crop (SimCLR views)",
    "data.simclr_size_ratio": "side of the SimCLR views as a share of data.size (rounded, at least 1 pixel); mining still embeds at data.size",
    "data.local_size": "side in pixels of multi-crop's small crops (pretext.local_crops)",
    "data.local_crop_scale": "[min, max] area share of multi-crop's small crops",
    "data.jitter": "colour jitter strength [brightness, contrast, saturation, hue]",
    "data.jitter_p": "probability of applying the colour jitter",
    "data.grayscale_p": "probability of turning a view grey",
    "data.strong_ops": "random augmentation ops per strong view (cluster and self-label steps)",
    "data.cutout": "side in pixels of the cutout square of strong views",
    "data.labels": "auto: folder labels from sub-folder names when every image sits in one; none: no labels",
    "data.test_fraction": "share of a folder's images held out as the test split (0: evaluate on all)",
    "data.crop": "share of a folder image's short side kept by the centre crop (a pretrained model's crop_pct)",
    "pretext.backbone": "network that computes the image features: a registry name, timm:NAME or torchvision:NAME",
    "pretext.feature_dim": "size of the L2-normalised SimCLR projection",
    "pretext.epochs": "SimCLR epochs (0 with pretext.weights: imported features)",
    "pretext.batch_size": "images per SimCLR step (each gives two views)",
    "pretext.lr": "SGD learning rate of the pretext step",
    "pretext.momentum": "SGD momentum of the pretext step",
    "pretext.weight_decay": "weight decay of the pretext step",
    "pretext.temperature": "NT-Xent temperature τ",
    "pretext.lr_decay_rate": "the cosine schedule ends at lr·rate³ (the original's η_min)",
    "pretext.warmup_epochs": "linear learning-rate warm-up epochs",
    "pretext.local_crops": "multi-crop: small crops per image beside the two full SimCLR views (0 = off)",
    "pretext.weights": "a weight file: MoCo v2 to import (source=train), or any backbone file (source=pretrained)",
    "pretext.source": "train (SimCLR here) or pretrained (take the backbone's weights as they are, no training)",
    "mine.k": "nearest neighbours mined per train image (the SCAN loss draws from them)",
    "mine.val_k": "neighbours per image used by the label-free validation loss",
    "mine.features": "mine on backbone features or on the projection output",
    "mine.batch_size": "images per embedding pass while mining",
    "mine.backend": "torch (exact, no extra package) or faiss (faiss-cpu's exact IndexFlatIP)",
    "mine.whitening": "PCA whitening power of the features before the search: 0 plain cosine, 0.5 square-rooted, 1 full",
    "cluster.epochs": "epochs of the SCAN step",
    "cluster.batch_size": "anchors per SCAN step",
    "cluster.optimizer": "adam or sgd",
    "cluster.lr": "learning rate of the SCAN step",
    "cluster.momentum": "SGD momentum (cluster.optimizer=sgd)",
    "cluster.weight_decay": "weight decay of the SCAN step",
    "cluster.entropy_weight": "λ, the weight of the entropy term that keeps clusters balanced",
    "cluster.num_heads": "cluster heads trained together; the lowest validation loss picks one",
    "cluster.restarts": "train the SCAN step this many times and keep the lowest validation loss",
    "cluster.warm_start_heads": "full network: train this many heads on cached features first and start from the best (0: off)",
    "cluster.update_head_only": "freeze the backbone and train the heads on cached features",
    "cluster.include_self": "draw each anchor's partner from its k neighbours and itself, as the original did",
    "cluster.augment": "view the SCAN step trains on: weak, simclr or strong",
    "cluster.select_on": "split for label-free head selection: train, or test (the original)",
    "cluster.select_entropy_weight": "entropy weight of the validation loss that selects the head",
    "cluster.auto_range": "[min, max] of the K that --clusters auto chooses from",
    "selflabel.epochs": "self-labelling epochs (0: stop after the SCAN step)",
    "selflabel.batch_size": "images per self-label step",
    "selflabel.optimizer": "adam or sgd",
    "selflabel.lr": "learning rate of the self-label step",
    "selflabel.momentum": "SGD momentum (selflabel.optimizer=sgd)",
    "selflabel.weight_decay": "weight decay of the self-label step",
    "selflabel.threshold": "a weak view's top probability above this makes it a pseudo-label",
    "selflabel.cluster_quota": "per cluster, the threshold is lowered until at least this share of its images pass",
    "selflabel.class_balance": "weight the cross-entropy by inverse pseudo-label frequency",
    "selflabel.ema": "exponential moving average of the weights (0: off; 0.999 for ImageNet)",
    "selflabel.augment": "view the self-label step trains on: weak, simclr or strong",
    "selflabel.min_confident": "self-label only when at least this share of train images is confident (0: always)",
    "selflabel.max_balance_drop": "keep the self-label model only if cluster balance drops by at most this (1: always)",
    "selflabel.max_agreement_drop": "keep the self-label model only if its agreement with the mined neighbours drops by at most this (1: always)",
    "selflabel.agreement_z": "... and rises by at least this many standard errors (0: any rise, or a drop up to max_agreement_drop)",
    "selflabel.update_head_only": "train the head alone on the cached backbone features (no augmentation)",
    "runtime.precision": "auto, fp32 or bf16 autocast (auto: bf16 where it is native: CUDA that supports it, CPUs with AMX-BF16 or AVX512-BF16)",
    "runtime.channels_last": "channels-last memory format (auto: on where bf16 is native, as for precision)",
    "runtime.compile": "torch.compile the network",
    "runtime.stream": "stream decoded file datasets from disk (auto: when they do not fit in memory)",
    "runtime.workers": "DataLoader workers that read streamed or decoded images",
}


def load_config_file(path: str) -> dict[str, Any]:
    """The nested values of a partial config file (YAML, the layout of RUN/config.yaml)."""
    from pathlib import Path

    file = Path(path).expanduser()
    if not file.is_file():
        raise ScanError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ScanError(f"--config {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ScanError(f"--config {path}: expected a mapping of sections and keys, got {type(values).__name__}")
    return values
