"""Writes the three notebooks (run once after editing the cells below: python notebooks/make_notebooks.py).
Each notebook reads the study run directory from $PRISM_RUN (default: runs/smoke)."""

import nbformat as nbf

SETUP = """import os
from pathlib import Path
RUN = Path(os.environ.get("PRISM_RUN", "runs/smoke"))   # a `prism reproduce` run directory
assert RUN.is_dir(), f"make one first: prism reproduce --preset smoke --out {RUN}"
"""

NOTEBOOKS = {
    "01_cka_quickstart.ipynb": [
        (
            "md",
            "# CKA quickstart\n`prism_analysis.cka` works on arrays you already have (numpy or torch, any "
            "device) and on checkpoints. Linear CKA (PRISM Eq. 4) centres columns and accumulates in float64.",
        ),
        ("code", SETUP),
        (
            "code",
            """import numpy as np
from prism_analysis import cka
np.random.seed(1337)
X = np.random.randn(100, 10)
Y = np.random.randn(100, 10) + X
print("linear  ", round(cka.linear_cka(X, Y), 5))                 # 0.55761 (PRISM.md reference)
print("debiased", round(cka.linear_cka(X, Y, debiased=True), 5))  # 0.51346
print("rbf     ", round(cka.rbf_cka(X, Y, sigma=0.5), 5))         # 0.65483""",
        ),
        ("md", "All layer pairs at once (one product of stacked Gram matrices), as a DataFrame for heatmaps:"),
        (
            "code",
            """layers_x = [X @ np.random.randn(10, 10) for _ in range(4)]
layers_y = [Y @ np.random.randn(10, 8) for _ in range(3)]
M = cka.cka_matrix(layers_x, layers_y, as_frame=True)
M.round(3)""",
        ),
        ("md", "Unlimited rows (e.g. every token) with `StreamingCKA`; shards merge exactly:"),
        (
            "code",
            """s1, s2 = cka.StreamingCKA(), cka.StreamingCKA()
s1.update(X[None, :60], Y[None, :60]); s2.update(X[None, 60:], Y[None, 60:])
print(s1.merge(s2).compute().item(), cka.linear_cka(X, Y))""",
        ),
        ("md", "On two checkpoints: per-layer CKA on a probe set, with PRISM's bootstrap interval (F14):"),
        (
            "code",
            """from prism_analysis.model_cka import model_cka
from prism_train.study_analysis import probe_sets
probes = {k: v for k, v in probe_sets(12).items() if k == "rl_prompts"}
mid = sorted((RUN / "models/mid_mcs").glob("step_*"))[-1]      # last saved step of each run
rl = sorted((RUN / "models/rl_mid_mcs").glob("step_*"))[-1]
res = model_cka(mid, rl, probes, bootstrap=3, progress=False, device="cpu")
res.layers.round(4)""",
        ),
    ],
    "02_audit_a_checkpoint_pair.ipynb": [
        (
            "md",
            "# Audit a checkpoint pair\nUpdate size (normalized L2, Eq. 1) and sparsity (fraction changed at a "
            "threshold sweep, bitwise equality) per tensor, layer, component and for the whole model, streamed "
            "one tensor pair at a time.",
        ),
        ("code", SETUP),
        (
            "code",
            """from prism_analysis.weights import audit
base = sorted((RUN / "models/base").glob("step_*"))[-1]
mid = sorted((RUN / "models/mid_mcs").glob("step_*"))[-1]
res = audit(base, mid, progress=False, device="cpu")
print(res.format())""",
        ),
        ("code", "res.components[['component', 'numel', 'normalized_l2', 'fraction_changed_0.01', 'fraction_equal']]"),
        ("code", "res.layers[['layer', 'normalized_l2', 'fraction_changed_0.01']]"),
        ("md", "The same as files (summary.json, tensors/layers/components.csv, the F11 figure):"),
        (
            "code",
            """import tempfile
out = Path(tempfile.mkdtemp()) / "audit"
res.save(out)
sorted(p.name for p in out.iterdir())""",
        ),
        (
            "code",
            """from IPython.display import Image
Image(filename=str(out / "update_by_layer_and_component.png"))""",
        ),
    ],
    "03_reproduce_prism_figures.ipynb": [
        (
            "md",
            "# Redraw every PRISM figure of a study run\nFigures are drawn from the saved tables of "
            "`RUN/analysis` and `RUN/eval`; nothing is recomputed.",
        ),
        ("code", SETUP),
        (
            "code",
            """import json, tempfile, shutil
from prism_train.study_report import report
tmp = Path(tempfile.mkdtemp()) / "run"
shutil.copytree(RUN, tmp)          # redraw into a copy, leaving RUN as it is
summary = report(tmp)
sorted(p.name for p in (tmp / "figures").glob("*.png"))""",
        ),
        (
            "code",
            """import pandas as pd
pd.DataFrame(summary["findings"])""",
        ),
        (
            "code",
            """from IPython.display import Image, display
for p in sorted((tmp / "figures").glob("*.png")):
    display(Image(filename=str(p), width=700))""",
        ),
    ],
}

for name, cells in NOTEBOOKS.items():
    nb = nbf.v4.new_notebook()
    nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbf.write(nb, f"notebooks/{name}")
    print("wrote", name)
