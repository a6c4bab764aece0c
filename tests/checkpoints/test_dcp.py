"""Sharded training checkpoints (torch.distributed.checkpoint) read in place, and HF Trainer runs.

The sharded checkpoints are real: ``dcp_save.py`` runs under torchrun in two CPU processes (gloo),
shards a tiny LLaMA with FSDP2 ``fully_shard`` and saves it with ``torch.distributed.checkpoint`` and
with accelerate's ``save_fsdp_model`` (the HF Trainer's layout); the HF Trainer run is a real
``transformers.Trainer``.
"""

import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import ROOT, SCRIPTS, TESTS, peak_rss_growth, save_state
from torch.distributed.checkpoint import FileSystemReader

from prism_analysis.checkpoints import dcp as dcp_reader
from prism_analysis.checkpoints.dcp import DcpCheckpoint, is_dcp_checkpoint, model_names
from prism_analysis.checkpoints.opening import open_checkpoint
from prism_analysis.checkpoints.run_manifest import discover
from prism_analysis.errors import PrismError
from prism_analysis.representations.model_loader import load_model
from prism_analysis.weights.audit import audit
from prism_analysis.weights.compare import compare_updates
from prism_analysis.weights.interpolate import interpolate
from prism_analysis.weights.trajectory import analyse_trajectory
from prism_cli import main

#: The DCP layouts dcp_save.py writes, all holding the same (perturbed) weights.
LAYOUTS = ["dcp", "trainer", "run/checkpoint-2", "run/checkpoint-2/pytorch_model_fsdp_0"]


def child_env() -> dict:
    """The environment of a child process: this checkout importable, one thread per process."""
    path = os.pathsep.join(p for p in [str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")] if p)
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """Run dcp_save.py in two processes (see its docstring for what it writes)."""
    out = tmp_path_factory.mktemp("dcp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    r = subprocess.run(
        [*cmd, str(SCRIPTS / "dcp_save.py"), str(out)], env=child_env(), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def same_audit(x, y) -> None:
    """Two audits agree on every number: the summary (but for the paths) and all four tables."""
    sx, sy = x.summary(), y.summary()
    assert {k: v for k, v in sx.items() if k not in ("a", "b")} == {k: v for k, v in sy.items() if k not in ("a", "b")}
    for table in ("tensors", "layers", "components", "total"):
        pd.testing.assert_frame_equal(getattr(x, table), getattr(y, table), check_exact=True)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sharded_save_audits_exactly_like_the_consolidated_safetensors(saved, layout):
    dcp = saved / layout
    assert is_dcp_checkpoint(dcp) and isinstance(open_checkpoint(dcp), DcpCheckpoint)
    zero = audit(saved / "consolidated", dcp, progress=False, device="cpu")
    assert zero.only_in_a == zero.only_in_b == [] and len(zero.tensors) == 21
    assert zero.tensors["normalized_l2"].eq(0).all() and zero.tensors["fraction_equal"].eq(1).all()
    moved = audit(saved / "base", dcp, progress=False, device="cpu")
    same_audit(moved, audit(saved / "base", saved / "consolidated", progress=False, device="cpu"))
    assert 0.005 < moved.summary()["total"]["normalized_l2"] < 0.02  # the 1% perturbation, not nothing


def test_each_tensor_reads_only_its_own_chunks(saved, monkeypatch):
    """get(name) loads that tensor's two chunks (uneven ones for the 1001-row embedding) and reads
    no more bytes than they take in the .distcp files."""
    ck = DcpCheckpoint(saved / "run" / "checkpoint-2")
    hf = open_checkpoint(saved / "consolidated")
    assert set(ck.names) == set(hf.names) and ck.architecture is None
    chunks = ck._chunks["model.embed_tokens.weight"]
    assert [c.sizes for c in chunks] == [(501, 64), (500, 64)]
    opened, read = [], []
    original_init, original_readinto = dcp_reader.FileRange.__init__, dcp_reader.FileRange.readinto

    def init(self, f, start, length):
        opened.append((f.name, start, length))
        original_init(self, f, start, length)

    def readinto(self, buffer):
        read.append(original_readinto(self, buffer))
        return read[-1]

    monkeypatch.setattr(dcp_reader.FileRange, "__init__", init)
    monkeypatch.setattr(dcp_reader.FileRange, "readinto", readinto)
    for name in hf.names:
        opened.clear(), read.clear()
        assert torch.equal(ck.get(name), hf.get(name)), name
        stored = ck._chunks[name]
        assert opened == [(str(c.file), c.start, c.length) for c in stored] and len(stored) == 2, name
        assert sum(read) < sum(c.length for c in stored) + 8192 * len(stored), name  # its bytes, once, + zip headers


def test_only_model_weights_are_kept(saved):
    trainer = DcpCheckpoint(saved / "trainer")  # model + AdamW state + a step counter in one directory
    assert set(trainer.names) == set(open_checkpoint(saved / "consolidated").names)
    with pytest.raises(PrismError, match="holds no model weights"):
        DcpCheckpoint(saved / "run" / "checkpoint-2" / "optimizer_0")


def test_config_beside_in_the_parent_or_given(saved, tmp):
    run = tmp / "run"
    shutil.copytree(saved / "run", run)
    assert DcpCheckpoint(run / "checkpoint-2").architecture is None
    shutil.copy(saved / "consolidated" / "config.json", run / "checkpoint-2")
    for path in (run / "checkpoint-2", run / "checkpoint-2" / "pytorch_model_fsdp_0"):
        assert open_checkpoint(path).architecture == "llama"
    given = DcpCheckpoint(saved / "dcp", config=saved / "consolidated" / "config.json")
    assert given.architecture == "llama" and DcpCheckpoint(saved / "dcp", config=saved / "base").config == given.config
    # a tied head is left to the embedding, as save_pretrained leaves it out
    cfg = dict(given.config, tie_word_embeddings=True)
    tied = DcpCheckpoint(saved / "dcp", config=cfg)
    assert "lm_head.weight" not in tied.tensors and tied.aliases == {"lm_head.weight": "model.embed_tokens.weight"}
    # --config on the command line; a config naming another architecture is refused
    out = tmp / "audit"
    argv = ["audit", str(saved / "base"), str(saved / "dcp"), "--quiet", "--no-figure", "--out", str(out)]
    assert main([*argv, "--config", str(saved / "consolidated" / "config.json")]) == 0
    assert json.loads((out / "summary.json").read_text())["total"]["normalized_l2"] > 0
    (tmp / "other.json").write_text(json.dumps(dict(given.config, model_type="mistral")))
    assert main([*argv, "--config", str(tmp / "other.json")]) == 2


def test_trajectory_and_interpolate_over_hf_trainer_fsdp_checkpoints(saved, tmp, capsys):
    """A run of checkpoint-N/pytorch_model_fsdp_0 directories (no config.json): discovered in step
    order; the trajectory's last C(t) is the audit of the last step against the first."""
    run = saved / "run"
    assert [s for s, _ in discover(run)] == [2, 4]
    traj = analyse_trajectory(run, progress=False, device="cpu")
    direct = audit(run / "checkpoint-2", run / "checkpoint-4", progress=False, device="cpu")
    c_t = traj.series("total", "normalized_l2")
    assert c_t[0] == 0 and c_t[-1] == pytest.approx(direct.summary()["total"]["normalized_l2"], rel=1e-12)
    assert c_t[-1] > 0
    assert main(["trajectory", str(run), "--quiet", "--config", str(saved / "base")]) == 0
    assert "steps 2..4" in capsys.readouterr().out
    # compare: the update base -> sharded is the update base -> consolidated
    same = compare_updates(saved / "base", saved / "dcp", saved / "base", saved / "consolidated", progress=False)
    total = same.summary()["total"]
    assert total["jaccard"] == 1.0 and total["cosine"] == pytest.approx(1.0, abs=1e-12)
    # W(0, 0) with a sharded base is that model, written as safetensors (config.json, no DCP files)
    base = DcpCheckpoint(saved / "dcp", config=saved / "base")
    out = interpolate(base, saved / "trainer", saved / "base", 0.0, 0.0, tmp / "w")
    assert sorted(f.name for f in out.iterdir() if not f.name.startswith(".")) == ["config.json", "model.safetensors"]
    assert audit(saved / "consolidated", out, progress=False).summary()["total"]["normalized_l2"] == 0


def test_name_rules():
    """Wrapper prefixes go, the model's own names stay; optimizer and trainer state are not the model."""
    hf = ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "lm_head.weight"]
    assert model_names({n: (n,) for n in hf}) == {n: n for n in hf}  # plain HF names: untouched
    assert model_names(dict.fromkeys(hf[:2])) == {n: n for n in hf[:2]}  # tied head, no paths: untouched
    accelerate = {f"model.{n}": ("model", n) for n in hf}
    assert model_names(accelerate) == {f"model.{n}": n for n in hf}
    app = {"app.model.lm_head.weight": ("app", "model", "lm_head.weight"), "app.optim.state.x.exp_avg": None}
    app["app.optim.state.x.exp_avg"] = ("app", "optim", "state", "x", "exp_avg")
    assert model_names(app) == {"app.model.lm_head.weight": "lm_head.weight"}
    optimizer = {"optimizer.state.lm_head.weight.exp_avg": ("optimizer", "state", "lm_head.weight", "exp_avg")}
    assert model_names({**optimizer, "lm_head.weight": ("lm_head.weight",)}) == {"lm_head.weight": "lm_head.weight"}
    wrapped = {
        "_orig_mod.model.layers.0.mlp.up_proj.weight": "model.layers.0.mlp.up_proj.weight",  # torch.compile
        "model.layers.1._orig_mod.mlp.up_proj.weight": "model.layers.1.mlp.up_proj.weight",  # per-block compile
        "model.layers.2._fsdp_wrapped_module._checkpoint_wrapped_module.mlp.up_proj.weight": (
            "model.layers.2.mlp.up_proj.weight"
        ),  # FSDP1 + activation checkpointing
    }
    assert model_names({k: (k,) for k in wrapped}) == wrapped
    ddp = {f"module.{n}": (f"module.{n}",) for n in hf}
    assert model_names(ddp) == {f"module.{n}": n for n in hf}
    partly = {"module.x.weight": ("module.x.weight",), "y.weight": ("y.weight",)}
    assert model_names(partly) == {k: k for k in partly}  # not every name has it: not a DDP wrapper
    flat = {f"model.{n}": None for n in hf} | {"optimizer.state.0.exp_avg": None}
    assert model_names(flat) == {f"model.{n}": n for n in hf}  # no recorded paths: the double prefix
    with pytest.raises(PrismError, match="both name the tensor"):
        model_names({"model.w": ("model", "w"), "w": ("w",)})


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_single_process_save_memory_is_bounded_by_a_few_tensors(tmp):
    """A DCP save of 128 MiB in 4 MiB tensors audited against its safetensors twin: the extra memory
    is a few tensors, far below the 256 MiB pair."""
    import torch.distributed.checkpoint as dcp

    g = torch.Generator().manual_seed(0)
    n_tensors, numel = 32, 1 << 20
    state = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(numel, generator=g) for i in range(n_tensors)}
    save_state(state, tmp / "a")
    dcp.save({k: v * 1.001 for k, v in state.items()}, checkpoint_id=tmp / "b", no_dist=True)
    del state
    audit(tmp / "a", tmp / "a", progress=False, device="cpu")  # warm up: numba's kernels compile once
    res, extra = peak_rss_growth(lambda: audit(tmp / "a", tmp / "b", progress=False, device="cpu"))
    pair_bytes = 2 * n_tensors * numel * 4
    assert res.stats["total"].numel == n_tensors * numel
    assert extra < pair_bytes / 4, f"extra RSS {extra / 2**20:.0f} MiB for a {pair_bytes / 2**20:.0f} MiB pair"


def one_line_error(fn, *parts) -> str:
    with pytest.raises(PrismError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and all(p in msg for p in parts), msg
    return msg


def test_bad_sharded_checkpoints_give_one_line_errors(saved, tmp, capsys):
    bad = tmp / "bad"
    shutil.copytree(saved / "dcp", bad)
    metadata, shard = bad / ".metadata", bad / "__1_0.distcp"
    good = metadata.read_bytes()
    # a missing shard: the metadata names it
    shard.rename(tmp / "moved.distcp")
    one_line_error(lambda: open_checkpoint(bad), ".metadata", "__1_0.distcp", "missing")
    assert main(["audit", str(saved / "consolidated"), str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prism: error: ") and "__1_0.distcp" in err and "\n" not in err
    (tmp / "moved.distcp").rename(shard)
    # corrupt or truncated metadata
    metadata.write_bytes(b"not a pickle at all")
    one_line_error(lambda: open_checkpoint(bad), str(metadata), "corrupt")
    metadata.write_bytes(good[: len(good) // 2])
    one_line_error(lambda: open_checkpoint(bad), str(metadata), "corrupt")
    # a hostile metadata pickle is refused before it runs anything
    marker = tmp / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    metadata.write_bytes(pickle.dumps(Evil()))
    one_line_error(lambda: open_checkpoint(bad), str(metadata), "refusing to unpickle")
    assert not marker.exists()
    metadata.write_bytes(good)
    # corrupt chunks (their start, their end) and a chunk holding an object: the error names the data file
    ck = open_checkpoint(bad)
    (up, up_chunk), (down, down_chunk) = (
        (f"model.layers.1.mlp.{n}.weight", ck._chunks[f"model.layers.1.mlp.{n}.weight"][1])
        for n in ("up_proj", "down_proj")
    )
    with open(up_chunk.file, "r+b") as f:
        f.seek(up_chunk.start)
        f.write(b"\0" * 64)
        f.seek(down_chunk.start + down_chunk.length - 64)
        f.write(b"\0" * 64)
    one_line_error(lambda: ck.get(up), str(up_chunk.file), "not a torch.save archive")
    one_line_error(lambda: ck.get(down), str(down_chunk.file), "cannot read a chunk")
    # a chunk that unpickles to code: refused by torch.load(weights_only=True), nothing runs
    trusted = FileSystemReader(bad).read_metadata()  # our own file: plain pickle.load is fine here
    torch.save(Evil(), bad / "evil.distcp")
    index = next(i for i in trusted.storage_data if i.fqn == "model.norm.weight")
    evil = dataclasses.replace(trusted.storage_data[index], relative_path="evil.distcp", offset=0)
    trusted.storage_data[index] = dataclasses.replace(evil, length=(bad / "evil.distcp").stat().st_size)
    metadata.write_bytes(pickle.dumps(trusted))
    one_line_error(lambda: open_checkpoint(bad).get("model.norm.weight"), "evil.distcp", "refused to unpickle")
    assert not marker.exists()
    one_line_error(lambda: DcpCheckpoint(saved / "base"), "base", "not a torch.distributed.checkpoint")
    one_line_error(lambda: DcpCheckpoint(saved / "dcp", config=tmp / "nope.json"), "nope.json", "no such file")


def test_commands_that_run_the_model_load_a_sharded_checkpoint(saved, tmp):
    """cka and eval build the model from its config and fill it from the shards, tensor by tensor:
    the same weights, and the same outputs, as loading the consolidated copy with transformers."""
    from helpers import tiny_tokenizer

    tiny_tokenizer().save_pretrained(tmp / "tok")
    config = saved / "consolidated" / "config.json"
    ours, _ = load_model(saved / "dcp", device="cpu", tokenizer=tmp / "tok", progress=False, config=config)
    theirs, _ = load_model(saved / "consolidated", device="cpu", tokenizer=tmp / "tok", progress=False)
    a, b = ours.state_dict(), theirs.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    ids = torch.tensor([[5, 17, 42, 7]])
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, theirs(ids).logits)


def test_hf_trainer_run_is_a_trajectory_in_step_order(tmp, capsys):
    """A real transformers.Trainer run (checkpoint-2 ... checkpoint-10, no trajectory.json):
    discovered in numeric step order (10 after 8, not after 1) and analysed end to end."""
    out = tmp / "trainer"
    r = subprocess.run(
        [sys.executable, str(SCRIPTS / "trainer_run.py"), str(out)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert [s for s, _ in discover(out)] == [2, 4, 6, 8, 10]
    assert main(["trajectory", str(out), "--quiet"]) == 0
    assert "steps 2..10 (5 checkpoints)" in capsys.readouterr().out
    traj = analyse_trajectory(out, progress=False, device="cpu")
    c_t = traj.series("total", "normalized_l2")
    assert traj.steps == [2, 4, 6, 8, 10] and c_t[0] == 0 and all(c > 0 for c in c_t[1:])


def test_diff_reads_a_sharded_checkpoint_as_its_consolidated_copy(saved, tmp, capsys):
    """prism diff of base against the DCP shards equals prism diff of base against the consolidated
    copy, number for number; the shards against that copy: every KL exactly 0."""
    from helpers import PROSE, tiny_tokenizer

    from prism_analysis.representations.model_diff import model_diff

    tiny_tokenizer().save_pretrained(tmp / "tok")
    config = saved / "consolidated" / "config.json"
    probes = {"prose": PROSE[:4]}
    kw = dict(tokenizer=tmp / "tok", device="cpu", progress=False, bootstrap=50, batch_size=2)
    sharded = model_diff(saved / "base", saved / "dcp", probes, config=config, **kw)
    whole = model_diff(saved / "base", saved / "consolidated", probes, **kw)
    for table in ("positions", "layers", "lens"):
        pd.testing.assert_frame_equal(getattr(sharded, table), getattr(whole, table), check_exact=True)
    assert sharded.summary() == whole.summary() and sharded.summary()["prose"]["mean_kl"] > 0
    same = model_diff(saved / "consolidated", saved / "dcp", probes, config=config, **kw)
    assert same.positions["kl_ab"].eq(0).all() and same.layers["kl_ab"].eq(0).all()
    # the command: --config for the shards, the same summary
    probe = tmp / "p.txt"
    probe.write_text("\n".join(PROSE[:4]) + "\n")
    argv = ["diff", str(saved / "base"), str(saved / "dcp"), "--probe", str(probe), "--config", str(config)]
    argv += [
        "--tokenizer",
        str(tmp / "tok"),
        "--bootstrap",
        "50",
        "--batch-size",
        "2",
        "--quiet",
        "--out",
        str(tmp / "d"),
    ]
    assert main(argv) == 0
    assert json.loads((tmp / "d" / "summary.json").read_text())["p"]["mean_kl"] == whole.summary()["prose"]["mean_kl"]
