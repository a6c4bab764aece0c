"""The paper's figures, drawn from saved tables (so any figure can be redrawn without recomputing).

Every ``plot_*`` function takes pandas tables (as written by the analysis modules), writes
``<stem>.png`` and ``<stem>.pdf`` and returns the matplotlib Figure. Colours come from seaborn's
colour-blind-safe palette.
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

PALETTE = sns.color_palette("colorblind")


def _save(fig, stem: str | os.PathLike) -> None:
    stem = Path(stem)
    fig.savefig(stem.with_suffix(".png"), dpi=150, bbox_inches="tight")
    fig.savefig(stem.with_suffix(".pdf"), bbox_inches="tight")
    plt.close(fig)


def plot_audit(layers: pd.DataFrame, components: pd.DataFrame, stem, tau: float = 0.01,
               title: str = "") -> plt.Figure:
    """F11: per-layer normalized L2 (top) and % of weights changed by component (bottom)."""
    col = f"fraction_changed_{float(tau)!r}"
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), constrained_layout=True)
    if len(layers):
        top.plot(layers["layer"], layers["normalized_l2"], marker="o", color=PALETTE[0])
    top.set_xlabel("layer")
    top.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    top.set_ylabel(r"normalized L2  $\|W_B-W_A\|_F/\|W_A\|_F$")
    top.set_title("F11 (top): update size per layer")
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


def plot_cka_layers(layers: pd.DataFrame, stem, title: str = "") -> plt.Figure:
    """F14: linear CKA per layer, one line per probe set, bootstrap interval shaded."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2), constrained_layout=True)
    for i, (probe, df) in enumerate(layers.groupby("probe", sort=False)):
        color = PALETTE[i % len(PALETTE)]
        ax.plot(df["layer"], df["cka"], marker="o", ms=3.5, color=color, label=probe)
        if df["ci_low"].notna().any():
            ax.fill_between(df["layer"], df["ci_low"], df["ci_high"], color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel("layer (0 = embedding output)")
    ax.set_ylabel("linear CKA")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title("F14: representation similarity per layer" + (f"\n{title}" if title else ""))
    ax.grid(alpha=0.3)
    ax.legend(title="probe set", fontsize=8)
    _save(fig, stem)
    return fig


def plot_cka_matrix(matrix: pd.DataFrame, stem, title: str = "") -> plt.Figure:
    """Heatmap of CKA between every layer of A (rows) and every layer of B (columns)."""
    fig, ax = plt.subplots(figsize=(6, 5), constrained_layout=True)
    sns.heatmap(matrix, ax=ax, cmap="viridis", vmin=0, vmax=1, square=True, cbar_kws={"label": "linear CKA"})
    ax.invert_yaxis()
    ax.set_xlabel("layer of B")
    ax.set_ylabel("layer of A")
    if title:
        ax.set_title(title)
    _save(fig, stem)
    return fig
