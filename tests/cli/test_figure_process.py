"""The figure helper process (prism_analysis.figure_process): `prism audit` draws its figures in a
process that imported matplotlib beside the audit, from the tables it wrote, and the files are
those of drawing in the command's own process; any failure of the helper falls back to that."""

import os
import subprocess
import sys

import pandas as pd
import pytest
from helpers import save_planted_pair

from prism_analysis import figure_process
from prism_analysis.figure_process import FigureProcess, Plot, draw, started

ON = {**os.environ, "PRISM_FIGURE_PROCESS": "1"}
TWO_CORES = figure_process._spare_core()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return save_planted_pair(tmp_path_factory.mktemp("pair"))


#: the audit as a user runs it, in a fresh process; prints whether matplotlib was imported in it
AUDIT = """
import sys
from prism_cli import main
code = main(sys.argv[1:])
print("MATPLOTLIB_IN_COMMAND", "matplotlib" in sys.modules)
sys.exit(code)
"""


def _audit(pair, out, env, *extra):
    return subprocess.run(
        [sys.executable, "-c", AUDIT, "audit", str(pair / "a"), str(pair / "b"), "--out", str(out), "--quiet", *extra],
        env=env,
        capture_output=True,
        text=True,
    )


@pytest.mark.skipif(not TWO_CORES, reason="the helper runs only with a second core")
def test_audit_draws_every_figure_in_the_helper_as_from_the_tables_in_memory(pair, tmp):
    from prism_analysis import audit
    from prism_analysis.figures import plot_audit, plot_heads

    helper = _audit(pair, pair / "helper", ON, "--units", "heads")  # two figures, one through seaborn
    assert helper.returncode == 0, helper.stderr
    assert "MATPLOTLIB_IN_COMMAND False" in helper.stdout  # drawn by the helper, not the command
    assert not list(pair.glob(".helper.tmp-*"))
    # the same figures drawn here from the audit's frames in memory, never written to CSV
    res = audit(pair / "a", pair / "b", units=("heads",), progress=False)
    plot_audit(res.layers, res.components, tmp / "update_by_layer_and_component", title="a -> b")
    plot_heads(res.heads, tmp / "heads_by_layer", title="a -> b")
    for stem in ("update_by_layer_and_component", "heads_by_layer"):
        png = f"{stem}.png"
        assert (pair / "helper" / png).read_bytes() == (tmp / png).read_bytes(), png
        assert (pair / "helper" / f"{stem}.pdf").stat().st_size > 0


@pytest.mark.skipif(not TWO_CORES, reason="the helper runs only with a second core")
def test_a_failed_audit_stops_the_helper_and_writes_nothing(pair):
    (pair / "empty").mkdir(exist_ok=True)
    r = _audit_of(pair / "empty", pair / "b", pair / "bad")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "empty" in r.stderr, r.stderr
    assert not (pair / "bad").exists() and not list(pair.glob(".bad.tmp-*"))


def _audit_of(a, b, out):
    cmd = [sys.executable, "-m", "prism_cli", "audit", str(a), str(b), "--out", str(out)]
    return subprocess.run(cmd, env=ON, capture_output=True, text=True)


def _tables(tmp):
    pd.DataFrame({"layer": [0, 1], "normalized_l2": [0.1, 0.3]}).to_csv(tmp / "layers.csv", index=False)
    pd.DataFrame({"component": ["attn_q", "mlp_up"], "fraction_changed_0.01": [0.2, 0.9]}).to_csv(
        tmp / "components.csv", index=False
    )
    return [Plot("plot_audit", {"layers": "layers.csv", "components": "components.csv"}, "f11", {"title": "t"})]


@pytest.mark.skipif(not TWO_CORES, reason="the helper runs only with a second core")
def test_helper_draws_the_request_and_exits(tmp, monkeypatch):
    monkeypatch.setenv("PRISM_FIGURE_PROCESS", "1")
    plots = _tables(tmp)
    with started() as process:
        assert isinstance(process, FigureProcess)
        assert process.draw(tmp, plots)
        assert process.proc.returncode == 0
    assert (tmp / "f11.png").stat().st_size > 0 and (tmp / "f11.pdf").stat().st_size > 0


def test_helper_honours_the_formats_of_the_caller(tmp):
    from prism_analysis.figures import formats

    plots = _tables(tmp)
    with formats("png"):
        assert figure_process._formats() == ["png"]
        process = FigureProcess()
        try:
            assert process.draw(tmp, plots)
        finally:
            process.close()
    assert (tmp / "f11.png").is_file() and not (tmp / "f11.pdf").exists()


def test_a_failing_helper_falls_back_to_the_caller_which_reports_the_error(tmp):
    _tables(tmp)
    bad = [Plot("plot_nothing", {"layers": "layers.csv"}, "x")]
    process = FigureProcess()
    try:
        assert process.draw(tmp, bad) is False
        assert "no figure function 'plot_nothing'" in process.error  # the helper refused it, saying why
    finally:
        process.close()
    process = FigureProcess()
    try:
        with pytest.raises(ValueError, match="plot_nothing"):
            draw(tmp, bad, process)  # drawn again here, where the error is raised
    finally:
        process.close()


def test_helper_without_a_request_exits_quietly():
    r = subprocess.run(
        [sys.executable, "-m", "prism_analysis.figure_process"], input="", capture_output=True, text=True, env=ON
    )
    assert r.returncode == 0 and r.stderr == ""


def test_started_yields_none_when_it_would_not_help(monkeypatch):
    monkeypatch.setenv("PRISM_FIGURE_PROCESS", "1")
    with started(enabled=False) as p:
        assert p is None
    monkeypatch.setattr(figure_process, "_spare_core", lambda: False)
    with started() as p:
        assert p is None
    monkeypatch.setattr(figure_process, "_spare_core", lambda: True)
    monkeypatch.setenv("PRISM_FIGURE_PROCESS", "0")
    with started() as p:
        assert p is None
    monkeypatch.setenv("PRISM_FIGURE_PROCESS", "1")
    with pytest.raises(RuntimeError), started() as p:  # the helper is stopped when the command fails
        assert p is not None
        raise RuntimeError
    assert p.proc.returncode is not None


def test_tables_read_back_have_the_dtypes_they_were_drawn_from(tmp):
    pd.DataFrame([]).to_csv(tmp / "empty.csv", index=False)
    assert figure_process._read(pd, tmp / "empty.csv").empty
    # a layer column with a missing value is Int64 in memory; read_csv alone makes it float64, and
    # the heads heatmap would label its rows 0.0, 1.0, ...
    heads = pd.DataFrame(
        {
            "component": ["attn_q", "attn_q", "attn_q"],
            "layer": pd.array([0, 1, None], dtype="Int64"),
            "head": [0, 0, 0],
            "normalized_l2": [0.1, 0.2, 0.3],
        }
    )
    heads.to_csv(tmp / "heads.csv", index=False)
    back = figure_process._read(pd, tmp / "heads.csv")
    pd.testing.assert_frame_equal(back, heads, check_dtype=False)
    assert str(back["layer"].dtype) == "Int64"


def test_an_interrupt_while_drawing_stops_the_helper(tmp, monkeypatch):
    process = FigureProcess()
    communicate = process.proc.communicate

    def interrupted(*a, **k):  # Ctrl-C while waiting for the drawing; later calls (close) go through
        monkeypatch.setattr(process.proc, "communicate", communicate)
        raise KeyboardInterrupt

    monkeypatch.setattr(process.proc, "communicate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        process.draw(tmp, _tables(tmp))
    assert process.proc.returncode is not None and process.proc.returncode < 0  # killed, and reaped
