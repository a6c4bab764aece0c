"""The vectorized numba kernels of prism_analysis.weights.fused against the torch path and exact references.

Counts (bitwise equal, non-finite, changed at every threshold; the overlap masks) must be bit for
bit those of the torch path and of the rule in metrics.py, on raw bit patterns that include NaN,
+-Inf, +-0, denormals, the largest finite values and pairs sitting exactly on a threshold, for
bf16, fp16 and fp32 and sizes that are no multiple of a block or sub-chunk. Float64 sums must be
within 1e-13 (relative to the sum of the absolute terms) of math.fsum, and the same bits on 1 or 2
numba threads.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prism_analysis.metrics import bits_equal, changed_mask
from prism_analysis.weights import fused
from prism_analysis.weights.overlap import _torch_overlap
from prism_analysis.weights.update import _torch_pair_stats

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
#: thresholds with exact binary values (0.25, 0.5, 1, 2) so that planted pairs sit exactly on them
THRESHOLDS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
UINT = {torch.bfloat16: np.uint16, torch.float16: np.uint16, torch.float32: np.uint32}
INT = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}


def special_bits(dtype) -> list[int]:
    """Bit patterns of +-0, denormals, the extremes, +-Inf, NaNs (quiet, signalling, negative)."""
    if dtype == torch.float32:
        return [0, 0x80000000, 1, 0x80000001, 0x007FFFFF, 0x00800000, 0x7F7FFFFF, 0xFF7FFFFF,
                0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFC00000, 0x3F800000, 0xBF800000]  # fmt: skip
    if dtype == torch.bfloat16:
        return [0, 0x8000, 1, 0x8001, 0x007F, 0x0080, 0x7F7F, 0xFF7F,
                0x7F80, 0xFF80, 0x7FC0, 0x7F81, 0xFFC0, 0x3F80, 0xBF80]  # fmt: skip
    return [0, 0x8000, 1, 0x8001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF,
            0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFE00, 0x3C00, 0xBC00]  # fmt: skip


def from_bits(bits: np.ndarray, dtype) -> torch.Tensor:
    return torch.from_numpy(
        np.ascontiguousarray(bits, dtype=UINT[dtype]).view(np.int16 if dtype != torch.float32 else np.int32)
    ).view(dtype)


def mixed_pair(seed: int, n: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A: normal weights with planted specials; B: A moved by a spread of relative sizes (so elements
    fall on both sides of every threshold), some equal, some exactly on a threshold, specials too."""
    g = torch.Generator().manual_seed(seed)
    a = (torch.randn(n, generator=g, dtype=torch.float64) * 0.02).to(dtype)
    rel = torch.tensor([0.0, 1e-4, 2e-3, 7e-3, 0.015, 0.03, 0.08, 0.3, 0.7, 1.5, 3.0], dtype=torch.float64)
    pick = torch.randint(0, len(rel), (n,), generator=g)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    b = (a.double() * (1 + sign * rel[pick])).to(dtype)
    # exactly on a threshold: |b - a| = tau |a| for tau in 0.25, 0.5, 1, 2 (exact in binary)
    k = n // 10
    on = torch.randint(0, n, (k,), generator=g)
    b[on] = (
        a[on].double() * (1 + torch.tensor([0.25, 0.5, 1.0, 2.0]).double()[torch.randint(0, 4, (k,), generator=g)])
    ).to(dtype)
    specials = from_bits(np.array(special_bits(dtype)), dtype)
    for t in (a, b):
        idx = torch.randint(0, n, (max(1, n // 50),), generator=g)
        t[idx] = specials[torch.randint(0, len(specials), (len(idx),), generator=g)]
    same = torch.randint(0, n, (max(1, n // 50),), generator=g)
    b[same] = a[same]  # bitwise equal, NaNs included
    return a, b


def changed_reference(a, b, thresholds) -> list[int]:
    """Counts by metrics.changed_mask, the rule's single definition, in float64."""
    eq = bits_equal(a, b)
    return [int(changed_mask(a.double(), b.double(), t, eq).sum()) for t in thresholds]


def pair_reference(a, b) -> tuple[list[float], list[float]]:
    """Exact (fsum) sums over finite pairs, and the sums of the absolute terms (the error scale)."""
    x, y = a.double(), b.double()
    ok = torch.isfinite(x) & torch.isfinite(y)
    x, y = x[ok].numpy(), y[ok].numpy()
    terms = [x * x, y * y, x * y, (y - x) ** 2]
    return [math.fsum(t) for t in terms], [math.fsum(np.abs(t)) for t in terms]


def check_pair(a, b, thresholds=THRESHOLDS):
    sums, counts = fused.pair_stats(a, b, thresholds)
    t_sums, t_counts = _torch_pair_stats(a, b, thresholds)
    assert counts == t_counts, "counts differ from the torch path"
    eq = int(bits_equal(a, b).sum())
    nonfinite = int((~(torch.isfinite(a) & torch.isfinite(b))).sum())
    assert counts == [eq, nonfinite, *changed_reference(a, b, thresholds)]
    ref, scale = pair_reference(a, b)
    for got, torch_path, r, s in zip(sums[:4], t_sums[:4], ref, scale):
        assert abs(got - r) <= 1e-13 * s, (got, r)
        assert abs(got - torch_path) <= 1e-13 * s, (got, torch_path)
    assert sums[4] == t_sums[4]
    finite = torch.isfinite(a) & torch.isfinite(b)
    d = (b.double() - a.double())[finite].abs()
    assert sums[4] == (float(d.max()) if d.numel() else 0.0)
    return sums, counts


@st.composite
def bit_pairs(draw, dtype):
    """Raw bit patterns: specials, random bits, and B as A with its low bits nudged (close pairs)."""
    n = draw(st.integers(1, 3000))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    width = 16 if dtype != torch.float32 else 32
    specials = np.array(special_bits(dtype), dtype=np.uint64)
    a = rng.integers(0, 2**width, n, dtype=np.uint64)
    a = np.where(rng.random(n) < 0.1, specials[rng.integers(0, len(specials), n)], a)
    nudge = rng.integers(-3, 4, n).astype(np.int64)
    b = (a.astype(np.int64) + nudge).astype(np.uint64) % (2**width)
    b = np.where(rng.random(n) < 0.2, rng.integers(0, 2**width, n, dtype=np.uint64), b)
    b = np.where(rng.random(n) < 0.1, specials[rng.integers(0, len(specials), n)], b)
    return from_bits(a, dtype), from_bits(b, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_pair_counts_bit_identical_to_torch_on_raw_bits(dtype, data):
    a, b = data.draw(bit_pairs(dtype))
    check_pair(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, fused.SUB + 1, fused.BLOCK - 1, 3 * fused.BLOCK + fused.SUB + 13])
def test_pair_planted_specials_and_thresholds_at_odd_sizes(dtype, n):
    a, b = mixed_pair(n, n, dtype)
    _, counts = check_pair(a, b)
    assert n < 100 or 0 < counts[2 + THRESHOLDS.index(0.5)] < counts[2 + THRESHOLDS.index(0.25)] < n


def test_pair_exactly_on_the_threshold_is_unchanged_and_zero_rule():
    """Strict comparison: |b - a| == tau |a| is unchanged; a == 0: changed iff b != 0 (+0 -> -0 is
    not); NaN -> the same NaN unchanged, NaN -> other NaN bits or a number changed."""
    a = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, float("nan"), float("nan"), float("nan"), float("inf"), 2.0])
    b = torch.tensor([1.5, 1.5000001, 0.0, -0.0, 1e-45, float("nan"), 1.0, float("inf"), float("inf"), float("-inf")])
    b[6] = from_bits(np.array([0x7FC00001]), torch.float32)[0]  # a NaN with other bits
    _, counts = fused.pair_stats(a, b, (0.5,))
    # changed: 1 (just above), 4 (0 -> denormal), 6 (NaN bits differ), 7 (NaN -> inf), 9 (2 -> -inf)
    assert counts == [3, 5, 5]  # equal: 0 -> 0, NaN -> same NaN, inf -> inf
    assert counts == _torch_pair_stats(a, b, (0.5,))[1]


@pytest.mark.parametrize("dtype", DTYPES)
def test_pair_same_bits_on_one_and_two_threads(dtype):
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread here")
    a, b = mixed_pair(1, 5 * fused.BLOCK + 321, dtype)
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = fused.pair_stats(a, b, THRESHOLDS)
        numba.set_num_threads(2)
        two = fused.pair_stats(a, b, THRESHOLDS)
    finally:
        numba.set_num_threads(old)
    assert one == two  # floats compared exactly
    assert one == fused.pair_stats(a, b, THRESHOLDS), "deterministic from run to run"


def overlap_reference(a1, b1, a2, b2, tau):
    d1 = b1.double() - a1.double()
    d2 = b2.double() - a2.double()
    ok = torch.isfinite(d1) & torch.isfinite(d2)
    e1, e2 = d1[ok].numpy(), d2[ok].numpy()
    terms = [e1 * e2, e1 * e1, e2 * e2]
    m1 = changed_mask(a1.double(), b1.double(), tau, bits_equal(a1, b1))
    m2 = changed_mask(a2.double(), b2.double(), tau, bits_equal(a2, b2))
    counts = [int(m1.sum()), int(m2.sum()), int((m1 & m2).sum())]
    return [math.fsum(t) for t in terms], [math.fsum(np.abs(t)) for t in terms], counts


def check_overlap(a1, b1, a2, b2, tau):
    sums, counts = fused.overlap_stats(a1, b1, a2, b2, tau)
    t_sums, t_counts = _torch_overlap(a1, b1, a2, b2, tau)
    ref, scale, ref_counts = overlap_reference(a1, b1, a2, b2, tau)
    assert counts == t_counts == ref_counts
    for got, torch_path, r, s in zip(sums, t_sums, ref, scale):
        assert abs(got - r) <= 1e-13 * s, (got, r)
        assert abs(got - torch_path) <= 1e-13 * s, (got, torch_path)
    return sums, counts


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=30, deadline=None)
@given(data=st.data(), tau=st.sampled_from([0.0, 0.001, 0.01, 0.5, 1.0]))
def test_overlap_counts_bit_identical_to_torch_on_raw_bits(dtype, data, tau):
    a1, b1 = data.draw(bit_pairs(dtype))
    n = a1.numel()
    a2, b2 = data.draw(bit_pairs(dtype).filter(lambda p: p[0].numel() >= n))
    check_overlap(a1, b1, a2[:n], b2[:n], tau)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [3, fused.SUB + 5, 2 * fused.BLOCK + 777])
def test_overlap_planted_at_odd_sizes(dtype, n):
    a1, b1 = mixed_pair(2 * n, n, dtype)
    a2, b2 = mixed_pair(2 * n + 1, n, dtype)
    b2[: n // 3] = b1[: n // 3]  # overlapping updates in the first third
    a2[: n // 3] = a1[: n // 3]
    for tau in (0.0, 0.01, 0.25, 0.5):
        check_overlap(a1, b1, a2, b2, tau)


def test_overlap_same_bits_on_one_and_two_threads():
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread here")
    a1, b1 = mixed_pair(3, 4 * fused.BLOCK + 99, torch.bfloat16)
    a2, b2 = mixed_pair(4, 4 * fused.BLOCK + 99, torch.bfloat16)
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = fused.overlap_stats(a1, b1, a2, b2, 0.01)
        numba.set_num_threads(2)
        two = fused.overlap_stats(a1, b1, a2, b2, 0.01)
    finally:
        numba.set_num_threads(old)
    assert one == two


def test_empty_tensors_and_bad_thresholds():
    e = torch.empty(0, dtype=torch.bfloat16)
    assert fused.pair_stats(e, e, (0.01,)) == ([0.0, 0.0, 0.0, 0.0, 0.0], [0, 0, 0])
    assert fused.overlap_stats(e, e, e, e, 0.01) == ([0.0, 0.0, 0.0], [0, 0, 0])
    x = torch.ones(10)
    for bad in (float("nan"), float("inf"), -0.01):
        with pytest.raises(ValueError):
            fused.pair_stats(x, x, (bad,))
        with pytest.raises(ValueError):
            fused.overlap_stats(x, x, x, x, bad)


# -- per row / per column (heads and neurons) ---------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [0, 1])
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_unit_rows_bit_identical_counts_to_the_torch_path(dtype, axis, data):
    """fused.unit_row_stats against units._row_stats' torch path on raw bit patterns (specials
    included), rows and columns of odd shapes around the column block: every count equal, the
    float64 sums within 1e-13 of their sum of absolute terms."""
    from prism_analysis.weights import units, update

    rows = data.draw(st.integers(1, 40))
    cols = data.draw(st.sampled_from([1, 3, fused.COLS - 1, fused.COLS + 5, 700]))
    a, b = data.draw(bit_pairs(dtype).filter(lambda p: p[0].numel() >= rows * cols))
    a, b = a[: rows * cols].reshape(rows, cols).contiguous(), b[: rows * cols].reshape(rows, cols).contiguous()
    tau = data.draw(st.sampled_from(THRESHOLDS))
    got = fused.unit_row_stats(a, b, axis, tau)
    old = update.USE_FUSED
    update.USE_FUSED = False
    try:
        ref = units._row_stats(a, b, axis, (tau,))
    finally:
        update.USE_FUSED = old
    assert torch.equal(got[:, 2:], ref[:, 2:])
    x, y = a.double(), b.double()
    finite = torch.isfinite(x) & torch.isfinite(y)
    x, y = torch.where(finite, x, 0.0), torch.where(finite, y, 0.0)
    scale = torch.stack([((y - x) ** 2).sum(1 - axis), (x * x).sum(1 - axis)], 1)
    assert ((got[:, :2] - ref[:, :2]).abs() <= 1e-13 * scale + 1e-300).all()


@pytest.mark.parametrize("with_large", [True, False])
def test_audit_takes_the_kernel_for_small_tensors_only_beside_a_large_one(tmp_path, monkeypatch, with_large):
    """fused_min_numel_for: a 128 K-element tensor takes the fused kernel in a checkpoint that also
    holds a 1 M-element one (numba is loaded anyway), the torch path in one without; either way its
    counts equal and its sums agree to 1e-13 with the torch path, and heads/neurons follow the same
    rule. The rule is the checkpoint's, so the same pair gives the same bits every time."""
    from safetensors.torch import save_file

    from prism_analysis.weights import audit as audit_module
    from prism_analysis.weights import units as units_module

    g = torch.Generator().manual_seed(0)
    small = "model.layers.0.mlp.up_proj.weight"
    a = {small: torch.randn(512, 256, generator=g).to(torch.bfloat16)}
    if with_large:
        a["model.layers.1.mlp.up_proj.weight"] = torch.randn(1024, 1024, generator=g).to(torch.bfloat16)
    b = {k: (v.float() + 0.01 * torch.randn(v.shape, generator=g)).to(torch.bfloat16) for k, v in a.items()}
    for name, state in (("a", a), ("b", b)):
        save_file(state, tmp_path / f"{name}.safetensors")
    sizes = []
    for name in ("pair_stats", "unit_row_stats"):
        original = getattr(fused, name)
        monkeypatch.setattr(fused, name, lambda x, *r, _f=original, **k: sizes.append(x.numel()) or _f(x, *r, **k))
    res = audit_module.audit(tmp_path / "a.safetensors", tmp_path / "b.safetensors", progress=False, units=("neurons",))
    assert (512 * 256 in sizes) == with_large and sizes.count(512 * 256) == (2 if with_large else 0)
    again = audit_module.audit(
        tmp_path / "a.safetensors", tmp_path / "b.safetensors", progress=False, units=("neurons",)
    )
    assert res.tensors.equals(again.tensors) and res.neurons.equals(again.neurons)
    row = res.tensors.set_index("name").loc[small]
    sums, counts = _torch_pair_stats(a[small].float().reshape(-1), b[small].float().reshape(-1), res.thresholds)
    assert row["sum_sq_diff"] == pytest.approx(sums[3], rel=1e-13) and row["sum_sq_a"] == pytest.approx(
        sums[0], rel=1e-13
    )
    assert row["n_equal"] == counts[0]
    ref = units_module.unit_table(units_module.unit_frame(small, a[small], b[small]))
    mine = res.neurons[res.neurons["layer"] == 0].sort_values("neuron").reset_index(drop=True)
    ref = ref.sort_values("unit").reset_index(drop=True)
    assert (mine["n_changed_0.01"].to_numpy() == ref["n_changed_0.01"].to_numpy()).all()
    assert np.allclose(mine["sum_sq_diff"], ref["sum_sq_diff"], rtol=1e-13, atol=0)


def test_heads_and_neurons_from_the_audit_pass_equal_their_own_pass(tmp_path, monkeypatch):
    """Row-layout units (q/k/v heads, up/gate neurons) whose rows are whole sub-chunks come out of
    the audit kernel's own pass (fused.pair_and_row_stats, UpdateStats.unit_rows); they equal the
    units measured on their own (the torch path, per tensor) -- counts exactly, sums to 1e-13 --
    and the tensors' rows are the bits of an audit without units."""
    import json

    from safetensors.torch import save_file

    from prism_analysis.weights import audit as audit_module
    from prism_analysis.weights import units as units_module

    config = {"model_type": "llama", "hidden_size": 1024, "num_attention_heads": 16, "num_key_value_heads": 4}
    shapes = {
        "model.layers.0.self_attn.q_proj.weight": (1024, 1024),
        "model.layers.0.self_attn.k_proj.weight": (256, 1024),
        "model.layers.0.self_attn.o_proj.weight": (1024, 1024),
        "model.layers.0.mlp.up_proj.weight": (2048, 1024),
        "model.layers.0.mlp.down_proj.weight": (1024, 2048),
    }
    g = torch.Generator().manual_seed(0)
    a = {k: torch.randn(s, generator=g).to(torch.bfloat16) for k, s in shapes.items()}
    b = {k: (v.float() * (1 + 0.02 * torch.randn(v.shape, generator=g))).to(torch.bfloat16) for k, v in a.items()}
    b["model.layers.0.mlp.up_proj.weight"][7, 3] = float("nan")
    for name, state in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        save_file(state, tmp_path / name / "model.safetensors")
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    calls = []
    original = fused.pair_and_row_stats
    monkeypatch.setattr(fused, "pair_and_row_stats", lambda x, *r: calls.append(tuple(x.shape)) or original(x, *r))
    own_pass = []
    unit_rows = fused.unit_row_stats
    monkeypatch.setattr(fused, "unit_row_stats", lambda x, *r: own_pass.append(tuple(x.shape)) or unit_rows(x, *r))
    res = audit_module.audit(tmp_path / "a", tmp_path / "b", progress=False, units=("heads", "neurons"))
    assert sorted(calls) == sorted(shapes.values())  # every 2-D pair records its rows (o, down use columns)
    assert sorted(own_pass) == [(1024, 1024), (1024, 2048)]  # only o and down (units are columns) are read again
    plain = audit_module.audit(tmp_path / "a", tmp_path / "b", progress=False)
    assert res.tensors.equals(plain.tensors)
    rows = [r for n in shapes for r in units_module.unit_stats(n, a[n], b[n], config)]  # torch path, per tensor
    ref = units_module.unit_table(rows)
    for kind, table in (("head", res.heads), ("neuron", res.neurons)):
        want = ref[ref["kind"] == kind].sort_values(["component", "unit"]).reset_index(drop=True)
        got = table.sort_values(["component", kind]).reset_index(drop=True)
        assert len(got) == len(want) > 0
        for col in ("numel", "n_equal", "n_nonfinite", "n_changed_0.01"):
            assert got[col].tolist() == want[col].tolist(), (kind, col)
        for col in ("sum_sq_diff", "sum_sq_a"):
            np.testing.assert_allclose(got[col], want[col], rtol=1e-13, atol=0, err_msg=f"{kind} {col}")
