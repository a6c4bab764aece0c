"""The checkpoint pairs users really have (issue 24), each built the way users build them, from tiny
random transformers models saved to temporary directories: a resized vocabulary (grown, shrunk),
torch.compile'd and DDP-wrapped state dicts, a PEFT model saved without merging, a backbone against
a causal LM, a pickled state dict of a tied model, a bf16 base against an fp32 fine-tune.

Every number is checked against an independent float64 computation over exactly the tensors (and
rows) that should be compared, read back from the files with safetensors / torch.load.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from prism_analysis.errors import PrismError
from prism_analysis.weights.audit import audit
from prism_cli import main

TINY_LLAMA = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
TINY_GPT2 = dict(vocab_size=256, n_embd=32, n_layer=2, n_head=2, n_positions=64)


def llama(seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**(TINY_LLAMA | overrides))).eval()


def gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**TINY_GPT2)).eval()


@torch.no_grad()
def perturb(model, size: float = 0.01, seed: int = 1):
    """Seeded relative noise on every parameter (in place; a tied head moves with its embedding)."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(size * torch.randn(p.shape, generator=g) * p)
    return model


def stored(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory or file, as its files hold them."""
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if files:
            return {k: v for f in files for k, v in load_file(f).items()}
        path = path / "pytorch_model.bin"
    return torch.load(path, map_location="cpu", weights_only=True)


def reference(pairs: list[tuple[torch.Tensor, torch.Tensor]], tau: float = 0.01) -> dict:
    """Float64 normalized L2, fraction changed at tau and element count of tensor pairs."""
    d2 = a2 = changed = n = 0
    for a, b in pairs:
        a, b = a.double(), b.double()
        d2 += float(((b - a) ** 2).sum())
        a2 += float((a**2).sum())
        changed += int(((b - a).abs() > tau * a.abs()).sum())
        n += a.numel()
    return {"normalized_l2": math.sqrt(d2) / math.sqrt(a2), "fraction_changed": changed / n, "numel": n}


def check_total(res, pairs) -> None:
    ref = reference(pairs)
    total = res.total.iloc[0]
    assert total["numel"] == ref["numel"]
    assert total["normalized_l2"] == pytest.approx(ref["normalized_l2"], rel=1e-9)
    assert total["fraction_changed_0.01"] == pytest.approx(ref["fraction_changed"], abs=1e-12)


def run_cli(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


# -- 1. resized vocabulary ------------------------------------------------------------------------------
@pytest.mark.parametrize("new_vocab", [258, 250], ids=["grown", "shrunk"])
def test_resized_llama_vocabulary_compares_shared_rows(tmp_path, capsys, new_vocab):
    model = llama()
    model.save_pretrained(tmp_path / "a")
    model.resize_token_embeddings(new_vocab)
    perturb(model).save_pretrained(tmp_path / "b")
    A, B = stored(tmp_path / "a"), stored(tmp_path / "b")
    r = min(256, new_vocab)
    heads = ("model.embed_tokens.weight", "lm_head.weight")
    pairs = [(A[k][:r], B[k][:r]) if k in heads else (A[k], B[k]) for k in A]

    res = audit(tmp_path / "a", tmp_path / "b", progress=False, device="cpu")
    check_total(res, pairs)
    rows = res.tensors.set_index("name")
    for k in heads:
        assert rows.loc[k, "normalized_l2"] == pytest.approx(reference([(A[k][:r], B[k][:r])])["normalized_l2"], 1e-9)
        assert rows.loc[k, "shape"] == f"{r}x64"
        assert (rows.loc[k, "shape_a"], rows.loc[k, "shape_b"]) == ("256x64", f"{new_vocab}x64")
    s = res.summary()
    assert s["schema"] == "prism.audit/2"
    resized = {e["name"]: e for e in s["resized"]}
    assert set(resized) == set(heads)
    for k in heads:
        e = resized[k]
        assert e["rows"] == {"a": 256, "b": new_vocab} and e["rows_compared"] == r
        assert e["rows_only_in_a"] == 256 - r and e["rows_only_in_b"] == new_vocab - r
        assert e["norm_only_in_a"] == pytest.approx(float(A[k][r:].double().norm()), rel=1e-12)
        assert e["norm_only_in_b"] == pytest.approx(float(B[k][r:].double().norm()), rel=1e-12)
        assert e["component"] == ("embed" if "embed" in k else "lm_head")

    out = tmp_path / "out"
    code, err = run_cli(["audit", tmp_path / "a", tmp_path / "b", "--out", out, "--quiet", "--no-figure"], capsys)
    assert code == 0, err
    assert summary_of(out)["resized"] == s["resized"]
    csv = pd.read_csv(out / "tensors.csv").set_index("name")
    assert csv.loc["lm_head.weight", "shape_b"] == f"{new_vocab}x64"


def test_resized_gpt2_tied_vocabulary(tmp_path):
    """GPT-2 ties its head to wte: save_pretrained stores wte alone, grown with the vocabulary."""
    model = gpt2()
    model.save_pretrained(tmp_path / "a")
    model.resize_token_embeddings(260)
    perturb(model).save_pretrained(tmp_path / "b")
    A, B = stored(tmp_path / "a"), stored(tmp_path / "b")
    assert "lm_head.weight" not in A and B["transformer.wte.weight"].shape[0] == 260
    wte = "transformer.wte.weight"
    pairs = [(A[k][:256], B[k][:256]) if k == wte else (A[k], B[k]) for k in A]
    res = audit(tmp_path / "a", tmp_path / "b", progress=False, device="cpu")
    check_total(res, pairs)
    (e,) = res.summary()["resized"]
    assert e["name"] == wte and e["rows"] == {"a": 256, "b": 260} and e["rows_only_in_b"] == 4
    assert e["norm_only_in_b"] == pytest.approx(float(B[wte][256:].double().norm()), rel=1e-12)
    assert "lm_head.weight" not in set(res.tensors["name"])  # both tied: the embedding counts once


def test_resized_vocabulary_in_trajectory_compare_and_interpolate(tmp_path, capsys):
    from prism_analysis.weights.compare import compare_updates
    from prism_analysis.weights.trajectory import analyse_trajectory

    model = llama()
    model.save_pretrained(tmp_path / "s0")
    model.resize_token_embeddings(260)
    perturb(model, seed=1).save_pretrained(tmp_path / "s1")
    perturb(model, seed=2).save_pretrained(tmp_path / "s2")
    S = [stored(tmp_path / f"s{i}") for i in range(3)]
    heads = ("model.embed_tokens.weight", "lm_head.weight")

    def cut(state):
        return {k: v[:256] if k in heads else v for k, v in state.items()}

    S = [cut(s) for s in S]
    traj = analyse_trajectory([tmp_path / f"s{i}" for i in range(3)], progress=False, device="cpu")
    s = traj.summary()
    assert s["schema"] == "prism.trajectory/2"
    assert {e["name"]: e["rows"] for e in s["resized"]} == {k: {"0": 256, "1": 260, "2": 260} for k in heads}
    for t in (1, 2):
        ref = reference([(S[0][k], S[t][k]) for k in S[0]])
        got = traj.table.query("step == @t and component == 'total' and metric == 'normalized_l2'")["value"]
        assert float(got.iloc[0]) == pytest.approx(ref["normalized_l2"], rel=1e-9)

    cmp = compare_updates(
        tmp_path / "s0", tmp_path / "s1", tmp_path / "s0", tmp_path / "s2", progress=False, device="cpu"
    )
    u1 = torch.cat([(S[1][k].double() - S[0][k].double()).reshape(-1) for k in S[0]])
    u2 = torch.cat([(S[2][k].double() - S[0][k].double()).reshape(-1) for k in S[0]])
    cos = float(u1 @ u2 / (u1.norm() * u2.norm()))
    assert cmp.summary()["total"]["cosine"] == pytest.approx(cos, rel=1e-9)
    assert cmp.summary()["schema"] == "prism.compare/2"
    assert {e["name"] for e in cmp.summary()["resized"]} == set(heads)

    # interpolation refuses: rows only in mid/rl have no base value
    code, err = run_cli(
        [
            "interpolate",
            tmp_path / "s0",
            tmp_path / "s1",
            tmp_path / "s2",
            "--a",
            "1",
            "--b",
            "0",
            "--out",
            tmp_path / "i",
        ],
        capsys,
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "resized vocabulary" in lines[0] and "256 rows in base" in lines[0]
    assert not (tmp_path / "i").exists()


def test_genuine_shape_conflicts_stay_one_line_errors(tmp_path, capsys):
    llama().save_pretrained(tmp_path / "a")
    llama(hidden_size=32, intermediate_size=64).save_pretrained(tmp_path / "narrow")
    code, err = run_cli(["audit", tmp_path / "a", tmp_path / "narrow", "--quiet"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "shape" in lines[0] and "Traceback" not in err
    # an embedding with more rows AND another width is not a resized vocabulary
    cfg = {"model_type": "llama"}
    save = {"model.embed_tokens.weight": torch.ones(256, 64)}
    (tmp_path / "e1").mkdir()
    save_file(save, tmp_path / "e1" / "model.safetensors")
    (tmp_path / "e1" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "e2").mkdir()
    save_file({"model.embed_tokens.weight": torch.ones(258, 32)}, tmp_path / "e2" / "model.safetensors")
    (tmp_path / "e2" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PrismError, match=r"shape \[256, 64\] here but \[258, 32\]"):
        audit(tmp_path / "e1", tmp_path / "e2", progress=False)
    # a resized non-embedding tensor is not either
    (tmp_path / "m1").mkdir()
    save_file({"model.layers.0.mlp.up_proj.weight": torch.ones(8, 4)}, tmp_path / "m1" / "model.safetensors")
    (tmp_path / "m2").mkdir()
    save_file({"model.layers.0.mlp.up_proj.weight": torch.ones(9, 4)}, tmp_path / "m2" / "model.safetensors")
    with pytest.raises(PrismError, match="shape"):
        audit(tmp_path / "m1", tmp_path / "m2", progress=False)


# -- 2. wrapper prefixes ----------------------------------------------------------------------------------
def save_state_dict(state: dict, path: Path, config) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, path / "model.safetensors")
    config.save_pretrained(path)
    return path


def test_torch_compile_prefix_is_removed(tmp_path, capsys):
    model = llama()
    model.save_pretrained(tmp_path / "a")
    compiled = torch.compile(perturb(model))
    state = compiled.state_dict()
    assert all(k.startswith("_orig_mod.") for k in state)
    save_state_dict(state, tmp_path / "b", model.config)
    A, B = stored(tmp_path / "a"), stored(tmp_path / "b")
    res = audit(tmp_path / "a", tmp_path / "b", progress=False, device="cpu")
    check_total(res, [(A[k], B["_orig_mod." + k]) for k in A])
    s = res.summary()
    assert s["names"]["b"]["wrappers_removed"] == ["_orig_mod"] and s["names"]["b"]["tensors_renamed"] == len(A)
    assert s["names"]["a"]["wrappers_removed"] == [] and s["only_in_a"] == s["only_in_b"] == []
    out = tmp_path / "out"
    code, err = run_cli(["audit", tmp_path / "a", tmp_path / "b", "--out", out, "--quiet", "--no-figure"], capsys)
    assert code == 0, err
    csv = pd.read_csv(out / "tensors.csv").set_index("name")
    assert csv.loc["lm_head.weight", "name_b"] == "_orig_mod.lm_head.weight"


def test_ddp_prefix_is_removed(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model = llama()
    model.save_pretrained(tmp_path / "a")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", world_size=1, rank=0)
    try:
        state = DistributedDataParallel(perturb(model)).state_dict()
    finally:
        dist.destroy_process_group()
    assert all(k.startswith("module.") for k in state)
    save_state_dict(state, tmp_path / "b", model.config)
    A, B = stored(tmp_path / "a"), stored(tmp_path / "b")
    res = audit(tmp_path / "a", tmp_path / "b", progress=False, device="cpu")
    check_total(res, [(A[k], B["module." + k]) for k in A])
    assert res.summary()["names"]["b"]["wrappers_removed"] == ["module."]


def test_peft_model_saved_without_merging(tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    base = llama()
    base.save_pretrained(tmp_path / "base")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(llama(), lora)  # same seed: the base weights
    state = peft_model.state_dict()
    assert any(k.startswith("base_model.model.") and ".lora_A.default." in k for k in state)
    save_state_dict(state, tmp_path / "unmerged", base.config)

    # no adapter_config.json beside it: the factors cannot be scaled -> one line
    code, err = run_cli(["audit", tmp_path / "base", tmp_path / "unmerged", "--quiet"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "LoRA factors" in err and "merge_and_unload" in err

    peft_model.peft_config["default"].save_pretrained(tmp_path / "unmerged")  # adapter_config.json
    A, U = stored(tmp_path / "base"), stored(tmp_path / "unmerged")
    scale = 8 / 4
    merged = {}
    for k, w in A.items():
        module = k.removesuffix(".weight")
        key = f"base_model.model.{module}.lora_A.default.weight"
        if key in U:
            lo_a, lo_b = U[key].double(), U[key.replace("lora_A", "lora_B")].double()
            merged[k] = w.double() + scale * lo_b @ lo_a
        else:
            merged[k] = w.double()
    res = audit(tmp_path / "base", tmp_path / "unmerged", progress=False, device="cpu")
    ref = reference([(A[k], merged[k]) for k in A])
    total = res.total.iloc[0]
    assert total["numel"] == ref["numel"] == sum(v.numel() for v in A.values())
    assert total["normalized_l2"] == pytest.approx(ref["normalized_l2"], rel=1e-5)  # PEFT merges in float32
    rows = res.tensors.set_index("name")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert rows.loc[q, "normalized_l2"] == pytest.approx(reference([(A[q], merged[q])])["normalized_l2"], rel=1e-5)
    assert rows.loc["model.layers.0.mlp.up_proj.weight", "normalized_l2"] == 0
    s = res.summary()
    assert s["names"]["b"]["wrappers_removed"] == ["base_model.model."]
    assert len(s["names"]["b"]["lora_merged"]) == 4 and s["only_in_a"] == s["only_in_b"] == []


def test_backbone_against_causal_lm(tmp_path, capsys):
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    backbone = LlamaModel(LlamaConfig(**TINY_LLAMA))
    backbone.save_pretrained(tmp_path / "backbone")
    causal = llama(seed=5)
    causal.model.load_state_dict(backbone.state_dict())
    perturb(causal).save_pretrained(tmp_path / "causal")
    A, B = stored(tmp_path / "backbone"), stored(tmp_path / "causal")
    assert not any(k.startswith("model.") for k in A) and "lm_head.weight" in B
    for first, second, side in (
        (tmp_path / "backbone", tmp_path / "causal", "a"),
        (tmp_path / "causal", tmp_path / "backbone", "b"),
    ):
        res = audit(first, second, progress=False, device="cpu")
        pairs = [(A[k], B["model." + k]) for k in A]
        check_total(res, pairs if side == "a" else [(b, a) for a, b in pairs])
        s = res.summary()
        assert s["names"][side]["matched_under_prefix"] == "model."
        assert s["names"][side]["tensors_renamed"] == len(A)
        assert (s["only_in_b"] if side == "a" else s["only_in_a"]) == ["lm_head.weight"]
    out = tmp_path / "out"
    code, err = run_cli(
        ["audit", tmp_path / "backbone", tmp_path / "causal", "--out", out, "--quiet", "--no-figure"], capsys
    )
    assert code == 0, err
    assert summary_of(out)["names"]["a"]["matched_under_prefix"] == "model."


def test_ambiguous_names_are_an_error(tmp_path):
    (tmp_path / "bare").mkdir()
    save_file({"norm.weight": torch.ones(4)}, tmp_path / "bare" / "model.safetensors")
    (tmp_path / "two").mkdir()
    save_file(
        {"model.norm.weight": torch.ones(4), "transformer.norm.weight": torch.ones(4)},
        tmp_path / "two" / "model.safetensors",
    )
    with pytest.raises(PrismError, match="ambiguous"):
        audit(tmp_path / "bare", tmp_path / "two", progress=False)


def test_one_wrapper_list_for_every_reader():
    from prism_analysis.checkpoints import dcp, names
    from prism_analysis.checkpoints.names import unwrap
    from prism_analysis.tracking.snapshots import clean_name

    assert dcp.WRAPPER_COMPONENTS is names.WRAPPER_COMPONENTS
    assert clean_name("_orig_mod.model._fsdp_wrapped_module.layers.0.w") == "model.layers.0.w"
    u = unwrap(["module._orig_mod.a.weight", "module._orig_mod.b.weight"])
    assert u.names == {"module._orig_mod.a.weight": "a.weight", "module._orig_mod.b.weight": "b.weight"}
    assert u.removed == ["_orig_mod", "module."]
    with pytest.raises(PrismError, match="both name"):
        unwrap(["_orig_mod.a", "a"])


# -- 3. tensors stored twice ------------------------------------------------------------------------------
def test_pickled_tied_state_dict_counts_the_embedding_once(tmp_path, capsys):
    for name, model in (("a", gpt2()), ("b", perturb(gpt2()))):
        (tmp_path / name).mkdir()
        torch.save(model.state_dict(), tmp_path / name / "pytorch_model.bin")  # no config.json, as users do
    A, B = stored(tmp_path / "a"), stored(tmp_path / "b")
    assert A["lm_head.weight"].data_ptr() == A["transformer.wte.weight"].data_ptr()
    unique = [k for k in A if k != "lm_head.weight"]
    res = audit(tmp_path / "a", tmp_path / "b", progress=False, device="cpu", allow_pickle=True)
    check_total(res, [(A[k], B[k]) for k in unique])
    assert res.total.iloc[0]["numel"] == sum(p.numel() for p in gpt2().parameters())
    s = res.summary()
    assert s["folded"] == {
        "a": {"lm_head.weight": "transformer.wte.weight"},
        "b": {"lm_head.weight": "transformer.wte.weight"},
    }
    out = tmp_path / "out"
    code, err = run_cli(
        ["audit", tmp_path / "a", tmp_path / "b", "--allow-pickle", "--out", out, "--quiet", "--no-figure"], capsys
    )
    assert code == 0, err
    assert summary_of(out)["folded"]["b"] == {"lm_head.weight": "transformer.wte.weight"}
    # against a safetensors save (tied head left out) the pair aligns the same way
    gpt2().save_pretrained(tmp_path / "st")
    res2 = audit(tmp_path / "st", tmp_path / "b", progress=False, device="cpu", allow_pickle=True)
    assert res2.total.iloc[0]["numel"] == res.total.iloc[0]["numel"]


# -- 4. dtypes --------------------------------------------------------------------------------------------
def test_bf16_base_against_fp32_finetune(tmp_path, capsys):
    model = llama()
    model.to(torch.bfloat16).save_pretrained(tmp_path / "a")
    model = llama()
    perturb(model).save_pretrained(tmp_path / "b")
    A, B = stored(tmp_path / "a"), stored(tmp_path / "b")
    assert A["lm_head.weight"].dtype == torch.bfloat16 and B["lm_head.weight"].dtype == torch.float32
    res = audit(tmp_path / "a", tmp_path / "b", progress=False, device="cpu")
    check_total(res, [(A[k], B[k]) for k in A])  # exact: bf16 values promoted, never B cast down
    s = res.summary()
    n = sum(v.numel() for v in A.values())
    assert len(s["cast"]) == len(A)
    assert s["fraction_equal_undefined"]["tensors"] == [c["name"] for c in s["cast"]]
    assert s["fraction_equal_undefined"]["numel"] == n and "dtypes differ" in s["fraction_equal_undefined"]["reason"]
    assert math.isnan(s["total"]["fraction_equal"]) and s["total"]["fraction_equal_numel"] == 0  # not 0.0
    out = tmp_path / "out"
    code, err = run_cli(["audit", tmp_path / "a", tmp_path / "b", "--out", out, "--quiet", "--no-figure"], capsys)
    assert code == 0, err
    written = summary_of(out)
    assert written["total"]["fraction_equal"] is None and written["components"]["attn_q"]["fraction_equal"] is None
    csv = pd.read_csv(out / "tensors.csv")
    assert csv["fraction_equal"].isna().all()
    assert csv["fraction_equal_note"].str.startswith("undefined: dtypes differ (bfloat16 vs float32)").all()
    assert pd.read_csv(out / "components.csv")["fraction_equal"].isna().all()


def test_mixed_dtypes_fraction_equal_is_over_matching_tensors_only(tmp_path):
    model = llama()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    low = {k: v.to(torch.bfloat16) if "mlp" in k else v for k, v in state.items()}
    save_state_dict(low, tmp_path / "a", model.config)
    save_state_dict(state, tmp_path / "b", model.config)
    res = audit(tmp_path / "a", tmp_path / "b", progress=False, device="cpu")
    same = sum(v.numel() for k, v in state.items() if "mlp" not in k)
    total = res.summary()["total"]
    assert total["fraction_equal_numel"] == same and total["fraction_equal"] == 1.0  # over float32 tensors only
    assert set(res.summary()["fraction_equal_undefined"]["tensors"]) == {k for k in state if "mlp" in k}


# -- tracking ---------------------------------------------------------------------------------------------
def test_tracking_through_a_resized_vocabulary(tmp_path):
    from prism_analysis.tracking.tracker import UpdateTracker

    model = llama()
    e0 = model.model.embed_tokens.weight.detach().clone()
    tracker = UpdateTracker(model, every=1, out=tmp_path / "t", k_steps=())
    perturb(model, seed=1)
    tracker.step(1)
    model.resize_token_embeddings(260)
    perturb(model, seed=2)
    tracker.step(2)
    tracker.finish(2)
    e2 = model.model.embed_tokens.weight.detach()
    s = summary_of(tmp_path / "t")
    assert s["schema"] == "prism.trajectory/2"
    assert {e["name"]: e["rows"] for e in s["resized"]} == {
        "model.embed_tokens.weight": {"reference": 256, "now": 260},
        "lm_head.weight": {"reference": 256, "now": 260},
    }
    t = pd.read_csv(tmp_path / "t" / "trajectory.csv")
    got = t.query("step == 2 and component == 'embed' and metric == 'normalized_l2'")["value"].iloc[0]
    assert got == pytest.approx(reference([(e0, e2[:256])])["normalized_l2"], rel=1e-9)


def test_schema_versions():
    from prism_analysis.representations.model_cka import COLUMNS, SCHEMA

    assert SCHEMA == "prism.cka/2" and "ci_low" not in COLUMNS and "cka_ci_low" in COLUMNS
