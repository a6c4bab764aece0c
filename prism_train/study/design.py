"""What the miniature PRISM study trains and compares: its models, its pairs, its presets.

The study (:mod:`prism_train.study.run`) pretrains a base model, mid-trains it on three mixes, runs RL
from the base and from each mid-trained model, and compares them pairwise as the paper does. The
names here are shared by the stages, the analysis (:mod:`prism_train.study.analysis`) and the
report (:mod:`prism_train.study.report`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

MODELS = (
    "base",
    "mid_math",
    "mid_mc",
    "mid_mcs",
    "rl_base",
    "rl_mid_math",
    "rl_mid_mc",
    "rl_mid_mcs",
    "rl_mid_mcs_balanced",
)
MIDS = {"mid_math": "math", "mid_mc": "math_code", "mid_mcs": "math_code_science"}
RLS = {
    "rl_base": ("base", "math"),
    "rl_mid_math": ("mid_math", "math"),
    "rl_mid_mc": ("mid_mc", "math"),
    "rl_mid_mcs": ("mid_mcs", "math"),
    "rl_mid_mcs_balanced": ("mid_mcs", "balanced"),
}


@dataclass
class Preset:
    family: str = "llama"
    model: dict = field(default_factory=dict)
    batch_size: int = 16
    seq_len: int = 128
    pretrain_steps: int = 400
    pretrain_lr: float = 1e-3
    mid_steps: int = 1000
    mid_lr: float = 1e-3
    rl_steps: int = 80  # the fewest of 40 and 80 at which RL from every mid-trained model gains (README)
    rl_save_every: int = 80  # checkpoints the analyses read: the start and the end (F16 is tracked live)
    rl_track_every: int = 1  # live tracking (prism rl --track-every): F16 at every RL step, no checkpoints
    rl_lr: float = 1e-5  # PRISM's proportion: ~1/100 of the mid-training peak (5e-7 vs ~5e-5)
    rl_kl_beta: float = 0.05  # KL to the starting model, PRISM's beta
    group_size: int = 8
    prompts_per_step: int = 8
    max_new_tokens: int = 64
    rl_eval_every: int = 0  # benchmark evaluations inside RL runs (no finding uses them)
    eval_n: int = 1000  # draws per benchmark: paired intervals narrow enough to see RL's +0.5..2 points
    cka_n: int = 60
    diff_n: int = 40  # prompts per benchmark of the activation-level diff (prism diff)
    bootstrap: int = 20
    landscape_n: int = 20
    landscape_grid: int = 3
    save_dtype: str = "bfloat16"  # checkpoints as PRISM's models are stored; fp32 masters in the state
    workers: int = 2  # independent jobs run as this many one-thread processes
    seed: int = 0


PRESETS = {
    "smoke": Preset(
        model={"hidden_size": 64, "num_layers": 2},
        batch_size=4,
        seq_len=64,
        pretrain_steps=6,
        mid_steps=6,
        rl_steps=2,
        rl_save_every=1,
        group_size=2,
        prompts_per_step=2,
        max_new_tokens=16,
        rl_eval_every=2,
        eval_n=3,
        cka_n=12,
        diff_n=4,
        bootstrap=3,
        landscape_n=3,
        landscape_grid=2,
    ),
    "tiny": Preset(),
    # a GPU preset: 6.8M-parameter models, 8x the tokens per step, the same regime (RL lr 1/100 of
    # mid-training's, KL 0.05, bf16 checkpoints), 200-step RL runs and 2000 draws per benchmark
    "small": Preset(
        model={"hidden_size": 256, "num_layers": 8},
        batch_size=32,
        seq_len=256,
        pretrain_steps=2000,
        mid_steps=4000,
        rl_steps=200,
        rl_save_every=200,
        group_size=16,
        prompts_per_step=16,
        max_new_tokens=96,
        eval_n=2000,
        cka_n=200,
        diff_n=200,
        bootstrap=100,
        landscape_n=100,
        landscape_grid=5,
    ),
}

#: Checkpoint pairs audited (A -> B): mid-training, RL after it, and RL from the base.
#: The stages of a study, in order.
STAGES = ("pretrain", "mid", "rl", "eval", "analyse", "report")

#: Pairs whose update geometry the report shows ("The Path Not Taken"): mid-training and RL after it.
GEOMETRY = [("base", "mid_mcs"), ("mid_mcs", "rl_mid_mcs")]

AUDITS = [
    ("base", "mid_math"),
    ("base", "mid_mc"),
    ("base", "mid_mcs"),
    ("mid_math", "rl_mid_math"),
    ("mid_mc", "rl_mid_mc"),
    ("mid_mcs", "rl_mid_mcs"),
    ("mid_mcs", "rl_mid_mcs_balanced"),
    ("base", "rl_base"),
    ("base", "rl_mid_mcs"),
]
#: Pairs whose representations are compared (F14/T14).
CKA_PAIRS = [("base", "mid_mcs"), ("mid_mcs", "rl_mid_mcs")]
#: Pairs diffed at the activation level (prism diff on each benchmark's prompts) and audited per
#: attention head and MLP neuron: mid-training and RL after it, as CKA.
DIFF_PAIRS = CKA_PAIRS
