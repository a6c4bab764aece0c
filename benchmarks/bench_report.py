"""The Markdown report a benchmark script prints to a file (``--markdown PATH``) for the docs.

A script adds lines and tables to :data:`REPORT` as it prints its results, then calls
:func:`write_markdown`; ``docs/performance.md`` includes the files under ``benchmarks/results/``.
"""

from __future__ import annotations

from pathlib import Path

#: Markdown of the printed results (``--markdown PATH`` writes it; the docs include the file).
REPORT: list[str] = []


def md_table(header: list[str], rows: list[list[str]]) -> None:
    """Add a Markdown table to :data:`REPORT`."""
    REPORT.extend(["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)])
    REPORT.extend("| " + " | ".join(r) + " |" for r in rows)
    REPORT.append("")


def write_markdown(path: str | None, title: str) -> None:
    """Write :data:`REPORT` under ``title`` to ``path`` (nothing without ``--markdown``)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("\n".join([f"### {title}", "", *REPORT]).rstrip() + "\n")
        print(f"\nwrote {path}")
