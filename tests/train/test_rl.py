"""GRPO: advantage and loss math by hand, the no-signal step, smoke run, resume equivalence."""

import json

import pytest
import torch
from safetensors.torch import load_file

from prism_analysis.errors import PrismError
from prism_cli import main
from prism_train import rl
from prism_train.config import RLConfig, TrainConfig
from prism_train.lm import train
from prism_train.rl import group_advantages, policy_loss, rl_train


def test_group_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    dr = group_advantages(r, scale_std=False)
    assert torch.allclose(dr, torch.tensor([[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0], [-0.25, -0.25, -0.25, 0.75]]))
    g = group_advantages(r, scale_std=True)
    # group 1: std 0.5 -> +-1; group 3: std = sqrt(3)/4
    assert torch.allclose(g[0], torch.tensor([1.0, -1, -1, 1]), atol=1e-5)
    assert torch.equal(g[1], torch.zeros(4))  # all equal: zero advantage, not NaN
    assert torch.allclose(g[2], torch.tensor([-0.25, -0.25, -0.25, 0.75]) / (3**0.5 / 4), atol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.ones(3, 1))


def test_policy_loss_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.5]]))
    old = torch.log(torch.tensor([[0.25, 0.25], [0.5, 0.25]]))
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, _ = policy_loss(logp, old, adv, mask, clip_eps=0.2)
    # ratios: [[2, 1], [1, 2]]; seq 0 (A=+1): -min(2, 1.2) = -1.2, -min(1, 1) = -1; seq 1 (A=-1): -min(-1,-1) = 1
    # (the masked token is ignored); token-level mean over 3 tokens
    assert loss.item() == pytest.approx((-1.2 - 1.0 + 1.0) / 3)
    ref = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.5]]))
    loss2, kl2 = policy_loss(logp, old, adv, mask, 0.2, ref_logp=ref, kl_beta=0.5)
    d = ref - logp
    k3 = torch.exp(d) - d - 1
    expected_kl = (k3 * mask).sum() / 3
    assert kl2.item() == pytest.approx(expected_kl.item()) and loss2.item() == pytest.approx(
        loss.item() + 0.5 * expected_kl.item()
    )


SMALL_RL = dict(steps=4, save_every=2, group_size=2, prompts_per_step=2, max_new_tokens=12, lr=1e-3)


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    root = tmp_path_factory.mktemp("rlstart")
    train(
        TrainConfig(steps=2, save_every=2, batch_size=2, seq_len=32, model={"hidden_size": 64, "num_layers": 2}),
        root / "base",
        progress=False,
    )
    return root / "base" / "step_000002"


def test_all_equal_groups_leave_weights_bitwise_unchanged(start, tmp, monkeypatch, device):
    monkeypatch.setattr(rl, "reward", lambda domain, text, ref: 0.0)  # every sample scores the same
    m = rl_train(RLConfig(init=str(start), device=device, **SMALL_RL), tmp / "flat", progress=False)
    assert all(e["skipped"] for e in m["log"])
    a, b = load_file(start / "model.safetensors"), load_file(tmp / "flat" / "step_000004" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_signal_moves_the_weights(start, tmp, monkeypatch, device):
    monkeypatch.setattr(rl, "reward", lambda domain, text, ref: float(len(text) % 2))  # varied rewards
    m = rl_train(RLConfig(init=str(start), device=device, **SMALL_RL), tmp / "moving", progress=False)
    assert not all(e["skipped"] for e in m["log"])
    a, b = load_file(start / "model.safetensors"), load_file(tmp / "moving" / "step_000004" / "model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_smoke_run_saves_trajectory_and_resumes_exactly(start, tmp, monkeypatch):
    monkeypatch.setattr(rl, "reward", lambda domain, text, ref: float(len(text) % 3 == 0))
    cfg = RLConfig(init=str(start), eval_every=2, eval_n=2, **SMALL_RL)
    full = rl_train(cfg, tmp / "full", progress=False)
    man = json.loads((tmp / "full" / "trajectory.json").read_text())
    assert man["phase"] == "rl" and man["parent"] == str(start)
    assert [s["step"] for s in man["steps"]] == [0, 2, 4]
    assert [e["step"] for e in man["evals"]] == [0, 2, 4] and "macro" in man["evals"][0]
    assert {"reward", "accuracy", "response_length", "kl", "lr"} <= set(man["log"][0])
    rl_train(cfg, tmp / "cut", progress=False, stop_after=3)
    rl_train(cfg, tmp / "cut", progress=False)
    a = load_file(tmp / "full" / "step_000004" / "model.safetensors")
    b = load_file(tmp / "cut" / "step_000004" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full["log"][-1]["reward"] == json.loads((tmp / "cut" / "trajectory.json").read_text())["log"][-1]["reward"]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp / "full" / "step_000002")


def test_kl_and_errors(start, tmp, capsys, device):
    cfg = RLConfig(init=str(start), kl_beta=0.1, device=device, **{**SMALL_RL, "steps": 2})
    m = rl_train(cfg, tmp / "kl", progress=False)
    assert all(e["kl"] >= 0 for e in m["log"])
    with pytest.raises(PrismError, match="--group-size must be >= 2"):
        RLConfig(init=str(start), **{**SMALL_RL, "group_size": 1})
    assert main(["rl", "--init", str(tmp / "nowhere"), "--out", str(tmp / "x"), "--quiet"]) == 2
    assert "checkpoint to start RL from" in capsys.readouterr().err
    (tmp / "mix.json").write_text('{"domains": {"general": 1}}')
    assert main(["rl", "--init", str(start), "--mix", str(tmp / "mix.json"), "--out", str(tmp / "y"), "--quiet"]) == 2


@pytest.mark.slow
def test_bf16_checkpoints_resume_exactly_from_fp32_master(start, tmp, monkeypatch):
    monkeypatch.setattr(rl, "reward", lambda domain, text, ref: float(len(text) % 3 == 0))
    small = {**SMALL_RL, "steps": 3, "save_every": 1, "max_new_tokens": 8}
    cfg = RLConfig(init=str(start), kl_beta=0.05, save_dtype="bfloat16", **small)
    rl_train(cfg, tmp / "full", progress=False)
    rl_train(cfg, tmp / "cut", progress=False, stop_after=2)  # then resumes from step 2's bf16 checkpoint
    rl_train(cfg, tmp / "cut", progress=False)
    a = load_file(tmp / "full" / "step_000003" / "model.safetensors")
    b = load_file(tmp / "cut" / "step_000003" / "model.safetensors")
    assert all(v.dtype == torch.bfloat16 for v in a.values()) and all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(tmp / "full" / "step_000003" / "training_state.pt", weights_only=True)["model"]
    sb = torch.load(tmp / "cut" / "step_000003" / "training_state.pt", weights_only=True)["model"]
    assert all(v.dtype == torch.float32 and torch.equal(v, sb[k]) for k, v in sa.items())
    # the saved bf16 weights are the fp32 masters rounded, not a separately drifting copy
    assert all(torch.equal(a[k], sa[k].to(torch.bfloat16)) for k in a)


def test_one_epoch_step_needs_no_separate_old_pass():
    """With one optimizer step per batch, old log-probs = the first pass's, detached: the loss and
    every gradient equal those of a separate no-grad pass, bit for bit (rl_train skips that pass)."""
    from prism_analysis.tiny import build_model

    a = build_model("llama", hidden_size=64, num_layers=2, vocab_size=100)
    b = build_model("llama", hidden_size=64, num_layers=2, vocab_size=100)
    ids = torch.randint(3, 100, (6, 20), generator=torch.Generator().manual_seed(0))
    attn = torch.ones_like(ids)
    attn[0, :3] = 0
    adv, mask = torch.linspace(-1, 1, 6), torch.ones(6, 10)
    with torch.no_grad():
        old = rl._logprobs(a, ids, attn, 10)
    la, _ = policy_loss(rl._logprobs(a, ids, attn, 10), old, adv, mask)
    lp = rl._logprobs(b, ids, attn, 10)
    lb, _ = policy_loss(lp, lp.detach(), adv, mask)
    la.backward()
    lb.backward()
    assert torch.equal(la, lb) and all(torch.equal(p.grad, q.grad) for p, q in zip(a.parameters(), b.parameters()))
