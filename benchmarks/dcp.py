"""Reading a sharded torch.distributed.checkpoint in place, against its safetensors twin.

Two CPU processes (torchrun, gloo) save N fp32 tensors of S x S, each sharded by rows over both ranks
(DTensor ``Shard(0)``), with ``torch.distributed.checkpoint``; rank 0 also writes the same tensors
as one safetensors file. Then, in this process, every tensor is read (and every page touched) from
each, with the time and the peak extra resident memory:

  safetensors  Checkpoint.get: a memory map of the tensor's bytes
  dcp          DcpCheckpoint.get: the tensor allocated, its two chunks loaded and copied in

  python benchmarks/dcp.py                  # 4 tensors of 8192 x 8192 (256 MiB each, 1 GiB)
  python benchmarks/dcp.py --n 2 --size 4096
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SAVE = """
import sys, torch, torch.distributed as dist, torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

out, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
dist.init_process_group("gloo")
mesh = init_device_mesh("cpu", (dist.get_world_size(),))
g = torch.Generator().manual_seed(0)
state = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(size, size, generator=g) for i in range(n)}
if dist.get_rank() == 0:
    save_file(state, out + "/model.safetensors")
dcp.save({k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in state.items()}, checkpoint_id=out + "/dcp")
dist.destroy_process_group()
"""


def read_all(path: Path) -> tuple[float, int]:
    """Seconds to read every tensor of ``path`` (every page touched) and the peak extra RSS; opening
    (headers, metadata, imports) is not timed."""
    import psutil

    from prism_analysis.checkpoints.opening import open_checkpoint

    ck = open_checkpoint(path)
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak, done = [base], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    for name in ck.names:
        t = ck.get(name)
        t.reshape(-1)[:: 4096 // t.element_size()].sum()
        del t
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return seconds, peak[0] - base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4, help="tensors")
    ap.add_argument("--size", type=int, default=8192, help="rows and columns of each tensor")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "save.py"
        script.write_text(SAVE)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        subprocess.run(
            [*torchrun, str(script), tmp, str(args.n), str(args.size)], check=True, env=env, capture_output=True
        )
        mib = args.n * args.size**2 * 4 / 2**20
        for label, path in (("safetensors", Path(tmp) / "model.safetensors"), ("dcp", Path(tmp) / "dcp")):
            seconds, extra = read_all(path)
            print(
                f"{label:<12} {mib:.0f} MiB in {seconds:.2f} s ({mib / seconds:,.0f} MiB/s), "
                f"peak extra RSS {extra / 2**20:.0f} MiB (largest tensor {mib / args.n:.0f} MiB)"
            )


if __name__ == "__main__":
    main()
