"""The fused output-divergence kernel and its vectorized exponential against independent float64
references: numpy's exp, torch's float64 log-softmax, the torch path of prism diff."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from prism_analysis.errors import PrismError
from prism_analysis.representations import model_diff
from prism_analysis.representations.divergence_kernel import kl_rows
from prism_analysis.simd import exp_nonpositive


@njit
def _exp_all(t):
    out = np.empty_like(t)
    for i in range(t.size):
        out[i] = exp_nonpositive(t[i])
    return out


def test_exp_nonpositive_within_two_ulp_of_numpy():
    rng = np.random.default_rng(0)
    t = -np.concatenate(
        [rng.exponential(5, 200_000), np.linspace(0, 708, 50_001), [0.0, 5e-324, 1e-300, np.log(2) / 2, 707.9]]
    )
    got, ref = _exp_all(t), np.exp(t)
    assert got[t == 0].tolist() == [1.0] * int((t == 0).sum())
    assert (np.abs(got - ref) <= 2 * np.spacing(ref)).all()
    nan, inf, low = _exp_all(np.array([np.nan, -np.inf, -1000.0]))
    assert np.isnan(nan) and inf == low == _exp_all(np.array([-708.0]))[0] > 0  # clamped: ~3e-308, nothing in a sum


def reference(xa: torch.Tensor, xb: torch.Tensor):
    """KL both ways, logsumexp and the first argmax from torch's float64 log-softmax."""
    la, lb = torch.log_softmax(xa.double(), -1), torch.log_softmax(xb.double(), -1)
    kl_ab = (la.exp() * (la - lb)).sum(-1)
    kl_ba = (lb.exp() * (lb - la)).sum(-1)
    return kl_ab, kl_ba, torch.logsumexp(xa.double(), -1), torch.logsumexp(xb.double(), -1)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 9),
    st.integers(2, 3000),
    st.floats(0.1, 30),
    st.floats(0, 1),
    st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    st.integers(0, 2**31),
)
def test_kl_rows_against_float64_log_softmax(rows, vocab, scale, noise, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    xa = (min(scale, 10.0 if dtype == torch.float16 else scale) * torch.randn(rows, vocab, generator=g)).to(dtype)
    xb = (xa.float() + noise * torch.randn(rows, vocab, generator=g)).to(dtype)
    xb[0] = xa[0]  # an identical row: KL exactly 0 both ways
    kl_ab, kl_ba, lse_a, lse_b, top_a, top_b, bad = kl_rows(xa, xb)
    r_ab, r_ba, r_lse_a, r_lse_b = reference(xa, xb)
    assert not bad.any() and kl_ab[0] == 0 and kl_ba[0] == 0
    torch.testing.assert_close(kl_ab, r_ab.clamp_min(0), rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(kl_ba, r_ba.clamp_min(0), rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(lse_a, r_lse_a, rtol=1e-14, atol=0)
    torch.testing.assert_close(lse_b, r_lse_b, rtol=1e-14, atol=0)
    assert torch.equal(top_a, xa.float().argmax(-1)) and torch.equal(top_b, xb.float().argmax(-1))


def test_kl_rows_first_index_on_ties_nan_rows_and_threads():
    x = torch.zeros(3, 50)
    x[0, [7, 30]] = 2.0  # tie: the first index
    x[1, 3] = float("nan")
    x[2] = torch.linspace(-40, 40, 50)
    y = x.clone()
    y[2, 45] += 1.0
    kl_ab, _, _, _, top_a, _, bad = kl_rows(x, y)
    assert top_a[0] == 7 and bad.tolist() == [False, True, False]
    assert kl_ab[0] == 0 and kl_ab[2] > 0
    big = torch.randn(64, 4096, generator=torch.Generator().manual_seed(0))
    other = big + 0.1 * torch.randn(64, 4096, generator=torch.Generator().manual_seed(1))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = kl_rows(big, other)
    finally:
        numba.set_num_threads(before)
    many = kl_rows(big, other)
    assert all(torch.equal(p, q) for p, q in zip(one, many))  # rows are independent: same bits


def test_infinite_logits_kernel_and_torch_path_agree(monkeypatch):
    """A -inf logit has probability 0 and adds nothing: KL towards the model that rules the token
    out is +inf, the other way finite (the sum over the tokens both allow, written here); the same
    -inf in both models changes nothing. NaN, +inf and an all -inf row are refused, on both paths."""
    x = torch.tensor([[0.0, 1.0, -torch.inf, 2.0], [0.0, 1.0, -torch.inf, 2.0]])
    y = torch.tensor([[0.0, 1.0, 0.5, 2.5], [0.5, 1.0, -torch.inf, 2.0]])
    la, lb = torch.log_softmax(x.double(), -1), torch.log_softmax(y.double(), -1)
    pa = la.exp()
    expected_ab = torch.where(pa > 0, pa * (la - lb), 0.0).sum(-1)
    for use_kernel in (True, False):
        monkeypatch.setattr(model_diff, "USE_KERNEL", use_kernel)
        kl_ab, kl_ba, *_ = model_diff._kl_pair(x, y)
        torch.testing.assert_close(kl_ab, expected_ab, rtol=1e-12, atol=1e-15)
        assert kl_ba[0] == torch.inf and torch.isfinite(kl_ba[1]) and kl_ba[1] > 0
        for bad in (float("nan"), torch.inf):
            z = y.clone()
            z[1, 0] = bad
            with pytest.raises(PrismError, match="NaN or \\+inf"):
                model_diff._kl_pair(x, z)
        with pytest.raises(PrismError, match="NaN or \\+inf"):
            model_diff._kl_pair(x, torch.full_like(y, -torch.inf))


def test_prism_diff_kernel_equals_the_torch_path(monkeypatch):
    """diff_models with the kernel against its own torch path (USE_KERNEL off): every per-position
    and per-layer (logit lens) number to 1e-12 relative, the top-1 tokens and agreements identical."""
    from prism_analysis.tiny import build_model, train_tokenizer

    a = build_model("llama", seed=0, hidden_size=32, num_layers=2, vocab_size=300).eval()
    b = build_model("llama", seed=0, hidden_size=32, num_layers=2, vocab_size=300).eval()
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(1.02)

    tok = train_tokenizer(["the cat sat on the mat and the dog ran to the park"] * 20, vocab_size=300)
    probes = {"p": ["the cat sat on the mat", "the dog ran to the park and the cat sat", "mat"]}
    kernel = model_diff.diff_models(a, b, tok, probes, bootstrap=0)
    monkeypatch.setattr(model_diff, "USE_KERNEL", False)
    plain = model_diff.diff_models(a, b, tok, probes, bootstrap=0)
    for col in ("kl_ab", "kl_ba", "logprob_a", "logprob_b", "delta_logprob"):
        np.testing.assert_allclose(kernel.positions[col], plain.positions[col], rtol=1e-12, atol=1e-15, err_msg=col)
    for col in ("top1_a", "top1_b", "top1_agree"):
        assert kernel.positions[col].tolist() == plain.positions[col].tolist()
    assert (kernel.positions["kl_ab"] > 0).all()
    for col in ("kl_ab", "kl_ba", "kl_a_to_output", "kl_b_to_output", "top1_agree"):  # the logit lens
        np.testing.assert_allclose(kernel.layers[col], plain.layers[col], rtol=1e-12, atol=1e-15, err_msg=col)
