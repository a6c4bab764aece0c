"""A base model with a PEFT LoRA adapter merged in, read one tensor at a time: ``BASE+ADAPTER``.

LoRA trains, for each target module of weight W (``out x in``), two small matrices A (``r x in``)
and B (``out x r``). The model it serves has the weight W + ΔW, with

    ΔW = scale · B · A,    scale = lora_alpha / r    (lora_alpha / sqrt(r) with ``use_rslora``)

transposed where W is stored ``in x out`` (GPT-2's Conv1D, ``fan_in_fan_out``; embeddings, whose A
is ``r x vocab`` and B ``dim x r``). ``rank_pattern`` and ``alpha_pattern`` give r and lora_alpha
per module, matched as PEFT matches them.

:class:`LoraCheckpoint` is a read-only checkpoint, duck-typed like
:class:`~prism_analysis.checkpoints.local.Checkpoint`, that serves W + ΔW: ``get(name)`` reads W
from the base, A and B from the adapter, and adds ΔW for that one tensor. Auditing BASE against
BASE+ADAPTER therefore measures the update the adapter makes, module by module, with memory bounded
by a few copies of one tensor, never the merged model.

Open one with :func:`prism_analysis.checkpoints.opening.open_lora` (or ``open_checkpoint("BASE+ADAPTER")``),
which reads the files; this module holds the arithmetic and the mapping of the adapter onto the base,
and imports nothing of the reader (which imports it).

The arithmetic is PEFT's own merge (``merge_and_unload()``), so the tensors are bitwise those of the
merged model on the CPU: B·A in float32 (float64 for a float64 adapter), times scale, rounded to the
adapter's dtype; then, for a linear layer, W + ΔW in the wider dtype of the two, rounded to W's
dtype; for an embedding, ΔW rounded to W's dtype first and added there.

Besides LoRA pairs, an adapter may store whole tensors that replace the base's when PEFT loads it
(``modules_to_save``, an embedding's ``base_layer.weight``), and, with ``lora_bias``, a bias b that
adds scale · b to the base bias. Anything else is refused with a one-line
:class:`~prism_analysis.errors.PrismError` rather than guessed: DoRA and the other LoRA variants,
initialisations that rewrite the base weights (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA, until converted
to plain LoRA), LoRA on parameters or convolutions, and any adapter tensor that names no base tensor.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import PrismError
from ..references import ADAPTER_CONFIG

ADAPTER_SAFETENSORS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
#: PEFT saves every tensor as ``base_model.model.<name in the base model>``.
PREFIX = "base_model.model."
#: ``<module>.<part>``: the LoRA tensors of one module.
LORA_KEY = re.compile(r"(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_embedding_[AB])")
#: adapter_config.json fields that turn on a LoRA variant whose merge is not W + scale·B·A.
VARIANTS = {
    "use_dora": "DoRA",
    "use_bdlora": "BD-LoRA",
    "use_qalora": "QA-LoRA",
    "alora_invocation_tokens": "aLoRA",
    "arrow_config": "Arrow",
    "velora_config": "VeLoRA",
    "monteclora_config": "MonteCLoRA",
    "kasa_config": "KaSA",
    "target_parameters": "LoRA on parameters (target_parameters)",
    "layer_replication": "layer replication",
    "trainable_token_indices": "trainable tokens",
}
#: init_lora_weights values that leave the base weights as they are (the others rewrite them, or are variants).
PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")


@dataclass(frozen=True)
class LoraUpdate:
    """The low-rank update of one base tensor: adapter tensor names of A and B, and how to apply them."""

    a: str
    b: str
    scale: float
    transpose: bool  # W is stored in x out (Conv1D with fan_in_fan_out, embeddings)
    embedding: bool  # PEFT rounds an embedding's ΔW to W's dtype before adding it


@dataclass
class Edit:
    """What the adapter does to one base tensor: replace it, then add low-rank updates and bias terms."""

    replace: str | None = None  # adapter tensor that PEFT loads in place of the base one
    updates: list[LoraUpdate] = field(default_factory=list)
    bias: list[tuple[str, float]] = field(default_factory=list)  # (lora_B.bias, scale): adds scale · b


def lora_delta(a: torch.Tensor, b: torch.Tensor, scale: float, transpose: bool = False) -> torch.Tensor:
    """ΔW = scale · B·A (transposed when ``transpose``), as PEFT's ``get_delta_weight`` computes it
    on the CPU: B·A in float32 (float64 for float64 factors), times scale, rounded to B's dtype."""
    work = torch.promote_types(b.dtype, torch.float32)
    ba = b.to(work) @ a.to(work)
    return (ba.T if transpose else ba).mul_(scale).to(b.dtype)  # in place: one W-sized temporary fewer


def add_update(w: torch.Tensor, delta: torch.Tensor, round_first: bool = False) -> torch.Tensor:
    """W + ΔW in W's dtype, as PEFT's merge adds it: the sum in the wider dtype of the two, rounded to
    W's (``round_first``: ΔW rounded to W's dtype before the sum, as for embeddings).

    ``delta`` is consumed: the sum is written into it when it has the wider dtype (addition is
    commutative, bit for bit), which keeps one W-sized temporary fewer alive per merged tensor.
    """
    if round_first:
        delta = delta.to(w.dtype)
    total = delta.to(torch.promote_types(w.dtype, delta.dtype))
    total += w
    return total.to(w.dtype).contiguous()


class LoraCheckpoint:
    """A base checkpoint with a PEFT LoRA adapter merged, one tensor at a time.

    Duck-typed like :class:`~prism_analysis.checkpoints.local.Checkpoint`: ``path`` (``BASE+ADAPTER``),
    ``config``, ``tensors`` and ``aliases`` (the base's: merging changes no name, shape or dtype),
    ``names``, ``nbytes``, ``architecture``, ``info(name)`` and ``get(name)``. ``changed`` lists the
    base tensors the adapter touches.

    Made by :func:`~prism_analysis.checkpoints.opening.open_lora` from the opened pieces: ``base`` (a
    checkpoint), ``adapter_dir``, ``adapter_config`` (its ``adapter_config.json``, checked here) and
    ``weights`` (its tensors, a checkpoint of ``adapter_model.safetensors``).
    """

    is_pickle = False

    def __init__(self, base, adapter_dir: str | os.PathLike, adapter_config, weights):
        self.base = base
        self.adapter_dir = Path(adapter_dir)
        self.allow_pickle = weights.allow_pickle
        self.path = Path(f"{base.path}+{self.adapter_dir}")
        self.config = base.config
        self.tensors = base.tensors
        self.aliases: dict[str, str] = base.aliases
        self.adapter_config = check_adapter_config(adapter_config, self.adapter_dir / ADAPTER_CONFIG)
        self.weights = weights
        self.edits: dict[str, Edit] = self._plan()

    # -- the adapter's tensors, mapped onto the base's ----------------------------------------
    def _plan(self) -> dict[str, Edit]:
        edits: dict[str, Edit] = {}
        modules: dict[str, dict[str, str]] = {}  # module -> part -> adapter tensor name
        for key in self.weights.tensors:
            if not key.startswith(PREFIX):
                raise PrismError(f"adapter tensor {key!r} does not start with {PREFIX!r}", self.weights.path)
            rest = key[len(PREFIX) :]
            if m := LORA_KEY.fullmatch(rest):
                modules.setdefault(m["module"], {})[m["part"]] = key
            else:  # modules_to_save, or the base_layer PEFT saves with an embedding LoRA
                name = self._base_name(rest.replace(".base_layer.", "."), key)
                self._check_shape(name, self.weights.info(key).shape, key)
                edits.setdefault(name, Edit()).replace = key
        for module, parts in modules.items():
            embedding = "lora_embedding_A" in parts or "lora_embedding_B" in parts
            a, b = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A.weight", "lora_B.weight")
            if a not in parts or b not in parts or (embedding and len(parts) > 2):
                raise PrismError(f"adapter module {module!r} has {sorted(parts)}, not a LoRA pair", self.weights.path)
            r, scale = self._rank_and_scale(module)
            shape_a, shape_b = self.weights.info(parts[a]).shape, self.weights.info(parts[b]).shape
            if len(shape_a) != 2 or len(shape_b) != 2:
                raise PrismError(f"adapter module {module!r}: LoRA on convolutions is not supported", self.weights.path)
            if shape_a[0] != r or shape_b[1] != r:
                raise PrismError(
                    f"adapter module {module!r}: A is {list(shape_a)} and B {list(shape_b)}, but the rank is {r}",
                    self.weights.path,
                )
            transpose = embedding or bool(self.adapter_config.get("fan_in_fan_out"))
            name = self._base_name(f"{module}.weight", parts[a])
            self._check_shape(name, (shape_a[1], shape_b[0]) if transpose else (shape_b[0], shape_a[1]), parts[a])
            edits.setdefault(name, Edit()).updates.append(LoraUpdate(parts[a], parts[b], scale, transpose, embedding))
            if "lora_B.bias" in parts:
                bias = self._base_name(f"{module}.bias", parts["lora_B.bias"])
                self._check_shape(bias, self.weights.info(parts["lora_B.bias"]).shape, parts["lora_B.bias"])
                edits.setdefault(bias, Edit()).bias.append((parts["lora_B.bias"], scale))
        return edits

    def _base_name(self, name: str, key: str) -> str:
        """The stored base tensor ``name`` names: as is, or without the model prefix (``transformer.``,
        ``model.``) that checkpoints such as the Hub's GPT-2 leave out. Else a one-line error."""
        for candidate in (name, name.partition(".")[2]):
            if candidate in self.base.tensors:
                return candidate
        tied = f" (the base ties it to {self.aliases[name]!r})" if name in self.aliases else ""
        raise PrismError(
            f"adapter tensor {key!r} matches no tensor of the base {self.base.path}{tied}", self.adapter_dir
        )

    def _check_shape(self, name: str, shape, key: str) -> None:
        if tuple(shape) != self.base.tensors[name].shape:
            raise PrismError(
                f"adapter tensor {key!r} makes {list(shape)} for {name!r}, "
                f"which is {list(self.base.tensors[name].shape)} in the base",
                self.adapter_dir,
            )

    def _rank_and_scale(self, module: str) -> tuple[int, float]:
        """r and scale of ``module``: ``rank_pattern``/``alpha_pattern`` entries matched as PEFT does
        (``get_pattern_key``: the first key that matches the end of the module name), else r, lora_alpha."""
        cfg = self.adapter_config
        r = _pattern_value(cfg.get("rank_pattern") or {}, module, cfg["r"])
        alpha = _pattern_value(cfg.get("alpha_pattern") or {}, module, cfg["lora_alpha"])
        return r, alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r

    # -- reading ---------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return self.base.names

    @property
    def nbytes(self) -> int:
        return self.base.nbytes

    @property
    def architecture(self) -> str | None:
        return self.base.architecture

    @property
    def changed(self) -> list[str]:
        """The stored base tensors the adapter changes."""
        return list(self.edits)

    def info(self, name: str):
        return self.base.info(name)

    def get(self, name: str) -> torch.Tensor:
        """The merged tensor ``name`` in the base's dtype: the base tensor (or the adapter's replacement)
        plus its LoRA updates. Only this tensor and its adapter factors are read."""
        stored = self.aliases.get(name, name)
        edit = self.edits.get(stored)
        if edit is None:
            return self.base.get(name)
        w = self.base.get(stored) if edit.replace is None else self.weights.get(edit.replace).to(self.info(name).dtype)
        for u in edit.updates:
            delta = lora_delta(self.weights.get(u.a), self.weights.get(u.b), u.scale, u.transpose)
            w = add_update(w, delta, round_first=u.embedding)
        for key, scale in edit.bias:
            w = add_update(w, self.weights.get(key) * scale)
        return w

    def __repr__(self) -> str:
        return f"LoraCheckpoint({str(self.path)!r}, changed={len(self.edits)}, tensors={len(self.tensors)})"


def _pattern_value(pattern: dict, module: str, default):
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def check_adapter_config(cfg, path: Path) -> dict:
    """``adapter_config.json`` (``cfg``, read from ``path``), checked to describe a plain LoRA adapter,
    one that merges as W + scale·B·A; else a one-line error naming the file."""
    if not isinstance(cfg, dict):
        raise PrismError(f"{ADAPTER_CONFIG} is not a JSON object", path)
    if cfg.get("peft_type") != "LORA":
        raise PrismError(f"a {cfg.get('peft_type')} adapter, not LoRA: only LoRA adapters are merged", path)
    for key, what in VARIANTS.items():
        if cfg.get(key):
            raise PrismError(f"{what} adapters are not supported: only plain LoRA (W + scale·B·A) is merged", path)
    init = cfg.get("init_lora_weights", True)
    if init not in PLAIN_INITS:
        raise PrismError(
            f"init_lora_weights={init!r} is not supported: it rewrites the base weights or is a LoRA variant "
            "(convert the adapter to plain LoRA first)",
            path,
        )
    for key in ("r", "lora_alpha"):
        if not _positive(cfg.get(key)):
            raise PrismError(f"{key} must be a positive number, not {cfg.get(key)!r}", path)
    for key in ("rank_pattern", "alpha_pattern"):
        pattern = cfg.get(key) or {}
        if not isinstance(pattern, dict) or not all(_positive(v) for v in pattern.values()):
            raise PrismError(f"{key} must map module patterns to positive numbers, not {pattern!r}", path)
    return cfg


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0


def adapter_weights_file(adapter_dir: Path) -> Path:
    """The adapter's tensors: ``adapter_model.safetensors``, else ``adapter_model.bin`` (which the
    reader refuses unless pickle is allowed)."""
    for name in (ADAPTER_SAFETENSORS, ADAPTER_PICKLE):
        if (adapter_dir / name).is_file():
            return adapter_dir / name
    raise PrismError(f"no {ADAPTER_SAFETENSORS} (nor {ADAPTER_PICKLE})", adapter_dir)
