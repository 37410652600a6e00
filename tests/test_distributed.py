"""Data-parallel maths and runs on CPU with gloo: every loss and the sharded inference under
2 processes against one process on the whole batch, a 2-process `scan run` through torchrun, and a
rank killed mid-stage (the launch stops with one line, the same command resumes)."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scan.distributed import Collectives, Launch, launch_from_env, shard
from scan.losses import confidence_ce, multicrop_nt_xent, nt_xent, pseudo_label_ce, pseudo_labels, scan_loss
from scan.training.batches import infer
from scan.training.context import RunContext, Runtime

WORLD = 2
B, D, K = 6, 16, 5  # rows per rank, feature width, clusters


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fixed_inputs() -> dict[str, torch.Tensor]:
    """The same global batch of 2B rows on every process."""
    g = torch.Generator().manual_seed(0)
    weak = torch.randn(WORLD * B, K, generator=g) * 6  # sharp enough that some rows pass 0.9
    return {
        "z1": torch.nn.functional.normalize(torch.randn(WORLD * B, D, generator=g), dim=1),
        "z2": torch.nn.functional.normalize(torch.randn(WORLD * B, D, generator=g), dim=1),
        "small": torch.nn.functional.normalize(torch.randn(2, WORLD * B, D, generator=g), dim=2),
        "anchor": torch.randn(WORLD * B, K, generator=g),
        "neighbor": torch.randn(WORLD * B, K, generator=g),
        "weak": weak,
        "strong": torch.randn(WORLD * B, K, generator=g),
        "images": torch.randint(0, 256, (37, 1, 8, 8), dtype=torch.uint8, generator=g),
    }


def losses_and_grads(x: dict[str, torch.Tensor], rows: slice, comm: Collectives) -> dict[str, torch.Tensor]:
    """Each loss on `rows` of the global batch, and the gradients of its inputs (leaves)."""
    out = {}
    z1, z2 = x["z1"][rows].clone().requires_grad_(), x["z2"][rows].clone().requires_grad_()
    loss = nt_xent(z1, z2, 0.5, comm)
    loss.backward()
    out.update(nt_xent=loss.detach(), nt_xent_grad=torch.cat([z1.grad, z2.grad], 1))
    views = torch.cat([x["z1"][None], x["z2"][None], x["small"]])[:, rows].clone().requires_grad_()
    loss = multicrop_nt_xent(views, 0.5, comm)
    loss.backward()
    out.update(multicrop=loss.detach(), multicrop_grad=views.grad.transpose(0, 1).flatten(1))
    a, n = x["anchor"][rows].clone().requires_grad_(), x["neighbor"][rows].clone().requires_grad_()
    loss = scan_loss(a, n, 5.0, comm).total
    loss.backward()
    out.update(scan=loss.detach(), scan_grad=torch.cat([a.grad, n.grad], 1))
    strong = x["strong"][rows].clone().requires_grad_()
    labels = pseudo_labels(x["weak"][rows], 0.9, True, comm)
    loss = pseudo_label_ce(strong, labels, comm.world_size)
    loss.backward()
    out.update(selflabel=loss.detach(), selflabel_grad=strong.grad, confident=torch.tensor(labels.count))
    return out


def _worker(rank: int, port: int, results: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        comm = Collectives(rank, WORLD)
        x = fixed_inputs()
        out = losses_and_grads(x, slice(rank * B, (rank + 1) * B), comm)
        # What a data-parallel step reports (the mean over ranks) and uses (the gradient averaged
        # over ranks, as DistributedDataParallel does: each rank's gradient / WORLD).
        for name in ("nt_xent", "multicrop", "scan", "selflabel"):
            out[name] = comm.sum_(out[name].clone()) / WORLD
            out[f"{name}_grad"] = comm.gather(out[f"{name}_grad"]) / WORLD
        ctx = RunContext(Runtime(torch.device("cpu")), Launch(rank, WORLD, rank), comm)
        weights = torch.randn(8 * 8, 3, generator=torch.Generator().manual_seed(1))
        out["features"] = infer(lambda v: v.flatten(1) @ weights, x["images"], lambda u: u.float() / 255, 4,
                                torch.device("cpu"), ctx=ctx)
        out["alone"] = torch.tensor(ctx.main_alone(lambda alone: [alone.world_size, rank]))
        torch.save(out, results / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict[str, torch.Tensor]]:
    results = tmp_path_factory.mktemp("ranks")
    mp.start_processes(_worker, args=(free_port(), results), nprocs=WORLD, join=True, start_method="spawn")
    return [torch.load(results / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", ["nt_xent", "multicrop", "scan", "selflabel"])
def test_each_loss_on_two_ranks_equals_one_rank_on_twice_the_batch(two_ranks, name):
    one = losses_and_grads(fixed_inputs(), slice(None), Collectives())
    for rank in two_ranks:
        torch.testing.assert_close(rank[name], one[name], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rank[f"{name}_grad"], one[f"{name}_grad"], atol=1e-5, rtol=1e-5)


def test_selflabel_counts_confident_samples_over_the_global_batch(two_ranks):
    x = fixed_inputs()
    single = confidence_ce(x["weak"], x["strong"], 0.9, True)
    assert 0 < single.confident < WORLD * B  # the fixture has confident and unconfident rows
    assert [int(r["confident"]) for r in two_ranks] == [single.confident] * WORLD


def test_sharded_inference_is_gathered_back_in_dataset_order(two_ranks):
    x = fixed_inputs()
    weights = torch.randn(8 * 8, 3, generator=torch.Generator().manual_seed(1))
    expected = infer(lambda v: v.flatten(1) @ weights, x["images"], lambda u: u.float() / 255, 4, torch.device("cpu"))
    for rank in two_ranks:
        assert torch.equal(rank["features"], expected)  # the same rows, so the same neighbours


def test_work_for_rank_0_alone_runs_there_as_one_process_and_every_rank_gets_its_result(two_ranks):
    assert [r["alone"].tolist() for r in two_ranks] == [[1, 0]] * WORLD


def test_shards_cover_the_rows_once():
    assert [list(shard(5, r, 2)) for r in range(2)] == [[0, 1, 2], [3, 4]]
    assert sum(len(shard(37, r, 3)) for r in range(3)) == 37


def test_launch_is_read_from_torchrun_or_slurm():
    assert launch_from_env({}) == Launch()
    assert launch_from_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == Launch(3, 8, 1)
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "MASTER_ADDR": "node1"}
    assert launch_from_env(slurm) == Launch(5, 16, 1)
    assert launch_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == Launch()


# ---- whole runs under torchrun ------------------------------------------------------------------


def torchrun(out: Path, *overrides: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_port", str(port),
         "-m", "scan", "run", "--out", str(out), "--device", "cpu", *overrides],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_two_process_digits_run_writes_one_run_directory_and_reaches_accuracy(tmp_path):
    """The default preset (global batches as in one process), 2 ranks on CPU."""
    proc = torchrun(tmp_path / "run", port=free_port())
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # Single-process digits runs end between 0.875 and 0.975 over 20 seeds (README).
    assert metrics["cluster"]["acc"] >= 0.85
    assert metrics[metrics["final"]["step"]]["acc"] >= 0.85
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "2 processes" in log and log.count("pretext 1/") == 1  # one writer
    for stage in ("pretext", "cluster", "selflabel"):
        history = (tmp_path / "run" / stage / "history.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in history] == list(range(1, len(history) + 1))
    assert not list((tmp_path / "run").rglob("*.tmp"))


def test_multicrop_pretext_trains_on_two_ranks(tmp_path):
    """Multi-crop forwards the small crops in a second pass before one backward, which
    DistributedDataParallel must accept."""
    proc = torchrun(tmp_path / "run", "pretext.epochs=2", "pretext.local_crops=2", "data.local_size=4",
                    "cluster.epochs=1", "selflabel.epochs=1", port=free_port())
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output[-3000:]
    history = (tmp_path / "run" / "pretext" / "history.jsonl").read_text().splitlines()
    assert [math.isfinite(json.loads(line)["loss"]) for line in history] == [True, True]


def test_killing_one_rank_stops_the_launch_and_the_same_command_resumes(tmp_path):
    out = tmp_path / "run"
    args = ("pretext.epochs=40", "cluster.epochs=2", "selflabel.epochs=1", "selflabel.min_confident=0",
            "cluster.num_heads=2")
    port = free_port()
    proc = torchrun(out, *args, port=port)
    history = out / "pretext" / "history.jsonl"
    deadline = time.monotonic() + 300
    while not (history.is_file() and len(history.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "the run never reached pretext epoch 2"
        time.sleep(0.2)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == WORLD
    os.kill(int(workers[-1]), signal.SIGKILL)
    killed = time.monotonic()
    output, _ = proc.communicate(timeout=120)
    assert time.monotonic() - killed < 60
    assert proc.returncode != 0
    assert "run the same command again to resume" in output, output[-3000:]

    again = torchrun(out, *args, port=free_port())
    output, _ = again.communicate(timeout=900)
    assert again.returncode == 0, output[-3000:]
    assert "pretext: resuming after epoch" in (out / "log.txt").read_text()
    assert json.loads((out / "metrics.json").read_text())["cluster"]["acc"] > 0


def _context(rank: int, world: int = WORLD) -> RunContext:
    return RunContext(Runtime(torch.device("cpu")), Launch(rank, world, rank), Collectives(rank, world))


def test_the_shuffle_stream_is_shared_and_the_augmentation_stream_is_per_rank():
    draws = []
    for rank in range(WORLD):
        ctx = _context(rank)
        ctx.seed_stage(5)
        draws.append((torch.randperm(10, generator=ctx.shuffle), torch.rand(3)))
    assert torch.equal(draws[0][0], draws[1][0])
    assert not torch.equal(draws[0][1], draws[1][1])
    torch.manual_seed(5)
    assert torch.equal(draws[0][1], torch.rand(3))  # rank 0 draws as a single process does


def test_each_rank_takes_its_share_of_every_global_batch():
    from scan.training.batches import shuffled_batches

    def batches(rank: int, world: int) -> list[torch.Tensor]:
        ctx = _context(rank, world)
        ctx.shuffle.manual_seed(3)
        return list(shuffled_batches(ctx, 50, 8))

    single = batches(0, 1)
    ranks = [batches(r, WORLD) for r in range(WORLD)]
    assert len(single) == 6 and all(len(r) == 6 for r in ranks)
    for step, whole in enumerate(single):
        assert torch.equal(torch.cat([r[step] for r in ranks]), whole)
