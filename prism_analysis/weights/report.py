"""The audit as text: PRISM Tables 12 (divergence), 22 (threshold sweep) and 23 (components).

What ``prism audit`` prints; the same numbers are in the audit's tables and ``summary.json``.
"""

from __future__ import annotations

from ..metrics import DEFAULT_THRESHOLD, threshold_key


def format_audit(audit, tau: float = DEFAULT_THRESHOLD) -> str:
    """A compact text summary of an :class:`~prism_analysis.weights.audit.Audit` in the style of PRISM
    Tables 12, 22 and 23, with ``tau`` the threshold of the per-component column."""
    total = audit.stats["total"].compute()
    key = threshold_key(tau)
    lines = [
        f"A: {audit.a}",
        f"B: {audit.b}",
        f"tensors compared: {len(audit.tensors)}   elements: {total['numel']:,}"
        + (f"   non-finite: {total['nonfinite']:,}" if total["nonfinite"] else ""),
        f"normalized L2 (Eq. 1): {total['normalized_l2']:.6g}   bitwise equal: {100 * total['fraction_equal']:.2f}%",
        "",
        "threshold sweep (T22)   " + "  ".join(f"{100 * t:>6g}%" for t in audit.thresholds),
        "  % changed             " + "  ".join(f"{100 * v:>7.2f}" for v in total["fraction_changed"].values()),
        "  % unchanged           " + "  ".join(f"{100 - 100 * v:>7.2f}" for v in total["fraction_changed"].values()),
        "",
        f"{'component (T23)':<16}{'numel':>14}{'norm L2':>12}{f'% changed@{100 * tau:g}%':>16}{'% equal':>10}",
    ]
    for comp, s in audit.stats["components"].items():
        m = s.compute()
        lines.append(
            f"{comp:<16}{m['numel']:>14,}{m['normalized_l2']:>12.4g}"
            f"{100 * m['fraction_changed'].get(key, float('nan')):>16.2f}{100 * m['fraction_equal']:>10.2f}"
        )
    if audit.spectral:
        lines += ["", *_format_spectral(audit)]
    if total["nonfinite"]:
        lines += [
            "",
            f"note: {total['nonfinite']:,} elements are NaN or Inf in A or B: left out of the L2 sums, "
            "counted as changed unless bitwise equal",
        ]
    if audit.cast:
        kinds = sorted({f"{c['dtype_a']} vs {c['dtype_b']}" for c in audit.cast})
        lines += [
            "",
            f"note: {len(audit.cast)} tensors differ in dtype ({', '.join(kinds)}): compared in the wider dtype; "
            "'bitwise equal' covers the tensors whose dtypes match",
        ]
    if audit.unclassified:
        lines += [
            "",
            f"note: {len(audit.unclassified)} tensors match no component rule and count under 'other': "
            f"{audit.unclassified[:5]}",
        ]
    if audit.only_in_a or audit.only_in_b:
        lines += [
            "",
            f"only in A: {len(audit.only_in_a)} tensors {audit.only_in_a[:5]}",
            f"only in B: {len(audit.only_in_b)} tensors {audit.only_in_b[:5]}",
        ]
    return "\n".join(lines)


def _format_spectral(audit) -> list[str]:
    """The update-geometry block of :meth:`format` (parameter-weighted means over 2-D tensors)."""
    head = ["erank", "stable", "max angle", "mean angle", "align", "bf16 vis"]
    cols = ["effective_rank", "stable_rank", "max_principal_angle_deg", "mean_principal_angle_deg"]
    cols += ["principal_alignment", "fraction_visible_bf16"]
    lines = [
        "update geometry (parameter-weighted means; angles in degrees; bf16 vis = % visible in bf16)",
        f"{'component':<16}" + "".join(f"{h:>11}" for h in head),
    ]
    groups = [*audit.spectral["components"].items(), ("total", audit.spectral["total"])]
    for name, acc in groups:
        m = acc.compute()
        values = [m[c] * (100 if c == "fraction_visible_bf16" else 1) for c in cols]
        lines.append(f"{name:<16}" + "".join(f"{v:>11.4g}" for v in values))
    return lines
