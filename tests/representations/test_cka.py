"""CKA kernels against published values, independent formulas and properties."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from prism_analysis.representations import cka


@pytest.fixture(scope="module")
def ref_xy():
    np.random.seed(1337)
    X = np.random.randn(100, 10)
    Y = np.random.randn(100, 10) + X
    return X, Y


def test_reference_values_from_prism(ref_xy):
    X, Y = ref_xy
    assert cka.linear_cka(X, Y) == pytest.approx(0.55761, abs=5e-6)
    assert cka.linear_cka(X, Y, debiased=True) == pytest.approx(0.51346, abs=5e-6)
    assert cka.rbf_cka(X, Y, sigma=0.5) == pytest.approx(0.65483, abs=5e-6)


def hsic1_song(K, L):
    """Unbiased HSIC (Song et al. 2012), written out directly from the paper's formula."""
    n = K.shape[0]
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0)
    np.fill_diagonal(Lt, 0)
    one = np.ones(n)
    return (
        np.trace(Kt @ Lt)
        + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * one @ Kt @ Lt @ one
    ) / (n * (n - 3))


def cka_reference(X, Y, debiased):
    """Gram-form CKA in float64 numpy: biased via HKH, debiased via hsic1_song on raw Grams."""
    if debiased:
        K, L = X @ X.T, Y @ Y.T
        return hsic1_song(K, L) / np.sqrt(hsic1_song(K, K) * hsic1_song(L, L))
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    return np.linalg.norm(Yc.T @ Xc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc))


@pytest.mark.parametrize("n,d", [(12, 20), (60, 5), (7, 3)])
@pytest.mark.parametrize("debiased", [False, True])
def test_feature_and_gram_forms_match_the_textbook_formula(n, d, debiased):
    rng = np.random.default_rng(n * d)
    X = rng.standard_normal((n, d)) + 2.0
    Y = X @ rng.standard_normal((d, d + 1)) + rng.standard_normal((n, d + 1))
    assert cka.linear_cka(X, Y, debiased=debiased) == pytest.approx(cka_reference(X, Y, debiased), abs=1e-12)


@st.composite
def matrices(draw):
    """Gaussian rows with hypothesis-chosen shape, per-column scales (1e-2..1e2) and offsets."""
    n, d = draw(st.integers(6, 40)), draw(st.integers(2, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    scales = np.array(draw(st.lists(st.floats(1e-2, 1e2), min_size=d, max_size=d)))
    offsets = np.array(draw(st.lists(st.floats(-1e3, 1e3), min_size=d, max_size=d)))
    return rng.standard_normal((n, d)) * scales + offsets


def _well_conditioned(X):
    """Centred X of full column rank with singular values within 1e3 of each other: the properties
    are exact in arithmetic, and these inputs keep rounding out of the way."""
    Xc = X - X.mean(0)
    if X.shape[0] <= X.shape[1] + 2:
        return False
    sv = np.linalg.svd(Xc, compute_uv=False)
    return sv[-1] > 1e-3 * sv[0] and sv[0] > 1e-6


@settings(max_examples=60, deadline=None)
@given(matrices(), st.integers(0, 2**31 - 1), st.floats(1e-3, 1e3), st.booleans())
def test_properties(X, seed, scale, debiased):
    assume(_well_conditioned(X))
    # the unbiased HSIC at tiny n is a difference of terms ~1e8 larger than itself: keep n >= 12
    assume(not debiased or X.shape[0] >= 12)
    tol = 1e-7 if debiased else 1e-9
    rng = np.random.default_rng(seed)
    Y = X @ rng.standard_normal((X.shape[1], 3)) + rng.standard_normal((X.shape[0], 3))
    try:
        v = cka.linear_cka(X, Y, debiased=debiased)
    except ValueError:  # debiased self-HSIC not positive on tiny degenerate samples: a clear error
        assert debiased
        return
    assert cka.linear_cka(Y, X, debiased=debiased) == pytest.approx(v, abs=tol)  # symmetry
    assert cka.linear_cka(X, X, debiased=debiased) == pytest.approx(1.0, abs=tol)  # self = 1
    Q, _ = np.linalg.qr(rng.standard_normal((X.shape[1], X.shape[1])))
    assert cka.linear_cka(X @ Q, Y, debiased=debiased) == pytest.approx(v, abs=tol)  # orthogonal
    assert cka.linear_cka(scale * X, Y, debiased=debiased) == pytest.approx(v, abs=tol)  # isotropic scale
    assert cka.linear_cka(X + 7.0, Y - 3.0, debiased=debiased) == pytest.approx(v, abs=tol)  # translation
    if not debiased:
        assert -1e-12 <= v <= 1 + 1e-12


def test_not_invariant_to_general_linear_maps():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 6))
    Y = X + 0.5 * rng.standard_normal((200, 6))
    A = np.diag([10.0, 1, 1, 1, 1, 0.1])  # invertible, not orthogonal
    assert abs(cka.linear_cka(X @ A, Y) - cka.linear_cka(X, Y)) > 0.05


def test_edge_cases_raise_clear_errors_never_nan():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((3, 4))
    with pytest.raises(ValueError, match="at least 4 rows"):
        cka.linear_cka(X, X, debiased=True)
    with pytest.raises(ValueError, match="no variance"):
        cka.linear_cka(np.ones((10, 3)), rng.standard_normal((10, 3)))
    with pytest.raises(ValueError, match="same number of rows"):
        cka.linear_cka(rng.standard_normal((10, 3)), rng.standard_normal((11, 3)))
    # constant columns are fine
    Z = rng.standard_normal((50, 4))
    Z[:, 2] = 5.0
    v = cka.linear_cka(Z, Z + 0.1 * rng.standard_normal((50, 4)), debiased=True)
    assert np.isfinite(v)
    # n <= 3 biased works
    assert np.isfinite(cka.linear_cka(X, X + 1e-3 * rng.standard_normal((3, 4))))


def test_huge_and_low_precision_inputs_do_not_overflow():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((64, 8))
    Y = X + 0.3 * rng.standard_normal((64, 8))
    v = cka.linear_cka(X, Y)
    assert cka.linear_cka(X * 1e30, Y * 1e-30) == pytest.approx(v, rel=1e-10)
    xb, yb = torch.tensor(X).bfloat16(), torch.tensor(Y).bfloat16()
    assert cka.linear_cka(xb, yb) == pytest.approx(cka.linear_cka(xb.double(), yb.double()), abs=1e-12)
    M = cka.cka_matrix([X * 1e15], [Y * 1e15])  # fp32 Gram of centred 1e15-scale rows: still finite
    assert np.isfinite(M).all() and M[0, 0] == pytest.approx(v, abs=1e-6)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matrix_equals_pairwise(debiased):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((40, 16))
    Xs = [base @ rng.standard_normal((16, 16)) + rng.standard_normal((40, 16)) for _ in range(3)]
    Ys = [base @ rng.standard_normal((16, 12)) for _ in range(4)] + [Xs[0][:, :12] + 5.0]
    M = cka.cka_matrix(Xs, Ys, debiased=debiased, block=2)
    assert isinstance(M, np.ndarray) and M.shape == (3, 5)
    for i, X in enumerate(Xs):
        for j, Y in enumerate(Ys):
            assert M[i, j] == pytest.approx(cka.linear_cka(X, Y, debiased=debiased), abs=1e-6)
    exact = cka.cka_matrix(
        torch.tensor(np.stack(Xs)), torch.tensor(np.stack(Ys)), debiased=debiased, gram_dtype=torch.float64
    )
    assert torch.is_tensor(exact)
    np.testing.assert_allclose(exact.numpy(), M, atol=1e-6)
    df = cka.cka_matrix(Xs, Ys, as_frame=True)
    assert df.shape == (3, 5) and df.index.name == "layer_x"


@settings(max_examples=40, deadline=None)
@given(st.integers(8, 60), st.lists(st.integers(1, 15), min_size=1, max_size=6), st.booleans(), st.integers(0, 999))
def test_streaming_equals_full_data_and_merge_is_exact(n, cuts, debiased, seed):
    rng = np.random.default_rng(seed)
    L, d1, d2 = 2, 5, 4
    X = rng.standard_normal((L, n, d1)) * rng.uniform(0.1, 50, d1) + rng.uniform(-20, 20, d1)
    Y = X[..., :d2] * 0.7 + rng.standard_normal((L, n, d2))
    expected = np.array([cka.linear_cka(X[i], Y[i], debiased=debiased) for i in range(L)])
    bounds = sorted({min(c, n - 1) for c in np.cumsum(cuts)} | {0, n})
    parts = [
        cka.StreamingCKA(debiased=debiased, dtype=torch.float64).update(X[:, a:b], Y[:, a:b])
        for a, b in itertools.pairwise(bounds)
        if b > a
    ]
    one = cka.StreamingCKA(debiased=debiased, dtype=torch.float64)
    for a, b in itertools.pairwise(bounds):
        one.update(X[:, a:b], Y[:, a:b])
    np.testing.assert_allclose(one.compute().numpy(), expected, atol=1e-9)
    merged = parts[0]
    for p in parts[1:]:
        merged.merge(p)  # every part has its own shift: merge re-expresses it exactly
    assert merged.n == n
    np.testing.assert_allclose(merged.compute().numpy(), expected, atol=1e-9)


def test_streaming_errors():
    s = cka.StreamingCKA(debiased=True)
    with pytest.raises(ValueError, match="before any update"):
        s.compute()
    s.update(np.ones((1, 3, 2)), np.ones((1, 3, 2)))
    with pytest.raises(ValueError, match="at least 4 rows"):
        s.compute()
    with pytest.raises(ValueError, match="same layers and rows"):
        s.update(np.ones((1, 3, 2)), np.ones((1, 4, 2)))


def test_minibatch_cka():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((2, 64, 8))
    Y = X[:, :, :6] + 0.5 * rng.standard_normal((2, 64, 6))
    # one batch: minibatch CKA is the debiased CKA of that batch
    one = cka.MinibatchCKA().update(X, Y).compute().numpy()
    for i in range(2):
        for j in range(2):
            assert one[i, j] == pytest.approx(cka.linear_cka(X[i], Y[j], debiased=True), abs=1e-12)
    # several batches: ratio of summed unbiased HSICs (checked with the textbook formula)
    mb, other = cka.MinibatchCKA(), cka.MinibatchCKA()
    for k, b in enumerate(range(0, 64, 16)):
        (mb if k < 2 else other).update(X[:, b : b + 16], Y[:, b : b + 16])
    mb.merge(other)
    assert mb.batches == 4
    hxy = sum(
        hsic1_song(X[0, b : b + 16] @ X[0, b : b + 16].T, Y[1, b : b + 16] @ Y[1, b : b + 16].T)
        for b in range(0, 64, 16)
    )
    hxx = sum(
        hsic1_song(X[0, b : b + 16] @ X[0, b : b + 16].T, X[0, b : b + 16] @ X[0, b : b + 16].T)
        for b in range(0, 64, 16)
    )
    hyy = sum(
        hsic1_song(Y[1, b : b + 16] @ Y[1, b : b + 16].T, Y[1, b : b + 16] @ Y[1, b : b + 16].T)
        for b in range(0, 64, 16)
    )
    assert mb.compute()[0, 1].item() == pytest.approx(hxy / np.sqrt(hxx * hyy), abs=1e-12)


def test_bootstrap_is_seeded_and_brackets_its_own_mean():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((3, 200, 10))
    Y = X + rng.standard_normal((3, 200, 10)) * np.array([0.1, 1.0, 3.0])[:, None, None]
    a = cka.bootstrap_cka(X, Y, n_resamples=20, sample_size=100, seed=7)
    b = cka.bootstrap_cka(X, Y, n_resamples=20, sample_size=100, seed=7)
    assert a.equals(b)
    assert list(a.columns) == [
        "layer",
        "resample_size",
        "resample_mean",
        "resample_std",
        "resample_ci_low",
        "resample_ci_high",
    ]
    assert (a["resample_size"] == 100).all()
    assert (a["resample_ci_low"] <= a["resample_mean"]).all() and (a["resample_mean"] <= a["resample_ci_high"]).all()
    assert (a["resample_std"] > 0).all()
    assert a["resample_mean"].is_monotonic_decreasing  # more noise, lower CKA
    with pytest.raises(ValueError, match="without replacement"):
        cka.bootstrap_cka(X, Y, sample_size=300)


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("n,d", [(40, 6), (12, 20)])  # feature form, Gram form
def test_delete_one_cka_is_cka_with_each_row_left_out(n, d, debiased):
    rng = np.random.default_rng(n + d)
    X = rng.standard_normal((2, n, d)) * rng.uniform(0.1, 30, d) + rng.uniform(-50, 50, d)
    Y = X[..., :5] @ rng.standard_normal((5, 7)) + rng.standard_normal((2, n, 7))
    values = cka.delete_one_cka(X, Y, debiased=debiased)
    assert values.shape == (n, 2) and values.dtype == torch.float64
    for i in range(n):
        for layer in range(2):
            Xi, Yi = np.delete(X[layer], i, 0), np.delete(Y[layer], i, 0)
            assert values[i, layer].item() == pytest.approx(cka_reference(Xi, Yi, debiased), abs=1e-12)


def test_delete_one_cka_keeps_float64_accuracy_on_llm_like_activations():
    """Outlier channels (1e3-1e4), nonzero mean, CKA ~ 0.9994: the leave-one-out values differ from
    each other by ~1e-5, and their deviations (what the jackknife uses) keep 7 digits (measured: 9)."""
    X, Y = llm_like(120, 32, seed=1)
    X, Y = X.astype(np.float64), Y.astype(np.float64)
    values = cka.delete_one_cka(X[None], Y[None])[:, 0].numpy()
    ref = np.array([cka_reference(np.delete(X, i, 0), np.delete(Y, i, 0), False) for i in range(len(X))])
    spread = ref.std()
    assert 0 < spread < 1e-4
    assert np.abs((values - values.mean()) - (ref - ref.mean())).max() < 1e-7 * spread


def test_printed_interval_contains_the_estimate_on_unrelated_representations():
    """The issue: unrelated representations, 200 rows of 64 dims. CKA on 200 rows is ~0.24; on
    PRISM's resamples of 100 rows it is ~0.39, so their interval lies above the estimate. The
    interval printed next to the estimate is its jackknife interval, which contains it."""
    from prism_analysis.representations.model_cka import _per_layer

    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((3, 200, 64)), rng.standard_normal((3, 200, 64))
    table = _per_layer("random", torch.tensor(X), torch.tensor(Y), 20, None, 0, False)
    assert (table["cka_ci_low"] <= table["cka"]).all() and (table["cka"] <= table["cka_ci_high"]).all()
    assert (table["cka_ci_high"] - table["cka_ci_low"] < 0.05).all()  # an informative interval
    # PRISM's protocol, kept in its own columns: an interval for CKA on 100 rows, above cka on 200
    assert (table["resample_size"] == 100).all()
    assert (table["resample_ci_low"] > table["cka"] + 0.1).all()
    assert (
        (table["resample_ci_low"] <= table["resample_mean"]) & (table["resample_mean"] <= table["resample_ci_high"])
    ).all()


def test_jackknife_se_is_the_spread_of_cka_over_independent_samples():
    """The interval is for the all-rows estimator: its se matches the standard deviation of CKA on
    n rows over independent data sets (jackknife: slightly conservative), and cka +- 1.96 se covers
    the estimator's mean in about 95% of them (or more). Percentile resample intervals, for CKA on
    fewer rows or on rows with duplicates, cover it almost never here."""
    rng = np.random.default_rng(1)
    n, d, runs = 100, 16, 200
    estimates, ses, rows = [], [], []
    for _ in range(runs):
        X = rng.standard_normal((n, d))
        Y = 0.5 * X + rng.standard_normal((n, d))
        jk = cka.jackknife_cka(X, Y)
        estimates.append(jk["cka"][0])
        ses.append(jk["cka_se"][0])
        rows.append(jk)
    estimates, ses = np.array(estimates), np.array(ses)
    sd = estimates.std(ddof=1)
    assert 0.9 * sd < ses.mean() < 1.5 * sd
    mean = estimates.mean()
    covered = np.mean([(r["cka_ci_low"][0] <= mean <= r["cka_ci_high"][0]) for r in rows])
    assert covered >= 0.93
    X = rng.standard_normal((n, d))
    Y = 0.5 * X + rng.standard_normal((n, d))
    with_replacement = cka.bootstrap_cka(X, Y, n_resamples=20, sample_size=n, replace=True)
    assert with_replacement["resample_ci_low"][0] > mean  # duplicated rows inflate linear CKA


@st.composite
def representation_pairs(draw):
    """Two stacks of representations (L x n x d): related or not, heavy-tailed or not, and at times
    with a single row carrying all the variance (leaving it out makes CKA undefined)."""
    n, d1, d2, layers = draw(st.integers(4, 40)), draw(st.integers(1, 12)), draw(st.integers(1, 12)), 2
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    X = rng.standard_normal((layers, n, d1)) * np.array(draw(st.lists(st.floats(1e-2, 1e2), min_size=d1, max_size=d1)))
    if draw(st.booleans()):
        X = X**3  # heavy tails: a few rows dominate
    relation = draw(st.floats(0, 3))
    Y = relation * X[..., :1] * rng.standard_normal(d2) + rng.standard_normal((layers, n, d2))
    if draw(st.booleans()):
        X[:, 1:] = X[:, 1:2]  # every row but row 0 the same
    return X + draw(st.floats(-1e3, 1e3)), Y


@settings(max_examples=80, deadline=None)
@given(representation_pairs(), st.booleans(), st.sampled_from([0.5, 0.9, 0.95, 0.99]))
def test_the_interval_always_contains_the_estimate(pair, debiased, ci):
    X, Y = pair
    assume(X.shape[1] > cka.min_rows(debiased))
    try:
        table = cka.jackknife_cka(X, Y, debiased=debiased, ci=ci)
    except ValueError:  # CKA itself undefined on these rows (no variance, or debiased self-HSIC <= 0)
        return
    low = -1.0 if debiased else 0.0
    assert (low <= table["cka_ci_low"]).all() and (table["cka_ci_high"] <= 1.0).all()
    assert (table["cka_ci_low"] <= table["cka"]).all() and (table["cka"] <= table["cka_ci_high"]).all()
    assert (table["cka_se"] >= 0).all()  # inf where leaving a row out leaves CKA undefined
    np.testing.assert_array_equal(table["cka"], cka.layerwise_cka(X, Y, debiased=debiased).numpy())


def llm_like(n, d, seed):
    """Activations like an LLM's: nonzero mean, a few outlier channels of 1e3-1e4, CKA close to 1."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d), dtype=np.float32) + 3.0
    X[:, :4] *= np.array([1e3, 3e3, 1e4, 5e3], dtype=np.float32)
    Y = X + (0.01 * rng.standard_normal((n, d), dtype=np.float32)) * np.abs(X).mean(0)
    return X, Y


@pytest.mark.slow
def test_precision_on_llm_like_activations():
    """60k rows x 512 dims with outlier channels, streamed in 8 chunks: within 1e-7 of a float64
    numpy reference (the float64 reference is most of this test's time: 100k x 1024 took 20 s)."""
    X, Y = llm_like(60_000, 512, seed=0)
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    X64 -= X64.mean(0)
    Y64 -= Y64.mean(0)
    ref = np.linalg.norm(X64.T @ Y64) ** 2 / (np.linalg.norm(X64.T @ X64) * np.linalg.norm(Y64.T @ Y64))
    del X64, Y64
    assert 0.99 < ref < 1.0
    s = cka.StreamingCKA()  # fp32 products, float64 accumulation
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    for i in range(0, len(X), 8192):
        s.update(Xt[None, i : i + 8192], Yt[None, i : i + 8192])
    assert abs(s.compute().item() - ref) < 1e-7
    assert (
        abs(
            cka.linear_cka(X[:20_000], Y[:20_000])
            - cka_reference(X[:20_000].astype(np.float64), Y[:20_000].astype(np.float64), False)
        )
        < 1e-10
    )


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matrix_symmetric_blocks_match_pairwise(debiased):
    """n = 500 with 7 uneven row blocks (upper-triangular Gram blocks, off-diagonal ones scaled)."""
    rng = np.random.default_rng(9)
    base = rng.standard_normal((500, 24))
    Xs = [base @ rng.standard_normal((24, 24)) + 3.0 for _ in range(2)]
    Ys = [base @ rng.standard_normal((24, 16)) + rng.standard_normal((500, 16)) for _ in range(3)]
    blocked = cka.cka_matrix(Xs, Ys, debiased=debiased, row_blocks=7)
    single = cka.cka_matrix(Xs, Ys, debiased=debiased, row_blocks=1)
    for i, X in enumerate(Xs):
        for j, Y in enumerate(Ys):
            assert blocked[i, j] == pytest.approx(cka.linear_cka(X, Y, debiased=debiased), abs=1e-6)
    np.testing.assert_allclose(blocked, single, atol=1e-7)
