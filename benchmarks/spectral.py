"""Benchmark `prism audit --spectral`: its cost relative to the plain audit of the same pair.

The pair is a synthetic float32 LLaMA-shaped checkpoint (random weights; B = A plus a low-rank
update and small dense noise), written once. Each method runs ``--repeat`` times in this process
(the page cache is warm after the first read); the median wall time is reported, and the ratio
spectral / plain. ``--hidden 2048`` puts every matrix above FULL_SVD_MAX, so the randomized SVD
path is what is timed; the default (hidden 512) takes the full SVD everywhere.

  python benchmarks/spectral.py --quick            # hidden 256, 2 layers
  python benchmarks/spectral.py                    # hidden 512, 4 layers (full SVD)
  python benchmarks/spectral.py --hidden 2048 --layers 2   # randomized SVD path
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch


def make_pair(root: Path, hidden: int, layers: int, vocab: int) -> tuple[Path, Path]:
    """A and B as float32 safetensors with a LLaMA layout (config.json included)."""
    import json

    from safetensors.torch import save_file

    a, b = root / "a", root / "b"
    if (a / "model.safetensors").exists() and (b / "model.safetensors").exists():
        return a, b
    gen = torch.Generator().manual_seed(0)
    inter = int(hidden * 2.75)
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden),
        "lm_head.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (hidden, hidden),
            p + "self_attn.k_proj.weight": (hidden, hidden),
            p + "self_attn.v_proj.weight": (hidden, hidden),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        }
    sa, sb = {}, {}
    for name, shape in shapes.items():
        w = torch.randn(*shape, generator=gen) * 0.02
        if len(shape) == 2:
            low = torch.randn(shape[0], 8, generator=gen) @ torch.randn(8, shape[1], generator=gen) * 1e-4
            sb[name] = w + low + 1e-5 * torch.randn(*shape, generator=gen)
        else:
            sb[name] = w.clone()
        sa[name] = w
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64),
        "num_key_value_heads": max(1, hidden // 64),
        "vocab_size": vocab,
    }
    for d, s in ((a, sa), (b, sb)):
        d.mkdir(parents=True, exist_ok=True)
        save_file(s, str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps(config))
    return a, b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="bench_out/spectral")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.quick:
        args.hidden, args.layers, args.vocab, args.repeat = 256, 2, 2048, 3
    from prism_analysis.weights.audit import audit
    from prism_analysis.weights.spectral import FULL_SVD_MAX

    root = Path(args.root) / f"h{args.hidden}_l{args.layers}_v{args.vocab}"
    a, b = make_pair(root, args.hidden, args.layers, args.vocab)
    size = sum(f.stat().st_size for d in (a, b) for f in d.glob("*.safetensors")) / 1e6
    path = "randomized" if args.hidden > FULL_SVD_MAX else "full"
    print(
        f"pair: {size:.0f} MB float32 (hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}); "
        f"device {args.device}; torch {torch.__version__}; {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
        f"SVD path for the blocks: {path}"
    )
    audit(a, b, device=args.device, progress=False)  # warm the page cache and the imports
    times: dict[str, list[float]] = {"plain": [], "spectral": []}
    for _ in range(args.repeat):
        for name, kw in (("plain", {}), ("spectral", {"spectral": True, "spectral_k": args.k})):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            audit(a, b, device=args.device, progress=False, **kw)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
    plain, spectral = (statistics.median(times[n]) for n in ("plain", "spectral"))
    print(f"{'method':<10}{'median s':>10}{'runs':>30}")
    for name, ts in times.items():
        print(f"{name:<10}{statistics.median(ts):>10.2f}{'  '.join(f'{t:.2f}' for t in ts):>30}")
    print(f"spectral / plain: {spectral / plain:.1f}x  (k = {args.k})")


if __name__ == "__main__":
    main()
