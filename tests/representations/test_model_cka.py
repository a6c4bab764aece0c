"""`prism cka` end to end on tiny checkpoints: identical models, perturbed models, bad input."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import PROSE, save_model

from prism_analysis.representations.model_cka import COLUMNS, model_cka, read_probe
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
    assert list(df.columns) == COLUMNS
    assert set(df["probe"]) == {"wiki", "gsm8k"} and (df["n"] == 10).all() and (df["resample_size"] == 5).all()
    assert ((df["cka_ci_low"] <= df["cka"]) & (df["cka"] <= df["cka_ci_high"])).all()
    assert ((df["resample_ci_low"] <= df["resample_mean"]) & (df["resample_mean"] <= df["resample_ci_high"])).all()
    s = json.loads((out / "summary.json").read_text())
    for probe in ("wiki", "gsm8k"):
        v = s[probe]
        assert {"min_cka", "min_cka_ci_low", "min_cka_ci_high", "argmin_layer", "layers"} <= set(v)
        assert len(v["layers"]) == 5 and v["min_cka"] == min(v["layers"])
        assert v["min_cka_ci_low"] <= v["min_cka"] <= v["min_cka_ci_high"]
    assert set(s["_meta"]["estimators"]) == {"cka", "cka_ci", "resample"}
    assert "_similarity" not in s and not (out / "similarity.csv").exists()  # --measure defaults to cka only
    for f in ["cka_by_layer.png", "cka_by_layer.pdf", "cka_matrix_wiki.csv", "cka_matrix_wiki.png"]:
        assert (out / f).is_file(), f
    m = pd.read_csv(out / "cka_matrix_wiki.csv", index_col=0)
    assert m.shape == (5, 5)
    printed = capsys.readouterr().out
    assert "min CKA" in printed and "95% CI (jackknife)" in printed
    wiki = s["wiki"]
    assert f"{wiki['min_cka']:.6f}  [{wiki['min_cka_ci_low']:.6f}, {wiki['min_cka_ci_high']:.6f}]" in printed


def test_figure_draws_tables_written_before_the_interval_columns(tmp):
    """Tables saved by older versions (ci_low/ci_high: PRISM's resample interval) are drawn unshaded."""
    from prism_analysis.figures import plot_cka_layers

    old = pd.DataFrame({"probe": "wiki", "layer": range(3), "cka": [0.9, 0.8, 0.7], "ci_low": 0.5, "ci_high": 0.6})
    plot_cka_layers(old, tmp / "f14")
    assert (tmp / "f14.png").is_file()


def test_token_pooling_streams(models):
    probes = {"wiki": read_probe(models / "wiki.txt")[:4]}
    res = model_cka(models / "base", models / "near", probes, pool="tokens", progress=False, device="cpu")
    assert (res.layers["cka"] > 0.9).all() and res.layers["n"].iloc[0] > 4
    assert list(res.layers.columns) == COLUMNS and res.layers["cka_ci_low"].isna().all()  # no interval


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


def test_resamples_and_interval_are_left_empty_when_they_cannot_be_had():
    """--bootstrap 0: no resample columns; 3 prompts (biased CKA's minimum): no jackknife, as
    leaving one out leaves 2 rows, on which CKA is 1 whatever the data."""
    from prism_analysis.representations.model_cka import ModelCKA, _per_layer

    rng = np.random.default_rng(0)
    X, Y = torch.tensor(rng.standard_normal((2, 10, 4))), torch.tensor(rng.standard_normal((2, 10, 4)))
    ten = _per_layer("p", X, Y, 0, None, 0, False)
    assert list(ten.columns) == COLUMNS and ten["resample_mean"].isna().all() and ten["cka_ci_low"].notna().all()
    three = _per_layer("p", X[:, :3], Y[:, :3], 0, None, 0, False)
    assert three["cka"].notna().all() and three["cka_ci_low"].isna().all()
    printed = ModelCKA("a", "b", "mean", three).format()
    assert "[" not in printed.splitlines()[-2]  # the probe's line shows no interval
