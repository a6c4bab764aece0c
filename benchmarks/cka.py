"""Benchmark prism_analysis.representations.cka against a float64 reference, a per-pair loop and peer packages.

Side by side, same inputs, one run:
  (1) agreement: every entry of a 24 x 24 layer heatmap vs a float64 numpy reference
      (Kornblith's feature-space formula), biased and debiased;
  (2) time for that heatmap (n = 2048 rows, d = 512): prism cka_matrix vs a per-pair loop of
      prism's own linear_cka, a plain numpy float64 loop, and the peers that are installed
      (ckatorch's cka_base per pair; cka-pytorch's batched hsic1 on stacked Gram pairs;
      torch-cka's per-pair _HSIC). Peers that cost O(n^3) per pair are timed on a few pairs and
      extrapolated to all 576 (marked "~");
  (3) StreamingCKA throughput on many tokens x 1024 dims vs the floor: the time of just the three
      fp32 products X^T X, Y^T Y, X^T Y on the same chunks, with its error vs float64.

Peers come from the `bench` extra (never installed by `make test`); install them without their
dependencies so they keep this torch:  pip install --no-deps ckatorch cka-pytorch torch-cka

  python benchmarks/cka.py            # full sizes (~4 min on 2 cores)
  python benchmarks/cka.py --quick    # small sizes (~30 s)
  python benchmarks/cka.py --part margin --repeats 3   # the debiased 24 x 24 heatmap vs cka-pytorch, alternating
  python benchmarks/cka.py --quick --markdown benchmarks/results/cka.md   # + the tables as Markdown (docs)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

import numpy as np
import torch
from bench_report import REPORT, md_table, write_markdown

from prism_analysis.representations import cka


def layers(L, n, d, seed=0, noise=0.05):
    """LLM-like layer activations: shared structure, nonzero means, a few outlier channels; Y near X."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, d)).astype(np.float32)
    X, Y = [], []
    for layer in range(L):
        x = base @ (np.eye(d, dtype=np.float32) + 0.3 * rng.standard_normal((d, d)).astype(np.float32) / d**0.5)
        x += 2.0 + rng.standard_normal((n, d)).astype(np.float32) * 0.5
        x[:, :3] *= np.float32(500.0 * (1 + layer % 3))
        X.append(x)
        Y.append(x + noise * rng.standard_normal((n, d)).astype(np.float32) * np.abs(x).mean(0))
        base = x / np.abs(x).mean()
    return np.stack(X).astype(np.float32), np.stack(Y).astype(np.float32)


def numpy_cka(x, y, debiased):
    """Kornblith et al.'s feature_space_linear_cka in float64 (the reference and the numpy baseline)."""
    x = x.astype(np.float64) - x.mean(0)
    y = y.astype(np.float64) - y.mean(0)
    xty = np.linalg.norm(x.T @ y) ** 2
    nx, ny = np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y)
    if debiased:
        n = x.shape[0]
        rx, ry = (x * x).sum(1), (y * y).sum(1)

        def h(v, a, b):
            return v - n / (n - 2.0) * a.dot(b) + a.sum() * b.sum() / ((n - 1) * (n - 2))

        return h(xty, rx, ry) / np.sqrt(h(nx**2, rx, rx) * h(ny**2, ry, ry))
    return xty / (nx * ny)


def numpy_gram_cka(x, y, debiased):
    """The classic per-pair code (Kornblith et al.'s cka(gram_linear(x), gram_linear(y))), float64."""

    def center(g):
        g = g.copy()
        n = g.shape[0]
        if debiased:
            np.fill_diagonal(g, 0)
            means = g.sum(0) / (n - 2)
            means -= means.sum() / (2 * (n - 1))
        else:
            means = g.mean(0)
            means -= means.mean() / 2
        g -= means[:, None]
        g -= means[None, :]
        if debiased:
            np.fill_diagonal(g, 0)
        return g

    x, y = x.astype(np.float64), y.astype(np.float64)
    gx, gy = center(x @ x.T), center(y @ y.T)
    return gx.ravel().dot(gy.ravel()) / (np.linalg.norm(gx) * np.linalg.norm(gy))


def timed(fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t


def load_peer_hsic1():
    """cka-pytorch's hsic1, loaded from its file (its package __init__ needs lightning)."""
    spec = importlib.util.find_spec("cka_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = spec.submodule_search_locations[0] + "/hsic.py"
    s = importlib.util.spec_from_file_location("cka_pytorch_hsic", path)
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    return mod.hsic1


def cka_pytorch(hsic1, Xt, Yt, pairs) -> dict:
    """Debiased CKA of each (i, j) in ``pairs`` through cka-pytorch's ``hsic1`` (its API takes
    batches of n x n Gram matrices): both fp32 Grams of the pair, then three HSICs."""
    out = {}
    for i, j in pairs:
        gx, gy = (Xt[i] @ Xt[i].T)[None], (Yt[j] @ Yt[j].T)[None]
        out[i, j] = float(hsic1(gx, gy) / torch.sqrt(hsic1(gx, gx) * hsic1(gy, gy)))
    return out


def heatmap(args):
    L, n, d = args.layers, args.n, args.d
    X, Y = layers(L, n, d)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    pairs = [(i, j) for i in range(L) for j in range(L)]
    print(
        f"\n(1)+(2) {L} x {L} heatmap, n = {n}, d = {d}, float32 inputs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    REPORT.extend(
        [
            f"{L} x {L} layer heatmap, n = {n}, d = {d}, float32 inputs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} "
            '("~": timed on a few pairs and extrapolated).',
            "",
        ]
    )
    rows = []
    for debiased in (False, True):
        tag = "debiased" if debiased else "biased"
        ref, t_np = timed(
            lambda deb: np.array([[numpy_cka(X[i], Y[j], deb) for j in range(L)] for i in range(L)]), debiased
        )
        ours, t_ours = timed(cka.cka_matrix, Xt, Yt, debiased=debiased)
        ours = ours.numpy()
        rows.append((tag, "prism cka_matrix", t_ours, np.abs(ours - ref).max(), False))
        k = min(args.peer_pairs, len(pairs))
        vals, t_loop = timed(lambda ps, deb: [numpy_gram_cka(X[i], Y[j], deb) for i, j in ps], pairs[:k], debiased)
        err = max(abs(v - ref[i, j]) for v, (i, j) in zip(vals, pairs[:k]))
        rows.append((tag, "per-pair loop, Gram form (classic code)", t_loop * len(pairs) / k, err, k < len(pairs)))
        k = min(args.peer_pairs * 4, len(pairs))
        _, t_loop = timed(
            lambda ps, deb: [cka.linear_cka(Xt[i], Yt[j], debiased=deb) for i, j in ps], pairs[:k], debiased
        )
        rows.append((tag, "prism linear_cka, per-pair loop", t_loop * len(pairs) / k, None, k < len(pairs)))
        rows.append((tag, "numpy float64 feature space, per pair", t_np, 0.0, False))
        try:
            from ckatorch.core import cka_base

            k = min(args.peer_pairs, len(pairs))
            vals, t = timed(
                lambda ps, deb: [float(cka_base(Xt[i], Yt[j], unbiased=deb)) for i, j in ps], pairs[:k], debiased
            )
            err = max(abs(v - ref[i, j]) for v, (i, j) in zip(vals, pairs[:k]))
            rows.append((tag, "ckatorch 1.0.3 cka_base, per pair", t * len(pairs) / k, err, k < len(pairs)))
        except ImportError:
            rows.append((tag, "ckatorch (not installed)", None, None, False))
        hsic1 = load_peer_hsic1()
        if hsic1 is not None and debiased:  # cka-pytorch computes unbiased HSIC only
            k = min(args.peer_pairs, len(pairs))

            vals, t = timed(cka_pytorch, hsic1, Xt, Yt, pairs[:k])
            err = max(abs(v - ref[i, j]) for (i, j), v in vals.items())
            rows.append((tag, "cka-pytorch 1.1.3 hsic1 (fp32 Grams)", t * len(pairs) / k, err, k < len(pairs)))
        try:
            from torch_cka.cka import CKA as TorchCKA

            if debiased:
                k = min(args.peer_pairs, len(pairs))
                dummy = type("D", (), {"device": "cpu"})()

                def tc(ps, dummy):
                    out = []
                    for i, j in ps:
                        K, Lg = Xt[i] @ Xt[i].T, Yt[j] @ Yt[j].T
                        out.append(
                            TorchCKA._HSIC(dummy, K, Lg)
                            / np.sqrt(TorchCKA._HSIC(dummy, K, K) * TorchCKA._HSIC(dummy, Lg, Lg))
                        )
                    return out

                vals, t = timed(tc, pairs[:k], dummy)
                err = max(abs(v - ref[i, j]) for v, (i, j) in zip(vals, pairs[:k]))
                rows.append((tag, "torch-cka 0.21 _HSIC, per pair", t * len(pairs) / k, err, k < len(pairs)))
        except ImportError:
            pass
    print(f"{'variant':<10}{'method':<40}{'time s':>10}{'vs prism':>11}{'max |err| vs float64':>24}")
    best = {}
    for tag, name, t, _err, _extrap in rows:
        if name.startswith("prism cka_matrix"):
            best[tag] = t
    md_rows = []
    for tag, name, t, err, extrap in rows:
        ts = "-" if t is None else (("~" if extrap else "") + f"{t:.2f}")
        ratio = "-" if t is None else f"{t / best[tag]:.1f}x"
        es = "-" if err is None else (f"{err:.1e}" if np.isfinite(err) else str(err))
        print(f"{tag:<10}{name:<40}{ts:>10}{ratio:>11}{es:>24}")
        md_rows.append([tag, name, ts if t is None else ts + " s", ratio, es])
    md_table(["variant", "method", "time", "vs prism", "max error vs float64"], md_rows)


def streaming(args):
    d, total, chunk = 1024, args.tokens, 8192
    rng = np.random.default_rng(1)
    pool = []
    for _ in range(4):  # a few distinct chunks, cycled, so generation is not timed
        x = rng.standard_normal((chunk, d), dtype=np.float32) + 3.0
        x[:, :4] *= np.array([1e3, 3e3, 1e4, 5e3], dtype=np.float32)
        y = x + 0.01 * rng.standard_normal((chunk, d), dtype=np.float32) * np.abs(x).mean(0)
        pool.append((torch.from_numpy(x), torch.from_numpy(y)))
    steps = total // chunk
    t = time.perf_counter()
    for s in range(steps):
        x, y = pool[s % 4]
        x.T @ x
        y.T @ y
        x.T @ y
    floor = time.perf_counter() - t
    sc = cka.StreamingCKA()
    t = time.perf_counter()
    for s in range(steps):
        x, y = pool[s % 4]
        sc.update(x[None], y[None])
    val = sc.compute().item()
    ours = time.perf_counter() - t
    # float64 reference on the same rows: the 4 distinct chunks, each repeated steps/4 times
    X = np.concatenate([p[0].numpy() for p in pool]).astype(np.float64)
    Y = np.concatenate([p[1].numpy() for p in pool]).astype(np.float64)
    reps = np.bincount([s % 4 for s in range(steps)], minlength=4)
    w = np.repeat(reps, chunk).astype(np.float64)
    mx, my = (w[:, None] * X).sum(0) / w.sum(), (w[:, None] * Y).sum(0) / w.sum()
    Xc, Yc = X - mx, Y - my
    cxy = Xc.T @ (w[:, None] * Yc)
    cxx = Xc.T @ (w[:, None] * Xc)
    cyy = Yc.T @ (w[:, None] * Yc)
    ref = np.linalg.norm(cxy) ** 2 / (np.linalg.norm(cxx) * np.linalg.norm(cyy))
    rows = steps * chunk
    print(f"\n(3) StreamingCKA, {rows:,} tokens x {d} dims (chunks of {chunk}), outlier channels, CKA ~ {ref:.6f}")
    print(f"{'method':<44}{'time s':>9}{'tokens/s':>12}{'vs floor':>10}{'|err| vs float64':>18}")
    print(f"{'floor: 3 fp32 products per chunk':<44}{floor:>9.2f}{steps * chunk / floor:>12,.0f}{1:>9.2f}x{'-':>18}")
    print(
        f"{'prism StreamingCKA (fp32 products, f64 acc)':<44}{ours:>9.2f}{steps * chunk / ours:>12,.0f}"
        f"{ours / floor:>9.2f}x{abs(val - ref):>18.1e}"
    )
    REPORT.extend(
        [f"StreamingCKA, {rows:,} tokens x {d} dims (chunks of {chunk}), outlier channels, CKA ~ {ref:.6f}:", ""]
    )
    md_table(
        ["method", "time", "tokens/s", "vs floor", "error vs float64"],
        [
            ["floor: 3 fp32 products per chunk", f"{floor:.2f} s", f"{steps * chunk / floor:,.0f}", "1.00x", "-"],
            [
                "prism StreamingCKA (fp32 products, f64 acc)",
                f"{ours:.2f} s",
                f"{steps * chunk / ours:,.0f}",
                f"{ours / floor:.2f}x",
                f"{abs(val - ref):.1e}",
            ],
        ],
    )


def batched_gram_cka(Xs: torch.Tensor, Ys: torch.Tensor) -> torch.Tensor:
    """The debiased heatmap as a careful user would batch it in plain torch, in the inputs' dtype:
    each layer centred and its zero-diagonal Gram taken once, every pair's unbiased HSIC (Song et
    al.) from one product of the flattened Grams plus the row-sum terms. The peer to beat by 3x
    (issue 26); in float32 it is fast and, on activations with outlier channels, wrong."""
    n = Xs.shape[1]

    def grams(Z):
        Zc = Z - Z.mean(1, keepdim=True)
        K = Zc @ Zc.mT
        K.diagonal(dim1=-2, dim2=-1).zero_()
        rows = K.sum(-1)
        return K.reshape(K.shape[0], -1), rows, rows.sum(-1)

    (gx, rx, tx), (gy, ry, ty) = grams(Xs), grams(Ys)
    c1, c2 = 1.0 / ((n - 1) * (n - 2)), 2.0 / (n - 2)
    hxy = gx @ gy.T + c1 * tx[:, None] * ty[None, :] - c2 * (rx @ ry.T)
    hxx = (gx * gx).sum(-1) + c1 * tx * tx - c2 * (rx * rx).sum(-1)
    hyy = (gy * gy).sum(-1) + c1 * ty * ty - c2 * (ry * ry).sum(-1)
    return hxy / torch.sqrt(hxx[:, None] * hyy[None, :])


def margin(args):
    """Issue 26's criterion: the debiased L x L heatmap, prism ``cka_matrix`` against three peers,
    each run --repeats times in alternation with prism (a machine that slows down in between
    slows both): cka-pytorch's ``hsic1`` through its API (per pair; timed on --peer-pairs pairs and
    extrapolated) and :func:`batched_gram_cka` in float64 and in float32. Every repeat's ratio is
    printed, and each method's largest error against the float64 numpy reference on a few entries."""
    hsic1 = load_peer_hsic1()
    L, n, d = args.layers, args.n, args.d
    X, Y = layers(L, n, d)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    pairs = [(i, j) for i in range(L) for j in range(L)][: args.peer_pairs]
    check = [(0, 0), (L - 1, L - 1), (0, L - 1), (L // 2, L // 3)]
    ref = {(i, j): numpy_cka(X[i], Y[j], True) for i, j in check}

    peers = {
        "batched Grams, float64": lambda: batched_gram_cka(Xt.double(), Yt.double()),
        "batched Grams, float32": lambda: batched_gram_cka(Xt, Yt),
    }
    if hsic1 is not None:
        peers["cka-pytorch 1.1.3 hsic1, per pair (~)"] = lambda: cka_pytorch(hsic1, Xt, Yt, pairs)
    rows = {name: [] for name in peers}
    errors = {}
    ours_t = []
    for _ in range(args.repeats):
        ours, t_ours = timed(cka.cka_matrix, Xt, Yt, debiased=True)
        ours_t.append(t_ours)
        errors["prism cka_matrix"] = max(abs(float(ours[i, j]) - r) for (i, j), r in ref.items())
        for name, fn in peers.items():
            out, t = timed(fn)
            if name.startswith("cka-pytorch"):
                t *= L * L / len(pairs)
                errors[name] = max(abs(v - numpy_cka(X[i], Y[j], True)) for (i, j), v in list(out.items())[:2])
            else:
                errors[name] = max(abs(float(out[i, j]) - r) for (i, j), r in ref.items())
            rows[name].append((t, t / t_ours))
    print(f"\n(margin) debiased {L} x {L} heatmap, n = {n}, d = {d}, {torch.get_num_threads()} threads")
    print(f"prism cka_matrix: {', '.join(f'{t:.2f} s' for t in ours_t)}; max error {errors['prism cka_matrix']:.1e}")
    md_rows = [
        ["prism cka_matrix", ", ".join(f"{t:.2f} s" for t in ours_t), "1.0x", f"{errors['prism cka_matrix']:.1e}"]
    ]
    for name, rs in rows.items():
        ratios = ", ".join(f"{r:.1f}x" for _, r in rs)
        print(f"{name:<40} {', '.join(f'{t:.2f} s' for t, _ in rs)}  ratios {ratios}; max error {errors[name]:.1e}")
        md_rows.append([name, ", ".join(f"{t:.2f} s" for t, _ in rs), ratios, f"{errors[name]:.1e}"])
    REPORT.extend(
        [
            f"Debiased {L} x {L} heatmap, n = {n}, d = {d}, {args.repeats} alternating repeats, load average "
            f'{os.getloadavg()[0]:.1f} ("~": timed on {len(pairs)} pairs, extrapolated):',
            "",
        ]
    )
    md_table(["method", "time per repeat", "time / prism per repeat", "max error vs float64"], md_rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--peer-pairs", type=int, default=6, help="pairs timed for O(n^3)-per-pair peers")
    ap.add_argument("--part", choices=["all", "heatmap", "streaming", "margin"], default="all")
    ap.add_argument("--repeats", type=int, default=3, help="alternating repeats of --part margin")
    ap.add_argument("--markdown", metavar="PATH", default=None, help="also write the results tables as Markdown")
    args = ap.parse_args()
    args.layers, args.n, args.d, args.tokens = (8, 1024, 256, 200_000) if args.quick else (24, 2048, 512, 1_000_000)
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}")
    if args.part in ("all", "heatmap"):
        heatmap(args)
    if args.part in ("all", "streaming"):
        streaming(args)
    if args.part in ("all", "margin"):
        margin(args)
    write_markdown(args.markdown, f"CKA ({'quick' if args.quick else 'full'} sizes)")


if __name__ == "__main__":
    main()
