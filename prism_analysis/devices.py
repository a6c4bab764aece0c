"""Where computation runs: a validated torch device from what the user wrote (``--device``)."""

from __future__ import annotations

import torch

from .errors import PARAM, PrismError

#: Where the weight statistics (audit, trajectory, compare) run unless the user names a device: the
#: CPU, GPU or not. They read every byte from disk once and do a few flops per byte, so the CUDA path
#: only adds its start-up and a host-to-device copy: on an H200 box with 16 cores (the first GPU run,
#: benchmarks/results/gpu-audit-devices.md) the CPU audited a 2.7 GB bf16 pair in 0.82 s, CUDA in
#: 1.54 s (0.47 s of it CUDA's start-up; 1.3x without it); the 0.62 GB pair in 0.52 s and 1.45 s. One
#: run each. ``--device cuda`` still runs there; ``audit --spectral`` (decompositions) keeps cuda.
WEIGHTS_DEVICE = "cpu"


def default_device() -> torch.device:
    """cuda when available, else cpu: the default of the forward passes (CKA, diff, eval)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(spec: str | torch.device | None, default: str | None = None) -> torch.device:
    """``spec`` as a torch device that exists here (None: ``default``, else :func:`default_device`).

    Raises :class:`PrismError` for a name torch does not know, the meta device (it holds no
    values), and an accelerator this machine does not have.
    """
    if spec is None or spec == "":
        return torch.device(default) if default else default_device()
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError):
        raise PrismError(f"{PARAM} {spec!r} is not a device (use cpu, cuda, cuda:N or mps)", param="device") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "meta":
        raise PrismError(f"{PARAM} meta holds no values; use cpu or cuda", param="device")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PrismError(f"{PARAM} {spec} asks for a GPU, but torch sees none here (use cpu)", param="device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise PrismError(f"{PARAM} {spec}: this machine has {torch.cuda.device_count()} GPU(s)", param="device")
        return dev
    if dev.type == "mps" and torch.backends.mps.is_available():
        return dev
    raise PrismError(f"{PARAM} {spec}: that device is not available here (use cpu or cuda)", param="device")
