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

Data-parallel (``torchrun``, ``accelerate launch``, ``prism rl ... --nproc N``): the step's prompts
are split into N equal blocks, each rank samples and scores its block, the rewards are gathered so
every rank computes the same advantages (checked), each rank trains on its own completions and the
gradients are averaged; rank 0 alone writes.
"""

from __future__ import annotations

import itertools
import random
import time
from pathlib import Path

import torch

from prism_analysis.errors import PrismError

from .config import RLConfig
from .data.problem import REASONING_DOMAINS, Problem, in_split
from .data.reasoning import generator
from .lm import accelerator_for, start_tracking
from .rewards import reward
from .run_dir import RunDir

RL_MIXES = {"math": {"math": 1.0}, "balanced": dict.fromkeys(REASONING_DOMAINS, 1.0)}


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


def shared_advantages(accelerator, rewards: torch.Tensor, scale_std: bool = True) -> torch.Tensor:
    """:func:`group_advantages` of the gathered (prompts x G) rewards, flattened, checked to be the
    same on every data-parallel rank (each rank then trains on its own prompts' rows)."""
    adv = group_advantages(rewards, scale_std).view(-1)
    if accelerator.num_processes > 1:
        digest = (adv.double() * torch.arange(1, adv.numel() + 1, dtype=torch.float64, device=adv.device)).sum()
        seen = accelerator.gather(digest[None])
        if not bool((seen == seen[0]).all()):
            raise RuntimeError(f"data-parallel ranks computed different advantages: {seen.tolist()}")
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
    kl = torch.zeros((), dtype=logp.dtype, device=logp.device)
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
    cfg: RLConfig,
    out: str | Path,
    force: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    log=print,
) -> dict:
    """Run (or resume) GRPO from ``cfg.init``; returns the manifest (``phase`` = ``rl``)."""
    from prism_analysis.progress import progress_bar
    from prism_analysis.representations.model_loader import load_model

    from .evaluate import evaluate

    if not cfg.init or not Path(cfg.init).exists():
        raise PrismError("--init must be a checkpoint to start RL from", cfg.init or None)
    weights = load_rl_mix(cfg.mix)
    accelerator = accelerator_for(cfg.device)  # under a launcher: joins the data-parallel group
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.prompts_per_step % world:
        raise PrismError(f"--prompts {cfg.prompts_per_step} does not split evenly over {world} processes")
    with RunDir.for_ranks(accelerator, out, cfg.hashed(), force=force, inputs=[cfg.init], command="rl") as run:
        source = run.resume_dir if run.resuming else cfg.init
        model, tok = load_model(source, device="cpu", dtype="float32", progress=False)
        ref = None
        if cfg.kl_beta > 0:
            ref, _ = load_model(cfg.init, device="cpu", dtype="float32", progress=False)
            ref.requires_grad_(False)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
        model, opt = accelerator.prepare(model, opt)
        device = accelerator.device
        if ref is not None:
            ref = ref.to(device)
        start = 0
        save_dtype = getattr(torch, cfg.save_dtype)
        if run.resuming:
            state = run.load_state()
            if "model" in state:  # fp32 master weights when the checkpoint was saved in bf16
                accelerator.unwrap_model(model).load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start = state["step"]
            log(f"resuming {run.out} from step {start}")
        else:
            run.start_manifest(
                phase="rl", parent=str(cfg.init), mix={"name": cfg.mix, "domains": weights}, evals=[], log=[]
            )
        run.trim(start, "log", "evals")
        manifest = run.manifest
        save_at = set(cfg.save_steps) | set(range(0, cfg.steps + 1, cfg.save_every)) | {0, cfg.steps}
        t0 = time.perf_counter() - run.last("time", 0.0)
        timing = {"generate": 0.0, "train": 0.0}
        tokens = run.last("tokens")

        def lr_at(step):
            return cfg.lr * (1 - step / max(1, cfg.steps))

        def maybe_eval(step):
            if cfg.eval_every and accelerator.is_main_process and (step % cfg.eval_every == 0 or step == cfg.steps):
                res = evaluate(accelerator.unwrap_model(model), tok, n=cfg.eval_n)
                res.pop("scores"), res.pop("distinct")
                manifest["evals"].append({"step": step, **res})
                model.train()

        def save(step, stats):
            entry = {
                "tokens": tokens,
                "loss": stats.get("loss", 0.0),
                "lr": lr_at(step),
                "time": time.perf_counter() - t0,
                "reward": stats.get("reward"),
                "timing": dict(timing),
            }
            if accelerator.is_main_process:  # rank 0 alone writes
                net = accelerator.unwrap_model(model)
                state = {"step": step, "optimizer": opt.state_dict()}
                if save_dtype != torch.float32:  # the fp32 master weights, so resume stays exact
                    state["model"] = {k: v.detach().clone() for k, v in net.state_dict().items()}
                run.save_step(step, net, tok, state, entry, save_dtype)
            accelerator.wait_for_everyone()

        if start == 0 and not manifest["steps"]:
            maybe_eval(0)
            save(0, {})
        tracker = start_tracking(cfg, run, model, start)
        pool = (
            filtered_pool(accelerator.unwrap_model(model), tok, weights, cfg, 4 * cfg.prompts_per_step)
            if cfg.difficulty_filter
            else None
        )
        bar = progress_bar(
            range(start, cfg.steps), desc=f"rl {run.out.name}", enabled=progress, initial=start, total=cfg.steps
        )
        for done_here, step in enumerate(bar, 1):
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            if pool is None:
                probs = prompts_for_step(weights, step, cfg.seed, cfg.prompts_per_step, cfg.difficulty)
            else:
                probs = random.Random(f"pool/{cfg.seed}/{step}").choices(pool, k=cfg.prompts_per_step)
            t = time.perf_counter()
            mine = slice(rank * len(probs) // world, (rank + 1) * len(probs) // world)  # this rank's prompts
            local, ids, attn, n_prompt = _rollout(accelerator.unwrap_model(model), tok, probs[mine], cfg, step)
            timing["generate"] += time.perf_counter() - t
            t = time.perf_counter()
            rewards = accelerator.gather(local)  # every rank: all rewards, in prompt order
            adv = shared_advantages(accelerator, rewards.view(len(probs), cfg.group_size), cfg.scale_std)
            adv_all, adv = adv, adv[rank * len(local) : (rank + 1) * len(local)]
            mask = attn[:, n_prompt:].float()
            stats = {
                "step": step + 1,
                "reward": float(rewards.mean()),
                "accuracy": float((rewards == 1).float().mean()),
                "response_length": float(accelerator.reduce(mask.sum(1).mean(), reduction="mean")),
                "lr": lr_at(step),
                "kl": 0.0,
                "loss": 0.0,
                "skipped": False,
            }
            if bool((adv_all == 0).all()) and cfg.kl_beta == 0:  # the same decision on every rank
                stats["skipped"] = True  # no signal: leave the weights exactly as they are
            else:
                model.train()
                with torch.no_grad():
                    # one optimizer step per batch: the sampling policy is the current one, so its
                    # log-probabilities are those of the first forward pass below (ratio 1) and
                    # need no pass of their own
                    old = _logprobs(model, ids, attn, n_prompt) if cfg.ppo_epochs > 1 else None
                    ref_lp = _logprobs(ref, ids, attn, n_prompt) if ref is not None else None
                for _ in range(cfg.ppo_epochs):
                    logp = _logprobs(model, ids, attn, n_prompt)
                    if old is None:
                        old = logp.detach()
                    loss, kl = policy_loss(logp, old, adv, mask, cfg.clip_eps, ref_lp, cfg.kl_beta)
                    accelerator.backward(loss)
                    if cfg.grad_clip:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                stats["loss"] = float(accelerator.reduce(loss.detach(), reduction="mean"))
                stats["kl"] = float(accelerator.reduce(kl, reduction="mean"))
            if tracker is not None:
                tracker.step(step + 1)
            tokens += int(accelerator.reduce(mask.sum(), reduction="sum"))
            timing["train"] += time.perf_counter() - t
            manifest["log"].append(stats)
            bar.set_postfix(reward=f"{stats['reward']:.2f}")
            if step + 1 in save_at:
                maybe_eval(step + 1)
                save(step + 1, stats)
            if tracker is not None and step + 1 == cfg.steps:
                tracker.finish(cfg.steps)
            if stop_after is not None and done_here >= stop_after:
                break
        return manifest


@torch.no_grad()
def _rollout(model, tok, probs: list[Problem], cfg: RLConfig, step: int):
    """Sample G completions per prompt and score them. Returns (rewards, ids, attention, prompt length)."""
    model.eval()
    device = next(model.parameters()).device
    torch.manual_seed(cfg.seed * 1_000_003 + step)  # not hash(): salted per process
    enc = tok([p.prompt for p in probs], return_tensors="pt", padding=True, padding_side="left").to(device)
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
    rewards = torch.tensor(
        [reward(p.domain, t, p.answer) for p, t in zip(refs, texts)], dtype=torch.float32, device=device
    )
    return rewards, gen, attn, n_prompt
