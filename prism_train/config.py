"""The configurations of the two trainers, one field per option.

Each field is declared once with :func:`prism_analysis.options.option`: its default, its help text
and its valid range. The ``prism train`` / ``prism rl`` command-line options are built from these
fields, and a config built in Python is checked against the same ranges. This module imports
neither torch nor transformers, so ``prism --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from prism_analysis.options import check_options, number_list, option, steps_list
from prism_analysis.tiny import FAMILIES

#: Where training runs.
DEVICES = ("auto", "cpu", "cuda")


class _Config:
    def __post_init__(self):
        check_options(self)

    def hashed(self) -> dict:
        """The configuration that identifies a run (where it runs and what watches it do not)."""
        return {k: v for k, v in asdict(self).items() if k not in ("device", "track_every")}


@dataclass
class TrainConfig(_Config):
    """Everything that defines a training run (all but ``device`` enter its configuration hash)."""

    phase: str = option("pretrain", "pretrain or mid (mid-training)", choices=("pretrain", "mid"))
    mix: str = option("pretrain", "data mix: a preset (pretrain, math, mc, mcs) or a YAML/JSON mix file")
    init: str = option(
        "llama", f"a model family for a fresh model ({', '.join(FAMILIES)}) or a checkpoint to continue from"
    )
    steps: int = option(300, "optimizer steps", low=1)
    save_every: int = option(100, "save a checkpoint every N steps (step 0 and the last are always saved)", low=1)
    save_steps: list[int] = option([], "extra steps to save, e.g. 1,2,5,10", parse=steps_list, metavar="LIST")
    lr: float = option(1e-3, "peak learning rate", low=0, low_open=True)
    min_lr_ratio: float = option(0.1, "final learning rate as a fraction of the peak (cosine decay)", low=0, high=1)
    warmup: int = option(30, "linear warmup steps", low=0)
    weight_decay: float = option(0.1, "AdamW weight decay (matrices only)", low=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = option(1.0, "gradient clipping norm (0: off)", low=0)
    batch_size: int = option(16, "sequences per step (per process)", low=1)
    seq_len: int = option(128, "tokens per sequence", low=2)
    seed: int = option(0, "seed of the model init and the data stream")
    save_dtype: str = option(
        "float32",
        "dtype of saved weights (training keeps fp32 master weights in the training state)",
        choices=("float32", "bfloat16"),
    )
    model: dict = field(default_factory=dict)  # tiny_config overrides for a fresh model
    tokenizer_vocab: int = option(1024, "vocabulary size of the tokenizer trained for a fresh model", low=16)
    device: str = option("auto", "where training runs: auto (a GPU when there is one), cpu or cuda", choices=DEVICES)
    track_every: int = option(
        0,
        "track PRISM's update statistics live every N steps into OUT/tracking (0: off): the F16 curve at "
        "every N-th step without saving those checkpoints",
        low=0,
    )


@dataclass
class RLConfig(_Config):
    """Everything that defines an RL run (all but ``device`` enter its configuration hash)."""

    init: str = option("", "checkpoint to start from (base or mid-trained)", required=True)
    mix: str = option("math", "RL prompt mix: math, balanced, or a mix file of reasoning domains")
    steps: int = option(40, "RL steps", low=1)
    save_every: int = option(10, "save a checkpoint every N steps (step 0 and the last are always saved)", low=1)
    save_steps: list[int] = option([], "extra steps to save, e.g. 1,2,5", parse=steps_list, metavar="LIST")
    group_size: int = option(8, "completions per prompt, G (GRPO's advantage is relative to the group)", low=2)
    prompts_per_step: int = option(8, "prompts per step", low=1, flag="--prompts")
    temperature: float = option(1.0, "sampling temperature", low=0, low_open=True)
    top_p: float = option(1.0, "nucleus sampling mass", low=0, low_open=True, high=1)
    max_new_tokens: int = option(64, "longest completion, in tokens", low=1)
    lr: float = option(2e-4, "peak learning rate (linear decay to 0)", low=0, low_open=True)
    kl_beta: float = option(0.0, "KL penalty to the start (0: off, no reference model)", low=0)
    scale_std: bool = option(True, "Dr. GRPO advantages (no division by the group std)", flag="--no-std-scaling")
    clip_eps: float = option(0.2, "PPO ratio clipping", low=0, low_open=True)
    ppo_epochs: int = option(1, "optimizer steps per batch (ratio clipping applies)", low=1)
    grad_clip: float = option(1.0, "gradient clipping norm (0: off)", low=0)
    difficulty: list[int] = option(
        [1, 1, 2], "difficulty levels the RL prompts are drawn from", parse=number_list(int, low=1), metavar="LIST"
    )
    difficulty_filter: bool = option(False, "keep prompts the starting model solves sometimes but not always")
    eval_every: int = option(0, "benchmark evaluation every M steps (0: never)", low=0)
    eval_n: int = option(30, "problems per benchmark in those evaluations", low=1)
    seed: int = option(0, "seed of the prompts and the sampling")
    save_dtype: str = option(
        "float32",
        "dtype of saved weights (training keeps fp32 master weights in the training state)",
        choices=("float32", "bfloat16"),
    )
    device: str = option("auto", "where RL runs: auto (a GPU when there is one), cpu or cuda", choices=DEVICES)
    track_every: int = option(
        0,
        "track PRISM's update statistics live every N steps into OUT/tracking (0: off): the F16 curve at "
        "every N-th step without saving those checkpoints",
        low=0,
    )
