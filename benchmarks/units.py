"""Benchmark `prism audit --units heads,neurons` against the plain audit, side by side in one process.

The pair is a LLaMA-shaped bf16 checkpoint written with random weights (B = A with 5% of elements
moved by ~3%); both audits read it from a warm page cache. Prints seconds and the ratio
(issue 25's target: heads and neurons add at most 1.5x to a plain audit).

  python benchmarks/units.py            # hidden 1024, 8 layers (~0.5 GB per checkpoint)
  python benchmarks/units.py --quick    # hidden 512, 4 layers
  python benchmarks/units.py --hidden 2048 --layers 8   # ~1.1 GB per checkpoint
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig

from prism_analysis.weights.audit import audit


def make_pair(root: Path, hidden: int, layers: int) -> tuple[Path, Path]:
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=int(hidden * 2.75),
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 256,
        vocab_size=32000,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in AutoModelForCausalLM.from_config(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    a = {k: (0.02 * torch.randn(s, generator=g)).to(torch.bfloat16) for k, s in shapes.items()}
    b = {}
    for k, t in a.items():
        moved = torch.rand(t.shape, generator=g) < 0.05
        b[k] = torch.where(moved, t * 1.03, t).to(torch.bfloat16)
    for name, state in (("a", a), ("b", b)):
        (root / name).mkdir()
        save_file(state, root / name / "model.safetensors")
        cfg.save_pretrained(root / name)
    return root / "a", root / "b"


def timed(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    args = ap.parse_args()
    hidden, layers = (512, 4) if args.quick else (args.hidden, args.layers)
    with tempfile.TemporaryDirectory() as tmp:
        a, b = make_pair(Path(tmp), hidden, layers)
        audit(a, b, progress=False)  # warm the page cache and numba's compiled kernels
        plain, units = float("inf"), float("inf")
        for _ in range(5):  # interleaved, best of five each: a load spike hits both alike
            plain = min(plain, timed(lambda: audit(a, b, progress=False), repeats=1))
            units = min(units, timed(lambda: audit(a, b, progress=False, units=("heads", "neurons")), repeats=1))
    print(f"pair: LLaMA-shaped bf16, hidden {hidden}, {layers} layers, vocab 32000")
    print(f"{'method':<28}{'seconds':>10}{'ratio':>8}")
    print(f"{'audit':<28}{plain:>10.2f}{1.0:>8.2f}")
    print(f"{'audit --units heads,neurons':<28}{units:>10.2f}{units / plain:>8.2f}")


if __name__ == "__main__":
    main()
