"""Hub references: the grammar, an offline Hub cache on disk, and a tiny Hub served on loopback.

Every command runs as a process with the environment a user sets (``HF_HUB_CACHE``,
``HF_HUB_OFFLINE``, ``HF_ENDPOINT``), and its numbers must equal those of the same checkpoints
given as local paths.
"""

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fake_hub import FakeHub, repo_folder, write_hub_cache
from helpers import save_model

from prism_analysis.checkpoints.hub import HubReference, parse_reference, step_key
from prism_analysis.errors import PrismError
from prism_cli import main

PERTURB = {"step0": 0.0, "step1": 0.01, "step2": 0.02, "step10": 0.03, "step20": 0.04}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub_ckpts")
    out = {rev: save_model(root / rev, seed=0, perturb=p) for rev, p in PERTURB.items()}
    out["other_shape"] = save_model(root / "other_shape", seed=0, hidden_size=64)
    return out


def prism(*args, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, "-m", "prism_cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    if check:
        assert r.returncode == 0, r.stderr
    return r


def numbers(summary_file: Path) -> dict:
    """A summary without the fields that name the inputs."""
    s = json.loads(Path(summary_file).read_text())
    return {k: v for k, v in s.items() if k not in ("a", "b", "paths", "name")}


# -- the grammar ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("EleutherAI/pythia-160m@step1000", HubReference("EleutherAI/pythia-160m", "step1000", None)),
        ("org/run@main:step-0200", HubReference("org/run", "main", "step-0200")),
        ("org/run:step-0200", HubReference("org/run", None, "step-0200")),
        ("ibm-granite/granite-3.3-8b-base", HubReference("ibm-granite/granite-3.3-8b-base", None, None)),
        (
            "allenai/OLMo-2-1124-7B@stage1-step140000-tokens294B",
            HubReference("allenai/OLMo-2-1124-7B", "stage1-step140000-tokens294B", None),
        ),
        ("org/model@refs/pr/1", HubReference("org/model", "refs/pr/1", None)),
    ],
)
def test_reference_grammar(text, ref):
    assert parse_reference(text) == ref and str(ref) == text


def test_a_local_path_wins_and_a_bad_reference_names_itself(tmp, monkeypatch):
    monkeypatch.chdir(tmp)
    (tmp / "org" / "run").mkdir(parents=True)
    assert parse_reference("org/run") == Path("org/run")
    for bad in ("./missing/dir", "/abs/missing", "a:b:c", "just-a-word", "org/name@rev@again"):
        with pytest.raises(PrismError, match="no such file"):
            parse_reference(bad)


def test_step_order_of_revision_names():
    names = ["step1000", "step2", "step0", "step143000", "main-step512"]
    assert sorted(names, key=step_key) == ["step0", "step2", "main-step512", "step1000", "step143000"]


# -- an offline cache ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def offline(ckpts, tmp_path_factory) -> dict:
    cache = tmp_path_factory.mktemp("hf_cache")
    write_hub_cache(cache, "org/run", {rev: {"": ckpts[rev]} for rev in PERTURB})
    write_hub_cache(cache, "org/folders", {"main": {f"step-{step_key(r)[0]:04d}": ckpts[r] for r in PERTURB}})
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


def test_offline_references_equal_local_paths(ckpts, offline, tmp):
    prism("audit", "org/run@step0", "org/run@step2", "--out", tmp / "hub", "--quiet", "--no-figure", env=offline)
    assert (
        main(["audit", str(ckpts["step0"]), str(ckpts["step2"]), "--out", str(tmp / "local"), "--quiet", "--no-figure"])
        == 0
    )
    assert numbers(tmp / "hub" / "summary.json") == numbers(tmp / "local" / "summary.json")
    s = json.loads((tmp / "hub" / "summary.json").read_text())
    assert s["a"] == "org/run@step0" and s["b"] == "org/run@step2", "the summary names what the user named"
    # a checkpoint in a folder of one revision
    sub = ["org/folders:step-0000", "org/folders@main:step-0002"]
    prism("audit", *sub, "--out", tmp / "sub", "--quiet", "--no-figure", env=offline)
    assert numbers(tmp / "sub" / "summary.json") == numbers(tmp / "local" / "summary.json")


@pytest.mark.slow
def test_offline_errors_are_one_line(offline):
    r = prism("audit", "org/run@step0", "org/run@step99", "--quiet", env=offline, check=False)
    assert r.returncode == 2 and "step99" in r.stderr and "local Hub cache" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = prism("audit", "nobody/nothing", "org/run", "--quiet", env=offline, check=False)
    assert r.returncode == 2 and "nobody/nothing" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_offline_trajectory_of_revisions_and_folders_equals_local(ckpts, offline, tmp):
    prism("trajectory", "org/run", "--revisions", "step*", "--out", tmp / "revs", "--quiet", env=offline)
    prism("trajectory", "org/folders", "--subfolders", "step-*", "--out", tmp / "dirs", "--quiet", env=offline)
    prism("trajectory", *[ckpts[r] for r in PERTURB], "--out", tmp / "local", "--quiet", env=offline)
    local = numbers(tmp / "local" / "summary.json")
    revs = numbers(tmp / "revs" / "summary.json")
    assert revs == local and revs["steps"] == [0, 1, 2, 10, 20]
    dirs = numbers(tmp / "dirs" / "summary.json")
    assert dirs == local


@pytest.mark.slow
def test_offline_cka_diff_compare_interpolate_eval_take_references(ckpts, offline, tmp):
    probe = tmp / "probe.txt"
    probe.write_text("\n".join(f"Tom has {i} apples and buys {i + 3} more." for i in range(10)))
    prism("cka", "org/run@step0", "org/run@step20", "--probe", probe, "--out", tmp / "cka_hub", "--quiet", env=offline)
    # the same on the local paths, in this process (the API the command calls)
    from prism_analysis.representations.model_cka import model_cka
    from prism_analysis.representations.model_diff import model_diff

    prompts = {"probe": probe.read_text().splitlines()}
    local_cka = model_cka(ckpts["step0"], ckpts["step20"], prompts, progress=False)
    assert (tmp / "cka_hub" / "cka.csv").read_text() == local_cka.layers.to_csv(index=False)
    diff = ["diff", "org/run@step0", "org/run@step20", "--probe", probe, "--bootstrap", "50", "--no-figure"]
    prism(*diff, "--lens-layers", "0,2", "--quiet", "--out", tmp / "diff_hub", env=offline)
    local = model_diff(ckpts["step0"], ckpts["step20"], prompts, lens_layers="0,2", bootstrap=50, progress=False)
    local.save(tmp / "diff_local", figures=False)
    for table in ("positions.csv", "layers.csv", "lens.csv", "tokens.csv"):
        assert (tmp / "diff_hub" / table).read_text() == (tmp / "diff_local" / table).read_text()
    prism("compare", "org/run@step0", "org/run@step1", "org/run@step0", "org/run@step2", "--quiet", env=offline)
    prism(
        "interpolate",
        "org/run@step0",
        "org/run@step1",
        "org/run@step2",
        "--a",
        "1",
        "--b",
        "0",
        "--out",
        tmp / "interp",
        "--quiet",
        env=offline,
    )
    r = prism("audit", tmp / "interp", ckpts["step1"], "--quiet", env=offline)
    assert "normalized L2 (Eq. 1): 0 " in r.stdout, "W(1, 0) is mid, bit for bit"
    r = prism("eval", "org/run@step0", "--n", "2", env=offline)
    assert "macro" in r.stdout


# -- a Hub on loopback ----------------------------------------------------------------------------------
@pytest.fixture
def hub(ckpts, tmp):
    repos = {
        "org/run": {rev: {"": ckpts[rev]} for rev in PERTURB},
        "org/wide": {"main": {"": ckpts["other_shape"]}},
        "org/gated": {"main": {"": ckpts["step0"]}},
    }
    pickled = tmp / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((ckpts["step0"] / "config.json").read_text())
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(ckpts["step0"] / "model.safetensors"), pickled / "pytorch_model.bin")
    repos["org/pickled"] = {"main": {"": pickled}}
    with FakeHub(repos, gated={"org/gated"}) as server:
        server.env = {"HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp / "cache")}
        yield server


def full_downloads(server: FakeHub) -> list[str]:
    return [r for r in server.requests if r.startswith("GET ") and "/resolve/" in r and "bytes=" not in r]


def test_download_from_the_hub_equals_local_and_takes_only_weights(hub, ckpts, tmp):
    prism("audit", "org/run@step0", "org/run@step2", "--out", tmp / "hub", "--quiet", "--no-figure", env=hub.env)
    assert (
        main(["audit", str(ckpts["step0"]), str(ckpts["step2"]), "--out", str(tmp / "local"), "--quiet", "--no-figure"])
        == 0
    )
    assert numbers(tmp / "hub" / "summary.json") == numbers(tmp / "local" / "summary.json")
    fetched = {r.rsplit("/", 1)[-1] for r in full_downloads(hub)}
    assert fetched == {"model.safetensors", "config.json"}, "no tokenizer for a command that does not run the model"
    cached = repo_folder(tmp / "cache", "org/run")
    assert (cached / "refs" / "step2").is_file(), "the standard Hub cache layout"


def test_a_mismatched_pair_fails_before_the_download(hub, tmp):
    r = prism("audit", "org/run@step0", "org/wide", "--quiet", env=hub.env, check=False)
    assert r.returncode == 2 and "shape" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not [d for d in full_downloads(hub) if d.endswith(".safetensors")], "headers only, nothing downloaded"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("refs", "expected"),
    [
        (["nobody/nothing", "org/run@step0"], "no such model repository"),
        (["org/run@step99", "org/run@step0"], "no revision 'step99'"),
        (["org/gated", "org/run@step0"], "gated"),
        (["org/run@step0:step-0001", "org/run@step0"], "no folder 'step-0001'"),
        (["org/pickled", "org/run@step0"], "pickle weights only"),
    ],
)
def test_hub_errors_are_one_line(hub, refs, expected):
    r = prism("audit", *refs, "--quiet", env=hub.env, check=False)
    assert r.returncode == 2 and expected in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.slow
def test_pickle_only_repo_with_allow_pickle(hub, ckpts, tmp):
    r = prism("audit", "org/pickled", ckpts["step0"], "--allow-pickle", "--quiet", env=hub.env)
    assert "normalized L2 (Eq. 1): 0 " in r.stdout


@pytest.mark.slow
def test_evict_keeps_three_checkpoints_on_disk_and_equals_the_full_trajectory(hub, ckpts, tmp):
    cache = Path(hub.env["HF_HUB_CACHE"])
    size = (ckpts["step0"] / "model.safetensors").stat().st_size
    peak, done = [0], threading.Event()

    def watch():
        while not done.is_set():
            used = 0
            for folder, _, files in os.walk(cache):  # files may vanish under us: eviction is running
                for f in files:
                    p = os.path.join(folder, f)
                    with contextlib.suppress(OSError):
                        used += 0 if os.path.islink(p) else os.stat(p).st_size
            peak[0] = max(peak[0], used)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        prism(
            "trajectory", "org/run", "--revisions", "step*", "--evict", "--out", tmp / "evict", "--quiet", env=hub.env
        )
    finally:
        done.set()
        watcher.join()
    assert peak[0] <= 3 * size + 100_000, f"peak cache {peak[0]:,} bytes, checkpoints of {size:,}"
    left = sorted(p.name for p in (repo_folder(cache, "org/run") / "refs").iterdir())
    assert left == ["step0", "step20"], "only the first and the last stay in the cache"
    s = json.loads((tmp / "evict" / "summary.json").read_text())
    assert s["disk"]["peak_bytes"] <= 3 * size + 100_000 and len(s["disk"]["evicted"]) == 3
    prism("trajectory", *[ckpts[r] for r in PERTURB], "--out", tmp / "local", "--quiet", env=hub.env)
    local = numbers(tmp / "local" / "summary.json")
    assert {k: v for k, v in numbers(tmp / "evict" / "summary.json").items() if k != "disk"} == local
