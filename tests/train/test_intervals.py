"""Wilson intervals against scipy's, the paired bootstrap against the normal closed form and planted
differences, and the study scheduler's dependency order and error handling."""

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from prism_analysis.errors import PrismError
from prism_train.intervals import MACRO_WEIGHTS, _resample_means, paired_bootstrap, wilson
from prism_train.schedule import Job, run_jobs


@pytest.mark.parametrize("k,n", [(0, 1), (0, 200), (1, 200), (37, 200), (100, 200), (199, 200), (200, 200), (3, 7)])
def test_wilson_matches_scipy(k, n):
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)
    assert 0 <= lo <= k / n <= hi <= 1


@given(st.integers(1, 10**6), st.floats(0, 1))
def test_wilson_contains_the_estimate_exactly(n, share):
    """Found by the 1000-problem study: wilson(0, 1000) gave a lower bound of 2e-19 > 0, a negative
    error bar, and a crashed report."""
    k = round(share * n)
    lo, hi = wilson(k, n)
    assert 0 <= lo <= k / n <= hi <= 1
    assert (lo == 0) == (k == 0) and (hi == 1) == (k == n)


def test_wilson_rejects_bad_counts():
    for k, n in [(1, 0), (-1, 5), (6, 5)]:
        with pytest.raises(ValueError):
            wilson(k, n)


def test_paired_bootstrap_matches_the_normal_interval_of_the_mean_difference():
    rng = np.random.default_rng(1)
    n = 1000
    a = (rng.random(n) < 0.6).astype(int)
    b = np.where(rng.random(n) < 0.8, a, 1 - a)  # correlated with a, as two checkpoints of one model are
    r = paired_bootstrap({"x": a}, {"x": b}, {"x": 1.0}, resamples=10_000, seed=3)
    d = (a - b).astype(np.float64)
    se = d.std(ddof=0) / math.sqrt(n)  # the bootstrap's standard error is the plug-in one
    assert r["diff"] == pytest.approx(d.mean(), abs=1e-15)
    assert r["lo"] == pytest.approx(d.mean() - 1.959964 * se, abs=0.15 * se)
    assert r["hi"] == pytest.approx(d.mean() + 1.959964 * se, abs=0.15 * se)
    # the paired interval is narrower than the unpaired one (the models agree on most problems)
    unpaired_se = math.sqrt(a.var() / n + b.var() / n)
    assert r["hi"] - r["lo"] < 0.8 * 2 * 1.959964 * unpaired_se


@given(st.lists(st.integers(-3, 3), min_size=1, max_size=60), st.booleans(), st.integers(0, 2**32 - 1))
def test_resample_means_equal_numpys_mean_bit_for_bit(values, fractional, seed):
    """The int8 fast path of integer score differences gives numpy's float64 means exactly (the
    committed report's intervals do not move); other scores take numpy's path."""
    d = np.asarray(values, dtype=np.float64) + (0.1 if fractional else 0.0)
    idx = np.random.default_rng(seed).integers(0, len(d), size=(50, len(d)))
    assert np.array_equal(_resample_means(d, idx), d[idx].mean(axis=1))


def test_paired_bootstrap_planted_differences():
    n = 200
    same = {k: [1, 0] * (n // 2) for k in MACRO_WEIGHTS}
    r = paired_bootstrap(same, same, MACRO_WEIGHTS, resamples=500)
    assert (r["diff"], r["lo"], r["hi"], r["excludes_zero"]) == (0.0, 0.0, 0.0, False)
    # A solves 30 more science problems than B, the rest identical: +15 points science, +5 macro
    rng = np.random.default_rng(0)
    b = {k: (rng.random(n) < 0.3).astype(int) for k in MACRO_WEIGHTS}
    a = {k: v.copy() for k, v in b.items()}
    zeros = np.flatnonzero(a["science"] == 0)[:30]
    a["science"][zeros] = 1
    r = paired_bootstrap(a, b, MACRO_WEIGHTS, resamples=4000)
    assert r["diff"] == pytest.approx(30 / n / 3)
    assert r["excludes_zero"] and 0 < r["lo"] < r["diff"] < r["hi"]
    # weights: the macro difference is a third of the science one
    s = paired_bootstrap(a, b, {"science": 1.0}, resamples=4000)
    assert s["diff"] == pytest.approx(3 * r["diff"])
    with pytest.raises(ValueError, match="same"):
        paired_bootstrap({"x": [1, 0]}, {"x": [1]}, {"x": 1.0})


def _append(path, text):
    with open(path, "a") as f:
        f.write(text + "\n")


def _fail(message):
    raise PrismError(message)


def _threads(path):
    """What a job sees: torch's threads, and numba's (the fused kernels of RL's live tracking)."""
    import numba
    import torch

    Path(path).write_text(f"{torch.get_num_threads()} {numba.get_num_threads()}")


def test_a_job_runs_on_one_thread_in_torch_and_in_numba(tmp):
    """Two one-thread workers on a 2-core machine: a job whose numba kernels took every core
    oversubscribed it (RL runs 1.6x slower in the study)."""
    run_jobs([Job("t", _threads, {"path": tmp / "t.txt"})], workers=2, threads=1, log=lambda *a: None)
    assert (tmp / "t.txt").read_text() == "1 1"


def test_run_jobs_respects_dependencies_in_parallel_processes(tmp):
    log = tmp / "order.txt"
    jobs = [
        Job("c", _append, {"path": log, "text": "c"}, after=("a",)),
        Job("a", _append, {"path": log, "text": "a"}),
        Job("b", _append, {"path": log, "text": "b"}),
        Job("x", _fail, {"message": "planted failure"}, after=("c",)),
        Job("never", _append, {"path": log, "text": "never"}, after=("x",)),
    ]
    with pytest.raises(PrismError, match="planted failure"):
        run_jobs(jobs, workers=2, log=lambda *a: None)
    order = log.read_text().split()
    assert sorted(order) == ["a", "b", "c"] and order.index("a") < order.index("c")  # "never" never ran
    with pytest.raises(ValueError, match="depend"):
        run_jobs([Job("x", _append, {}, after=("nowhere",))], workers=2)
    serial = tmp / "serial.txt"
    times = run_jobs([Job("s", _append, {"path": serial, "text": "s"})], workers=1, log=lambda *a: None)
    assert serial.read_text() == "s\n" and set(times) == {"s"}
