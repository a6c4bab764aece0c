"""Live tracking across processes: ``torchrun --nproc-per-node 2 tests/scripts/tracking_ranks.py MODE OUT``.

MODE ``fsdp2``: every rank builds the same tiny LLaMA, shards it with FSDP2 ``fully_shard`` (every
decoder layer, then the root) and trains 4 SGD steps on the same batch, tracked every step; each
rank measures its own shards and the sums are all-reduced. MODE ``ddp``: the same with DDP (full
parameters everywhere; rank 0 alone measures). MODE ``single`` (one process, no launcher): the
unsharded run the others must equal. All write OUT (rank 0).
"""

import os
import sys

import torch
import torch.distributed as dist
from helpers import end_worker  # tests/ is on PYTHONPATH (the launching test puts it there)

from prism_analysis.tiny import build_model
from prism_analysis.tracking.tracker import UpdateTracker


def main(mode: str, out: str) -> None:
    torch.set_num_threads(1)
    if mode != "single":
        dist.init_process_group("gloo")
    model = build_model("llama", hidden_size=32, num_layers=2, vocab_size=1001)  # uneven vocab shards
    if mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    elif mode == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tracker = UpdateTracker(model, every=1, k_steps=(1,), out=out)
    ids = torch.randint(3, 1001, (4, 12), generator=torch.Generator().manual_seed(0))
    for step in range(1, 5):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        tracker.step(step)
    tracker.finish()
    if mode != "single":
        dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    main(sys.argv[1], sys.argv[2])
    end_worker()
