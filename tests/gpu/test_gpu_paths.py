"""The CUDA paths give the CPU's numbers: the audit's torch statistics, CKA, the similarity suite,
the update geometry, the tracker with its reference on the device, and a bf16 forward pass.

Every test takes the ``gpu_device`` fixture: "cuda" (skipped without a CUDA device), or "cpu" under
``pytest --device cpu`` (then each test compares the CPU with itself: only the plumbing is proved;
``benchmarks/gpu_check.py --dry-run`` runs them so). ``make gpu-check`` runs them on the GPU.
"""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import PROSE, save_model

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def no_tf32():
    """fp32 products in full precision on the GPU (TF32 would move CKA by ~1e-3), whatever the
    environment set."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def on(t: torch.Tensor, device: str) -> torch.Tensor:
    out = t.to(device)
    assert out.device.type == torch.device(device).type
    return out


# -- the audit's torch path ---------------------------------------------------------------------------
def pair(dtype, n=300_000, seed=0):
    """A, B with every kind of element: unchanged, moved by a spread of relative sizes, exactly at a
    threshold, signed zeros, NaN and infinities."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g, dtype=torch.float64)
    rel = torch.logspace(-5, -0.5, n, dtype=torch.float64)[torch.randperm(n, generator=g)]
    b = a * (1 + rel * torch.sign(torch.randn(n, generator=g, dtype=torch.float64)))
    b[: n // 10] = a[: n // 10]
    a, b = a.to(dtype), b.to(dtype)
    a[10:20], b[10:20] = 1.0, 1.01  # |d| = 0.01 |a| in the stored dtype: at the threshold, not above
    a[20], b[20] = 0.0, -0.0
    a[21], b[21] = float("nan"), float("nan")
    a[22], b[22] = float("inf"), 1.0
    a[23], b[23] = 1.0, float("-inf")
    return a, b


COUNTS = ("numel", "n_equal", "n_same_dtype", "n_nonfinite", "n_changed")
SUMS = ("sum_sq_a", "sum_sq_b", "sum_ab", "sum_sq_diff")


def assert_same_stats(cpu, gpu):
    for k in COUNTS:
        assert getattr(gpu, k) == getattr(cpu, k), k  # counts: bit-identical
    for k in SUMS:
        assert getattr(gpu, k) == pytest.approx(getattr(cpu, k), rel=1e-12, abs=0), k
    assert gpu.max_abs_diff == cpu.max_abs_diff


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_update_stats_on_the_device_equal_the_cpu(gpu_device, monkeypatch, dtype):
    from prism_analysis.weights import update

    a, b = pair(dtype)
    on_gpu = update.UpdateStats().update(on(a, gpu_device), on(b, gpu_device))
    fused = update.UpdateStats(fused_min_numel=0).update(a, b)  # the fused CPU kernels where they take dtype
    monkeypatch.setattr(update, "USE_FUSED", False)
    torch_cpu = update.UpdateStats().update(a, b)
    assert_same_stats(torch_cpu, on_gpu)
    assert_same_stats(fused, on_gpu)
    assert 0 < on_gpu.n_equal < on_gpu.numel and on_gpu.n_nonfinite == 3
    # mixed dtypes are compared in the wider one on the device too
    # (the NaN pair is unchanged on both: across dtypes a NaN's payload is not compared; CUDA's
    # float16 -> float64 cast gives other NaN bits than the CPU's, found by the first GPU run)
    for wide in (b.double(), b.float()):
        if wide.dtype != a.dtype:
            mixed_cpu = update.UpdateStats().update(a, wide)
            mixed_gpu = update.UpdateStats().update(on(a, gpu_device), on(wide, gpu_device))
            assert_same_stats(mixed_cpu, mixed_gpu)
            assert mixed_gpu.n_nonfinite == 3
            monkeypatch.setattr(update, "USE_FUSED", True)  # the fused CPU kernel where it takes the pair
            assert_same_stats(update.UpdateStats(fused_min_numel=0).update(a, wide), mixed_gpu)
            monkeypatch.setattr(update, "USE_FUSED", False)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_ckpts")
    save_model(root / "a", "llama", seed=0)
    save_model(root / "b", "llama", seed=0, perturb=0.01)
    save_model(root / "b16", "llama", seed=0, perturb=0.01, dtype=torch.bfloat16)
    prompts = [f"{t} That was example {i}." for i, t in enumerate(PROSE)]
    return root, prompts


def test_audit_on_the_device_equals_the_cpu(checkpoints, gpu_device):
    """audit(..., device=cuda): the torch path on the GPU, every table equal to the CPU audit's
    (counts exactly, float64 sums to 1e-12 relative; the spectral columns to float64 SVD rounding)."""
    from prism_analysis.weights.audit import audit

    root, _ = checkpoints
    for b in ("b", "b16"):
        cpu = audit(root / "a", root / b, progress=False, device="cpu", spectral=True).tensors
        gpu = audit(root / "a", root / b, progress=False, device=gpu_device, spectral=True).tensors
        assert list(gpu.name) == list(cpu.name)
        exact = [c for c in cpu.columns if c.startswith("n_") or c in ("numel", "nonfinite", "max_abs_diff")]
        exact += [c for c in cpu.columns if cpu[c].dtype == object or str(cpu[c].dtype) in ("str", "string")]
        for c in exact:
            assert gpu[c].tolist() == cpu[c].tolist(), (b, c)
        for c in [*SUMS, "normalized_l2", "fraction_equal", *[c for c in cpu.columns if c.startswith("fraction_ch")]]:
            np.testing.assert_allclose(gpu[c].to_numpy(float), cpu[c].to_numpy(float), rtol=1e-12, err_msg=c)
        spectral = ["effective_rank", "stable_rank", "topk_energy", "principal_alignment", "fraction_visible_bf16"]
        for c in [s for s in spectral if s in cpu.columns]:
            np.testing.assert_allclose(gpu[c].to_numpy(float), cpu[c].to_numpy(float), rtol=1e-6, atol=1e-9, err_msg=c)


# -- CKA and the similarity suite --------------------------------------------------------------------
def activations(L=4, n=256, d=48, seed=0):
    """LLM-like layers: nonzero means, a few outlier channels, Y = X + noise."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(L, n, d, generator=g) + 3.0
    X[:, :, :2] *= 50
    Y = X + 0.5 * torch.randn(L, n, d, generator=g)
    return X, Y


def test_cka_on_the_device_equals_the_cpu(gpu_device):
    from prism_analysis.representations.cka import StreamingCKA, cka_matrix, layerwise_cka, linear_cka

    X, Y = activations()
    Xg, Yg = on(X, gpu_device), on(Y, gpu_device)
    for debiased in (False, True):
        # float64 throughout: the same numbers to rounding
        cpu = layerwise_cka(X, Y, debiased=debiased)
        gpu = layerwise_cka(Xg, Yg, debiased=debiased)
        assert gpu.device.type == torch.device(gpu_device).type and gpu.dtype == torch.float64
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-10, atol=1e-12)
        assert linear_cka(Xg[0], Yg[0], debiased=debiased) == pytest.approx(float(cpu[0]), rel=1e-10)
        # fp32 products accumulated in float64: agree to fp32 rounding
        mat_cpu, mat_gpu = cka_matrix(X, Y, debiased=debiased), cka_matrix(Xg, Yg, debiased=debiased)
        torch.testing.assert_close(mat_gpu.cpu(), mat_cpu, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.diagonal(mat_cpu), cpu, rtol=1e-5, atol=1e-6)
        # streamed in chunks: CPU chunks moved to the device by the accumulator, and device chunks
        s_cpu, s_gpu, s_moved = (StreamingCKA(debiased=debiased, device=dev) for dev in (None, None, gpu_device))
        for i in range(0, X.shape[1], 64):
            s_cpu.update(X[:, i : i + 64], Y[:, i : i + 64])
            s_gpu.update(Xg[:, i : i + 64], Yg[:, i : i + 64])
            s_moved.update(X[:, i : i + 64], Y[:, i : i + 64])
        for s in (s_gpu, s_moved):
            torch.testing.assert_close(s.compute().cpu(), s_cpu.compute(), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(s.compute().cpu(), cpu, rtol=1e-5, atol=1e-6)
        # a device accumulator merges into a CPU one (and back)
        half = StreamingCKA(debiased=debiased).update(X[:, :128], Y[:, :128])
        other = StreamingCKA(debiased=debiased).update(Xg[:, 128:], Yg[:, 128:])
        torch.testing.assert_close(half.merge(other).compute().cpu(), cpu, rtol=1e-5, atol=1e-6)


def test_similarity_measures_on_the_device_equal_the_cpu(gpu_device):
    from prism_analysis.representations.similarity import MEASURES, measure, permutation_null

    X, Y = activations(L=1, n=120, d=40, seed=1)
    X, Y = X[0].double(), Y[0].double()
    perms = [torch.randperm(120, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    for name in MEASURES:
        params = {"k": 10} if name in ("mutual_knn", "cknna") else {}
        cpu = measure(name, X, Y, **params)
        gpu = measure(name, on(X, gpu_device), on(Y, gpu_device), **params)
        assert isinstance(gpu, float) and math.isfinite(gpu), name
        assert gpu == pytest.approx(cpu, rel=1e-9, abs=1e-9), name
        obs, null = permutation_null(name, on(X, gpu_device), on(Y, gpu_device), perms, **params)
        obs_cpu, null_cpu = permutation_null(name, X, Y, perms, **params)
        assert obs == pytest.approx(obs_cpu, rel=1e-9, abs=1e-9), name
        np.testing.assert_allclose(null, null_cpu, rtol=1e-9, atol=1e-9, err_msg=name)
    # fp32 activations on the device are taken in float64 there
    assert measure("cka", on(X.float(), gpu_device), on(Y.float(), gpu_device)) == pytest.approx(
        measure("cka", X.float(), Y.float()), rel=1e-9
    )


# -- the update geometry -------------------------------------------------------------------------------
def test_update_geometry_on_the_device(gpu_device):
    from prism_analysis.weights.spectral import update_geometry

    g = torch.Generator().manual_seed(3)
    A = torch.randn(96, 64, generator=g) * torch.logspace(0, -2, 64)  # decaying columns: a clear spectrum
    low = torch.randn(96, 2, generator=g) @ torch.randn(2, 64, generator=g)
    B = A + 0.05 * low + 1e-4 * torch.randn(96, 64, generator=g)
    for dtype in (torch.float32, torch.bfloat16):
        a, b = A.to(dtype), B.to(dtype)
        cpu = update_geometry(a, b, k=4, method="full")
        gpu = update_geometry(on(a, gpu_device), on(b, gpu_device), k=4, method="full")
        for c, v in cpu.items():
            if isinstance(v, float) and math.isfinite(v):
                assert gpu[c] == pytest.approx(v, rel=1e-6, abs=1e-8), (dtype, c)
        assert gpu["effective_rank"] < 10  # the update is (nearly) rank 2


# -- live tracking with the reference on the device -------------------------------------------------------
def test_tracker_reference_on_the_device_equals_the_cpu(gpu_device):
    """The same weights at every step (set from CPU values): the tracker on the device, with its
    reference there, gives the CPU tracker's table."""
    from prism_analysis.tiny import build_model
    from prism_analysis.tracking.tracker import UpdateTracker

    base = build_model("llama", seed=0, hidden_size=32, num_layers=2)
    g = torch.Generator().manual_seed(0)
    states, state = [], {k: v.detach().clone() for k, v in base.named_parameters()}
    for _ in range(6):
        state = {k: v + 1e-2 * v.abs().mean() * torch.randn(v.shape, generator=g) for k, v in state.items()}
        states.append(state)

    def tracked(device, reference):
        model = build_model("llama", seed=0, hidden_size=32, num_layers=2).to(device)
        tracker = UpdateTracker(model, every=2, out=None, reference=reference, k_steps=(1,))
        params = dict(model.named_parameters())
        assert all(p.device.type == torch.device(device).type for p in params.values())
        for step, s in enumerate(states, 1):
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(s[k])
            tracker.step(step)
        return tracker.finish().table

    cpu = tracked("cpu", "cpu")
    for reference in ("device", "cpu"):
        gpu = tracked(gpu_device, reference)
        pd.testing.assert_frame_equal(gpu, cpu, check_exact=False, rtol=1e-12, atol=1e-15)
    assert sorted(cpu.step.unique()) == [0, 2, 4, 6]


# -- bf16 forward passes ------------------------------------------------------------------------------------
def test_bf16_forward_keeps_the_activations(checkpoints, gpu_device):
    """Activations under bf16 autocast and of a bf16-loaded model: float32 on the device, finite, and
    layer by layer the fp32 ones to bf16 rounding (CKA with them > 0.99)."""
    from prism_analysis.representations.activations import collect_activations
    from prism_analysis.representations.cka import layerwise_cka
    from prism_analysis.representations.model_loader import load_model

    root, prompts = checkpoints
    texts = prompts[:16]
    model, tok = load_model(root / "a", device=gpu_device, progress=False)
    ref = collect_activations(model, tok, texts, batch_size=4)
    with torch.autocast(device_type=torch.device(gpu_device).type, dtype=torch.bfloat16):
        auto = collect_activations(model, tok, texts, batch_size=4)
    model16, tok16 = load_model(root / "a", device=gpu_device, dtype="bfloat16", progress=False)
    assert next(model16.parameters()).dtype == torch.bfloat16
    half = collect_activations(model16, tok16, texts, batch_size=4)
    for acts in (auto, half):
        assert acts.shape == ref.shape and acts.dtype == torch.float32
        assert acts.device.type == torch.device(gpu_device).type and bool(torch.isfinite(acts).all())
        assert bool((layerwise_cka(ref, acts) > 0.99).all())


def test_model_cka_in_bf16_on_the_device(checkpoints, gpu_device):
    """`prism cka --device cuda --dtype bfloat16` gives the fp32 CPU numbers to bf16 rounding."""
    from prism_analysis.representations.model_cka import model_cka

    root, prompts = checkpoints
    probes = {"p": prompts[:12]}
    cpu = model_cka(root / "a", root / "b", probes, bootstrap=3, progress=False, device="cpu")
    gpu = model_cka(
        root / "a", root / "b", probes, bootstrap=3, progress=False, device=gpu_device, dtype="bfloat16", batch_size=4
    )
    assert len(gpu.layers) == len(cpu.layers)
    np.testing.assert_allclose(gpu.layers["cka"].to_numpy(float), cpu.layers["cka"].to_numpy(float), atol=0.02)
    tokens = model_cka(
        root / "a", root / "b16", probes, pool="tokens", progress=False, device=gpu_device, dtype="bfloat16"
    )
    assert bool(np.isfinite(tokens.layers["cka"].to_numpy(float)).all())
