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

from .study_design import MODELS

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
    results = pd.DataFrame([{"model": m, **_json(out / "eval" / f"{m}.json")} for m in MODELS])
    mds = []
    # -- benchmarks -------------------------------------------------------------------------
    figures.plot_benchmarks(results, figs / "benchmarks")
    cols = ["model", "math_easy", "math_hard", "code", "science", "macro", "general_ppl"]
    mds.append(_save_table(results[cols], tables, "benchmarks", "Benchmarks (accuracy; perplexity on held-out prose)"))
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
    # -- landscape: F13 --------------------------------------------------------------------------
    land = pd.read_csv(an / "landscape" / "landscape.csv")
    figures.plot_landscape(land, figs / "F13_landscape", score_label="math_easy accuracy")
    mds.append(
        _save_table(land, tables, "F13_landscape", "F13: W(a, b) = base + a(mid-base) + b(rl-mid), math_easy accuracy")
    )
    # -- summary and findings --------------------------------------------------------------------
    models = {
        m: {
            "path": r["path"],
            **{k: r[k] for k in ("math_easy", "math_hard", "code", "science", "macro", "general_ppl")},
        }
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
        "findings": findings(models, audit_summ, cka_summ, trajs, mc, rs),
    }
    write_json(out / "summary.json", summary)
    (out / "report.md").write_text(render_report(out, summary, mds))
    return summary


def findings(models, audits, cka, trajs, mc, rs) -> list[dict]:
    """Each PRISM finding: the paper's number, ours, and whether ours supports it at this scale."""
    f = []

    def add(claim, paper, ours, ok):
        f.append({"claim": claim, "paper": paper, "ours": ours, "reproduced": bool(ok)})

    base_mid = audits["base->mid_mcs"]["fraction_changed"][KEY]
    add(
        "Mid-training changes most weights (dense update)",
        ">90% changed at 1% (Granite-3.3: 96.5%)",
        f"{100 * base_mid:.1f}% changed (base->mid_mcs)",
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
        f"{100 * mid_rl:.1f}% changed (mid_mcs->rl_mid_mcs){still}",
        moved and mid_rl < 0.2,
    )
    ratio = l2m / l2r if l2r else math.inf
    add(
        "RL's update is far smaller than mid-training's",
        "normalized L2 0.175 vs 0.0003 (370-580x)",
        f"{l2m:.4g} vs {l2r:.4g}" + (f" ({ratio:.0f}x)" if moved else still),
        moved and ratio > 10,
    )
    t = trajs.get("rl_mid_mcs", {})
    if t.get("t50") is not None and t.get("steps"):
        add(
            "RL's weight change is front-loaded",
            "most movement in the first 200-400 of 1000 steps (t50 <= 40%)",
            f"t50 = {t['t50']} of {t['steps']} steps{still}",
            moved and t["t50"] <= 0.4 * t["steps"],
        )
    mr = cka.get("mid_mcs_vs_rl_mid_mcs", {})
    if mr:
        m = min(v["min_cka"] for v in mr.values())
        add(
            "RL keeps representations (CKA mid vs RL at every layer)",
            "min CKA 0.9993-0.9999 (> 0.998)",
            f"min CKA {m:.4f} over layers and probe sets{still}",
            moved and m > 0.998,
        )
    bm = cka.get("base_vs_mid_mcs", {})
    if bm:
        m = min(v["min_cka"] for v in bm.values())
        add(
            "Mid-training changes representations",
            "CKA base vs mid falls to 0.41-0.63 (GSM8K, last layers)",
            f"min CKA {m:.4f}",
            m < 0.9,
        )
    math_avg = {m: (models[m]["math_easy"] + models[m]["math_hard"]) / 2 for m in ("base", "mid_mcs")}
    dm = math_avg["mid_mcs"] - math_avg["base"]
    add("Mid-training lifts math", "+15..40 points", f"{100 * dm:+.1f} points (base -> mid_mcs)", dm > 0.05)
    add(
        "RL after mid-training beats RL on the base model",
        "macro 29-42 vs weak (AIME near zero)",
        f"macro {100 * models['rl_mid_mcs']['macro']:.1f} vs {100 * models['rl_base']['macro']:.1f}",
        models["rl_mid_mcs"]["macro"] > models["rl_base"]["macro"],
    )
    add(
        "RL straight on the base model stays weak",
        "near zero on hard math",
        f"macro {100 * models['rl_base']['macro']:.1f}",
        models["rl_base"]["macro"] < 0.05,
    )
    d_mix = abs(models["rl_mid_mcs"]["macro"] - models["rl_mid_mcs_balanced"]["macro"])
    signal = models["rl_mid_mcs"]["macro"] > 0 or models["rl_mid_mcs_balanced"]["macro"] > 0
    add(
        "Changing the RL data mix matters little",
        "< 2 points",
        f"{100 * d_mix:.1f} points (math vs balanced)" + ("" if signal else " (both zero: says nothing)"),
        signal and d_mix < 0.02,
    )
    sci = models["rl_mid_mcs"]["science"] - models["rl_mid_mc"]["science"]
    add(
        "Science in the mid-training mix unlocks science after RL",
        "+17..28 GPQA-Diamond",
        f"{100 * sci:+.1f} points (MCS vs MC, after RL)",
        sci > 0,
    )
    cos = float(mc[mc["group"] == "total"]["cosine"].iloc[0])
    add(
        "MC and MCS mid-training move weights in related directions",
        "cosine 0.52 (Granite), 0.62 (Nemotron-H)",
        f"cosine {cos:.3f}",
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
    lines += ["", f"{n_ok} of {len(summary['findings'])} findings reproduced at this scale.", "", "## Figures", ""]
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
    with tempfile.TemporaryDirectory(prefix=".prism-figures-", dir=into if into.is_dir() else None) as work:
        stage = Path(work) / "run"
        source = run if fresh_tables else data
        for f in [
            source / "study.json",
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
        clash = sorted(n for n in [*written, "report.md", "summary.json"] if (into / n).exists() and n not in owned)
        if clash:
            raise PrismError(
                f"would overwrite {clash[0]}, which prism figures did not write; move it or pick another --into", into
            )
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
