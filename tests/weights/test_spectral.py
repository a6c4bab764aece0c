"""Update geometry (prism_analysis.weights.spectral, `prism audit --spectral`) against planted answers and
independent references: scipy.linalg.subspace_angles, numpy's SVD, an element-by-element bf16
rounding written here."""

import json
import math
import struct

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import model_state, save_state
from hypothesis import example, given, settings
from hypothesis import strategies as st

from prism_analysis.weights.audit import spectral_summary
from prism_analysis.weights.spectral import (
    COLUMNS,
    SpectralStats,
    effective_rank,
    fraction_visible_bf16,
    principal_angles,
    randomized_svd,
    update_geometry,
)
from prism_cli import main

scipy_linalg = pytest.importorskip("scipy.linalg")


def orthonormal(rng, m, k):
    return np.linalg.qr(rng.standard_normal((m, k)))[0]


def t64(x):
    return torch.from_numpy(np.ascontiguousarray(x))


@pytest.mark.parametrize("r", [1, 3, 7])
def test_planted_rank_r_update_with_equal_singular_values_has_effective_rank_r(r):
    rng = np.random.default_rng(r)
    m, n = 40, 30
    U, V = orthonormal(rng, m, r), orthonormal(rng, n, r)
    A = rng.standard_normal((m, n))
    B = A + 0.5 * U @ V.T  # every nonzero singular value of the update is 0.5
    g = update_geometry(t64(A), t64(B), k=4)
    assert g["effective_rank"] == pytest.approx(r, abs=1e-9)
    assert g["stable_rank"] == pytest.approx(r, abs=1e-9)
    assert g["topk_energy"] == pytest.approx(min(4, r) / r, abs=1e-12)


def test_effective_rank_is_exp_entropy_of_sum_normalised_singular_values():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    p = np.array([3, 2, 1]) / 6
    assert effective_rank(s) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-14)
    assert math.isnan(effective_rank(torch.zeros(3)))


@pytest.mark.parametrize("degrees", [1e-4, 0.5, 5.0, 50.0, 89.0])
def test_planted_rotation_of_a_known_subspace_is_recovered(degrees):
    """W_B = W_A with its top-1 left and right singular vectors rotated by a known angle in a plane
    spanned by a vector outside the top-k subspace: the largest principal angle is that angle."""
    rng = np.random.default_rng(0)
    m, n, k = 30, 20, 3
    U, V = orthonormal(rng, m, m), orthonormal(rng, n, n)
    s = np.concatenate([[10.0, 8.0, 6.0], np.linspace(1.0, 0.1, n - 3)])
    A = U[:, :n] @ np.diag(s) @ V.T
    theta = math.radians(degrees)
    U2, V2 = U.copy(), V.copy()
    U2[:, 0] = math.cos(theta) * U[:, 0] + math.sin(theta) * U[:, n]  # U[:, n]: outside A's column space
    V2[:, 0] = math.cos(theta) * V[:, 0] + math.sin(theta) * V[:, k]  # V[:, k]: outside the top-k,
    V2[:, k] = -math.sin(theta) * V[:, 0] + math.cos(theta) * V[:, k]  # rotated with it (V2 orthonormal)
    B = U2[:, :n] @ np.diag(s) @ V2.T
    g = update_geometry(t64(A), t64(B), k=k, method="full")
    assert g["max_principal_angle_deg"] == pytest.approx(degrees, abs=1e-6)
    assert g["mean_principal_angle_deg"] == pytest.approx(2 * degrees / (2 * k), abs=1e-6)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(3, 25), k1=st.integers(1, 4), k2=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
@example(m=4, k1=3, k2=2, seed=0)  # found in CI: scipy gives 1.49e-8 (sqrt(eps)) for an angle that is 0
def test_principal_angles_match_scipy(m, k1, k2, seed):
    """Against scipy, and the closed form where it exists: subspaces of dimensions k1 + k2 > m share
    k1 + k2 - m dimensions, so that many angles are exactly 0. Those scipy only gets to sqrt(eps)."""
    rng = np.random.default_rng(seed)
    k1, k2 = min(k1, m), min(k2, m)
    Q1, Q2 = orthonormal(rng, m, k1), orthonormal(rng, m, k2)
    ours = principal_angles(t64(Q1), t64(Q2)).numpy()
    ref = np.sort(scipy_linalg.subspace_angles(Q1, Q2))
    shared = max(0, k1 + k2 - m)
    assert np.all(ours[:shared] < 1e-12)
    np.testing.assert_allclose(ours[shared:], ref[shared:], atol=1e-10)


def test_angles_alignment_and_energy_against_numpy_svd():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((25, 18))
    B = A + 0.3 * rng.standard_normal((25, 18))
    k = 4
    g = update_geometry(t64(A), t64(B), k=k)
    Ua, _, Vat = np.linalg.svd(A)
    Ub, _, Vbt = np.linalg.svd(B)
    angles = np.degrees(
        np.concatenate(
            [scipy_linalg.subspace_angles(Ua[:, :k], Ub[:, :k]), scipy_linalg.subspace_angles(Vat[:k].T, Vbt[:k].T)]
        )
    )
    assert g["max_principal_angle_deg"] == pytest.approx(angles.max(), abs=1e-8)
    assert g["mean_principal_angle_deg"] == pytest.approx(angles.mean(), abs=1e-8)
    D = B - A
    P, Q = Ua[:, :k] @ Ua[:, :k].T, Vat[:k].T @ Vat[:k]
    assert g["principal_alignment"] == pytest.approx(np.linalg.norm(P @ D @ Q) ** 2 / np.linalg.norm(D) ** 2, rel=1e-10)
    s = np.linalg.svd(D, compute_uv=False)
    assert g["topk_energy"] == pytest.approx((s[:k] ** 2).sum() / (s**2).sum(), rel=1e-12)
    assert g["stable_rank"] == pytest.approx((s**2).sum() / s[0] ** 2, rel=1e-12)
    p = s / s.sum()
    assert g["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-12)


def test_update_inside_the_principal_block_has_alignment_one_and_outside_zero():
    rng = np.random.default_rng(2)
    m, n, k = 20, 16, 3
    U, V = orthonormal(rng, m, m), orthonormal(rng, n, n)
    A = U[:, :n] @ np.diag(np.linspace(10, 1, n)) @ V.T
    inside = U[:, :k] @ rng.standard_normal((k, k)) @ V[:, :k].T
    outside = U[:, k:] @ rng.standard_normal((m - k, n - k)) @ V[:, k:].T
    assert update_geometry(t64(A), t64(A + 1e-3 * inside), k=k)["principal_alignment"] == pytest.approx(1, abs=1e-9)
    assert update_geometry(t64(A), t64(A + 1e-3 * outside), k=k)["principal_alignment"] == pytest.approx(0, abs=1e-9)


def test_unchanged_and_non_finite_tensors_give_nan_not_errors():
    A = torch.randn(8, 6, dtype=torch.float64)
    g = update_geometry(A, A.clone(), k=2)
    assert math.isnan(g["effective_rank"]) and math.isnan(g["principal_alignment"])
    assert g["max_principal_angle_deg"] == pytest.approx(0, abs=1e-6)
    B = A.clone()
    B[0, 0] = math.nan
    assert all(math.isnan(update_geometry(A, B)[c]) for c in ("effective_rank", "max_principal_angle_deg"))


def test_randomized_svd_error_against_the_full_svd_is_bounded():
    """A 600 x 400 matrix with a decaying spectrum (s_i = 0.9^i): the randomized path's singular
    values, subspaces (angle to the exact ones) and derived measures stay within stated bounds."""
    rng = np.random.default_rng(3)
    m, n, k = 600, 400, 16
    U, V = orthonormal(rng, m, n), orthonormal(rng, n, n)
    s = 0.9 ** np.arange(n)
    W = t64(U @ np.diag(s) @ V.T)
    Ur, Sr, Vr = randomized_svd(W, 32)
    np.testing.assert_allclose(Sr.numpy()[:k], s[:k], rtol=1e-10)
    assert float(principal_angles(Ur[:, :k], t64(U[:, :k])).max()) < 1e-8
    assert float(principal_angles(Vr[:, :k], t64(V[:, :k])).max()) < 1e-8
    A = W
    B = W + t64(1e-2 * orthonormal(rng, m, 8) @ np.diag(0.8 ** np.arange(8)) @ orthonormal(rng, n, 8).T)
    full = update_geometry(A, B, k=k, method="full")
    fast = update_geometry(A, B, k=k, method="randomized")
    assert fast["svd"] == "randomized" and full["svd"] == "full"
    for c in ("stable_rank", "topk_energy", "principal_alignment", "effective_rank"):
        assert fast[c] == pytest.approx(full[c], rel=1e-8), c  # rank-8 update: the top 128 hold it all
    assert abs(fast["max_principal_angle_deg"] - full["max_principal_angle_deg"]) < 1e-5
    # full-rank updates: the effective rank from the top 128 values and the completed tail is an
    # estimate; measured here (full vs randomized): Gaussian noise (a flat spectrum, where the power
    # iterations converge slowest) erank 5.7% high, s_1 7e-5 off; columns decaying 20x erank 15% high
    for scale, erank_bound, s1_bound in ((np.ones(n), 0.08, 1e-3), (0.05 ** np.linspace(0, 1, n), 0.2, 1e-6)):
        C = A + t64(1e-3 * rng.standard_normal((m, n)) * scale)
        full, fast = update_geometry(A, C, method="full"), update_geometry(A, C, method="randomized")
        assert fast["stable_rank"] == pytest.approx(full["stable_rank"], rel=s1_bound)
        assert fast["topk_energy"] == pytest.approx(full["topk_energy"], rel=s1_bound)
        assert abs(fast["effective_rank"] / full["effective_rank"] - 1) < erank_bound


def bf16_bits_reference(x: float) -> int:
    """float32 -> bf16 bits, round to nearest, ties to even, NaN kept quiet: the textbook rule on
    the float32 bit pattern, element by element."""
    (u,) = struct.unpack("<I", struct.pack("<f", x))
    if (u & 0x7F800000) == 0x7F800000 and (u & 0x007FFFFF):  # NaN
        return (u >> 16) | 0x0040
    lsb = (u >> 16) & 1
    return ((u + 0x7FFF + lsb) >> 16) & 0xFFFF


def test_bf16_visibility_against_an_elementwise_reference():
    rng = np.random.default_rng(4)
    a = rng.standard_normal(3000).astype(np.float32)
    b = a.copy()
    b[:1000] += np.float32(1e-6) * a[:1000]  # micro-updates: mostly invisible in bf16
    b[1000:1500] *= np.float32(1.05)  # visible
    b[1500:1510] = np.nan
    # ties: values exactly halfway between two bf16 numbers round to the even one
    tie = np.array([1.0 + 2**-8, 1.0 + 3 * 2**-8], dtype=np.float32)
    a = np.concatenate([a, tie])
    b = np.concatenate([b, np.array([1.0, 1.0 + 2**-6], dtype=np.float32)])
    ref = sum(bf16_bits_reference(float(x)) != bf16_bits_reference(float(y)) for x, y in zip(a, b))
    visible, total = fraction_visible_bf16(torch.from_numpy(a), torch.from_numpy(b))
    assert (visible, total) == (ref, len(a))
    assert 500 <= visible < 1100  # the 1e-6 changes hide, the 5% ones show
    assert fraction_visible_bf16(torch.zeros(3, dtype=torch.bfloat16), torch.ones(3, dtype=torch.bfloat16)) == (0, 0)


def test_accumulator_is_a_parameter_weighted_mean_and_merges_exactly():
    rng = np.random.default_rng(5)
    pairs = [(t64(rng.standard_normal(s)), None) for s in [(6, 4), (10, 8), (5,)]]
    pairs = [(a, a + 0.1 * t64(rng.standard_normal(tuple(a.shape)))) for a, _ in pairs]
    pairs = [(a.float(), b.float()) for a, b in pairs]
    one = SpectralStats(k=2)
    for a, b in pairs:
        one.update(a, b)
    halves = SpectralStats(k=2).update(*pairs[0]).merge(SpectralStats(k=2).update(*pairs[1]).update(*pairs[2]))
    assert one.compute() == halves.compute()
    g = [update_geometry(a, b, k=2) for a, b in pairs[:2]]
    w = [a.numel() for a, _ in pairs[:2]]
    for c in ("effective_rank", "max_principal_angle_deg", "principal_alignment"):
        assert one.compute()[c] == pytest.approx((g[0][c] * w[0] + g[1][c] * w[1]) / sum(w), rel=1e-12)
    counts = [fraction_visible_bf16(a, b) for a, b in pairs]
    assert one.compute()["fraction_visible_bf16"] == sum(v for v, _ in counts) / sum(t for _, t in counts)


@pytest.fixture
def ckpts(tmp):
    state, config = model_state("llama")
    new = {k: v.clone() for k, v in state.items()}
    w = new["model.layers.1.mlp.up_proj.weight"]
    u, v = torch.randn(w.shape[0], 1), torch.randn(1, w.shape[1])
    new["model.layers.1.mlp.up_proj.weight"] = w + 1e-3 * u @ v  # a rank-1 update
    save_state(state, tmp / "a", config)
    save_state(new, tmp / "b", config)
    return tmp


@pytest.mark.slow
def test_cli_audit_spectral_writes_columns_summary_and_figure(ckpts, capsys):
    out = ckpts / "out"
    args = ["audit", str(ckpts / "a"), str(ckpts / "b"), "--out", str(out), "--quiet", "--spectral"]
    assert main([*args, "--spectral-k", "4"]) == 0
    assert "update geometry" in capsys.readouterr().out
    tensors = pd.read_csv(out / "tensors.csv")
    assert set(COLUMNS) <= set(tensors.columns)
    row = tensors.set_index("name").loc["model.layers.1.mlp.up_proj.weight"]
    # B is stored in float32: its rounding adds a full-rank speck (erank 1 + ~1e-4)
    assert row["effective_rank"] == pytest.approx(1, abs=1e-3) and row["stable_rank"] == pytest.approx(1, abs=1e-6)
    assert row["fraction_visible_bf16"] > 0
    unchanged = tensors.set_index("name").loc["model.layers.0.mlp.up_proj.weight"]
    assert math.isnan(unchanged["effective_rank"]) and unchanged["fraction_visible_bf16"] == 0
    assert unchanged["max_principal_angle_deg"] == pytest.approx(0, abs=1e-5)
    s = json.loads((out / "summary.json").read_text())
    for block in [s["total"], *s["components"].values(), *s["layers"].values()]:
        assert set(COLUMNS) <= set(block)
    assert s["layers"]["1"]["effective_rank"] == pytest.approx(1, abs=1e-3)  # the only changed 2-D tensor
    for level in ("layers", "components"):
        assert set(COLUMNS) <= set(pd.read_csv(out / f"{level}.csv").columns)
    assert (out / "geometry_by_layer_and_component.png").is_file()
    from prism_analysis.figures import plot_spectral  # redrawn from the saved tables alone

    plot_spectral(pd.read_csv(out / "layers.csv"), pd.read_csv(out / "components.csv"), ckpts / "redrawn")
    assert (ckpts / "redrawn.pdf").is_file()
    plain = ckpts / "plain"
    assert main(["audit", str(ckpts / "a"), str(ckpts / "b"), "--out", str(plain), "--quiet", "--no-figure"]) == 0
    assert "effective_rank" not in pd.read_csv(plain / "tensors.csv").columns
    with pytest.raises(SystemExit) as e:  # argparse's one-line error for a bad K
        main([*args[:-1], "--spectral-k", "0"])
    assert e.value.code == 2


def test_spectral_summary_for_the_study(ckpts):
    table = spectral_summary(ckpts / "a", ckpts / "b", k=4)
    assert list(table["component"])[-1] == "total"
    assert {"normalized_l2", "fraction_changed", *COLUMNS} <= set(table.columns)
    up = table.set_index("component").loc["mlp_up"]
    assert up["fraction_changed"] > 0 and up["fraction_visible_bf16"] <= up["fraction_changed"]


@pytest.mark.gpu
def test_cuda_gives_the_cpu_numbers(gpu_device):
    """The audit runs the geometry on its device: on a GPU the same numbers as on the CPU."""
    rng = np.random.default_rng(9)
    spectrum = orthonormal(rng, 300, 200) @ np.diag(0.9 ** np.arange(200)) @ orthonormal(rng, 200, 200).T
    A = torch.from_numpy(spectrum.astype(np.float32))  # decaying: the randomized sketches agree to rounding
    B = A + 1e-3 * torch.from_numpy(rng.standard_normal((300, 200)).astype(np.float32))
    for method in ("full", "randomized"):
        cpu, gpu = (
            update_geometry(A, B, k=8, method=method),
            update_geometry(A.to(gpu_device), B.to(gpu_device), k=8, method=method),
        )
        for c in ("effective_rank", "stable_rank", "principal_alignment", "max_principal_angle_deg"):
            # dW is noise (a flat spectrum): another device's sketch moves its randomized s_1 by ~1e-4
            rel = 1e-3 if method == "randomized" and c.endswith("rank") else 1e-6
            assert gpu[c] == pytest.approx(cpu[c], rel=rel, abs=1e-9), (method, c)
    assert fraction_visible_bf16(A.to(gpu_device), B.to(gpu_device)) == fraction_visible_bf16(A, B)


@pytest.mark.slow
def test_audit_spectral_reads_base_plus_lora_adapter_and_finds_its_rank(tmp):
    """Any checkpoint form: BASE+ADAPTER (merged tensor by tensor). A rank-4 LoRA update of q and v
    has stable and effective rank at most 4 (up to the float32 rounding of the merge); k is unchanged."""
    pytest.importorskip("peft")
    from checkpoints.test_lora import QV, make_lora

    from prism_analysis.weights.audit import audit

    base, adapter, _ = make_lora(tmp, **QV)
    res = audit(base, f"{base}+{adapter}", progress=False, spectral=True, spectral_k=4)
    rows = res.tensors.set_index("component")
    for comp in ("attn_q", "attn_v"):
        assert (rows.loc[comp, "stable_rank"] <= 4 + 1e-6).all() and (rows.loc[comp, "effective_rank"] <= 4.01).all()
        assert (rows.loc[comp, "effective_rank"] > 1).all()
    assert rows.loc["attn_k", "effective_rank"].isna().all()
    assert res.summary()["components"]["attn_q"]["effective_rank"] <= 4.01


@pytest.mark.parametrize("power_iters", [0, 1, 4])
def test_mixed_precision_sketch_is_at_least_as_accurate_as_the_float64_algorithm(power_iters):
    """randomized_svd (float32 sketch and iterations, one float64 iteration) against Halko et al.'s
    Alg. 4.4 written here in float64 with the same sketch width and iterations, on a slowly
    decaying spectrum (1 to 1e-3), where the number of products with W decides the accuracy."""
    rng = np.random.default_rng(0)
    m, n, rank = 300, 200, 10
    s = np.logspace(0, -3, n)
    W = t64(orthonormal(rng, m, n) @ np.diag(s) @ orthonormal(rng, n, n).T)

    def float64_halko(W, rank, oversample=10, q=power_iters):
        omega = torch.randn(n, rank + oversample, dtype=W.dtype, generator=torch.Generator().manual_seed(0))
        Q = torch.linalg.qr(W @ omega).Q
        for _ in range(q):
            Q = torch.linalg.qr(W @ torch.linalg.qr(W.mT @ Q).Q).Q
        return torch.linalg.svdvals(Q.mT @ W)[:rank]

    _, S, _ = randomized_svd(W, rank, power_iters=power_iters)
    mine = np.abs(S.numpy() / s[:rank] - 1).max()
    reference = np.abs(float64_halko(W, rank).numpy() / s[:rank] - 1).max()
    assert mine <= reference
