"""GRPO with verifiable rewards, saving an RL checkpoint trajectory (PRISM's RL stage).

Per step: draw ``prompts_per_step`` problems from the RL mix (train split), sample ``group_size``
completions per prompt (temperature, top-p), score each with the domain's verifier
(:mod:`prism_train.rewards`, format-gated 0/1), and take group-relative advantages

    A_ij = r_ij - mean_j(r_i.)                 (Dr. GRPO, ``scale_std=False``)
    A_ij = (r_ij - mean_j r_i.) / (std_j r_i. + eps)   (GRPO, ``scale_std=True``, default)

The loss is token-level: the PPO-clipped surrogate -min(rho A, clip(rho, 1-eps, 1+eps) A) with
rho = pi / pi_old, averaged over every completion token of the batch, plus ``kl_beta`` times the
k3 estimate of KL(pi || pi_ref) when ``kl_beta > 0`` (0 disables it and loads no reference model).
AdamW (no weight decay) with linear decay, gradient clipping.

When every group of a batch scores the same, every advantage is zero: there is no learning
signal, and the step is skipped entirely (no optimizer step), so the weights do not change at all
-- with AdamW a zero gradient would still move them through momentum.

The sampling RNG of step s is seeded with (seed, s): a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import itertools
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from prism_analysis.errors import PrismError

from . import checkpoints as ckpt
from .data.problems import REASONING_DOMAINS, Problem, generator, in_split
from .rewards import reward

RL_MIXES = {"math": {"math": 1.0}, "balanced": dict.fromkeys(REASONING_DOMAINS, 1.0)}


@dataclass
class RLConfig:
    init: str = ""
    mix: str = "math"  # math | balanced | YAML/JSON file with reasoning-domain weights
    steps: int = 40
    save_every: int = 10
    save_steps: list[int] = field(default_factory=list)
    group_size: int = 8
    prompts_per_step: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    lr: float = 2e-4
    kl_beta: float = 0.0
    scale_std: bool = True
    clip_eps: float = 0.2
    ppo_epochs: int = 1
    grad_clip: float = 1.0
    difficulty: list[int] = field(default_factory=lambda: [1, 1, 2])
    difficulty_filter: bool = False  # keep prompts the starting model solves sometimes, not always
    eval_every: int = 0
    eval_n: int = 30
    seed: int = 0


def group_advantages(rewards: torch.Tensor, scale_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages of a (groups x G) reward matrix; G = 1 is rejected."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(
            "GRPO needs at least 2 completions per prompt (group_size >= 2): the advantage is relative to the group"
        )
    adv = rewards - rewards.mean(dim=1, keepdim=True)
    if scale_std:
        adv = adv / (rewards.std(dim=1, keepdim=True, unbiased=False) + eps)
    return adv


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    ref_logp: torch.Tensor | None = None,
    kl_beta: float = 0.0,
):
    """Token-level clipped surrogate (+ k3 KL). ``logp``, ``old_logp``, ``mask``: (B, T); ``adv``: (B,).
    Returns (loss, mean KL over completion tokens)."""
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None]
    surrogate = -torch.minimum(ratio * a, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * a)
    n_tokens = mask.sum().clamp_min(1)
    loss = (surrogate * mask).sum() / n_tokens
    kl = torch.zeros((), dtype=logp.dtype)
    if ref_logp is not None:
        d = ref_logp - logp
        kl_tok = torch.exp(d) - d - 1
        kl = (kl_tok * mask).sum() / n_tokens
        loss = loss + kl_beta * kl
    return loss, kl.detach()


def load_rl_mix(spec: str) -> dict[str, float]:
    if spec in RL_MIXES:
        return dict(RL_MIXES[spec])
    from .data.mix import load_mix

    mix = load_mix(spec)
    bad = [d for d, w in mix.domains.items() if w > 0 and d not in REASONING_DOMAINS]
    if bad or mix.sources:
        raise PrismError(
            f"an RL mix may only weight reasoning domains ({', '.join(REASONING_DOMAINS)}); got {bad}", spec
        )
    return {d: w for d, w in mix.domains.items() if w > 0}


def prompts_for_step(weights: dict[str, float], step: int, seed: int, n: int, levels: list[int]) -> list[Problem]:
    """The problems of RL step ``step``: a pure function of (seed, step), train split only."""
    rng = random.Random(f"rl/{seed}/{step}")
    names, w = list(weights), list(weights.values())
    out = []
    while len(out) < n:
        domain = rng.choices(names, w)[0]
        p = generator(domain)(rng, rng.choice(levels))
        if in_split(p.question, "train"):
            out.append(p)
    return out


def filtered_pool(model, tok, weights, cfg: RLConfig, size: int, max_batches: int = 20) -> list[Problem]:
    """PRISM's difficulty filter: prompts the starting model solves sometimes but not always
    (0 < mean reward < 1 over ``group_size`` samples)."""
    pool = []
    for b in range(max_batches):
        cands = prompts_for_step(weights, -1 - b, cfg.seed, cfg.prompts_per_step, cfg.difficulty)
        rewards, *_ = _rollout(model, tok, cands, cfg, -1 - b)
        mean = rewards.view(len(cands), cfg.group_size).mean(1)
        pool += [p for p, m in zip(cands, mean.tolist()) if 0 < m < 1]
        if len(pool) >= size:
            break
    if not pool:
        raise PrismError(
            "difficulty filter kept no prompt: the starting model solves none sometimes-but-not-always", cfg.init
        )
    return pool


def _logprobs(model, ids: torch.Tensor, attn: torch.Tensor, n_prompt: int) -> torch.Tensor:
    """Log-probabilities of the tokens after position ``n_prompt`` (B, T_completion)."""
    logits = model(input_ids=ids, attention_mask=attn).logits[:, n_prompt - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, n_prompt:, None]).squeeze(-1)


def rl_train(
    cfg: RLConfig, out: str | Path, force: bool = False, progress: bool = True, stop_after: int | None = None, log=print
) -> dict:
    """Run (or resume) GRPO from ``cfg.init``; returns the manifest (``phase`` = ``rl``)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from prism_analysis.activations import load_model

    from .evaluate import evaluate

    if cfg.group_size < 2:
        raise PrismError("group_size must be at least 2: GRPO's advantage is relative to the group")
    if not cfg.init or not Path(cfg.init).exists():
        raise PrismError("--init must be a checkpoint to start RL from", cfg.init or None)
    weights = load_rl_mix(cfg.mix)
    out = Path(out)
    config = asdict(cfg)
    manifest, resume_dir = ckpt.resume_point(out, config, force=force)
    if manifest is None and out.exists() and force:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt.clean_leftovers(out)
    source = resume_dir if resume_dir is not None else cfg.init
    model, tok = load_model(source, device="cpu", dtype="float32", progress=False)
    ref = None
    if cfg.kl_beta > 0:
        ref, _ = load_model(cfg.init, device="cpu", dtype="float32", progress=False)
        ref.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model, opt = accelerator.prepare(model, opt)
    if ref is not None:
        ref = ref.to(accelerator.device)
    start = 0
    if resume_dir is not None:
        state = ckpt.load_state(resume_dir)
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
        log(f"resuming {out} from step {start}")
    else:
        manifest = {
            "phase": "rl",
            "parent": str(cfg.init),
            "mix": {"name": cfg.mix, "domains": weights},
            "config": config,
            "config_hash": ckpt.config_hash(config),
            "steps": [],
            "evals": [],
            "log": [],
        }
    manifest["steps"] = [e for e in manifest["steps"] if e["step"] <= start]
    manifest["log"] = [e for e in manifest.get("log", []) if e["step"] <= start]
    manifest["evals"] = [e for e in manifest.get("evals", []) if e["step"] <= start]
    save_at = set(cfg.save_steps) | set(range(0, cfg.steps + 1, max(1, cfg.save_every))) | {0, cfg.steps}
    t0 = time.perf_counter() - (manifest["steps"][-1]["time"] if manifest["steps"] else 0.0)
    timing = {"generate": 0.0, "train": 0.0}
    tokens = manifest["steps"][-1]["tokens"] if manifest["steps"] else 0

    def lr_at(step):
        return cfg.lr * (1 - step / max(1, cfg.steps))

    def maybe_eval(step):
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            res = evaluate(accelerator.unwrap_model(model), tok, n=cfg.eval_n)
            manifest["evals"].append({"step": step, **res})
            model.train()

    def save(step, stats):
        unwrapped = accelerator.unwrap_model(model)
        d = ckpt.save_step(out, step, unwrapped, tok, {"step": step, "optimizer": opt.state_dict()})
        manifest["steps"].append(
            {
                "step": step,
                "path": d.name,
                "tokens": tokens,
                "loss": stats.get("loss", 0.0),
                "lr": lr_at(step),
                "time": time.perf_counter() - t0,
                "reward": stats.get("reward"),
                "timing": dict(timing),
            }
        )
        ckpt.write_manifest(out, manifest)
        ckpt.drop_old_states(out, d)

    if start == 0 and not manifest["steps"]:
        maybe_eval(0)
        save(0, {})
    pool = (
        filtered_pool(accelerator.unwrap_model(model), tok, weights, cfg, 4 * cfg.prompts_per_step)
        if cfg.difficulty_filter
        else None
    )
    done_here = 0
    bar = tqdm(
        range(start, cfg.steps),
        desc=f"rl {out.name}",
        disable=not progress,
        leave=False,
        initial=start,
        total=cfg.steps,
    )
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        if pool is None:
            probs = prompts_for_step(weights, step, cfg.seed, cfg.prompts_per_step, cfg.difficulty)
        else:
            probs = random.Random(f"pool/{cfg.seed}/{step}").choices(pool, k=cfg.prompts_per_step)
        t = time.perf_counter()
        rewards, ids, attn, n_prompt = _rollout(accelerator.unwrap_model(model), tok, probs, cfg, step)
        timing["generate"] += time.perf_counter() - t
        t = time.perf_counter()
        adv = group_advantages(rewards.view(len(probs), cfg.group_size), cfg.scale_std).view(-1)
        mask = attn[:, n_prompt:].float()
        stats = {
            "step": step + 1,
            "reward": float(rewards.mean()),
            "accuracy": float((rewards == 1).float().mean()),
            "response_length": float(mask.sum(1).mean()),
            "lr": lr_at(step),
            "kl": 0.0,
            "loss": 0.0,
            "skipped": False,
        }
        if bool((adv == 0).all()) and cfg.kl_beta == 0:
            stats["skipped"] = True  # no signal: leave the weights exactly as they are
        else:
            model.train()
            with torch.no_grad():
                old = _logprobs(model, ids, attn, n_prompt)
                ref_lp = _logprobs(ref, ids, attn, n_prompt) if ref is not None else None
            for _ in range(cfg.ppo_epochs):
                logp = _logprobs(model, ids, attn, n_prompt)
                loss, kl = policy_loss(logp, old, adv, mask, cfg.clip_eps, ref_lp, cfg.kl_beta)
                accelerator.backward(loss)
                if cfg.grad_clip:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
            stats["loss"], stats["kl"] = float(loss.detach()), float(kl)
        tokens += int(mask.sum())
        timing["train"] += time.perf_counter() - t
        manifest["log"].append(stats)
        bar.set_postfix(reward=f"{stats['reward']:.2f}")
        if step + 1 in save_at:
            maybe_eval(step + 1)
            save(step + 1, stats)
        done_here += 1
        if stop_after is not None and done_here >= stop_after:
            break
    return manifest


@torch.no_grad()
def _rollout(model, tok, probs: list[Problem], cfg: RLConfig, step: int):
    """Sample G completions per prompt and score them. Returns (rewards, ids, attention, prompt length)."""
    model.eval()
    torch.manual_seed(cfg.seed * 1_000_003 + step)  # not hash(): salted per process
    enc = tok([p.prompt for p in probs], return_tensors="pt", padding=True, padding_side="left")
    gen = model.generate(
        **enc,
        do_sample=True,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=None,
        max_new_tokens=cfg.max_new_tokens,
        num_return_sequences=cfg.group_size,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    n_prompt = enc["input_ids"].shape[1]
    completion = gen[:, n_prompt:]
    # attention: prompt mask repeated per sample; completion tokens up to and including the first EOS
    is_eos = completion == tok.eos_token_id
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
    comp_mask = ~after_eos
    prompt_mask = enc["attention_mask"].repeat_interleave(cfg.group_size, dim=0)
    attn = torch.cat([prompt_mask, comp_mask.long()], dim=1)
    texts = tok.batch_decode(completion, skip_special_tokens=True)
    refs = list(itertools.chain.from_iterable([p] * cfg.group_size for p in probs))
    rewards = torch.tensor([reward(p.domain, t, p.answer) for p, t in zip(refs, texts)], dtype=torch.float32)
    return rewards, gen, attn, n_prompt
