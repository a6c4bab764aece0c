"""The GPU check as one command (`make gpu-check`): the tests marked gpu and the GPU benchmarks, one table.

On a machine with CUDA, in at most ``--budget`` seconds (default 480), each step in its own process
with its own timeout (a hang costs that step only; the remaining budget caps every timeout):

  tests     pytest -m gpu --device cuda: RL and training on the device, the tracker with
            reference="device", CKA / similarity / spectral kernels, the audit's torch path, bf16
            forward passes (pass/fail per test group)
  audit     benchmarks/audit.py --quick --methods floor,prism --device cuda: prism audit vs the read floor
  audit-cpu the same on the machine's CPU, the weight statistics' default device (is it still faster?)
  cka       a 24 x 24 layer heatmap on the GPU: prism cka_matrix vs a naive torch per-pair loop
            (float64 Gram form, also the reference) and vs the peer packages of the `bench` extra
            when installed (ckatorch cka_base, cka-pytorch hsic1), all on the device
  tracking  a training loop on the GPU with UpdateTracker (reference "device" and "cpu") vs without
  study     the first steps of the `small` study preset (pretraining, then RL) on the GPU, and the
            projected time of its training stages

writing ONE Markdown table, ``benchmarks/results/gpu.md`` (device, torch/CUDA versions, what ran,
numbers, ratios, pass/fail), atomically, after every step: a step that fails or times out is
recorded, never fatal. Without CUDA it says so in one line and exits 0.

  python benchmarks/gpu_check.py                    # the GPU check (`make gpu-check`)
  python benchmarks/gpu_check.py --dry-run          # the whole pipeline on the CPU, tiny sizes (< ~3 min):
                                                    # proves the plumbing; writes bench_out/gpu_check/gpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve()

#: Seconds per step on the GPU (the sum stays under the default budget of 480 s).
TIMEOUTS = {"tests": 150, "audit": 60, "audit-cpu": 40, "cka": 40, "tracking": 110, "study": 80}
#: The test files of the dry run (on the CPU every test of the device fixture would take too long).
DRY_TESTS = [
    "tests/gpu",
    "tests/weights/test_spectral.py::test_cuda_gives_the_cpu_numbers",
    "tests/tracking/test_tracking.py::test_plain_loop_reference_modes_agree",
    "tests/train/test_rl.py::test_signal_moves_the_weights",
]


# -- the steps that run in this file (each in its own process: --step NAME) --------------------------------------
def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device, repeat=3):
    """(result, median seconds) of ``repeat`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


def step_cka(device: str, quick: bool) -> dict:
    import torch

    from prism_analysis.representations.cka import cka_matrix

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 products in full precision (torch's default)
    L, n, d = (6, 256, 64) if quick else (24, 2048, 512)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(n, d, generator=g)
    X = torch.stack([base + 0.3 * i * torch.randn(n, d, generator=g) + 2.0 for i in range(L)])
    X[:, :, :4] *= 30  # outlier channels, nonzero means: LLM-like
    Y = X + 0.2 * torch.randn(L, n, d, generator=g)
    X, Y = X.to(device), Y.to(device)
    pairs = [(i, j) for i in range(L) for j in range(L)]

    def naive_pair(x, y, debiased):  # the classic Gram form, float64 on the device
        x, y = x.double(), y.double()
        K, M = x @ x.T, y @ y.T
        if debiased:
            K, M = K.fill_diagonal_(0), M.fill_diagonal_(0)

            def hsic(A, B):
                m = A.shape[0]
                return (
                    (A * B).sum() + A.sum() * B.sum() / ((m - 1) * (m - 2)) - 2 * (A.sum(0) @ B.sum(0)) / (m - 2)
                ) / (m * (m - 3))
        else:
            H = torch.eye(n, dtype=torch.float64, device=x.device) - 1.0 / n

            def hsic(A, B):
                return ((H @ A @ H) * (H @ B @ H)).sum()

        return hsic(K, M) / torch.sqrt(hsic(K, K) * hsic(M, M))

    rows = []
    peers = []
    try:
        from ckatorch.core import cka_base

        peers.append(("ckatorch cka_base, per pair", lambda x, y, deb: cka_base(x, y, unbiased=deb)))
    except ImportError:
        rows.append({"variant": "-", "method": "ckatorch (not installed)"})
    try:
        sys.path.insert(0, str(HERE.parent))
        from cka import load_peer_hsic1

        hsic1 = load_peer_hsic1()
    except Exception:
        hsic1 = None
    if hsic1 is not None:

        def peer_hsic1(x, y, deb):
            gx, gy = (x @ x.T)[None], (y @ y.T)[None]
            return hsic1(gx, gy) / torch.sqrt(hsic1(gx, gx) * hsic1(gy, gy))

        peers.append(("cka-pytorch hsic1 (fp32 Grams), per pair", peer_hsic1))
    else:
        rows.append({"variant": "-", "method": "cka-pytorch (not installed)"})
    k_pairs = min(len(pairs), 24)
    for debiased in (False, True):
        tag = "debiased" if debiased else "biased"
        ours, t_ours = timed(lambda deb=debiased: cka_matrix(X, Y, debiased=deb), device)
        ref, t_naive = timed(
            lambda deb=debiased: torch.stack([naive_pair(X[i], Y[j], deb) for i, j in pairs]).view(L, L),
            device,
            repeat=1,
        )
        err = float((ours.double().to(ref.device) - ref).abs().max())
        rows.append({"variant": tag, "method": "prism cka_matrix", "s": t_ours, "vs_prism": 1.0, "max_err": err})
        rows.append(
            {
                "variant": tag,
                "method": "naive torch per-pair loop (float64 Gram form; the reference)",
                "s": t_naive,
                "vs_prism": t_naive / t_ours,
                "max_err": 0.0,
            }
        )
        for name, fn in peers:
            if name.startswith("cka-pytorch") and not debiased:
                continue  # it computes the unbiased HSIC only
            sub = pairs[:k_pairs]
            vals, t = timed(lambda fn=fn, deb=debiased, sub=sub: [fn(X[i], Y[j], deb) for i, j in sub], device, 1)
            e = max(abs(float(v) - float(ref[i, j])) for v, (i, j) in zip(vals, sub))
            t_all = t * len(pairs) / len(sub)
            rows.append({"variant": tag, "method": name, "s": t_all, "vs_prism": t_all / t_ours, "max_err": e})
    return {"shape": f"{L} x {L} layers, n = {n}, d = {d}, float32 inputs", "rows": rows, "extrapolated_from": k_pairs}


def step_tracking(device: str, quick: bool, out: Path | None = None) -> dict:
    import torch

    from prism_analysis.tracking.tracker import UpdateTracker
    from prism_train.models import build_model

    steps, every, repeats, batch, seq = (6, 3, 1, 2, 32) if quick else (40, 10, 3, 16, 256)
    shapes = (
        {"study tiny": {}} if quick else {"study tiny": {}, "hidden 512, 8 layers": dict(hidden_size=512, num_layers=8)}
    )

    def run(kw, reference, warmup=False):
        n_steps = every if warmup else steps
        model = build_model("llama", seed=0, **kw).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(0)
        batches = [torch.randint(3, model.config.vocab_size, (batch, seq), generator=g).to(device) for _ in range(4)]
        model(input_ids=batches[0], labels=batches[0]).loss.backward()  # warm-up (kernels, allocator)
        opt.zero_grad(set_to_none=True)
        sync(device)
        t0 = time.perf_counter()
        tracker = UpdateTracker(model, every=every, k_steps=(1,), out=None, reference=reference) if reference else None
        for step in range(1, n_steps + 1):
            ids = batches[step % 4]
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if tracker is not None:
                tracker.step(step)
        if tracker is not None:
            tracker.finish()
        sync(device)
        wall = time.perf_counter() - t0
        print(f"tracking: {kw or 'study tiny'}, reference {reference}, {n_steps} steps: {wall:.2f} s", flush=True)
        return wall, sum(p.numel() for p in model.parameters())

    rows = []
    for label, kw in shapes.items():
        for ref in ("device", "cpu"):  # warm-up: the first measurement compiles the CPU kernels (numba)
            run(kw, ref, warmup=True)
        times = {"plain": [], "device": [], "cpu": []}
        for _ in range(repeats):
            for ref in times:
                t, n = run(kw, None if ref == "plain" else ref)
                times[ref].append(t)
        plain = statistics.median(times["plain"])
        for ref in ("device", "cpu"):
            t = statistics.median(times[ref])
            rows.append(
                {
                    "model": f"{label} ({n / 1e6:.1f}M params)",
                    "reference": ref,
                    "plain_ms": 1e3 * plain / steps,
                    "tracked_ms": 1e3 * t / steps,
                    "ratio": t / plain,
                }
            )
        result = {"steps": steps, "every": every, "batch": f"{batch} x {seq}", "rows": rows}
        if out is not None:  # after each model: a timeout during the next keeps this one's rows
            write_atomic(out, json.dumps(result, indent=1))
    return result


def step_study(device: str, quick: bool, out: Path) -> dict:
    """The first steps of a study preset's pretraining and RL on ``device``, and the projected
    time of its training stages at those speeds (pretrain + 3 mid-training runs + 5 RL runs, run
    one after another; evaluation and analysis not included)."""
    import json as _json

    from prism_train.config import RLConfig, TrainConfig
    from prism_train.lm import train
    from prism_train.rl import rl_train
    from prism_train.study.design import MIDS, PRESETS, RLS

    preset = "smoke" if quick else "small"
    p = PRESETS[preset]
    n_pre, n_rl = (3, 2) if quick else (30, 4)
    cfg = TrainConfig(
        init=p.family,
        model=p.model,
        batch_size=p.batch_size,
        seq_len=p.seq_len,
        seed=p.seed,
        save_dtype=p.save_dtype,
        phase="pretrain",
        mix="pretrain",
        steps=n_pre,
        lr=p.pretrain_lr,
        save_every=n_pre,
        warmup=min(30, n_pre),
        device=device,
    )
    t = time.perf_counter()
    train(cfg, out / "base", progress=False, log=lambda *a, **k: None)
    wall_pre = time.perf_counter() - t
    man = _json.loads((out / "base" / "trajectory.json").read_text())
    # the manifest's clock: from the step-0 checkpoint to the last (tokenizer training and set-up excluded);
    # the first step (CUDA kernels' warm-up) is in it, so the projection errs high
    loop_pre = man["steps"][-1]["time"] - man["steps"][0]["time"]
    s_pre = loop_pre / n_pre
    start = out / "base" / f"step_{n_pre:06d}"
    rcfg = RLConfig(
        init=str(start),
        mix="math",
        steps=n_rl,
        save_every=n_rl,
        track_every=p.rl_track_every,
        group_size=p.group_size,
        prompts_per_step=p.prompts_per_step,
        max_new_tokens=p.max_new_tokens,
        lr=p.rl_lr,
        kl_beta=p.rl_kl_beta,
        seed=p.seed,
        save_dtype=p.save_dtype,
        device=device,
    )
    t = time.perf_counter()
    rl_train(rcfg, out / "rl", progress=False, log=lambda *a, **k: None)
    wall_rl = time.perf_counter() - t
    s_rl = wall_rl / n_rl  # includes loading the start and the reference model: errs high
    stages = {
        "pretrain": p.pretrain_steps * s_pre,
        f"mid-training ({len(MIDS)} runs)": len(MIDS) * p.mid_steps * s_pre,
        f"RL ({len(RLS)} runs)": len(RLS) * p.rl_steps * s_rl,
    }
    return {
        "preset": preset,
        "model": p.model,
        "batch": f"{p.batch_size} x {p.seq_len}",
        "pretrain_steps_run": n_pre,
        "pretrain_s_per_step": s_pre,
        "pretrain_wall_s": wall_pre,
        "tokens_per_s": man["steps"][-1]["tokens"] / loop_pre if loop_pre > 0 else None,
        "rl_steps_run": n_rl,
        "rl_s_per_step": s_rl,
        "rl": f"{p.group_size} x {p.prompts_per_step} completions of <= {p.max_new_tokens} tokens",
        "steps": {"pretrain": p.pretrain_steps, "mid": p.mid_steps, "rl": p.rl_steps},
        "projected_s": stages,
        "projected_total_s": sum(stages.values()),
    }


# -- the driver --------------------------------------------------------------------------------------------------
def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def run_step(cmd: list[str], timeout: float, log: Path) -> dict:
    """Run ``cmd`` (cwd: the repository) with ``timeout``; its output goes to ``log``."""
    t = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(log, "w") as f:
        try:
            # its own session: a timeout kills the step's children too (pytest's, the audit's)
            p = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            try:
                rc = p.wait(timeout=max(1.0, timeout))
                status = "ok" if rc == 0 else f"failed (exit {rc})"
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait()
                status = f"timed out ({timeout:.0f} s)"
        except OSError as e:
            status = f"failed to start ({e})"
    return {"status": status, "wall_s": time.perf_counter() - t, "log": str(log)}


def tail(path: str, n: int = 3) -> str:
    try:
        lines = [x for x in Path(path).read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return " / ".join(lines[-n:])[-300:]


def test_groups(xml: Path) -> list[dict]:
    """Per test group (a test of tests/gpu/, else a test file): passed, failed, skipped, seconds."""
    groups: dict[str, dict] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        name = case.get("name", "").split("[")[0]
        if not module:  # a module skipped or broken at collection: its file is the group
            module, name = case.get("file", name.replace(".", "/") + ".py").removesuffix(".py"), ""
        key = f"{module}.py::{name}" if "/gpu/" in f"/{module}" and name else f"{module}.py"
        g = groups.setdefault(key, {"group": key, "passed": 0, "failed": 0, "skipped": 0, "s": 0.0})
        g["s"] += float(case.get("time", 0))
        if case.find("failure") is not None or case.find("error") is not None:
            g["failed"] += 1
        elif case.find("skipped") is not None:
            g["skipped"] += 1
        else:
            g["passed"] += 1
    return sorted(groups.values(), key=lambda g: g["group"])


def md(header: list[str], rows: list[list]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join(str(c) for c in r) + " |" for r in rows),
    ]


def fmt_s(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.2f} s" if s >= 0.1 else f"{1e3 * s:.1f} ms"


def report(env: dict, steps: dict, dry: bool) -> str:
    lines = [
        "# GPU check" + (" (DRY RUN on the CPU: plumbing only, tiny sizes; not GPU numbers)" if dry else ""),
        "",
        f"Written by `benchmarks/gpu_check.py{' --dry-run' if dry else ''}` (`make gpu-check`) on {env['date']}.",
        "",
        *md(["", ""], [[k, v] for k, v in env.items() if k != "date"]),
        "",
        "## Steps",
        "",
        *md(
            ["step", "status", "wall", "timeout"],
            [[name, s["status"], fmt_s(s["wall_s"]), f"{s['timeout']:.0f} s"] for name, s in steps.items()],
        ),
        "",
    ]
    t = steps.get("tests")
    if t:
        lines += ["## Tests marked gpu", "", f"`{t['cmd']}`", ""]
        if t.get("groups"):
            rows = []
            for g in t["groups"]:
                result = "FAIL" if g["failed"] else "PASS" if g["passed"] else "skipped"
                rows.append([g["group"], result, g["passed"], g["failed"], g["skipped"], f"{g['s']:.1f} s"])
            lines += md(["group", "result", "passed", "failed", "skipped", "time"], rows)
        else:
            lines.append(f"no test report ({t['status']}): {tail(t['log'])}")
        lines.append("")
    for key, title in (("audit", "on the device"), ("audit-cpu", "on this machine's CPU (the default device)")):
        a = steps.get(key)
        if a:
            lines += [f"## Audit vs the read floor, {title} (`benchmarks/audit.py`)", ""]
            md_path = Path(a["markdown"])
            lines += md_path.read_text().strip().splitlines() if md_path.is_file() else [f"no table: {tail(a['log'])}"]
            lines.append("")
    c = steps.get("cka")
    if c:
        lines += ["## CKA heatmap on the device", ""]
        r = c.get("result")
        if r:
            lines += [
                f"{r['shape']}; peers timed on {r['extrapolated_from']} pairs and extrapolated; errors vs the float64"
                " Gram-form loop.",
                "",
            ]
            rows = [
                [x["variant"], x["method"]]
                + ([fmt_s(x["s"]), f"{x['vs_prism']:.1f}x", f"{x['max_err']:.1e}"] if "s" in x else ["-", "-", "-"])
                for x in r["rows"]
            ]
            lines += md(["variant", "method", "time", "vs prism", "max error"], rows)
        else:
            lines.append(f"no result ({c['status']}): {tail(c['log'])}")
        lines.append("")
    k = steps.get("tracking")
    if k:
        lines += ["## Tracking overhead on the device", ""]
        r = k.get("result")
        if r:
            lines += [f"{r['steps']} AdamW steps, batch {r['batch']}, tracked every {r['every']} (k_steps 1).", ""]
            rows = [
                [
                    x["model"],
                    x["reference"],
                    f"{x['plain_ms']:.1f} ms",
                    f"{x['tracked_ms']:.1f} ms",
                    f"{x['ratio']:.3f}",
                ]
                for x in r["rows"]
            ]
            lines += md(["model", "reference", "plain / step", "tracked / step", "tracked / plain"], rows)
        else:
            lines.append(f"no result ({k['status']}): {tail(k['log'])}")
        lines.append("")
    s = steps.get("study")
    if s:
        lines += ["## Study preset: first steps and projection", ""]
        r = s.get("result")
        if r:
            lines += [
                f"Preset `{r['preset']}` (model {r['model']}, batch {r['batch']}): {r['pretrain_steps_run']} "
                f"pretraining steps at {fmt_s(r['pretrain_s_per_step'])}/step"
                + (f" ({r['tokens_per_s']:,.0f} tokens/s)" if r.get("tokens_per_s") else "")
                + f", {r['rl_steps_run']} RL steps ({r['rl']}) at {fmt_s(r['rl_s_per_step'])}/step. "
                "Projection: those speeds x the preset's steps, runs one after another; evaluation, analysis "
                "and the report not included.",
                "",
            ]
            rows = [[stage, fmt_s(v)] for stage, v in r["projected_s"].items()]
            rows.append(["**training stages, total**", f"**{fmt_s(r['projected_total_s'])}**"])
            lines += md(["stage", "projected"], rows)
        else:
            lines.append(f"no result ({s['status']}): {tail(s['log'])}")
        lines.append("")
    return "\n".join(lines)


def environment(device: str) -> dict:
    import torch

    env = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": device}
    if device == "cuda":
        prop = torch.cuda.get_device_properties(0)
        gib, count = prop.total_memory / 2**30, torch.cuda.device_count()
        env["GPU"] = f"{torch.cuda.get_device_name(0)} ({gib:.0f} GiB, {count} device(s))"
        env["CUDA (torch build)"] = torch.version.cuda
        env["cuDNN"] = str(torch.backends.cudnn.version())
        try:
            drv = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            env["driver"] = drv.stdout.strip().splitlines()[0] if drv.returncode == 0 else "?"
        except (OSError, subprocess.SubprocessError, IndexError):
            env["driver"] = "?"
    env["torch"] = torch.__version__
    env["python"] = platform.python_version()
    env["host"] = f"{platform.node()}, {os.cpu_count()} CPU cores"
    return env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", "--force-cpu", dest="dry", action="store_true", help="the pipeline on the CPU, tiny")
    ap.add_argument("--out", default=None, help="the table (default benchmarks/results/gpu.md; dry run: under --work)")
    ap.add_argument("--work", default="bench_out/gpu_check", help="logs, checkpoints and step results")
    ap.add_argument("--budget", type=float, default=480, help="seconds for everything (default 480)")
    ap.add_argument("--only", default=None, help="comma-separated subset of " + ",".join(TIMEOUTS))
    ap.add_argument("--step", choices=("cka", "tracking", "study"), help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = (ROOT / args.work) if not Path(args.work).is_absolute() else Path(args.work)

    if args.step:  # one step, in its own process
        fn = {"cka": step_cka, "tracking": step_tracking, "study": step_study}[args.step]
        extra = {"study": (work / "study",), "tracking": (Path(args.json),)}.get(args.step, ())
        if args.step == "study":  # a fresh run directory
            import shutil

            shutil.rmtree(work / "study", ignore_errors=True)
        result = fn(args.device, args.quick, *extra)
        Path(args.json).write_text(json.dumps(result, indent=1))
        return 0

    import torch

    if not args.dry and not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device here (torch {torch.__version__} sees none); nothing run, nothing written.")
        return 0
    device = "cpu" if args.dry else "cuda"
    out = Path(args.out) if args.out else (work / "gpu.md" if args.dry else ROOT / "benchmarks" / "results" / "gpu.md")
    work.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    wanted = args.only.split(",") if args.only else list(TIMEOUTS)
    # the dry run's steps are small: the same plumbing in about three minutes
    timeouts = (
        {"tests": 150, "audit": 60, "audit-cpu": 40, "cka": 45, "tracking": 60, "study": 90} if args.dry else TIMEOUTS
    )
    py = sys.executable
    deadline = time.perf_counter() + args.budget
    steps: dict[str, dict] = {}
    print(f"gpu-check: {env.get('GPU', 'CPU (dry run)')}, torch {env['torch']}; writing {out}")
    for name in wanted:
        left = deadline - time.perf_counter()
        timeout = min(timeouts[name], left)
        if timeout < 5:
            steps[name] = {"status": "not run (budget spent)", "wall_s": 0.0, "timeout": 0.0, "log": ""}
            write_atomic(out, report(env, steps, args.dry))
            continue
        log = work / f"{name}.log"
        info: dict = {}
        if name == "tests":
            xml = work / "tests.xml"
            xml.unlink(missing_ok=True)
            paths = DRY_TESTS if args.dry else []
            cmd = [py, "-m", "pytest", *paths, "-m", "gpu", "--device", device, "-p", "no:cacheprovider"]
            # a test file that cannot be imported here (an optional package missing) is one failed group, not the end
            cmd += ["-q", "-rfEs", "--continue-on-collection-errors", f"--junitxml={xml}", "-o", "junit_family=xunit1"]
            info["cmd"] = " ".join(["pytest", *paths, "-m", "gpu", "--device", device])
        elif name in ("audit", "audit-cpu"):
            # the same 0.62 GB pair on the device and on the CPU, which the weight statistics default to
            info["markdown"] = str(work / f"{name}.md")
            Path(info["markdown"]).unlink(missing_ok=True)
            cmd = [
                py,
                "benchmarks/audit.py",
                "--methods",
                "floor,prism",
                "--device",
                "cpu" if name == "audit-cpu" else device,
            ]
            cmd += ["--root", str(work / "audit"), "--markdown", info["markdown"], "--quick"]
        else:
            res = work / f"{name}.json"
            res.unlink(missing_ok=True)
            cmd = [py, str(HERE), "--step", name, "--device", device, "--json", str(res), "--work", str(work)]
            cmd += ["--quick"] if args.dry else []
        print(f"  {name}: running (timeout {timeout:.0f} s) ...", flush=True)
        r = run_step(cmd, timeout, log)
        r.update(info, timeout=timeout)
        try:
            collect(name, r, work)
        except Exception as e:  # a broken result is recorded, never fatal
            r["status"] += f"; result unreadable ({type(e).__name__}: {e})"
        steps[name] = r
        print(f"  {name}: {r['status']} in {fmt_s(r['wall_s'])}", flush=True)
        try:
            text = report(env, steps, args.dry)
        except Exception as e:
            steps[name].pop("result", None)
            steps[name].pop("groups", None)
            steps[name]["status"] += f"; report failed ({type(e).__name__}: {e})"
            text = report(env, steps, args.dry)
        write_atomic(out, text)  # after every step: a later hang loses nothing
    print(f"gpu-check: wrote {out}")
    return 0


def collect(name: str, r: dict, work: Path) -> None:
    """Read a finished step's results into ``r``."""
    if name == "tests":
        # pytest's exit 1 is failed tests (recorded per group); 5 is none collected
        xml = work / "tests.xml"
        if xml.is_file():
            r["groups"] = test_groups(xml)
            failed = sum(g["failed"] for g in r["groups"])
            passed = sum(g["passed"] for g in r["groups"])
            skipped = sum(g["skipped"] for g in r["groups"])
            if r["status"] == "failed (exit 1)":
                r["status"] = f"FAIL: {failed} failed, {passed} passed, {skipped} skipped"
            elif r["status"] == "ok":
                r["status"] = f"ok: {passed} passed, {skipped} skipped"
    elif not name.startswith("audit") and (r["status"] == "ok" or (work / f"{name}.json").is_file()):
        r["result"] = json.loads((work / f"{name}.json").read_text())  # a timed-out step's partial result too


if __name__ == "__main__":
    sys.exit(main())
