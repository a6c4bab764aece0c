"""The paper's figures, drawn from saved tables (so any figure can be redrawn without recomputing).

Every ``plot_*`` function takes pandas tables (as written by the analysis modules), writes
``<stem>.png`` and ``<stem>.pdf`` and returns the matplotlib Figure. Colours are seaborn's
colour-blind-safe palette.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt
import pandas as pd

from .metrics import DEFAULT_THRESHOLD, SIMILARITY_MEASURES, changed_column

#: seaborn's colour-blind-safe palette ("colorblind"), spelled out so drawing a figure does not
#: import seaborn (and scipy with it); seaborn is imported only for the heatmaps.
PALETTE = ("#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#ca9161", "#fbafe4", "#949494", "#ece133", "#56b4e9")


#: The files every figure is written as (:func:`formats` narrows it for a block).
_FORMATS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "prism_figure_formats", default=("png", "pdf")
)


@contextlib.contextmanager
def formats(*suffixes: str):
    """Within the block, write figures only as ``suffixes`` (of "png", "pdf"): ``prism figures``
    copies only the PNGs of the study report it redraws, and skips drawing the PDFs (about a third
    of the drawing time)."""
    unknown = set(suffixes) - {"png", "pdf"}
    if unknown or not suffixes:
        raise ValueError(f"figure formats are png and pdf, got {suffixes}")
    token = _FORMATS.set(tuple(suffixes))
    try:
        yield
    finally:
        _FORMATS.reset(token)


def chosen_formats() -> tuple[str, ...]:
    """The file formats figures are written as here: those of the enclosing :func:`formats` block,
    else ("png", "pdf")."""
    return _FORMATS.get()


def _save(fig, stem: str | os.PathLike) -> None:
    """``<stem>.png`` (150 dpi) and ``<stem>.pdf`` (or those of :func:`formats`). Every figure is laid
    out by constrained layout (legends outside the axes included), so no ``bbox_inches="tight"``:
    that costs a second full draw of each file (~0.1 s a figure on a tiny audit, see
    benchmarks/startup.py). The layout is computed once, for the first file: the PDF keeps the
    positions the PNG was drawn with."""
    stem = Path(stem)
    chosen = chosen_formats()
    if "png" in chosen:
        fig.savefig(stem.with_suffix(".png"), dpi=150)
    if "pdf" in chosen:
        engine = fig.get_layout_engine()
        if "png" in chosen:  # laid out for the PNG already (in inches, whatever the dpi): ~0.06 s saved
            fig.set_layout_engine("none")
        fig.savefig(stem.with_suffix(".pdf"))
        fig.set_layout_engine(engine)
    plt.close(fig)


def plot_audit(
    layers: pd.DataFrame, components: pd.DataFrame, stem, tau: float = DEFAULT_THRESHOLD, title: str = ""
) -> plt.Figure:
    """F11: per-layer normalized L2 (top) and % of weights changed by component (bottom)."""
    col = changed_column(tau)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), constrained_layout=True)
    if len(layers):
        top.plot(layers["layer"], layers["normalized_l2"], marker="o", color=PALETTE[0])
    top.set_xlabel("layer")
    top.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    # plain text, no mathtext: its parser alone costs ~0.2 s of a tiny audit's start-up
    top.set_ylabel("normalized L2")
    top.set_title("F11 (top): update size per layer, \u2016W_B \u2212 W_A\u2016_F / \u2016W_A\u2016_F")
    top.grid(alpha=0.3)
    pct = 100 * components[col] if col in components else components["fraction_equal"] * 0
    bars = bottom.bar(components["component"], pct, color=PALETTE[1])
    bottom.bar_label(bars, fmt="%.1f", fontsize=7)
    bottom.set_ylabel(f"% of weights changed (> {100 * tau:g}% relative)")
    bottom.set_title("F11 (bottom): update density by component")
    bottom.tick_params(axis="x", rotation=45)
    bottom.set_ylim(0, max(100, float(pct.max()) * 1.1 if len(pct) else 100))
    if title:
        fig.suptitle(title)
    _save(fig, stem)
    return fig


def plot_spectral(layers: pd.DataFrame, components: pd.DataFrame, stem, title: str = "") -> plt.Figure:
    """The geometry of the update (``prism audit --spectral``): principal-subspace rotation (max and
    mean principal angle, degrees) and effective rank of the update, by layer (top) and by component
    (bottom); parameter-weighted means as in the tables."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    (angle_l, rank_l), (angle_c, rank_c) = axes
    if len(layers):
        for col, style, color in (
            ("max_principal_angle_deg", "o-", PALETTE[3]),
            ("mean_principal_angle_deg", "s--", PALETTE[0]),
        ):
            angle_l.plot(layers["layer"], layers[col], style, ms=4, color=color, label=col.replace("_deg", ""))
        rank_l.plot(layers["layer"], layers["effective_rank"], "o-", ms=4, color=PALETTE[2])
    for ax in (angle_l, rank_l):
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    angle_l.set_ylabel("principal angle, W_A vs W_B top-k (deg)")
    angle_l.set_title("rotation of the principal subspaces by layer")
    angle_l.legend(fontsize=8)
    rank_l.set_ylabel(r"effective rank of $\Delta W$")
    rank_l.set_title("effective rank of the update by layer")
    x = range(len(components))
    width = 0.4
    angle_c.bar([i - width / 2 for i in x], components["max_principal_angle_deg"], width, color=PALETTE[3], label="max")
    angle_c.bar(
        [i + width / 2 for i in x], components["mean_principal_angle_deg"], width, color=PALETTE[0], label="mean"
    )
    angle_c.set_ylabel("principal angle (deg)")
    angle_c.set_title("rotation by component")
    angle_c.legend(fontsize=8)
    rank_c.bar(list(x), components["effective_rank"], color=PALETTE[2])
    rank_c.set_ylabel(r"effective rank of $\Delta W$")
    rank_c.set_title("effective rank by component")
    for ax in (angle_c, rank_c):
        ax.set_xticks(list(x), components["component"], rotation=45, ha="right")
        ax.grid(alpha=0.3, axis="y")
    if title:
        fig.suptitle(title)
    _save(fig, stem)
    return fig


def plot_cka_layers(layers: pd.DataFrame, stem, title: str = "") -> plt.Figure:
    """F14: linear CKA per layer on all prompts (``cka``), one line per probe set, shaded with the
    interval of that estimate (``cka_ci_low``..``cka_ci_high``, delete-one jackknife). PRISM's
    resample interval (``resample_ci_*``) belongs to CKA on fewer prompts and is not drawn; a table
    without ``cka_ci_*`` (written before they existed) is drawn unshaded."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2), constrained_layout=True)
    for i, (probe, df) in enumerate(layers.groupby("probe", sort=False)):
        color = PALETTE[i % len(PALETTE)]
        ax.plot(df["layer"], df["cka"], marker="o", ms=3.5, color=color, label=probe)
        if "cka_ci_low" in df and df["cka_ci_low"].notna().any():
            ax.fill_between(df["layer"], df["cka_ci_low"], df["cka_ci_high"], color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel("layer (0 = embedding output, the input of the first block)")
    ax.set_ylabel("linear CKA, all prompts\n(shaded: 95% jackknife interval)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title("F14: representation similarity per layer" + (f"\n{title}" if title else ""))
    ax.grid(alpha=0.3)
    ax.legend(title="probe set", fontsize=8)
    _save(fig, stem)
    return fig


def plot_similarity(table: pd.DataFrame, stem, title: str = "") -> plt.Figure:
    """The calibrated similarity suite (``prism cka --measure``): one panel per measure, the score by
    layer (solid, one colour per probe set), its permutation-null mean (dashed) and the null's
    +-2 std band; a hollow marker where the layer's p-value is above 0.05."""
    measures = [m for m in SIMILARITY_MEASURES if m in table]
    cols = min(3, len(measures))
    rows = -(-len(measures) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), constrained_layout=True, squeeze=False)
    for ax, m in zip(axes.flat, measures):
        for i, (probe, df) in enumerate(table.groupby("probe", sort=False)):
            color = PALETTE[i % len(PALETTE)]
            ax.plot(df["layer"], df[m], "-", color=color, label=probe)
            sig = df[f"{m}_p_value"] <= 0.05
            ax.plot(df["layer"][sig], df[m][sig], "o", ms=4, color=color)
            ax.plot(df["layer"][~sig], df[m][~sig], "o", ms=4, mfc="none", color=color)
            null, spread = df[f"{m}_null_mean"], 2 * df[f"{m}_null_std"]
            ax.plot(df["layer"], null, "--", color=color, alpha=0.7)
            ax.fill_between(df["layer"], null - spread, null + spread, color=color, alpha=0.15, linewidth=0)
        ax.set_title(m + (" (distance, rad)" if m == "procrustes" else ""))
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(measures) :]:
        ax.axis("off")
    axes.flat[0].legend(title="probe (dashed: null)", fontsize=7)
    fig.suptitle("representation similarity per layer against a permutation null" + (f"\n{title}" if title else ""))
    _save(fig, stem)
    return fig


def plot_cka_matrix(matrix: pd.DataFrame, stem, title: str = "") -> plt.Figure:
    """Heatmap of CKA between every layer of A (rows) and every layer of B (columns)."""
    fig, ax = plt.subplots(figsize=(6, 5), constrained_layout=True)
    import seaborn as sns

    sns.heatmap(matrix, ax=ax, cmap="viridis", vmin=0, vmax=1, square=True, cbar_kws={"label": "linear CKA"})
    ax.invert_yaxis()
    ax.set_xlabel("layer of B")
    ax.set_ylabel("layer of A")
    if title:
        ax.set_title(title)
    _save(fig, stem)
    return fig


def plot_compare(table: pd.DataFrame, stem, tau: float = DEFAULT_THRESHOLD, labels=("U1", "U2")) -> plt.Figure:
    """F26 (left): % changed per component for both updates; F12 (right): cosine per component."""
    comps = table[table["group"] != "total"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), constrained_layout=True)
    x = range(len(comps))
    w = 0.4
    left.bar([i - w / 2 for i in x], 100 * comps["fraction_changed_1"], w, label=labels[0], color=PALETTE[0])
    left.bar([i + w / 2 for i in x], 100 * comps["fraction_changed_2"], w, label=labels[1], color=PALETTE[1])
    left.set_xticks(list(x), comps["group"], rotation=45, ha="right")
    left.set_ylabel(f"% of weights changed (> {100 * tau:g}% relative)")
    left.set_title("F26: update density by component")
    left.legend()
    right.bar(list(x), comps["cosine"], color=PALETTE[2])
    total = table[table["group"] == "total"]["cosine"]
    if len(total):
        right.axhline(float(total.iloc[0]), color="k", ls="--", lw=1, label=f"whole model {float(total.iloc[0]):.3f}")
        right.legend()
    right.set_xticks(list(x), comps["group"], rotation=45, ha="right")
    right.set_ylabel(f"cosine({labels[0]}, {labels[1]})")
    right.set_title("F12: direction agreement by component (Eq. 2)")
    right.set_ylim(min(0.0, float(comps["cosine"].min()) - 0.05) if len(comps) else 0, 1.0)
    _save(fig, stem)
    return fig


def plot_trajectory(
    table: pd.DataFrame,
    stem,
    tau: float = DEFAULT_THRESHOLD,
    label: str = "run",
    compare: pd.DataFrame | None = None,
    compare_label: str | None = None,
    components: list[str] | None = None,
) -> plt.Figure:
    """F16: cumulative normalized L2 (left) and % changed vs theta_0 (right) over steps, per
    component; the compared run (e.g. RL from base) dashed, the main run (RL from mid) solid."""
    key = changed_column(tau)
    comps = components or list(table["component"].unique())
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    runs = [(table, label, "-")] + ([(compare, compare_label or "compare", "--")] if compare is not None else [])
    for df, _, ls in runs:
        for i, comp in enumerate(comps):
            color = "k" if comp == "total" else PALETTE[i % len(PALETTE)]
            lw = 2.2 if comp == "total" else 1.2
            for ax, metric, scale in ((left, "normalized_l2", 1.0), (right, key, 100.0)):
                d = df[(df["component"] == comp) & (df["metric"] == metric)].sort_values("step")
                if len(d):
                    ax.plot(
                        d["step"], scale * d["value"], ls=ls, color=color, lw=lw, label=f"{comp}" if ls == "-" else None
                    )
    left.set_ylabel(r"cumulative normalized L2  $\|\theta_t-\theta_0\|/\|\theta_0\|$")
    right.set_ylabel(f"% of weights changed vs step 0 (> {100 * tau:g}%)")
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.suptitle(
        f"F16: weight trajectory — {label} (solid)" + (f" vs {compare_label} (dashed)" if compare is not None else "")
    )
    from matplotlib.lines import Line2D

    style = [Line2D([], [], color="k", ls="-", label=label)]
    if compare is not None:
        style.append(Line2D([], [], color="k", ls="--", label=compare_label or "compare"))
    left.legend(handles=style, fontsize=8, loc="upper left", title="run")
    right.legend(fontsize=7, title="component", loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(fig, stem)
    return fig


def plot_cka_curve(curve: pd.DataFrame, stem, title: str = "") -> plt.Figure:
    """CKA over training (live tracking): linear CKA of every layer to theta_0 against the step,
    one panel per probe set, one line per layer (dark: early layers, light: late ones)."""
    probes = list(curve["probe"].unique()) or ["probe"]
    fig, axes = plt.subplots(1, len(probes), figsize=(6 * len(probes), 4.2), squeeze=False, constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    for ax, probe in zip(axes[0], probes):
        df = curve[curve["probe"] == probe]
        layers = sorted(df["layer"].unique())
        for layer in layers:
            d = df[df["layer"] == layer].sort_values("step")
            ax.plot(d["step"], d["cka"], color=cmap(layer / max(len(layers) - 1, 1)), lw=1.3, label=f"layer {layer}")
        ax.set_xlabel("step")
        ax.set_ylabel(r"linear CKA to $\theta_0$")
        ax.set_title(f"probe set: {probe}")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle("Representation drift over training (layer 0 = embedding output)" + (f" — {title}" if title else ""))
    _save(fig, stem)
    return fig


def plot_landscape(df: pd.DataFrame, stem, score_label: str = "score") -> plt.Figure:
    """F13: the score along base -> mid -> rl (left) and over the a x b grid (right)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    path = df[df["kind"] == "path"].reset_index(drop=True)
    if len(path):
        left.plot(range(len(path)), path["score"], marker="o", color=PALETTE[0])
        left.set_xticks(range(len(path)), [f"({a:g},{b:g})" for a, b in zip(path["a"], path["b"])], rotation=45)
    left.set_xlabel("(a, b) along base -> mid -> rl")
    left.set_ylabel(score_label)
    left.set_title("F13: interpolation path (Eq. 3)")
    left.grid(alpha=0.3)
    grid = df[df["kind"] == "grid"]
    if len(grid):
        mat = grid.pivot_table(index="b", columns="a", values="score")
        import seaborn as sns

        sns.heatmap(mat, ax=right, cmap="viridis", annot=True, fmt=".2f", cbar_kws={"label": score_label})
        right.invert_yaxis()
    right.set_title("F13: W(a, b) = base + a(mid - base) + b(rl - mid)")
    _save(fig, stem)
    return fig


def plot_benchmarks(
    results: pd.DataFrame, stem, metrics=("math_easy", "math_hard", "code", "science", "macro")
) -> plt.Figure:
    """Benchmark accuracy of every model (base, mid-trained, RL): grouped bars, one group per model;
    95 % interval whiskers where ``results`` has ``<metric>_lo`` / ``<metric>_hi`` columns."""
    fig, ax = plt.subplots(figsize=(12, 4.2), constrained_layout=True)
    models = list(results["model"])
    w = 0.8 / len(metrics)
    for i, m in enumerate(metrics):
        err = None
        if f"{m}_lo" in results and f"{m}_hi" in results:
            err = [  # clipped: a bootstrap bound may sit a rounding error inside its estimate
                (100 * (results[m] - results[f"{m}_lo"])).clip(lower=0),
                (100 * (results[f"{m}_hi"] - results[m])).clip(lower=0),
            ]
        ax.bar(
            [j + (i - len(metrics) / 2 + 0.5) * w for j in range(len(models))],
            100 * results[m],
            w,
            yerr=err,
            error_kw={"elinewidth": 0.7, "capsize": 1.5, "ecolor": "0.3"},
            label=m,
            color=PALETTE[i % len(PALETTE)],
        )
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Benchmarks before/after mid-training and RL (greedy, format-gated)")
    ax.legend(ncol=len(metrics), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, stem)
    return fig


def plot_rewards(curves: dict[str, pd.DataFrame], stem, window: int = 5) -> plt.Figure:
    """Training reward of RL runs: per-step mean reward (faint) and its trailing ``window``-step mean,
    one line per run (``curves``: run -> table with ``step`` and ``reward``)."""
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for i, (run, df) in enumerate(curves.items()):
        c = PALETTE[i % len(PALETTE)]
        ax.plot(df["step"], df["reward"], color=c, alpha=0.25, lw=0.8)
        ax.plot(df["step"], df["reward"].rolling(window, min_periods=1).mean(), color=c, lw=1.8, label=run)
    ax.set_xlabel("RL step")
    ax.set_ylabel("mean reward of the step's samples")
    ax.set_title(f"RL training reward (faint: per step; bold: {window}-step mean)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, stem)
    return fig


def plot_diff_layers(layers: pd.DataFrame, stem, title: str = "") -> plt.Figure:
    """``prism diff``'s logit lens (``layers.csv``): left, KL(lens_A || lens_B) by layer, one line per
    probe set, shaded with its bootstrap interval; right, each model's KL(P_output || lens) by layer
    (solid A, dashed B). Log scale where every value is positive."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for i, (probe, df) in enumerate(layers.groupby("probe", sort=False)):
        color = PALETTE[i % len(PALETTE)]
        left.plot(df["layer"], df["kl_ab"], marker="o", ms=3.5, color=color, label=probe)
        if df["kl_ab_ci_low"].notna().any():
            left.fill_between(df["layer"], df["kl_ab_ci_low"], df["kl_ab_ci_high"], color=color, alpha=0.2, lw=0)
        right.plot(df["layer"], df["kl_a_to_output"], "o-", ms=3.5, color=color, label=f"{probe}: A")
        right.plot(df["layer"], df["kl_b_to_output"], "s--", ms=3.5, color=color, label=f"{probe}: B")
    for ax, values in ((left, layers["kl_ab"]), (right, layers[["kl_a_to_output", "kl_b_to_output"]].values.ravel())):
        if len(values) and (pd.Series(values) > 0).all():
            ax.set_yscale("log")
        ax.set_xlabel("layer (0 = embedding output)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    left.set_ylabel(r"KL(lens$_A$ || lens$_B$), mean over tokens")
    left.set_title("the two models' logit lenses, by layer\n(shaded: 95% bootstrap over prompts)")
    left.legend(title="probe set", fontsize=8)
    right.set_ylabel(r"KL(P$_{output}$ || lens), mean over tokens")
    right.set_title("each model's lens against its own output")
    right.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    _save(fig, stem)
    return fig


def plot_diff_lens(lens: pd.DataFrame, stem, top: int = 3, title: str = "") -> plt.Figure:
    """``prism diff``'s activation-difference lens (``lens.csv``): left, the RMS of the mean residual
    difference B - A by layer (all tokens solid, first positions dashed; one colour per probe
    set); right, for the first probe set over all tokens read through A's head, the ``top``
    tokens promoted (+) and suppressed (-) at each layer."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True, width_ratios=(1, 1.3))
    for i, (probe, df) in enumerate(lens.groupby("probe", sort=False)):
        color = PALETTE[i % len(PALETTE)]
        for j, (positions, d) in enumerate(df.groupby("positions", sort=False)):
            per_layer = d.groupby("layer")["delta_rms"].first()
            left.plot(
                per_layer.index,
                per_layer.values,
                "o-" if j == 0 else "s--",
                ms=3.5,
                color=color,
                label=f"{probe} ({positions})",
            )
    left.set_xlabel("layer (0 = embedding output)")
    left.set_ylabel(r"RMS of mean($h_B - h_A$)")
    left.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    left.set_title("size of the mean residual difference")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    first = lens[(lens["probe"] == lens["probe"].iloc[0]) & (lens["positions"] == "all") & (lens["head"] == "a")]
    layers = sorted(first["layer"].unique())
    right.axis("off")
    lines = []
    for layer in layers:
        d = first[(first["layer"] == layer) & (first["rank"] <= top)]
        up = ", ".join(repr(t) for t in d[d["direction"] == "promoted"].sort_values("rank")["token"])
        down = ", ".join(repr(t) for t in d[d["direction"] == "suppressed"].sort_values("rank")["token"])
        lines.append(f"{layer:>3}  + {up}\n     - {down}")
    right.text(0, 1, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=7, transform=right.transAxes)
    right.set_title(f"tokens the difference promotes (+) / suppresses (-), {lens['probe'].iloc[0]}, A's head")
    if title:
        fig.suptitle(title)
    _save(fig, stem)
    return fig


def plot_heads(heads: pd.DataFrame, stem, title: str = "") -> plt.Figure:
    """Per attention head: normalized L2 of its update, a layer x head heatmap per component
    (q, k, v rows and o columns of the head; k/v panels have the key-value heads of a GQA model)."""
    import seaborn as sns

    comps = [c for c in ("attn_q", "attn_k", "attn_v", "attn_o") if c in set(heads["component"])]
    fig, axes = plt.subplots(1, len(comps), figsize=(3.6 * len(comps), 3.4), constrained_layout=True, squeeze=False)
    for ax, comp in zip(axes[0], comps):
        sub = heads[(heads["component"] == comp) & heads["layer"].notna()]
        grid = sub.groupby(["layer", "head"])["normalized_l2"].max().unstack("head")
        sns.heatmap(grid, ax=ax, cmap="viridis", cbar_kws={"label": "normalized L2"})
        ax.set_title(comp)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    if title:
        fig.suptitle(title)
    _save(fig, stem)
    return fig
