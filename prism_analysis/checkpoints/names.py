"""Tensor names as the model holds them: the one list of wrapper prefixes every reader removes.

Training wraps a model, and the wrapper's name ends up in every key of the state dict it saves:

- *components* that torch inserts wherever the wrapper sits (:data:`WRAPPER_COMPONENTS`):
  ``_orig_mod`` (``torch.compile``), ``_fsdp_wrapped_module`` (FSDP1),
  ``_checkpoint_wrapped_module`` (activation checkpointing). No Hugging Face name contains them:
  they are removed wherever they appear;
- *prefixes* of a whole-model wrapper (:data:`WRAPPER_PREFIXES`): ``module.`` (DDP, DeepSpeed) and
  ``base_model.model.`` (a PEFT ``PeftModel``). A prefix is removed only when *every* name starts
  with it (a model may well own a submodule called ``module``), repeatedly (DDP around PEFT).

A PEFT model saved without merging (``PeftModel.state_dict()``, e.g. ``accelerator.save_model``)
also renames the modules it wraps: ``q_proj.base_layer.weight`` is the base weight ``q_proj.weight``,
``x.modules_to_save.<adapter>.weight`` the trained copy of ``x.weight`` (``x.original_module.weight``,
the frozen copy, is dropped), and ``lora_A``/``lora_B`` hold the low-rank factors, which are not
model weights: :func:`unwrap` returns them apart (the local reader merges them when the
``adapter_config.json`` that scales them is beside the weights, else refuses).

Used by the safetensors/pickle reader (:mod:`~prism_analysis.checkpoints.local`), the DCP reader
(:mod:`~prism_analysis.checkpoints.dcp`) and live tracking (``clean_name``). A backbone saved without
its head (``LlamaModel``: names without ``model.``) is matched to a causal LM at alignment
(:mod:`~prism_analysis.checkpoints.align`), not here: it needs both checkpoints' names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import PrismError

#: Module wrappers torch inserts into parameter names: torch.compile, FSDP1, activation checkpointing.
WRAPPER_COMPONENTS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")
#: Whole-model wrappers, removed when every name starts with one: DDP / DeepSpeed, PEFT's PeftModel.
WRAPPER_PREFIXES = ("module.", "base_model.model.")
#: PEFT's own prefix (the one that makes ``base_layer``, ``modules_to_save`` and LoRA factors meaningful).
PEFT_PREFIX = "base_model.model."
#: A LoRA factor of a PeftModel state dict: ``<module>.lora_A.<adapter>.weight`` and the like.
LORA_FACTOR = re.compile(
    r"(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"\.(?P<adapter>[^.]+)(?P<rest>\.weight|\.bias)?"
)
_MODULES_TO_SAVE = re.compile(r"\.modules_to_save\.[^.]+\.")
_ORIGINAL_MODULE = ".original_module."


def strip_components(name: str) -> str:
    """``name`` without the :data:`WRAPPER_COMPONENTS` (``a._orig_mod.b`` -> ``a.b``)."""
    parts = name.split(".")
    if not any(p in WRAPPER_COMPONENTS for p in parts):
        return name
    return ".".join(p for p in parts if p not in WRAPPER_COMPONENTS)


def strip_prefixes(names: dict, removed: list | None = None) -> dict:
    """``names`` (key -> name) with every :data:`WRAPPER_PREFIXES` prefix that *all* names start with
    removed, again until none is left (DDP around PEFT); the prefixes removed are appended to ``removed``."""
    changed = True
    while changed and names:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(n.startswith(prefix) for n in names.values()):
                names = {k: n[len(prefix) :] for k, n in names.items()}
                if removed is not None:
                    removed.append(prefix)
                changed = True
    return names


@dataclass
class Unwrapped:
    """What :func:`unwrap` made of a checkpoint's stored names.

    ``names``: stored name -> the model's name (every model weight); ``removed``: the wrappers
    removed, in the order met (``"_orig_mod"``, ``"module."``, ...); ``lora``: stored name of each
    LoRA factor -> ``(module, kind + rest)`` with the module's model name (``lora_A.weight``, ...)
    and ``adapters``, the adapter names met; ``dropped``: stored names left out (PEFT's frozen
    ``original_module`` copies).
    """

    names: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    lora: dict[str, tuple[str, str]] = field(default_factory=dict)
    adapters: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def renamed(self) -> dict[str, str]:
        """stored -> model name, for the names that changed."""
        return {k: v for k, v in self.names.items() if k != v}


def unwrap(stored: list[str], peft: bool = True) -> Unwrapped:
    """The model's names of ``stored`` (see the module docstring); ``peft``: also undo PEFT's
    module wrappers when the PEFT prefix was removed. Two stored names that give one model name are
    a :class:`PrismError` (never a guess which one is meant)."""
    out = Unwrapped()
    current = {}
    for s in stored:
        clean = strip_components(s)
        current[s] = clean
        if clean != s:
            out.removed += [c for c in WRAPPER_COMPONENTS if c in s.split(".") and c not in out.removed]
    current = strip_prefixes(current, out.removed)
    if peft and PEFT_PREFIX in out.removed:
        for s, n in list(current.items()):
            if m := LORA_FACTOR.fullmatch(n):
                out.lora[s] = (m["module"], m["kind"] + (m["rest"] or ""))
                if m["adapter"] not in out.adapters:
                    out.adapters.append(m["adapter"])
                del current[s]
            elif _ORIGINAL_MODULE in n:
                out.dropped.append(s)
                del current[s]
            else:
                current[s] = _MODULES_TO_SAVE.sub(".", n.replace(".base_layer.", "."))
    seen: dict[str, str] = {}
    for s, n in current.items():
        if n in seen:
            raise PrismError(f"stored tensors {seen[n]!r} and {s!r} both name the tensor {n!r}")
        seen[n] = s
    out.names = current
    return out


def resizable(component: str, shape_a: tuple, shape_b: tuple) -> bool:
    """Whether two shapes of one tensor differ only by a resized vocabulary: an embedding or LM head
    (``component``) whose leading dimension (rows: tokens) differs and whose other dimensions agree."""
    return (
        component in ("embed", "lm_head")
        and len(shape_a) == len(shape_b) >= 1
        and shape_a[0] != shape_b[0]
        and tuple(shape_a[1:]) == tuple(shape_b[1:])
    )


def shared_rows(name: str, shape_a: tuple, shape_b: tuple) -> int | None:
    """The leading rows two shapes of tensor ``name`` share when they differ by a resized vocabulary
    (:func:`resizable`, component from :func:`prism_analysis.components.classify`), else None."""
    from ..components import classify

    if tuple(shape_a) == tuple(shape_b):
        return shape_a[0] if shape_a else None
    return min(shape_a[0], shape_b[0]) if resizable(classify(name)[1], shape_a, shape_b) else None
