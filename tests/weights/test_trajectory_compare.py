"""Trajectories, update comparisons and interpolation against planted answers."""

import json
import math

import pandas as pd
import pytest
import torch
from helpers import model_state, save_model, save_state

from prism_analysis.checkpoints.run_manifest import discover
from prism_analysis.weights.compare import compare_updates
from prism_analysis.weights.interpolate import interpolate, landscape
from prism_analysis.weights.overlap import OverlapStats
from prism_analysis.weights.trajectory import analyse_trajectory, first_step_reaching
from prism_cli import main

STEPS = [0, 10, 20, 40, 80, 160, 320]
TAU_DECAY = 60.0
R = 0.04  # planted relative change on the support at the end of the run (before the decay factor)


def f(t, T=STEPS[-1]):
    return 1 - math.exp(-t / TAU_DECAY)


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """theta_t = theta_0 + (1 - exp(-t / 60)) * D, D = R * |theta_0| on a 5% support of two tensors."""
    root = tmp_path_factory.mktemp("run")
    state, config = model_state("llama", dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    support = {}
    for name in ["model.layers.1.mlp.up_proj.weight", "model.layers.2.self_attn.v_proj.weight"]:
        mask = torch.rand(state[name].shape, generator=g) < 0.05
        mask &= state[name] != 0
        support[name] = mask
    D = {
        k: torch.where(
            support[k],
            R * state[k].abs() * torch.sign(torch.randn(state[k].shape, generator=g)),
            torch.zeros_like(state[k]),
        )
        if k in support
        else torch.zeros_like(v)
        for k, v in state.items()
    }
    steps = []
    for t in STEPS:
        theta = {k: v + f(t) * D[k] for k, v in state.items()}
        save_state(theta, root / f"step_{t:06d}", config)
        steps.append({"step": t, "path": f"step_{t:06d}", "tokens": 0, "loss": 0.0, "lr": 0.0, "time": 0.0})
    (root / "trajectory.json").write_text(json.dumps({"phase": "rl", "parent": None, "mix": "planted", "steps": steps}))
    n_support = sum(int(m.sum()) for m in support.values())
    numel = sum(v.numel() for v in state.values())
    norm0 = math.sqrt(sum(float((v**2).sum()) for v in state.values()))
    normD = math.sqrt(sum(float((d**2).sum()) for d in D.values()))
    return root, {"n_support": n_support, "numel": numel, "norm0": norm0, "normD": normD}


def test_planted_trajectory_matches_hand_computation(planted_run):
    root, k = planted_run
    traj = analyse_trajectory(root, progress=False, device="cpu")
    assert traj.steps == STEPS
    total_l2 = traj.series("total", "normalized_l2")
    for t, v in zip(STEPS, total_l2):
        assert v == pytest.approx(f(t) * k["normD"] / k["norm0"], rel=1e-9)
    # t50/t80 by hand: first saved step with f(t) >= 0.5 f(T) / 0.8 f(T)
    fT = f(STEPS[-1])
    t50 = next(t for t in STEPS if f(t) >= 0.5 * fT)
    t80 = next(t for t in STEPS if f(t) >= 0.8 * fT)
    s = traj.summary()
    assert (s["total"]["t50"], s["total"]["t80"]) == (t50, t80) == (80, 160)
    # fraction changed at 1%: the whole support once f(t) * R > 1%, i.e. f(t) > 0.25, else nothing
    frac = traj.series("total", "fraction_changed_0.01")
    for t, v in zip(STEPS, frac):
        assert v == (k["n_support"] / k["numel"] if f(t) * R > 0.01 else 0.0), t
    share = traj.series("total", "share_of_final_changed")
    assert share[-1] == 1.0 and share[1] == 0.0 and share[3] == 1.0
    cos = traj.series("total", "cosine_to_final")
    assert all(c == pytest.approx(1.0, abs=1e-12) for c in cos[1:])
    # untouched components stay at zero; the planted ones carry the update
    comp = s["components"]
    assert comp["attn_q"]["final_normalized_l2"] == 0.0 and comp["mlp_up"]["final_normalized_l2"] > 0


def test_first_step_reaching():
    assert first_step_reaching([0, 1, 2, 3], [0.0, 0.6, 0.9, 1.0], 0.5) == 1
    assert first_step_reaching([0, 1, 2, 3], [0.0, 0.6, 0.9, 1.0], 0.8) == 2
    assert first_step_reaching([0, 5], [0.0, 0.0], 0.5) == 0


def test_discovery_of_step_directories_and_lists(planted_run, tmp):
    root, _ = planted_run
    found = discover(root)
    assert [s for s, _ in found] == STEPS
    # a plain directory of checkpoint-N dirs, no manifest
    for t in (0, 5, 50):
        state, config = model_state("llama", seed=0)
        save_state(state, tmp / "plain" / f"checkpoint-{t}", config)
    assert [s for s, _ in discover(tmp / "plain")] == [0, 5, 50]
    paths = [tmp / "plain" / f"checkpoint-{t}" for t in (50, 0, 5)]
    assert [s for s, _ in discover(paths)] == [0, 5, 50]


def test_trajectory_cli_with_compare(planted_run, tmp, capsys):
    root, _ = planted_run
    out = tmp / "traj"
    assert main(["trajectory", str(root), "--compare", str(root), "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    df = pd.read_csv(out / "trajectory.csv")
    assert list(df.columns) == ["step", "component", "metric", "value"]
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == STEPS and s["total"]["t50"] == 80 and s["total"]["t80"] == 160
    assert {"final_normalized_l2", "final_fraction_changed"} <= set(s["total"])
    assert s["compare"]["total"]["t50"] == 80
    assert (out / "trajectory.png").is_file() and (out / "trajectory_compare.csv").is_file()
    assert "t50" in capsys.readouterr().out


def test_run_is_named_after_its_directory_not_a_tensor(planted_run, tmp, capsys):
    root, _ = planted_run
    assert analyse_trajectory(root, progress=False, device="cpu").name == root.name
    out = tmp / "named"
    assert main(["trajectory", str(root), "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    assert json.loads((out / "summary.json").read_text())["name"] == root.name
    assert capsys.readouterr().out.startswith(f"{root.name}: steps")


def test_trajectory_reads_each_checkpoint_once(planted_run, monkeypatch):
    from prism_analysis.checkpoints import local as ck

    root, _ = planted_run
    reads = []
    original = ck.Checkpoint.get
    monkeypatch.setattr(
        ck.Checkpoint, "get", lambda self, name: reads.append((str(self.path), name)) or original(self, name)
    )
    analyse_trajectory(root, progress=False, device="cpu")
    assert len(reads) == len(set(reads))  # no tensor of any checkpoint read twice
    assert len(reads) == len(STEPS) * len(model_state("llama")[0])


@pytest.mark.parametrize("case", ["missing_step", "mixed_arch", "corrupt_middle"])
def test_trajectory_bad_input(planted_run, tmp, capsys, case):
    import shutil

    root, _ = planted_run
    run = tmp / "bad_run"
    shutil.copytree(root, run)
    if case == "missing_step":
        shutil.rmtree(run / "step_000040")
        expected = "step 40"
    elif case == "mixed_arch":
        shutil.rmtree(run / "step_000040")
        state, config = model_state("nemotron_h")
        save_state(state, run / "step_000040", config)
        expected = "different architectures"
    else:
        f = run / "step_000040" / "model.safetensors"
        f.write_bytes(f.read_bytes()[:5000])
        expected = "step_000040"
    out = tmp / "out"
    capsys.readouterr()
    assert main(["trajectory", str(run), "--out", str(out), "--quiet", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prism: error:") and expected in err and "\n" not in err, err
    assert not out.exists()


def test_overlap_stats_planted_cosine_and_masks():
    n = 10_000
    a = torch.ones(n, dtype=torch.float64) * 2.0
    m1 = torch.zeros(n, dtype=torch.bool)
    m2 = torch.zeros(n, dtype=torch.bool)
    m1[:1000] = True  # |M1| = 1000
    m2[500:2500] = True  # |M2| = 2000, |M1 & M2| = 500
    d1 = torch.where(m1, 0.125, 0.0).double()  # dyadic: a + d - a == d exactly
    d2 = torch.where(m2, 0.125, 0.0).double()
    d2[500:750] = -0.125  # half of the shared support points the other way
    s = OverlapStats(0.01).update(a, a + d1, a, a + d2).compute()
    assert s["jaccard"] == 500 / 2500
    assert s["jaccard_chance"] == pytest.approx((1000 * 2000 / n) / (3000 - 1000 * 2000 / n))
    assert s["overlap_2_in_1"] == 0.5 and s["overlap_1_in_2"] == 0.25
    # <d1, d2> = 0.125^2 * (250 - 250) = 0: orthogonal despite sharing support
    assert s["cosine"] == 0.0
    d2[500:750] = 0.125
    s = OverlapStats(0.01).update(a, a + d1, a, a + d2).compute()
    assert s["cosine"] == pytest.approx(500 / math.sqrt(1000 * 2000), rel=1e-15)


def test_compare_updates_end_to_end(tmp, capsys):
    state, config = model_state("llama", dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    name = "model.layers.0.mlp.down_proj.weight"
    base = state
    u = 0.05 * torch.randn(state[name].shape, generator=g, dtype=torch.float64) * state[name]
    v = 0.05 * torch.randn(state[name].shape, generator=g, dtype=torch.float64) * state[name]
    b1 = dict(base, **{name: base[name] + u})
    b2 = dict(base, **{name: base[name] + 0.6 * u + 0.8 * v})  # cosine ~ 0.6 by construction
    for n_, st in (("a", base), ("b1", b1), ("b2", b2)):
        save_state(st, tmp / n_, config)
    res = compare_updates(tmp / "a", tmp / "b1", tmp / "a", tmp / "b2", progress=False, device="cpu")
    total = res.summary()["total"]
    expected = float((u * (0.6 * u + 0.8 * v)).sum() / (u.norm() * (0.6 * u + 0.8 * v).norm()))
    assert total["cosine"] == pytest.approx(expected, rel=1e-12)
    assert 0.5 < total["cosine"] < 0.7
    comp = res.summary()["components"]["mlp_down"]
    assert comp["cosine"] == pytest.approx(expected, rel=1e-12)
    assert math.isnan(res.summary()["components"]["attn_q"]["cosine"])  # no update there: undefined, not 0
    out = tmp / "cmp"
    assert (
        main(
            [
                "compare",
                str(tmp / "a"),
                str(tmp / "b1"),
                str(tmp / "a"),
                str(tmp / "b2"),
                "--out",
                str(out),
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    s = json.loads((out / "summary.json").read_text())
    for key in (
        "cosine",
        "normalized_l2_1",
        "normalized_l2_2",
        "fraction_changed_1",
        "fraction_changed_2",
        "jaccard",
        "jaccard_chance",
    ):
        assert key in s["total"] and key in s["components"]["mlp_down"]
    assert (out / "compare.csv").is_file() and (out / "compare_components.png").is_file()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_interpolation_corners_are_bit_exact_and_loadable(tmp, dtype):
    from transformers import AutoModelForCausalLM

    paths = [
        save_model(tmp / n, "llama", seed=0, perturb=p, dtype=dtype)
        for n, p in (("base", 0), ("mid", 0.2), ("rl", 0.25))
    ]
    from safetensors.torch import load_file

    ref = [load_file(p / "model.safetensors") for p in paths]
    for (a, b), expect in (((0, 0), 0), ((1, 0), 1), ((1, 1), 2)):
        out = interpolate(*paths, a, b, tmp / f"w_{a}_{b}", shard_bytes=400_000)
        model = AutoModelForCausalLM.from_pretrained(out)
        got = model.state_dict()
        for k, v in ref[expect].items():
            assert got[k].dtype == dtype and torch.equal(got[k], v), (a, b, k)
        assert (out / "tokenizer.json").is_file() and (out / "model.safetensors.index.json").is_file()
    half = interpolate(*paths, 0.5, 0.0, tmp / "half")
    w = load_file(half / "model.safetensors")
    k = "model.layers.0.mlp.up_proj.weight"
    mid_point = (ref[0][k].double() + ref[1][k].double()) / 2
    assert torch.allclose(w[k].double(), mid_point, rtol=2**-7 if dtype == torch.bfloat16 else 1e-6)


def test_landscape_and_figure(tmp):
    from prism_analysis.figures import plot_landscape

    paths = [save_model(tmp / n, "llama", seed=0, perturb=p) for n, p in (("base", 0), ("mid", 0.2), ("rl", 0.3))]
    from safetensors.torch import load_file

    k = "model.layers.0.mlp.up_proj.weight"
    w = [load_file(p / "model.safetensors")[k].double() for p in paths]

    def score(ckpt):  # a scoring function with a known answer: distance from base along the update
        x = load_file(ckpt / "model.safetensors")[k].double()
        return float((x - w[0]).norm())

    df = landscape(*paths, score, grid_a=[0, 1], grid_b=[0, 1], progress=False)
    assert set(df["kind"]) == {"path", "grid"}
    g = df[df["kind"] == "grid"].set_index(["a", "b"])["score"]
    assert g.loc[(0, 0)] == 0.0
    assert g.loc[(1, 0)] == pytest.approx(float((w[1] - w[0]).norm()), rel=1e-6)
    assert g.loc[(1, 1)] == pytest.approx(float((w[2] - w[0]).norm()), rel=1e-6)
    plot_landscape(df, tmp / "f13", score_label="distance")
    assert (tmp / "f13.png").is_file()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_overlap_fused_and_torch_paths_agree(dtype, monkeypatch):
    from prism_analysis.weights import fused
    from prism_analysis.weights import update as weights

    monkeypatch.setattr(weights, "FUSED_MIN_NUMEL", 0)
    calls = []
    original = fused.overlap_stats
    monkeypatch.setattr(fused, "overlap_stats", lambda *a: calls.append(1) or original(*a))
    g = torch.Generator().manual_seed(7)
    n = 150_001
    a1 = torch.randn(n, generator=g).to(dtype)
    a2 = torch.randn(n, generator=g).to(dtype)
    b1 = (a1.double() * (1 + 0.02 * torch.randn(n, generator=g))).to(dtype)
    b2 = (a2.double() * (1 + 0.02 * torch.randn(n, generator=g))).to(dtype)
    a1[:20] = 0
    b1[10:30] = float("nan")
    results = []
    for fused_on in (True, False):
        monkeypatch.setattr(weights, "USE_FUSED", fused_on)
        results.append(OverlapStats(0.01).update(a1, b1, a2, b2))
    f, t = results
    assert calls == [1], "the fused kernel ran once, for the fused path only"
    assert (f.n1, f.n2, f.n12) == (t.n1, t.n2, t.n12)
    assert f.dot == pytest.approx(t.dot, rel=1e-12) and f.sq1 == pytest.approx(t.sq1, rel=1e-12)
    # independent float64 reference; a NaN element is changed unless bitwise equal (metrics.py)
    d1 = b1.double() - a1.double()
    d2 = b2.double() - a2.double()
    m1 = (d1.abs() > 0.01 * a1.double().abs()) | ~torch.isfinite(d1)
    m2 = (d2.abs() > 0.01 * a2.double().abs()) | ~torch.isfinite(d2)
    assert f.n12 == int((m1 & m2).sum()) and f.n1 == int(m1.sum())
    ok = torch.isfinite(d1) & torch.isfinite(d2)
    assert f.dot == pytest.approx(float((d1[ok] * d2[ok]).sum()), rel=1e-12)
