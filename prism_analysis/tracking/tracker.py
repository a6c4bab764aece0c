"""Live tracking: PRISM's weight and representation metrics while a run trains, no checkpoints saved.

:class:`UpdateTracker` wraps any PyTorch model; call :meth:`~UpdateTracker.step` after every
optimizer step and :meth:`~UpdateTracker.finish` at the end.
:class:`~prism_analysis.tracking.callback.PrismCallback` does the same inside a
``transformers.Trainer`` and every TRL trainer built on it (SFT, GRPO, DPO)::

    from prism_analysis.tracking import PrismCallback
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
to theta_0 is recorded per layer: the CKA-over-training curve ``cka_curve.csv``. With
``divergence=True`` also the output divergence of the current model from theta_0 on the probe set
(:func:`prism_analysis.representations.model_diff.output_divergence`: mean KL(P_theta0 || P_theta_t) over probe
tokens, top-1 agreement) goes to ``divergence_curve.csv``; it keeps a frozen copy of theta_0's
model (one more copy of the parameters, on their device; not under FSDP2).

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
from pathlib import Path

import pandas as pd
import torch

from ..accumulator import all_reduce, group_stats, part_stats
from ..checkpoints.names import shared_rows
from ..components import Part, component
from ..errors import PrismError
from ..metrics import DEFAULT_THRESHOLD, DEFAULT_THRESHOLDS, changed_column, check_thresholds
from ..outputs import atomic_output_dir, is_output_of, write_atomic, write_json
from ..weights.spectral import Bf16Visibility
from ..weights.trajectory import COLUMNS, Trajectory, by_component, update_rows
from ..weights.update import UpdateStats
from .snapshots import Snapshot, _dist, _is_sharded, _unwrap, named_tensors

#: Command name in the output marker of a tracking directory.
COMMAND = "track"
#: Where a tracked run keeps its reference snapshot(s).
REFERENCES = ("cpu", "device", "disk")
#: Smallest CPU tensor measured by the fused kernel during tracking (the audit's threshold is 2^20,
#: which keeps numba out of a small audit's start-up; inside a training loop it is worth loading:
#: a 26M-parameter model's tracked step takes ~0.13 s instead of ~0.8 s on 2 cores).
FUSED_MIN_NUMEL = 1 << 14


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
    ``divergence``: with a probe set, also the output divergence from theta_0 (module docstring).
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
        divergence: bool = False,
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
        if divergence and (not self.probes or _is_sharded(model)):
            raise PrismError("divergence=True needs a probe set and full (not FSDP2-sharded) parameters")
        self.divergence, self.model0, self.kl_rows = divergence, None, []
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
        if self.divergence:
            self.model0 = self._frozen_theta0()
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
        if self.divergence:
            self.model0 = self._frozen_theta0()
            if (self.out / "divergence_curve.csv").is_file():
                table = pd.read_csv(self.out / "divergence_curve.csv")
                self.kl_rows = [tuple(r) for r in table[table["step"] <= step].itertuples(index=False)]
        self.last_step = step
        self._take_k_references(step)

    def _save_progress(self) -> None:
        """The rows so far and the settings, so that a resumed run continues the curve."""
        if not self.writer:
            return
        write_atomic(self.out / "trajectory.csv", lambda tmp: self.table.to_csv(tmp, index=False))
        if self.probes:
            write_atomic(self.out / "cka_curve.csv", lambda tmp: self.cka_table.to_csv(tmp, index=False))
        if self.divergence:
            table = pd.DataFrame(self.kl_rows, columns=["step", "probe", "mean_kl", "agreement"])
            write_atomic(self.out / "divergence_curve.csv", lambda tmp: table.to_csv(tmp, index=False))
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
            all_reduce([acc for _, acc in groups + vis] + [acc for g in k_groups.values() for _, acc in g])
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
        if self.model0 is not None:
            metrics |= self._divergence(step)
        return metrics

    def _frozen_theta0(self):
        """A frozen copy of the model holding theta_0 (from the snapshot), for the output divergence."""
        import copy

        model0 = copy.deepcopy(_unwrap(self.model)).eval().requires_grad_(False)
        with torch.no_grad():
            for name, t in named_tensors(model0).items():
                t.copy_(self.theta0.get(name, t.device))
        return model0

    def _divergence(self, step: int) -> dict[str, float]:
        """Mean KL(P_theta0 || P_theta_t) and top-1 agreement on every probe set (training mode restored)."""
        from ..representations.model_diff import output_divergence

        model = _unwrap(self.model)
        training = model.training
        try:
            res = output_divergence(self.model0, model, self.tokenizer, self.probes, self.batch_size, self.max_length)
        finally:
            model.train(training)
        metrics = {}
        for name, s in res.items():
            self.kl_rows.append((step, name, s["mean_kl"], s["agreement"]))
            metrics[f"prism/kl/{name}"], metrics[f"prism/top1_agree/{name}"] = s["mean_kl"], s["agreement"]
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
