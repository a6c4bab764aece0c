"""The similarity suite (prism_analysis.representations.similarity, `prism cka --measure`) against references written
here: numpy loops for mutual kNN and CKNNA (platonic-rep's definitions), scipy's
orthogonal_procrustes and spearmanr/pdist, a covariance-whitening CCA for SVCCA, planted answers."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import PROSE, save_model
from hypothesis import given, settings
from hypothesis import strategies as st

from prism_analysis.representations.cka import linear_cka
from prism_analysis.representations.similarity import (
    MEASURES,
    calibrate,
    cknna,
    measure,
    mutual_knn,
    permutation_null,
    procrustes_distance,
    rsa,
    similarity_table,
    svcca,
)
from prism_cli import main

scipy_linalg = pytest.importorskip("scipy.linalg")
scipy_stats = pytest.importorskip("scipy.stats")
scipy_distance = pytest.importorskip("scipy.spatial.distance")


def data(seed=0, n=40, d1=12, d2=9, noise=0.5):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d1))
    Y = X @ rng.standard_normal((d1, d2)) + noise * rng.standard_normal((n, d2))
    return X, Y


# -- references ----------------------------------------------------------------------------------------
def knn_sets(X, k):
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    S = Xn @ Xn.T
    out = []
    for i in range(len(X)):
        others = [j for j in np.argsort(-S[i], kind="stable") if j != i]
        out.append(set(others[:k]))
    return out, S


def mutual_knn_reference(X, Y, k):
    a, _ = knn_sets(X, k)
    b, _ = knn_sets(Y, k)
    return np.mean([len(a[i] & b[i]) / k for i in range(len(X))])


def hsic_unbiased_reference(K, L):
    """Song et al. 2012 Eq. 5, term by term with loops over i != j."""
    n = len(K)
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0)
    np.fill_diagonal(Lt, 0)
    trace = sum(Kt[i, j] * Lt[j, i] for i in range(n) for j in range(n))
    ones = Kt.sum() * Lt.sum() / ((n - 1) * (n - 2))
    cross = sum((Kt @ Lt)[i, j] for i in range(n) for j in range(n))
    return (trace + ones - 2 * cross / (n - 2)) / (n * (n - 3))


def cknna_reference(X, Y, k):
    a, K = knn_sets(X, k)
    b, L = knn_sets(Y, k)
    n = len(X)
    mask = lambda sets: np.array([[1.0 if j in sets[i] else 0.0 for j in range(n)] for i in range(n)])  # noqa: E731
    MA, MB = mask(a), mask(b)
    kl = hsic_unbiased_reference(MA * MB * K, MA * MB * L)
    kk = hsic_unbiased_reference(MA * K, MA * K)
    ll = hsic_unbiased_reference(MB * L, MB * L)
    return kl / math.sqrt(kk * ll)


def svcca_reference(X, Y, k):
    """SVD-reduce each side to its top-k directions, then CCA by whitening the covariances."""

    def reduce(Z):
        Zc = Z - Z.mean(0)
        Vt = np.linalg.svd(Zc, full_matrices=False)[2]
        return Zc @ Vt[:k].T

    A, B = reduce(X), reduce(Y)

    def inv_sqrt(C):
        w, V = np.linalg.eigh(C)
        return V @ np.diag(w**-0.5) @ V.T

    M = inv_sqrt(A.T @ A) @ (A.T @ B) @ inv_sqrt(B.T @ B)
    return np.linalg.svd(M, compute_uv=False).mean()


def procrustes_reference(X, Y):
    A, B = X - X.mean(0), Y - Y.mean(0)
    A, B = A / np.linalg.norm(A), B / np.linalg.norm(B)
    width = max(A.shape[1], B.shape[1])
    A = np.pad(A, ((0, 0), (0, width - A.shape[1])))
    B = np.pad(B, ((0, 0), (0, width - B.shape[1])))
    _, scale = scipy_linalg.orthogonal_procrustes(A, B)  # scale = nuclear norm of A^T B
    return math.acos(min(scale, 1.0))


def rsa_reference(X, Y):
    """scipy's Spearman of scipy's condensed correlation distances (equal to 12 decimals: tied)."""
    dx, dy = (np.round(scipy_distance.pdist(Z, "correlation"), 12) for Z in (X, Y))
    return scipy_stats.spearmanr(dx, dy)[0]


# -- each measure against its reference ------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_measures_match_independent_references(seed):
    X, Y = data(seed)
    assert mutual_knn(X, Y, k=5) == pytest.approx(mutual_knn_reference(X, Y, 5), abs=1e-12)
    assert cknna(X, Y, k=5) == pytest.approx(cknna_reference(X, Y, 5), rel=1e-9)
    assert procrustes_distance(X, Y) == pytest.approx(procrustes_reference(X, Y), abs=1e-10)
    assert svcca(X, Y, k=4) == pytest.approx(svcca_reference(X, Y, 4), rel=1e-9)
    assert rsa(X, Y) == pytest.approx(rsa_reference(X, Y), abs=1e-12)
    assert measure("cka", X, Y) == pytest.approx(linear_cka(X, Y), rel=1e-12)


def test_rsa_ranks_ties_as_scipy_does():
    rng = np.random.default_rng(3)
    X = rng.integers(0, 3, size=(15, 4)).astype(float) + np.arange(4)  # many tied distances
    Y = rng.integers(0, 3, size=(15, 5)).astype(float) + np.arange(5)
    assert rsa(X, Y) == pytest.approx(rsa_reference(X, Y), abs=1e-12)


def test_identical_inputs_give_perfect_scores_and_torch_equals_numpy():
    X, _ = data(2, d1=30)
    for name, m in MEASURES.items():
        assert measure(name, X, X.copy(), k=5) == pytest.approx(m.perfect, abs=1e-9), name
        Y = data(4)[1]
        assert measure(name, torch.from_numpy(X).float(), torch.from_numpy(Y)) == pytest.approx(
            measure(name, X.astype(np.float32), Y), abs=1e-12
        )


def test_orthogonal_map_scale_and_shift_leave_procrustes_at_zero():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((50, 8))
    Q = np.linalg.qr(rng.standard_normal((8, 8)))[0]
    assert procrustes_distance(X, 3.0 * X @ Q + 7.0) == pytest.approx(0, abs=1e-7)
    assert procrustes_distance(X, rng.standard_normal((50, 8))) > 0.5


@pytest.mark.parametrize("degrees", [0.01, 10.0, 45.0, 80.0])
def test_procrustes_recovers_a_planted_angle(degrees):
    """Y = cos(t) X + sin(t) Z with Z centred, of X's norm and X^T Z = 0: the distance is t."""
    rng = np.random.default_rng(6)
    n, d = 40, 5
    Q = np.linalg.qr(np.hstack([np.ones((n, 1)), rng.standard_normal((n, 2 * d))]))[0][:, 1:]  # centred columns
    D = np.diag(rng.uniform(0.5, 2.0, d))
    X, Z = Q[:, :d] @ D, Q[:, d:] @ D
    t = math.radians(degrees)
    assert math.degrees(procrustes_distance(X, math.cos(t) * X + math.sin(t) * Z)) == pytest.approx(degrees, abs=1e-6)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(12, 30), d=st.integers(2, 10))
def test_symmetry_and_orthogonal_invariance(seed, n, d):
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((n, d)), rng.standard_normal((n, d + 1))
    Q = np.linalg.qr(rng.standard_normal((d + 1, d + 1)))[0]
    for name in MEASURES:
        xy = measure(name, X, Y, k=3, svcca_k=2)
        if name != "cknna":  # platonic-rep's CKNNA: 1'K~L~1 of row-masked Grams is not symmetric in K, L
            assert measure(name, Y, X, k=3, svcca_k=2) == pytest.approx(xy, abs=1e-9), name
        if name != "rsa":  # correlation distance centres each row: not rotation invariant
            assert measure(name, X, Y @ Q, k=3, svcca_k=2) == pytest.approx(xy, abs=1e-7), name


# -- calibration -------------------------------------------------------------------------------------
def test_permutation_null_equals_recomputing_on_shuffled_rows():
    X, Y = data(7, n=25)
    rng = np.random.default_rng(0)
    perms = [rng.permutation(25) for _ in range(4)]
    for name in MEASURES:
        obs, null = permutation_null(name, X, Y, perms, k=4, svcca_k=3)
        assert obs == pytest.approx(measure(name, X, Y, k=4, svcca_k=3), abs=1e-12)
        direct = [measure(name, X, Y[p], k=4, svcca_k=3) for p in perms]
        np.testing.assert_allclose(null, direct, atol=1e-10, err_msg=name)


def test_calibration_p_value_and_corrected_score():
    null = np.array([0.1, 0.2, 0.3, 0.5])
    c = calibrate("cka", 0.3, null)
    assert c["p_value"] == pytest.approx((1 + 2) / 5)  # 0.3 and 0.5 are at least as similar
    assert c["null_mean"] == pytest.approx(0.275)
    assert c["corrected"] == pytest.approx((0.3 - 0.275) / (1 - 0.275))
    d = calibrate("procrustes", 0.2, np.array([1.0, 1.2, 0.1]))  # a distance: smaller is more similar
    assert d["p_value"] == pytest.approx(2 / 4)
    assert d["corrected"] == pytest.approx((0.2 - 0.7666666666666666) / (0 - 0.7666666666666666))


def test_table_related_layers_are_significant_and_unrelated_ones_are_at_chance():
    rng = np.random.default_rng(8)
    n = 40
    X = rng.standard_normal((2, n, 10))
    Y = np.stack(
        [X[0] @ rng.standard_normal((10, 10)) + 0.1 * rng.standard_normal((n, 10)), rng.standard_normal((n, 10))]
    )
    df = similarity_table(X, Y, k=5, svcca_k=4, permutations=49, bootstrap=4, seed=1)
    for name in MEASURES:
        assert df.loc[0, f"{name}_p_value"] == pytest.approx(1 / 50), name
        assert df.loc[0, f"{name}_corrected"] > 0.3, name
        assert abs(df.loc[1, f"{name}_corrected"]) < 0.5 and df.loc[1, f"{name}_p_value"] > 0.01, name
        low, high = df.loc[0, f"{name}_resample_ci_low"], df.loc[0, f"{name}_resample_ci_high"]
        assert low <= df.loc[0, f"{name}_resample_mean"] <= high
    again = similarity_table(X, Y, k=5, svcca_k=4, permutations=49, bootstrap=4, seed=1)
    pd.testing.assert_frame_equal(df, again)  # seeded
    with pytest.raises(ValueError, match="k=30"):
        similarity_table(X, Y, measures=("mutual_knn",), k=30, permutations=2, bootstrap=2)


# -- the command -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    save_model(root / "base", "llama", seed=0)
    save_model(root / "near", "llama", seed=0, perturb=0.05)
    prompts = [f"{t} That was example {i}." for i, t in enumerate(PROSE)]
    (root / "wiki.txt").write_text("\n".join(prompts[:16]) + "\n")
    return root


@pytest.mark.slow
def test_cli_cka_measure_writes_the_calibrated_table_and_figure(models, capsys):
    """(Without --measure no similarity.csv is written: tests/test_model_cka.py checks the plain outputs.)"""
    out = models / "out"
    args = ["cka", str(models / "base"), str(models / "near"), "--probe", str(models / "wiki.txt")]
    opts = ["--out", str(out), "--quiet", "--device", "cpu", "--knn-k", "3", "--permutations", "19"]
    assert main([*args, *opts, "--bootstrap", "3", "--measure", "cka,mutual_knn,cknna,procrustes,svcca,rsa"]) == 0
    assert "corrected" in capsys.readouterr().out
    sim = pd.read_csv(out / "similarity.csv")
    assert len(sim) == 5 and set(sim["probe"]) == {"wiki"}  # embedding + 4 blocks
    for name in MEASURES:
        assert {name, f"{name}_null_mean", f"{name}_p_value", f"{name}_corrected", f"{name}_resample_ci_low"} <= set(
            sim.columns
        )
        assert (sim[f"{name}_p_value"] == 1 / 20).all(), name  # a small perturbation: far above chance
    cka = pd.read_csv(out / "cka.csv")
    np.testing.assert_allclose(sim["cka"], cka["cka"], rtol=1e-9)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["_similarity"]["wiki"]) == set(MEASURES)
    assert (out / "similarity_by_layer.png").is_file()
    from prism_analysis.figures import plot_similarity  # redrawn from the saved table alone

    plot_similarity(sim, models / "redrawn")
    assert (models / "redrawn.pdf").is_file()
    assert main([*args, "--measure", "cka,nope"]) == 2
    assert "--measure: unknown measure nope" in capsys.readouterr().err
