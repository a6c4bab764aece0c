"""Weights between base, mid-trained and RL checkpoints: PRISM Eq. 3 and figure 13.

    W(a, b) = W_base + a (W_mid - W_base) + b (W_rl - W_mid)

computed as the algebraically identical (1 - a) W_base + (a - b) W_mid + b W_rl in float64, so that
W(0, 0), W(1, 0) and W(1, 1) reproduce base, mid and rl bit for bit, and cast back to the stored
dtype. :func:`interpolate` streams tensor by tensor and writes a loadable Hugging Face checkpoint
(sharded safetensors, config and tokenizer copied from base) atomically; memory is one shard.
:func:`landscape` scores a 1-D path and an a x b grid with a caller-supplied function.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save_file

from ..checkpoints.opening import open_aligned
from ..checkpoints.stream import stream_aligned
from ..errors import PrismError
from ..outputs import atomic_output_dir
from ..progress import progress_bar

SHARD_BYTES = 2 << 30
_WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".distcp", ".metadata")


def _copy_side_files(src: Path, dst: Path) -> None:
    """Config, generation config and tokenizer files (everything but weights and indexes)."""
    if not src.is_dir():
        return
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(_WEIGHT_FILES) and not f.name.endswith(".index.json"):
            shutil.copy2(f, dst / f.name)


def interpolate(
    base,
    mid,
    rl,
    a: float,
    b: float,
    out,
    progress: bool = False,
    shard_bytes: int = SHARD_BYTES,
    allow_pickle: bool = False,
) -> Path:
    """Write W(a, b) (Eq. 3) to ``out`` as a Hugging Face checkpoint; returns ``out``.

    Raises :class:`PrismError` for a or b that is not finite, and for checkpoints that differ in
    architecture, depth or any tensor's shape -- a resized vocabulary included: rows that exist in
    some of the three checkpoints only have no value in the others, so W(a, b) is not defined for
    them and nothing is made up (resize the others the same way first). Wrapper prefixes
    (``_orig_mod.``, ``module.``, ...) are removed: the output holds the model's own names.
    """
    if not (math.isfinite(a) and math.isfinite(b)):
        raise PrismError(f"the coefficients must be finite numbers (a={a}, b={b})")
    ckpts, al = open_aligned([base, mid, rl], allow_pickle, progress=progress)
    _check_one_vocabulary(al)
    _check_same_depth(ckpts)
    names = [n for n in al.common if n not in ckpts[0].aliases]  # a tied head is the embedding itself
    cb, cm, cr = 1.0 - a, a - b, b
    out = Path(out)
    with atomic_output_dir(out, "interpolate", [c.path for c in ckpts]) as tmp:
        shard: dict[str, torch.Tensor] = {}
        size, files, weight_map = 0, [], {}

        def flush():
            nonlocal shard, size
            if shard:
                fname = f"model-{len(files) + 1:05d}.safetensors"
                save_file(shard, tmp / fname, metadata={"format": "pt"})
                files.append(fname)
                weight_map.update(dict.fromkeys(shard, fname))
                shard, size = {}, 0

        for name, (wb, wm, wr) in stream_aligned(ckpts, names, desc="interpolate", progress=progress):
            if not wb.is_floating_point():
                w = wb.clone()  # integer buffers are not interpolated
            else:
                w = (cb * wb.double() + cm * wm.double() + cr * wr.double()).to(wb.dtype)
            shard[name] = w.contiguous()
            size += w.nbytes
            if size >= shard_bytes:
                flush()
        flush()
        # rename shards to the HF pattern now that their count is known
        final_map = {}
        for i, fname in enumerate(files):
            new = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" if len(files) > 1 else "model.safetensors"
            os.replace(tmp / fname, tmp / new)
            final_map[fname] = new
        if len(files) > 1:
            index = {
                "metadata": {"interpolation": {"a": a, "b": b}},
                "weight_map": {k: final_map[v] for k, v in weight_map.items()},
            }
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        _copy_side_files(ckpts[0].path, tmp)
        if ckpts[0].config is not None and not (tmp / "config.json").exists():  # a DCP base keeps it elsewhere
            (tmp / "config.json").write_text(json.dumps(ckpts[0].config, indent=2))
    return out


def _check_one_vocabulary(al) -> None:
    """W(a, b) needs every row in all three checkpoints: a resized vocabulary is refused (rows that
    exist on one side only have no value on the others, and any stand-in would change W(a, b))."""
    for name, (nb, nm, nr) in al.resized.items():
        wanted = max(nb, nm, nr)
        raise PrismError(
            f"tensor {name!r} has {nb} rows in base, {nm} in mid and {nr} in rl (a resized vocabulary): "
            f"interpolation needs one vocabulary; resize the others to {wanted} tokens "
            "(resize_token_embeddings) and save them first"
        )


def _check_same_depth(ckpts) -> None:
    """W(a, b) needs one architecture: the same depth (config) and the same tensor names."""
    depths = {str(c.path): (c.config or {}).get("num_hidden_layers") for c in ckpts}
    known = {d for d in depths.values() if d is not None}
    if len(known) > 1:
        raise PrismError(f"the checkpoints have different depths (num_hidden_layers {depths})", ckpts[-1].path)
    first = set(ckpts[0].tensors) - set(ckpts[0].aliases)
    for c in ckpts[1:]:
        extra = sorted(set(c.tensors) - first)
        if extra:
            raise PrismError(f"holds tensor {extra[0]!r}, which {ckpts[0].path} lacks", c.path)


def landscape(
    base,
    mid,
    rl,
    score: Callable[[Path], float],
    path: Iterable[tuple[float, float]] | None = None,
    grid_a: Iterable[float] | None = None,
    grid_b: Iterable[float] | None = None,
    workdir: str | os.PathLike | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Score W(a, b) at every point of a 1-D ``path`` and of the ``grid_a`` x ``grid_b`` grid.

    ``score(checkpoint_dir) -> float`` (e.g. math accuracy of that model). Each point is written to
    a temporary checkpoint, scored, and deleted. Returns a DataFrame (kind, a, b, score) with
    kind ``path`` or ``grid``. Defaults: PRISM's path base -> mid -> rl (a from 0 to 1 with b = 0,
    then b from 0 to 1 with a = 1) and a 5 x 5 grid over [0, 1]^2.
    """
    if path is None:
        path = [(x / 4, 0.0) for x in range(5)] + [(1.0, x / 4) for x in range(1, 5)]
    grid_a = list(grid_a) if grid_a is not None else [x / 4 for x in range(5)]
    grid_b = list(grid_b) if grid_b is not None else [x / 4 for x in range(5)]
    points = [("path", a, b) for a, b in path] + [("grid", a, b) for a in grid_a for b in grid_b]
    rows, cache = [], {}
    with tempfile.TemporaryDirectory(dir=workdir, prefix="prism-landscape-") as tmpdir:
        for kind, a, b in progress_bar(points, desc="landscape", enabled=progress):
            if (a, b) not in cache:
                ckpt = interpolate(base, mid, rl, a, b, Path(tmpdir) / "point")
                try:
                    cache[(a, b)] = float(score(ckpt))
                finally:
                    shutil.rmtree(ckpt, ignore_errors=True)
            rows.append({"kind": kind, "a": a, "b": b, "score": cache[(a, b)]})
    return pd.DataFrame(rows)
