"""Live tracking: PRISM's weight and representation metrics while a run trains, no checkpoints saved.

:class:`UpdateTracker` wraps any PyTorch model; call :meth:`~UpdateTracker.step` after every
optimizer step and :meth:`~UpdateTracker.finish` at the end. :class:`PrismCallback` does the same
inside a ``transformers.Trainer`` and every TRL trainer built on it (SFT, GRPO, DPO)::

    from prism_analysis.tracking.tracker import PrismCallback
    trainer = GRPOTrainer(..., callbacks=[PrismCallback(every=10, out="prism_tracking")])
    trainer.train()

At step 0 the tracker snapshots theta_0. At every tracked step t (``t % every == 0``, and the last
step) it measures, per component and in total, with :class:`~prism_analysis.weights.audit.UpdateStats`
(the same kernels and definitions as ``prism audit`` / ``prism trajectory``):

- ``normalized_l2``: C(t) = ||theta_t - theta_0||_F / ||theta_0||_F (Eq. 1 against theta_0);
- ``fraction_changed_<tau>`` at every threshold of the sweep, and ``fraction_equal`` (bitwise, in
  the parameters' dtype -- the dtype a checkpoint of the run would store);
- ``fraction_visible_bf16`` (float32 parameters only): the share of elements whose bf16 rounding
  differs from theta_0's, i.e. the change a bf16 checkpoint would show;
- for every k of ``k_steps``, the same numbers against theta_{t-k} (prefix ``k<k>_``): the k-step
  update sparsity S_k = 1 - ``k<k>_fraction_changed_<tau>`` (``k<k>_fraction_equal``: bitwise).

The table is ``prism trajectory``'s (columns step, component, metric, value; the same metric
names), so the numbers equal those of ``prism trajectory`` over checkpoints saved at the same steps
(counts exactly; float64 sums up to their summation order). Not tracked: ``cosine_to_final`` and
``share_of_final_changed``, which need theta_T while the run is still at t.

With a probe set (texts and the model's tokenizer), theta_0's mean-pooled activations of the
embedding output and every block are captured once; every ``probe_every`` steps the current
model's are captured (eval mode, no grad; the training mode is restored) and linear CKA (Eq. 4)
to theta_0 is recorded per layer: the CKA-over-training curve ``cka_curve.csv``.

Costs. The reference theta_0 is one extra copy of the parameters, in their dtype: in host RAM
(``reference="cpu"``, default), on the accelerator (``"device"``, when it fits), or in
``OUT/theta_0.safetensors`` read back through a memory map at each tracked step (``"disk"``, for
models larger than RAM). The file is written in every mode when ``out`` is set: a resumed run
restores its theta_0 from it. Each k of ``k_steps`` holds one more copy (where the reference
lives), taken k steps before each tracked step. Statistics run where the parameters are (GPU
when they are there); references are moved there one tensor at a time.

Distributed: under DDP (full parameters on every rank) rank 0 alone measures and writes. Under
FSDP2 (DTensor parameters) each rank measures its local shards and the float64 sums of every group
are all-reduced (sums add, maxima take the max), so the totals are exact; fused q/k/v projections
are then counted as ``attn_qkv`` (a shard cannot be split by head).

Outputs in ``out`` (written by rank 0; the directory is marked as ``prism track``'s):
``trajectory.csv``, ``summary.json`` (``prism trajectory``'s schema plus ``tracking``),
``trajectory.png/pdf`` (F16), and with a probe set ``cka_curve.csv`` and ``cka_curve.png/pdf``;
``tracking.json`` and the references let a resumed run continue the curve.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from transformers import TrainerCallback

from ..accumulator import Accumulator, group_stats, part_stats, state
from ..checkpoints.names import WRAPPER_COMPONENTS, shared_rows, strip_components
from ..components import Part, component
from ..errors import PrismError
from ..metrics import DEFAULT_THRESHOLD, DEFAULT_THRESHOLDS, changed_column, check_thresholds
from ..outputs import atomic_output_dir, is_output_of, write_atomic, write_json
from ..weights.trajectory import COLUMNS, Trajectory, by_component, update_rows
from ..weights.update import UpdateStats

#: Command name in the output marker of a tracking directory.
COMMAND = "track"
#: Where a tracked run keeps its reference snapshot(s).
REFERENCES = ("cpu", "device", "disk")
#: Smallest CPU tensor measured by the fused kernel during tracking (the audit's threshold is 2^20,
#: which keeps numba out of a small audit's start-up; inside a training loop it is worth loading:
#: a 26M-parameter model's tracked step takes ~0.13 s instead of ~0.8 s on 2 cores).
FUSED_MIN_NUMEL = 1 << 14
#: Wrapper prefixes stripped from parameter names: the one list of every reader (torch.compile,
#: FSDP1, activation checkpointing; :mod:`prism_analysis.checkpoints.names`).
WRAPPER_PREFIXES = tuple(f"{c}." for c in WRAPPER_COMPONENTS)


# -- bf16 visibility ------------------------------------------------------------------------------
@dataclass
class Bf16Visibility(Accumulator):
    """Elements whose change a bfloat16 checkpoint would show, ``bf16(b) != bf16(a)`` bitwise
    (:func:`prism_analysis.weights.spectral.fraction_visible_bf16`; float32 tensors only)."""

    numel: int = state(0)
    n_visible: int = state(0)

    def update(self, a: torch.Tensor, b: torch.Tensor) -> Bf16Visibility:
        from ..weights.spectral import fraction_visible_bf16

        visible, numel = fraction_visible_bf16(a, b)
        return self.add({"numel": numel, "n_visible": visible})

    def compute(self) -> float:
        return self.n_visible / self.numel if self.numel else math.nan


# -- parameters -----------------------------------------------------------------------------------
def _unwrap(model):
    """The module whose parameter names are the checkpoint's: DDP's ``.module``, or the model."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def clean_name(name: str) -> str:
    """A parameter name as a checkpoint stores it (wrapper prefixes removed)."""
    return strip_components(name)


def named_tensors(model) -> dict[str, torch.Tensor]:
    """Checkpoint name -> the detached parameter values this rank holds (a DTensor's local shard);
    tied parameters once, as ``named_parameters`` gives them."""
    out = {}
    for n, p in _unwrap(model).named_parameters():
        t = p.detach()
        out[clean_name(n)] = t.to_local() if hasattr(t, "to_local") else t
    return out


def _is_sharded(model) -> bool:
    return any(hasattr(p, "to_local") for p in _unwrap(model).parameters())


def _dist() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(accumulators: list[Accumulator]) -> None:
    """Reduce the states of ``accumulators`` (the same list on every rank) across ranks, in place:
    "sum" states add (float64; counts are exact below 2^53), "max" states take the maximum."""
    from dataclasses import fields

    import torch.distributed as dist

    for reduce, op in (("sum", dist.ReduceOp.SUM), ("max", dist.ReduceOp.MAX)):
        slots = []  # (accumulator, field name, list length or None)
        values = []
        for acc in accumulators:
            for f in fields(acc):
                if f.metadata.get("reduce") != reduce:
                    continue
                v = getattr(acc, f.name)
                slots.append((acc, f.name, len(v) if isinstance(v, list) else None))
                values += v if isinstance(v, list) else [v]
        if not values:
            continue
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=op)
        flat, i = t.tolist(), 0
        for acc, name, n in slots:
            size = 1 if n is None else n
            old, vals = getattr(acc, name), flat[i : i + size]
            i += size
            if isinstance(old[0] if n else old, int):
                vals = [int(v) for v in vals]
            setattr(acc, name, vals[0] if n is None else vals)


# -- reference snapshots --------------------------------------------------------------------------
class Snapshot:
    """A copy of the parameters: in host RAM (``cpu``), on their device (``device``), or only in a
    safetensors file read through a memory map (``disk``)."""

    def __init__(self, where: str, tensors: dict | None, path: Path | None):
        self.where, self.tensors, self.path = where, tensors, path
        self._file = None

    @classmethod
    def take(cls, tensors: dict[str, torch.Tensor], where: str, path: Path | None) -> Snapshot:
        """Copy ``tensors``; with ``path`` also save them there (safetensors, atomically)."""
        if path is not None:
            from safetensors.torch import save_file

            write_atomic(
                path, lambda tmp: save_file({n: t.to("cpu").contiguous() for n, t in tensors.items()}, str(tmp))
            )
        if where == "disk":
            if path is None:
                raise PrismError("reference='disk' needs an output directory (out=...)")
            return cls(where, None, path)
        copy = {n: (t.clone() if where == "device" else t.to("cpu", copy=True)) for n, t in tensors.items()}
        return cls(where, copy, path)

    @classmethod
    def load(cls, path: Path, where: str, device=None) -> Snapshot:
        """A snapshot that :meth:`take` saved."""
        if not path.is_file():
            raise PrismError("the reference snapshot of this tracked run is missing", path)
        if where == "disk":
            return cls(where, None, path)
        from safetensors.torch import load_file

        tensors = load_file(str(path), device="cpu")
        if where == "device" and device is not None:
            tensors = {n: t.to(device) for n, t in tensors.items()}
        return cls(where, tensors, path)

    def get(self, name: str, device) -> torch.Tensor:
        """Tensor ``name`` on ``device``."""
        if self.tensors is not None:
            return self.tensors[name].to(device, non_blocking=True)
        if self._file is None:
            from safetensors import safe_open

            self._file = safe_open(str(self.path), framework="pt")
        return self._file.get_tensor(name).to(device)

    def discard(self) -> None:
        """Free the copy (and delete its file, for a ``disk`` snapshot: this tracker wrote it)."""
        self.tensors, self._file = None, None
        if self.where == "disk" and self.path is not None:
            self.path.unlink(missing_ok=True)

    @property
    def nbytes(self) -> int:
        """Bytes this snapshot holds in memory (0 for ``disk``: the page cache holds what is read)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values()) if self.tensors else 0


# -- the tracker ----------------------------------------------------------------------------------
def _probe_sets(probe) -> dict[str, list[str]]:
    if probe is None:
        return {}
    sets = {str(k): list(v) for k, v in probe.items()} if isinstance(probe, dict) else {"probe": list(probe)}
    for name, texts in sets.items():
        if len(texts) < 4 or not all(isinstance(t, str) for t in texts):
            raise PrismError(f"probe set {name!r} must be a list of at least 4 texts (linear CKA needs rows)")
    return sets


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PrismError(f"{what} must be a positive integer, got {value!r}")
    return value


class UpdateTracker:
    """PRISM's update statistics (and, with a probe set, the CKA curve) of a training run, live.

    Call :meth:`step` after every optimizer step with the number of steps done (it returns at
    once unless ``step`` is tracked or a k-step reference is due) and :meth:`finish` at the end.
    See the module docstring for the metrics, costs and outputs.

    ``model``: the model being trained (plain, DDP-wrapped or FSDP2-sharded). ``every``: track
    steps that are multiples of it. ``k_steps``: the k of the k-step sparsity S_k (empty: none).
    ``probe``: texts (or ``{name: texts}``) for the CKA curve, with ``tokenizer``, every
    ``probe_every`` steps (default ``every``). ``reference``: ``cpu``, ``device`` or ``disk``.
    ``step``: the step the model is at now. ``resume``: continue the run tracked in ``out``
    (theta_0, the tables and the CKA reference come from there; rows after ``step`` are dropped).
    ``total_steps``: the last step, when known, so its k-step references are taken in time.
    """

    def __init__(
        self,
        model,
        every: int = 10,
        thresholds=DEFAULT_THRESHOLDS,
        tau: float = DEFAULT_THRESHOLD,
        out=None,
        k_steps=(1,),
        probe=None,
        probe_every: int | None = None,
        tokenizer=None,
        reference: str = "cpu",
        name: str | None = None,
        step: int = 0,
        resume: bool = False,
        total_steps: int | None = None,
        max_length: int = 256,
        batch_size: int = 8,
    ):
        self.every = _positive_int(every, "every")
        self.k_steps = tuple(sorted({_positive_int(k, "k_steps entry") for k in k_steps}))
        self.probe_every = _positive_int(probe_every or every, "probe_every")
        if reference not in REFERENCES:
            raise PrismError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
        try:
            self.thresholds = check_thresholds(set(thresholds) | {tau})
        except ValueError as e:
            raise PrismError(str(e)) from None
        self.tau = float(tau)
        self.probes = _probe_sets(probe)
        if self.probes and tokenizer is None:
            raise PrismError("a probe set needs the model's tokenizer (tokenizer=...)")
        self.model, self.tokenizer, self.reference = model, tokenizer, reference
        self.max_length, self.batch_size, self.total_steps = max_length, batch_size, total_steps
        self.out = Path(out) if out is not None else None
        self.rank, self.world = _dist()
        self.sharded = _is_sharded(model)
        self.active = self.sharded or self.rank == 0  # under DDP rank 0 alone measures
        self.writer = self.rank == 0 and self.out is not None
        inner = _unwrap(model)
        config = getattr(inner, "config", None)
        # a shard cannot be split by head or expert: sharded runs group tensors by name only
        self.config = None if self.sharded or config is None else config.to_dict()
        self.name = name or Path(str(getattr(config, "_name_or_path", "") or "run")).name or "run"
        self.rows: list[tuple] = []
        self.cka_rows: list[tuple] = []
        self.tracked: list[int] = []
        self.k_refs: dict[tuple[int, int], Snapshot] = {}  # (k, step taken) -> theta_step
        self.resized: dict[str, list[int]] = {}  # a vocabulary resized during the run: name -> [rows then, now]
        self.last_step = step
        self.theta0: Snapshot | None = None
        self.acts0: dict[str, torch.Tensor] = {}
        if resume:
            self._resume(step)
        else:
            self._start(step)

    # -- files ------------------------------------------------------------------------------------
    def _reference_path(self, stem: str) -> Path | None:
        if self.out is None:
            return None
        suffix = f".rank{self.rank}" if self.sharded and self.world > 1 else ""
        return self.out / f"{stem}{suffix}.safetensors"

    def _settings(self) -> dict:
        return {
            "every": self.every,
            "thresholds": list(self.thresholds),
            "tau": self.tau,
            "k_steps": list(self.k_steps),
            "probe_every": self.probe_every if self.probes else None,
            "probes": {k: len(v) for k, v in self.probes.items()},
            "reference": self.reference,
            "world_size": self.world,
            "sharded": self.sharded,
        }

    def _barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def _start(self, step: int) -> None:
        if self.writer:
            with atomic_output_dir(self.out, COMMAND):
                pass  # an empty, marked directory (a previous tracked run's output is replaced)
        self._barrier()
        if not self.active:
            return
        self.theta0 = Snapshot.take(named_tensors(self.model), self.reference, self._reference_path("theta_0"))
        if self.probes:
            self.acts0 = self._activations()
            if self.writer:
                from safetensors.torch import save_file

                acts = {k: v.contiguous() for k, v in self.acts0.items()}
                write_atomic(self.out / "cka_reference.safetensors", lambda tmp: save_file(acts, str(tmp)))
        self.step(step)

    def _resume(self, step: int) -> None:
        if self.out is None or not is_output_of(self.out, COMMAND) or not (self.out / "tracking.json").is_file():
            raise PrismError(
                "cannot resume tracking: no tracked run here (its theta_0 is unknown); "
                "track a resumed run into the directory of its first part",
                self.out,
            )
        saved = json.loads((self.out / "tracking.json").read_text())
        for key in ("every", "thresholds", "k_steps"):
            if saved["settings"][key] != self._settings()[key]:
                raise PrismError(
                    f"cannot resume tracking with {key}={self._settings()[key]}: the run was tracked with "
                    f"{saved['settings'][key]}",
                    self.out / "tracking.json",
                )
        self.name = saved.get("name", self.name)
        self.tracked = [s for s in saved["tracked"] if s <= step]
        if (self.out / "trajectory.csv").is_file():
            table = pd.read_csv(self.out / "trajectory.csv")
            self.rows = [tuple(r) for r in table[table["step"] <= step].itertuples(index=False)]
        if self.probes and (self.out / "cka_curve.csv").is_file():
            table = pd.read_csv(self.out / "cka_curve.csv")
            self.cka_rows = [tuple(r) for r in table[table["step"] <= step].itertuples(index=False)]
        if not self.active:
            return
        device = next(_unwrap(self.model).parameters()).device
        self.theta0 = Snapshot.load(self._reference_path("theta_0"), self.reference, device)
        if self.probes:
            from safetensors.torch import load_file

            self.acts0 = load_file(str(self.out / "cka_reference.safetensors"))
        self.last_step = step
        self._take_k_references(step)

    def _save_progress(self) -> None:
        """The rows so far and the settings, so that a resumed run continues the curve."""
        if not self.writer:
            return
        write_atomic(self.out / "trajectory.csv", lambda tmp: self.table.to_csv(tmp, index=False))
        if self.probes:
            write_atomic(self.out / "cka_curve.csv", lambda tmp: self.cka_table.to_csv(tmp, index=False))
        write_json(
            self.out / "tracking.json",
            {"name": self.name, "tracked": self.tracked, "settings": self._settings()},
        )

    # -- tables -----------------------------------------------------------------------------------
    @property
    def table(self) -> pd.DataFrame:
        """The tidy trajectory table so far (``prism trajectory``'s columns)."""
        return pd.DataFrame(self.rows, columns=COLUMNS)

    @property
    def cka_table(self) -> pd.DataFrame:
        """The CKA curve so far: step, probe, layer (0 = embedding output), cka (to theta_0)."""
        return pd.DataFrame(self.cka_rows, columns=["step", "probe", "layer", "cka"])

    # -- measuring --------------------------------------------------------------------------------
    def step(self, step: int) -> dict[str, float]:
        """Call after the optimizer step that brought the run to ``step``; returns the metrics
        measured now (``prism/...`` keys; empty when ``step`` is not tracked)."""
        self.last_step = step
        if not self.active:
            return {}
        metrics = {}
        if step % self.every == 0 and step not in self.tracked:
            metrics |= self._measure(step)
        if self.probes and step % self.probe_every == 0 and not any(r[0] == step for r in self.cka_rows):
            metrics |= self._probe(step)
        self._take_k_references(step)
        if metrics:
            self._save_progress()
        return metrics

    def _take_k_references(self, step: int) -> None:
        """Keep theta_step for every k with step + k a tracked step (or the announced last step);
        drop those whose step has passed. A k holds ceil(k / every) copies at most."""
        for k, s in list(self.k_refs):
            if s + k <= step:
                self.k_refs.pop((k, s)).discard()
        for k in self.k_steps:
            target = step + k
            if target % self.every == 0 or target == self.total_steps:
                path = self._reference_path(f"theta_k{k}_{step}") if self.reference == "disk" else None
                self.k_refs[(k, step)] = Snapshot.take(named_tensors(self.model), self.reference, path)

    def _parts(self, name: str, tensors, make) -> list:
        if self.sharded:
            return [(Part(component(name)), make().update(*tensors))]
        return part_stats(name, tensors, self.config, make)

    def _measure(self, step: int) -> dict[str, float]:
        def make():
            return UpdateStats(self.thresholds, fused_min_numel=FUSED_MIN_NUMEL)

        current = named_tensors(self.model)
        refs = {k: snap for (k, s), snap in self.k_refs.items() if s == step - k}
        update, visible = {}, {}
        k_update = {k: {} for k in refs}
        for name, now in current.items():
            a, t = self._shared_rows(name, self.theta0.get(name, now.device), now)
            update[name] = self._parts(name, (a, t), make)
            if t.dtype == torch.float32:
                visible[name] = self._parts(name, (a, t), Bf16Visibility)
            for k, snap in refs.items():
                k_update[k][name] = self._parts(name, self._shared_rows(name, snap.get(name, t.device), now), make)
            del a, t
        groups = by_component(group_stats(update, make))
        vis = by_component(group_stats(visible, Bf16Visibility)) if visible else []
        k_groups = {k: by_component(group_stats(v, make)) for k, v in k_update.items()}
        if self.sharded and self.world > 1:
            _all_reduce([acc for _, acc in groups + vis] + [acc for g in k_groups.values() for _, acc in g])
        rows = []
        for comp, acc in groups:
            rows += update_rows(step, comp, acc)
        rows += [(step, comp, "fraction_visible_bf16", acc.compute()) for comp, acc in vis]
        for k, g in k_groups.items():
            for comp, acc in g:
                rows += update_rows(step, comp, acc, prefix=f"k{k}_")
        self.rows += rows
        self.tracked.append(step)
        return self._log_keys(rows, list(k_groups))

    def _shared_rows(self, name: str, ref: torch.Tensor, now: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``ref`` and ``now`` cut to the rows they share when the vocabulary was resized since ``ref``
        was taken (an embedding or head, :func:`prism_analysis.checkpoints.names.shared_rows`),
        recorded in ``resized``; any other change of shape is an error."""
        if ref.shape == now.shape:
            return ref, now
        r = shared_rows(name, tuple(ref.shape), tuple(now.shape))
        if r is None:
            raise PrismError(f"parameter {name!r} changed shape from {list(ref.shape)} to {list(now.shape)} in the run")
        self.resized[name] = [ref.shape[0], now.shape[0]]
        return ref[:r], now[:r]

    def _log_keys(self, rows, ks) -> dict[str, float]:
        """What goes into the trainer's logs (the table has the rest): in total normalized L2, the
        fraction changed at tau, bitwise equal and bf16-visible, and S_k = 1 - k-step fraction
        changed at tau; per component normalized L2 and the fraction changed at tau."""
        key = changed_column(self.tau)
        total = ("normalized_l2", key, "fraction_equal", "fraction_visible_bf16", *(f"k{k}_{key}" for k in ks))
        metrics = {}
        for _, comp, metric, value in rows:
            if comp == "total" and metric in total:
                metrics[f"prism/{metric}"] = value
            elif metric in ("normalized_l2", key):
                metrics[f"prism/{comp}/{metric}"] = value
        for k in ks:
            metrics[f"prism/sparsity_k{k}"] = 1.0 - metrics.pop(f"prism/k{k}_{key}")
        return {k: v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)}

    def _activations(self) -> dict[str, torch.Tensor]:
        """Mean-pooled activations of every probe set, (L + 1, n, d) float32 on the CPU; the
        model is put in eval mode under no_grad and its training mode restored."""
        from ..representations.activations import collect_activations

        model = _unwrap(self.model)
        training = model.training
        try:
            with torch.no_grad():
                return {
                    name: collect_activations(
                        model, self.tokenizer, texts, "mean", self.batch_size, self.max_length
                    ).cpu()
                    for name, texts in self.probes.items()
                }
        finally:
            model.train(training)

    def _probe(self, step: int) -> dict[str, float]:
        from ..representations.cka import layerwise_cka

        metrics = {}
        for name, acts in self._activations().items():
            values = layerwise_cka(self.acts0[name], acts).tolist()
            self.cka_rows += [(step, name, layer, v) for layer, v in enumerate(values)]
            metrics[f"prism/cka/{name}/min"] = min(values)
            metrics |= {f"prism/cka/{name}/layer_{layer}": v for layer, v in enumerate(values)}
        return metrics

    # -- the end ----------------------------------------------------------------------------------
    def finish(self, step: int | None = None) -> Trajectory | None:
        """Measure the last step (if not yet tracked) and write the outputs; returns the trajectory
        (None on ranks that do not measure)."""
        step = self.last_step if step is None else step
        if not self.active:
            self._barrier()
            return None
        if step not in self.tracked:
            self._measure(step)
        if self.probes and not any(r[0] == step for r in self.cka_rows):
            self._probe(step)
        self._save_progress()
        trajectory = Trajectory(self.name, sorted(self.tracked), [], self.tau, self.table)
        trajectory.aligned = {"names": {}, "folded": {}, "resized": self._resized_record()}
        if self.writer:
            self._write_outputs(trajectory)
        for snap in self.k_refs.values():  # references for steps the run will not reach
            snap.discard()
        self.k_refs.clear()
        self._barrier()
        return trajectory

    def _resized_record(self) -> list[dict]:
        return [
            {"name": n, "component": component(n), "rows": {"reference": r0, "now": r1}, "rows_compared": min(r0, r1)}
            for n, (r0, r1) in self.resized.items()
        ]

    def _write_outputs(self, trajectory: Trajectory) -> None:
        from ..figures import plot_cka_curve, plot_trajectory

        summary = trajectory.summary()
        del summary["paths"]
        settings = self._settings()
        size = sum(t.numel() * t.element_size() for t in named_tensors(self.model).values())
        settings["reference_bytes"] = {  # host or device memory held for the references, at most
            "theta_0": size if self.reference != "disk" else 0,
            **{f"k{k}": size * -(-k // self.every) if self.reference != "disk" else 0 for k in self.k_steps},
        }
        write_json(self.out / "summary.json", summary | {"tracking": settings})
        _figure(self.out / "trajectory", lambda stem: plot_trajectory(self.table, stem, tau=self.tau, label=self.name))
        if self.probes:
            _figure(self.out / "cka_curve", lambda stem: plot_cka_curve(self.cka_table, stem, title=self.name))


def read_tracking(out, name: str | None = None) -> Trajectory:
    """The :class:`~prism_analysis.weights.trajectory.Trajectory` a tracked run wrote to ``out``
    (``trajectory.csv`` and ``tracking.json``), e.g. to save or plot it beside offline ones."""
    out = Path(out)
    try:
        saved = json.loads((out / "tracking.json").read_text())
        table = pd.read_csv(out / "trajectory.csv")
    except (OSError, ValueError) as e:
        raise PrismError(f"not a tracked run ({e.__class__.__name__}: {e})", out) from None
    steps = sorted(int(s) for s in table["step"].unique())
    return Trajectory(name or saved.get("name", out.name), steps, [], saved["settings"]["tau"], table, str(out))


def _figure(stem: Path, draw) -> None:
    """Draw a figure's .png and .pdf under temporary names, then rename them into place."""
    tmp = stem.with_name(f".{stem.name}.tmp")
    draw(tmp)
    for suffix in (".png", ".pdf"):
        tmp.with_suffix(suffix).replace(stem.with_suffix(suffix))


# -- transformers / TRL ---------------------------------------------------------------------------
class PrismCallback(TrainerCallback):
    """:class:`UpdateTracker` as a ``transformers`` callback: works with ``Trainer`` and the TRL
    trainers built on it (``SFTTrainer``, ``GRPOTrainer``, ``DPOTrainer``).

    ``on_train_begin`` snapshots theta_0 (or, when the Trainer resumes from a checkpoint, restores
    it from ``out``); ``on_step_end`` (which sees ``state.global_step`` after the optimizer step, the
    number a ``checkpoint-N`` directory gets) measures; the metrics go into the Trainer's next log
    (keys under ``prism/``, so ``report_to`` backends plot them; a tracked step asks the Trainer to
    log); ``on_train_end`` writes ``out``. Options are :class:`UpdateTracker`'s; the tokenizer
    for a probe set defaults to the trainer's ``processing_class``.
    """

    def __init__(self, every: int = 10, out="prism_tracking", **options):
        self.every, self.out, self.options = every, out, options
        self.tracker: UpdateTracker | None = None
        self.pending: dict[str, float] = {}

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        _run_before_reporters(self)
        options = dict(self.options)
        if options.get("probe") is not None and options.get("tokenizer") is None:
            options["tokenizer"] = getattr(processing_class, "tokenizer", processing_class)
        resume = state.global_step > 0
        self.tracker = UpdateTracker(
            model,
            every=self.every,
            out=self.out,
            step=state.global_step,
            resume=resume,
            total_steps=state.max_steps or None,
            **options,
        )

    def on_step_end(self, args, state, control, **kwargs):
        metrics = self.tracker.step(state.global_step)
        if metrics:
            self.pending |= metrics
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.pending and logs is not None:
            logs.update(self.pending)
            if state.log_history:
                state.log_history[-1].update(self.pending)
            self.pending = {}

    def on_train_end(self, args, state, control, **kwargs):
        self.tracker.finish(state.global_step)


def _run_before_reporters(callback) -> None:
    """Move ``callback`` to the front of the Trainer's callback list, so that the ``prism/`` keys it
    adds to the logs reach the ``report_to`` callbacks (which the Trainer puts before the user's).
    The caller of an event method is ``CallbackHandler.call_event``, whose ``self`` is that list's owner."""
    from transformers.trainer_callback import CallbackHandler

    handler = sys._getframe(2).f_locals.get("self")
    if isinstance(handler, CallbackHandler) and callback in handler.callbacks:
        handler.callbacks.remove(callback)
        handler.callbacks.insert(0, callback)
