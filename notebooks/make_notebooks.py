"""Writes the three notebooks from the cells below, and with ``--execute`` runs them and saves their
outputs (``make notebooks`` does both), so a reader on GitHub sees the figures and tables.

Every notebook runs in a fresh clone without training anything: the first two build tiny random
checkpoints (and planted updates of them) in a temporary directory, the third redraws the paper's
figures from the committed tables of a study run in ``figures/run``. Outputs are deterministic
(seeded models, no temporary paths printed), so ``tests/test_notebooks.py`` can check that the
committed notebooks are current.

    python notebooks/make_notebooks.py            # write the notebooks (no outputs)
    python notebooks/make_notebooks.py --execute  # write and run them (cwd: the repository root)
"""

import argparse
import os
from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

TINY_CHECKPOINTS = """import os, tempfile
from pathlib import Path
import torch
from transformers.utils import logging
from prism_train.models import build_model
from prism_train.tokenizer import train_tokenizer

logging.disable_progress_bar()   # no "Writing model shards" bars in the outputs

os.chdir(tempfile.mkdtemp(prefix="prism-notebook-"))   # everything below is written here
tokenizer = train_tokenizer(["The quick brown fox jumps over the lazy dog. Tom has 3 apples."] * 50, vocab_size=300)

def save(model, name):
    model.save_pretrained(name)
    tokenizer.save_pretrained(name)
    return Path(name)

def planted_update(model, share, size, seed):
    \"\"\"Move a random `share` of every weight by a relative `size` (a planted update).\"\"\"
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            hit = torch.rand(p.shape, generator=g) < share
            p.add_(torch.where(hit, size * p * torch.randn(p.shape, generator=g), 0))
    return model
"""

NOTEBOOKS = {
    "01_cka_quickstart.ipynb": [
        (
            "md",
            "# CKA quickstart\n`prism_analysis.cka` works on arrays you already have (numpy or torch, any "
            "device) and on checkpoints. Linear CKA (PRISM Eq. 4) centres columns and accumulates in float64.",
        ),
        (
            "code",
            """import numpy as np
from prism_analysis import cka
np.random.seed(1337)
X = np.random.randn(100, 10)
Y = np.random.randn(100, 10) + X
print("linear  ", round(cka.linear_cka(X, Y), 5))                 # 0.55761 (published reference value)
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
s1.update(X[None, :60], Y[None, :60])
s2.update(X[None, 60:], Y[None, 60:])
print(round(s1.merge(s2).compute().item(), 6), round(cka.linear_cka(X, Y), 6))  # fp32 products, float64 sums""",
        ),
        (
            "md",
            "On two checkpoints: per-layer CKA on all probe prompts with its jackknife interval (`cka_ci_*`), and "
            "PRISM's resamples of half the prompts alongside (`resample_*`) (F14). Here two "
            "tiny LLaMA checkpoints are made on the spot: a random model, and the same model with a small planted "
            "update of every weight.",
        ),
        ("code", TINY_CHECKPOINTS),
        (
            "code",
            """a = save(build_model("llama", seed=0, vocab_size=len(tokenizer)), "model_a")
model = build_model("llama", seed=0, vocab_size=len(tokenizer))
b = save(planted_update(model, share=1.0, size=0.05, seed=1), "model_b")
prompts = [f"Question: Tom has {i} apples and buys {i + 3} more. How many now?" for i in range(40)]
from prism_analysis.representations.model_cka import model_cka
res = model_cka(a, b, {"questions": prompts}, bootstrap=5, progress=False, device="cpu")
res.layers.round(4)""",
        ),
        (
            "code",
            """res.save("cka_out")
from IPython.display import Image
Image(filename="cka_out/cka_by_layer.png")""",
        ),
    ],
    "02_audit_a_checkpoint_pair.ipynb": [
        (
            "md",
            "# Audit a checkpoint pair\nUpdate size (normalized L2, Eq. 1) and sparsity (fraction changed at a "
            "threshold sweep, bitwise equality) per tensor, layer, component and for the whole model, streamed "
            "one tensor pair at a time. The checkpoints are made on the spot: a base model, a 'mid-trained' one "
            "(90% of the weights moved by ~5%: dense, like PRISM's mid-training) and an 'RL' one (5% of the "
            "mid-trained weights moved by ~2%: sparse, like PRISM's RL).",
        ),
        ("code", TINY_CHECKPOINTS),
        (
            "code",
            """model = build_model("llama", seed=0, vocab_size=len(tokenizer))
base = save(model, "base")
mid = save(planted_update(model, share=0.9, size=0.05, seed=1), "mid")
rl = save(planted_update(model, share=0.05, size=0.02, seed=2), "rl")

from prism_analysis import audit
res = audit(base, mid, progress=False, device="cpu")
print(res.format())""",
        ),
        ("code", "res.components[['component', 'numel', 'normalized_l2', 'fraction_changed_0.01', 'fraction_equal']]"),
        ("md", "The RL-like update is sparse and small: compare the totals of both audits."),
        (
            "code",
            """import pandas as pd
rl_res = audit(mid, rl, progress=False, device="cpu")
pd.concat([res.total.assign(update="base -> mid"), rl_res.total.assign(update="mid -> rl")])[
    ["update", "numel", "normalized_l2", "fraction_changed_0.01", "fraction_equal"]]""",
        ),
        ("md", "The same as files (summary.json, tensors/layers/components.csv, the F11 figure):"),
        (
            "code",
            """res.save("audit_base_mid")
sorted(p.name for p in Path("audit_base_mid").iterdir())""",
        ),
        (
            "code",
            """from IPython.display import Image
Image(filename="audit_base_mid/update_by_layer_and_component.png")""",
        ),
    ],
    "03_reproduce_prism_figures.ipynb": [
        (
            "md",
            "# Redraw every PRISM figure of a study run\nFigures are drawn from the saved tables of "
            "`RUN/analysis` and `RUN/eval`; nothing is recomputed. `RUN` is the committed `tiny` run in "
            "`figures/run` unless `$PRISM_RUN` names another `prism reproduce` directory.",
        ),
        (
            "code",
            """import os, shutil, tempfile
from pathlib import Path
RUN = Path(os.environ.get("PRISM_RUN", "figures/run"))
from prism_train.study.report import report
tmp = Path(tempfile.mkdtemp()) / "run"
shutil.copytree(RUN, tmp)          # redraw into a copy, leaving RUN as it is
summary = report(tmp)
sorted(p.name for p in (tmp / "figures").glob("*.png"))""",
        ),
        (
            "code",
            """import pandas as pd
pd.set_option("display.max_colwidth", 80)
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


def build(name: str) -> nbf.NotebookNode:
    """The notebook ``name`` from its cells, without outputs."""
    nb = nbf.v4.new_notebook()
    cells = NOTEBOOKS[name]
    nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"  # stable ids, so a rebuild changes nothing
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb: nbf.NotebookNode, timeout: int = 600) -> nbf.NotebookNode:
    """Run ``nb`` top to bottom with the repository root as working directory."""
    from nbclient import NotebookClient

    os.environ.update({"MPLBACKEND": "Agg", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"})
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    return nb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--execute", action="store_true", help="run every notebook and save its outputs")
    args = ap.parse_args()
    for name in NOTEBOOKS:
        nb = build(name)
        if args.execute:
            execute(nb)
        nbf.write(nb, HERE / name)
        print("wrote", name, "(executed)" if args.execute else "")


if __name__ == "__main__":
    main()
