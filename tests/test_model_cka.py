"""`prism cka` end to end on tiny checkpoints: identical models, perturbed models, bad input."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers import PROSE, save_model

from prism_analysis.model_cka import model_cka, read_probe
from prism_cli import main


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cka")
    save_model(root / "base", "llama", seed=0)
    save_model(root / "near", "llama", seed=0, perturb=0.01)
    save_model(root / "far", "llama", seed=0, perturb=0.5)
    prompts = [f"{t} That was example {i}." for i, t in enumerate(PROSE)]  # distinct prompts
    (root / "wiki.txt").write_text("\n".join(prompts[:12]) + "\n\n")
    (root / "gsm8k.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in prompts[12:24]))
    return root


def test_identical_models_have_cka_one_and_perturbation_lowers_it(models):
    probes = {"wiki": read_probe(models / "wiki.txt")}
    same = model_cka(models / "base", models / "base", probes, bootstrap=5, progress=False, device="cpu")
    assert np.allclose(same.layers["cka"], 1.0, atol=1e-9)
    near = model_cka(models / "base", models / "near", probes, bootstrap=5, progress=False, device="cpu")
    far = model_cka(models / "base", models / "far", probes, bootstrap=5, progress=False, device="cpu")
    assert near.summary()["wiki"]["min_cka"] > far.summary()["wiki"]["min_cka"]
    assert (near.layers["cka"] > 0.9).all()
    assert len(near.layers) == 5  # embedding + 4 blocks


def test_cli_writes_outputs(models, capsys):
    out = models / "out"
    code = main(
        [
            "cka",
            str(models / "base"),
            str(models / "near"),
            "--probe",
            str(models / "wiki.txt"),
            "--probe",
            str(models / "gsm8k.jsonl"),
            "--n",
            "10",
            "--bootstrap",
            "4",
            "--out",
            str(out),
            "--all-pairs",
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    df = pd.read_csv(out / "cka.csv")
    assert {"probe", "layer", "cka", "ci_low", "ci_high"} <= set(df.columns)
    assert set(df["probe"]) == {"wiki", "gsm8k"} and (df["n"] == 10).all()
    s = json.loads((out / "summary.json").read_text())
    for probe in ("wiki", "gsm8k"):
        assert {"min_cka", "argmin_layer", "layers"} <= set(s[probe]) and len(s[probe]["layers"]) == 5
        assert s[probe]["min_cka"] == min(s[probe]["layers"])
    for f in ["cka_by_layer.png", "cka_by_layer.pdf", "cka_matrix_wiki.csv", "cka_matrix_wiki.png"]:
        assert (out / f).is_file(), f
    m = pd.read_csv(out / "cka_matrix_wiki.csv", index_col=0)
    assert m.shape == (5, 5)
    assert "min CKA" in capsys.readouterr().out


def test_token_pooling_streams(models):
    probes = {"wiki": read_probe(models / "wiki.txt")[:4]}
    res = model_cka(models / "base", models / "near", probes, pool="tokens", progress=False, device="cpu")
    assert (res.layers["cka"] > 0.9).all() and res.layers["n"].iloc[0] > 4


@pytest.mark.parametrize("case", ["missing_probe", "empty_probe", "bad_jsonl", "layer_count", "bad_ckpt"])
def test_bad_input(models, tmp, capsys, case):
    a, b, probe = models / "base", models / "near", models / "wiki.txt"
    if case == "missing_probe":
        probe = tmp / "nope.txt"
    elif case == "empty_probe":
        probe = tmp / "empty.txt"
        probe.write_text("\n  \n")
    elif case == "bad_jsonl":
        probe = tmp / "bad.jsonl"
        probe.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    elif case == "layer_count":
        b = save_model(tmp / "deep", "llama", num_layers=6)
    elif case == "bad_ckpt":
        b = tmp / "broken"
        b.mkdir()
        (b / "model.safetensors").write_bytes(b"garbage")
    out = tmp / "out"
    capsys.readouterr()  # drop what building the fixtures printed
    code = main(["cka", str(a), str(b), "--probe", str(probe), "--out", str(out), "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("prism: error: ") and "\n" not in err, err
    assert not out.exists()
