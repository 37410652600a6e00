"""Config: presets, typed overrides, one-line errors with suggestions, stage fingerprints."""

from __future__ import annotations

import pytest

from scan.config import (
    RunConfig,
    build_config,
    config_diff,
    config_from_dict,
    fingerprint,
    flatten,
    load_preset,
    parse_override,
    preset_names,
)
from scan.errors import ScanError
from scan.models.backbones import BACKBONES


def _error(**kwargs) -> str:
    with pytest.raises(ScanError) as info:
        build_config(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_default_preset_is_digits():
    cfg = build_config()
    assert "digits" in preset_names()
    assert cfg.preset == "digits"
    assert cfg.data.source == "digits"
    assert (cfg.data.size, cfg.data.channels) == (8, 1)  # the native 8×8 grey digits
    assert cfg.clusters == 10
    # every value the preset file sets is applied (values read from the file, since presets get tuned) ...
    preset = flatten(load_preset("digits"))
    applied = flatten(cfg.to_dict())
    assert preset, "the digits preset sets nothing"
    for key, value in preset.items():
        assert applied[key] == value, key
    # ... and every key it leaves alone keeps the dataclass default
    defaults = flatten(RunConfig().to_dict())
    for key in set(applied) - set(preset) - {"preset"}:
        assert applied[key] == defaults[key], key


def test_overrides_apply_with_types():
    cfg = build_config(overrides=["pretext.epochs=5", "cluster.entropy_weight=2"])
    assert cfg.pretext.epochs == 5 and type(cfg.pretext.epochs) is int
    assert cfg.cluster.entropy_weight == 2.0 and type(cfg.cluster.entropy_weight) is float
    # the preset value, untouched by the other call
    assert build_config().pretext.epochs == load_preset("digits")["pretext"]["epochs"]


def test_override_parses_yaml_values():
    assert parse_override("cluster.entropy_weight=2") == {"cluster": {"entropy_weight": 2}}
    assert parse_override("data.mean=[0.5]") == {"data": {"mean": [0.5]}}
    cfg = build_config(overrides=["data.hflip=true", "cluster.lr=0.5", "data.mean=[0.1]"])
    assert cfg.data.hflip is True and cfg.cluster.lr == 0.5 and cfg.data.mean == [0.1]


def test_override_accepts_exponent_floats():
    cfg = build_config(overrides=["cluster.lr=1e-3"])
    assert cfg.cluster.lr == pytest.approx(0.001)


def test_cli_options_then_overrides():
    cfg = build_config(clusters=4, seed=3, device="cpu", overrides=["seed=7"])
    assert (cfg.clusters, cfg.seed, cfg.device) == (4, 7, "cpu")
    cfg = build_config(data="some/file.npz")
    assert cfg.data.source == "npz" and cfg.data.path == "some/file.npz"


def test_unknown_key_suggests_close_match():
    message = _error(overrides=["pretext.epoch=5"])
    assert "pretext.epoch" in message
    assert "did you mean 'epochs'" in message


def test_unknown_section():
    message = _error(overrides=["pretex.epochs=5"])
    assert "unknown config key 'pretex'" in message
    assert "did you mean 'pretext'" in message
    message = _error(overrides=["zzz.epochs=5"])
    assert "unknown config key 'zzz'" in message
    for section in ("data", "pretext", "mine", "cluster", "selflabel"):
        assert section in message


def test_setting_a_section_to_a_value():
    assert "section" in _error(overrides=["pretext=5"])


def test_override_without_equals():
    with pytest.raises(ScanError, match="section.key=value"):
        parse_override("pretext.epochs")


@pytest.mark.parametrize("override, words", [
    ("pretext.epochs=abc", "pretext.epochs must be an integer"),
    ("pretext.epochs=2.5", "pretext.epochs must be an integer"),
    ("pretext.epochs=true", "pretext.epochs must be an integer"),
    ("cluster.lr=fast", "cluster.lr must be a float"),
    ("data.hflip=2", "data.hflip must be true or false"),
    ("data.mean=0.5", "data.mean must be a list"),
    ("cluster.optimizer=3", "cluster.optimizer must be a str"),
])
def test_wrong_types(override, words):
    assert words in _error(overrides=[override])


def test_bad_choice_lists_valid_ones():
    message = _error(overrides=["cluster.optimizer=rmsprop"])
    assert "cluster.optimizer" in message and "rmsprop" in message
    assert "sgd" in message and "adam" in message


def test_unknown_backbone_lists_valid_ones():
    message = _error(overrides=["pretext.backbone=vgg"])
    for name in BACKBONES:
        assert name in message


@pytest.mark.parametrize("clusters", [1, 0, -3])
def test_too_few_clusters(clusters):
    assert "--clusters must be at least 2" in _error(clusters=clusters)


def test_unknown_preset_lists_valid_presets():
    message = _error(preset="imagenet_tiny_nonexistent")
    assert "unknown preset 'imagenet_tiny_nonexistent'" in message
    for name in preset_names():
        assert name in message


@pytest.mark.parametrize("override, words", [
    ("pretext.epochs=-1", "pretext.epochs, selflabel.epochs and pretext.warmup_epochs must be >= 0"),
    ("cluster.lr=-0.1", "cluster.lr must be > 0"),
    ("data.channels=2", "data.channels must be 1 or 3"),
    ("selflabel.threshold=1.0", "selflabel.threshold must be in (0, 1)"),
    ("selflabel.ema=1.0", "selflabel.ema must be in [0, 1)"),
    ("selflabel.agreement_z=-1", "selflabel.agreement_z must be >= 0"),
    ("data.crop_scale=[0.8,0.5]", "data.crop_scale"),
    ("data.local_crop_scale=[0,0.2]", "data.local_crop_scale must be [min, max] with 0 < min <= max <= 1"),
    ("pretext.local_crops=-1", "pretext.local_crops must be >= 0"),
    ("pretext.local_crops=2 data.local_size=9", "data.local_size must be in [1, data.size=8] for multi-crop, got 9"),
    ("data.simclr_size_ratio=1.5", "data.simclr_size_ratio must be in (0, 1], got 1.5"),
    ("data.simclr_size_ratio=0", "data.simclr_size_ratio must be in (0, 1], got 0"),
    ("mine.val_k=5 mine.k=4", "mine.val_k (5) must not exceed mine.k (4)"),
])
def test_value_checks(override, words):
    assert words in _error(overrides=override.split())


def test_fingerprint_depends_only_on_stage_inputs():
    base = build_config()
    cluster_changed = build_config(overrides=["cluster.entropy_weight=2", "cluster.epochs=3"])
    k_changed = build_config(clusters=5)
    pretext_changed = build_config(overrides=["pretext.epochs=5"])
    fp = fingerprint
    assert fp(cluster_changed, "pretext") == fp(base, "pretext")
    assert fp(cluster_changed, "mine") == fp(base, "mine")
    assert fp(cluster_changed, "cluster") != fp(base, "cluster")
    # 'clusters' is not under the 'cluster.' prefix: it must not touch pretext or mine
    assert fp(k_changed, "pretext") == fp(base, "pretext")
    assert fp(k_changed, "mine") == fp(base, "mine")
    assert fp(k_changed, "cluster") != fp(base, "cluster")
    for stage in ("pretext", "mine", "cluster", "selflabel"):
        assert fp(pretext_changed, stage) != fp(base, stage)
    # runtime-only device does not invalidate anything
    assert fp(build_config(device="cpu"), "selflabel") == fp(base, "selflabel")
    assert len(fp(base, "pretext")) == 16


def test_config_round_trips_through_dict():
    cfg = build_config(overrides=["pretext.epochs=7", "data.mean=[0.123]"], clusters=7)
    again = config_from_dict(cfg.to_dict())
    assert again == cfg
    assert config_diff(cfg.to_dict(), again.to_dict()) == []
    base = build_config(clusters=7)
    assert config_diff(cfg.to_dict(), base.to_dict()) == [
        f"data.mean: [0.123] -> {base.data.mean!r}",
        f"pretext.epochs: 7 -> {base.pretext.epochs!r}",
    ]
