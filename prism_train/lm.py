"""Next-token training (pre-training and mid-training), saving a checkpoint trajectory.

Packed next-token training on a data mix: AdamW with PRISM's betas (0.9, 0.95) and weight decay
0.1, linear warmup then cosine decay to 10% of the peak, gradient clipping, through accelerate.
``accelerate launch --config_file configs/fsdp.yaml -m prism_cli train ...`` (or ``torchrun``, or
``prism train ... --nproc N``) runs the same code data-parallel: every rank takes its own rows of
the step's global batch (:func:`rank_batch`), rank 0 alone writes the checkpoints (with the full
state dict gathered) and the others only read the resume point. Two CPU processes over gloo are
tested (tests/test_train_distributed.py); FSDP needs GPUs.

Data position is a pure function of the step: the batch of step s is drawn from a RNG seeded with
(seed, s), so resuming needs no data-loader state and a resumed run equals an uninterrupted one
bit for bit on the CPU (tested).
"""

from __future__ import annotations

import math
import random
import time
from array import array
from pathlib import Path

import torch

from prism_analysis.errors import PrismError

from .config import FAMILIES, TrainConfig
from .data.mix import Mix, load_mix
from .run_dir import RunDir


def accelerator_for(device: str):
    """An accelerate ``Accelerator`` on ``device`` (auto: a GPU when torch sees one)."""
    from accelerate import Accelerator

    if device == "cuda" and not torch.cuda.is_available():
        raise PrismError("--device cuda asks for a GPU, but torch sees none here (use cpu or auto)")
    accelerator = Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())
    if accelerator.num_processes > 1:  # all ranks leave the group together at exit
        from prism_analysis import distributed

        distributed.leave_at_exit()
    return accelerator


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr_ratio * lr`` at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class DocumentIds:
    """``text -> token ids + [EOS]`` of a training document, memoized.

    The synthetic mixes repeat documents: of 100,000 draws (a 1000-step mid-training run draws about
    that many) the reasoning mixes hold ~58,000 distinct texts and pretraining ~19,000. A fast
    tokenizer's Rust backend is called directly: the same ids as ``tokenizer(text)["input_ids"]``
    (tested) without the Python wrapper (unless tokenizer.json sets truncation or padding, which the
    wrapper turns off per call). The memo stops growing at ``max_tokens`` tokens (at the
    default 40 MB of int32 ids, plus the texts as keys, ~4 bytes a token), so a real corpus, which
    does not repeat, costs a bounded memo and the lookups.
    """

    def __init__(self, tokenizer, max_tokens: int = 10_000_000):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None and backend.truncation is None and backend.padding is None:
            self._encode = lambda text: backend.encode(text).ids
        else:
            self._encode = lambda text: tokenizer(text)["input_ids"]
        self.eos = tokenizer.eos_token_id
        self.memo: dict[str, array] = {}
        self.room = max_tokens

    def __call__(self, text: str) -> array:
        ids = self.memo.get(text)
        if ids is None:
            ids = array("i", self._encode(text))
            ids.append(self.eos)
            if len(ids) <= self.room:
                self.memo[text] = ids
                self.room -= len(ids)
        return ids


def batch_for_step(
    sample,
    tokenizer,
    step: int,
    seed,
    batch_size: int,
    seq_len: int,
    max_draws: int = 8,
    doc_ids: DocumentIds | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, labels)``, each (batch_size, seq_len), for ``step``; a pure function of the step.

    Documents (+ EOS) are packed into rows first-fit, never cut unless longer than a row: a document
    is split into row-sized pieces, each piece goes into the current row if it fits and otherwise
    waits in a buffer that the next rows take from first. A row gets up to ``max_draws`` new
    documents; what is still empty after that is padding with label -100 (no loss). Plain packing,
    which cuts wherever a row ends, showed the model about half of the 50-120-token worked
    problems at 128 tokens without their question. ``doc_ids``: a run's :class:`DocumentIds`
    (one is made for the call without).
    """
    doc_ids = doc_ids or DocumentIds(tokenizer)
    rng = random.Random(f"batch/{seed}/{step}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    waiting: list[list[int]] = []
    ids, labels = [], []
    for _ in range(batch_size):
        row: list[int] = []
        for piece in list(waiting):
            if len(row) + len(piece) <= seq_len:
                waiting.remove(piece)
                row += piece
        for _ in range(max_draws):
            if len(row) == seq_len:
                break
            doc = doc_ids(sample(rng))
            for i in range(0, len(doc), seq_len):
                piece = doc[i : i + seq_len]
                if len(row) + len(piece) <= seq_len:
                    row += piece
                else:
                    waiting.append(piece)
        gap = seq_len - len(row)
        ids.append(row + [pad] * gap)
        labels.append(row + [-100] * gap)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


def rank_batch(
    sample, tokenizer, step: int, cfg: TrainConfig, rank: int = 0, world: int = 1, doc_ids: DocumentIds | None = None
):
    """Rank ``rank``'s rows of step ``step``'s global batch of ``world * batch_size`` sequences.

    The global batch is :func:`batch_for_step` of the whole data-parallel run, so N ranks of
    batch B see exactly the rows one process of batch N * B sees (and average the same gradients,
    up to the per-rank token counts), and one process is unchanged.
    """
    ids, labels = batch_for_step(
        sample, tokenizer, step, cfg.seed, cfg.batch_size * world, cfg.seq_len, doc_ids=doc_ids
    )
    rows = slice(rank * cfg.batch_size, (rank + 1) * cfg.batch_size)
    return ids[rows], labels[rows]


def _init_model(cfg: TrainConfig):
    """(model, tokenizer, parent) of a new run: a fresh model of a family, or a checkpoint."""
    from prism_analysis.representations.model_loader import load_model

    from .models import build_model
    from .tokenizer import train_tokenizer

    if cfg.init in FAMILIES:
        # a general-purpose tokenizer (fixed seed): pretraining prose and code plus reasoning
        # problems, as real tokenizers see web text with some math in it
        pre = load_mix("pretrain").sampler("train")
        reasoning = Mix("tokenizer", {"math": 1.0, "code_reasoning": 1.0, "science": 1.0}).sampler("train")
        rng = random.Random("tokenizer")
        texts = [pre(rng) for _ in range(1500)] + [reasoning(rng) for _ in range(1500)]
        tok = train_tokenizer(texts, vocab_size=cfg.tokenizer_vocab)
        model = build_model(cfg.init, seed=cfg.seed, vocab_size=len(tok), **cfg.model)
        return model, tok, None
    path = Path(cfg.init)
    if not path.exists():
        raise PrismError(f"--init is neither a model family ({', '.join(FAMILIES)}) nor a checkpoint", path)
    model, tok = load_model(path, device="cpu", dtype="float32", progress=False)
    return model.train(), tok, str(path)


def train(
    cfg: TrainConfig,
    out: str | Path,
    force: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    log=print,
) -> dict:
    """Run (or resume) next-token training; returns the manifest. ``stop_after`` ends the run early
    after that many steps of this invocation (tests use it to simulate an interruption)."""
    from accelerate.utils import set_seed

    from prism_analysis.progress import progress_bar
    from prism_analysis.representations.model_loader import load_model

    mix = load_mix(cfg.mix)
    config = {**cfg.hashed(), "mix_spec": mix.to_dict()}
    init = cfg.init if cfg.init not in FAMILIES else None
    if init is not None and not Path(init).exists():
        raise PrismError(f"--init is neither a model family ({', '.join(FAMILIES)}) nor a checkpoint", init)
    accelerator = accelerator_for(cfg.device)  # under a launcher: joins the data-parallel group
    with RunDir.for_ranks(accelerator, out, config, force=force, inputs=[init], command="train") as run:
        save_dtype = getattr(torch, cfg.save_dtype)
        sample = mix.sampler("train")
        set_seed(cfg.seed)
        state, start = None, 0
        if run.resuming:
            model, tok = load_model(run.resume_dir, device="cpu", dtype="float32", progress=False)
            state = run.load_state()
            if "model" in state:  # fp32 master weights when the checkpoint was saved in bf16
                model.load_state_dict(state["model"])
            start = state["step"]
            log(f"resuming {run.out} from step {start}")
        else:
            model, tok, parent = _init_model(cfg)
            run.start_manifest(phase=cfg.phase, parent=parent, mix=mix.to_dict())
        run.trim(start)
        model.train()
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
            betas=tuple(cfg.betas),
        )
        model, opt = accelerator.prepare(model, opt)
        if state is not None:
            opt.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["torch_rng"])
            random.setstate(_tuple_state(state["py_rng"]))
        save_at = set(cfg.save_steps) | set(range(0, cfg.steps + 1, cfg.save_every)) | {0, cfg.steps}
        tokens = run.last("tokens")
        t0 = time.perf_counter() - run.last("time", 0.0)

        def save(step, loss, lr):
            full_state = accelerator.get_state_dict(model)  # gathers shards under FSDP; a no-op on one process
            if accelerator.is_main_process:
                st = {
                    "step": step,
                    "optimizer": opt.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "py_rng": list(_list_state(random.getstate())),
                }
                if save_dtype != torch.float32:
                    st["model"] = {k: v.detach().clone() for k, v in full_state.items()}
                entry = {"tokens": tokens, "loss": loss, "lr": lr, "time": time.perf_counter() - t0}
                run.save_step(step, accelerator.unwrap_model(model), tok, st, entry, save_dtype)
            accelerator.wait_for_everyone()

        if start == 0 and not run.manifest["steps"]:
            save(0, float("nan"), 0.0)
        tracker = start_tracking(cfg, run, model, start)
        doc_ids = DocumentIds(tok)
        loss_ema = None
        bar = progress_bar(
            range(start, cfg.steps),
            desc=f"{cfg.phase} {run.out.name}",
            enabled=progress,
            initial=start,
            total=cfg.steps,
        )
        for done_here, step in enumerate(bar, 1):
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            ids, labels = rank_batch(
                sample, tok, step, cfg, accelerator.process_index, accelerator.num_processes, doc_ids
            )
            ids, labels = ids.to(accelerator.device), labels.to(accelerator.device)
            loss = model(input_ids=ids, labels=labels).loss
            accelerator.backward(loss)
            if cfg.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if tracker is not None:
                tracker.step(step + 1)
            tokens += int((labels != -100).sum()) * accelerator.num_processes
            lv = float(accelerator.reduce(loss.detach(), reduction="mean"))  # the mean over ranks
            loss_ema = lv if loss_ema is None else 0.9 * loss_ema + 0.1 * lv
            bar.set_postfix(loss=f"{loss_ema:.3f}")
            if step + 1 in save_at:
                save(step + 1, lv, lr)
            if tracker is not None and step + 1 == cfg.steps:
                tracker.finish(cfg.steps)
            if stop_after is not None and done_here >= stop_after:
                break
        return run.manifest


def start_tracking(cfg, run, model, start: int):
    """The live :class:`~prism_analysis.tracking.tracker.UpdateTracker` of a run with ``--track-every``
    (None without): writes ``OUT/tracking``; a resumed run continues the curve of its first part."""
    if not cfg.track_every:
        return None
    from prism_analysis.tracking.tracker import UpdateTracker

    return UpdateTracker(
        model,
        every=cfg.track_every,
        out=run.out / "tracking",
        step=start,
        resume=start > 0,
        total_steps=cfg.steps,
        name=run.out.name,
    )


def _list_state(s):
    return [list(x) if isinstance(x, tuple) else x for x in s]


def _tuple_state(s):
    return tuple(tuple(x) if isinstance(x, list) else x for x in s)
