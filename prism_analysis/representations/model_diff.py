"""Activation-level model diffing: how checkpoint B's outputs and residual streams differ from A's.

PRISM finds that RL keeps representations (CKA > 0.998) and changes few weights, yet changes
behaviour. This module measures the change where behaviour lives, on the same probe sets, loading
and streaming as ``prism cka`` (both models run side by side, batch by batch; nothing of size
vocabulary x all tokens is ever held).

Notation: for a probe token at position t, ``z^A``, ``z^B`` are the two models' output logits,
``log P = z - logsumexp(z)`` computed in float64 from the stored logits (a KL between close models
is a cancellation that float32 log-probabilities cannot resolve), ``P = exp(log P)``.

1. **Output divergence** (``positions.csv``, ``tokens.csv``, ``summary.json``), at every real token
   position t (the distribution predicting token t + 1):

   - ``kl_ab = KL(P_A || P_B) = sum_v P_A(v) (log P_A(v) - log P_B(v))`` and ``kl_ba = KL(P_B || P_A)``
     (each clamped at 0: a negative value is rounding only);
   - ``top1_agree``: ``argmax z^A == argmax z^B`` (first index on ties);
   - ``delta_logprob = log P_B(x_{t+1}) - log P_A(x_{t+1})`` for the actual next token (positions
     with one; the last token of a prompt has none).

   Per probe set: token-weighted means (``mean_kl`` = sum of kl_ab over all positions / number of
   positions; likewise ``mean_kl_ba``, ``agreement``, ``mean_delta_logprob``), each with a 95%
   **percentile bootstrap interval over prompts** (prompts resampled with replacement, the ratio
   of sums recomputed; ``bootstrap`` resamples, seeded). Prompts, not tokens, are the independent
   units (tokens of one prompt are correlated), and KL is heavy-tailed, which a t interval
   ignores. ``tokens.csv`` lists the ``top`` positions by kl_ab with their context and each
   model's ``top_tokens`` most likely next tokens.

2. **Logit lens across depth** (``layers.csv``, ``diff_layers.png``): the residual stream h_l after
   block l (layer 0 = the embedding output, the input of the first block; as ``prism cka``) read
   through the model's own head, ``lens_l = head(h_l)``, ``head(h) = f(lm_head(norm_f(h)))`` with
   the model's final norm module, its output embeddings and its own logit transform f (Granite's
   division by ``logits_scaling``, Cohere's ``logit_scale``, Gemma's ``final_logit_softcapping``;
   identity elsewhere). Per layer: ``kl_ab = KL(lens^A_l || lens^B_l)`` (with a bootstrap interval),
   ``kl_ba``, and each model's ``kl_a_to_output = KL(P_A || lens^A_l)`` (the tuned-lens paper's
   direction: the final distribution against the lens), mean over tokens; ``top1_agree`` of the two
   lenses. The last layer's lens *is* the output (its rows reuse the output logits; that
   ``head(h_L)`` reproduces them is checked on the first batch, and a family whose logits prism
   cannot rebuild is refused, not guessed). Hybrids (Nemotron-H, Granite-4-H): a block is one mixer
   (Mamba2, attention or MLP) with its residual add; the lens reads the residual stream after each
   block the same way, whatever the mixer.

3. **Activation-difference lens** (``lens.csv``, ``diff_lens.png``): per layer the mean residual
   difference ``delta_l = mean_t (h^B_l(t) - h^A_l(t))`` (float64 sums) over all tokens and over the
   first ``first_k`` positions of each prompt, read through each model's head as
   ``head(delta / rms(delta)) - head(0)``: the final norm then lm_head, minus the same of a zero
   vector. Why this form: with an RMSNorm (LLaMA, Granite, Mistral, Qwen, Nemotron-H)
   ``head(0) = 0`` and this is exactly the logit lens of the difference; with a LayerNorm (GPT-2,
   NeoX) it removes the norm's bias read through the unembedding (a constant, the same for every
   delta, that would otherwise dominate the ranking) and the head's bias; for ``delta = 0`` it is
   exactly 0 in every family. Scaling delta to unit RMS first makes the norm's epsilon irrelevant
   and the values comparable across layers (the norm divides out the scale anyway);
   ``delta_rms`` is reported beside them. Reading the raw difference through lm_head alone would
   skip the final norm's gain, which reweights channels by up to orders of magnitude in trained
   models. The ``lens_top`` tokens with the largest values are ``promoted``, the smallest
   ``suppressed``. The head runs in the model's dtype (bf16 models: bf16 resolution).

Distributed (``prism diff --nproc N`` or a launcher): batches are shared out as ``prism cka`` does
(:func:`prism_analysis.distributed.share`); every per-position and per-prompt number is computed
within its batch and reduced on every rank in prompt order, so they are bit-identical to one
process's. The residual sums (float64) are summed per rank and the ranks' sums added in order:
equal to one process's up to the order of float64 additions.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import PrismError

#: ``positions.csv``: every real probe token position.
POSITION_COLUMNS = [
    "probe",
    "prompt",
    "position",
    "token_id",
    "next_token_id",
    "kl_ab",
    "kl_ba",
    "top1_a",
    "top1_b",
    "top1_agree",
    "logprob_a",
    "logprob_b",
    "delta_logprob",
]

#: ``tokens.csv``: the positions of largest KL(P_A || P_B), per probe set.
TOKEN_COLUMNS = [
    "probe",
    "rank",
    "prompt",
    "position",
    "context",
    "token",
    "next_token",
    "kl_ab",
    "kl_ba",
    "top1_agree",
    "logprob_a",
    "logprob_b",
    "delta_logprob",
    "a_top",
    "b_top",
]

#: ``layers.csv``: the logit lens per layer.
LAYER_COLUMNS = [
    "probe",
    "layer",
    "kl_ab",
    "kl_ab_ci_low",
    "kl_ab_ci_high",
    "kl_ba",
    "kl_a_to_output",
    "kl_b_to_output",
    "top1_agree",
    "n_tokens",
]

#: ``lens.csv``: the activation-difference lens, tokens promoted and suppressed per layer.
LENS_COLUMNS = [
    "probe",
    "positions",
    "layer",
    "head",
    "direction",
    "rank",
    "token_id",
    "token",
    "value",
    "delta_rms",
    "n_tokens",
]

INTERVAL = "95% percentile bootstrap over prompts (prompts resampled with replacement, ratio of sums recomputed)"

#: Float64 elements per working array when the vocabulary is processed in row chunks: small enough
#: to stay in the CPU's cache (2 MiB); on a GPU (:data:`GPU_CHUNK_ELEMENTS`) large enough to fill it.
CHUNK_ELEMENTS = 2**18
GPU_CHUNK_ELEMENTS = 2**25
#: Elements of one block of lens logits (rows x V, the model's dtype): the unembedding is applied to
#: this many rows at a time, so its weight is read once per block.
HEAD_ELEMENTS = 2**22

_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f")


# -- the head: final norm, unembedding, logit transform ---------------------------------------------
def find_final_norm(model: nn.Module) -> nn.Module:
    """The final norm of a causal LM: its base model's ``norm``, ``ln_f``, ``final_layernorm``,
    ``final_layer_norm`` or ``norm_f``; :class:`PrismError` when it has none of them."""
    base = getattr(model, "base_model", None) or model
    for name in _NORM_NAMES:
        mod = getattr(base, name, None)
        if isinstance(mod, nn.Module):
            return mod
    raise PrismError(
        f"cannot find the final norm of {type(model).__name__}: its base model ({type(base).__name__}) has "
        f"none of {', '.join(_NORM_NAMES)}; the logit lens needs it"
    )


class LogitHead:
    """``head(h) = f(lm_head(norm_f(h)))``: the map from the residual stream to the model's logits.

    ``f`` is the model's own logit transform, read from its config: Granite (every ``granite*``
    model type) divides by ``logits_scaling``, HyperCLOVA X multiplies by it, Cohere multiplies by
    ``logit_scale``, Gemma 2/3 soft-cap with ``final_logit_softcapping``; identity otherwise.
    :meth:`check` compares ``head(h_L)`` with the model's logits and refuses a family whose logits
    are made some other way.
    """

    def __init__(self, model: nn.Module):
        self.norm = find_final_norm(model)
        self.unembed = model.get_output_embeddings()
        if self.unembed is None:
            raise PrismError(f"{type(model).__name__} has no output embeddings (lm_head); the logit lens needs them")
        cfg = model.config
        kind = str(getattr(cfg, "model_type", "") or "")
        scaling = getattr(cfg, "logits_scaling", None)
        self.divide = scaling if scaling and kind.startswith("granite") else None
        self.multiply = scaling if scaling and kind.startswith("hyperclovax") else None
        if kind.startswith("cohere") and getattr(cfg, "logit_scale", None):
            self.multiply = cfg.logit_scale
        self.softcap = getattr(cfg, "final_logit_softcapping", None)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (..., V) of residual-stream vectors ``h`` (..., d), in the head's dtype."""
        x = self.unembed(self.norm(h))
        if self.divide:
            x = x / self.divide
        if self.multiply:
            x = x * self.multiply
        if self.softcap:
            x = torch.tanh(x / self.softcap) * self.softcap
        return x

    def shift(self, delta: torch.Tensor) -> torch.Tensor:
        """The activation-difference lens of ``delta`` (d,): ``head(delta / rms(delta)) - head(0)``,
        float64 (V,); exactly 0 for ``delta = 0``."""
        dtype = self.unembed.weight.dtype
        device = self.unembed.weight.device
        d = delta.to(torch.float64)
        rms = d.pow(2).mean().sqrt()
        unit = d / rms if rms > 0 else d
        x = torch.stack([unit.to(device=device, dtype=dtype), torch.zeros_like(unit, device=device, dtype=dtype)])
        with torch.no_grad():
            out = self(x).to(torch.float64)
        return out[0] - out[1]

    def check(self, h_last: torch.Tensor, logits: torch.Tensor, name: str = "") -> None:
        """Refuse the lens unless ``head(h_last)`` reproduces ``logits`` (same rows)."""
        with torch.no_grad():
            rebuilt = self(h_last).float()
        want = logits.float()
        err = float((rebuilt - want).abs().max()) if want.numel() else 0.0
        scale = max(float(want.abs().max()) if want.numel() else 0.0, 1.0)
        tol = 1e-4 if want.dtype == torch.float32 and logits.dtype == torch.float32 else 3e-2
        if not err <= tol * scale:
            raise PrismError(
                f"the logit lens cannot rebuild the logits of {name or 'this model'} from its final norm "
                f"({type(self.norm).__name__}) and output embeddings (largest difference {err:.3g}); this "
                "family transforms its logits in a way prism does not know. Use --lens-layers none"
            )


def logit_lens(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The logit lens of residual-stream vectors ``hidden`` (..., d): ``model``'s logits as if the
    stream ended there (:class:`LogitHead`)."""
    with torch.no_grad():
        return LogitHead(model)(hidden)


# -- one forward pass ---------------------------------------------------------------------------------
def forward_hidden(nn_model, layers_path: str, n_layers: int, ids, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hidden (L + 1, b, s, d), logits (b, s, V))`` of one forward pass traced with nnsight: the
    first block's input, every block's output (transformers >= 5 tensors unwrapped, never indexed),
    and the model's own logits. Built from :mod:`prism_analysis.representations.activations`' capture helpers."""
    from .activations import _block_input, _envoy, _unwrap

    saved = []
    with torch.no_grad(), nn_model.trace(input_ids=ids, attention_mask=mask, use_cache=False):
        blocks = _envoy(nn_model, layers_path)
        saved.append(blocks[0].inputs.save())
        for i in range(n_layers):
            saved.append(blocks[i].output.save())
        out = nn_model.output.save()
    hidden = torch.stack([_block_input(saved[0])] + [_unwrap(s) for s in saved[1:]])
    logits = out.logits if hasattr(out, "logits") else out[0]
    return hidden, logits


# -- intervals ---------------------------------------------------------------------------------------
def ratio_interval(sums, counts, bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``sum(sums) / sum(counts)`` over units (prompts) resampled
    with replacement; NaN with fewer than 2 units or no resamples."""
    sums, counts = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    n = len(sums)
    if n < 2 or bootstrap <= 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, bootstrap, 256):  # blocks of resamples: memory 256 x n indices
        idx = rng.integers(0, n, size=(min(256, bootstrap - start), n))
        with np.errstate(invalid="ignore", divide="ignore"):
            values.append(sums[idx].sum(1) / counts[idx].sum(1))
    v = np.concatenate(values)
    v = v[np.isfinite(v)]
    if not len(v):
        return math.nan, math.nan
    a = (1 - level) / 2
    low, high = np.quantile(v, [a, 1 - a])
    return float(low), float(high)


# -- the result --------------------------------------------------------------------------------------
@dataclass
class ModelDiff:
    """Result of :func:`model_diff` / :func:`diff_models` (tables as in the module docstring)."""

    a: str
    b: str
    positions: pd.DataFrame  # POSITION_COLUMNS
    tokens: pd.DataFrame  # TOKEN_COLUMNS
    layers: pd.DataFrame  # LAYER_COLUMNS
    lens: pd.DataFrame  # LENS_COLUMNS
    settings: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)
    bootstrap: int = 1000
    seed: int = 0

    def summary(self) -> dict:
        """{probe: {mean_kl (+ _ci_low/_ci_high), mean_kl_ba, agreement, mean_delta_logprob (each
        with its interval), max_kl, n_prompts, n_tokens, n_next_tokens}}."""
        out = {}
        for probe, df in self.positions.groupby("probe", sort=False):
            per = df.groupby("prompt", sort=True)
            n_tok = per.size().to_numpy(np.float64)
            has_next = df["next_token_id"] >= 0
            n_next = has_next.groupby(df["prompt"], sort=True).sum().to_numpy(np.float64)
            dlp = df["delta_logprob"].where(has_next, 0.0)
            stats = {
                "mean_kl": (per["kl_ab"].sum().to_numpy(), n_tok),
                "mean_kl_ba": (per["kl_ba"].sum().to_numpy(), n_tok),
                "agreement": (per["top1_agree"].sum().to_numpy(np.float64), n_tok),
                "mean_delta_logprob": (dlp.groupby(df["prompt"], sort=True).sum().to_numpy(), n_next),
            }
            s = {}
            for i, (key, (num, den)) in enumerate(stats.items()):
                s[key] = float(_ordered_sum(num) / _ordered_sum(den)) if den.sum() else math.nan
                low, high = ratio_interval(num, den, self.bootstrap, self.seed + i)
                s[f"{key}_ci_low"], s[f"{key}_ci_high"] = low, high
            s["max_kl"] = float(df["kl_ab"].max())
            s["n_prompts"] = len(n_tok)
            s["n_tokens"] = int(n_tok.sum())
            s["n_next_tokens"] = int(n_next.sum())
            out[probe] = s
        return out

    def save(self, out: str | os.PathLike, figures: bool = True) -> None:
        """Write summary.json, positions.csv, tokens.csv, layers.csv, lens.csv and the figures
        (diff_layers, diff_lens) atomically."""
        from ..outputs import atomic_output_dir, write_json

        with atomic_output_dir(out, "diff", [self.a, self.b]) as tmp:
            self.positions.to_csv(tmp / "positions.csv", index=False)
            self.tokens.to_csv(tmp / "tokens.csv", index=False)
            self.layers.to_csv(tmp / "layers.csv", index=False)
            self.lens.to_csv(tmp / "lens.csv", index=False)
            meta = {"a": self.a, "b": self.b, "interval": INTERVAL, "bootstrap": self.bootstrap, "seed": self.seed}
            write_json(tmp / "summary.json", {**self.summary(), "_meta": meta | self.settings | self.run})
            if figures:
                from ..figures import plot_diff_layers, plot_diff_lens

                title = f"{Path(self.a).name} vs {Path(self.b).name}"
                if len(self.layers):
                    plot_diff_layers(self.layers, tmp / "diff_layers", title=title)
                if len(self.lens):
                    plot_diff_lens(self.lens, tmp / "diff_lens", title=title)

    def format(self) -> str:
        lines = [
            f"A: {self.a}",
            f"B: {self.b}",
            "",
            f"{'probe':<18}{'tokens':>8}{'KL(A||B)':>12}  {'95% CI (bootstrap)':<24}{'KL(B||A)':>11}"
            f"{'top-1 agree':>13}{'dlogp(next)':>13}",
        ]
        for probe, s in self.summary().items():
            low, high = s["mean_kl_ci_low"], s["mean_kl_ci_high"]
            ci = "" if math.isnan(low) else f"[{low:.4g}, {high:.4g}]"
            lines.append(
                f"{probe:<18}{s['n_tokens']:>8}{s['mean_kl']:>12.4g}  {ci:<24}{s['mean_kl_ba']:>11.4g}"
                f"{s['agreement']:>13.4f}{s['mean_delta_logprob']:>13.4g}"
            )
        lines.append("(means over probe tokens; intervals: bootstrap over prompts)")
        if len(self.layers):
            lines += ["", "logit lens: KL(lens_A || lens_B) by layer"]
            for probe, df in self.layers.groupby("probe", sort=False):
                values = " ".join(f"{v:.3g}" for v in df["kl_ab"])
                lines.append(f"  {probe}: {values}")
        return "\n".join(lines)


def _ordered_sum(values) -> float:
    """A float64 sum in the given order (the same on every rank and every run)."""
    total = 0.0
    for v in np.asarray(values, dtype=np.float64):
        total += float(v)
    return total


# -- the pipeline ------------------------------------------------------------------------------------
def _parse_lens_layers(lens_layers, n_layers: int) -> list[int]:
    """Layers of the logit lens: None/"all" every layer 0..L, "none" or () none, else the listed ones."""
    if lens_layers is None or (isinstance(lens_layers, str) and lens_layers == "all"):
        return list(range(n_layers + 1))
    if isinstance(lens_layers, str):
        if lens_layers == "none":
            return []
        try:
            lens_layers = [int(x) for x in lens_layers.split(",") if x.strip()]
        except ValueError:
            raise PrismError(f"--lens-layers: {lens_layers!r} is not 'all', 'none' or a list of layers") from None
    chosen = sorted({int(x) for x in lens_layers})
    bad = [x for x in chosen if not 0 <= x <= n_layers]
    if bad:
        raise PrismError(f"--lens-layers: layer {bad[0]} does not exist (layers are 0..{n_layers})")
    return chosen


class _Side:
    """One model ready to run: its nnsight wrapper, blocks and head."""

    def __init__(self, model, tokenizer, lens: bool):
        from .activations import find_modules

        self.model, self.tokenizer = model.eval(), tokenizer
        self.layers_path, self.n_layers = find_modules(model)
        self.device = next(model.parameters()).device
        self.vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() else None
        self.head = LogitHead(model) if lens else None
        self.nn, self.checked = None, False
        if lens:
            from nnsight import NNsight

            self.nn = NNsight(model)
        if tokenizer is not None and tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    def run(self, ids, mask):
        ids, mask = ids.to(self.device), mask.to(self.device)
        if self.nn is not None:
            return forward_hidden(self.nn, self.layers_path, self.n_layers, ids, mask)
        with torch.no_grad():
            return None, self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits


def _encode(side_a: _Side, side_b: _Side, texts: list[str], max_length: int | None, start: int):
    """``(ids, mask)`` of a batch, right-padded; refused when the two tokenizers disagree."""
    kw = dict(return_tensors="pt", padding=True, truncation=max_length is not None, max_length=max_length)
    enc = side_a.tokenizer(texts, padding_side="right", **kw)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if side_b.tokenizer is not side_a.tokenizer:
        other = side_b.tokenizer(texts, padding_side="right", **kw)
        if other["input_ids"].shape != ids.shape or not bool(
            ((other["input_ids"] == ids) | (mask == 0)).all() and (other["attention_mask"] == mask).all()
        ):
            raise PrismError("the two tokenizers split the probe differently; diffing needs the same tokens")
    if int(mask.sum(1).min()) == 0:
        raise PrismError(f"prompt {start + int(mask.sum(1).argmin())} tokenizes to nothing")
    vocab = min(v for v in (side_a.vocab, side_b.vocab) if v)
    if int(ids.max()) >= vocab:
        raise PrismError(
            f"the tokenizer gives token id {int(ids.max())}, but the model has only {vocab} tokens: "
            "it is not this model's tokenizer"
        )
    return ids, mask


@contextlib.contextmanager
def _serial(device):
    """Run the block on one CPU thread (a no-op on a GPU). The float64 work is many small
    element-wise passes over cache-sized chunks: spread over threads they gain little on an idle
    machine and stall at every pass's barrier on a busy one (measured 5-15x slower with 2 threads
    on a shared 2-core machine); the forward passes and the unembedding keep every thread."""
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of two (rows, V) float64 tensors."""
    return torch.linalg.vecdot(x, y)


def _softmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(P, logsumexp, argmax)`` per row of logits ``x`` (any float dtype), in float64:
    ``lse = max - log P(argmax)`` (exact to rounding, as ``P(argmax) = 1 / sum exp(x - max)``), so
    one pass of exp serves both."""
    p = torch.softmax(x, -1, dtype=torch.float64)
    m, top = _max(x)
    # no element equals the max (NaN logits), a +inf logit, or a row of -inf: no distribution
    if bool((top >= x.shape[-1]).any()) or not bool(torch.isfinite(m).all()):
        raise PrismError(NON_FINITE)
    return p, m.double() - p.gather(1, top[:, None])[:, 0].log(), top


def _max(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x.max(-1)`` (the first index on ties), through vectorized reductions (``amax``, ``amin``):
    several times faster on the CPU than ``max``/``argmax`` with indices."""
    m = x.amax(-1)
    where = torch.arange(x.shape[-1], device=x.device)
    return m, torch.where(x == m[:, None], where, x.shape[-1]).amin(-1)


NON_FINITE = (
    "the model gives NaN or +inf logits (or -inf for every token) on this probe; check the checkpoint and --dtype"
)
#: Rows of logits per call of the fused kernel: one parallel region a call, and the copies it may
#: need (rows of a padded batch gathered, bf16/fp16 widened to float32) bounded by this many rows.
KERNEL_ROWS = 64

#: Output divergence of CPU logits through the fused kernel
#: (:mod:`prism_analysis.representations.divergence_kernel`); False: the torch path everywhere.
USE_KERNEL = True


def _kernel_takes(xa: torch.Tensor, xb: torch.Tensor) -> bool:
    """Whether :func:`_kl_pair` runs the fused CPU kernel on these logits (2-D CPU tensors of one
    dtype of float32, bf16, fp16); the torch path takes the rest (GPU logits) with the same
    definitions, equal to ~1e-13 relative."""
    return (
        USE_KERNEL
        and xa.dim() == 2
        and xa.shape == xb.shape
        and xa.device.type == "cpu"
        and xb.device.type == "cpu"
        and xa.dtype == xb.dtype
        and xa.dtype in (torch.float32, torch.bfloat16, torch.float16)
    )


def _rows_per_call(xa: torch.Tensor, xb: torch.Tensor, chunk: int) -> int:
    """Rows of logits per float64 step: the fused kernel reads each row twice whatever the chunk,
    so it takes :data:`KERNEL_ROWS` a call; the torch path takes cache-sized ``chunk`` rows."""
    return KERNEL_ROWS if _kernel_takes(xa, xb) else chunk


def _kl_pair(xa: torch.Tensor, xb: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(KL(P_a || P_b), KL(P_b || P_a), lse_a, lse_b, argmax_a, argmax_b)`` per row of logits
    (float64 arithmetic whatever their dtype), KL clamped at 0:
    ``KL(P_a || P_b) = sum_v P_a(v) (x_a(v) - x_b(v)) - (lse_a - lse_b)`` (equal to
    ``sum P_a (log P_a - log P_b)``; exactly 0 for equal logits). CPU logits go through the fused
    kernel (:mod:`~prism_analysis.representations.divergence_kernel`), others through torch."""
    if _kernel_takes(xa, xb):
        from .divergence_kernel import kl_rows

        kl_ab, kl_ba, lse_a, lse_b, top_a, top_b, bad = kl_rows(xa, xb)
        if bool(bad.any()):
            raise PrismError(NON_FINITE)
        return kl_ab, kl_ba, lse_a, lse_b, top_a, top_b
    pa, lse_a, top_a = _softmax(xa)
    pb, lse_b, top_b = _softmax(xb)
    dx = xa.double() - xb.double()  # float64 arithmetic: the difference of two stored logits, exact
    c = lse_a - lse_b
    if bool(torch.isinf(dx).any()) or bool(torch.isnan(dx).any()):  # -inf logits: probability 0 adds 0
        kl_ab = (torch.where(pa > 0, pa * dx, 0.0).sum(-1) - c).clamp_min_(0)
        kl_ba = (c - torch.where(pb > 0, pb * dx, 0.0).sum(-1)).clamp_min_(0)
    else:
        kl_ab = (_dot(pa, dx) - c).clamp_min_(0)
        kl_ba = (c - _dot(pb, dx)).clamp_min_(0)
    return kl_ab, kl_ba, lse_a, lse_b, top_a, top_b


def _decode(tokenizer, ids) -> str:
    """Text of token ids; ``<id>`` for ids past the tokenizer (padded embedding matrices)."""
    ids = [int(i) for i in ids]
    if any(i >= len(tokenizer) for i in ids):
        return "".join(f"<{i}>" if i >= len(tokenizer) else tokenizer.decode([i]) for i in ids)
    return tokenizer.decode(ids)


class _Rows:
    """Rows of a flattened (positions, V) tensor at the real positions ``src``, sliced as if they
    were stacked: a slice whose rows are consecutive in the batch is a view (no copy of logits)."""

    def __init__(self, flat: torch.Tensor, src: np.ndarray):
        self.flat, self.src = flat, src

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.flat[int(self.src[key])]
        r0, r1, _ = key.indices(len(self.src))
        if r1 <= r0:
            return self.flat[:0]
        s0 = int(self.src[r0])
        if int(self.src[r1 - 1]) - s0 == r1 - 1 - r0:
            return self.flat[s0 : s0 + (r1 - r0)]
        return self.flat[torch.as_tensor(self.src[r0:r1], device=self.flat.device)]


@dataclass
class _Settings:
    lens_layers: list[int]
    first_k: int
    top: int
    top_tokens: int
    context: int
    chunk_elements: int
    max_length: int | None
    lens: bool


def _diff_batch(sa: _Side, sb: _Side, texts: list[str], start: int, cfg: _Settings, resid: dict | None) -> dict:
    """Everything one batch contributes: per-position arrays, per-prompt lens sums, candidates for
    tokens.csv; adds its residual differences to ``resid`` (float64, running)."""
    ids, mask = _encode(sa, sb, texts, cfg.max_length, start)
    hA, zA = sa.run(ids, mask)
    hB, zB = sb.run(ids, mask)
    if zA.shape[-1] != zB.shape[-1]:
        raise PrismError(f"the models have different vocabularies ({zA.shape[-1]} vs {zB.shape[-1]} logits)")
    m = mask.bool()
    lengths = m.sum(1).tolist()
    bsz, seq = ids.shape
    prompt_row = torch.arange(bsz)[:, None].expand(bsz, seq)[m].numpy()
    pos_row = torch.arange(seq)[None, :].expand(bsz, seq)[m].numpy()
    next_full = torch.full_like(ids, -1)
    next_full[:, :-1] = torch.where(m[:, 1:], ids[:, 1:], -1)
    tok_row = ids[m].numpy()
    next_row = next_full[m].numpy()
    md = m.to(zA.device)
    V = zA.shape[-1]
    src = np.flatnonzero(m.reshape(-1).numpy())  # real positions, prompt-major, in the flattened batch
    rows = len(src)
    la, lb = _Rows(zA.reshape(-1, V), src), _Rows(zB.reshape(-1, V), src)  # views, not copies
    n_layers = sa.n_layers
    lens_inner = [layer for layer in cfg.lens_layers if layer < n_layers] if cfg.lens else []
    if cfg.lens:
        hA_rows, hB_rows = hA[:, md], hB[:, md]  # (L + 1, rows, d)
        del hA, hB
        for side, h, z, label in ((sa, hA_rows, la, "A"), (sb, hB_rows, lb, "B")):
            if not side.checked:  # the first batch: head(h_L) must rebuild the logits
                side.head.check(h[n_layers][:64], z[:64], label)
                side.checked = True
    kl_ab, kl_ba = np.empty(rows), np.empty(rows)
    lp_a, lp_b = np.full(rows, np.nan), np.full(rows, np.nan)
    top1_a, top1_b = np.empty(rows, dtype=np.int64), np.empty(rows, dtype=np.int64)
    per_layer = np.zeros((len(lens_inner), rows, 5))  # kl_ab, kl_ba, kl_a_out, kl_b_out, agree
    lse_a = torch.empty(rows, dtype=torch.float64, device=zA.device)
    lse_b = torch.empty_like(lse_a)
    nxt = torch.as_tensor(next_row, device=zA.device)
    # float64 work in chunks of `chunk` rows (cache-sized on the CPU); heads in blocks of `block` rows
    chunk = max(1, min(rows, cfg.chunk_elements // max(V, 1)))
    block = chunk * max(1, HEAD_ELEMENTS // (chunk * max(V, 1)))
    out_chunk = _rows_per_call(la[0:1], lb[0:1], chunk)
    with _serial(zA.device):  # the float64 work: one thread on the CPU (see _serial)
        for c0 in range(0, rows, out_chunk):
            sl = slice(c0, c0 + out_chunk)
            xa, xb = la[sl], lb[sl]
            ka, kb, lse_a[sl], lse_b[sl], ta, tb = _kl_pair(xa, xb)
            kl_ab[sl], kl_ba[sl] = ka.cpu().numpy(), kb.cpu().numpy()
            top1_a[sl], top1_b[sl] = ta.cpu().numpy(), tb.cpu().numpy()
            has = nxt[sl] >= 0
            idx = nxt[sl].clamp_min(0)[:, None]
            nan = torch.tensor(float("nan"), dtype=torch.float64, device=xa.device)
            lp_a[sl] = torch.where(has, xa.gather(1, idx)[:, 0].double() - lse_a[sl], nan).cpu().numpy()
            lp_b[sl] = torch.where(has, xb.gather(1, idx)[:, 0].double() - lse_b[sl], nan).cpu().numpy()
    for b0 in range(0, rows, block) if lens_inner else ():
        blk = slice(b0, b0 + block)
        for j, layer in enumerate(lens_inner):
            with torch.no_grad():
                za, zb = sa.head(hA_rows[layer, blk]), sb.head(hB_rows[layer, blk])
            step = _rows_per_call(za, zb, chunk)
            with _serial(zA.device):
                for c0 in range(0, za.shape[0], step):
                    sl, g = slice(c0, c0 + step), slice(b0 + c0, b0 + c0 + step)
                    qa, qb = za[sl], zb[sl]
                    k_ab, k_ba, _, _, top_qa, top_qb = _kl_pair(qa, qb)
                    # each model's KL(P_output || lens): the first KL of the pair (output, lens)
                    ka_out, kb_out = _kl_pair(la[g], qa)[0], _kl_pair(lb[g], qb)[0]
                    out = [k_ab, k_ba, ka_out, kb_out, (top_qa == top_qb).double()]
                    per_layer[j, g] = torch.stack(out, -1).cpu().numpy()
            del za, zb
    agree = top1_a == top1_b
    # per prompt, per lens layer: sums in row order (numpy, on the CPU: the same on every rank)
    layer_rows = []
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    layers_out = []
    for layer in cfg.lens_layers if cfg.lens else []:
        if layer < n_layers:
            v = per_layer[lens_inner.index(layer)]
        else:  # the last layer's lens is the output
            v = np.stack([kl_ab, kl_ba, np.zeros(rows), np.zeros(rows), agree.astype(np.float64)], -1)
        layers_out.append(v)
    for i in range(bsz):
        lo, hi = offsets[i], offsets[i + 1]
        layer_rows.append([[_ordered_sum(v[lo:hi, c]) for c in range(5)] for v in layers_out])
    # residual differences (float64), all tokens and the first k positions
    if cfg.lens and resid is not None:
        first = torch.as_tensor(pos_row < cfg.first_k, device=hA_rows.device)
        for layer in range(n_layers + 1):
            diff = hB_rows[layer].double() - hA_rows[layer].double()
            s_all = diff.sum(0)
            s_first = diff[first].sum(0)
            if "all" not in resid:
                resid["all"] = torch.zeros((n_layers + 1, diff.shape[1]), dtype=torch.float64, device=diff.device)
                resid["first"] = torch.zeros_like(resid["all"])
                resid["n_all"], resid["n_first"] = 0, 0
            resid["all"][layer] += s_all
            resid["first"][layer] += s_first
        resid["n_all"] += rows
        resid["n_first"] += int(first.sum())
    # candidates for tokens.csv: this batch's largest KL(A || B)
    order = sorted(range(rows), key=lambda r: (-kl_ab[r], r))[: cfg.top]
    candidates = []
    tok = sa.tokenizer
    for r in order:
        i, t = int(prompt_row[r]), int(pos_row[r])
        row_ids = ids[i, : lengths[i]]
        lo = max(0, t - cfg.context + 1)
        tops = []
        for logits in (la[r], lb[r]):
            lp = torch.log_softmax(logits.double(), -1)
            values, where = lp.topk(min(cfg.top_tokens, V))
            tops.append(" | ".join(f"{_decode(tok, [w])!r} {math.exp(v):.4f}" for v, w in zip(values.tolist(), where)))
        candidates.append(
            {
                "prompt": start + i,
                "position": t,
                "context": ("..." if lo > 0 else "") + _decode(tok, row_ids[lo : t + 1]),
                "token": _decode(tok, [row_ids[t]]),
                "next_token": _decode(tok, [row_ids[t + 1]]) if t + 1 < lengths[i] else "",
                "kl_ab": float(kl_ab[r]),
                "kl_ba": float(kl_ba[r]),
                "top1_agree": bool(agree[r]),
                "logprob_a": float(lp_a[r]),
                "logprob_b": float(lp_b[r]),
                "delta_logprob": float(lp_b[r] - lp_a[r]),
                "a_top": tops[0],
                "b_top": tops[1],
            }
        )
    return {
        "prompt": prompt_row + start,
        "position": pos_row,
        "token_id": tok_row,
        "next_token_id": next_row,
        "kl_ab": kl_ab,
        "kl_ba": kl_ba,
        "top1_a": top1_a,
        "top1_b": top1_b,
        "top1_agree": agree,
        "logprob_a": lp_a,
        "logprob_b": lp_b,
        "delta_logprob": lp_b - lp_a,
        "layer_sums": np.asarray(layer_rows, dtype=np.float64).reshape(bsz, len(layers_out), 5),
        "lengths": np.asarray(lengths),
        "candidates": candidates,
    }


def diff_models(
    model_a,
    model_b,
    tokenizer,
    probes: dict[str, list[str]],
    tokenizer_b=None,
    names: tuple[str, str] = ("A", "B"),
    lens: bool = True,
    lens_layers=None,
    first_k: int = 5,
    top: int = 50,
    top_tokens: int = 5,
    lens_top: int = 10,
    context: int = 12,
    bootstrap: int = 1000,
    seed: int = 0,
    batch_size: int = 1,
    max_length: int | None = 512,
    progress: bool = False,
    chunk_elements: int | None = None,
    distributed_run: bool = False,
) -> ModelDiff:
    """Diff two loaded causal LMs (``model_a``, ``model_b``, same vocabulary and depth) on
    ``probes`` ({name: texts}); see the module docstring for every quantity.

    ``tokenizer`` (and ``tokenizer_b`` when B has its own; they must split every probe alike).
    ``lens``: the logit lens and the activation-difference lens (False: output divergence only, a
    plain forward pass of each model, nothing captured). ``lens_layers``: None or ``"all"`` (every
    layer 0..L), ``"none"``, or a list. ``first_k``: positions of the second difference lens.
    ``top``: positions in tokens.csv per probe set, with ``top_tokens`` next tokens of each model
    and ``context`` tokens of context; ``lens_top``: tokens promoted/suppressed per layer.
    ``bootstrap``/``seed``: the intervals. ``chunk_elements``: float64 elements per working array (default
    :data:`CHUNK_ELEMENTS` on the CPU, :data:`GPU_CHUNK_ELEMENTS` on a GPU).
    ``distributed_run``: share the batches among the ranks of a launcher (``prism diff --nproc``).
    """
    from .. import distributed
    from ..progress import progress_bar

    sa = _Side(model_a, tokenizer, lens)
    sb = _Side(model_b, tokenizer_b if tokenizer_b is not None else tokenizer, lens)
    if sa.vocab and sb.vocab and sa.vocab != sb.vocab:
        raise PrismError(f"the models have different vocabularies ({sa.vocab} vs {sb.vocab} tokens)", names[1])
    if lens and sa.n_layers != sb.n_layers:
        raise PrismError(
            f"models have different layer counts ({sa.n_layers} blocks vs {sb.n_layers}); the lenses compare "
            "matched layers (--no-lens: output divergence only)",
            names[1],
        )
    context_len = getattr(model_a.config, "max_position_embeddings", None)
    if context_len and (max_length is None or max_length > context_len):
        max_length = context_len
    cfg = _Settings(
        _parse_lens_layers(lens_layers, sa.n_layers) if lens else [],
        first_k,
        top,
        top_tokens,
        context,
        chunk_elements or (GPU_CHUNK_ELEMENTS if sa.device.type == "cuda" else CHUNK_ELEMENTS),
        max_length,
        lens,
    )
    probes = {name: list(texts) for name, texts in probes.items()}
    batches = [(name, s) for name, texts in probes.items() for s in range(0, len(texts), batch_size)]

    def work(mine: list) -> dict:
        out, resid = {}, {name: {} for name in probes}
        first_of = {}
        for key in progress_bar(mine, desc="diff", enabled=progress):
            name, s = key
            out[key] = _diff_batch(sa, sb, probes[name][s : s + batch_size], s, cfg, resid[name])
            first_of.setdefault(name, key)
        for name, key in first_of.items():  # this rank's residual sums ride on its first batch of the probe
            r = resid[name]
            if "all" in r:
                out[key]["resid"] = {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in r.items()}
        return out

    sizes = [len(probes[p][s : s + batch_size]) for p, s in batches]
    if distributed_run:
        results, loads = distributed.share(batches, sizes, work)
    else:
        results, loads = work(batches), [sum(sizes)]
    positions, tokens, layers, lens_rows = [], [], [], []
    for name in probes:
        mine = [results[k] for k in batches if k[0] == name]
        cols = {c: np.concatenate([r[c] for r in mine]) for c in POSITION_COLUMNS if c != "probe"}
        positions.append(pd.DataFrame({"probe": name, **cols}, columns=POSITION_COLUMNS))
        cands = sorted(
            (c for r in mine for c in r["candidates"]), key=lambda c: (-c["kl_ab"], c["prompt"], c["position"])
        )[:top]
        tokens.append(
            pd.DataFrame([{"probe": name, "rank": i + 1, **c} for i, c in enumerate(cands)], columns=TOKEN_COLUMNS)
        )
        if lens and cfg.lens_layers:
            sums = np.concatenate([r["layer_sums"] for r in mine])  # (prompts, layers, 5)
            counts = np.concatenate([r["lengths"] for r in mine]).astype(np.float64)
            total = _ordered_sum(counts)
            for j, layer in enumerate(cfg.lens_layers):
                means = [_ordered_sum(sums[:, j, c]) / total for c in range(5)]
                low, high = ratio_interval(sums[:, j, 0], counts, bootstrap, seed)
                layers.append([name, layer, means[0], low, high, *means[1:], int(total)])
        if lens:
            lens_rows += _difference_lens(name, [r.get("resid") for r in mine], sa, sb, first_k, lens_top)
    settings = {
        "lens_layers": cfg.lens_layers,
        "first_k": first_k,
        "max_length": max_length,
        "batch_size": batch_size,
        "lens_value": "head(delta / rms(delta)) - head(0), head = final norm, lm_head, logit transform",
        "kl_to_output": "KL(P_output || P_lens) of each model",
    }
    return ModelDiff(
        names[0],
        names[1],
        pd.concat(positions, ignore_index=True),
        pd.concat(tokens, ignore_index=True),
        pd.DataFrame(layers, columns=LAYER_COLUMNS),
        pd.DataFrame(lens_rows, columns=LENS_COLUMNS),
        settings,
        distributed.run_record(loads, "prompts") if distributed_run else {},
        bootstrap,
        seed,
    )


def _difference_lens(name, parts, sa: _Side, sb: _Side, first_k: int, lens_top: int) -> list[list]:
    """lens.csv rows of one probe set from the ranks' residual sums (added in batch order)."""
    parts = [p for p in parts if p]
    if not parts:
        return []
    total, sums = {}, {}
    for k in ("all", "first"):
        total[f"n_{k}"] = sum(p[f"n_{k}"] for p in parts)
        sums[k] = parts[0][k].clone()
        for p in parts[1:]:  # the ranks' float64 sums, in batch order
            sums[k] += p[k]
    rows = []
    tok = sa.tokenizer
    for key, label in (("all", "all"), ("first", f"first_{first_k}")):
        n = total[f"n_{key}"]
        if not n:
            continue
        for layer in range(sums[key].shape[0]):
            delta = sums[key][layer] / n
            rms = float(delta.pow(2).mean().sqrt())
            for head_name, side in (("a", sa), ("b", sb)):
                values = side.head.shift(delta).cpu()
                k = min(lens_top, len(values))
                for direction, (vals, where) in (
                    ("promoted", values.topk(k)),
                    ("suppressed", values.topk(k, largest=False)),
                ):
                    for rank, (v, w) in enumerate(zip(vals.tolist(), where.tolist()), 1):
                        rows.append([name, label, layer, head_name, direction, rank, w, _decode(tok, [w]), v, rms, n])
    return rows


def model_diff(
    a,
    b,
    probes: dict[str, list[str]],
    n: int | None = 200,
    lens: bool = True,
    lens_layers=None,
    first_k: int = 5,
    top: int = 50,
    top_tokens: int = 5,
    lens_top: int = 10,
    context: int = 12,
    bootstrap: int = 1000,
    seed: int = 0,
    device=None,
    dtype: str | None = None,
    batch_size: int = 1,
    max_length: int | None = 512,
    tokenizer=None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    progress: bool = True,
    config=None,
) -> ModelDiff:
    """Diff checkpoints ``a`` and ``b`` on each probe set (first ``n`` prompts): output divergence,
    logit lens and activation-difference lens (module docstring; options as :func:`diff_models`).

    ``a``/``b``: any checkpoint form ``prism cka`` takes (paths, Hub references, ``BASE+ADAPTER``,
    torch.distributed.checkpoint directories with ``config``). Both models are loaded (side by side);
    under a launcher each rank runs its share of the batches.
    """
    from ..checkpoints.opening import open_checkpoint
    from .model_loader import load_model, load_options

    probes = {name: list(texts)[:n] if n else list(texts) for name, texts in probes.items()}
    for name, texts in probes.items():
        if not texts:
            raise PrismError(f"probe set {name!r} has no prompts")
    names = (str(a), str(b))
    ca, cb = (open_checkpoint(x, allow_pickle, config, tokenizer=True, progress=progress) for x in (a, b))
    conf_a, conf_b = (c.config or {} for c in (ca, cb))
    va, vb = conf_a.get("vocab_size"), conf_b.get("vocab_size")
    if va and vb and va != vb:
        raise PrismError(f"the models have different vocabularies ({va} vs {vb} tokens)", names[1])
    depth_a, depth_b = conf_a.get("num_hidden_layers"), conf_b.get("num_hidden_layers")
    if lens and depth_a and depth_b and depth_a != depth_b:
        raise PrismError(
            f"models have different layer counts ({depth_a} blocks vs {depth_b}); the lenses compare matched "
            "layers (--no-lens: output divergence only)",
            names[1],
        )
    load = load_options(device, dtype, tokenizer, trust_remote_code, allow_pickle, progress)
    ma, ta = load_model(ca, **load)
    mb, tb = load_model(cb, **load)
    return diff_models(
        ma,
        mb,
        ta,
        probes,
        tokenizer_b=tb,
        names=names,
        lens=lens,
        lens_layers=lens_layers,
        first_k=first_k,
        top=top,
        top_tokens=top_tokens,
        lens_top=lens_top,
        context=context,
        bootstrap=bootstrap,
        seed=seed,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
        distributed_run=True,
    )


def output_divergence(
    model_a, model_b, tokenizer, probes, batch_size: int = 8, max_length: int | None = 256
) -> dict[str, dict]:
    """Output divergence only (no lens), for live tracking: {probe: {mean_kl, mean_kl_ba,
    agreement, mean_delta_logprob, n_tokens}} of two loaded models; no intervals."""
    probes = probes if isinstance(probes, dict) else {"probe": list(probes)}
    res = diff_models(
        model_a,
        model_b,
        tokenizer,
        probes,
        lens=False,
        top=0,
        bootstrap=0,
        batch_size=batch_size,
        max_length=max_length,
    )
    keys = ("mean_kl", "mean_kl_ba", "agreement", "mean_delta_logprob", "n_tokens")
    return {p: {k: s[k] for k in keys} for p, s in res.summary().items()}
