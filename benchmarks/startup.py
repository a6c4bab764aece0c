"""What a user waits for: the real `prism` command as a process, against the floors it cannot beat.

Each command runs as its own process, several times; the table gives the median wall time.

  floor: import torch     python -c "import torch" (every command imports torch); beside it the
                          same without the interpreter's teardown (os._exit), as prism exits
  prism --help            must be faster than importing torch
  prism audit (tiny)      a tiny LLaMA pair (1M parameters), tables and F11 figure: target <= 1.6x import torch
                          (--no-figure beside it: what the figure costs; PRISM_FIGURE_PROCESS=0 beside
                          it: the figure drawn in the command's process instead of the helper that
                          imports matplotlib while the command computes, prism_analysis.figure_process)
  prism audit (large)     a bf16 LLaMA-shaped pair of --large-gb per side, end to end (process start,
                          imports, streaming, tables, figure): target <= 2.5x the read floor
  floor: read both        reading both checkpoints' files once (readinto a 64 MiB buffer), warm cache

  python benchmarks/startup.py                 # tiny pair + the 1.27 GiB-per-side pair of audit.py
  python benchmarks/startup.py --quick         # tiny pair + a 0.3 GB-per-side pair
  python benchmarks/startup.py --tiny          # the tiny pair only
  python benchmarks/startup.py --tiny --markdown benchmarks/results/startup.md   # + the table for the docs
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))


#: the children's environment: bytecode caches written and used, as after a pip install (a shell
#: with PYTHONDONTWRITEBYTECODE=1 would recompile prism's modules in every run, ~0.14 s)
#: (and figures drawn the way a user's command draws them: PRISM_FIGURE_PROCESS unset)
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PRISM_FIGURE_PROCESS")}


def _run_once(cmd: list[str], cleanup: Path | None, env: dict) -> float:
    if cleanup is not None:
        shutil.rmtree(cleanup, ignore_errors=True)
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {r.stderr}")
    return time.perf_counter() - t


def timed_together(runs: list[tuple], repeat: int) -> list[float]:
    """Median wall time of each ``(cmd, cleanup, env)``, run in turn within each repeat, so that
    the floor and the commands see the same machine (import torch alone varied 1.24-1.53 s between
    runs of this script an hour apart)."""
    envs = [{**ENV, **(env or {})} for _, _, env in runs]
    for (cmd, cleanup, _), env in zip(runs, envs):
        _run_once(cmd, cleanup, env)  # warm-up: caches
    times = [[] for _ in runs]
    for _ in range(repeat):
        for i, ((cmd, cleanup, _), env) in enumerate(zip(runs, envs)):
            times[i].append(_run_once(cmd, cleanup, env))
    return [statistics.median(t) for t in times]


def timed(cmd: list[str], repeat: int, cleanup: Path | None = None, env: dict | None = None) -> float:
    return timed_together([(cmd, cleanup, env)], repeat)[0]


def read_floor(paths: list[Path]) -> None:
    buf = bytearray(64 << 20)
    view = memoryview(buf)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(view):
                pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a 0.2 GB-per-side pair instead of 1.27 GB")
    ap.add_argument("--repeat", type=int, default=5, help="runs per command (median reported)")
    ap.add_argument("--tiny", action="store_true", help="the tiny pair only (no large pair, no read floor)")
    ap.add_argument("--workdir", default="bench_out/startup", help="where the checkpoints are written (kept)")
    ap.add_argument("--markdown", metavar="PATH", default=None, help="also write the results table as Markdown")
    args = ap.parse_args()
    prism = shutil.which("prism") or str(Path(sys.executable).with_name("prism"))
    work = Path(args.workdir)
    from audit import make_pair
    from helpers import save_model

    tiny_a, tiny_b = work / "tiny_a", work / "tiny_b"
    if not tiny_b.exists():
        save_model(tiny_a, seed=0)
        save_model(tiny_b, seed=0, perturb=0.01)
    out = work / "out"
    rows = []
    audit = [prism, "audit", str(tiny_a), str(tiny_b), "--quiet"]
    saved = [*audit, "--out", str(out)]
    runs = [
        ("floor: python -c 'import torch'", [sys.executable, "-c", "import torch"], None, None),
        (
            "  import torch, exit without teardown",
            [sys.executable, "-c", "import os, torch; os._exit(0)"],
            None,
            None,
        ),
        ("prism --help", [prism, "--help"], None, None),
        ("prism audit, tiny pair, print only", audit, None, None),
        ("prism audit, tiny pair, tables (--no-figure)", [*saved, "--no-figure"], out, None),
        ("prism audit, tiny pair, tables + figure (png, pdf)", saved, out, None),
        ("  the same, figure drawn in the command's process", saved, out, {"PRISM_FIGURE_PROCESS": "0"}),
    ]
    times = timed_together([r[1:] for r in runs], args.repeat)
    torch_import = times[0]
    for (name, *_), t in zip(runs, times):
        rows.append((name, t, f"{t / torch_import:.2f}x import torch"))
    if args.tiny:
        return report(rows, args.repeat, args.markdown, "Start-up (tiny pair)")
    # the pairs of benchmarks/audit.py (default: 2.69 GB, i.e. 1.27 GiB per side)
    dims = (1024, 8, 32000) if args.quick else (2048, 12, 32000)
    big_a, big_b = make_pair(work / ("audit_quick" if args.quick else "audit_default"), *dims)
    files = sorted(big_a.glob("*.safetensors")) + sorted(big_b.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files) / 2
    read_floor(files)  # warm the page cache
    floors = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        read_floor(files)
        floors.append(time.perf_counter() - t0)
    floor = statistics.median(floors)
    gib = size / 2**30
    rows.append((f"floor: read both files ({gib:.2f} GiB per side)", floor, "1.00x read"))
    t = timed([prism, "audit", str(big_a), str(big_b), "--out", str(out), "--quiet"], args.repeat, out)
    rows.append((f"prism audit, {gib:.2f} GiB pair, end to end", t, f"{t / floor:.2f}x read"))
    report(rows, args.repeat, args.markdown)


def report(rows, repeat: int, markdown: str | None = None, title: str = "Start-up") -> None:
    import torch
    from bench_report import REPORT, md_table, write_markdown

    head = (
        f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}), torch {torch.__version__}; "
        f"median of {repeat} runs, the commands in turn within each run; warm page cache"
    )
    print(head)
    print(f"{'what':<52}{'wall s':>9}  ratio")
    for name, secs, ratio in rows:
        print(f"{name:<52}{secs:>9.2f}  {ratio}")
    REPORT.extend([f"{head}; written by `benchmarks/startup.py --markdown`.", ""])
    md_table(["what", "wall", "ratio"], [[name.strip(), f"{secs:.2f} s", ratio] for name, secs, ratio in rows])
    write_markdown(markdown, title)


if __name__ == "__main__":
    main()
