"""The miniature PRISM study, end to end: ``prism reproduce --preset smoke|tiny|small``.

1. pretrain a base model (tokenizer included);
2. mid-train it on three mixes: math, math+code (MC), math+code+science (MCS);
3. RL (GRPO) from the base and from each mid-trained model with the ``math`` RL mix, and from MCS
   also with the ``balanced`` mix (PRISM's recipe in proportion: learning rate 1/100 of
   mid-training's, linear decay, KL to the start, format-gated 0/1 reward);
4. evaluate every endpoint on held-out problems (greedy; per-problem scores, so every accuracy
   gets a Wilson interval and every comparison a paired bootstrap, :mod:`prism_train.intervals`);
5. analyse with prism_analysis: audits (T12, T22, T23, F11), RL trajectories (F16), update
   comparisons (F12/T13, F26), CKA on three probe sets (F14/T14), interpolation landscape (F13);
6. write RUN/figures (PNG+PDF), RUN/tables (CSV+markdown), RUN/report.md, RUN/summary.json.

Checkpoints are saved in bf16, as PRISM's models are (fp32 master weights stay in the training
state, so resuming is exact). Pretraining runs alone with one thread per worker; then independent
jobs run as parallel one-thread processes (:mod:`prism_train.schedule`) in one batch: the three
mid-trainings, the RL runs (each starts when its starting model is ready), the nine evaluations
(each starts when its model is) and the two analyses (when all training is done).

Stages are cached: each writes RUN/stages/<stage>.json with its config hash when it completes, and
is skipped when that record matches; training stages resume from their last complete checkpoint.
``force=[stage, ...]`` reruns stages. A RUN directory made with another configuration is refused
unless forced.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from prism_analysis.checkpoints.run_manifest import last_checkpoint
from prism_analysis.errors import PrismError, from_os_error
from prism_analysis.outputs import write_json

from ..run_dir import LOCK, DirectoryLock, config_hash
from .design import MIDS, MODELS, PRESETS, RLS, STAGES, Preset

#: Stages whose jobs run as one batch on the workers (:meth:`Study._run_pooled`).
POOLED = ("mid", "rl", "eval", "analyse")

#: What a study writes in its directory (all that ``--force all`` may delete).
OWNED = ("models", "eval", "analysis", "figures", "tables", "stages", "report.md", "summary.json", "study.json")


class Study:
    def __init__(
        self,
        out: str | Path,
        preset: str = "tiny",
        family: str | None = None,
        force: list[str] | None = None,
        progress: bool = True,
        log=print,
    ):
        if preset not in PRESETS:
            raise PrismError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        from ..models import FAMILIES

        if family is not None and family not in FAMILIES:
            raise PrismError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
        self.p = Preset(**{**asdict(PRESETS[preset]), **({"family": family} if family else {})})
        self.preset = preset
        self.out = Path(out)
        self.force = set(force or [])
        unknown = self.force - set(STAGES) - {"all"}
        if unknown:
            raise PrismError(f"unknown stage(s) {sorted(unknown)}; stages: {', '.join(STAGES)}")
        self.progress = progress
        self.log = log
        self.config = {"preset": preset, **asdict(self.p)}
        self.t0 = time.perf_counter()

    # -- bookkeeping ------------------------------------------------------------------------
    def _check_owner(self) -> None:
        """Take the study's lock and check the directory is a study of this configuration (or new).

        ``--force all`` on a study of another configuration removes what that study wrote (the
        entries of :data:`OWNED`), nothing else.
        """
        rec = self.out / "study.json"
        if self.out.exists() and not self.out.is_dir():
            raise PrismError("exists and is not a directory; name a directory for the study", self.out)
        if rec.is_file():
            try:
                old = json.loads(rec.read_text())
                old_hash, old_preset = old["config_hash"], old.get("config", {}).get("preset")
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                raise PrismError("study.json here is unreadable; pick another directory", rec) from None
            if old_hash != config_hash(self.config) and "all" not in self.force:
                raise PrismError(
                    "this run directory belongs to a different configuration "
                    f"(preset {old_preset}); pass --force all to delete that study's files, or pick another",
                    self.out,
                )
        elif self.out.exists() and any(p for p in self.out.iterdir() if p.name != LOCK):
            raise PrismError("output directory is not empty and holds no study; pick another", self.out)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise from_os_error(e, "cannot write the run directory", self.out) from None
        self.lock = DirectoryLock(self.out / LOCK, "reproduce")
        if rec.is_file() and json.loads(rec.read_text())["config_hash"] != config_hash(self.config):
            for name in OWNED:
                p = self.out / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        try:
            (self.out / "stages").mkdir(exist_ok=True)
            write_json(rec, {"config": self.config, "config_hash": config_hash(self.config)})
        except OSError as e:
            raise from_os_error(e, "cannot write the run directory", self.out) from None

    def _done(self, stage: str) -> bool:
        f = self.out / "stages" / f"{stage}.json"
        return (
            stage not in self.force
            and "all" not in self.force
            and f.is_file()
            and json.loads(f.read_text()).get("config_hash") == config_hash(self.config)
        )

    def _mark(self, stage: str, info: dict | None = None) -> None:
        write_json(
            self.out / "stages" / f"{stage}.json",
            {
                "config_hash": config_hash(self.config),
                "time": time.perf_counter() - self.t0,  # since this run started
                "finished": time.time(),  # comparable across runs (a forced stage reruns later)
                **(info or {}),
            },
        )

    def _stage(self, i: int, name: str) -> None:
        elapsed = time.perf_counter() - self.t0
        self.log(f"[{i}/{len(STAGES)}] {name}  (elapsed {elapsed:.0f}s)")

    def model_path(self, name: str) -> Path:
        """Model ``name``'s last saved checkpoint (an error naming its run directory if none)."""
        return last_checkpoint(self.out / "models" / name)

    # -- stages -----------------------------------------------------------------------------
    def run(self) -> dict:
        self._check_owner()
        self._ran: set[str] = set()  # stages already run alongside an earlier one
        import torch

        threads = torch.get_num_threads()  # the caller's, given back at the end
        if self.p.workers > 1:
            # every job is one thread, and so is this process's own work (analysis, report) while
            # jobs may run beside it; pretraining runs alone and takes the workers' threads
            torch.set_num_threads(1)
        try:
            for i, stage in enumerate(STAGES, 1):
                if stage in self._ran:
                    self.log(f"[{i}/{len(STAGES)}] {stage}: ran alongside an earlier stage")
                    continue
                if stage in self.force or "all" in self.force:
                    self._clear(stage)
                if self._done(stage):
                    self.log(f"[{i}/{len(STAGES)}] {stage}: cached")
                    continue
                self._stage(i, stage)
                t = time.perf_counter()
                info = getattr(self, f"_run_{stage}")() or {}
                self._mark(stage, {"seconds": time.perf_counter() - t, **info})
        finally:
            self.lock.release()
            torch.set_num_threads(threads)
        self.log(f"done in {time.perf_counter() - self.t0:.0f}s -> {self.out}/report.md")
        return json.loads((self.out / "summary.json").read_text())

    def _clear(self, stage: str) -> None:
        dirs = {
            "pretrain": ["models/base"],
            "mid": [f"models/{m}" for m in MIDS],
            "rl": [f"models/{r}" for r in RLS],
            "eval": ["eval"],
            "analyse": ["analysis"],
            "report": ["figures", "tables"],
        }[stage]
        for d in dirs:
            shutil.rmtree(self.out / d, ignore_errors=True)
        (self.out / "stages" / f"{stage}.json").unlink(missing_ok=True)

    def _train_cfg(self, **kw):
        from ..lm import TrainConfig

        p = self.p
        return TrainConfig(
            init=p.family,
            model=p.model,
            batch_size=p.batch_size,
            seq_len=p.seq_len,
            seed=p.seed,
            save_dtype=p.save_dtype,
            **kw,
        )

    def _run_pretrain(self) -> None:
        """Pretraining runs alone, so it takes one thread per worker: at the tiny preset's size two
        threads train 1.6x faster than one (0.19 vs 0.31 s a step, measured on 2 cores), where two
        one-thread jobs side by side are what the later stages gain from."""
        from ..schedule import call_with_threads

        if self.p.workers > 1:
            call_with_threads(self._pretrain, {}, self.p.workers)
        else:  # with one worker, everything runs with the caller's threads
            self._pretrain()

    def _pretrain(self) -> None:
        from ..lm import train

        p = self.p
        train(
            self._train_cfg(
                phase="pretrain",
                mix="pretrain",
                steps=p.pretrain_steps,
                lr=p.pretrain_lr,
                save_every=max(1, p.pretrain_steps // 2),
            ),
            self.out / "models" / "base",
            progress=self.progress,
            log=self.log,
        )

    def _mid_jobs(self) -> list:
        from ..lm import train
        from ..schedule import Job

        p = self.p
        base = str(self.model_path("base"))
        jobs = []
        for name, mix in MIDS.items():
            cfg = self._train_cfg(
                phase="mid",
                mix=mix,
                steps=p.mid_steps,
                lr=p.mid_lr,
                save_every=max(1, p.mid_steps // 4),
                warmup=max(1, min(30, p.mid_steps // 10)),
            )
            cfg.init = base
            jobs.append(Job(name, train, {"cfg": cfg, "out": self.out / "models" / name, "progress": False}))
        return jobs

    def _rl_jobs(self, mid_names: set[str]) -> list:
        """The RL runs; one whose start is in ``mid_names`` (trained in the same batch of jobs)
        waits for it and starts from its last step."""
        from ..rl import RLConfig, rl_train
        from ..run_dir import step_name
        from ..schedule import Job

        p = self.p
        jobs = []
        for name, (start, mix) in RLS.items():
            if start in mid_names:
                init = self.out / "models" / start / step_name(p.mid_steps)
            else:
                init = self.model_path(start)
            cfg = RLConfig(
                init=str(init),
                mix=mix,
                steps=p.rl_steps,
                save_every=p.rl_save_every,
                track_every=p.rl_track_every,
                group_size=p.group_size,
                prompts_per_step=p.prompts_per_step,
                max_new_tokens=p.max_new_tokens,
                lr=p.rl_lr,
                kl_beta=p.rl_kl_beta,
                eval_every=p.rl_eval_every,
                eval_n=p.eval_n,
                seed=p.seed,
                save_dtype=p.save_dtype,
            )
            after = (start,) if start in mid_names else ()
            jobs.append(Job(name, rl_train, {"cfg": cfg, "out": self.out / "models" / name, "progress": False}, after))
        return jobs

    def _eval_jobs(self, trained: set[str]) -> list:
        """One evaluation per model; one whose model is trained in the same batch of jobs
        (``trained``) waits for it."""
        from ..schedule import Job

        (self.out / "eval").mkdir(exist_ok=True)
        return [
            Job(
                f"eval:{name}",
                evaluate_run,
                {"run": self.out / "models" / name, "out": self.out / "eval" / f"{name}.json", "n": self.p.eval_n},
                (name,) if name in trained else (),
            )
            for name in MODELS
        ]

    def _run_pooled(self, first: str) -> dict:
        """Stage ``first`` and the stages of :data:`POOLED` after it that are due, as one batch of
        jobs on the workers: each RL run starts as soon as its starting model is trained (RL from
        the base at once), each evaluation as soon as its model is, the two analysis jobs when all
        training is done. One batch keeps both workers busy to the end (the last mid-training
        does not wait alone, the analyses run beside the last evaluations) and starts the worker
        processes, and their imports, once. The later stages are recorded here; ``first`` by
        :meth:`run`."""
        from ..schedule import run_jobs

        stages = [first] + [s for s in POOLED[POOLED.index(first) + 1 :] if not self._done(s)]
        for s in stages[1:]:
            if s in self.force or "all" in self.force:
                self._clear(s)  # otherwise an interrupted forced run of this configuration resumes
        jobs = {s: [] for s in POOLED}
        if "mid" in stages:
            jobs["mid"] = self._mid_jobs()
        if "rl" in stages:
            jobs["rl"] = self._rl_jobs(set(MIDS) if "mid" in stages else set())
        trained = tuple(j.name for j in jobs["mid"] + jobs["rl"])
        if "eval" in stages:
            jobs["eval"] = self._eval_jobs(set(trained))
        if "analyse" in stages:
            from .analysis import analysis_jobs

            jobs["analyse"] = analysis_jobs(self.out / "models", self.out / "analysis", self.p, after=trained)
        t = time.perf_counter()
        times = run_jobs([j for s in stages for j in jobs[s]], workers=self.p.workers, log=self.log)
        seconds = time.perf_counter() - t

        def own(stage):
            return {j.name.removeprefix("eval:"): times[j.name] for j in jobs[stage]}

        for s in stages[1:]:
            self._mark(s, {"seconds": seconds, "jobs": own(s)})
            self._ran.add(s)
        return {"jobs": own(first)}

    def _run_mid(self) -> dict:
        return self._run_pooled("mid")

    def _run_rl(self) -> dict:
        return self._run_pooled("rl")

    def _run_eval(self) -> dict:
        return self._run_pooled("eval")

    def _run_analyse(self) -> dict:
        return self._run_pooled("analyse")

    def _run_report(self) -> None:
        from .report import report

        report(self.out)


def evaluate_run(run, out, n: int) -> None:
    """Evaluate the last checkpoint of the run directory ``run`` (see :func:`evaluate_checkpoint`)."""
    evaluate_checkpoint(last_checkpoint(run), out, n)


def evaluate_checkpoint(path, out, n: int) -> None:
    """Evaluate the checkpoint ``path`` on ``n`` problems per benchmark into the JSON file ``out``."""
    from prism_analysis.representations.model_loader import load_model

    from ..evaluate import evaluate

    model, tok = load_model(path, device="cpu", dtype="float32", progress=False)  # bf16 weights, fp32 compute
    write_json(out, {"path": str(path), **evaluate(model, tok, n=n)})


def reproduce(out, preset: str = "tiny", family: str | None = None, force=None, progress=True, log=print) -> dict:
    return Study(out, preset, family, force, progress, log).run()
