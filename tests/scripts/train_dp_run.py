"""The trainers' data-parallel checks in one launch: ``torchrun ... tests/scripts/train_dp_run.py OUT COMMANDS.json``.

Runs each ``prism`` argument list of COMMANDS.json through ``prism_cli.main`` in every process. For
``prism rl`` the reward is replaced by a planted one (1 when the completion has an even number of
characters), so groups disagree and the advantages carry signal from a random model, and each rank
records, per step, the rewards it scored itself and the advantages it computed from the gathered
rewards in ``OUT/rl_rank<R>.json``.
"""

import json
import os
import sys
from pathlib import Path

from prism_cli import main
from prism_train import rl


def planted_reward(domain, text, answer) -> float:
    return float(len(text) % 2 == 0)


def record(out: Path) -> None:
    rank = int(os.environ.get("RANK", "0"))
    seen = {"local_rewards": [], "advantages": []}
    rollout, shared = rl._rollout, rl.shared_advantages

    def _rollout(*args, **kwargs):
        result = rollout(*args, **kwargs)
        seen["local_rewards"].append(result[0].tolist())
        return result

    def shared_advantages(accelerator, rewards, scale_std=True):
        adv = shared(accelerator, rewards, scale_std)
        seen["advantages"].append({"rewards": rewards.tolist(), "advantages": adv.tolist()})
        (out / f"rl_rank{rank}.json").write_text(json.dumps(seen))
        return adv

    rl.reward, rl._rollout, rl.shared_advantages = planted_reward, _rollout, shared_advantages


if __name__ == "__main__":
    out = Path(sys.argv[1])
    record(out)
    commands = json.loads(Path(sys.argv[2]).read_text())
    sys.exit(max(main(argv) for argv in commands))
