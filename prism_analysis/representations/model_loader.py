"""Load a causal language model and its tokenizer from a checkpoint, for analysis and training alike.

Safetensors only unless the caller allows pickle (then ``torch.load(weights_only=True)`` inside
transformers); ``trust_remote_code`` stays off unless asked for. The checkpoint's files are checked
first by :class:`~prism_analysis.checkpoints.local.Checkpoint`, so a bad file gives the same
one-line error as every other command.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..checkpoints.base import label
from ..checkpoints.hub import resolve
from ..checkpoints.local import Checkpoint
from ..checkpoints.opening import open_checkpoint
from ..devices import resolve_device
from ..errors import PARAM, PrismError

DTYPES = ("float32", "bfloat16", "float16")


def load_options(
    device=None, dtype=None, tokenizer=None, trust_remote_code=False, allow_pickle=False, progress=True
) -> dict:
    """The keyword arguments of :func:`load_model` for the models of one command (both sides of a
    ``prism cka`` or ``prism diff``); under a launcher each rank loads on its own device
    (:func:`~prism_analysis.distributed.rank_device`)."""
    from .. import distributed

    if distributed.world_size() > 1:
        device = distributed.rank_device(device)
    return dict(
        device=device,
        dtype=dtype,
        tokenizer=tokenizer,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        progress=progress,
    )


def load_model(
    source,
    device: str | torch.device | None = None,
    dtype: str | None = None,
    tokenizer: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    progress: bool = True,
    config=None,
):
    """``(model, tokenizer)`` from any checkpoint a command takes, the model in eval mode on ``device``.

    ``source``: a local path, a Hub reference (downloaded with its tokenizer files first), a
    torch.distributed.checkpoint directory (``config``: its config.json when it has none beside it),
    ``BASE+ADAPTER`` (a base with a PEFT LoRA adapter merged), or an opened checkpoint. Hugging Face
    files on disk are loaded by transformers; the other forms are built from their config and filled
    tensor by tensor from the reader (so a sharded checkpoint is never consolidated on disk).
    ``dtype``: ``"float32"``, ``"bfloat16"``, ``"float16"`` or None (the checkpoint's).
    Raises :class:`PrismError` naming the checkpoint when it cannot be loaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if dtype is not None and dtype not in DTYPES:
        raise PrismError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if not progress:
        hf_logging.disable_progress_bar()
    ckpt = open_checkpoint(source, allow_pickle, config, tokenizer=True, progress=progress)
    if tokenizer is not None:
        tokenizer = resolve(tokenizer, tokenizer=True, progress=progress)
    dev = resolve_device(device)
    torch_dtype = getattr(torch, dtype) if dtype else "auto"
    name = label(ckpt)
    try:
        if type(ckpt) is Checkpoint:  # Hugging Face files on disk
            model = AutoModelForCausalLM.from_pretrained(
                ckpt.path, dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=not allow_pickle
            )
        else:
            model = _from_tensors(ckpt, torch_dtype, trust_remote_code)
    except PrismError:
        raise
    except Exception as e:  # transformers raises many types (OSError, ValueError, KeyError, ...)
        raise PrismError(f"cannot load model: {' '.join(str(e).split())[:300]}", name) from None
    home = tokenizer or _tokenizer_home(ckpt)
    try:
        tok = AutoTokenizer.from_pretrained(home, trust_remote_code=trust_remote_code)
    except Exception:
        raise PrismError(f"no loadable tokenizer here; pass {PARAM} PATH", home, param="tokenizer") from None
    return model.to(dev).eval(), tok


def _from_tensors(ckpt, torch_dtype, trust_remote_code: bool):
    """A model built from ``ckpt.config`` (its weights not initialised) and filled with every tensor
    of ``ckpt``, read one at a time; a tied head gets the embedding itself."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(ckpt.config or {})
    if "model_type" not in cfg:
        raise PrismError(
            f"no config.json with a model_type here (pass {PARAM} for a sharded checkpoint)",
            label(ckpt),
            param="config",
        )
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    try:  # parameters allocated but not initialised (they are filled below); buffers computed as usual
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    state = {n: ckpt.get(n) for n in ckpt.names}
    for alias, target in ckpt.aliases.items():
        state[alias] = state[target]
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if m not in dict(model.named_buffers())]
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise PrismError(
            f"the tensors do not fit a {config.model_type} model built from its config ({what})", label(ckpt)
        )
    if torch_dtype != "auto":
        model = model.to(torch_dtype)
    return model


def _tokenizer_home(ckpt) -> Path:
    """Where a checkpoint's tokenizer is: its own folder; a LoRA base's; a sharded checkpoint's parent."""
    base = getattr(ckpt, "base", None)
    if base is not None:
        return _tokenizer_home(base)
    folder = Path(ckpt.path)
    if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
        return folder
    return folder.parent if (folder.parent / "tokenizer_config.json").is_file() else folder
