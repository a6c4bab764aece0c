"""Distributed analyses: N processes over gloo give the single-process outputs exactly.

Two real launches on tiny checkpoints: two ``torchrun`` agents with ``--nnodes 2`` meeting at a
local c10d rendezvous, whose one launch runs audit, trajectory, compare and cka (mean and token
pooling) through tests/scripts/dist_driver.py (``prism_cli.main``, as ``python -m prism_cli``); and the
installed ``prism`` script's ``audit --nproc 2`` (``torch.distributed.run`` of ``-m prism_cli``) with a
chunk that only rank 1 reads corrupted. Every CSV is compared
byte for byte and summary.json value for value with an in-process single-process run (two threads;
the workers of a standalone launch have one each); only the record of the run (world_size, bytes
or prompts per rank) may differ. The fast tests check the pieces: the share assignment against
brute force, the thread-independent dot, that a rank reads only the tensors it owns, and the
option on every command.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import PROSE, ROOT, SCRIPTS, TESTS, model_state, save_model, save_state

from prism_analysis import distributed
from prism_cli import main

TINY = dict(hidden_size=32, num_layers=2, vocab_size=600)
RECORD_KEYS = ("world_size", "bytes_per_rank", "prompts_per_rank")


def child_env(**extra) -> dict:
    """A child's environment: this checkout importable, quiet libraries."""
    path = os.pathsep.join(p for p in [str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")] if p)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "RANK", "WORLD_SIZE")}
    return env | {"PYTHONPATH": path, "TRANSFORMERS_VERBOSITY": "error", "PRISM_DIST_TIMEOUT": "600"} | extra


def torchrun(*args) -> list[str]:
    """The installed ``torchrun`` script beside this Python (its module where there is none)."""
    script = Path(sys.executable).with_name("torchrun")
    return [str(script)] if script.exists() else [sys.executable, "-m", "torch.distributed.run"]


def prism_script() -> list[str]:
    """The installed ``prism`` console script beside this Python (``python -m prism_cli`` where there is none)."""
    script = Path(sys.executable).with_name("prism")
    return [str(script)] if script.exists() else [sys.executable, "-m", "prism_cli"]


def launch(cmd: list[str], cwd: Path, timeout: int = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=child_env(**env), capture_output=True, text=True, timeout=timeout)


# -- data and the single-process reference ----------------------------------------------------------
COMMANDS = {
    "audit": ["audit", "c0", "c1", "--no-figure"],
    "trajectory": ["trajectory", "c0", "c1", "c2", "c3"],
    "compare": ["compare", "c0", "c1", "c0", "c2"],
    "cka_mean": [
        "cka",
        "m0",
        "m1",
        "--probe",
        "probe.txt",
        "--batch-size",
        "3",
        "--bootstrap",
        "5",
        "--seed",
        "7",
        "--n-prompts",
        "10",
    ],
    "cka_tokens": ["cka", "m0", "m1", "--probe", "probe.txt", "--pool", "tokens", "--batch-size", "2"],
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """Four checkpoints of a tiny LLaMA along a run, c0..c3 (c1 sharded)."""
    root = tmp_path_factory.mktemp("dist")
    state, config = model_state("llama", **TINY)
    for i in range(4):
        g = torch.Generator().manual_seed(i)
        step = {k: v + (0.004 * i) * torch.randn(v.shape, generator=g) * v for k, v in state.items()}
        save_state(step, root / f"c{i}", config, shards=2 if i == 1 else 1)
    return root


@pytest.fixture(scope="module")
def data(checkpoints) -> Path:
    """The checkpoints, two complete models, a probe file, and every command's single-process
    output under ref/."""
    root = checkpoints
    save_model(root / "m0", seed=0, **TINY)
    save_model(root / "m1", seed=0, perturb=0.05, **TINY)
    (root / "probe.txt").write_text("\n".join(f"{i}: {t}" for i, t in enumerate(PROSE[:10])))
    from prism_analysis import figures

    cwd = os.getcwd()
    os.chdir(root)
    try:
        with pytest.MonkeyPatch.context() as mp:  # the figures are not compared: skip drawing them here
            for name in dir(figures):
                if name.startswith("plot_"):
                    mp.setattr(figures, name, lambda *a, **k: None)
            for name, argv in COMMANDS.items():
                assert main([*argv, "--out", f"ref/{name}", "--quiet"]) == 0
    finally:
        os.chdir(cwd)
    return root


def same_outputs(ref: Path, got: Path, world: int) -> dict:
    """Every CSV identical byte for byte, summary.json identical but for the run record; returns it."""
    csvs = sorted(p.name for p in ref.glob("*.csv"))
    assert csvs and csvs == sorted(p.name for p in got.glob("*.csv"))
    for name in csvs:
        assert (ref / name).read_bytes() == (got / name).read_bytes(), name
    a, b = json.loads((ref / "summary.json").read_text()), json.loads((got / "summary.json").read_text())
    where = b.get("_meta", b)  # cka keeps the run record with its other metadata
    record = {k: where.pop(k) for k in RECORD_KEYS if k in where}
    assert a == b
    assert record["world_size"] == world
    loads = record.get("bytes_per_rank") or record["prompts_per_rank"]
    assert len(loads) == world and all(x > 0 for x in loads)
    return record


# -- fast: the pieces ---------------------------------------------------------------------------------
def test_assign_is_deterministic_and_near_the_best_split():
    g = torch.Generator().manual_seed(0)
    for trial in range(40):
        n, world = 2 + trial % 7, 2 + trial % 3
        sizes = torch.randint(1, 1000, (n,), generator=g).tolist()
        owner = distributed.assign(sizes, world)
        assert owner == distributed.assign(list(sizes), world)  # same answer on every rank
        loads = [sum(s for s, r in zip(sizes, owner) if r == k) for k in range(world)]
        best = min(
            max(sum(s for s, r in zip(sizes, split) if r == k) for k in range(world))
            for split in itertools.product(range(world), repeat=n)
        )
        assert max(loads) <= (4 / 3 - 1 / (3 * world)) * best + 1e-9  # Graham's bound for LPT
    assert distributed.assign([5, 5, 5, 5], 2) == [0, 1, 0, 1]
    assert distributed.assign([], 3) == []


def test_ordered_dot_has_the_same_bits_with_any_number_of_threads():
    from prism_analysis.weights.update import ordered_dot

    g = torch.Generator().manual_seed(1)
    x, y = (torch.randn(1_500_001, generator=g, dtype=torch.float64) for _ in range(2))
    threads = torch.get_num_threads()
    try:
        values = set()
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            values.add(ordered_dot(x, y).item())
    finally:
        torch.set_num_threads(threads)
    assert len(values) == 1
    exact = math.fsum((x * y).tolist())
    assert abs(values.pop() - exact) <= 1e-12 * math.fsum((x * y).abs().tolist())


def test_a_rank_reads_only_the_tensors_it_owns(checkpoints, monkeypatch):
    """Rank 1 of 2 (simulated in this process): reads exactly its share, sends exactly those results."""
    from prism_analysis.checkpoints import local as checkpoint_reader
    from prism_analysis.weights import audit as weights

    read, sent = [], {}

    class Sent(Exception):
        pass

    def fake_exchange(payload=None, failed=None):
        sent.update(payload)
        raise Sent

    original = checkpoint_reader.Checkpoint.get
    monkeypatch.setattr(checkpoint_reader.Checkpoint, "get", lambda self, n: read.append(n) or original(self, n))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(distributed, "init", lambda: True)
    monkeypatch.setattr(distributed, "exchange", fake_exchange)
    with pytest.raises(Sent):
        weights.audit(checkpoints / "c0", checkpoints / "c2", progress=False)
    ca = checkpoint_reader.Checkpoint(checkpoints / "c0")
    names = list(ca.tensors)
    owner = distributed.assign([2 * ca.info(n).nbytes for n in names], 2)
    mine = [n for n, r in zip(names, owner) if r == 1]
    assert 0 < len(mine) < len(names)
    assert list(sent) == mine
    assert read == [n for n in mine for _ in range(2)]  # each of its tensors once from A and once from B


def test_every_command_has_nproc_and_it_is_stripped_for_the_workers():
    from prism_analysis.cli.parser import build_parser
    from prism_analysis.launch import strip_nproc
    from prism_cli import commands

    sub = next(a for a in build_parser(commands())._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        assert "--nproc" in parser._option_string_actions, name
    assert strip_nproc(["audit", "a", "--nproc", "2", "b", "--nproc=3", "--n", "4"]) == ["audit", "a", "b", "--n", "4"]


def test_commands_that_do_not_split_their_work_refuse_several_processes(checkpoints, capsys):
    c = [str(checkpoints / f"c{i}") for i in range(3)]
    out = checkpoints / "interp"
    assert main(["interpolate", *c, "--a", "1", "--b", "0", "--out", str(out), "--nproc", "2"]) == 2
    assert capsys.readouterr().err.strip() == (
        "prism: error: 'prism interpolate' runs in one process; run it without --nproc or a launcher"
    )
    assert not out.exists()


def test_nproc_under_a_launcher_and_a_relayed_error_are_one_line(checkpoints, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["audit", str(checkpoints / "c0"), str(checkpoints / "c1"), "--nproc", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["prism: error: --nproc is for a run started without a launcher; this one already runs under one"]
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(distributed.RankFailed, match=r"^x: broken$"):
        distributed.exchange(failed="x: broken")
    assert str(distributed.RankFailed(3, "x: broken")) == "rank 3: x: broken"


# -- slow: real launches ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_nodes_with_a_c10d_rendezvous_run_every_command_exactly(data):
    """Two torchrun agents on this machine, one process each, meeting at a local c10d rendezvous;
    one launch runs audit, trajectory, compare and cka (mean pooling with bootstrap, token pooling),
    each equal to the single-process output, with balanced shares."""
    names = list(COMMANDS)
    plan = data / "plan.json"
    plan.write_text(json.dumps([[*COMMANDS[n], "--out", f"t_{n}", "--quiet"] for n in names]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rendezvous = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", "prism-test"]
    cmd = [
        *torchrun(),
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        *rendezvous,
        str(SCRIPTS / "dist_driver.py"),
        str(plan),
    ]
    logs = [(data / f"agent{i}.out", data / f"agent{i}.err") for i in range(2)]
    agents = [
        subprocess.Popen(cmd, cwd=data, env=child_env(), stdout=out.open("w"), stderr=err.open("w"), text=True)
        for out, err in logs
    ]
    wait_together(agents, timeout=300)
    results = [(out.read_text(), err.read_text()) for out, err in logs]
    assert [a.returncode for a in agents] == [0, 0], [e[-2000:] for _, e in results]
    assert sum(out.count("t50") for out, _ in results) == 1  # one agent's rank 0 prints
    for n in names:
        record = same_outputs(data / "ref" / n, data / f"t_{n}", 2)
        if n.startswith("cka"):
            assert sum(record["prompts_per_rank"]) == 10
    audit = same_outputs(data / "ref/audit", data / "t_audit", 2)["bytes_per_rank"]
    files = [f for c in ("c0", "c1") for f in (data / c).glob("*.safetensors")]
    assert 0.9 * sum(f.stat().st_size for f in files) < sum(audit) <= sum(f.stat().st_size for f in files)
    assert max(audit) < 0.6 * sum(audit)  # balanced


def wait_together(procs, timeout: float) -> None:
    """Wait for every process; when one fails (or the time is up) stop the others at once, so a
    failed launch costs seconds, not the launcher's own timeouts (the other agent would wait for
    its peer at torchrun's exit barrier)."""
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs):
        if any(p.returncode not in (None, 0) for p in procs) or time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.2)
    for p in procs:
        p.wait()


def corrupt_chunk_owned_by_rank_1(data: Path) -> tuple[Path, str]:
    """c0 saved as a single-process torch.distributed.checkpoint, one chunk of a tensor that rank 1
    owns overwritten: only that rank meets the damage, when it reads the tensor."""
    import torch.distributed.checkpoint as dcp

    from prism_analysis.checkpoints.dcp import DcpCheckpoint
    from prism_analysis.checkpoints.local import Checkpoint

    out = data / "c0_dcp"
    if not out.exists():
        ckpt = Checkpoint(data / "c0")
        dcp.save({n: ckpt.get(n).clone() for n in ckpt.tensors}, checkpoint_id=str(out), no_dist=True)
    names = list(Checkpoint(data / "c1").tensors)
    owner = distributed.assign([2 * Checkpoint(data / "c1").info(n).nbytes for n in names], 2)
    victim = next(n for n, r in zip(names, owner) if r == 1 and "layers.1" in n)
    piece = DcpCheckpoint(out, config=data / "c0/config.json")._chunks[victim][0]
    with open(piece.file, "r+b") as f:
        f.seek(piece.start)
        f.write(b"JUNK")
    return out, victim


@pytest.mark.slow
def test_a_failing_rank_stops_the_run_with_its_one_line_error_and_no_output(data, capsys):
    broken, victim = corrupt_chunk_owned_by_rank_1(data)
    argv = ["audit", "c1", str(broken), "--config", "c0/config.json", "--quiet", "--no-figure"]
    cwd = os.getcwd()
    os.chdir(data)
    try:
        assert main([*argv, "--out", "t_single"]) == 2  # the single-process error, for reference
    finally:
        os.chdir(cwd)
    single = capsys.readouterr().err.strip()
    assert victim in single and single.startswith("prism: error: ")
    start = time.monotonic()
    r = launch([*prism_script(), *argv, "--out", "t_fail", "--nproc", "2"], data)
    assert time.monotonic() - start < 60  # no hang
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert errors == [single.replace("prism: error: ", "prism: error: rank 1: ")]
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not (data / "t_fail").exists() and not list(data.glob(".t_fail*"))


def test_a_launch_failure_keeps_the_workers_status_and_names_a_killed_rank(capsys):
    from types import SimpleNamespace

    from prism_analysis.launch import failure_status

    def failed(code):
        return SimpleNamespace(exitcode=code, signal_name=lambda: "SIGKILL")

    assert failure_status({0: failed(2), 1: failed(2)}) == 2  # bad input: the worker printed the line
    assert capsys.readouterr().err == ""
    assert failure_status({0: failed(1), 1: failed(-9)}) == 1
    assert capsys.readouterr().err == "prism: error: rank 1 was killed (SIGKILL; out of memory?)\n"
    assert failure_status({0: failed(-15), 1: failed(2)}) == 2  # rank 0 stopped by the launcher after rank 1's error
    assert capsys.readouterr().err == ""


def test_nproc_hands_the_command_line_to_the_workers_untouched(checkpoints, monkeypatch):
    """torchrun's own parser would take cka's --n for an abbreviation of --nnodes: --nproc never
    lets it see the command's arguments."""
    import torch.distributed.run as torch_run

    seen = {}
    monkeypatch.setattr(torch_run, "run", lambda args: seen.update(vars(args)))
    argv = ["cka", "a", "b", "--probe", "p.txt", "--n", "5", "--nproc", "3"]
    assert main(argv) == 0
    assert seen["nproc_per_node"] == "3" and seen["standalone"] and seen["module"]
    assert (seen["training_script"], seen["training_script_args"]) == ("prism_cli", argv[:-2])
