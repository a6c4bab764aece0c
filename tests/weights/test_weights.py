"""Update statistics against closed forms, planted perturbations and an independent numpy reference."""

import math

import numpy as np
import pytest
import torch
from helpers import model_state, save_state
from hypothesis import given, settings
from hypothesis import strategies as st

from prism_analysis.metrics import DEFAULT_THRESHOLDS, normalized_l2
from prism_analysis.weights import update as weights
from prism_analysis.weights.audit import audit
from prism_analysis.weights.update import UpdateStats


def reference(a: torch.Tensor, b: torch.Tensor, thresholds=DEFAULT_THRESHOLDS):
    """Independent float64 numpy reference: one explicit comparison per threshold."""
    a64 = a.double().numpy().ravel()
    b64 = b.double().numpy().ravel()
    d = b64 - a64
    changed = {}
    for t in thresholds:
        c = np.where(a64 == 0, b64 != 0, np.abs(d) > t * np.abs(a64))
        changed[repr(float(t))] = c.mean()
    norm_a = math.sqrt((a64**2).sum())
    return {
        "normalized_l2": math.sqrt((d**2).sum()) / norm_a if norm_a else float("nan"),
        "fraction_changed": changed,
        "numel": a64.size,
    }


def test_closed_form_uniform_scaling():
    a = torch.full((1000,), 2.0, dtype=torch.float64)
    b = a * 1.03
    m = UpdateStats().update(a, b).compute()
    assert m["normalized_l2"] == pytest.approx(0.03, rel=1e-12)
    assert m["fraction_changed"] == {"0.001": 1.0, "0.005": 1.0, "0.01": 1.0, "0.02": 1.0, "0.05": 0.0, "0.1": 0.0}
    assert m["fraction_equal"] == 0.0
    assert m["max_abs_diff"] == pytest.approx(0.06)


def test_threshold_is_strict_at_an_exact_tie():
    # |d| = tau * |a| exactly (dyadic numbers): not changed ("> tau", not ">=")
    a = torch.tensor([4.0, 4.0], dtype=torch.float64)
    b = torch.tensor([4.5, 4.5 + 2**-20], dtype=torch.float64)
    m = UpdateStats(thresholds=(0.125,)).update(a, b).compute()
    assert m["fraction_changed"]["0.125"] == 0.5


def test_zero_rule_and_signed_zero():
    a = torch.tensor([0.0, 0.0, 0.0, 1.0])
    b = torch.tensor([0.0, -0.0, 1e-30, 1.0])
    m = UpdateStats().update(a, b).compute()
    # 0 -> 0 and +0 -> -0 unchanged; 0 -> 1e-30 changed at every threshold
    assert all(v == 0.25 for v in m["fraction_changed"].values())
    # bitwise: +0 vs -0 differs, so equal = {0->0, 1->1} = 2 of 4
    assert m["fraction_equal"] == 0.5


def test_nonfinite_counted_and_excluded_from_l2():
    a = torch.tensor([1.0, float("nan"), float("inf"), 2.0, 3.0])
    b = torch.tensor([1.0, float("nan"), 5.0, 2.0, 3.3])
    m = UpdateStats().update(a, b).compute()
    assert m["nonfinite"] == 2
    # finite part: only 3 -> 3.3 moved; L2 over finite elements
    assert m["normalized_l2"] == pytest.approx(0.3 / math.sqrt(1 + 4 + 9), rel=1e-6)
    # inf -> 5 changed; NaN -> NaN with equal bits unchanged; 3 -> 3.3 changed (10% > all but 10%)
    assert m["fraction_changed"]["0.01"] == pytest.approx(2 / 5)
    assert m["fraction_changed"]["0.1"] == pytest.approx(1 / 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_matches_numpy_reference_on_random_updates(dtype):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5000, generator=g).to(dtype)
    scale = torch.exp(torch.randn(5000, generator=g) * 3 - 5)  # relative changes over many decades
    b = (a.double() * (1 + scale * torch.sign(torch.randn(5000, generator=g)))).to(dtype)
    a[:50] = 0
    b[:25] = 0
    m = UpdateStats().update(a, b).compute()
    ref = reference(a, b)
    assert m["normalized_l2"] == pytest.approx(ref["normalized_l2"], rel=1e-12)
    for k, v in ref["fraction_changed"].items():
        assert m["fraction_changed"][k] == pytest.approx(v, abs=0), k


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-1e3, 1e3, width=32), st.floats(-0.25, 0.25, width=32)), min_size=1, max_size=200),
    st.integers(1, 5),
)
def test_property_reference_and_merge(pairs, n_parts):
    a = torch.tensor([p[0] for p in pairs], dtype=torch.float32)
    b = (a.double() * (1 + torch.tensor([p[1] for p in pairs], dtype=torch.float64))).float()
    whole = UpdateStats().update(a, b)
    ref = reference(a, b)
    m = whole.compute()
    assert m["fraction_changed"] == pytest.approx(ref["fraction_changed"], abs=0)
    if (a.double() ** 2).sum() > 0:
        assert m["normalized_l2"] == pytest.approx(ref["normalized_l2"], rel=1e-9, abs=1e-300)
    # update/merge: statistics of the parts merged == statistics of the whole
    parts = torch.tensor_split(torch.arange(len(a)), n_parts)
    merged = UpdateStats()
    for idx in parts:
        merged.merge(UpdateStats().update(a[idx], b[idx]))
    mm = merged.compute()
    assert mm["numel"] == m["numel"]
    assert mm["fraction_changed"] == m["fraction_changed"]
    assert mm["normalized_l2"] == pytest.approx(m["normalized_l2"], rel=1e-12)


def test_chunked_equals_unchunked(monkeypatch):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(10_007, generator=g)
    b = a + 0.02 * torch.randn(10_007, generator=g) * a
    whole = UpdateStats().update(a, b).compute()
    monkeypatch.setattr(weights, "CHUNK", 1000)
    chunked = UpdateStats().update(a, b).compute()
    assert chunked["fraction_changed"] == whole["fraction_changed"]
    assert chunked["normalized_l2"] == pytest.approx(whole["normalized_l2"], rel=1e-12)
    assert chunked["max_abs_diff"] == whole["max_abs_diff"]


def test_group_l2_is_over_the_concatenation_not_a_mean_of_ratios():
    big = torch.ones(1000)
    small = torch.ones(10)
    s = UpdateStats().update(big, big * 1.01).merge(UpdateStats().update(small, small * 2))
    # concatenation: sqrt(1000 * 0.01^2 + 10 * 1) / sqrt(1010)
    assert s.compute()["normalized_l2"] == pytest.approx(math.sqrt(0.1 + 10) / math.sqrt(1010))
    assert normalized_l2(0.0, 0.0) == 0.0 and normalized_l2(1.0, 0.0) == math.inf


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shards", [1, 3])
def test_planted_perturbation_gives_exact_counts(tmp, dtype, shards):
    """Change exactly k elements by +3% in chosen tensors: the audit reports exactly those counts."""
    state, config = model_state("llama", dtype=dtype)
    planted = {
        "model.layers.1.mlp.up_proj.weight": 100,
        "model.layers.2.self_attn.q_proj.weight": 37,
        "model.embed_tokens.weight": 5,
    }
    new = {k: v.clone() for k, v in state.items()}
    for name, k in planted.items():
        flat = new[name].view(-1)
        flat[-k:] = (flat[-k:].double() * 1.03).to(dtype)
        # make sure no planted element is zero or rounds back to itself in bf16
        assert (flat[-k:] != state[name].view(-1)[-k:]).all()
    save_state(state, tmp / "a", config)
    save_state(new, tmp / "b", config, shards=shards)
    res = audit(tmp / "a", tmp / "b", progress=False)
    t = res.tensors.set_index("name")
    for name, k in planted.items():
        row = t.loc[name]
        assert row["n_changed_0.01"] == k and row["n_changed_0.02"] == k
        assert row["n_changed_0.05"] == 0 and row["n_changed_0.1"] == 0
        assert row["n_equal"] == row["numel"] - k
        a64 = state[name].double().view(-1)
        b64 = new[name].double().view(-1)
        assert row["normalized_l2"] == pytest.approx(((b64 - a64).norm() / a64.norm()).item(), rel=1e-12)
    untouched = t.drop(index=list(planted))
    assert (untouched["normalized_l2"] == 0).all() and (untouched["fraction_equal"] == 1).all()
    total = res.stats["total"].compute()
    assert total["numel"] == sum(v.numel() for v in state.values())
    k_all = sum(planted.values())
    assert total["fraction_changed"]["0.01"] == k_all / total["numel"]
    comps = res.components.set_index("component")
    assert comps.loc["mlp_up", "n_changed_0.01"] == 100
    assert comps.loc["attn_q", "n_changed_0.01"] == 37
    assert comps.loc["embed", "n_changed_0.01"] == 5
    layers = res.layers.set_index("layer")
    assert layers.loc[1, "n_changed_0.01"] == 100 and layers.loc[2, "n_changed_0.01"] == 37
    assert layers.loc[0, "n_changed_0.01"] == 0
    # every tensor aligned, nothing on one side only
    assert res.only_in_a == [] and res.only_in_b == []


@pytest.mark.parametrize("family", ["granite", "mistral", "nemotron_h"])
def test_audit_every_family_against_reference(tmp, family):
    state, config = model_state(family, seed=1)
    g = torch.Generator().manual_seed(2)
    new = {k: v + 0.01 * torch.randn(v.shape, generator=g) * v for k, v in state.items()}
    save_state(state, tmp / "a", config)
    save_state(new, tmp / "b", config)
    res = audit(tmp / "a", tmp / "b", progress=False)
    all_a = torch.cat([v.reshape(-1) for v in state.values()])
    all_b = torch.cat([new[k].reshape(-1) for k in state])
    ref = reference(all_a, all_b)
    total = res.stats["total"].compute()
    assert total["normalized_l2"] == pytest.approx(ref["normalized_l2"], rel=1e-10)
    assert total["fraction_changed"] == pytest.approx(ref["fraction_changed"], abs=0)
    assert "other" not in set(res.components["component"])


@pytest.fixture
def path(compute_path):
    """Run a test on both implementations: the fused CPU kernel and the torch path (used on GPU)."""
    return compute_path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_and_torch_paths_agree_with_reference(path, dtype):
    g = torch.Generator().manual_seed(3)
    n = 200_003  # several fused blocks, ragged end
    a = torch.randn(n, generator=g).to(dtype)
    b = (a.double() * (1 + 0.03 * torch.randn(n, generator=g))).to(dtype)
    a[:100], b[:50] = 0, 0
    b[100:110] = -0.0
    a[200], b[300], b[301], a[301] = float("nan"), float("inf"), float("nan"), float("nan")
    a[302], b[302] = float("inf"), float("inf")
    m = UpdateStats().update(a, b).compute()
    finite = torch.isfinite(a) & torch.isfinite(b)
    ref = reference(a[finite], b[finite])
    assert m["nonfinite"] == 4
    assert m["normalized_l2"] == pytest.approx(ref["normalized_l2"], rel=1e-12)
    n_eq = int(
        (
            a.view(torch.int16 if dtype != torch.float32 else torch.int32)
            == b.view(torch.int16 if dtype != torch.float32 else torch.int32)
        ).sum()
    )
    assert m["fraction_equal"] == n_eq / n
    # non-finite: 200, 300 changed; 301 (nan, nan: same bits) and 302 (inf, inf) unchanged
    for k, v in ref["fraction_changed"].items():
        assert round(m["fraction_changed"][k] * n) == round(v * finite.sum().item()) + 2, k
    d = (b.double() - a.double())[finite].abs().max().item()
    assert m["max_abs_diff"] == d


def test_an_all_nan_reference_has_no_l2_rather_than_zero(path):
    a = torch.full((8,), float("nan"))
    m = UpdateStats().update(a, torch.ones(8)).compute()
    assert math.isnan(m["normalized_l2"]) and m["nonfinite"] == 8
    assert all(v == 1.0 for v in m["fraction_changed"].values())
    # a partly-NaN reference: the L2 of the finite elements
    a = torch.tensor([float("nan"), 1.0, 2.0])
    m = UpdateStats().update(a, torch.tensor([0.0, 1.0, 2.2])).compute()
    assert m["normalized_l2"] == pytest.approx(0.2 / math.sqrt(5), rel=1e-6) and m["nonfinite"] == 1


def test_different_dtypes_compare_in_the_wider_one_the_same_both_ways(path):
    g = torch.Generator().manual_seed(3)
    fp32 = torch.randn(4000, generator=g) * 0.02
    bf16 = fp32.to(torch.bfloat16)  # the same weights stored in bf16: rounding differences only
    ab = UpdateStats().update(bf16, fp32).compute()
    ba = UpdateStats().update(fp32, bf16).compute()
    assert ab["fraction_changed"] == pytest.approx(ba["fraction_changed"], abs=1e-3)
    assert ab["fraction_changed"]["0.001"] > 0.5, "bf16 rounding is visible when compared in float32"
    assert math.isnan(ab["fraction_equal"]) and math.isnan(ba["fraction_equal"]), "no bitwise equality across dtypes"
    ref = reference(bf16.float(), fp32)
    assert ab["fraction_changed"]["0.01"] == pytest.approx(ref["fraction_changed"]["0.01"], abs=1e-12)


def test_audit_says_which_tensors_were_compared_across_dtypes(tmp):
    state, config = model_state("llama")
    save_state(state, tmp / "a", config)
    save_state({k: v.to(torch.bfloat16) for k, v in state.items()}, tmp / "b", config)
    res = audit(tmp / "a", tmp / "b", progress=False, device="cpu")
    assert len(res.cast) == len(state) and res.cast[0]["dtype_a"] == "float32" and res.cast[0]["dtype_b"] == "bfloat16"
    assert "differ in dtype (float32 vs bfloat16)" in res.format()
    assert res.summary()["cast"] == res.cast and set(res.tensors["dtype_b"]) == {"bfloat16"}


def test_nan_to_nan_across_dtypes_is_unchanged_whatever_the_payload():
    """Across dtypes NaN -> NaN is unchanged (a cast's NaN bits differ between devices: CUDA's
    float16 -> float64 is not the CPU's); in one dtype the stored bits still decide."""
    from prism_analysis.weights.overlap import OverlapStats
    from prism_analysis.weights.units import _row_stats
    from prism_analysis.weights.update import UpdateStats

    odd_nan = torch.tensor([0x7E01, -0x200], dtype=torch.int16).view(torch.float16)  # payload 1; negative NaN
    a = torch.cat([odd_nan, torch.tensor([1.0, float("inf")], dtype=torch.float16)])
    b = torch.tensor([float("nan"), float("nan"), 1.0, float("inf")], dtype=torch.float64)
    for x, y in ((a, b), (b, a), (a.float(), b), (a, b.float())):
        s = UpdateStats(thresholds=(0.0, 0.01)).update(x, y)
        assert s.n_nonfinite == 3 and s.n_changed == [0, 0], (x.dtype, y.dtype)
        assert UpdateStats(fused_min_numel=0, thresholds=(0.0,)).update(x, y).n_changed == [0]
    # float8 is compared as float32, yet its stored dtype differs from float32's: the same rule
    e4, e5 = (torch.tensor([float("nan"), 1.0]).to(d) for d in (torch.float8_e4m3fn, torch.float8_e5m2))
    odd32 = torch.tensor([0x7FC00001, 0x3F800000], dtype=torch.int32).view(torch.float32)  # NaN payload 1, 1.0
    for x, y in ((e4, odd32), (odd32, e5), (e4, e5)):
        assert UpdateStats(thresholds=(0.0,)).update(x, y).n_changed == [0], (x.dtype, y.dtype)
        assert OverlapStats(tau=0.0).update(x, y, x, y).n1 == 0, (x.dtype, y.dtype)
    same = UpdateStats(thresholds=(0.0,)).update(a, torch.full_like(a, float("nan")))  # one dtype: bits
    assert same.n_changed == [4]  # the two odd NaNs, 1.0 and inf -> the plain NaN: no pair is bitwise equal
    # the unit rows (the torch path) agree: row 0 holds the two NaN pairs, row 1 1.0 and inf
    rows = _row_stats(a.reshape(2, 2), b.reshape(2, 2), 0, (0.0,))
    assert rows[:, 3].tolist() == [2, 1] and rows[:, 4].tolist() == [0, 0]  # n_nonfinite, n_changed
