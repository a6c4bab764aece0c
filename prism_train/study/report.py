"""Stage 6 of the study: figures, tables, summary.json and report.md, drawn from the saved tables
of RUN/analysis and RUN/eval only (so `make figures` redraws without retraining).

:func:`report` runs one function per section, in the order report.md shows their tables:
benchmarks, RL reward, audits (T12, T22, T23, F11), update comparisons (F12/T13, F26), CKA
(F14/T14), RL trajectories (F16), update geometry, the interpolation landscape (F13). The findings
are judged in :mod:`~prism_train.study.findings`; ``prism figures`` is :mod:`~prism_train.study.export`.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from prism_analysis import figures
from prism_analysis.outputs import write_json

from ..intervals import MACRO_WEIGHTS, MATH_WEIGHTS, paired_bootstrap, wilson
from .design import MODELS, STAGES
from .findings import BOOTSTRAP, KEY, diff_findings, findings, geometry_findings

BENCHMARKS = tuple(MACRO_WEIGHTS)  # math_easy, math_hard, code, science (prism_train.evaluate)
INTERVALS = (
    "95% intervals: Wilson score interval for each benchmark accuracy; stratified percentile bootstrap "
    f"({BOOTSTRAP} resamples, problems resampled within each benchmark) for the math and macro averages; "
    "every 'A beats B' finding uses the paired bootstrap over the same problems and counts as reproduced "
    "only when its interval excludes zero (lies above it)"
)
#: Transitions of T22 and T23: mid-training, RL after it, RL from the base.
SHOWN_TRANSITIONS = ("base->mid_mcs", "mid_mcs->rl_mid_mcs", "base->rl_base")
GEOMETRY_COLUMNS = ("mean_principal_angle_deg", "max_principal_angle_deg", "effective_rank", "principal_alignment")


def report(out: str | Path) -> dict:
    """Redraw RUN/figures and RUN/tables (both emptied first) of the study run ``out`` from its saved
    tables, then write RUN/summary.json and RUN/report.md. Returns the summary."""
    out = Path(out)
    draft = Draft.fresh(out)
    evals = {m: _json(out / "eval" / f"{m}.json") for m in MODELS}
    # a run evaluated by an older prism has no per-problem scores: no intervals, no paired tests
    scores = {m: e["scores"] for m, e in evals.items()} if all("scores" in e for e in evals.values()) else None
    results = pd.DataFrame([{"model": m, **with_intervals(e)} for m, e in evals.items()])
    n = len(scores["base"]["math_easy"]) if scores else None
    distinct = evals["base"].get("distinct")  # older runs did not count them
    benchmarks_section(draft, results, n, distinct)
    rewards = rl_reward_section(draft)
    audits = audit_sections(draft)
    mc, rs = comparison_sections(draft)
    cka = cka_section(draft)
    diff = diff_section(draft)
    trajs = trajectory_section(draft)
    geometry = geometry_section(draft, trajs)
    landscape_section(draft)
    models = model_summary(results, n, distinct)
    audit_summ = audit_summary(audits)
    summary = {
        "models": models,
        "audits": audit_summ,
        "cka": cka,
        "diff": diff,
        "trajectories": trajs,
        "compare": {"mc_vs_mcs_cosine": float(mc[mc["group"] == "total"]["cosine"].iloc[0])},
        "intervals": INTERVALS,
        "rl_reward": reward_summary(rewards).to_dict("records") if rewards else [],
        "stage_seconds": stage_times(out),
        "geometry": geometry,
        "findings": findings(models, audit_summ, cka, trajs, mc, rs, scores)
        + diff_findings(cka, diff)
        + geometry_findings(geometry, trajs),
    }
    write_json(out / "summary.json", summary)
    (out / "report.md").write_text(render_report(out, summary, draft.mds))
    return summary


@dataclass
class Draft:
    """The report being written: where its sections read (``an``: RUN/analysis) and write (``figs``,
    ``tables``), and the markdown of the tables written so far, in the order report.md shows them."""

    an: Path
    figs: Path
    tables: Path
    mds: list[str] = field(default_factory=list)

    @classmethod
    def fresh(cls, out: Path) -> Draft:
        """The draft of the run ``out``, its RUN/figures and RUN/tables emptied."""
        draft = cls(out / "analysis", out / "figures", out / "tables")
        for d in (draft.figs, draft.tables):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        return draft

    def table(self, df: pd.DataFrame, name: str, title: str) -> None:
        """Write ``df`` as tables/NAME.csv and tables/NAME.md (under ``### title``) and keep the
        markdown for report.md."""
        self.mds.append(_save_table(df, self.tables, name, title))


# -- sections, in report order ----------------------------------------------------------------------
def benchmarks_section(draft: Draft, results: pd.DataFrame, n: int | None, distinct: dict | None) -> None:
    """Benchmarks: figure ``benchmarks``, tables/benchmarks.csv (every column of ``results``, its
    intervals included) and benchmarks.md (accuracy [95% interval] per benchmark and the macro
    average, perplexity on held-out prose; no intervals for a run without per-problem scores)."""
    figures.plot_benchmarks(results, draft.figs / "benchmarks")
    shown = pd.DataFrame(
        {
            "model": results["model"],
            **{b: [_ci(r, b) for r in results.to_dict("records")] for b in (*BENCHMARKS, "macro")},
            "general_ppl": results["general_ppl"],
        }
    )
    results.drop(columns=["scores", "path", "distinct"], errors="ignore").to_csv(
        draft.tables / "benchmarks.csv", index=False
    )
    held_out = f"{n} held-out draws per benchmark" + (
        ", distinct problems " + ", ".join(f"{b} {d}" for b, d in distinct.items()) if distinct else ""
    )
    md = (
        f"### Benchmarks ({held_out}, greedy; accuracy [95% interval: Wilson per benchmark, "
        "stratified percentile bootstrap for the macro average]; perplexity on held-out prose)\n\n"
        if n
        else "### Benchmarks (accuracy, no intervals: this run kept no per-problem scores)\n\n"
    ) + f"{markdown_table(shown)}\n"
    (draft.tables / "benchmarks.md").write_text(md)
    draft.mds.append(md)


REWARD_TITLE = (
    "RL training reward (mean format-gated reward of the step's samples; first and last quarter of the steps)"
)


def rl_reward_section(draft: Draft) -> dict[str, pd.DataFrame]:
    """RL reward on the training distribution: figure ``F_rl_reward`` (reward by step of each RL run)
    and table ``rl_reward`` (:func:`reward_summary`); nothing for a run without reward tables.
    Returns the reward tables by run."""
    rewards = {d.stem: pd.read_csv(d) for d in sorted((draft.an / "rewards").glob("*.csv"))}
    if rewards:
        figures.plot_rewards(rewards, draft.figs / "F_rl_reward")
        draft.table(reward_summary(rewards), "rl_reward", REWARD_TITLE)
    return rewards


def audit_sections(draft: Draft) -> dict[str, dict]:
    """Audits: tables T12 (:func:`t12_divergence`), T22 (:func:`t22_threshold_sweep`), T23
    (:func:`t23_components`), and figures F11 (the update by layer and component, of mid-training
    and of RL after it). Returns each audit's summary.json by transition (``"a->b"``)."""
    an = draft.an
    audits = {d.name.replace("__", "->"): _json(d / "summary.json") for d in sorted((an / "audits").iterdir())}
    draft.table(t12_divergence(audits), "T12_divergence", "T12: divergence summary")
    draft.table(t22_threshold_sweep(audits), "T22_threshold_sweep", "T22: % of weights unchanged at each threshold")
    draft.table(t23_components(audits), "T23_components", "T23: % of weights changed at 1%, per component")
    for k in ("base__mid_mcs", "mid_mcs__rl_mid_mcs"):
        d = an / "audits" / k
        figures.plot_audit(
            pd.read_csv(d / "layers.csv"),
            pd.read_csv(d / "components.csv"),
            draft.figs / f"F11_{k}",
            title=k.replace("__", " -> "),
        )
    return audits


def t12_divergence(audits: dict[str, dict]) -> pd.DataFrame:
    """T12, one row per audited transition: normalized L2, % of weights changed at 1 %, % bitwise equal."""
    return pd.DataFrame(
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


def t22_threshold_sweep(audits: dict[str, dict]) -> pd.DataFrame:
    """T22, one row per transition of :data:`SHOWN_TRANSITIONS`: % of weights unchanged at each
    threshold the audit measured."""
    rows = []
    for k in SHOWN_TRANSITIONS:
        fc = audits[k]["total"]["fraction_changed"]
        rows.append({"transition": k, **{f"%unchanged@{100 * float(t):g}%": 100 * (1 - v) for t, v in fc.items()}})
    return pd.DataFrame(rows)


def t23_components(audits: dict[str, dict]) -> pd.DataFrame:
    """T23, one row per component (in the audit's order): % of its weights changed at 1 % in each
    transition of :data:`SHOWN_TRANSITIONS`."""
    comps = sorted(
        set(audits["base->mid_mcs"]["components"]), key=lambda c: list(audits["base->mid_mcs"]["components"]).index(c)
    )
    return pd.DataFrame(
        [
            {
                "component": c,
                **{k: 100 * audits[k]["components"][c]["fraction_changed"][KEY] for k in SHOWN_TRANSITIONS},
            }
            for c in comps
        ]
    )


def comparison_sections(draft: Draft) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Update comparisons: figure F12 and table T13 (MC vs MCS mid-training updates, cosine Eq. 2),
    figure F26 and table ``F26_rl_start`` (RL from the base (1) vs RL from mid (2)). Returns the two
    comparison tables, MC vs MCS and RL from base vs mid."""
    an, figs = draft.an, draft.figs
    mc = pd.read_csv(an / "compare" / "mc_vs_mcs" / "compare.csv")
    figures.plot_compare(mc, figs / "F12_mc_vs_mcs", labels=("base->MC", "base->MCS"))
    draft.table(
        mc[["group", "cosine", "normalized_l2_1", "normalized_l2_2", "jaccard", "jaccard_chance"]],
        "T13_mc_vs_mcs",
        "T13: MC vs MCS mid-training updates (cosine, Eq. 2)",
    )
    rs = pd.read_csv(an / "compare" / "rl_from_base_vs_mid" / "compare.csv")
    figures.plot_compare(rs, figs / "F26_rl_from_base_vs_mid", labels=("RL from base", "RL from mid"))
    draft.table(
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
        "F26_rl_start",
        "F26: RL from base (1) vs RL from mid (2)",
    )
    return mc, rs


def cka_section(draft: Draft) -> dict[str, dict]:
    """CKA: figure F14 per compared pair (CKA by layer on each probe set) and table T14 (the minimum
    over layers, with its layer, per pair and probe set). Returns those minima by pair
    (``"a_vs_b"``) and probe set."""
    t14 = []
    cka_summ = {}
    for d in sorted((draft.an / "cka").iterdir()):
        df = pd.read_csv(d / "cka.csv")
        figures.plot_cka_layers(df, draft.figs / f"F14_{d.name}", title=d.name.replace("__", " vs "))
        s = _json(d / "summary.json")
        key = d.name.replace("__", "_vs_")
        cka_summ[key] = {
            probe: {"min_cka": v["min_cka"], "argmin_layer": v["argmin_layer"]}
            for probe, v in s.items()
            if not probe.startswith("_")
        }
        for probe, v in cka_summ[key].items():
            t14.append({"pair": key, "probe": probe, **v})
    draft.table(pd.DataFrame(t14), "T14_min_cka", "T14: minimum linear CKA over layers")
    return cka_summ


def diff_section(draft: Draft, heads: int = 5, tokens: int = 3) -> dict[str, dict]:
    """Activation-level diff (absent from runs made before it): figure ``diff_<pair>`` per pair (the
    logit lens by layer on each benchmark's prompts), table ``T_diff`` (per pair and benchmark: mean
    KL(P_A || P_B) per token with its 95 % interval, top-1 agreement, the depth where the lens
    divergence rises (:func:`lens_rise_layer`) and the ``tokens`` most promoted by the last layer's
    difference lens, read through B's head) and table ``T_heads`` (the ``heads`` attention heads
    whose weights moved most, from the pair's audit). Returns them by pair (``"a->b"``)."""
    summ = {}
    if not (draft.an / "diff").is_dir():
        return summ
    rows, head_rows = [], []
    for d in sorted((draft.an / "diff").iterdir()):
        pair = d.name.replace("__", "->")
        layers, lens = pd.read_csv(d / "layers.csv"), pd.read_csv(d / "lens.csv", keep_default_na=False)
        figures.plot_diff_layers(layers, draft.figs / f"diff_{d.name}", title=d.name.replace("__", " vs "))
        per = {}
        for probe, v in _json(d / "summary.json").items():
            if probe.startswith("_"):
                continue
            per[probe] = {
                **{k: v[k] for k in ("mean_kl", "mean_kl_ci_low", "mean_kl_ci_high", "agreement")},
                "lens_rise_layer": lens_rise_layer(layers[layers["probe"] == probe]),
                "n_layers": int(layers["layer"].max()) if len(layers) else None,
                "promoted": promoted_tokens(lens, probe, tokens),
            }
            rows.append({"pair": pair, "benchmark": probe, **per[probe], "promoted": " ".join(per[probe]["promoted"])})
        top = []
        head_file = draft.an / "audits" / d.name / "heads.csv"
        if head_file.is_file():
            h = pd.read_csv(head_file).sort_values("normalized_l2", ascending=False, kind="stable").head(heads)
            top = [
                {
                    "layer": int(r["layer"]),
                    "head": int(r["head"]),
                    "component": r["component"],
                    "normalized_l2": float(r["normalized_l2"]),
                }
                for r in h.to_dict("records")
            ]
            head_rows += [{"pair": pair, "rank": i + 1, **r} for i, r in enumerate(top)]
        summ[pair] = {"benchmarks": per, "top_heads": top}
    draft.table(
        pd.DataFrame(rows),
        "T_diff",
        "Activation-level diff on each benchmark's prompts: mean KL(P_A || P_B) per token (nats, 95% "
        "percentile bootstrap over prompts), top-1 agreement, the logit-lens layer where the two models' "
        "lens KL first reaches half its maximum (lens_rise_layer, of n_layers), and the tokens the last "
        "layer's mean residual difference promotes most (read through B's head)",
    )
    if head_rows:
        draft.table(
            pd.DataFrame(head_rows),
            "T_heads",
            f"The {heads} attention heads whose weights moved most "
            "(normalized L2 of the head's q/k/v rows and o columns)",
        )
    return summ


def lens_rise_layer(layers: pd.DataFrame) -> int | None:
    """The first logit-lens layer where KL(lens_A || lens_B) reaches half its maximum over layers:
    the depth at which the two models start to disagree (None without a lens, or when the lenses
    agree everywhere)."""
    kl = layers.sort_values("layer")[["layer", "kl_ab"]].dropna()
    if not len(kl) or kl["kl_ab"].max() <= 0:
        return None
    return int(kl.loc[kl["kl_ab"] >= 0.5 * kl["kl_ab"].max(), "layer"].iloc[0])


def promoted_tokens(lens: pd.DataFrame, probe: str, k: int) -> list[str]:
    """The ``k`` tokens the last layer's mean residual difference (over all tokens) promotes most,
    read through B's head, from ``lens.csv``."""
    d = lens[(lens["probe"] == probe) & (lens["positions"] == "all") & (lens["head"] == "b")]
    d = d[(d["direction"] == "promoted") & (d["layer"] == d["layer"].max())].sort_values("rank")
    return [repr(t) for t in d["token"].head(k)]


def trajectory_section(draft: Draft) -> dict[str, dict]:
    """RL trajectories: figure F16 (RL from mid (MCS) against RL from the base, step by step) and
    table ``F16_trajectories`` (t50, t80, steps, final normalized L2 and fraction changed of each RL
    run). Returns those rows by run."""
    an = draft.an
    f16 = an / "trajectories" / "f16_mid_vs_base"
    figures.plot_trajectory(
        pd.read_csv(f16 / "trajectory.csv"),
        draft.figs / "F16_rl_trajectory",
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
    draft.table(
        pd.DataFrame([{"run": k, **v} for k, v in trajs.items()]),
        "F16_trajectories",
        "F16: RL trajectories (t50/t80: first step reaching 50%/80% of the final L2)",
    )
    return trajs


def geometry_section(draft: Draft, trajs: dict[str, dict]) -> dict[str, dict]:
    """Update geometry ("The Path Not Taken"; absent from runs made before it): figure
    ``geometry_<pair>`` per pair (by layer and component) and table ``geometry`` (whole model: mean
    and max principal angle, effective rank, principal alignment). Also adds to ``trajs`` what the
    live tracking saw (:func:`add_bf16_visibility`). Returns the geometry by pair (``"a->b"``), empty
    for a run without it."""
    geometry = {}
    if not (draft.an / "geometry").is_dir():
        return geometry
    for d in sorted((draft.an / "geometry").iterdir()):
        comps = pd.read_csv(d / "components.csv")
        figures.plot_spectral(
            pd.read_csv(d / "layers.csv"), comps, draft.figs / f"geometry_{d.name}", title=d.name.replace("__", " -> ")
        )
        total = _json(d / "summary.json")["total"]
        # NaN (null in JSON) where the update is zero: no geometry to measure
        geometry[d.name.replace("__", "->")] = {
            c: math.nan if total[c] is None else float(total[c]) for c in GEOMETRY_COLUMNS
        }
    add_bf16_visibility(draft.an, trajs)
    draft.table(
        pd.DataFrame([{"pair": k, **v} for k, v in geometry.items()]),
        "geometry",
        "Update geometry (whole model, parameter-weighted over 2-D tensors; k = 16): principal angles "
        "between the top-k singular subspaces of W before and after, effective rank of the update, "
        "and the share of its energy inside W's top-k subspace (principal_alignment)",
    )
    return geometry


def add_bf16_visibility(an: Path, trajs: dict[str, dict]) -> None:
    """Add to each RL run's row of ``trajs`` what the live tracking of its fp32 master weights saw at
    the last step: the fraction changed at all (``fp32_fraction_changed``) and the fraction a bf16
    checkpoint shows (``fraction_visible_bf16``). A run tracked without bf16 visibility is left as is."""
    for run, t in trajs.items():
        tracked = an / "trajectories" / run / "trajectory.csv"
        df = pd.read_csv(tracked)
        last = df[(df["step"] == df["step"].max()) & (df["component"] == "total")].set_index("metric")["value"]
        if "fraction_visible_bf16" in last:
            t["fp32_fraction_changed"] = 1 - float(last["fraction_equal"])
            t["fraction_visible_bf16"] = float(last["fraction_visible_bf16"])


def landscape_section(draft: Draft) -> None:
    """Interpolation landscape: figure F13 and table ``F13_landscape`` (math_easy accuracy of
    W(a, b) = base + a(mid - base) + b(rl - mid) over the grid)."""
    land = pd.read_csv(draft.an / "landscape" / "landscape.csv")
    figures.plot_landscape(land, draft.figs / "F13_landscape", score_label="math_easy accuracy")
    draft.table(land, "F13_landscape", "F13: W(a, b) = base + a(mid-base) + b(rl-mid), math_easy accuracy")


# -- summary.json -----------------------------------------------------------------------------------
def model_summary(results: pd.DataFrame, n: int | None, distinct: dict | None) -> dict[str, dict]:
    """summary.json's ``models``: per model its checkpoint, the draws per benchmark (``n``), the
    distinct problems, each accuracy (benchmarks, math and macro averages) with its 95 % interval,
    and the perplexity on held-out prose."""
    keys = [k for b in (*BENCHMARKS, "math", "macro") for k in (b, f"{b}_lo", f"{b}_hi")]
    return {
        m: {"path": r["path"], "n": n, "distinct": distinct, **{k: r[k] for k in (*keys, "general_ppl")}}
        for m, r in zip(results["model"], results.to_dict("records"))
    }


def audit_summary(audits: dict[str, dict]) -> dict[str, dict]:
    """summary.json's ``audits``: the whole-model totals of each audit (normalized L2, fraction
    changed at each threshold, fraction bitwise equal)."""
    return {
        k: {
            "normalized_l2": s["total"]["normalized_l2"],
            "fraction_changed": s["total"]["fraction_changed"],
            "fraction_equal": s["total"]["fraction_equal"],
        }
        for k, s in audits.items()
    }


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


# -- report.md --------------------------------------------------------------------------------------
def render_report(out: Path, summary: dict, tables: list[str]) -> str:
    """report.md: what the numbers are, the findings, the stage times, every figure, every table."""
    cfg = _json(out / "study.json")["config"]
    lines = [
        f"# Miniature PRISM study (`{cfg['preset']}` preset, {cfg['family']} family)",
        "",
        "Every number below was measured in this run; the paper's numbers are from PRISM (arXiv 2603.17074) "
        "at 3-24B scale with ~27B mid-training tokens. A finding counts as reproduced only when our number "
        "meets the stated criterion; at this scale many do not, and the table says so.",
        "",
        *_findings_lines(summary),
        *_stage_time_lines(summary.get("stage_seconds", {}), cfg),
        "## Figures",
        "",
        *(f"![{p.stem}](figures/{p.name})" for p in sorted((out / "figures").glob("*.png"))),
        "",
        "## Tables",
        "",
        *tables,
    ]
    return "\n".join(lines) + "\n"


def _findings_lines(summary: dict) -> list[str]:
    """report.md's "Findings": one row per finding (claim, paper, ours, reproduced), how many were
    reproduced, and the statistics behind them."""
    found = summary["findings"]
    lines = ["## Findings", "", "| claim | paper | ours | reproduced |", "| --- | --- | --- | --- |"]
    lines += [f"| {f['claim']} | {f['paper']} | {f['ours']} | {'yes' if f['reproduced'] else 'no'} |" for f in found]
    n_ok = sum(f["reproduced"] for f in found)
    return [
        *lines,
        "",
        f"{n_ok} of {len(found)} findings reproduced at this scale.",
        "",
        f"Statistics: {summary['intervals']}.",
        "",
    ]


def _stage_time_lines(times: dict[str, float], cfg: dict) -> list[str]:
    """report.md's "Stage times" (none for a run without stage records): seconds per stage, each
    job's own seconds beside its stage, and the total."""
    if not times:
        return []
    stages = [k for k in times if "/" not in k]
    lines = [
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
    return [*lines, "", f"Total of the stages listed: {sum(times[s] for s in stages):.0f} s.", ""]


# -- tables and intervals ---------------------------------------------------------------------------
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
