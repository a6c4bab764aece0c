"""CKA between two checkpoints, layer by layer, on probe sets: PRISM figure 14 and table 14.

For every probe set (a list of prompts) both models are run one prompt per forward pass, every
layer's hidden states are pooled (mean over tokens by default), and the linear CKA of layer l of A
with layer l of B is computed over the n prompts. The table PRISM reports is the minimum over
layers (T14). ``all_pairs`` adds the L x L matrix of every layer of A against every layer of B.

Two estimators, with columns named after the one they belong to (:data:`COLUMNS`):

- ``cka`` -- CKA on all n prompts, the number printed and plotted -- with its 95% delete-one
  jackknife interval ``cka_ci_low``, ``cka_ci_high`` (and ``cka_se``): an interval for that
  estimate, which always contains it (:func:`~prism_analysis.representations.cka.jackknife_cka`).
- ``resample_*`` -- PRISM's protocol, kept because the paper uses it: CKA on ``bootstrap`` random
  subsets of ``resample_size`` prompts (half of them by default; 100 of 200 in the paper), their
  mean, std and percentile interval. That is an estimate of CKA on ``resample_size`` prompts, which
  is biased upward from CKA on n prompts (unrelated representations: 0.39 on 100 vs 0.24 on 200),
  so its interval may exclude ``cka``; ``resample_mean`` is the estimate it belongs to.

With ``pool="tokens"`` every real token is a row, streamed through :class:`StreamingCKA` (both
models run side by side; no interval).

Models are loaded one after the other for ``mean``/``last`` pooling, so only one is in memory.
"""

from __future__ import annotations

import gc
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import distributed
from ..checkpoints.opening import open_checkpoint
from ..errors import PARAM, PrismError
from ..outputs import atomic_output_dir, write_json
from .activations import find_modules, iter_activations
from .cka import StreamingCKA, bootstrap_cka, cka_matrix, jackknife_cka, layerwise_cka, min_rows
from .model_loader import load_model, load_options


def read_probe(path: str | os.PathLike) -> list[str]:
    """Prompts of a probe file: ``.txt`` (one per non-blank line) or ``.jsonl`` (field ``text``)."""
    p = Path(path)
    if not p.is_file():
        raise PrismError("probe file not found", p)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PrismError(f"cannot read probe file ({e})", p) from None
    if p.suffix == ".jsonl":
        texts = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                texts.append(str(json.loads(line)["text"]))
            except (ValueError, KeyError, TypeError):
                raise PrismError(f"line {i} is not a JSON object with a 'text' field", p) from None
    else:
        texts = [line for line in lines if line.strip()]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise PrismError("probe file has no prompts", p)
    return texts


#: The per-layer table: the all-prompts estimate and its jackknife interval, then PRISM's resamples.
COLUMNS = [
    "probe",
    "layer",
    "cka",
    "cka_se",
    "cka_ci_low",
    "cka_ci_high",
    "resample_size",
    "resample_mean",
    "resample_std",
    "resample_ci_low",
    "resample_ci_high",
    "n",
]

#: The version of cka's outputs (cka.csv columns, summary.json keys), in summary.json under
#: ``_meta.schema`` (its top-level keys are the probe sets); see CHANGELOG.md.
SCHEMA = "prism.cka/2"

#: What each group of columns estimates, written to summary.json.
ESTIMATORS = {
    "cka": "linear CKA on all n prompts (debiased if asked): the printed estimate",
    "cka_ci": "95% delete-one jackknife interval of cka: cka -/+ 1.96 cka_se, clipped to CKA's range",
    "resample": "PRISM's protocol: CKA on random subsets of `resample_size` prompts, repeated; mean, std and "
    "percentile interval of those values (they estimate CKA on resample_size prompts, not cka)",
}


@dataclass
class ModelCKA:
    """Result of :func:`model_cka`: tidy per-layer table and optional all-pairs matrices."""

    a: str
    b: str
    pool: str
    layers: pd.DataFrame  # COLUMNS
    matrices: dict[str, pd.DataFrame] = field(default_factory=dict)
    #: ``--measure`` beyond cka: probe + :func:`prism_analysis.representations.similarity.similarity_table` columns
    similarity: pd.DataFrame = field(default_factory=pd.DataFrame)
    run: dict = field(default_factory=dict)  # a distributed run: world_size, prompts_per_rank

    def summary(self) -> dict:
        out = {}
        for probe, df in self.layers.groupby("probe", sort=False):
            i = int(df["cka"].values.argmin())
            out[probe] = {
                "min_cka": float(df["cka"].iloc[i]),
                "min_cka_ci_low": _float_or_none(df["cka_ci_low"].iloc[i]),
                "min_cka_ci_high": _float_or_none(df["cka_ci_high"].iloc[i]),
                "argmin_layer": int(df["layer"].iloc[i]),
                "n": int(df["n"].iloc[0]),
                "layers": [float(v) for v in df["cka"]],
            }
        return out

    def save(self, out: str | os.PathLike) -> None:
        """Write cka.csv, summary.json, the F14 figure (and matrices) atomically."""
        from ..figures import plot_cka_layers, plot_cka_matrix

        with atomic_output_dir(out, "cka", [self.a, self.b]) as tmp:
            self.layers.to_csv(tmp / "cka.csv", index=False)
            meta = {"schema": SCHEMA, "a": self.a, "b": self.b, "pool": self.pool, "estimators": ESTIMATORS}
            extra = {"_similarity": self.similarity_summary()} if len(self.similarity) else {}
            write_json(tmp / "summary.json", {**self.summary(), **extra, "_meta": meta | self.run})
            plot_cka_layers(self.layers, tmp / "cka_by_layer", title=f"{Path(self.a).name} vs {Path(self.b).name}")
            for probe, m in self.matrices.items():
                m.to_csv(tmp / f"cka_matrix_{probe}.csv")
                plot_cka_matrix(m, tmp / f"cka_matrix_{probe}", title=f"{probe}: every layer pair")
            if len(self.similarity):
                from ..figures import plot_similarity

                self.similarity.to_csv(tmp / "similarity.csv", index=False)
                plot_similarity(
                    self.similarity, tmp / "similarity_by_layer", title=f"{Path(self.a).name} vs {Path(self.b).name}"
                )

    def similarity_summary(self) -> dict:
        """{probe: {measure: {layers, null_mean, p_value, corrected}}} of the ``--measure`` suite."""
        from .similarity import MEASURES

        out: dict = {}
        for probe, df in self.similarity.groupby("probe", sort=False):
            out[probe] = {
                m: {key: [float(v) for v in df[m if key == "layers" else f"{m}_{key}"]] for key in SIMILARITY_KEYS}
                for m in MEASURES
                if m in df
            }
        return out

    def format(self) -> str:
        lines = [
            f"A: {self.a}",
            f"B: {self.b}",
            f"pooling: {self.pool}",
            "",
            f"{'probe (T14)':<20}{'n':>6}{'min CKA':>12}  {'95% CI (jackknife)':<22}{'at layer':>8}",
        ]
        for probe, s in self.summary().items():
            low, high = s["min_cka_ci_low"], s["min_cka_ci_high"]
            ci = "" if low is None else f"[{low:.6f}, {high:.6f}]"
            lines.append(f"{probe:<20}{s['n']:>6}{s['min_cka']:>12.6f}  {ci:<22}{s['argmin_layer']:>8}")
        lines.append("(CKA on all n prompts, with its delete-one jackknife interval; PRISM's resamples go to cka.csv)")
        if len(self.similarity):
            lines += ["", *self._format_similarity()]
        return "\n".join(lines)

    def _format_similarity(self) -> list[str]:
        """Per probe and measure: the mean over layers of the score, its null mean, the corrected
        score and the largest p-value (the least significant layer)."""
        from .similarity import MEASURES

        lines = [f"{'probe / measure':<24}{'mean score':>12}{'null mean':>12}{'corrected':>12}{'max p':>10}"]
        for probe, df in self.similarity.groupby("probe", sort=False):
            for m in (m for m in MEASURES if m in df):
                lines.append(
                    f"{probe + ' ' + m:<24}{df[m].mean():>12.4f}{df[f'{m}_null_mean'].mean():>12.4f}"
                    f"{df[f'{m}_corrected'].mean():>12.4f}{df[f'{m}_p_value'].max():>10.3g}"
                )
        lines.append("(means over layers; procrustes is a distance in radians; corrected: 0 chance, 1 perfect)")
        return lines


SIMILARITY_KEYS = ("layers", "null_mean", "p_value", "corrected")


def _float_or_none(v) -> float | None:
    return None if pd.isna(v) else float(v)


def _per_layer(
    probe: str, XA: torch.Tensor, XB: torch.Tensor, bootstrap: int, sample_size: int | None, seed: int, debiased: bool
) -> pd.DataFrame:
    """One probe set's rows of :data:`COLUMNS`: CKA on all prompts with its jackknife interval,
    and PRISM's resamples when ``bootstrap`` > 0."""
    n = XA.shape[1]
    k = sample_size if sample_size is not None else n // 2
    if bootstrap and k < min_rows(debiased):
        raise PrismError(
            f"probe set {probe!r}: bootstrap resamples of {k} prompts are too few for CKA (it needs "
            f"{min_rows(debiased)}); use more prompts, a larger {PARAM}, or no bootstrap",
            param="sample_size",
        )
    if bootstrap and k > n:
        raise PrismError(f"probe set {probe!r}: {PARAM} {k} is more than its {n} prompts", param="sample_size")
    if n > min_rows(debiased):  # leaving one prompt out still leaves enough for CKA
        df = jackknife_cka(XA, XB, debiased=debiased)
    else:
        v = layerwise_cka(XA, XB, debiased=debiased).cpu().numpy()
        df = pd.DataFrame({"layer": np.arange(len(v)), "cka": v})
    if bootstrap and k < n:
        df = df.merge(bootstrap_cka(XA, XB, n_resamples=bootstrap, sample_size=k, seed=seed, debiased=debiased))
    df["probe"] = probe
    df["n"] = n
    return df.reindex(columns=COLUMNS)


def model_cka(
    a,
    b,
    probes: dict[str, list[str]],
    pool: str = "mean",
    n: int | None = 200,
    bootstrap: int = 20,
    sample_size: int | None = None,
    seed: int = 0,
    all_pairs: bool = False,
    debiased: bool = False,
    device=None,
    dtype: str | None = None,
    batch_size: int = 1,
    max_length: int | None = 512,
    tokenizer=None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    progress: bool = True,
    config=None,
    measures=("cka",),
    permutations: int = 100,
    knn_k: int = 10,
    svcca_k: int = 10,
) -> ModelCKA:
    """Per-layer CKA of checkpoints ``a`` and ``b`` on each probe set (first ``n`` prompts).

    ``a``/``b``: any checkpoint form (paths, Hub references, ``BASE+ADAPTER``, sharded training
    checkpoints with ``config``). ``measures`` other than ``("cka",)``: also the calibrated suite of
    :mod:`prism_analysis.representations.similarity` on the same activations (``ModelCKA.similarity``), with a
    permutation null of ``permutations`` shuffles, ``knn_k`` neighbours and ``svcca_k`` SVD directions;
    the resamples are the CKA ones (``bootstrap``, ``sample_size``, ``seed``)."""
    from .similarity import check_measures

    measures = tuple(measures)
    check_measures(measures)
    suite = measures != ("cka",)
    if suite and pool == "tokens":
        raise PrismError(
            f"{PARAM} beyond cka need pooled activations (pool mean or last), not tokens", param="measures"
        )
    probes = {name: list(texts)[:n] if n else list(texts) for name, texts in probes.items()}
    for name, texts in probes.items():
        if len(texts) < min_rows(debiased):
            raise PrismError(
                f"probe set {name!r} has {len(texts)} prompts; {'debiased ' if debiased else ''}CKA needs "
                f"at least {min_rows(debiased)}"
            )
        seen = {}
        for i, t in enumerate(texts):
            if t in seen:
                raise PrismError(
                    f"probe set {name!r} repeats prompt {seen[t] + 1} as prompt {i + 1}; use distinct prompts"
                )
            seen[t] = i
    names = (str(a), str(b))  # as the user named them (a path, a Hub reference, BASE+ADAPTER, ...)
    a, b = (open_checkpoint(x, allow_pickle, config, tokenizer=True, progress=progress) for x in (a, b))
    depth_a, depth_b = ((c.config or {}).get("num_hidden_layers") for c in (a, b))
    if depth_a and depth_b and depth_a != depth_b and not all_pairs:
        raise PrismError(
            f"models have different layer counts ({depth_a} blocks vs {depth_b}); "
            f"use {PARAM} to compare every layer with every layer",
            names[1],
            param="all_pairs",
        )
    load = load_options(device, dtype, tokenizer, trust_remote_code, allow_pickle, progress)
    batches = _batches(probes, batch_size)
    if pool == "tokens":
        return _token_cka(a, b, probes, load, debiased, batch_size, max_length, progress, names, batches)

    def activations(path):  # probe -> (L + 1, n, d): each rank runs its share of the batches, in prompt order
        def run(mine: list) -> dict:
            if not mine:
                return {}
            model, tok = load_model(path, **load)
            out = {}
            for name in probes:
                starts = [s for p, s in mine if p == name]
                texts = [t for s in starts for t in probes[name][s : s + batch_size]]
                pooled = iter_activations(model, tok, texts, pool, batch_size, max_length, progress)
                out.update({(name, s): x.cpu() for s, x in zip(starts, pooled)})
            del model
            gc.collect()
            return out

        pooled, loads = distributed.share(batches, [len(probes[p][s : s + batch_size]) for p, s in batches], run)
        acts = {name: torch.cat([x for (p, _), x in pooled.items() if p == name], dim=1) for name in probes}
        return acts, loads

    acts_a, loads = activations(a)
    acts_b, _ = activations(b)
    la, lb = next(iter(acts_a.values())).shape[0], next(iter(acts_b.values())).shape[0]
    if la != lb and not all_pairs:
        raise PrismError(
            f"models have different layer counts ({la - 1} blocks vs {lb - 1}); "
            "use --all-pairs to compare every layer with every layer",
            names[1],
        )
    tables, matrices, suites = [], {}, []
    settings = dict(k=knn_k, svcca_k=svcca_k, permutations=permutations, bootstrap=bootstrap)
    settings |= dict(sample_size=sample_size, seed=seed, progress=progress)
    for name in probes:
        XA, XB = acts_a[name], acts_b[name]
        try:
            if la == lb:
                tables.append(_per_layer(name, XA, XB, bootstrap, sample_size, seed, debiased))
            if la == lb and suite:
                suites.append(_similarity(name, XA, XB, measures, settings))
            if all_pairs:
                matrices[name] = cka_matrix(XA, XB, debiased=debiased, as_frame=True)
        except ValueError as e:  # e.g. every prompt gives the same representation
            raise PrismError(f"probe set {name!r}: {e}") from None
    layers = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=COLUMNS)
    similarity = pd.concat(suites, ignore_index=True) if suites else pd.DataFrame()
    return ModelCKA(*names, pool, layers, matrices, similarity, distributed.run_record(loads, "prompts"))


def _similarity(probe, XA, XB, measures, settings: dict) -> pd.DataFrame:
    """One probe set's rows of the calibrated similarity suite (probe, then similarity_table's columns)."""
    from .similarity import similarity_table

    df = similarity_table(XA, XB, measures, **settings)
    df.insert(0, "probe", probe)
    return df


def _batches(probes: dict[str, list[str]], batch_size: int) -> list[tuple[str, int]]:
    """Every forward pass of a single-process run, in order: (probe, index of its first prompt)."""
    return [(name, s) for name, texts in probes.items() for s in range(0, len(texts), batch_size)]


def _token_cka(a, b, probes, load, debiased, batch_size, max_length, progress, names, batches) -> ModelCKA:
    """Token-level CKA: one :class:`StreamingCKA` state per batch, all shifted by the first batch's
    means, merged in batch order (so a distributed run adds the same float64 terms in the same order)."""
    ma, ta = load_model(a, **load)
    mb, tb = load_model(b, **load)
    if find_modules(ma)[1] != find_modules(mb)[1]:
        raise PrismError("models have different layer counts; token-level CKA compares matched layers", names[1])

    def pairs(texts):
        xs = iter_activations(ma, ta, texts, "tokens", batch_size, max_length, progress)
        for xa, xb in zip(xs, iter_activations(mb, tb, texts, "tokens", batch_size, max_length, progress)):
            if xa.shape[1] != xb.shape[1]:
                raise PrismError(
                    "the two tokenizers split the probe differently; token-level CKA needs the same tokens"
                )
            yield xa, xb

    def run(mine: list) -> dict:  # (probe, start) -> the StreamingCKA of that batch alone, on the CPU
        out = {}
        for name, texts in probes.items():
            starts = [s for p, s in mine if p == name]
            if not starts:
                continue
            first = StreamingCKA(debiased=debiased).update(*next(pairs(texts[:batch_size])))
            shift = (first.sx, first.sy)
            rest = [s for s in starts if s != 0]
            chunks = pairs([t for s in rest for t in texts[s : s + batch_size]])
            states = {(name, 0): first} if starts[0] == 0 else {}
            states |= {(name, s): StreamingCKA(debiased=debiased, shift=shift).update(*x) for s, x in zip(rest, chunks)}
            for key, st in states.items():
                out[key] = st.to("cpu")
        return out

    states, loads = distributed.share(batches, [len(probes[p][s : s + batch_size]) for p, s in batches], run)
    tables = []
    for name in probes:
        s = StreamingCKA(debiased=debiased)
        for (p, _), st in states.items():
            if p == name:
                s.merge(st)
        try:
            v = s.compute().cpu().numpy()
        except ValueError as e:
            raise PrismError(f"probe set {name!r}: {e}") from None
        tables.append(pd.DataFrame({"probe": name, "layer": np.arange(len(v)), "cka": v, "n": s.n}, columns=COLUMNS))
    return ModelCKA(
        *names, "tokens", pd.concat(tables, ignore_index=True), run=distributed.run_record(loads, "prompts")
    )
