"""`prism audit` end to end: outputs, summary.json schema, one-line errors with exit code 2."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from helpers import model_state, save_planted_pair, save_state

from prism_cli import main


@pytest.fixture
def ckpts(tmp):
    return save_planted_pair(tmp)


def test_audit_writes_every_output(ckpts, capsys):
    out = ckpts / "out"
    assert main(["audit", str(ckpts / "a"), str(ckpts / "b"), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "normalized L2" in printed and "mlp_up" in printed
    for f in [
        "summary.json",
        "tensors.csv",
        "layers.csv",
        "components.csv",
        "update_by_layer_and_component.png",
        "update_by_layer_and_component.pdf",
    ]:
        assert (out / f).is_file(), f
    s = json.loads((out / "summary.json").read_text())
    keys = ["0.001", "0.005", "0.01", "0.02", "0.05", "0.1"]
    for block in [s["total"], *s["components"].values(), *s["layers"].values()]:
        assert {"numel", "normalized_l2", "fraction_equal", "fraction_changed"} <= set(block)
        assert list(block["fraction_changed"]) == keys
    assert s["a"].endswith("a") and s["b"].endswith("b")
    assert s["only_in_a"] == [] and s["only_in_b"] == []
    assert s["components"]["mlp_up"]["fraction_changed"]["0.01"] == 10 / s["components"]["mlp_up"]["numel"]
    assert s["layers"]["1"]["fraction_changed"]["0.01"] > 0 and s["layers"]["0"]["fraction_changed"]["0.01"] == 0
    tensors = pd.read_csv(out / "tensors.csv")
    assert {"name", "layer", "component", "numel", "normalized_l2", "fraction_changed_0.01"} <= set(tensors.columns)
    assert not list(ckpts.glob(".out.tmp-*"))


def test_audit_without_out_prints_and_writes_nothing(ckpts, capsys, monkeypatch):
    monkeypatch.chdir(ckpts)
    before = sorted(p.name for p in ckpts.iterdir())
    assert main(["audit", str(ckpts / "a"), str(ckpts / "b"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "normalized L2" in printed and "wrote" not in printed
    assert sorted(p.name for p in ckpts.iterdir()) == before


def test_custom_thresholds_in_percent(ckpts, capsys):
    out = ckpts / "o2"
    assert (
        main(
            [
                "audit",
                str(ckpts / "a"),
                str(ckpts / "b"),
                "--out",
                str(out),
                "--quiet",
                "--thresholds",
                "1%,4%",
                "--no-figure",
            ]
        )
        == 0
    )
    s = json.loads((out / "summary.json").read_text())
    assert list(s["total"]["fraction_changed"]) == ["0.01", "0.04"]
    assert s["total"]["fraction_changed"]["0.04"] == 0.0


def test_nan_weights_are_reported_and_the_audit_goes_on(tmp, capsys):
    state, config = model_state("llama")
    new = {k: v.clone() for k, v in state.items()}
    new["model.layers.0.mlp.down_proj.weight"].view(-1)[:3] = float("nan")
    save_state(state, tmp / "a", config)
    save_state(new, tmp / "b", config)
    assert main(["audit", str(tmp / "a"), str(tmp / "b"), "--out", str(tmp / "o"), "--quiet"]) == 0
    s = json.loads((tmp / "o" / "summary.json").read_text())
    assert s["total"]["nonfinite"] == 3 and "non-finite: 3" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing", "corrupt", "shape", "pickle", "arch"])
def test_bad_input_exit_2_one_line_no_output(tmp, ckpts, capsys, case):
    a, b = ckpts / "a", ckpts / "b"
    if case == "missing":
        b = tmp / "does_not_exist"
    elif case == "corrupt":
        (tmp / "bad").mkdir()
        (tmp / "bad" / "model.safetensors").write_bytes((a / "model.safetensors").read_bytes()[:1000])
        b = tmp / "bad"
    elif case == "shape":
        state, config = model_state("llama", hidden_size=64)
        b = save_state(state, tmp / "small", config)
    elif case == "pickle":
        (tmp / "pk").mkdir()
        torch.save({"w": torch.ones(1)}, tmp / "pk" / "pytorch_model.bin")
        b = tmp / "pk"
    elif case == "arch":
        state, config = model_state("nemotron_h")
        b = save_state(state, tmp / "nem", config)
    out = tmp / "out"
    code = main(["audit", str(a), str(b), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("prism: error: ") and "\n" not in err and "Traceback" not in err
    assert str(b) in err or b.name in err
    assert not out.exists() and not list(tmp.glob(".out.tmp-*"))


def test_console_script_exit_code_and_help():
    r = subprocess.run(
        [sys.executable, "-m", "prism_analysis.cli", "audit", "/nonexistent/a", "/nonexistent/b"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == "prism: error: /nonexistent/a: no such file or directory"
    h = subprocess.run([sys.executable, "-m", "prism_analysis.cli", "audit", "--help"], capture_output=True, text=True)
    assert h.returncode == 0 and "normalized L2" in h.stdout and "examples:" in h.stdout
