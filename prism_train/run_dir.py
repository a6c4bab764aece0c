"""A training run's directory: lock, manifest, resume point and atomic step checkpoints.

Layout (shared by ``prism train`` and ``prism rl``)::

    OUT/trajectory.json        {"phase", "parent", "mix", "config", "config_hash",
                                "steps": [{"step", "path", "tokens", "loss", "lr", "time", ...}], ...}
    OUT/step_000000/           config.json, model.safetensors, tokenizer files,
    OUT/step_000100/           training_state.pt (only in the newest step: optimizer, RNG, ...)
    OUT/.prism-run.lock        held (an OS file lock) while a process trains here

:class:`RunDir` is the one place that opens such a directory:

- it takes an exclusive lock (``fcntl.flock``; it dies with the process, so ``kill -9`` never
  leaves a stale lock) and refuses a second writer with one line naming the holder;
- it refuses a directory that is not a run of this toolkit, or a run of another configuration
  (``force`` resets only a run of this toolkit -- its manifest says so -- and deletes only what that
  run wrote), and an ``--out`` that is or holds the model it starts from;
- it finds the resume point (the newest step with a training state) and cleans the temporaries a
  killed save left (``.step_*.tmp-*``);
- :meth:`RunDir.save_step` writes a step under a temporary name, renames it when complete and
  rewrites the manifest atomically after it, so a run killed at any moment lists complete steps only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch

from prism_analysis.checkpoints.run_manifest import MANIFEST, read_manifest
from prism_analysis.errors import PrismError, from_os_error
from prism_analysis.outputs import recover_leftovers, staged_dir, write_json

STATE = "training_state.pt"
LOCK = ".prism-run.lock"


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


class DirectoryLock:
    """An exclusive OS file lock (``fcntl.flock``) on ``path``, taken on creation.

    The OS drops it when the process ends, however it ends, so a ``kill -9`` never leaves a stale
    lock. A second holder is refused with one line naming the first (read from the lock file).
    """

    def __init__(self, path: Path, command: str):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise from_os_error(e, "cannot create the lock", path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise PrismError(
                f"another run is writing here ({holder}); wait for it or pick another --out", path.parent
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, prism {command}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class RunDir:
    """An opened run directory (see the module docstring). Use as a context manager."""

    def __init__(
        self,
        out: str | os.PathLike,
        config: dict,
        force: bool = False,
        inputs=(),
        command: str = "train",
        writer: bool = True,
    ):
        if not str(out).strip():
            raise PrismError("--out must not be empty")
        self.out = Path(out)
        self.config = config
        self.hash = config_hash(config)
        self._lock = None
        self._check_destination(inputs)
        if not writer:  # another data-parallel rank: reads where to resume, after the writer opened it
            self.manifest, self.resume_dir = self._resume_point(force=False, dry_run=True)
            return
        existed = self.out.exists()
        try:
            if (self.out / LOCK).is_file():  # a run lives here: a live writer is named first
                self._lock = DirectoryLock(self.out / LOCK, command)
            if existed:
                self._resume_point(force, dry_run=True)  # refuse before writing anything, not even a lock
            try:
                self.out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise from_os_error(e, "cannot create the run directory", self.out) from None
            if self._lock is None:
                self._lock = DirectoryLock(self.out / LOCK, command)
            self.manifest, self.resume_dir = self._resume_point(force)  # again, now that we hold the lock
            self._clean_leftovers()
        except BaseException:
            self.close()
            if not existed:
                shutil.rmtree(self.out, ignore_errors=True)  # the directory this call made, and only that
            raise

    # -- opening -----------------------------------------------------------------------------
    def _check_destination(self, inputs) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise PrismError("exists and is not a directory; name a directory for the run", out)
        resolved = out.resolve()
        if resolved in (Path.cwd().resolve(), Path(resolved.anchor), Path.home().resolve()):
            raise PrismError("refusing to train into this directory itself; name a new directory", out)
        for src in inputs:
            if src and Path(src).exists() and _inside(Path(src).resolve(), resolved):
                raise PrismError(f"refusing to write a run over its own starting point ({src})", out)

    def _resume_point(self, force: bool, dry_run: bool = False) -> tuple[dict | None, Path | None]:
        """(manifest, newest step dir with training state) of an existing run of this config.

        Refuses a directory that is not a run of this toolkit, and one of another configuration
        unless ``force`` (which then resets it, unless ``dry_run``: a check that writes nothing).
        """
        manifest = read_manifest(self.out)
        others = [p for p in self.out.iterdir() if not p.name.startswith(".")]
        if manifest is None:
            if others:
                raise PrismError(
                    "directory is not empty and holds no prism run; name a new or empty directory", self.out
                )
            return None, None
        if "config_hash" not in manifest or not isinstance(manifest.get("steps"), list):
            raise PrismError(f"{MANIFEST} here was not written by prism train/rl; name another directory", self.out)
        if manifest["config_hash"] != self.hash:
            if not force:
                raise PrismError(
                    "directory holds a run with a different configuration; pass --force to delete that "
                    "run's checkpoints and start over, or pick another directory",
                    self.out,
                )
            if not dry_run:
                self._reset(manifest)
            return None, None
        for entry in reversed(manifest["steps"]):
            d = self.out / str(entry.get("path", ""))
            if (d / STATE).is_file() and (d / "config.json").is_file():
                return manifest, d
        return None, None

    def _reset(self, manifest: dict) -> None:
        """Delete what a run of this toolkit wrote here (its steps and manifest); nothing else."""
        names = {str(e.get("path")) for e in manifest["steps"] if isinstance(e, dict)}
        for p in self.out.iterdir():
            if p.name in names or (p.name.startswith("step_") and p.is_dir() and (p / "config.json").is_file()):
                shutil.rmtree(p)
        (self.out / MANIFEST).unlink(missing_ok=True)

    def _clean_leftovers(self) -> None:
        """Temporaries of saves that a killed process left (``.step_*.tmp-PID-*``) go; a step
        that was being replaced comes back."""
        for name in {p.name.split(".")[1] for p in self.out.glob(".step_*.*-*")}:
            recover_leftovers(self.out, name)

    # -- the run's record --------------------------------------------------------------------
    @property
    def resuming(self) -> bool:
        return self.resume_dir is not None

    def start_manifest(self, **fields) -> dict:
        """A fresh manifest for a new run: ``fields`` + config, its hash and no steps yet."""
        self.manifest = {**fields, "config": self.config, "config_hash": self.hash, "steps": []}
        return self.manifest

    def trim(self, step: int, *lists: str) -> None:
        """Forget manifest entries (``steps`` and the named lists) beyond ``step`` (the resume point)."""
        for key in ("steps", *lists):
            self.manifest[key] = [e for e in self.manifest.get(key, []) if e["step"] <= step]

    def last(self, key: str, default=0):
        """``key`` of the newest saved step (e.g. ``tokens``, ``time``), or ``default``."""
        return self.manifest["steps"][-1][key] if self.manifest and self.manifest["steps"] else default

    def load_state(self) -> dict:
        """The training state of the resume point (tensors and plain values only: never code)."""
        path = self.resume_dir / STATE
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a corrupt or malicious file: refused, never run
            raise PrismError(
                f"cannot resume: unreadable training state ({' '.join(str(e).split())[:200]})", path
            ) from None

    # -- saving ------------------------------------------------------------------------------
    def save_step(self, step: int, model, tokenizer, state: dict | None, entry: dict, save_dtype=torch.float32) -> Path:
        """Write ``OUT/step_NNNNNN`` atomically (a complete HF checkpoint + training state), then
        record ``entry`` (with ``step`` and ``path``) in the manifest and drop older states."""
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Writing model shards" bar on every save of a run
        final = self.out / step_name(step)
        # a step already there is a stale one from beyond the resume point, written by this run
        with staged_dir(final, "cannot write a checkpoint") as tmp:
            sd = None
            if save_dtype != torch.float32:
                sd = {
                    k: v.detach().to(save_dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()
                }
            model.save_pretrained(tmp, state_dict=sd, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            if state is not None:
                torch.save(state, tmp / STATE)
        self.manifest["steps"].append({"step": step, "path": final.name, **entry})
        write_json(self.out / MANIFEST, self.manifest)
        for p in self.out.glob(f"step_*/{STATE}"):
            if p.parent != final:
                p.unlink(missing_ok=True)
        return final

    def write_manifest(self) -> None:
        write_json(self.out / MANIFEST, self.manifest)

    # -- closing -----------------------------------------------------------------------------
    @classmethod
    @contextlib.contextmanager
    def for_ranks(cls, accelerator, out, config: dict, force: bool = False, inputs=(), command: str = "train"):
        """The run directory of a data-parallel run: rank 0 opens it to write (lock, resume point,
        ``force``), then the other ranks open it to read only (``writer=False``) and never write."""
        if accelerator.is_main_process:
            with cls(out, config, force, inputs, command) as run:
                accelerator.wait_for_everyone()
                yield run
        else:
            accelerator.wait_for_everyone()
            yield cls(out, config, force, inputs, command, writer=False)

    def close(self) -> None:
        """Release the lock (also released by the OS if the process dies)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
