"""Benchmark the distributed analyses: `prism audit`, `trajectory` and `cka` with N = 1, 2 processes.

Each configuration runs the real command line in a fresh process (``python -m prism_cli ...``; N > 1
through ``--nproc N``, i.e. torch.distributed.run with gloo), timed from outside, the median of
``--repeat`` runs, warm page cache. Threads: N = 1 gets every core (OMP_NUM_THREADS = cores),
N > 1 gets cores / N per process (what ``--nproc`` sets), so the cores are never oversubscribed;
``1x1`` (one process, one thread) separates the effect of threads from that of processes.
Every configuration must give the same numbers: summary.json less the run record is compared.

Inputs: the audit pair of benchmarks/audit.py (its --quick shapes: bf16 LLaMA-shaped, 0.31 GB each), the
trajectory of benchmarks/trajectory.py (--quick: 6 bf16 checkpoints), and for CKA two random-init
LLaMA models (hidden 256, 4 blocks) with a small BPE tokenizer on 64 probe prompts.

Reported per command: wall seconds (median), speed-up over N = 1, and the per-rank throughput
(bytes of checkpoint read per second per rank, or prompts per second per rank) that the README's
scale plan extrapolates from. On a 2-core machine two ranks share two cores: expect little gain
beyond the overlap of reading and computing, and a fixed start-up cost per launch.

  python benchmarks/distributed.py             # 1 process (2 threads), 1 x 1 thread, 2 processes; 3 repeats
  python benchmarks/distributed.py --nproc 1,2,4,8 --repeat 5   # on a bigger machine
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


CKA_OPTIONS = ["--n", "64", "--batch-size", "4", "--bootstrap", "0"]


def cores() -> int:
    return len(os.sched_getaffinity(0))


def inputs(root: Path) -> dict:
    """The checkpoints every command reads (written once, reused)."""
    from audit import make_pair
    from trajectory import make_run

    a, b = make_pair(root / "audit", 1024, 8, 32000)
    make_run(root / "trajectory", 512, 4, [0, 10, 20, 50, 100, 200])
    models = root / "cka"
    if not (models / "m1" / "config.json").exists():
        import torch

        from prism_train.models import build_model
        from prism_train.tokenizer import train_tokenizer

        texts = [f"prompt {i}: the {i % 7} quick foxes jump over {i % 11} lazy dogs near river {i}" for i in range(64)]
        tok = train_tokenizer(texts * 4, vocab_size=512)
        for i, name in enumerate(["m0", "m1"]):
            model = build_model("llama", seed=0, hidden_size=256, num_layers=4, vocab_size=len(tok))
            if i:
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(0.05 * torch.randn_like(p) * p)
            model.save_pretrained(models / name)
            tok.save_pretrained(models / name)
        (models / "probe.txt").write_text("\n".join(texts))
    return {
        "audit": ["audit", str(a), str(b), "--no-figure"],
        "trajectory": ["trajectory", str(root / "trajectory")],
        "cka": ["cka", str(models / "m0"), str(models / "m1"), "--probe", str(models / "probe.txt"), *CKA_OPTIONS],
    }


def run_once(argv: list[str], nproc: int, out: Path, threads: int | None = None) -> tuple[float, dict]:
    """One timed run: N processes (``--nproc``), each with ``threads`` threads (default cores / N)."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if nproc == 1 or threads:
        env["OMP_NUM_THREADS"] = env["NUMBA_NUM_THREADS"] = str(threads or cores())
    cmd = [sys.executable, "-m", "prism_cli", *argv, "--out", str(out), "--quiet"]
    cmd += ["--nproc", str(nproc)] if nproc > 1 else []
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return wall, json.loads((out / "summary.json").read_text())


def numbers(summary: dict) -> str:
    """The results a run must reproduce, without the run record."""
    skip = {"world_size", "bytes_per_rank", "prompts_per_rank"}
    meta = summary.get("_meta", {})
    return json.dumps(
        {k: v for k, v in summary.items() if k not in skip and k != "_meta"}
        | {k: v for k, v in meta.items() if k not in skip},
        sort_keys=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="bench_out/distributed")
    ap.add_argument(
        "--nproc",
        default="1,1x1,2",
        help="configurations to time: N processes (cores / N threads each) or NxT (T threads each); "
        "default 1,1x1,2 (1x1: one process on one core, to separate threading from processes)",
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--commands", default="audit,trajectory,cka")
    args = ap.parse_args()
    root = Path(args.root)
    commands = inputs(root)
    configs = [tuple(int(x) for x in c.split("x")) if "x" in c else (int(c), None) for c in args.nproc.split(",")]
    from prism_analysis.checkpoints.local import Checkpoint

    work = {
        "audit": sum(Checkpoint(p).nbytes for p in commands["audit"][1:3]),
        "trajectory": sum(Checkpoint(p).nbytes for p in sorted((root / "trajectory").glob("step_*"))),
        "cka": 2 * 64,  # prompts through each model
    }
    units = {"audit": "MB/s", "trajectory": "MB/s", "cka": "prompts/s"}
    print(
        f"{cores()} cores, load average {os.getloadavg()[0]:.1f} at start; median of {args.repeat} runs; "
        f"audit pair {work['audit'] / 1e9:.2f} GB, trajectory {work['trajectory'] / 1e9:.2f} GB"
    )
    print(f"{'command':<12}{'N x threads':>12}{'wall s':>9}{'runs':>26}{'speed-up':>10}{'per rank':>18}  same numbers")
    for name in args.commands.split(","):
        base, reference = None, None
        for n, threads in configs:
            walls, result = [], None
            for _ in range(args.repeat):
                wall, summary = run_once(commands[name], n, root / "out" / f"{name}_{n}", threads)
                walls.append(wall)
                result = numbers(summary)
            med = statistics.median(walls)
            base = base or med
            reference = reference or result
            scale = 1e6 if units[name] == "MB/s" else 1
            per_rank = work[name] / scale / med / n
            runs = " ".join(f"{w:.1f}" for w in walls)
            label = f"{n} x {threads or max(1, cores() // n)}"
            print(
                f"{name:<12}{label:>12}{med:>9.2f}{runs:>26}{base / med:>9.2f}x{per_rank:>10.1f} {units[name]:<9}"
                f"{'yes' if result == reference else 'NO'}",
                flush=True,
            )


if __name__ == "__main__":
    main()
