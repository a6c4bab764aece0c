"""Live tracking (prism_analysis.tracking.tracker) against the offline analyses over saved checkpoints.

- a transformers Trainer run with PrismCallback at every step, saving a checkpoint at every step:
  the tracked numbers equal ``prism trajectory`` over the checkpoints (counts exactly, L2 to 1e-12),
  the k-step numbers equal the trajectory of consecutive checkpoints, the logs carry prism/ keys;
- resume from a Trainer checkpoint continues the curve against the run's theta_0;
- the CKA curve: 1 at step 0, and only the layers a planted run trains move;
- bf16 visibility against an independent numpy rounding;
- a real TRL GRPOTrainer run with the callback.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import PROSE, ROOT, SCRIPTS, TESTS, tiny_tokenizer

from prism_analysis.errors import PrismError
from prism_analysis.metrics import DEFAULT_THRESHOLDS, changed_column
from prism_analysis.tracking.callback import PrismCallback
from prism_analysis.tracking.tracker import UpdateTracker
from prism_analysis.weights.spectral import Bf16Visibility
from prism_analysis.weights.trajectory import analyse_trajectory

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
COUNTED = [changed_column(t) for t in DEFAULT_THRESHOLDS] + ["fraction_equal"]


def tiny_llama(seed=0):
    from prism_analysis.tiny import build_model

    return build_model("llama", seed=seed, hidden_size=32, num_layers=2)


def train_args(out, steps, save_steps=None, **kw):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        save_steps=save_steps or steps,
        save_strategy="steps",
        save_only_model=save_steps == 1,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        logging_steps=1000,
        dataloader_num_workers=0,
        seed=0,
        **kw,
    )


def token_data(n=64, length=12):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 500, (n, length), generator=g)]


class Reporter:
    """Stands for a report_to backend: records what each on_log call carries."""

    def __init__(self):
        self.logged = []

    def __getattr__(self, name):  # every other event is a no-op
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logged.append(dict(logs or {}))


def compare_tables(live: pd.DataFrame, offline: pd.DataFrame, metrics, prefix=""):
    """Every (step, component, metric) of ``offline`` equals the live one (prefixed)."""
    n = 0
    for (step, comp, metric), value in offline.set_index(["step", "component", "metric"])["value"].items():
        if metric not in metrics:
            continue
        got = live[(live.step == step) & (live.component == comp) & (live.metric == prefix + metric)]["value"]
        assert len(got) == 1, (step, comp, metric)
        got = float(got.iloc[0])
        if metric.endswith("normalized_l2"):
            assert math.isclose(got, value, rel_tol=1e-12, abs_tol=1e-15), (step, comp, got, value)
        else:
            assert got == value, (step, comp, metric, got, value)  # counts / numel: exact
        n += 1
    return n


@pytest.mark.slow
def test_trainer_callback_equals_offline_trajectory(tmp_path):
    from transformers import Trainer

    model = tiny_llama()
    out = tmp_path / "run"
    model.save_pretrained(out / "checkpoint-0")  # theta_0, which the Trainer does not save
    reporter = Reporter()
    callback = PrismCallback(every=1, out=tmp_path / "track", k_steps=(1, 3))
    trainer = Trainer(
        model=model,
        args=train_args(out, steps=12, save_steps=1),
        train_dataset=token_data(),
        callbacks=[reporter, callback],
    )
    trainer.train()
    track = tmp_path / "track"
    live = pd.read_csv(track / "trajectory.csv")
    offline = analyse_trajectory(out, progress=False).table
    assert sorted(live.step.unique()) == list(range(13))
    assert compare_tables(live, offline, ["normalized_l2", *COUNTED]) == 13 * offline.component.nunique() * 8
    # k-step: theta_t against theta_{t-k}, as a trajectory of the two saved checkpoints
    for k, t in [(1, 5), (1, 12), (3, 7)]:
        pair = analyse_trajectory([out / f"checkpoint-{t - k}", out / f"checkpoint-{t}"], progress=False).table
        pair = pair[pair.step == pair.step.max()].assign(step=t)
        assert compare_tables(live, pair, ["normalized_l2", *COUNTED], prefix=f"k{k}_") > 0
    assert not (live.metric == "k3_normalized_l2").loc[live.step < 3].any()  # no theta_{t-3} before step 3
    # summary: prism trajectory's schema
    summary = json.loads((track / "summary.json").read_text())
    ref = analyse_trajectory(out, progress=False).summary()
    assert summary["steps"] == ref["steps"]
    for key in ("t50", "t80", "final_fraction_changed"):
        assert summary["total"][key] == ref["total"][key]
    assert math.isclose(summary["total"]["final_normalized_l2"], ref["total"]["final_normalized_l2"], rel_tol=1e-12)
    assert set(summary["components"]) == set(ref["components"])
    assert (track / "trajectory.png").is_file() and (track / "trajectory.pdf").is_file()
    # the logs: the Trainer's history and a report_to backend (registered before the callback) see prism/ keys
    history = [h for h in trainer.state.log_history if "prism/normalized_l2" in h]
    assert len(history) >= 12
    seen = [log for log in reporter.logged if "prism/normalized_l2" in log]
    assert len(seen) >= 12 and "prism/sparsity_k1" in seen[-1] and "prism/attn_q/normalized_l2" in seen[-1]
    last = live[(live.step == 12) & (live.component == "total") & (live.metric == "normalized_l2")]["value"]
    assert seen[-1]["prism/normalized_l2"] == float(last.iloc[0])


@pytest.mark.slow
def test_resume_continues_against_the_runs_theta0(tmp_path):
    from transformers import Trainer

    out, track = tmp_path / "run", tmp_path / "track"
    model = tiny_llama()
    model.save_pretrained(tmp_path / "theta0")
    Trainer(
        model=model,
        args=train_args(out, steps=8, save_steps=4),
        train_dataset=token_data(),
        callbacks=[PrismCallback(every=2, out=track)],
    ).train()
    first = pd.read_csv(track / "trajectory.csv")
    # resume from checkpoint-4 into a new output directory: the tracker restores theta_0 from `track`
    resumed = tiny_llama(seed=7)  # weights come from the checkpoint
    Trainer(
        model=resumed,
        args=train_args(tmp_path / "run2", steps=8, save_steps=8),
        train_dataset=token_data(),
        callbacks=[PrismCallback(every=2, out=track)],
    ).train(resume_from_checkpoint=str(out / "checkpoint-4"))
    live = pd.read_csv(track / "trajectory.csv")
    assert sorted(live.step.unique()) == [0, 2, 4, 6, 8]
    pd.testing.assert_frame_equal(live[live.step <= 4].reset_index(drop=True), first[first.step <= 4])
    # step 8 is measured against the run's theta_0, not against the resumed weights
    offline = analyse_trajectory([tmp_path / "theta0", tmp_path / "run2" / "checkpoint-8"], progress=False).table
    offline = offline[offline.step == offline.step.max()].assign(step=8)
    assert compare_tables(live, offline, ["normalized_l2", *COUNTED]) > 0
    assert json.loads((track / "tracking.json").read_text())["tracked"] == [0, 2, 4, 6, 8]


def test_cka_curve_moves_only_where_the_planted_run_trains(tmp_path):
    model = tiny_llama()
    tok = tiny_tokenizer()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("model.layers.1."))  # only the last block trains
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    tracker = UpdateTracker(model, every=2, probe=PROSE[:8], tokenizer=tok, out=tmp_path / "t", k_steps=())
    ids = tok(PROSE[:4], return_tensors="pt", padding=True)["input_ids"]
    model.train()
    for step in range(1, 5):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        tracker.step(step)
        assert model.training  # the probe restores the training mode
    tracker.finish()
    curve = pd.read_csv(tmp_path / "t" / "cka_curve.csv")
    assert sorted(curve.layer.unique()) == [0, 1, 2]
    at0 = curve[curve.step == 0]["cka"]
    assert np.allclose(at0, 1.0, atol=1e-12)
    end = curve[curve.step == 4].set_index("layer")["cka"]
    assert abs(end[0] - 1) < 1e-12 and abs(end[1] - 1) < 1e-12  # upstream of the trained block: untouched
    assert end[2] < 1 - 1e-4  # the trained block's output moved
    assert (tmp_path / "t" / "cka_curve.png").is_file()
    # the weight table agrees: only layer-1 components moved
    table = tracker.table
    moved = table[(table.step == 4) & (table.metric == "normalized_l2") & (table.value > 0)]
    assert set(moved.component) >= {"total", "attn_q", "mlp_up"} and "embed" not in set(moved.component)


def bf16_reference(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits by round-to-nearest-even on the integer bits (NaN canonicalised)."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return np.where(np.isnan(x), 0x7FC0, rounded).astype(np.uint16)


def test_bf16_visibility_against_integer_rounding():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50_000, generator=g)
    rel = torch.logspace(-5, -1, 50_000)[torch.randperm(50_000, generator=g)]
    b = a * (1 + rel)  # small relative changes: many vanish in bf16, large ones show
    b[:100] = a[:100]
    expected = int((bf16_reference(a.numpy()) != bf16_reference(b.numpy())).sum())
    acc = Bf16Visibility().update(a, b)
    assert acc.n_visible == expected and 0 < expected < 50_000 - 100
    assert acc.compute() == expected / 50_000


def test_plain_loop_reference_modes_agree(tmp_path, device):
    """cpu, device and disk references give the same table, on every device this machine has (the
    statistics run where the parameters are); a non-tracked step records nothing."""
    tables = []
    for where in ("cpu", "device", "disk"):
        model = tiny_llama().to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        out = tmp_path / where if where == "disk" else None  # no figures to draw for the others
        tracker = UpdateTracker(model, every=3, out=out, reference=where, k_steps=(1, 4))
        ids = torch.randint(3, 500, (2, 8), generator=torch.Generator().manual_seed(0)).to(device)
        for step in range(1, 7):
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
            metrics = tracker.step(step)
            assert bool(metrics) == (step % 3 == 0)
        tables.append(tracker.finish().table)
    pd.testing.assert_frame_equal(tables[0], tables[1])
    pd.testing.assert_frame_equal(tables[0], tables[2])
    assert sorted(tables[0].step.unique()) == [0, 3, 6]
    assert not list((tmp_path / "disk").glob("theta_k*"))  # k-step snapshots are dropped once used


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"every": 0}, "every must be a positive integer"),
        ({"k_steps": (0,)}, "k_steps entry must be a positive integer"),
        ({"reference": "gpu"}, "reference must be one of"),
        ({"probe": ["a", "b", "c", "d"]}, "needs the model's tokenizer"),
        ({"probe": ["a"], "tokenizer": object()}, "at least 4 texts"),
        ({"thresholds": (-0.1,)}, "thresholds must be finite"),
        ({"reference": "disk", "out": None}, "needs an output directory"),
        ({"resume": True}, "cannot resume tracking"),
    ],
)
def test_bad_options(tmp_path, kwargs, problem):
    kwargs = {"out": tmp_path / "t", **kwargs}
    with pytest.raises(PrismError, match=problem):
        UpdateTracker(tiny_llama(), **kwargs)


def test_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(PrismError, match="not empty"):
        UpdateTracker(tiny_llama(), out=tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "user data"


@pytest.mark.slow
def test_trl_grpo_trainer_with_the_callback(tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    tok = tiny_tokenizer()
    base = tmp_path / "base"  # TRL builds the KL reference model from the policy's path
    tiny_llama().save_pretrained(base)
    tok.save_pretrained(base)
    prompts = Dataset.from_dict({"prompt": [f"Tom has {i} apples." for i in range(8)]})

    def reward(completions, **kwargs):  # verifiable: the share of vowels (varies within a group)
        return [sum(c in "aeiou" for c in text) / max(len(text), 1) for text in completions]

    args = GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        max_steps=3,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=6,
        learning_rate=1e-2,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        logging_steps=1,
        save_strategy="no",
        beta=0.05,
        seed=0,
    )
    trainer = GRPOTrainer(
        model=str(base),
        reward_funcs=reward,
        args=args,
        train_dataset=prompts,
        processing_class=tok,
        callbacks=[PrismCallback(every=1, out=tmp_path / "track", probe=PROSE[:6])],
    )
    trainer.train()
    assert any("prism/normalized_l2" in h for h in trainer.state.log_history)
    summary = json.loads((tmp_path / "track" / "summary.json").read_text())
    assert summary["steps"] == [0, 1, 2, 3]
    assert summary["total"]["final_normalized_l2"] > 0
    curve = pd.read_csv(tmp_path / "track" / "cka_curve.csv")
    assert sorted(curve.step.unique()) == [0, 1, 2, 3]


@pytest.mark.slow
def test_prism_train_track_every_equals_trajectory_and_survives_resume(tmp_path):
    """``prism train --track-every 1`` saving every step: OUT/tracking equals ``prism trajectory``
    of OUT; a run cut after step 6 (last save at 4) and resumed tracks the same numbers."""
    from prism_train.config import TrainConfig
    from prism_train.lm import train

    small = dict(steps=8, save_every=4, batch_size=4, seq_len=32, warmup=2, model={"hidden_size": 32, "num_layers": 2})
    every = TrainConfig(**small, save_steps=list(range(1, 8)), track_every=1)
    train(every, tmp_path / "full", progress=False)
    live = pd.read_csv(tmp_path / "full" / "tracking" / "trajectory.csv")
    offline = analyse_trajectory(tmp_path / "full", progress=False).table
    assert compare_tables(live, offline, ["normalized_l2", *COUNTED]) == 9 * offline.component.nunique() * 8
    cut = TrainConfig(**small, track_every=2)
    train(cut, tmp_path / "cut", progress=False, stop_after=6)
    train(cut, tmp_path / "cut", progress=False)
    resumed = pd.read_csv(tmp_path / "cut" / "tracking" / "trajectory.csv")
    assert sorted(resumed.step.unique()) == [0, 2, 4, 6, 8]
    pd.testing.assert_frame_equal(resumed, live[live.step.isin([0, 2, 4, 6, 8])].reset_index(drop=True))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fsdp2", "ddp"])
def test_distributed_tracking_equals_one_process(tmp_path, mode):
    """Two gloo processes (torchrun): FSDP2 shards measured per rank and all-reduced, or DDP with
    rank 0 measuring, give the single-process table (counts exactly, L2 to 1e-12)."""
    import subprocess
    import sys

    script = SCRIPTS / "tracking_ranks.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}"}
    single = subprocess.run([sys.executable, str(script), "single", str(tmp_path / "single")], env=env, timeout=300)
    assert single.returncode == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    r = subprocess.run(
        [*cmd, str(script), mode, str(tmp_path / mode)], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    one = pd.read_csv(tmp_path / "single" / "trajectory.csv")
    two = pd.read_csv(tmp_path / mode / "trajectory.csv")
    assert len(one) == len(two) and sorted(two.step.unique()) == [0, 1, 2, 3, 4]
    assert compare_tables(two, one, set(one.metric)) == len(one)
    settings = json.loads((tmp_path / mode / "summary.json").read_text())["tracking"]
    assert settings["world_size"] == 2 and settings["sharded"] == (mode == "fsdp2")
    files = {p.name for p in (tmp_path / mode).iterdir()}
    assert ("theta_0.rank1.safetensors" in files) == (mode == "fsdp2")
