"""The miniature study end to end on the smoke preset, its caching and errors, and the notebooks."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from prism_analysis.errors import PrismError
from prism_cli import main
from prism_train.intervals import wilson
from prism_train.study import Study, reproduce
from prism_train.study.design import MODELS, RLS


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "smoke"
    reproduce(out, "smoke", progress=False, log=lambda *a: None)
    return out


@pytest.mark.slow
def test_smoke_study_artefacts_exist_and_parse(smoke_run):
    s = json.loads((smoke_run / "summary.json").read_text())
    assert set(s["models"]) == set(MODELS)
    for m in s["models"].values():
        assert {"path", "math_easy", "math_hard", "code", "science", "macro", "general_ppl"} <= set(m)
        for b in ("math_easy", "math_hard", "code", "science", "math", "macro"):
            assert 0 <= m[f"{b}_lo"] <= m[b] <= m[f"{b}_hi"] <= 1
    # every accuracy comes from per-problem scores, and its interval is the Wilson one of those scores
    ev = json.loads((smoke_run / "eval" / "mid_mcs.json").read_text())
    k, n = sum(ev["scores"]["code"]), len(ev["scores"]["code"])
    assert n == 3 and ev["code"] == k / n
    assert (s["models"]["mid_mcs"]["code_lo"], s["models"]["mid_mcs"]["code_hi"]) == pytest.approx(wilson(k, n))
    paired = [f for f in s["findings"] if f.get("test") == "paired bootstrap"]
    assert len(paired) >= 7 and all(f["ci95"][0] <= f["diff"] <= f["ci95"][1] for f in paired)
    assert all(f["reproduced"] <= (f["ci95"][0] > 0) for f in paired if "interval above 0" in f["ours"])
    assert "paired bootstrap" in s["intervals"] and {"pretrain", "mid", "rl", "eval", "analyse"} <= set(
        s["stage_seconds"]
    )
    # RL and evaluation ran in the mid-trainings' batch of jobs: no time of their own, every job's listed
    t = s["stage_seconds"]
    assert t["mid"] > 0 and t["rl"] == t["eval"] == 0 and all(f"eval/{m}" in t for m in MODELS)
    assert [r["run"] for r in s["rl_reward"]] == sorted(RLS)
    # checkpoints are bf16, as PRISM's
    weights = load_file(smoke_run / "models" / "rl_mid_mcs" / "step_000002" / "model.safetensors")
    assert all(v.dtype == torch.bfloat16 for v in weights.values())
    assert "base->mid_mcs" in s["audits"] and "0.01" in s["audits"]["base->mid_mcs"]["fraction_changed"]
    assert {"base_vs_mid_mcs", "mid_mcs_vs_rl_mid_mcs"} <= set(s["cka"])
    for probes in s["cka"].values():
        assert set(probes) == {"pretraining_text", "midtraining_text", "rl_prompts"}
        assert all({"min_cka", "argmin_layer"} <= set(v) for v in probes.values())
    assert set(s["diff"]) == {"base->mid_mcs", "mid_mcs->rl_mid_mcs"}
    for pair in s["diff"].values():  # activation-level diff per benchmark, heads from the pair's audit
        assert set(pair["benchmarks"]) == {"math_easy", "math_hard", "code", "science"}
        for v in pair["benchmarks"].values():
            assert 0 <= v["mean_kl_ci_low"] <= v["mean_kl"] <= v["mean_kl_ci_high"] and 0 <= v["agreement"] <= 1
            assert v["n_layers"] == 2 and len(v["promoted"]) == 3
        assert len(pair["top_heads"]) == 5
    claims = [f["claim"] for f in s["findings"]]
    assert "RL keeps representations yet moves the outputs (CKA beside the output KL)" in claims
    assert "Mid-training moves the outputs far more than RL does" in claims
    assert {"t50", "t80"} <= set(s["trajectories"]["rl_mid_mcs"])
    assert all({"claim", "paper", "ours", "reproduced"} <= set(f) for f in s["findings"]) and len(s["findings"]) >= 10
    for fig in [
        "F11_base__mid_mcs",
        "F12_mc_vs_mcs",
        "F13_landscape",
        "F14_base__mid_mcs",
        "F16_rl_trajectory",
        "F26_rl_from_base_vs_mid",
        "F_rl_reward",
        "benchmarks",
        "diff_base__mid_mcs",
        "diff_mid_mcs__rl_mid_mcs",
    ]:
        assert (smoke_run / "figures" / f"{fig}.png").is_file() and (smoke_run / "figures" / f"{fig}.pdf").is_file()
    for t in [
        "T12_divergence",
        "T13_mc_vs_mcs",
        "T14_min_cka",
        "T22_threshold_sweep",
        "T23_components",
        "benchmarks",
        "rl_reward",
        "T_diff",
        "T_heads",
    ]:
        assert (smoke_run / "tables" / f"{t}.csv").is_file() and (smoke_run / "tables" / f"{t}.md").is_file()
    report = (smoke_run / "report.md").read_text()
    assert "| claim | paper | ours | reproduced |" in report


@pytest.mark.slow
def test_stages_are_cached_and_forced(smoke_run, tmp):
    run = tmp / "copy"
    shutil.copytree(smoke_run, run)
    logs = []
    Study(run, "smoke", progress=False, log=logs.append).run()
    assert sum(line.endswith(": cached") for line in logs) == 6
    logs.clear()
    before = (run / "models" / "base" / "trajectory.json").read_text()

    def evals():
        return {m: {**json.loads((run / "eval" / f"{m}.json").read_text()), "path": None} for m in MODELS}

    before_eval = evals()
    s = Study(run, "smoke", force=["eval", "report"], progress=False, log=logs.append).run()
    assert sum(line.endswith(": cached") for line in logs) == 4 and (run / "figures" / "F13_landscape.png").is_file()
    assert (run / "models" / "base" / "trajectory.json").read_text() == before
    # the evaluations alone, as their own batch: the same scores, and now a stage time of their own
    assert evals() == before_eval
    assert s["stage_seconds"]["eval"] > 0 and s["stage_seconds"]["rl"] == 0


@pytest.mark.slow
def test_bad_input(smoke_run, tmp, capsys):
    with pytest.raises(PrismError, match="different configuration"):
        Study(smoke_run, "tiny", progress=False, log=lambda *a: None).run()
    assert main(["reproduce", "--preset", "huge", "--out", str(tmp / "x"), "--quiet"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["reproduce", "--preset", "smoke", "--family", "gpt9", "--out", str(tmp / "y"), "--quiet"]) == 2
    assert main(["reproduce", "--preset", "smoke", "--force", "bogus", "--out", str(tmp / "z"), "--quiet"]) == 2
    (tmp / "ro").mkdir()
    (tmp / "ro" / "stranger.txt").write_text("not a study")
    assert main(["reproduce", "--preset", "smoke", "--out", str(tmp / "ro"), "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_unwritable_output_is_a_clear_error(tmp, capsys):
    (tmp / "a_file").write_text("x")
    assert main(["reproduce", "--preset", "smoke", "--out", str(tmp / "a_file" / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prism: error:") and "cannot write the run directory" in err and "\n" not in err
