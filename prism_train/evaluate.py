"""Per-domain benchmarks from held-out generator seeds, greedy accuracy, pass@k, perplexity.

Benchmarks (eval split, fixed seed, so every model sees the same problems):
``math_easy`` (math, 1 operation), ``math_hard`` (math, 3 operations with products),
``code`` (what does this program print?), ``science`` (physics/chemistry templates); plus
``general_ppl``, the perplexity on held-out general prose. PRISM's macro average is
mean(math average, code, science). Scoring uses :mod:`prism_train.rewards` (format-gated).
"""

from __future__ import annotations

import itertools
import math
from math import comb

import torch

from prism_analysis.errors import PrismError

from .data.general import corpus
from .data.problem import in_split
from .data.reasoning import problem_stream
from .rewards import reward

BENCHMARKS = {
    "math_easy": ("math", 1),
    "math_hard": ("math", 3),
    "code": ("code_reasoning", 1),
    "science": ("science", 1),
}
EVAL_SEED = 2026


def benchmark(name: str, n: int, seed: int = EVAL_SEED):
    domain, level = BENCHMARKS[name]
    return list(itertools.islice(problem_stream(domain, "eval", seed, level), n))


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 96,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    batch_size: int = 32,
    seed: int | None = None,
) -> list[str]:
    """Completions (text after the prompt, up to EOS) for each prompt, batched with a KV cache.
    With ``num_return_sequences`` = k the result has k consecutive completions per prompt."""
    model.eval()
    device = next(model.parameters()).device
    if seed is not None:
        torch.manual_seed(seed)
    out = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True, padding_side="left").to(device)
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_p=top_p if do_sample else None,
            top_k=None,
            num_return_sequences=num_return_sequences,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new = gen[:, enc["input_ids"].shape[1] :]
        out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021); needs 1 <= k <= n."""
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n samples (k={k}, n={n})")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


@torch.no_grad()
def perplexity(model, tokenizer, docs: list[str], seq_len: int = 128) -> float:
    model.eval()
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for d in docs:
        ids = tokenizer(d, return_tensors="pt")["input_ids"][:, :seq_len].to(device)
        if ids.shape[1] < 2:
            continue
        loss = model(input_ids=ids, labels=ids).loss
        nll += float(loss) * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    return math.exp(nll / max(count, 1))


def evaluate(
    model,
    tokenizer,
    n: int = 50,
    seed: int = EVAL_SEED,
    pass_k: tuple[int, int] | None = None,
    max_new_tokens: int = 96,
    n_ppl_docs: int = 40,
    batch_size: int = 100,
) -> dict:
    """Greedy accuracy per benchmark, macro average, general perplexity (and pass@k if asked:
    ``pass_k = (k, samples)`` with 1 <= k <= samples). ``scores``: benchmark -> the 0/1 score of
    each problem, in benchmark order (the paired intervals of :mod:`prism_train.intervals`).

    A benchmark is ``n`` independent draws from the held-out problem generator, so a small problem
    space repeats problems (level-1 science has about 90 held-out problems): the accuracy and its
    intervals are those of the generator's held-out distribution. Greedy decoding is a function of
    the prompt, so each distinct problem is generated once and its score counts for every draw of
    it; ``distinct``: benchmark -> how many distinct problems the draws hold."""
    if n < 1:
        raise PrismError(f"--n must be at least 1 (got {n})")
    if pass_k is not None and not 1 <= pass_k[0] <= pass_k[1]:
        raise PrismError(f"--pass-k {pass_k[0]},{pass_k[1]}: k must be between 1 and the number of samples")
    res, scores, distinct = {}, {}, {}
    for name, (domain, _) in BENCHMARKS.items():
        probs = benchmark(name, n, seed)
        unique = list(dict.fromkeys(p.prompt for p in probs))
        outs = dict(zip(unique, generate(model, tokenizer, unique, max_new_tokens, batch_size=batch_size)))
        scores[name] = [int(reward(domain, outs[p.prompt], p.answer)) for p in probs]
        res[name] = sum(scores[name]) / len(probs)
        distinct[name] = len(unique)
        if pass_k:
            k, m = pass_k
            samples = generate(
                model,
                tokenizer,
                [p.prompt for p in probs],
                max_new_tokens,
                do_sample=True,
                temperature=1.0,
                num_return_sequences=m,
                batch_size=batch_size,
                seed=seed,
            )
            pk = []
            for j, p in enumerate(probs):
                c = sum(reward(domain, s, p.answer) for s in samples[j * m : (j + 1) * m])
                pk.append(pass_at_k(m, int(c), k))
            res[f"{name}_pass@{k}"] = sum(pk) / len(pk)
    res["math"] = (res["math_easy"] + res["math_hard"]) / 2
    res["macro"] = (res["math"] + res["code"] + res["science"]) / 3
    docs = [d for d in corpus() if in_split(d, "eval")][:n_ppl_docs]
    res["general_ppl"] = perplexity(model, tokenizer, docs)
    res["distinct"] = distinct
    res["scores"] = scores
    return res
