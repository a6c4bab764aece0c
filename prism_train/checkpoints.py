"""Saving trajectories: atomic step checkpoints, the ``trajectory.json`` manifest, and resume.

Layout of a run directory::

    OUT/trajectory.json        {"phase", "parent", "mix", "config", "steps": [{"step", "path",
                                "tokens", "loss", "lr", "time", ...}, ...], "evals": [...]}
    OUT/step_000000/           config.json, model.safetensors, tokenizer files,
    OUT/step_000100/           training_state.pt (only in the newest step: optimizer, scheduler, RNG)

A step directory is written under a temporary name and renamed when complete; the manifest is
rewritten atomically after it, so a run killed at any moment (``kill -9`` mid-save included) leaves
only complete steps listed, and leftovers named ``.step_*.tmp-*`` are ignored and cleaned.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from prism_analysis.errors import PrismError
from prism_analysis.outputs import write_json

MANIFEST = "trajectory.json"
STATE = "training_state.pt"


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_manifest(out: Path) -> dict | None:
    f = Path(out) / MANIFEST
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except ValueError:
        raise PrismError("corrupt trajectory manifest", f) from None


def write_manifest(out: Path, manifest: dict) -> None:
    write_json(Path(out) / MANIFEST, manifest)


def clean_leftovers(out: Path) -> None:
    for p in Path(out).glob(".step_*.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def save_step(
    out: Path, step: int, model, tokenizer, state: dict | None, save_dtype: torch.dtype = torch.float32
) -> Path:
    """Write ``OUT/step_NNNNNN`` atomically: a complete HF checkpoint (+ training state)."""
    out = Path(out)
    final = out / step_name(step)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".{final.name}.tmp-"))
    try:
        sd = None
        if save_dtype != torch.float32:
            sd = {k: v.detach().to(save_dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
        model.save_pretrained(tmp, state_dict=sd, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if state is not None:
            torch.save(state, tmp / STATE)
        if final.exists():  # a stale step from beyond the resume point
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PrismError(f"cannot write checkpoint ({e.strerror or e})", final) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def drop_old_states(out: Path, keep: Path) -> None:
    """Training state is only needed in the newest step: remove it from the others."""
    for p in Path(out).glob(f"step_*/{STATE}"):
        if p.parent != keep:
            p.unlink(missing_ok=True)


def load_state(step_dir: Path) -> dict:
    return torch.load(Path(step_dir) / STATE, map_location="cpu", weights_only=True)


def resume_point(out: Path, config: dict, force: bool = False) -> tuple[dict | None, Path | None]:
    """(manifest, newest step dir with training state) of an existing run of the same config.

    Refuses (PrismError) a directory holding a run of a different config unless ``force``.
    """
    out = Path(out)
    manifest = read_manifest(out)
    if manifest is None:
        if out.exists() and any(p for p in out.iterdir() if not p.name.startswith(".")) and not force:
            raise PrismError("output directory is not empty and holds no trajectory; pass --force or pick another", out)
        return None, None
    if manifest.get("config_hash") != config_hash(config):
        if not force:
            raise PrismError(
                "output directory belongs to a run with a different configuration; "
                "pass --force to start over there, or pick another directory",
                out,
            )
        return None, None
    for entry in reversed(manifest.get("steps", [])):
        d = out / entry["path"]
        if (d / STATE).is_file() and (d / "config.json").is_file():
            return manifest, d
    return None, None
