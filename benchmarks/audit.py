"""Benchmark `prism audit` against the naive way and the raw-read floor, side by side in one run.

Methods (each runs in its own child process, so its peak resident memory is its own):
  prism   prism_analysis.weights.audit.audit: streamed pairs, one pass, all thresholds, float64 sums
  naive   what users run today: AutoModelForCausalLM.from_pretrained(A) and (B) in bf16, then for
          every parameter the L2, the fraction changed at each threshold and the bitwise-equal share
  floor   just reading both checkpoint files once (readinto a reused 64 MiB buffer)
  kernel  the fused kernel alone on both checkpoints already in memory, next to a memory-bandwidth
          floor: a plain numba prange streaming sum over the same bytes (the bf16 bits as uint16),
          same threads, same process, best of 3 each; reported as GB/s and kernel / floor

The pair is a synthetic sharded bf16 LLaMA-shaped checkpoint (B = A with 5% of elements moved by ~3%).
Files are read once before timing so every method sees a warm page cache.

  python benchmarks/audit.py                 # ~1.5 GB per checkpoint
  python benchmarks/audit.py --quick         # ~0.2 GB per checkpoint
  python benchmarks/audit.py --large         # prism + floor only, a 13.5 GB pair (> half of 24 GB RAM)
  python benchmarks/audit.py --methods floor,kernel,prism   # skip the (slow, memory-hungry) naive way
  python benchmarks/audit.py --quick --markdown benchmarks/results/audit.md   # + the table as Markdown (docs)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_report import REPORT, md_table, write_markdown

THRESHOLDS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1)


def make_pair(root: Path, hidden: int, layers: int, vocab: int, shard_bytes: int = 1 << 30) -> tuple[Path, Path]:
    """Write A and B as sharded bf16 safetensors, one shard at a time (memory: one shard pair)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    a, b = root / "a", root / "b"
    if (a / "model.safetensors.index.json").exists() and (b / "model.safetensors.index.json").exists():
        return a, b
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=int(hidden * 2.75),
        num_hidden_layers=layers,
        num_attention_heads=hidden // 128,
        num_key_value_heads=max(1, hidden // 512),
        vocab_size=vocab,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in AutoModelForCausalLM.from_config(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    for d in (a, b):
        d.mkdir(parents=True, exist_ok=True)
        cfg.save_pretrained(d)
    groups, cur, size = [], [], 0
    for name, shape in shapes.items():
        cur.append(name)
        size += shape.numel() * 2
        if size >= shard_bytes:
            groups.append(cur)
            cur, size = [], 0
    groups += [cur] if cur else []
    weight_map = {}
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        sa, sb = {}, {}
        for name in group:
            x = (torch.randn(shapes[name], generator=g) * 0.02).to(torch.bfloat16)
            y = x.clone()
            flat = y.view(-1)
            idx = torch.randint(0, flat.numel(), (max(1, flat.numel() // 20),), generator=g)
            flat[idx] = (flat[idx].float() * 1.03).to(torch.bfloat16)
            sa[name], sb[name] = x, y
            weight_map[name] = fname
        save_file(sa, a / fname, metadata={"format": "pt"})
        save_file(sb, b / fname, metadata={"format": "pt"})
        del sa, sb
    index = json.dumps({"metadata": {}, "weight_map": weight_map})
    for d in (a, b):
        (d / "model.safetensors.index.json").write_text(index)
    return a, b


def files(ckpt: Path) -> list[Path]:
    return sorted(ckpt.glob("*.safetensors"))


def run_prism(a, b, device):
    from prism_analysis.weights.audit import audit

    res = audit(a, b, progress=False, device=device)
    return res.stats["total"].compute()["normalized_l2"]


def run_naive(a, b, device):
    from transformers import AutoModelForCausalLM

    ma = AutoModelForCausalLM.from_pretrained(a, dtype=torch.bfloat16).to(device)
    mb = AutoModelForCausalLM.from_pretrained(b, dtype=torch.bfloat16).to(device)
    pb = dict(mb.named_parameters())
    sq_d = sq_a = 0.0
    with torch.no_grad():
        for name, pa in ma.named_parameters():
            x, y = pa.float(), pb[name].float()
            d = y - x
            sq_d += float(d.double().pow(2).sum())
            sq_a += float(x.double().pow(2).sum())
            for t in THRESHOLDS:
                float((d.abs() > t * x.abs()).float().mean())
            float((pa == pb[name]).float().mean())
    return (sq_d / sq_a) ** 0.5


def run_floor(a, b, device):
    buf = bytearray(64 << 20)
    view = memoryview(buf)
    total = 0
    for path in files(a) + files(b):
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return total


def bandwidth_floor():
    """A numba prange streaming sum of uint16 arrays: the memory-bandwidth floor of the kernel."""
    import numpy as np
    from numba import njit, prange

    @njit(parallel=True, nogil=True)
    def stream_sum(x):  # pragma: no cover - compiled
        n = x.size
        block = 1 << 16
        nblocks = (n + block - 1) // block
        out = np.zeros(nblocks, dtype=np.uint64)
        for blk in prange(nblocks):
            lo = blk * block
            hi = min(n, lo + block)
            s = np.uint64(0)
            for j in range(lo, hi):
                s += x[j]
            out[blk] = s
        return out.sum()

    return stream_sum


def run_kernel(a, b, device):
    """Both checkpoints in memory, then GB/s of the fused kernel and of the bandwidth floor."""
    import numpy as np
    from safetensors.torch import load_file

    from prism_analysis.weights import fused

    ta, tb = {}, {}
    for path in files(a):
        ta.update({k: v.clone() for k, v in load_file(path).items()})
    for path in files(b):
        tb.update({k: v.clone() for k, v in load_file(path).items()})
    names = sorted(ta)
    nbytes = sum(ta[k].nbytes + tb[k].nbytes for k in names)
    bits = [t.reshape(-1).view(torch.int16).numpy().view(np.uint16) for k in names for t in (ta[k], tb[k])]
    stream_sum = bandwidth_floor()
    stream_sum(bits[0][:16])
    fused.pair_stats(ta[names[0]][:16], tb[names[0]][:16], THRESHOLDS)
    best = {"kernel": float("inf"), "bandwidth": float("inf")}
    for _ in range(3):
        t = time.perf_counter()
        for x in bits:
            stream_sum(x)
        best["bandwidth"] = min(best["bandwidth"], time.perf_counter() - t)
        t = time.perf_counter()
        for k in names:
            fused.pair_stats(ta[k], tb[k], THRESHOLDS)
        best["kernel"] = min(best["kernel"], time.perf_counter() - t)
    return {"bytes": nbytes, "kernel_s": best["kernel"], "bandwidth_s": best["bandwidth"]}


def peak_rss_kb() -> int:
    """VmHWM: this address space's peak resident set (ru_maxrss would carry the parent's over exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(method: str, a: Path, b: Path, device: str) -> None:
    fn = {"prism": run_prism, "naive": run_naive, "floor": run_floor, "kernel": run_kernel}[method]
    if method == "prism":  # compile the fused kernel (cached on disk after the first run) before timing
        from prism_analysis.weights.update import FUSED_MIN_NUMEL, UpdateStats

        warm = torch.ones(FUSED_MIN_NUMEL, dtype=torch.bfloat16)
        UpdateStats().update(warm, warm)
    rss0 = peak_rss_kb()
    t0 = time.perf_counter()
    value = fn(a, b, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    peak = peak_rss_kb()
    gpu = torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0
    print(
        json.dumps(
            {
                "method": method,
                "wall_s": wall,
                "peak_rss_mb": peak / 1024,
                "rss_after_imports_mb": rss0 / 1024,
                "gpu_peak_mb": gpu / 2**20,
                "value": value,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="bench_out/audit", help="where the synthetic pair is written")
    ap.add_argument("--quick", action="store_true", help="a small pair (~0.2 GB each)")
    ap.add_argument("--large", action="store_true", help="a pair larger than half the RAM (prism and floor only)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--methods", default=None, help="comma-separated subset of floor,kernel,prism,naive")
    ap.add_argument("--markdown", metavar="PATH", default=None, help="also write the results table as Markdown")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        size, dims = "quick", (1024, 8, 32000)
    elif args.large:
        size, dims = "large", (2048, 72, 32000)  # 13.5 GB pair, same largest tensor as default
    else:
        size, dims = "default", (2048, 12, 32000)
    root = Path(args.root) / size
    if args.child:
        child(args.child, root / "a", root / "b", args.device)
        return
    t = time.perf_counter()
    a, b = make_pair(root, *dims)
    pair_gb = sum(f.stat().st_size for f in files(a) + files(b)) / 1e9
    print(
        f"pair: {pair_gb:.2f} GB of bf16 safetensors ({size}; prepared in {time.perf_counter() - t:.0f}s); "
        f"device: {args.device}; torch {torch.__version__}; {os.cpu_count()} cores"
    )
    methods = (
        args.methods.split(",")
        if args.methods
        else (["floor", "prism"] if args.large else ["floor", "kernel", "prism", "naive"])
    )
    run_floor(a, b, args.device)  # warm the page cache
    results = {}
    for m in methods:
        r = subprocess.run(
            [sys.executable, __file__, "--child", m, "--root", args.root, "--device", args.device]
            + (["--quick"] if args.quick else ["--large"] if args.large else []),
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            print(f"{m}: failed\n{r.stderr[-2000:]}")
            continue
        results[m] = json.loads(r.stdout.strip().splitlines()[-1])
    print(
        f"\n{'method':<8}{'wall s':>9}{'GB/s':>8}{'peak RSS MB':>13}{'(after imports)':>17}"
        f"{'time / prism':>14}{'RSS / prism':>13}"
    )
    kernel = results.pop("kernel", None)
    p = results.get("prism")
    REPORT.append(
        f"{pair_gb:.2f} GB bf16 pair ({size}), device {args.device}, torch {torch.__version__}, "
        f"{os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f}), warm page cache; "
        "written by `benchmarks/audit.py --markdown`."
    )
    REPORT.append("")
    md_rows = []
    for m, r in results.items():
        tr = f"{r['wall_s'] / p['wall_s']:.2f}x" if p else "-"
        mr = f"{r['peak_rss_mb'] / p['peak_rss_mb']:.2f}x" if p else "-"
        print(
            f"{m:<8}{r['wall_s']:>9.2f}{pair_gb / r['wall_s']:>8.2f}{r['peak_rss_mb']:>13.0f}"
            f"{r['rss_after_imports_mb']:>17.0f}{tr:>14}{mr:>13}"
        )
        md_rows.append(
            [
                m,
                f"{r['wall_s']:.2f} s",
                f"{pair_gb / r['wall_s']:.2f}",
                f"{r['peak_rss_mb']:.0f} MB",
                f"{r['rss_after_imports_mb']:.0f} MB",
                tr,
                mr,
            ]
        )
    md_table(["method", "wall", "GB/s", "peak RSS", "(after imports)", "time / prism", "RSS / prism"], md_rows)
    if "prism" in results and "floor" in results:
        print(f"\nprism end to end / read floor: {p['wall_s'] / results['floor']['wall_s']:.2f}x")
        REPORT.extend([f"prism end to end / read floor: {p['wall_s'] / results['floor']['wall_s']:.2f}x", ""])
    if kernel:
        k = kernel["value"]
        kernel_gbs, floor_gbs = k["bytes"] / k["kernel_s"] / 1e9, k["bytes"] / k["bandwidth_s"] / 1e9
        print(
            f"\nin memory, {k['bytes'] / 1e9:.2f} GB, {os.cpu_count()} cores: fused kernel {kernel_gbs:.2f} GB/s, "
            f"bandwidth floor (streaming sum) {floor_gbs:.2f} GB/s: kernel at {kernel_gbs / floor_gbs:.0%} of the floor"
        )
        REPORT.extend(
            [
                f"In memory, {k['bytes'] / 1e9:.2f} GB: fused kernel {kernel_gbs:.2f} GB/s, bandwidth floor "
                f"{floor_gbs:.2f} GB/s (kernel at {kernel_gbs / floor_gbs:.0%} of the floor).",
                "",
            ]
        )
    if "prism" in results and "naive" in results:
        print(f"\nnormalized L2: prism {results['prism']['value']:.8g}  naive {results['naive']['value']:.8g}")
        REPORT.append(f"normalized L2: prism {results['prism']['value']:.8g}, naive {results['naive']['value']:.8g}")
    write_markdown(args.markdown, f"Audit ({size} pair)")


if __name__ == "__main__":
    main()
