"""Draw a command's figures in a helper process that imports matplotlib while the command computes.

A command such as ``prism audit`` has nothing to draw until its tables are written, and by then
it has imported torch (1-1.5 s) and done its work on one core; drawing the figure afterwards adds
matplotlib's import, its PDF backend and the drawing itself (~0.9 s on a tiny model, measured in
``benchmarks/startup.py``). :func:`started` launches a helper Python process (:func:`serve`) as
the command begins: on a second core it imports matplotlib, pandas and the PDF backend while the
command imports torch and computes, then waits on its stdin. :meth:`FigureProcess.draw` sends it
the figures to draw, each named by its ``plot_*`` function in :mod:`prism_analysis.figures` and the
tables (CSV files the command has written) it is drawn from, and waits until they are written.
Figures are always drawn from the saved tables (:func:`draw` does the same in the caller's process
when no helper runs), so the two paths give the same files.

The helper is used only when it can help: a second core is free to the process, and
``PRISM_FIGURE_PROCESS`` is not ``0`` (the test suite sets it to ``0``: it draws hundreds of
figures in one process that has imported matplotlib once). If the helper cannot start, exits, or
fails to draw, the figures are drawn in the caller's process instead, which reports any error the
usual way. The helper writes only the files it is asked for, inside the command's temporary output
directory.

A request (one JSON line on the helper's stdin)::

    {"dir": "/out/.audit.tmp-123", "figures": [
        {"plot": "plot_audit", "tables": {"layers": "layers.csv", "components": "components.csv"},
         "stem": "update_by_layer_and_component", "options": {"title": "a -> b"}}]}
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

#: ``PRISM_FIGURE_PROCESS=0`` draws in the command's own process.
ENV = "PRISM_FIGURE_PROCESS"


@dataclass
class Plot:
    """One figure: ``figures.<plot>(**tables read from CSV, stem=dir/stem, **options)``."""

    plot: str
    tables: dict[str, str]
    stem: str
    options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"plot": self.plot, "tables": self.tables, "stem": self.stem, "options": self.options}


def draw(directory: str | os.PathLike, figures: list[Plot], process: FigureProcess | None = None) -> None:
    """Draw ``figures`` from the tables in ``directory``: in ``process`` when one is running and
    draws them all, else here."""
    if not figures:
        return
    if process is not None and process.draw(directory, figures):
        return
    _draw_here(Path(directory), [f.to_dict() for f in figures], _formats())


def _formats() -> list[str] | None:
    """The file formats :func:`prism_analysis.figures.formats` chose in this context, or None (the
    default) when nothing has imported the figures module."""
    plots = sys.modules.get(f"{__package__}.figures")
    return list(plots.chosen_formats()) if plots is not None else None


def _draw_here(directory: Path, figures: list[dict], formats: list[str] | None) -> None:
    import pandas as pd

    from . import figures as plots

    with plots.formats(*formats) if formats else contextlib.nullcontext():
        for fig in figures:
            name = fig["plot"]
            if not name.startswith("plot_") or not callable(getattr(plots, name, None)):
                raise ValueError(f"no figure function {name!r} in prism_analysis.figures")
            tables = {arg: _read(pd, directory / csv) for arg, csv in fig["tables"].items()}
            getattr(plots, name)(**tables, stem=directory / fig["stem"], **fig.get("options", {}))


#: Integer columns that may hold missing values (pandas' nullable Int64 in the tables): read
#: back as Int64, not as float64, so a figure labels layer 3 as "3" whether or not some tensor
#: has no layer.
NULLABLE_INTEGERS = ("layer", "expert")


def _read(pd, path: Path):
    """A table as written by ``DataFrame.to_csv``, with the dtypes the figures were drawn from in
    memory (:data:`NULLABLE_INTEGERS`); a table with no columns (written as a single newline, which
    ``read_csv`` refuses) is an empty frame."""
    try:
        table = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    for col in NULLABLE_INTEGERS:
        if col in table and pd.api.types.is_float_dtype(table[col]):
            values = table[col].dropna()
            if (values == values.round()).all():
                table[col] = table[col].astype("Int64")
    return table


def _spare_core() -> bool:
    try:
        return len(os.sched_getaffinity(0)) >= 2
    except AttributeError:  # not on Linux
        return (os.cpu_count() or 1) >= 2


#: Seconds the command waits for the helper to draw before drawing itself.
TIMEOUT = 600


class FigureProcess:
    """A running helper (see the module docstring). Use :func:`started`. ``error``: what the helper
    printed when it failed to draw (the command then draws itself)."""

    def __init__(self) -> None:
        # this very prism_analysis, first on the path in place of the current directory (which
        # `python -m` would put first: a stray pandas.py or checkout there must not be imported)
        root = str(Path(__file__).resolve().parents[1])
        code = (
            f"import sys; sys.path[0:1] = [{root!r}] if sys.path[0] == '' else [{root!r}, sys.path[0]]; "
            "from prism_analysis.figure_process import serve; serve()"
        )
        self.error = ""
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def draw(self, directory: str | os.PathLike, figures: list[Plot]) -> bool:
        """Send the request and wait (at most :data:`TIMEOUT` seconds); True when the helper drew
        every figure. Whatever it printed to stderr (matplotlib's warnings) is passed on. An
        interrupt stops the helper before the command's output directory is cleaned up."""
        request = {
            "dir": str(Path(directory).resolve()),
            "figures": [f.to_dict() for f in figures],
            "formats": _formats(),
        }
        try:
            _, err = self.proc.communicate((json.dumps(request) + "\n").encode(), timeout=TIMEOUT)
        except (OSError, ValueError, subprocess.TimeoutExpired):  # exited before reading, or hangs
            self.close()
            return False
        except BaseException:  # KeyboardInterrupt: nothing may go on writing into the directory
            self.close()
            raise
        err = err.decode(errors="replace") if err else ""
        if self.proc.returncode == 0:
            sys.stderr.write(err)
            return True
        self.error = err.strip()
        return False

    def close(self) -> None:
        """Stop the helper if it is still running (the command failed before drawing)."""
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(OSError, ValueError):
            self.proc.communicate()


@contextlib.contextmanager
def started(enabled: bool = True):
    """Yield a :class:`FigureProcess` importing matplotlib beside the command, or None when it
    would not help (``enabled`` false, one core, ``PRISM_FIGURE_PROCESS=0``) or cannot start. The
    helper is stopped on the way out."""
    process = None
    python = bool(sys.executable) and not getattr(sys, "frozen", False)  # not an embedding host
    if enabled and python and os.environ.get(ENV, "1") != "0" and _spare_core():
        with contextlib.suppress(OSError):
            process = FigureProcess()
    try:
        yield process
    finally:
        if process is not None:
            process.close()


def main() -> int:
    """The helper: import what drawing needs, then draw the one request read from stdin; 0 without
    drawing when stdin closes first (the command failed or drew nothing). A failure raises (to
    :func:`serve`, which reports it and exits 1)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    # imported now, while the command computes: the backends (the PDF one imports fontTools),
    # pyplot and pandas (through figures)
    import matplotlib.backends.backend_agg
    import matplotlib.backends.backend_pdf

    from . import figures  # noqa: F401

    line = sys.stdin.readline()
    if not line.strip():
        return 0
    request = json.loads(line)
    _draw_here(Path(request["dir"]), request["figures"], request.get("formats"))
    return 0


def serve() -> None:
    """:func:`main`, then exit as the ``prism`` command does
    (:func:`prism_analysis.fast_exit.exit_now`): the files are written and closed, and the
    interpreter's teardown of matplotlib and pandas (~0.1 s) is time the command would wait for.
    A failure is one line on stderr (kept as :attr:`FigureProcess.error`) and status 1: the command
    then draws the figures itself."""
    from .fast_exit import exit_now

    try:
        code = main()
    except BaseException as e:  # a broken request or figure, or the command went away
        print(f"figure helper: {type(e).__name__}: {e}", file=sys.stderr)
        code = 1
    exit_now(code)


if __name__ == "__main__":
    serve()
