"""The committed notebooks are current: their code is what notebooks/make_notebooks.py writes, they
were executed (outputs saved, no errors), and running them again gives the same text outputs."""

import importlib.util

import pytest
from helpers import ROOT

# the notebook runner is in the test extra; an environment without it (a GPU image) skips this file
nbformat = pytest.importorskip("nbformat")

spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "notebooks" / "make_notebooks.py")
make_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_notebooks)
NAMES = list(make_notebooks.NOTEBOOKS)


def committed(name):
    return nbformat.read(ROOT / "notebooks" / name, as_version=4)


def code(nb):
    return [c.source for c in nb.cells if c.cell_type == "code"]


def text_outputs(nb) -> list[list[str]]:
    """Per code cell, its outputs as text (streams, text/plain results; images by their kind)."""
    out = []
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        texts = []
        for o in c.outputs:
            if o.output_type == "stream":
                texts.append(o.text)
            elif o.output_type in ("execute_result", "display_data"):
                texts.append("<image>" if "image/png" in o.data else o.data.get("text/plain", ""))
            else:
                texts.append(f"{o.output_type}: {o.get('ename')} {o.get('evalue')}")
        out.append(texts)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_the_generated_one_and_was_run(name):
    nb, fresh = committed(name), make_notebooks.build(name)
    assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in fresh.cells], (
        "notebook out of date: run `make notebooks`"
    )
    cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in cells), "not executed: run `make notebooks`"
    assert not any(o.output_type == "error" for c in cells for o in c.outputs)
    assert any("image/png" in o.get("data", {}) for c in cells for o in c.outputs), "a figure is shown"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_running_again_gives_the_committed_outputs(name):
    nb = make_notebooks.execute(make_notebooks.build(name))
    assert text_outputs(nb) == text_outputs(committed(name))
