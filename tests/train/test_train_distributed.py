"""The trainers' data-parallel path: two CPU processes over gloo (accelerate under torchrun).

What must hold: 2 ranks x batch B follow the loss curve of 1 process x batch 2B (the same rows of
each step's global batch, gradients averaged); rank 0 alone writes and the saved checkpoints load;
a 2-process run killed with SIGKILL resumes to the weights of an uninterrupted one; RL splits the
prompts over the ranks, gathers the rewards, and every rank computes the advantages of all of them
(equal to group_advantages of the gathered rewards). Two launches in all (the killed run, then one
for everything else).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import SCRIPTS, save_model
from safetensors.torch import load_file
from test_distributed import child_env, torchrun

from prism_cli import main

TINY = dict(hidden_size=32, num_layers=2, vocab_size=600)
TRAIN = ["train", "--init", "m0", "--seq-len", "32", "--warmup", "2", "--device", "cpu", "--quiet"]
RUN = [*TRAIN, "--steps", "12", "--save-every", "4", "--save-steps", "1,2,3"]
RL = ["rl", "--init", "m0", "--steps", "2", "--prompts", "4", "--group-size", "4", "--max-new-tokens", "6"]
RL += ["--device", "cpu", "--quiet"]


def losses(run: Path) -> dict[int, float]:
    steps = json.loads((run / "trajectory.json").read_text())["steps"]
    return {s["step"]: s["loss"] for s in steps if s["step"] > 0}


def weights(step_dir: Path) -> dict:
    return load_file(step_dir / "model.safetensors")


@pytest.mark.slow
def test_data_parallel_training_and_rl_on_two_cpu_processes(tmp):
    save_model(tmp / "m0", seed=0, **TINY)
    launcher = [*torchrun(), "--standalone", "--nproc-per-node", "2"]
    # 1. a 2-process run killed with SIGKILL once it has saved step 4
    killed = subprocess.Popen(
        [*launcher, "-m", "prism_cli", *RUN, "--batch-size", "2", "--out", "killed"],
        cwd=tmp,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and killed.poll() is None:
        if (tmp / "killed/step_000004/model.safetensors").exists():
            break
        time.sleep(0.02)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    saved = json.loads((tmp / "killed/trajectory.json").read_text())["steps"]
    assert 4 <= saved[-1]["step"] < 12, "the run finished before it could be killed"
    # 2. one launch: an uninterrupted run at 2 x B, the killed run resumed, RL
    plan = [
        [*RUN, "--batch-size", "2", "--out", "dp2"],
        [*RUN, "--batch-size", "2", "--out", "killed"],
        [*RL, "--out", "rl2"],
    ]
    (tmp / "plan.json").write_text(json.dumps(plan))
    r = subprocess.run(
        [*launcher, str(SCRIPTS / "train_dp_run.py"), str(tmp), str(tmp / "plan.json")],
        cwd=tmp,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("pretrain: 12 steps") == 2  # rank 0 alone reports (two runs)
    # the loss curve of 2 ranks x 2 rows equals that of 1 process x 4 rows (same global batches)
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        assert main([*RUN, "--batch-size", "4", "--out", "one4"]) == 0
    finally:
        os.chdir(cwd)
    two, one = losses(tmp / "dp2"), losses(tmp / "one4")
    assert list(two) == list(one) == [1, 2, 3, 4, 8, 12]
    for step in (1, 2, 3, 4):  # the first steps; the curves stay together to the end
        assert two[step] == pytest.approx(one[step], rel=1e-5), step
    assert two[12] == pytest.approx(one[12], rel=1e-3) and two[1] != two[12]  # it trained, in step
    # rank 0 alone wrote: one manifest, each step once, no stray files; the checkpoints load
    from transformers import AutoModelForCausalLM

    for run in ("dp2", "killed", "rl2"):
        assert not list((tmp / run).glob(".step_*")), run
    AutoModelForCausalLM.from_pretrained(tmp / "dp2/step_000012")
    # the killed and resumed run ends where the uninterrupted one does
    steps = [s["step"] for s in json.loads((tmp / "killed/trajectory.json").read_text())["steps"]]
    assert steps == [0, 1, 2, 3, 4, 8, 12]
    a, b = weights(tmp / "dp2/step_000012"), weights(tmp / "killed/step_000012")
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    # RL: each rank scored its own half of the prompts; both computed the advantages of all of them
    ranks = [json.loads((tmp / f"rl_rank{r}.json").read_text()) for r in (0, 1)]
    from prism_train.rl import group_advantages

    for step in range(2):
        gathered = ranks[0]["advantages"][step]["rewards"]
        assert ranks[1]["advantages"][step] == ranks[0]["advantages"][step]
        flat = [x for rank in ranks for x in rank["local_rewards"][step]]
        assert [x for row in gathered for x in row] == flat  # rank 0's prompts first, then rank 1's
        assert len(ranks[0]["local_rewards"][step]) == len(ranks[1]["local_rewards"][step]) == 2 * 4
        expected = group_advantages(torch.tensor(gathered)).view(-1).tolist()
        assert ranks[0]["advantages"][step]["advantages"] == pytest.approx(expected, abs=1e-6)
    log = json.loads((tmp / "rl2/trajectory.json").read_text())["log"]
    assert [e["step"] for e in log] == [1, 2]
    for e, step in zip(log, range(2)):
        rewards = [x for row in ranks[0]["advantages"][step]["rewards"] for x in row]
        assert e["reward"] == pytest.approx(sum(rewards) / len(rewards))
    assert any(not e["skipped"] for e in log), "the planted reward gave no signal"
    AutoModelForCausalLM.from_pretrained(tmp / "rl2/step_000002")
