"""Write a real sharded checkpoint: run under ``torchrun --nproc-per-node 2 tests/scripts/dcp_save.py OUT``.

Two CPU processes (gloo) build the same tiny LLaMA, perturb it with seeded noise, shard it with FSDP2
``fully_shard`` (every decoder layer, then the root) and save it with ``torch.distributed.checkpoint``:

- ``OUT/base/``          the model before the perturbation (``save_pretrained``, rank 0);
- ``OUT/consolidated/``  the perturbed model, unsharded (``save_pretrained`` before sharding, rank 0);
- ``OUT/dcp/``           its sharded state dict as FSDP2 holds it (``get_model_state_dict``): HF names;
- ``OUT/trainer/``       a training loop's whole state in one DCP directory:
  ``{"model": <state dict>, "optimizer": <AdamW state>, "train_state": {"step": 3}}`` -- the model
  under a ``model`` key, optimizer tensors and a non-tensor entry beside it;
- ``OUT/run/checkpoint-{2,4}/``  what the HF Trainer writes with FSDP ``SHARDED_STATE_DICT``, by
  accelerate's own ``save_fsdp_model`` / ``save_fsdp_optimizer``: ``pytorch_model_fsdp_0/`` and
  ``optimizer_0/``; checkpoint-2 holds the perturbed model, checkpoint-4 two AdamW steps later.
  (The Trainer itself cannot run FSDP on CPU: accelerate keeps an FSDP plugin only for GPU-like
  devices and falls back to DDP; so the test calls the functions the Trainer calls.)

The vocabulary (1001) does not split evenly over two ranks, so embedding and head have uneven shards.
The optimizer takes one AdamW step with learning rate 0, so it has state while the weights stay put.
"""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from accelerate import PartialState
from accelerate.utils import FullyShardedDataParallelPlugin, save_fsdp_model, save_fsdp_optimizer
from helpers import end_worker  # tests/ is on PYTHONPATH (the launching test puts it there)
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
from torch.distributed.fsdp import fully_shard

from prism_analysis.tiny import build_model


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = build_model("llama", hidden_size=64, num_layers=2, vocab_size=1001)
    if rank == 0:
        model.save_pretrained(out / "base")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g) * p)
    if rank == 0:
        model.save_pretrained(out / "consolidated")
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)

    dcp.save(get_model_state_dict(model), checkpoint_id=out / "dcp")

    opt = torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=0.0)
    model(torch.tensor([[1, 2, 3, 4]])).logits.sum().backward()
    opt.step()
    state = {
        "model": get_model_state_dict(model),
        "optimizer": get_optimizer_state_dict(model, opt),
        "train_state": {"step": 3},
    }
    dcp.save(state, checkpoint_id=out / "trainer")

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="SHARDED_STATE_DICT")
    accelerator = PartialState(cpu=True)  # what save_fsdp_model reads of the Accelerator: the process layout
    for step in (2, 4):
        if step == 4:  # two real AdamW steps between the checkpoints
            opt.param_groups[0]["lr"] = 1e-3
            for _ in range(2):
                opt.zero_grad()
                model(torch.tensor([[1, 2, 3, 4]])).logits.sum().backward()
                opt.step()
        save_fsdp_model(plugin, accelerator, model, out / "run" / f"checkpoint-{step}")
        save_fsdp_optimizer(plugin, accelerator, opt, model, out / "run" / f"checkpoint-{step}")
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    main(Path(sys.argv[1]))
    end_worker()
