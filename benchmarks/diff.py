"""Cost of ``prism diff``'s computation against its floor: a plain forward pass of both models.

Side by side in one process, on the same two in-memory models (LLaMA, random init, B = A plus
1% relative noise) and the same probe batches:
  floor        model_a(ids).logits and model_b(ids).logits for every batch, nothing else
  output       diff_models(..., lens=False): per-position KL both ways, top-1, next-token
               log-probabilities (float64), tokens.csv candidates, intervals
  diff lens    + every layer's residual stream captured and the float64 mean difference
               (--lens-layers none: output divergence + activation-difference lens)
  full         + the logit lens at every layer (the default of `prism diff`)
The runs alternate (floor, output, diff lens, full, floor, ...) and the medians are compared, so
a machine that slows down in between affects all alike. Peak memory: the growth of this
process's resident set during each run, against the size of one batch's logits (float32).

Why the full lens costs more than 1.5x: it applies the unembedding (V x d) to every layer's
residual stream, L more head products per model, plus a float64 softmax over V per layer and
token; for a model whose head is a large share of a block (small d, large V) that is several
forward passes' worth of work by construction. --lens-layers picks fewer layers.

  python benchmarks/diff.py [--hidden 256] [--layers 8] [--vocab 32000] [--prompts 16] [--repeats 3]
                            [--threads N] [--no-full]

On a shared machine whose other tenants keep the cores busy, two-thread runs are dominated by
waits at OpenMP barriers (the floor itself measured 1.9 s idle and 15.7 s busy); --threads 1
compares the work itself.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import psutil
import torch

from prism_analysis.representations.model_diff import diff_models
from prism_train.models import build_model
from prism_train.tokenizer import train_tokenizer

WORDS = ("the model learns to add numbers and then it writes code that sorts a list while the proof of the "
         "theorem uses induction on the length of the sequence and energy equals mass times light squared")  # fmt: skip


def probe_texts(n: int, n_words: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    words = WORDS.split()
    return [" ".join(words[int(i)] for i in torch.randint(len(words), (n_words,), generator=g)) for _ in range(n)]


class PeakRSS:
    """Peak growth of this process's resident set while the block runs (sampled every 2 ms)."""

    def __enter__(self):
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.growth = self.peak - self.base


def floor(ma, mb, tok, texts, batch_size, max_length):
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            enc = tok(
                texts[s : s + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
                padding_side="right",
            )
            ma(**enc, use_cache=False)  # the logits are computed inside: the floor includes the head
            mb(**enc, use_cache=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128, help="tokens per prompt (max length)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--no-full", action="store_true", help="skip the full logit lens (the slow run)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tok = train_tokenizer([WORDS] * 4, vocab_size=300)
    tok.pad_token = tok.pad_token or tok.eos_token or "<pad>"
    kw = dict(hidden_size=args.hidden, num_layers=args.layers, vocab_size=args.vocab)
    ma = build_model("llama", seed=0, **kw).eval()
    mb = build_model("llama", seed=0, **kw).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in mb.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g) * p)
    texts = probe_texts(args.prompts, args.tokens * 2)
    probes = {"probe": texts}
    n_tokens = sum(min(len(tok(t)["input_ids"]), args.tokens) for t in texts)
    logits_bytes = args.batch_size * args.tokens * args.vocab * 4
    params = sum(p.numel() for p in ma.parameters())
    print(
        f"two LLaMA models of {params / 1e6:.1f}M parameters (hidden {args.hidden}, {args.layers} layers, "
        f"vocab {args.vocab}); {args.prompts} prompts x {args.tokens} tokens ({n_tokens} tokens), batch "
        f"{args.batch_size}; torch threads {torch.get_num_threads()}"
    )
    common = dict(batch_size=args.batch_size, max_length=args.tokens, bootstrap=1000)
    runs = {
        "floor (2 forward passes)": lambda: floor(ma, mb, tok, texts, args.batch_size, args.tokens),
        "output divergence": lambda: diff_models(ma, mb, tok, probes, lens=False, **common),
        "+ difference lens": lambda: diff_models(ma, mb, tok, probes, lens_layers="none", **common),
        "+ logit lens, every layer": lambda: diff_models(ma, mb, tok, probes, **common),
    }
    if args.no_full:
        del runs["+ logit lens, every layer"]
    for fn in runs.values():  # warm up (allocator, nnsight, BLAS)
        fn()
    times = {k: [] for k in runs}
    peaks = dict.fromkeys(runs, 0)
    for _ in range(args.repeats):
        for name, fn in runs.items():
            with PeakRSS() as mem:
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
            peaks[name] = max(peaks[name], mem.growth)
    base = statistics.median(times["floor (2 forward passes)"])
    print(f"\n{'':<28}{'median s':>10}{'x floor':>9}{'ms/token':>10}{'peak RSS growth':>17}{'/ batch logits':>16}")
    for name in runs:
        t = statistics.median(times[name])
        print(
            f"{name:<28}{t:>10.3f}{t / base:>9.2f}{1e3 * t / n_tokens:>10.3f}"
            f"{peaks[name] / 2**20:>14.1f} MiB{peaks[name] / logits_bytes:>16.2f}"
        )
    print(f"(one batch's float32 logits: {logits_bytes / 2**20:.1f} MiB; target: output divergence <= 1.5x floor)")


if __name__ == "__main__":
    main()
