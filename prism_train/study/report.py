"""Stage 6 of the study: figures, tables, summary.json and report.md, drawn from the saved tables
of RUN/analysis and RUN/eval only (so `make figures` redraws without retraining)."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from prism_analysis import figures
from prism_analysis.errors import PrismError
from prism_analysis.metrics import DEFAULT_THRESHOLD, threshold_key
from prism_analysis.outputs import staged_dir, write_json

from ..intervals import MACRO_WEIGHTS, MATH_WEIGHTS, paired_bootstrap, wilson
from .design import MODELS, STAGES

BENCHMARKS = tuple(MACRO_WEIGHTS)  # math_easy, math_hard, code, science (prism_train.evaluate)
#: resamples of every bootstrap interval in the report
BOOTSTRAP = 10_000
#: thresholds of the findings at this scale (each stated next to its number in the report)
CKA_KEPT = 0.99
MATH_LIFT = 0.20
BASE_GAIN = 0.05
INTERVALS = (
    "95% intervals: Wilson score interval for each benchmark accuracy; stratified percentile bootstrap "
    f"({BOOTSTRAP} resamples, problems resampled within each benchmark) for the math and macro averages; "
    "every 'A beats B' finding uses the paired bootstrap over the same problems and counts as reproduced "
    "only when its interval excludes zero (lies above it)"
)

#: the threshold PRISM reports (1 %), as keyed in summary.json
KEY = threshold_key(DEFAULT_THRESHOLD)


def markdown_table(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    def cell(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else format(v, floatfmt)
        return str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "| " + " | ".join("---" for _ in df.columns) + " |"
    rows = ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join([head, sep, *rows])


def _save_table(df: pd.DataFrame, tables: Path, name: str, title: str) -> str:
    df.to_csv(tables / f"{name}.csv", index=False)
    md = f"### {title}\n\n{markdown_table(df)}\n"
    (tables / f"{name}.md").write_text(md)
    return md


def _json(p: Path) -> dict:
    return json.loads(p.read_text())


def report(out: str | Path) -> dict:
    out = Path(out)
    an = out / "analysis"
    figs, tables = out / "figures", out / "tables"
    for d in (figs, tables):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    evals = {m: _json(out / "eval" / f"{m}.json") for m in MODELS}
    # a run evaluated by an older prism has no per-problem scores: no intervals, no paired tests
    scores = {m: e["scores"] for m, e in evals.items()} if all("scores" in e for e in evals.values()) else None
    results = pd.DataFrame([{"model": m, **with_intervals(e)} for m, e in evals.items()])
    mds = []
    # -- benchmarks -------------------------------------------------------------------------
    figures.plot_benchmarks(results, figs / "benchmarks")
    n = len(scores["base"]["math_easy"]) if scores else None
    shown = pd.DataFrame(
        {
            "model": results["model"],
            **{b: [_ci(r, b) for r in results.to_dict("records")] for b in (*BENCHMARKS, "macro")},
            "general_ppl": results["general_ppl"],
        }
    )
    results.drop(columns=["scores", "path", "distinct"], errors="ignore").to_csv(tables / "benchmarks.csv", index=False)
    distinct = evals["base"].get("distinct")  # older runs did not count them
    held_out = f"{n} held-out draws per benchmark" + (
        ", distinct problems " + ", ".join(f"{b} {d}" for b, d in distinct.items()) if distinct else ""
    )
    md = (
        f"### Benchmarks ({held_out}, greedy; accuracy [95% interval: Wilson per benchmark, "
        "stratified percentile bootstrap for the macro average]; perplexity on held-out prose)\n\n"
        if n
        else "### Benchmarks (accuracy, no intervals: this run kept no per-problem scores)\n\n"
    ) + f"{markdown_table(shown)}\n"
    (tables / "benchmarks.md").write_text(md)
    mds.append(md)
    # -- RL reward on the training distribution ----------------------------------------------
    rewards = {d.stem: pd.read_csv(d) for d in sorted((an / "rewards").glob("*.csv"))}
    if rewards:
        figures.plot_rewards(rewards, figs / "F_rl_reward")
        mds.append(_save_table(reward_summary(rewards), tables, "rl_reward", REWARD_TITLE))
    # -- audits: T12, T22, T23, F11 -----------------------------------------------------------
    audits = {d.name.replace("__", "->"): _json(d / "summary.json") for d in sorted((an / "audits").iterdir())}
    t12 = pd.DataFrame(
        [
            {
                "transition": k,
                "normalized_l2": s["total"]["normalized_l2"],
                "%changed@1%": 100 * s["total"]["fraction_changed"][KEY],
                "%bitwise_equal": 100 * s["total"]["fraction_equal"],
            }
            for k, s in audits.items()
        ]
    )
    mds.append(_save_table(t12, tables, "T12_divergence", "T12: divergence summary"))
    sweep_rows = []
    for k in ("base->mid_mcs", "mid_mcs->rl_mid_mcs", "base->rl_base"):
        fc = audits[k]["total"]["fraction_changed"]
        sweep_rows.append(
            {"transition": k, **{f"%unchanged@{100 * float(t):g}%": 100 * (1 - v) for t, v in fc.items()}}
        )
    mds.append(
        _save_table(
            pd.DataFrame(sweep_rows), tables, "T22_threshold_sweep", "T22: % of weights unchanged at each threshold"
        )
    )
    comps = sorted(
        set(audits["base->mid_mcs"]["components"]), key=lambda c: list(audits["base->mid_mcs"]["components"]).index(c)
    )
    t23 = pd.DataFrame(
        [
            {
                "component": c,
                **{
                    k: 100 * audits[k]["components"][c]["fraction_changed"][KEY]
                    for k in ("base->mid_mcs", "mid_mcs->rl_mid_mcs", "base->rl_base")
                },
            }
            for c in comps
        ]
    )
    mds.append(_save_table(t23, tables, "T23_components", "T23: % of weights changed at 1%, per component"))
    for k in ("base__mid_mcs", "mid_mcs__rl_mid_mcs"):
        d = an / "audits" / k
        figures.plot_audit(
            pd.read_csv(d / "layers.csv"),
            pd.read_csv(d / "components.csv"),
            figs / f"F11_{k}",
            title=k.replace("__", " -> "),
        )
    # -- comparisons: F12, T13, F26 -----------------------------------------------------------
    mc = pd.read_csv(an / "compare" / "mc_vs_mcs" / "compare.csv")
    figures.plot_compare(mc, figs / "F12_mc_vs_mcs", labels=("base->MC", "base->MCS"))
    mds.append(
        _save_table(
            mc[["group", "cosine", "normalized_l2_1", "normalized_l2_2", "jaccard", "jaccard_chance"]],
            tables,
            "T13_mc_vs_mcs",
            "T13: MC vs MCS mid-training updates (cosine, Eq. 2)",
        )
    )
    rs = pd.read_csv(an / "compare" / "rl_from_base_vs_mid" / "compare.csv")
    figures.plot_compare(rs, figs / "F26_rl_from_base_vs_mid", labels=("RL from base", "RL from mid"))
    mds.append(
        _save_table(
            rs[
                [
                    "group",
                    "fraction_changed_1",
                    "fraction_changed_2",
                    "fraction_changed_diff_pp",
                    "normalized_l2_1",
                    "normalized_l2_2",
                    "cosine",
                    "jaccard",
                    "jaccard_chance",
                ]
            ],
            tables,
            "F26_rl_start",
            "F26: RL from base (1) vs RL from mid (2)",
        )
    )
    # -- CKA: F14, T14 -------------------------------------------------------------------------
    t14 = []
    cka_summ = {}
    for d in sorted((an / "cka").iterdir()):
        df = pd.read_csv(d / "cka.csv")
        figures.plot_cka_layers(df, figs / f"F14_{d.name}", title=d.name.replace("__", " vs "))
        s = _json(d / "summary.json")
        key = d.name.replace("__", "_vs_")
        cka_summ[key] = {
            probe: {"min_cka": v["min_cka"], "argmin_layer": v["argmin_layer"]}
            for probe, v in s.items()
            if not probe.startswith("_")
        }
        for probe, v in cka_summ[key].items():
            t14.append({"pair": key, "probe": probe, **v})
    mds.append(_save_table(pd.DataFrame(t14), tables, "T14_min_cka", "T14: minimum linear CKA over layers"))
    # -- trajectories: F16 ---------------------------------------------------------------------
    f16 = an / "trajectories" / "f16_mid_vs_base"
    figures.plot_trajectory(
        pd.read_csv(f16 / "trajectory.csv"),
        figs / "F16_rl_trajectory",
        label="RL from mid (MCS)",
        compare=pd.read_csv(f16 / "trajectory_compare.csv"),
        compare_label="RL from base",
    )
    trajs = {}
    for d in sorted((an / "trajectories").iterdir()):
        if d.name.startswith("rl_"):
            s = _json(d / "summary.json")
            trajs[d.name] = {
                "t50": s["total"]["t50"],
                "t80": s["total"]["t80"],
                "steps": s["steps"][-1],
                "final_normalized_l2": s["total"]["final_normalized_l2"],
                "final_fraction_changed": s["total"]["final_fraction_changed"],
            }
    mds.append(
        _save_table(
            pd.DataFrame([{"run": k, **v} for k, v in trajs.items()]),
            tables,
            "F16_trajectories",
            "F16: RL trajectories (t50/t80: first step reaching 50%/80% of the final L2)",
        )
    )
    # -- update geometry ("The Path Not Taken"; absent from runs made before it) -------------------
    geometry = {}
    if (an / "geometry").is_dir():
        for d in sorted((an / "geometry").iterdir()):
            comps = pd.read_csv(d / "components.csv")
            figures.plot_spectral(
                pd.read_csv(d / "layers.csv"), comps, figs / f"geometry_{d.name}", title=d.name.replace("__", " -> ")
            )
            total = _json(d / "summary.json")["total"]
            # NaN (null in JSON) where the update is zero: no geometry to measure
            geometry[d.name.replace("__", "->")] = {
                c: math.nan if total[c] is None else float(total[c]) for c in GEOMETRY_COLUMNS
            }
        for run, t in trajs.items():  # the live tracking of the fp32 masters: what a bf16 checkpoint shows
            tracked = an / "trajectories" / run / "trajectory.csv"
            df = pd.read_csv(tracked)
            last = df[(df["step"] == df["step"].max()) & (df["component"] == "total")].set_index("metric")["value"]
            if "fraction_visible_bf16" in last:
                t["fp32_fraction_changed"] = 1 - float(last["fraction_equal"])
                t["fraction_visible_bf16"] = float(last["fraction_visible_bf16"])
        mds.append(
            _save_table(
                pd.DataFrame([{"pair": k, **v} for k, v in geometry.items()]),
                tables,
                "geometry",
                "Update geometry (whole model, parameter-weighted over 2-D tensors; k = 16): principal angles "
                "between the top-k singular subspaces of W before and after, effective rank of the update, "
                "and the share of its energy inside W's top-k subspace (principal_alignment)",
            )
        )
    # -- landscape: F13 --------------------------------------------------------------------------
    land = pd.read_csv(an / "landscape" / "landscape.csv")
    figures.plot_landscape(land, figs / "F13_landscape", score_label="math_easy accuracy")
    mds.append(
        _save_table(land, tables, "F13_landscape", "F13: W(a, b) = base + a(mid-base) + b(rl-mid), math_easy accuracy")
    )
    # -- summary and findings --------------------------------------------------------------------
    keys = [k for b in (*BENCHMARKS, "math", "macro") for k in (b, f"{b}_lo", f"{b}_hi")]
    models = {
        m: {"path": r["path"], "n": n, "distinct": distinct, **{k: r[k] for k in (*keys, "general_ppl")}}
        for m, r in zip(results["model"], results.to_dict("records"))
    }
    audit_summ = {
        k: {
            "normalized_l2": s["total"]["normalized_l2"],
            "fraction_changed": s["total"]["fraction_changed"],
            "fraction_equal": s["total"]["fraction_equal"],
        }
        for k, s in audits.items()
    }
    summary = {
        "models": models,
        "audits": audit_summ,
        "cka": cka_summ,
        "trajectories": trajs,
        "compare": {"mc_vs_mcs_cosine": float(mc[mc["group"] == "total"]["cosine"].iloc[0])},
        "intervals": INTERVALS,
        "rl_reward": reward_summary(rewards).to_dict("records") if rewards else [],
        "stage_seconds": stage_times(out),
        "geometry": geometry,
        "findings": findings(models, audit_summ, cka_summ, trajs, mc, rs, scores) + geometry_findings(geometry, trajs),
    }
    write_json(out / "summary.json", summary)
    (out / "report.md").write_text(render_report(out, summary, mds))
    return summary


GEOMETRY_COLUMNS = ("mean_principal_angle_deg", "max_principal_angle_deg", "effective_rank", "principal_alignment")


def geometry_findings(geometry: dict, trajs: dict) -> list[dict]:
    """The claims of "The Path Not Taken" (arXiv 2511.08567) and RL's Razor (arXiv 2509.04259) that
    the update geometry and the live tracking can test (none for a run made before them)."""
    mid, rl = geometry.get("base->mid_mcs"), geometry.get("mid_mcs->rl_mid_mcs")
    out = []
    if mid and rl:
        a_mid, a_rl = mid["mean_principal_angle_deg"], rl["mean_principal_angle_deg"]
        out.append(
            {
                "claim": "RL barely rotates the principal subspaces; SFT / mid-training rotates them far more",
                "paper": "The Path Not Taken: ~5 deg (RL) vs ~50 deg (SFT)",
                "ours": f"mean principal angle {a_rl:.2f} deg (RL) vs {a_mid:.2f} deg (mid); criterion RL < mid / 5",
                "reproduced": bool(a_rl < a_mid / 5),
            }
        )
        p_mid, p_rl = mid["principal_alignment"], rl["principal_alignment"]
        out.append(
            {
                "claim": "RL's update lies off W's principal directions (less of it in the top-k subspace)",
                "paper": "The Path Not Taken: RL avoids principal weights",
                "ours": f"principal alignment {p_rl:.4f} (RL) vs {p_mid:.4f} (mid); criterion RL < mid",
                "reproduced": bool(p_rl < p_mid),
            }
        )
    t = trajs.get("rl_mid_mcs", {})
    if "fraction_visible_bf16" in t:
        out.append(
            {
                "claim": "Part of RL's sparsity is storage precision: fp32 weights change where bf16 ones do not",
                "paper": "RL's Razor: RL's sparsity vanishes in fp32",
                "ours": f"{100 * t['fp32_fraction_changed']:.1f}% of fp32 master weights changed at all, "
                f"{100 * t['fraction_visible_bf16']:.1f}% visible in bf16 (rl_mid_mcs, live tracking)",
                "reproduced": bool(t["fp32_fraction_changed"] > t["fraction_visible_bf16"]),
            }
        )
    return out


def findings(models, audits, cka, trajs, mc, rs, scores) -> list[dict]:
    """Each PRISM finding: the paper's number, ours, and whether ours supports it at this scale.

    An "A beats B" finding counts as reproduced only when the paired bootstrap 95 % interval of
    A - B (same problems, :func:`~prism_train.intervals.paired_bootstrap`) lies above zero; the
    interval is in the row (``ci95``) and in its text."""
    f = []

    def add(claim, paper, ours, ok, test=None):
        f.append({"claim": claim, "paper": paper, "ours": ours, "reproduced": bool(ok), **(test or {})})

    def paired(a, b, weights):
        if scores is None:  # an older run: the point estimate alone, never counted as reproduced
            d = sum(w * (models[a][k] - models[b][k]) for k, w in weights.items())
            r = {"diff": d, "lo": math.nan, "hi": math.nan}
            return r, f"{100 * d:+.1f} points (no per-problem scores: no interval)", {"diff": d}
        r = paired_bootstrap(scores[a], scores[b], weights, resamples=BOOTSTRAP)
        text = f"{100 * r['diff']:+.1f} points [{100 * r['lo']:+.1f}, {100 * r['hi']:+.1f}]"
        return r, text, {"diff": r["diff"], "ci95": [r["lo"], r["hi"]], "test": "paired bootstrap"}

    base_mid = audits["base->mid_mcs"]["fraction_changed"][KEY]
    add(
        "Mid-training changes most weights (dense update)",
        ">90% changed at 1% (Granite-3.3: 96.5%)",
        f"{100 * base_mid:.1f}% changed (base->mid_mcs; criterion > 90%)",
        base_mid > 0.9,
    )
    mid_rl = audits["mid_mcs->rl_mid_mcs"]["fraction_changed"][KEY]
    l2m, l2r = audits["base->mid_mcs"]["normalized_l2"], audits["mid_mcs->rl_mid_mcs"]["normalized_l2"]
    # claims about RL's update are vacuous when RL changed nothing (every batch without reward signal)
    moved = l2r > 0
    still = " (RL changed no weight: no reward signal, so this says nothing)" if not moved else ""
    add(
        "RL changes a small subset of weights (sparse update)",
        "~5% changed at 1%",
        f"{100 * mid_rl:.1f}% changed (mid_mcs->rl_mid_mcs; criterion <= 20%){still}",
        moved and mid_rl <= 0.2,
    )
    ratio = l2m / l2r if l2r else math.inf
    add(
        "RL's update is far smaller than mid-training's",
        "normalized L2 0.175 vs 0.0003 (370-580x)",
        f"{l2m:.4g} vs {l2r:.4g}" + (f" ({ratio:.0f}x; criterion > 10x)" if moved else still),
        moved and ratio > 10,
    )
    t = trajs.get("rl_mid_mcs", {})
    if t.get("t50") is not None and t.get("steps"):
        add(
            "RL's weight change is front-loaded",
            "most movement in the first 200-400 of 1000 steps (t50 <= 40%)",
            f"t50 = {t['t50']} of {t['steps']} steps (criterion <= 40%){still}",
            moved and t["t50"] <= 0.4 * t["steps"],
        )
    mr = cka.get("mid_mcs_vs_rl_mid_mcs", {})
    if mr:
        m = min(v["min_cka"] for v in mr.values())
        add(
            "RL keeps representations (CKA mid vs RL at every layer)",
            "min CKA 0.9993-0.9999 (> 0.998)",
            f"min CKA {m:.4f} over layers and probe sets (criterion >= {CKA_KEPT} at this scale){still}",
            moved and m >= CKA_KEPT,
        )
    bm = cka.get("base_vs_mid_mcs", {})
    if bm:
        m = min(v["min_cka"] for v in bm.values())
        add(
            "Mid-training changes representations",
            "CKA base vs mid falls to 0.41-0.63 (GSM8K, last layers)",
            f"min CKA {m:.4f} (criterion < {CKA_KEPT})",
            m < CKA_KEPT,
        )
    r, text, test = paired("mid_mcs", "base", MATH_WEIGHTS)
    add(
        "Mid-training lifts math",
        "+15..40 points",
        f"{text} math average, base -> mid_mcs (criterion: interval above 0 and >= +{100 * MATH_LIFT:.0f})",
        r["lo"] > 0 and r["diff"] >= MATH_LIFT,
        test,
    )
    for mid in ("mid_math", "mid_mc", "mid_mcs"):
        r, text, test = paired(f"rl_{mid}", mid, MACRO_WEIGHTS)
        add(
            f"RL improves the mid-trained model ({mid})",
            "macro up after RL from every mid-trained model",
            f"{text} macro, {mid} -> rl_{mid} (criterion: interval above 0)",
            r["lo"] > 0,
            test,
        )
    r, text, test = paired("rl_mid_mcs", "rl_base", MACRO_WEIGHTS)
    add(
        "RL after mid-training beats RL on the base model",
        "macro 29-42 vs weak (AIME near zero)",
        f"{text} macro, rl_mid_mcs - rl_base (criterion: interval above 0)",
        r["lo"] > 0,
        test,
    )
    base_l2 = audits["base->rl_base"]["normalized_l2"]
    r, text, test = paired("rl_base", "base", MACRO_WEIGHTS)
    add(
        "RL straight on the base model moves it but gains little",
        "near zero on hard math",
        f"{text} macro, base -> rl_base; weights moved (normalized L2 {base_l2:.3g}) "
        f"(criterion: moved and gain <= {100 * BASE_GAIN:.0f} points)"
        + ("" if base_l2 > 0 else " -- RL from the base never updated (no reward signal)"),
        base_l2 > 0 and r["diff"] <= BASE_GAIN,
        test,
    )
    r, text, test = paired("rl_mid_mcs", "rl_mid_mcs_balanced", MACRO_WEIGHTS)
    add(
        "Changing the RL data mix matters little",
        "< 2 points",
        f"{text} macro, math - balanced RL mix (criterion: |estimate| < 2 points)",
        abs(r["diff"]) < 0.02,
        test,
    )
    r, text, test = paired("rl_mid_mcs", "rl_mid_mc", {"science": 1.0})
    add(
        "Science in the mid-training mix unlocks science after RL",
        "+17..28 GPQA-Diamond",
        f"{text} science, MCS - MC after RL (criterion: interval above 0)",
        r["lo"] > 0,
        test,
    )
    cos = float(mc[mc["group"] == "total"]["cosine"].iloc[0])
    add(
        "MC and MCS mid-training move weights in related directions",
        "cosine 0.52 (Granite), 0.62 (Nemotron-H)",
        f"cosine {cos:.3f} (criterion 0.3-0.95)",
        0.3 < cos < 0.95,
    )
    tot = rs[rs["group"] == "total"].iloc[0]
    r = tot["normalized_l2_1"] / tot["normalized_l2_2"] if tot["normalized_l2_2"] else math.inf
    base_moved = tot["normalized_l2_1"] > 0
    add(
        "RL's update looks alike from base or mid-trained start",
        "total L2 within 20%, fraction changed within 1 pp",
        f"L2 ratio {r:.2f}, fraction changed diff {tot['fraction_changed_diff_pp']:+.1f} pp"
        + ("" if base_moved else " (RL from base got no reward and never updated: nothing to compare)"),
        base_moved and 0.8 <= r <= 1.25 and abs(tot["fraction_changed_diff_pp"]) <= 1.0,
    )
    return f


def _ci(r: dict, b: str) -> str:
    if math.isnan(r[f"{b}_lo"]):
        return f"{r[b]:.3f}"
    return f"{r[b]:.3f} [{r[f'{b}_lo']:.3f}, {r[f'{b}_hi']:.3f}]"


def with_intervals(e: dict) -> dict:
    """An evaluation record with 95 % intervals: ``<bench>_lo/_hi`` (Wilson) for each benchmark,
    and the stratified percentile bootstrap for the math average and the macro average."""
    out = dict(e)
    sc = e.get("scores")
    if sc is None:
        out["math"] = (e["math_easy"] + e["math_hard"]) / 2
        return {**out, **{f"{b}_{s}": math.nan for b in (*BENCHMARKS, "math", "macro") for s in ("lo", "hi")}}
    for b in BENCHMARKS:
        out[f"{b}_lo"], out[f"{b}_hi"] = wilson(sum(sc[b]), len(sc[b]))
    for name, w in (("math", MATH_WEIGHTS), ("macro", MACRO_WEIGHTS)):
        zero = {k: [0] * len(sc[k]) for k in w}
        r = paired_bootstrap(sc, zero, w, resamples=BOOTSTRAP)
        out[name], out[f"{name}_lo"], out[f"{name}_hi"] = r["diff"], r["lo"], r["hi"]
    return out


REWARD_TITLE = (
    "RL training reward (mean format-gated reward of the step's samples; first and last quarter of the steps)"
)


def reward_summary(rewards: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per RL run: mean training reward over the first and the last quarter of its steps, the
    change, and how many steps were skipped for lack of signal (every group scored alike)."""
    rows = []
    for run, df in rewards.items():
        q = max(1, len(df) // 4)
        first, last = float(df["reward"].iloc[:q].mean()), float(df["reward"].iloc[-q:].mean())
        rows.append(
            {
                "run": run,
                "steps": len(df),
                "reward_first_quarter": first,
                "reward_last_quarter": last,
                "change": last - first,
                "skipped_steps": int(df["skipped"].astype(bool).sum()),
            }
        )
    return pd.DataFrame(rows)


def stage_times(out: Path) -> dict[str, float]:
    """Seconds each stage took (from RUN/stages/*.json), when the run has them; ``STAGE/JOB``: a
    job's own seconds. A stage that ran alongside an earlier one (the RL runs and the evaluations
    run in one batch with the mid-trainings; their records were written first) gets 0, so the
    stages add up to the total."""
    times, latest = {}, None
    for stage in STAGES:
        f = out / "stages" / f"{stage}.json"
        if f.is_file():
            rec = _json(f)
            done = rec.get("finished", rec.get("time"))  # (records of older runs have "time" only)
            if "seconds" in rec:
                alongside = latest is not None and done is not None and done < latest
                times[stage] = 0.0 if alongside else rec["seconds"]
                times.update({f"{stage}/{k}": v for k, v in rec.get("jobs", {}).items()})
            if done is not None:
                latest = max(latest, done) if latest is not None else done
    return times


def render_report(out: Path, summary: dict, tables: list[str]) -> str:
    cfg = _json(out / "study.json")["config"]
    lines = [
        f"# Miniature PRISM study (`{cfg['preset']}` preset, {cfg['family']} family)",
        "",
        "Every number below was measured in this run; the paper's numbers are from PRISM (arXiv 2603.17074) "
        "at 3-24B scale with ~27B mid-training tokens. A finding counts as reproduced only when our number "
        "meets the stated criterion; at this scale many do not, and the table says so.",
        "",
        "## Findings",
        "",
        "| claim | paper | ours | reproduced |",
        "| --- | --- | --- | --- |",
    ]
    for f in summary["findings"]:
        lines.append(f"| {f['claim']} | {f['paper']} | {f['ours']} | {'yes' if f['reproduced'] else 'no'} |")
    n_ok = sum(f["reproduced"] for f in summary["findings"])
    lines += ["", f"{n_ok} of {len(summary['findings'])} findings reproduced at this scale.", ""]
    lines += [f"Statistics: {summary['intervals']}.", ""]
    times = summary.get("stage_seconds", {})
    if times:
        stages = [k for k in times if "/" not in k]
        lines += [
            "## Stage times",
            "",
            f"Wall-clock seconds on this machine ({cfg.get('workers', 1)} parallel one-thread processes for "
            "independent jobs; a job's own time is listed under its stage):",
            "",
            "| stage | seconds | jobs |",
            "| --- | --- | --- |",
        ]
        for st in stages:
            jobs = ", ".join(f"{k.split('/', 1)[1]} {v:.0f}" for k, v in times.items() if k.startswith(f"{st}/"))
            shown = f"{times[st]:.0f}" if times[st] or not jobs else "(alongside an earlier stage)"
            lines.append(f"| {st} | {shown} | {jobs} |")
        lines += ["", f"Total of the stages listed: {sum(times[s] for s in stages):.0f} s.", ""]
    lines += ["## Figures", ""]
    for p in sorted((out / "figures").glob("*.png")):
        lines.append(f"![{p.stem}](figures/{p.name})")
    lines += ["", "## Tables", "", *tables]
    return "\n".join(lines) + "\n"


#: Written into an export directory: what the last ``prism figures`` wrote there (and may replace).
EXPORT_MANIFEST = ".prism-figures.json"


def _exported(into: Path) -> set[str]:
    """Files (relative to ``into``) that a previous export wrote, from its manifest."""
    try:
        data = json.loads((into / EXPORT_MANIFEST).read_text())
    except (OSError, ValueError):
        return set()
    return set(data.get("files", [])) if isinstance(data, dict) and data.get("tool") == "prism" else set()


def _refuse_clash(into: Path, names, owned: set[str]) -> None:
    """Refuse to write over a file in ``into`` that no earlier export wrote."""
    clash = sorted(n for n in names if (into / n).exists() and n not in owned)
    if clash:
        raise PrismError(
            f"would overwrite {clash[0]}, which prism figures did not write; move it or pick another --into", into
        )


def export(run: str | Path, into: str | Path) -> dict:
    """Copy a study's saved tables (no checkpoints) into ``into/run``, redraw every figure from them,
    and place the figures, tables, report.md and summary.json in ``into``. Works from ``into/run``
    alone when ``run`` is missing, so figures can be redrawn in a fresh clone without retraining.

    Only what a previous export wrote (listed in ``into/.prism-figures.json``) is replaced or
    removed; any other file in the way is an error, so ``--into .`` never touches a README.
    """
    run, into = Path(run), Path(into)
    data = into / "run"
    owned = _exported(into)
    fresh_tables = run.is_dir() and (run / "study.json").is_file() and run.resolve() != data.resolve()
    if not fresh_tables and not (data / "study.json").is_file():
        raise PrismError("no study run here and no exported tables to redraw from; run prism reproduce first", run)
    if fresh_tables and data.exists() and "run" not in owned:
        raise PrismError(f"{data} exists and was not written by prism figures; move it or pick another --into", into)
    _refuse_clash(into, ["report.md", "summary.json"], owned)  # before drawing: every export writes these
    with tempfile.TemporaryDirectory(prefix=".prism-figures-", dir=into if into.is_dir() else None) as work:
        stage = Path(work) / "run"
        source = run if fresh_tables else data
        for f in [
            source / "study.json",
            *source.glob("stages/*.json"),
            *source.glob("eval/*.json"),
            *source.glob("analysis/**/*.csv"),
            *source.glob("analysis/**/*.json"),
        ]:
            dest = stage / f.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)
        summary = report(stage)
        written = {f"{p.name}": p for p in (stage / "figures").glob("*.png")}
        written |= {f"{p.name}": p for p in (stage / "tables").glob("*.md")}
        _refuse_clash(into, written, owned)
        into.mkdir(parents=True, exist_ok=True)
        for name in owned - set(written) - {"report.md", "summary.json", "run", EXPORT_MANIFEST}:
            (into / name).unlink(missing_ok=True)  # a figure or table an earlier export wrote, gone now
        for name, f in written.items():
            shutil.copy2(f, into / name)
        text = (stage / "report.md").read_text().replace("](figures/", "](")
        (into / "report.md").write_text(text)
        write_json(into / "summary.json", summary)
        shutil.rmtree(stage / "figures")
        shutil.rmtree(stage / "tables")
        with staged_dir(data, "cannot write the exported tables") as tmp:
            shutil.copytree(stage, tmp, dirs_exist_ok=True)
    files = sorted([*written, "report.md", "summary.json", "run"])
    write_json(into / EXPORT_MANIFEST, {"tool": "prism", "command": "figures", "files": files})
    return summary
