"""Every fast path against its plain reference: the faiss backend against the torch top-k, and
bf16 autocast, channels-last and torch.compile against fp32 on a fixed batch."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import scan
from scan.checkpoint import RunDir
from scan.config import RuntimeConfig, build_config
from scan.errors import ScanError
from scan.knn import _blocked_topk, faiss_available, knn
from scan.losses import nt_xent, scan_loss
from scan.models.backbones import build_backbone
from scan.models.heads import ClusteringModel, ContrastiveModel
from scan.pipeline import commit_config, open_run
from scan.training.context import Runtime
from test_knn import brute_force

CPU = torch.device("cpu")
needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss is not installed (pip install faiss-cpu)")


def _runtime(**kwargs) -> Runtime:
    return Runtime.from_config(RuntimeConfig(**kwargs), CPU)


# ---- the blocked top-k of the torch backend (tests/test_knn.py covers the plain path) ----------


def _assert_exact_up_to_near_ties(idx, sim, feats, queries=None, k=20):
    """Values equal the float64 brute force; every index has the similarity returned for it; rows
    whose indices differ from the brute force do so only among values within fp32 rounding."""
    expected_idx, expected_sim = brute_force(feats, k, queries)
    np.testing.assert_allclose(sim.numpy(), expected_sim, atol=1e-5)
    db = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    q = db if queries is None else queries / np.linalg.norm(queries, axis=1, keepdims=True)
    np.testing.assert_allclose(np.einsum("md,mkd->mk", q, db[idx.numpy()]), sim.numpy(), atol=1e-5)
    assert (idx.numpy() == expected_idx).mean() > 0.999
    if queries is None:
        assert not (idx == torch.arange(len(feats))[:, None]).any()


@pytest.mark.parametrize("n, chunk", [(3000, 512), (3001, 97), (4000, 10_000)])
def test_blocked_knn_equalsbrute_force(n, chunk):
    feats = np.random.default_rng(n).normal(size=(n, 16))
    idx, sim = knn(torch.tensor(feats, dtype=torch.float32), k=20, chunk=chunk)
    _assert_exact_up_to_near_ties(idx, sim, feats)
    queries = np.random.default_rng(1).normal(size=(40, 16))
    idx, sim = knn(torch.tensor(feats, dtype=torch.float32), k=20, queries=torch.tensor(queries, dtype=torch.float32))
    _assert_exact_up_to_near_ties(idx, sim, feats, queries)


def test_blocked_knn_with_many_exact_duplicates_keeps_the_values():
    feats = np.random.default_rng(0).normal(size=(2600, 4))
    feats[100:160] = feats[5]  # 61 copies of one direction: more equal neighbours than k
    _, expected_sim = brute_force(feats, k=20)
    idx, sim = knn(torch.tensor(feats, dtype=torch.float32), k=20)
    np.testing.assert_allclose(sim.numpy(), expected_sim, atol=1e-5)
    assert not (idx == torch.arange(2600)[:, None]).any()
    assert set(idx[5].tolist()) <= set(range(100, 160))
    assert len(set(idx[5].tolist())) == 20


@pytest.mark.parametrize("cols", [64 * 9, 64 * 9 + 17])
def test_blocked_topk_equals_topk_with_minus_infinity_and_a_partial_block(cols):
    sim = torch.randn(33, cols, generator=torch.Generator().manual_seed(0))
    sim[:, 500:560] = float("-inf")
    sim[3, :200] = float("-inf")
    sim[5, -3:] = 10.0 + torch.arange(3.0)  # the best three in the partial last block
    values, idx = _blocked_topk(sim, 7, 64)
    ref = sim.topk(7, dim=1)
    assert torch.equal(values, ref.values) and torch.equal(idx, ref.indices)


# ---- mining backends ----------------------------------------------------------------------------


@needs_faiss
@pytest.mark.parametrize("n, d", [(300, 16), (6000, 32)])
def test_faiss_backend_equals_torch_backend(n, d):
    """Both are exact fp32 searches; their sums run in different orders, so neighbours whose
    similarities agree to fp32 rounding may swap places (and nothing else)."""
    feats = torch.randn(n, d, generator=torch.Generator().manual_seed(n))
    idx_t, sim_t = knn(feats, k=20, backend="torch")
    idx_f, sim_f = knn(feats, k=20, backend="faiss")
    assert idx_f.dtype == torch.int64 and sim_f.dtype == torch.float32 and idx_f.shape == (n, 20)
    torch.testing.assert_close(sim_f, sim_t, atol=1e-5, rtol=0)
    assert (idx_f == idx_t).float().mean().item() > 0.999
    assert not (idx_f == torch.arange(n)[:, None]).any()
    db = torch.nn.functional.normalize(feats, dim=1)
    torch.testing.assert_close(torch.einsum("nd,nkd->nk", db, db[idx_f]), sim_f, atol=1e-5, rtol=0)


@needs_faiss
def test_faiss_backend_excludes_self_but_keeps_duplicates_and_takes_queries():
    feats = torch.randn(50, 8, generator=torch.Generator().manual_seed(1))
    feats[9] = feats[4]
    idx, sim = knn(feats, k=5, backend="faiss")
    assert not (idx == torch.arange(50)[:, None]).any()
    assert idx[4, 0].item() == 9 and idx[9, 0].item() == 4
    assert sim[4, 0].item() == pytest.approx(1.0, abs=1e-5)
    queries = feats[[0, 1, 2, 3, 5, 6, 7]] * 2.5  # database rows themselves: found, not excluded
    idx_q, _ = knn(feats, k=5, queries=queries, backend="faiss")
    ref_q, _ = knn(feats, k=5, queries=queries, backend="torch")
    assert torch.equal(idx_q, ref_q)
    assert idx_q[:, 0].tolist() == [0, 1, 2, 3, 5, 6, 7]


def test_missing_faiss_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(ScanError, match="pip install faiss-cpu"):
        knn(torch.randn(10, 4), k=3, backend="faiss")
    with pytest.raises(ScanError, match="mine.backend=faiss needs faiss"):
        build_config(overrides=["mine.backend=faiss"])
    with pytest.raises(ValueError, match="unknown knn backend"):
        knn(torch.randn(10, 4), k=3, backend="annoy")


def test_runtime_config_values_and_errors():
    cfg = build_config(overrides=["runtime.precision=bf16", "runtime.channels_last=false", "runtime.compile=true"])
    assert (cfg.runtime.precision, cfg.runtime.channels_last, cfg.runtime.compile) == ("bf16", False, True)
    assert build_config().runtime == RuntimeConfig()  # auto, auto, no compile
    for bad, message in [
        ("runtime.precision=fp16", "runtime.precision must be one of auto, fp32, bf16; got 'fp16'"),
        ("runtime.channels_last=sometimes", "runtime.channels_last must be one of auto, true, false; got 'sometimes'"),
        ("runtime.compile=2", "runtime.compile must be true or false, got 2"),
        ("mine.backend=annoy", "mine.backend must be one of torch, faiss; got 'annoy'"),
    ]:
        with pytest.raises(ScanError) as err:
            build_config(overrides=[bad])
        assert str(err.value) == message


@pytest.mark.parametrize("capabilities, fast", [
    ({"avx2": True, "avx512_f": True}, False),          # AVX-512 without bf16: fp32
    ({"avx2": True}, False),
    ({"avx512_bf16": True}, True),
    ({"amx_bf16": True, "amx_tile": True}, True),
    ({"avx512_bf16": False, "amx_bf16": False}, False),
])
def test_runtime_auto_on_cpu_is_bf16_channels_last_only_with_native_bf16(monkeypatch, capabilities, fast):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    rt = _runtime()
    assert (rt.bf16, rt.channels_last, rt.compile) == (fast, fast, False)
    assert rt.describe() == ("bf16 autocast, channels-last" if fast else "fp32")
    # Explicit settings win over what the CPU has.
    rt = _runtime(precision="bf16", channels_last=True)
    assert (rt.bf16, rt.channels_last) == (True, True)
    rt = _runtime(precision="fp32", channels_last=False)
    assert (rt.bf16, rt.channels_last) == (False, False)
    assert rt.describe() == "fp32"


def test_native_bf16_feature_is_read_from_torch():
    from scan.training.context import native_bf16_cpu_feature
    caps = torch.cpu.get_capabilities()
    expected = "amx_bf16" if caps.get("amx_bf16") else "avx512_bf16" if caps.get("avx512_bf16") else None
    assert native_bf16_cpu_feature() == expected


def test_runtime_keys_change_no_fingerprint_and_need_no_force(tmp_path):
    from scan.config import fingerprint

    base = build_config(device="cpu")
    fast = build_config(device="cpu", overrides=["runtime.precision=bf16", "runtime.channels_last=true"])
    for stage in ("pretext", "mine", "cluster", "selflabel"):
        assert fingerprint(fast, stage) == fingerprint(base, stage)
    run = open_run(base, tmp_path / "run", force=False)
    commit_config(run, base)
    assert isinstance(open_run(fast, tmp_path / "run", force=False), RunDir)  # no --force needed


# ---- precision, memory format and compile against fp32 --------------------------------------------


def _fixed_batch(size: int, n: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(size))


def _pretext_loss_and_grads(model: ContrastiveModel, rt: Runtime, x: torch.Tensor):
    model = copy.deepcopy(model)
    z = rt.forward(rt.prepare(model), x)
    assert z.dtype == torch.float32
    loss = nt_xent(z[: len(x) // 2], z[len(x) // 2:], 0.5)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    return loss.detach(), grads, model


@pytest.mark.parametrize("backbone, size", [("small_cnn", 8), ("resnet18_cifar", 8)])
def test_channels_last_gives_the_fp32_loss_and_gradients(backbone, size):
    torch.manual_seed(0)
    model = ContrastiveModel(build_backbone(backbone, 3), 128).train()
    x = _fixed_batch(size)
    ref_loss, ref_grads, _ = _pretext_loss_and_grads(model, _runtime(precision="fp32", channels_last=False), x)
    loss, grads, converted = _pretext_loss_and_grads(model, _runtime(precision="fp32", channels_last=True), x)
    assert loss.item() == pytest.approx(ref_loss.item(), abs=1e-5)
    torch.testing.assert_close(grads, ref_grads, atol=1e-4, rtol=1e-3)
    # The converted model's state dict has the same keys and values, and saves as plain tensors.
    state = converted.state_dict()
    assert state.keys() == model.state_dict().keys()
    conv = next(v for v in state.values() if v.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backbone, size", [("small_cnn", 8), ("resnet18_cifar", 8)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_autocast_gives_the_fp32_loss_within_tolerance(backbone, size, channels_last):
    torch.manual_seed(0)
    model = ContrastiveModel(build_backbone(backbone, 3), 128).train()
    x = _fixed_batch(size)
    ref_loss, ref_grads, _ = _pretext_loss_and_grads(model, _runtime(precision="fp32"), x)
    loss, grads, _ = _pretext_loss_and_grads(model, _runtime(precision="bf16", channels_last=channels_last), x)
    assert loss.item() == pytest.approx(ref_loss.item(), abs=1e-2)
    cosine = torch.nn.functional.cosine_similarity(grads, ref_grads, dim=0).item()
    assert cosine > 0.9  # bf16 keeps 8 mantissa bits: gradients agree in direction, not digits


def test_bf16_autocast_gives_the_fp32_scan_loss_within_tolerance():
    torch.manual_seed(0)
    model = ClusteringModel(build_backbone("small_cnn", 3), num_clusters=10, num_heads=2).train()
    x = _fixed_batch(8, n=32)

    def loss_of(rt: Runtime) -> float:
        logits = rt.forward(rt.prepare(copy.deepcopy(model)), x)
        return sum(scan_loss(h[:16], h[16:], 5.0).total for h in logits).item()

    assert loss_of(_runtime(precision="bf16", channels_last=True)) == pytest.approx(
        loss_of(_runtime(precision="fp32")), abs=2e-2)


COMPILE_SCRIPT = textwrap.dedent("""
    import torch
    from scan.config import RuntimeConfig
    from scan.losses import nt_xent
    from scan.models.backbones import build_backbone
    from scan.models.heads import ContrastiveModel
    from scan.training.context import Runtime
    import copy
    torch.manual_seed(0)
    model = ContrastiveModel(build_backbone("small_cnn", 3), 32).train()
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    losses = []
    for compile in (False, True):
        m = copy.deepcopy(model)
        rt = Runtime.from_config(RuntimeConfig(precision="fp32", channels_last=False, compile=compile),
                                 torch.device("cpu"))
        z = rt.forward(rt.prepare(m), x)
        loss = nt_xent(z[:4], z[4:], 0.5)
        loss.backward()
        losses.append(loss.item())
    print(losses[0], losses[1])
""")


def test_torch_compile_gives_the_eager_loss():
    """Run in a subprocess so a slow or missing compiler can be skipped instead of hanging the suite
    (torch.compile needs a C++ compiler on CPU; more than 60 s counts as unavailable here)."""
    try:
        done = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.skip("torch.compile took more than 60 s on this CPU")
    if done.returncode != 0:
        pytest.skip(f"torch.compile is unavailable here: {done.stderr.strip().splitlines()[-1:]}")
    eager, compiled = map(float, done.stdout.split())
    assert compiled == pytest.approx(eager, abs=1e-4)


# ---- the stages with the fast paths switched on ----------------------------------------------------


def test_tiny_run_with_bf16_channels_last_and_faiss(tmp_path):
    overrides = ["pretext.epochs=2", "cluster.epochs=2", "selflabel.epochs=1", "selflabel.min_confident=0", "selflabel.max_balance_drop=1", "selflabel.max_agreement_drop=1", "cluster.num_heads=2", "device=cpu",
                 "runtime.precision=bf16", "runtime.channels_last=true"]
    if faiss_available():
        overrides.append("mine.backend=faiss")
    scan.run("digits", out=tmp_path / "run", overrides=overrides)
    metrics = (tmp_path / "run" / "metrics.json").read_text()
    assert '"selflabel"' in metrics
    neighbors = np.load(tmp_path / "run" / "mine" / "neighbors.npy")
    assert neighbors.dtype == np.int64 and not (neighbors == np.arange(len(neighbors))[:, None]).any()
