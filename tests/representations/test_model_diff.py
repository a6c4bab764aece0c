"""`prism diff` against independent references: a model against itself, a float64 softmax written
here, planted residual shifts, seven families, BASE+ADAPTER, the CLI and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import transformers
from helpers import PROSE, ROOT, save_model, tiny_tokenizer

from prism_analysis.representations.model_diff import (
    LAYER_COLUMNS,
    LENS_COLUMNS,
    POSITION_COLUMNS,
    TOKEN_COLUMNS,
    diff_models,
    forward_hidden,
    logit_lens,
    model_diff,
    ratio_interval,
)
from prism_analysis.representations.model_loader import load_model
from prism_cli import main

PROMPTS = [f"{t} That was example {i}." for i, t in enumerate(PROSE)]
TINY = dict(hidden_size=64, num_layers=2)
PLANTED = 100  # the token whose unembedding direction is planted


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("diff")
    save_model(root / "base", "llama", seed=0)
    save_model(root / "near", "llama", seed=0, perturb=0.03)
    (root / "wiki.txt").write_text("\n".join(PROMPTS[:8]) + "\n")
    (root / "gsm8k.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in PROMPTS[8:14]))
    return root


# -- an independent float64 reference ---------------------------------------------------------------------
def log_softmax64(logits) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def kl64(lp, lq) -> np.ndarray:
    return (np.exp(lp) * (lp - lq)).sum(-1)


def rms_norm64(h, weight, eps) -> np.ndarray:
    h = np.asarray(h, dtype=np.float64)
    return h / np.sqrt((h * h).mean(-1, keepdims=True) + eps) * np.asarray(weight, dtype=np.float64)


def reference_pass(model, tok, text):
    """(residual streams (L + 1, s, d) float64, logits (s, V) float32) of one prompt through plain
    transformers: output_hidden_states for the embedding and blocks 1..L-1, a hook for block L
    (whose entry in output_hidden_states has the final norm applied)."""
    got = []
    hook = model.model.layers[-1].register_forward_hook(lambda m, a, out: got.append(out))
    try:
        with torch.no_grad():
            out = model(**tok(text, return_tensors="pt"), output_hidden_states=True)
    finally:
        hook.remove()
    last = got[0] if torch.is_tensor(got[0]) else got[0][0]
    hidden = torch.stack([*out.hidden_states[:-1], last])[:, 0]
    return hidden.double().numpy(), out.logits[0].numpy()


def test_a_model_against_itself_is_exactly_zero(models):
    probes = {"wiki": PROMPTS[:5]}
    res = model_diff(models / "base", models / "base", probes, device="cpu", progress=False, batch_size=2)
    pos = res.positions
    assert list(pos.columns) == POSITION_COLUMNS and len(pos) > 5
    assert (pos["kl_ab"] == 0).all() and (pos["kl_ba"] == 0).all() and pos["top1_agree"].all()
    assert (pos["delta_logprob"].dropna() == 0).all()
    assert list(res.layers.columns) == LAYER_COLUMNS and len(res.layers) == 5
    assert (res.layers[["kl_ab", "kl_ba"]] == 0).all().all() and (res.layers["top1_agree"] == 1).all()
    assert list(res.lens.columns) == LENS_COLUMNS
    assert (res.lens["value"] == 0).all() and (res.lens["delta_rms"] == 0).all()
    s = res.summary()["wiki"]
    assert s["mean_kl"] == 0 and s["mean_kl_ba"] == 0 and s["agreement"] == 1 and s["mean_delta_logprob"] == 0


def test_values_match_an_independent_float64_softmax(models):
    """Per-position KL both ways, next-token log-probabilities, the logit lens per layer and the
    difference lens, against numpy float64 on plain transformers forward passes."""
    texts = PROMPTS[:4]
    res = model_diff(models / "base", models / "near", {"p": texts}, device="cpu", progress=False, lens_top=10)
    ma, tok = load_model(models / "base", device="cpu")
    mb, _ = load_model(models / "near", device="cpu")
    L = len(ma.model.layers)
    rows, lens_sums, n = [], np.zeros((L + 1, 4)), 0
    delta = np.zeros((L + 1, ma.config.hidden_size))
    eps = ma.config.rms_norm_eps
    heads = {}
    for side, m in (("a", ma), ("b", mb)):
        heads[side] = (m.model.norm.weight.detach().double().numpy(), m.lm_head.weight.detach().double().numpy())
    for i, text in enumerate(texts):
        ha, za = reference_pass(ma, tok, text)
        hb, zb = reference_pass(mb, tok, text)
        lpa, lpb = log_softmax64(za), log_softmax64(zb)
        ids = tok(text)["input_ids"]
        for t in range(len(ids)):
            nxt = ids[t + 1] if t + 1 < len(ids) else None
            rows.append(
                (
                    i,
                    t,
                    kl64(lpa[t], lpb[t]),
                    kl64(lpb[t], lpa[t]),
                    lpa[t, nxt] if nxt else np.nan,
                    lpb[t, nxt] if nxt else np.nan,
                )
            )
        for layer in range(L + 1):
            qa = log_softmax64(rms_norm64(ha[layer], heads["a"][0], eps) @ heads["a"][1].T)
            qb = log_softmax64(rms_norm64(hb[layer], heads["b"][0], eps) @ heads["b"][1].T)
            lens_sums[layer] += [kl64(qa, qb).sum(), kl64(qb, qa).sum(), kl64(lpa, qa).sum(), kl64(lpb, qb).sum()]
        delta += (hb - ha).sum(1)
        n += len(ids)
    ref = pd.DataFrame(rows, columns=["prompt", "position", "kl_ab", "kl_ba", "logprob_a", "logprob_b"])
    pos = res.positions
    assert len(pos) == len(ref) == n
    assert (pos["prompt"].values == ref["prompt"].values).all() and (
        pos["position"].values == ref["position"].values
    ).all()
    for col in ("kl_ab", "kl_ba", "logprob_a", "logprob_b"):
        np.testing.assert_allclose(pos[col].values, ref[col].values, rtol=1e-9, atol=1e-15, err_msg=col)
    layers = res.layers.set_index("layer")
    for j, col in enumerate(("kl_ab", "kl_ba", "kl_a_to_output", "kl_b_to_output")):
        np.testing.assert_allclose(layers[col].values, lens_sums[:, j] / n, rtol=2e-4, atol=1e-9, err_msg=col)
    assert layers.loc[L, "kl_a_to_output"] == 0 and layers.loc[L, "kl_b_to_output"] == 0
    assert layers.loc[L, "kl_ab"] == pytest.approx(res.summary()["p"]["mean_kl"], rel=1e-12)
    # the difference lens: head(delta / rms) - head(0) with RMSNorm's head(0) = 0, in float64
    delta /= n
    lens = res.lens[(res.lens["positions"] == "all")]
    for layer in range(L + 1):
        unit = delta[layer] / np.sqrt((delta[layer] ** 2).mean())
        for side in ("a", "b"):
            values = rms_norm64(unit, heads[side][0], eps) @ heads[side][1].T
            got = lens[(lens["layer"] == layer) & (lens["head"] == side) & (lens["direction"] == "promoted")]
            assert list(got["token_id"]) == list(np.argsort(-values)[:10])
            np.testing.assert_allclose(got["value"].values, np.sort(values)[::-1][:10], rtol=1e-4, atol=1e-5)
            down = lens[(lens["layer"] == layer) & (lens["head"] == side) & (lens["direction"] == "suppressed")]
            assert list(down["token_id"]) == list(np.argsort(values)[:10])
        assert lens[lens["layer"] == layer]["delta_rms"].iloc[0] == pytest.approx(np.sqrt((delta[layer] ** 2).mean()))


def test_batches_with_padding_equal_one_prompt_at_a_time(models):
    probes = {"p": [PROMPTS[0], "Short one.", PROMPTS[2] + " " + PROMPTS[3], "x y"]}
    one = model_diff(models / "base", models / "near", probes, device="cpu", progress=False, batch_size=1)
    three = model_diff(models / "base", models / "near", probes, device="cpu", progress=False, batch_size=3)
    for col in ("kl_ab", "kl_ba", "delta_logprob"):
        np.testing.assert_allclose(three.positions[col], one.positions[col], rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(three.layers["kl_ab"], one.layers["kl_ab"], rtol=1e-3)


# -- planted shifts ---------------------------------------------------------------------------------------
def planted_pair(root: Path, family: str):
    """A and B where B adds a constant multiple of token PLANTED's unembedding row to the last
    block's output (through the bias of the last MLP's down projection), nothing else."""
    if family == "gpt2":
        torch.manual_seed(0)
        cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=len(tiny_tokenizer()))
        model = transformers.GPT2LMHeadModel(cfg)
        bias = model.transformer.h[-1].mlp.c_proj.bias
    else:
        from prism_analysis.tiny import build_model

        model = build_model("llama", seed=0, mlp_bias=True, **TINY)
        bias = model.model.layers[-1].mlp.down_proj.bias
    model.save_pretrained(root / "a")
    tiny_tokenizer().save_pretrained(root / "a")
    u = model.get_output_embeddings().weight[PLANTED].detach()
    with torch.no_grad():
        bias += 0.5 * u / u.norm()
    model.save_pretrained(root / "b")
    tiny_tokenizer().save_pretrained(root / "b")
    return root / "a", root / "b"


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_planted_shift_promotes_its_token_first(tmp, family):
    a, b = planted_pair(tmp, family)
    res = model_diff(a, b, {"p": PROMPTS[:4]}, device="cpu", progress=False, first_k=3)
    lens = res.lens
    last = lens["layer"].max()
    top = lens[(lens["layer"] == last) & (lens["direction"] == "promoted") & (lens["rank"] == 1)]
    assert len(top) == 4  # (all, first_3) x (a, b)
    assert (top["token_id"] == PLANTED).all(), top
    assert (lens.loc[lens["layer"] < last, "value"] == 0).all()  # upstream of the shift: exactly nothing
    assert (lens.loc[lens["layer"] < last, "delta_rms"] == 0).all()
    assert (res.layers.loc[res.layers["layer"] < last, "kl_ab"] == 0).all()
    assert res.layers.loc[res.layers["layer"] == last, "kl_ab"].iloc[0] > 0
    assert (res.positions["delta_logprob"][res.positions["next_token_id"] == PLANTED] > 0).all()


# -- families -----------------------------------------------------------------------------------------------
def hf_family(root: Path, family: str) -> tuple[Path, Path]:
    """A tiny model of a transformers config family and a perturbed copy, saved with the tokenizer."""
    vocab = len(tiny_tokenizer())
    small = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=vocab)
    cfg = {
        "gpt2": lambda: transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=vocab),
        "gpt_neox": lambda: transformers.GPTNeoXConfig(**small),
        "qwen2": lambda: transformers.Qwen2Config(**small, num_key_value_heads=2),
    }[family]()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(root / "a")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g) * p)
    model.save_pretrained(root / "b")
    for d in ("a", "b"):
        tiny_tokenizer().save_pretrained(root / d)
    return root / "a", root / "b"


FAMILIES = ["llama", "gpt2", "gpt_neox", "qwen2", "mistral", "granite", "nemotron_h"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family(tmp, family):
    if family in ("gpt2", "gpt_neox", "qwen2"):
        a, b = hf_family(tmp, family)
    else:
        size = dict(hidden_size=64, num_layers=4 if family == "nemotron_h" else 2)
        a = save_model(tmp / "a", family, seed=0, **size)
        b = save_model(tmp / "b", family, seed=0, perturb=0.05, **size)
    res = model_diff(a, b, {"p": PROMPTS[:3]}, device="cpu", progress=False, batch_size=2, lens_top=3)
    model, tok = load_model(a, device="cpu")
    from prism_analysis.activations import find_modules

    path, n_layers = find_modules(model)
    assert len(res.layers) == n_layers + 1
    n_tokens = sum(len(tok(t)["input_ids"]) for t in PROMPTS[:3])
    assert len(res.positions) == n_tokens and res.positions["kl_ab"].gt(0).any()
    assert np.isfinite(res.layers[["kl_ab", "kl_ba", "kl_a_to_output", "kl_b_to_output"]].values).all()
    assert res.layers["kl_a_to_output"].iloc[-1] == 0 and res.layers["kl_ab"].iloc[-1] > 0
    assert len(res.lens) == 2 * (n_layers + 1) * 2 * 2 * 3  # positions x layers x heads x directions x top
    assert 0 <= res.summary()["p"]["agreement"] <= 1
    # the last layer's lens is the model's logits
    from nnsight import NNsight

    ids = tok(PROMPTS[:2], return_tensors="pt", padding=True, padding_side="right")
    hidden, logits = forward_hidden(NNsight(model), path, n_layers, ids["input_ids"], ids["attention_mask"])
    with torch.no_grad():
        plain = model(**ids).logits
    torch.testing.assert_close(logits, plain)
    torch.testing.assert_close(logit_lens(model, hidden[n_layers]), plain, rtol=1e-5, atol=1e-5)


def test_base_plus_adapter_equals_the_merged_model(tmp):
    peft = pytest.importorskip("peft")
    from prism_analysis.tiny import build_model

    model = build_model("llama", **TINY)
    model.save_pretrained(tmp / "base")
    tiny_tokenizer().save_pretrained(tmp / "base")
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    wrapped.save_pretrained(tmp / "adapter")
    wrapped.merge_and_unload().save_pretrained(tmp / "merged")
    tiny_tokenizer().save_pretrained(tmp / "merged")
    probes = {"p": PROMPTS[:3]}
    lora = model_diff(tmp / "base", f"{tmp / 'base'}+{tmp / 'adapter'}", probes, device="cpu", progress=False)
    merged = model_diff(tmp / "base", tmp / "merged", probes, device="cpu", progress=False)
    pd.testing.assert_frame_equal(lora.positions, merged.positions)
    pd.testing.assert_frame_equal(lora.layers, merged.layers)
    assert lora.summary()["p"]["mean_kl"] > 0


# -- the CLI ---------------------------------------------------------------------------------------------
def test_cli_writes_outputs(models, capsys):
    out = models / "out"
    argv = ["diff", str(models / "base"), str(models / "near"), "--probe", str(models / "wiki.txt")]
    argv += ["--probe", str(models / "gsm8k.jsonl"), "--n", "5", "--bootstrap", "200", "--top", "7"]
    code = main([*argv, "--out", str(out), "--quiet", "--device", "cpu", "--batch-size", "2"])
    assert code == 0
    for f in ["summary.json", "positions.csv", "tokens.csv", "layers.csv", "lens.csv"]:
        assert (out / f).is_file(), f
    for f in ["diff_layers", "diff_lens"]:
        assert (out / f"{f}.png").is_file() and (out / f"{f}.pdf").is_file()
    s = json.loads((out / "summary.json").read_text())
    assert set(s) == {"wiki", "gsm8k", "_meta"} and "bootstrap" in s["_meta"]["interval"]
    for probe in ("wiki", "gsm8k"):
        v = s[probe]
        assert v["n_prompts"] == 5 and v["mean_kl_ci_low"] <= v["mean_kl"] <= v["mean_kl_ci_high"]
        assert 0 <= v["agreement"] <= 1 and v["mean_kl"] > 0
    tokens = pd.read_csv(out / "tokens.csv", keep_default_na=False)
    positions = pd.read_csv(out / "positions.csv")
    assert list(tokens.columns) == TOKEN_COLUMNS and list(positions.columns) == POSITION_COLUMNS
    for probe in ("wiki", "gsm8k"):
        t = tokens[tokens["probe"] == probe]
        assert len(t) == 7 and list(t["rank"]) == list(range(1, 8))
        assert (np.diff(t["kl_ab"].astype(float)) <= 0).all()
        mine = positions[positions["probe"] == probe]
        assert float(t["kl_ab"].iloc[0]) == pytest.approx(mine["kl_ab"].max(), rel=1e-12)
        assert float(mine["kl_ab"].mean()) == pytest.approx(s[probe]["mean_kl"], rel=1e-12)
    assert all(" | " in x for x in tokens["a_top"]) and tokens["context"].str.len().gt(0).all()
    assert list(pd.read_csv(out / "layers.csv").columns) == LAYER_COLUMNS
    lens = pd.read_csv(out / "lens.csv", keep_default_na=False)
    assert list(lens.columns) == LENS_COLUMNS and set(lens["positions"]) == {"all", "first_5"}
    printed = capsys.readouterr().out
    assert "KL(A||B)" in printed and "wrote" in printed


def test_cli_no_lens_on_models_of_different_depth(models, tmp):
    deep = save_model(tmp / "deep", "llama", num_layers=6)
    out = tmp / "out"
    argv = ["diff", str(models / "base"), str(deep), "--probe", str(models / "wiki.txt"), "--n", "3"]
    assert main([*argv, "--no-lens", "--out", str(out), "--quiet", "--device", "cpu", "--no-figure"]) == 0
    assert len(pd.read_csv(out / "layers.csv")) == 0 and len(pd.read_csv(out / "positions.csv")) > 3


@pytest.mark.parametrize("case", ["missing_probe", "vocab", "layer_count", "bad_ckpt", "lens_layers"])
def test_bad_input(models, tmp, capsys, case):
    a, b, probe = models / "base", models / "near", models / "wiki.txt"
    extra = []
    if case == "missing_probe":
        probe = tmp / "nope.txt"
    elif case == "vocab":
        b = save_model(tmp / "wide", "llama", vocab_size=2048)
    elif case == "layer_count":
        b = save_model(tmp / "deep", "llama", num_layers=6)
    elif case == "bad_ckpt":
        b = tmp / "broken"
        b.mkdir()
        (b / "model.safetensors").write_bytes(b"garbage")
    elif case == "lens_layers":
        extra = ["--lens-layers", "0,9"]
    out = tmp / "out"
    capsys.readouterr()
    code = main(
        ["diff", str(a), str(b), "--probe", str(probe), "--out", str(out), "--quiet", "--device", "cpu", *extra]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("prism: error: ") and "\n" not in err, err
    assert not out.exists()


def test_ratio_interval():
    sums, counts = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 1.0, 2.0, 2.0])
    low, high = ratio_interval(sums, counts, 2000, 0)
    assert low <= sums.sum() / counts.sum() <= high and low >= 1 and high <= 2
    assert np.isnan(ratio_interval([1.0], [1.0])[0])
    assert ratio_interval(sums, counts, 100, 3) == ratio_interval(sums, counts, 100, 3)


# -- the live tracker -----------------------------------------------------------------------------------------
def test_tracker_logs_the_output_divergence_from_theta0(tmp):
    from prism_analysis.tiny import build_model
    from prism_analysis.tracking import UpdateTracker

    model = build_model("llama", hidden_size=32, num_layers=2)
    tok = tiny_tokenizer()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tracker = UpdateTracker(model, every=2, probe=PROSE[:4], tokenizer=tok, out=tmp / "t", k_steps=(), divergence=True)
    ids = tok(PROSE[:4], return_tensors="pt", padding=True)["input_ids"]
    model.train()
    metrics = {}
    for step in range(1, 5):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        metrics |= tracker.step(step)
        assert model.training
    tracker.finish()
    curve = pd.read_csv(tmp / "t" / "divergence_curve.csv")
    assert list(curve.columns) == ["step", "probe", "mean_kl", "agreement"] and list(curve.step) == [0, 2, 4]
    at0 = curve[curve.step == 0].iloc[0]
    assert at0["mean_kl"] == 0 and at0["agreement"] == 1
    assert curve[curve.step == 4]["mean_kl"].iloc[0] > 0 and metrics["prism/kl/probe"] > 0
    # the same number as diffing theta_0 against the final model offline
    model0 = build_model("llama", hidden_size=32, num_layers=2)
    offline = diff_models(model0, model, tok, {"probe": PROSE[:4]}, lens=False, batch_size=8, max_length=256)
    assert offline.summary()["probe"]["mean_kl"] == pytest.approx(curve["mean_kl"].iloc[-1], rel=1e-9)


@pytest.mark.slow
def test_two_processes_equal_one(models, tmp):
    """--nproc 2: every per-position and per-layer number bit for bit; the difference lens up to the
    order of the ranks' float64 sums."""
    argv = ["diff", str(models / "base"), str(models / "near"), "--probe", str(models / "wiki.txt"), "--n", "7"]
    argv += ["--quiet", "--device", "cpu", "--no-figure", "--batch-size", "2"]
    assert main([*argv, "--out", str(tmp / "one")]) == 0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run(
        [sys.executable, "-m", "prism_cli", *argv, "--out", str(tmp / "two"), "--nproc", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    for f in ("positions.csv", "tokens.csv", "layers.csv"):
        assert (tmp / "one" / f).read_bytes() == (tmp / "two" / f).read_bytes(), f
    one, two = pd.read_csv(tmp / "one" / "lens.csv"), pd.read_csv(tmp / "two" / "lens.csv")
    np.testing.assert_allclose(one["value"], two["value"], rtol=1e-6, atol=1e-9)
    s = json.loads((tmp / "two" / "summary.json").read_text())
    assert s["_meta"]["world_size"] == 2
    assert s["wiki"] == json.loads((tmp / "one" / "summary.json").read_text())["wiki"]
