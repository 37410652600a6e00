"""End-to-end runs on the embedded digits data: accuracy, the run-dir contract, resume and
determinism, stage-by-stage use, and the non-finite-loss guard."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import scan.stages.pretext
import scan.training.context
from scan.checkpoint import RunDir, load_torch
from scan.cli import main
from scan.config import build_config
from scan.errors import ScanError
from scan.knn import knn
from scan.pipeline import run_pipeline
from scan.training.loop import TrainState
from scan.whitening import power_whiten

# A few epochs of each stage: seconds per run, enough to exercise every code path.
SHORT = ["pretext.epochs=4", "cluster.epochs=3", "selflabel.epochs=2", "selflabel.min_confident=0", "selflabel.max_balance_drop=1", "selflabel.max_agreement_drop=1", "cluster.num_heads=2", "device=cpu"]


def without_timings(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "seconds"}


def test_default_digits_run_reaches_accuracy_and_writes_the_run_dir(tmp_path):
    """The default preset, seed 0, as `scan run` runs it (2-4 minutes on 2 cores)."""
    cfg = build_config("digits", device="cpu", seed=0)
    metrics = run_pipeline(cfg, out=tmp_path)
    assert metrics["selflabel"]["acc"] >= 0.85
    assert metrics["cluster"]["acc"] >= 0.80
    assert 0 <= metrics["cluster"]["head"] < cfg.cluster.num_heads
    assert metrics["mine"]["neighbor_accuracy"] > 0.85
    assert set(metrics["seconds"]) == {"pretext", "mine", "cluster", "selflabel"}

    run = RunDir(tmp_path)
    assert json.loads(run.metrics.read_text()) == metrics
    features = np.load(tmp_path / "mine" / "features.npy")
    neighbors = np.load(tmp_path / "mine" / "neighbors.npy")
    assert features.dtype == np.float16 and features.shape[0] == 1437
    assert neighbors.dtype == np.int64 and neighbors.shape == (1437, cfg.mine.k)
    assert not (neighbors == np.arange(1437)[:, None]).any()
    assert np.load(tmp_path / "mine" / "val_neighbors.npy").shape == (1437, cfg.mine.val_k)
    for stage, epochs in (("pretext", cfg.pretext.epochs), ("cluster", cfg.cluster.epochs), ("selflabel", cfg.selflabel.epochs)):
        assert len((tmp_path / stage / "history.jsonl").read_text().splitlines()) == epochs
        assert (tmp_path / stage / "checkpoint.pt").is_file()
    for path in ("pretext/backbone.safetensors", "cluster/model.safetensors", "selflabel/model.safetensors", "config.yaml", "log.txt"):
        assert (tmp_path / path).is_file(), path
    assert "test metrics" in (tmp_path / "log.txt").read_text()


def interrupt_after_saves(monkeypatch, count: int) -> None:
    """Make the `count`-th epoch checkpoint the last thing that happens before a Ctrl-C."""
    original = TrainState.save
    calls = {"n": 0}

    def save(self, ctx):
        original(self, ctx)
        calls["n"] += 1
        if calls["n"] == count:
            raise KeyboardInterrupt

    monkeypatch.setattr(TrainState, "save", save)


@pytest.mark.parametrize("interrupt_at", [2, 6])  # inside pretext (epoch 2/4), inside cluster (epoch 2/3)
def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch, interrupt_at):
    cfg = build_config("digits", overrides=SHORT)
    reference = run_pipeline(cfg, out=tmp_path / "a")
    again = run_pipeline(build_config("digits", overrides=SHORT), out=tmp_path / "b")
    assert without_timings(again) == without_timings(reference)  # same seed, same metrics

    with monkeypatch.context() as m:
        interrupt_after_saves(m, interrupt_at)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(cfg, out=tmp_path / "c")
    resumed = run_pipeline(cfg, out=tmp_path / "c")
    assert without_timings(resumed) == without_timings(reference)
    assert "resuming after epoch" in (tmp_path / "c" / "log.txt").read_text()


def test_stages_one_at_a_time_and_changed_config(tmp_path, capsys):
    out = str(tmp_path)
    assert main(["cluster", "--out", out, *SHORT]) == 1
    assert "needs the finished mine stage" in capsys.readouterr().err
    for stage in ("pretext", "mine", "cluster", "selflabel"):
        assert main([stage, "--out", out, *SHORT]) == 0
    assert main(["evaluate", out]) == 0
    assert "selflabel" in json.loads((tmp_path / "metrics.json").read_text())

    capsys.readouterr()
    assert main(["run", "--out", out, *SHORT, "cluster.entropy_weight=4"]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["run", "--out", out, *SHORT, "cluster.entropy_weight=4", "--force"]) == 0
    printed = capsys.readouterr().out
    assert "pretext: finished earlier with this config, skipped" in printed
    assert "mine: finished earlier with this config, skipped" in printed
    assert "cluster 1/3 " in printed and "selflabel 1/2 " in printed


def test_whitened_mining_searches_the_whitened_train_and_test_features(tmp_path, capsys):
    """mine.whitening=0.5 with selection on the test split: train neighbours from the whitened
    train features, test neighbours from the test features mapped with the train statistics."""
    out, args = str(tmp_path), [*SHORT, "cluster.select_on=test", "mine.val_k=5", "mine.whitening=0.5"]
    assert main(["pretext", "--out", out, *args]) == 0
    assert main(["mine", "--out", out, *args]) == 0
    assert "whitened with power 0.5" in capsys.readouterr().out
    mine = tmp_path / "mine"
    train, test = (torch.from_numpy(np.load(mine / f"{name}.npy").astype(np.float32)) for name in ("features", "test_features"))
    white_train, white_test = power_whiten(train, 0.5, test)
    np.testing.assert_array_equal(np.load(mine / "neighbors.npy"), knn(white_train, 20)[0].numpy())
    np.testing.assert_array_equal(np.load(mine / "val_neighbors.npy"), knn(white_test, 5)[0].numpy())
    assert not np.array_equal(np.load(mine / "neighbors.npy"), knn(train, 20)[0].numpy())


@pytest.fixture
def forwarded_shapes(monkeypatch) -> list[tuple[int, ...]]:
    """The shapes of the batches the stages forward through their networks, in order."""
    shapes = []
    real_forward = scan.training.context.Runtime.forward

    def recording_forward(self, net, x):
        shapes.append(tuple(x.shape))
        return real_forward(self, net, x)

    monkeypatch.setattr(scan.training.context.Runtime, "forward", recording_forward)
    return shapes


def test_multicrop_pretext_forwards_small_crops_and_contrasts_all_views(tmp_path, monkeypatch, forwarded_shapes):
    """pretext.local_crops=3 at data.local_size=4 on 8×8 digits: each step forwards the two full
    views in one batch and the three small crops (4×4) in another, and the loss sees 5 views."""
    views = []
    real_loss = scan.stages.pretext.multicrop_nt_xent

    def recording_loss(z, *args):
        views.append(tuple(z.shape))
        return real_loss(z, *args)

    monkeypatch.setattr(scan.stages.pretext, "multicrop_nt_xent", recording_loss)
    args = ["pretext.epochs=1", "pretext.batch_size=256", "pretext.local_crops=3", "data.local_size=4", "device=cpu"]
    assert main(["pretext", "--out", str(tmp_path), *args]) == 0
    steps = 1437 // 256
    assert forwarded_shapes == [(512, 1, 8, 8), (768, 1, 4, 4)] * steps
    assert views == [(5, 256, 128)] * steps


def test_smaller_simclr_views_train_and_mining_embeds_whole_images(tmp_path, forwarded_shapes):
    """data.simclr_size_ratio=0.75 on 8×8 digits: SimCLR forwards 6×6 views, the mine stage the 8×8 images."""
    args = ["pretext.epochs=1", "pretext.batch_size=256", "data.simclr_size_ratio=0.75", "mine.batch_size=1000", "device=cpu"]
    assert main(["pretext", "--out", str(tmp_path), *args]) == 0
    assert forwarded_shapes == [(512, 1, 6, 6)] * (1437 // 256)
    forwarded_shapes.clear()
    assert main(["mine", "--out", str(tmp_path), *args]) == 0
    assert forwarded_shapes == [(1000, 1, 8, 8), (437, 1, 8, 8)]


def test_non_finite_loss_stops_the_stage_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    real = scan.stages.pretext.multicrop_nt_xent
    steps = {"n": 0}
    steps_per_epoch = 1437 // 256

    def nan_in_second_epoch(*args):
        steps["n"] += 1
        loss = real(*args)
        return loss * float("nan") if steps["n"] > steps_per_epoch else loss

    monkeypatch.setattr(scan.stages.pretext, "multicrop_nt_xent", nan_in_second_epoch)
    with pytest.raises(ScanError, match="pretext: non-finite loss .* epoch 2"):
        run_pipeline(build_config("digits", overrides=SHORT), out=tmp_path)
    assert load_torch(tmp_path / "pretext" / "checkpoint.pt")["epoch"] == 1
    assert not (tmp_path / "pretext" / "done.json").exists()


def test_python_api_runs_the_pipeline(tmp_path):
    import scan

    metrics = scan.run("digits", seed=3, out=tmp_path, overrides=SHORT)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert (tmp_path / "config.yaml").read_text().count("seed: 3") == 1


@pytest.mark.parametrize("features", ["backbone", "projection"])
def test_head_only_clustering_keeps_the_backbone_frozen(tmp_path, features):
    from scan.checkpoint import load_weights

    cfg = build_config("digits", overrides=[*SHORT, "cluster.update_head_only=true", f"mine.features={features}"])
    metrics = run_pipeline(cfg, out=tmp_path)
    pretext = load_weights(tmp_path / "pretext" / "backbone.safetensors")
    clustered = load_weights(tmp_path / "cluster" / "model.safetensors")
    for key, value in pretext.items():
        assert (clustered[f"backbone.{key}"] == value).all(), key
    assert metrics["cluster"]["acc"] > 0.3


@pytest.mark.parametrize("warm_start", [0, 4])
def test_cluster_restarts_keep_the_lowest_validation_loss_and_resume_across_a_restart(tmp_path, monkeypatch, warm_start):
    restarts = [*SHORT, "cluster.restarts=2", f"cluster.warm_start_heads={warm_start}"]
    reference = run_pipeline(build_config("digits", overrides=restarts), out=tmp_path / "a")
    warm_lines = (tmp_path / "a" / "log.txt").read_text().count("cluster: 2 of 4 heads trained on cached features start the step")
    assert warm_lines == (2 if warm_start else 0)  # one warm start per restart
    history = [json.loads(line) for line in (tmp_path / "a" / "cluster" / "history.jsonl").read_text().splitlines()]
    assert [r["restart"] for r in history] == [1, 1, 1, 2, 2, 2]
    best = min(history, key=lambda r: min(r["val_loss"]))
    summary = json.loads((tmp_path / "a" / "cluster" / "done.json").read_text())["summary"]
    assert summary["best_loss"] == min(best["val_loss"]) and summary["best_restart"] == best["restart"]
    assert summary["best_epoch"] == (best["epoch"] - 1) % 3 + 1
    assert "restart 2/2 " in (tmp_path / "a" / "log.txt").read_text()
    # the second restart starts again from the pretext weights, not from the first one's
    assert history[3]["loss"] > history[2]["loss"]

    with monkeypatch.context() as m:
        interrupt_after_saves(m, 4 + 3)  # after pretext and the first restart's last epoch
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(build_config("digits", overrides=restarts), out=tmp_path / "b")
    resumed = run_pipeline(build_config("digits", overrides=restarts), out=tmp_path / "b")
    assert without_timings(resumed) == without_timings(reference)


def test_the_scan_step_starts_from_the_warm_heads(tmp_path, monkeypatch):
    """With a learning rate too small to move them, the exported head is the warm head given."""
    import torch

    import scan.stages.cluster
    from scan.checkpoint import load_weights
    from scan.stages.warm_start import WarmHead

    def planted(features, neighbors, num_clusters, candidates, keep, *losses):
        return [WarmHead(torch.full((num_clusters, features.shape[1]), 0.01 * (h + 1)), torch.arange(num_clusters) * (h + 1.0), 0.0)
                for h in range(keep)]

    monkeypatch.setattr(scan.stages.cluster, "warm_heads", planted)
    metrics = run_pipeline(build_config("digits", overrides=[*SHORT, "cluster.lr=1e-12", "selflabel.epochs=0"]), out=tmp_path)
    head = metrics["cluster"]["head"]
    exported = load_weights(tmp_path / "cluster" / "model.safetensors")
    assert torch.allclose(exported["cluster_heads.heads.0.weight"], torch.full((10, 128), 0.01 * (head + 1)), atol=1e-6)
    assert torch.allclose(exported["cluster_heads.heads.0.bias"], torch.arange(10) * (head + 1.0), atol=1e-6)


def test_a_checkpoint_with_the_wrong_contents_is_a_one_line_error(tmp_path):
    import torch

    from scan.checkpoint import save_torch
    from scan.training.context import RunContext, Runtime

    run = RunDir(tmp_path)
    model = torch.nn.Linear(2, 2)
    state = TrainState(run, "pretext", "abc", {}, {"model": model})
    save_torch({"fingerprint": "abc", "model": {"weight": torch.zeros(3, 3)}}, run.checkpoint("pretext"))
    with pytest.raises(ScanError, match="checkpoint.pt is damaged"):
        state.restore(RunContext(Runtime(torch.device("cpu"))))
