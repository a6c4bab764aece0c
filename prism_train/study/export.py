"""``prism figures``: a study's figures and tables redrawn from its saved tables into another
directory (``figures/`` in the repository), with the tables copied beside them (``INTO/run``) so they
can be redrawn again in a fresh clone. Files it did not write there are never replaced."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from prism_analysis.errors import PrismError
from prism_analysis.figures import formats
from prism_analysis.outputs import staged_dir, write_json

from .report import report

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
        with formats("png"):  # only the PNGs are exported: no PDF is drawn
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
