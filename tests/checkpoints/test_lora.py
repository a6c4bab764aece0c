"""BASE+ADAPTER: a PEFT LoRA adapter merged one tensor at a time is bitwise PEFT's merge_and_unload()."""

import json
import shutil

import pandas as pd
import pytest
import torch
from helpers import peak_rss_growth, save_state
from safetensors.torch import load_file, save_file

from prism_analysis.checkpoints.local import Checkpoint
from prism_analysis.checkpoints.lora import LoraCheckpoint
from prism_analysis.checkpoints.opening import open_checkpoint, open_lora
from prism_analysis.errors import PrismError
from prism_analysis.weights.audit import audit
from prism_cli import main

peft = pytest.importorskip("peft")
QV = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])


def make_lora(tmp, model=None, dtype=torch.float32, safe=True, **lora):
    """Save a tiny model (``tmp/base``), a LoRA adapter of it with random factors (``tmp/adapter``;
    PEFT starts B at zero) and PEFT's merge of the two (``tmp/merged``)."""
    from prism_analysis.tiny import build_model

    model = model if model is not None else build_model("llama", dtype=dtype)
    model.save_pretrained(tmp / "base")
    wrapped = peft.get_peft_model(model, peft.LoraConfig(**lora))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    wrapped.save_pretrained(tmp / "adapter", safe_serialization=safe)
    wrapped.merge_and_unload().save_pretrained(tmp / "merged")
    return tmp / "base", tmp / "adapter", tmp / "merged"


def assert_same_as_peft(base, adapter, merged, allow_pickle=False, audits=False) -> LoraCheckpoint:
    """Every tensor bitwise PEFT's merge, in the same dtype (and, with ``audits``, the audits identical:
    they follow from the tensors, so only a few tests spend the time)."""
    lora, peft_merged = open_lora(base, adapter, allow_pickle=allow_pickle), Checkpoint(merged)
    assert lora.names == peft_merged.names
    for name in lora.names:
        ours, theirs = lora.get(name), peft_merged.get(name)
        assert ours.dtype == theirs.dtype == lora.info(name).dtype, name
        assert torch.equal(ours, theirs), name
    if not audits:
        return lora
    ours = audit(base, lora, progress=False, device="cpu")
    theirs = audit(base, merged, progress=False, device="cpu")
    pd.testing.assert_frame_equal(ours.tensors, theirs.tensors, check_exact=True)
    pd.testing.assert_frame_equal(ours.total, theirs.total, check_exact=True)
    return lora


def test_merged_tensors_and_audit_are_peft_merge_and_unload(tmp):
    base, adapter, merged = make_lora(tmp, **QV)
    lora = assert_same_as_peft(base, adapter, merged, audits=True)
    assert str(lora.path) == f"{base}+{adapter}"
    rows = audit(base, lora, progress=False, device="cpu").tensors.set_index("name")
    targeted = rows.index.str.contains(r"\.(?:q|v)_proj\.weight$")
    assert sorted(lora.changed) == sorted(rows.index[targeted]) and targeted.sum() == 8
    assert (rows.loc[targeted, "normalized_l2"] > 0).all() and (rows.loc[targeted, "fraction_equal"] < 1).all()
    assert (rows.loc[~targeted, "fraction_equal"] == 1.0).all() and (rows.loc[~targeted, "max_abs_diff"] == 0).all()
    base_ck = Checkpoint(base)
    for name in rows.index[~targeted]:
        assert torch.equal(lora.get(name), base_ck.get(name)), name


def test_update_is_scale_times_b_a(tmp):
    """The formula, independently of PEFT: W + (lora_alpha / r) B A, summed in float64."""
    base, adapter, _ = make_lora(tmp, **QV)
    name = "model.layers.2.self_attn.v_proj.weight"
    factors = load_file(adapter / "adapter_model.safetensors")
    a = factors["base_model.model.model.layers.2.self_attn.v_proj.lora_A.weight"].double()
    b = factors["base_model.model.model.layers.2.self_attn.v_proj.lora_B.weight"].double()
    expected = Checkpoint(base).get(name).double() + (8 / 4) * b @ a
    torch.testing.assert_close(open_lora(base, adapter).get(name).double(), expected, rtol=1e-6, atol=1e-7)


def test_rslora(tmp):
    base, adapter, merged = make_lora(tmp, use_rslora=True, **QV)
    assert_same_as_peft(base, adapter, merged)


def test_bf16_base_with_fp32_adapter(tmp):
    """PEFT keeps the factors in float32 on a bf16 base; the sum is float32, rounded to bf16."""
    base, adapter, merged = make_lora(tmp, dtype=torch.bfloat16, **QV)
    assert Checkpoint(base).info("model.layers.0.self_attn.q_proj.weight").dtype == torch.bfloat16
    assert (
        load_file(adapter / "adapter_model.safetensors")[
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
        ].dtype
        == torch.float32
    )
    assert_same_as_peft(base, adapter, merged)


def test_gpt2_conv1d_fan_in_fan_out(tmp):
    """GPT-2's Conv1D stores W as in x out: ΔW is transposed (square c_proj included)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=256))
    base, adapter, merged = make_lora(tmp, model, r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"])
    assert json.loads((adapter / "adapter_config.json").read_text())["fan_in_fan_out"] is True  # set by PEFT
    lora = assert_same_as_peft(base, adapter, merged, audits=True)
    assert len(lora.changed) == 6  # c_attn, attn.c_proj (64 x 64), mlp.c_proj per block


def test_embedding_lora_modules_to_save_and_patterns(tmp):
    """Embedding LoRA (with the base_layer PEFT saves beside it), modules_to_save, rank/alpha patterns."""
    base, adapter, merged = make_lora(
        tmp,
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "o_proj", "embed_tokens"],
        modules_to_save=["lm_head"],
        rank_pattern={"layers.1.self_attn.q_proj": 8},
        alpha_pattern={"o_proj": 32},
    )
    lora = assert_same_as_peft(base, adapter, merged)
    assert "model.embed_tokens.weight" in lora.changed and "lm_head.weight" in lora.changed
    assert lora.weights.info("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight").shape[0] == 8


def test_lora_bias(tmp):
    """lora_bias: B's bias b adds scale * b to the base bias."""
    from prism_analysis.tiny import build_model

    base, adapter, merged = make_lora(tmp, build_model("llama", attention_bias=True), lora_bias=True, **QV)
    lora = assert_same_as_peft(base, adapter, merged)
    assert "model.layers.3.self_attn.v_proj.bias" in lora.changed and len(lora.changed) == 16


def test_pickled_adapter_only_with_allow_pickle(tmp):
    base, adapter, merged = make_lora(tmp, safe=False, **QV)
    assert (adapter / "adapter_model.bin").is_file() and not (adapter / "adapter_model.safetensors").exists()
    expect_error(lambda: open_lora(base, adapter), "adapter_model.bin", "refusing to unpickle")
    assert_same_as_peft(base, adapter, merged, allow_pickle=True)


def expect_error(fn, path_part, problem_part):
    with pytest.raises(PrismError) as e:
        fn()
    msg = str(e.value)
    assert path_part in msg and problem_part in msg and "\n" not in msg, msg
    return msg


@pytest.fixture
def plain(tmp):
    return make_lora(tmp, **QV)


def edit_adapter(src, dst, config=None, tensors=None):
    """A copy of adapter ``src`` with some config fields and tensors changed (None deletes)."""
    shutil.copytree(src, dst)
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg.update(config or {})
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    state = load_file(src / "adapter_model.safetensors")
    for k, v in (tensors or {}).items():
        if v is None:
            del state[k]
        else:
            state[k] = v
    save_file(state, dst / "adapter_model.safetensors")
    return dst


Q0 = "base_model.model.model.layers.0.self_attn.q_proj"
NOPE = "base_model.model.model.layers.0.self_attn.nope_proj"


@pytest.mark.parametrize(
    "config, tensors, path_part, problem",
    [
        (
            None,
            {NOPE + ".lora_A.weight": torch.zeros(4, 128), NOPE + ".lora_B.weight": torch.zeros(128, 4)},
            NOPE,
            "matches no",
        ),
        (None, {"base_model.model.model.extra.weight": torch.zeros(3)}, "model.extra.weight", "matches no tensor"),
        (None, {"model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 128)}, "adapter", "does not start"),
        (None, {Q0 + ".lora_B.weight": None}, Q0.removeprefix("base_model.model."), "not a LoRA pair"),
        (None, {Q0 + ".lora_A.weight": torch.zeros(4, 64)}, "q_proj", "makes [128, 64]"),
        ({"r": 8}, None, "q_proj", "the rank is 8"),
        ({"use_dora": True}, None, "adapter_config.json", "DoRA adapters are not supported"),
        ({"init_lora_weights": "pissa"}, None, "adapter_config.json", "init_lora_weights='pissa'"),
        ({"peft_type": "IA3"}, None, "adapter_config.json", "not LoRA"),
        ({"lora_alpha": "8"}, None, "adapter_config.json", "lora_alpha must be a positive number"),
        ({"rank_pattern": {"q_proj": 0}}, None, "adapter_config.json", "rank_pattern must map"),
    ],
)
def test_bad_adapters_are_one_line_errors(plain, tmp, config, tensors, path_part, problem):
    base, adapter, _ = plain
    bad = edit_adapter(adapter, tmp / "bad", config, tensors)
    expect_error(lambda: open_lora(base, bad), path_part, problem)


def test_dora_adapter_from_peft_is_refused(tmp):
    base, adapter, _ = make_lora(tmp, use_dora=True, **QV)
    expect_error(lambda: open_lora(base, adapter), "adapter_config.json", "DoRA")


def test_missing_adapter_files(plain, tmp):
    base, adapter, _ = plain
    (tmp / "empty").mkdir()
    expect_error(lambda: open_lora(base, tmp / "empty"), "empty", "no adapter_config.json")
    shutil.copytree(adapter, tmp / "nofile")
    (tmp / "nofile" / "adapter_model.safetensors").unlink()
    expect_error(lambda: open_lora(base, tmp / "nofile"), "nofile", "no adapter_model.safetensors")


def test_open_checkpoint_reads_base_plus_adapter(plain, tmp):
    base, adapter, _ = plain
    ck = open_checkpoint(f"{base}+{adapter}")
    assert isinstance(ck, LoraCheckpoint) and str(ck.path) == f"{base}+{adapter}"
    assert open_checkpoint(ck) is ck
    opened = Checkpoint(base)
    assert open_lora(opened, adapter).base is opened
    assert type(open_checkpoint(base)) is Checkpoint
    # a path that exists as a whole is a path, '+' or not
    shutil.copytree(base, tmp / f"base+{adapter.name}")
    assert type(open_checkpoint(tmp / f"base+{adapter.name}")) is Checkpoint
    # BASE+DIR where DIR is no adapter: one line naming DIR
    expect_error(lambda: open_checkpoint(f"{base}+{tmp / 'merged'}"), "merged", "no adapter_config.json")


def test_cli_audit_base_against_base_plus_adapter(plain, tmp, capsys):
    base, adapter, merged = plain
    out = tmp / "out"
    assert main(["audit", str(base), f"{base}+{adapter}", "--out", str(out), "--quiet", "--no-figure"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["b"] == f"{base}+{adapter}"
    changed = {c for c, m in s["components"].items() if m["fraction_equal"] < 1}
    assert changed == {"attn_q", "attn_v"}, s["components"].keys()
    peft_audit = audit(base, merged, progress=False, device="cpu").summary()
    assert s["total"] == peft_audit["total"]
    capsys.readouterr()
    assert main(["audit", str(base), f"{base}+{tmp / 'merged'}", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no adapter_config.json" in err and len(err.strip().splitlines()) == 1


def test_out_may_not_hold_the_base_or_the_adapter(plain, tmp):
    """--out is checked against both halves of BASE+ADAPTER: a previous audit output holding the
    adapter is refused, not replaced (which would delete the adapter)."""
    base, adapter, _ = plain
    out = tmp / "out"
    assert main(["audit", str(base), str(base), "--out", str(out), "--quiet", "--no-figure"]) == 0
    shutil.move(adapter, out / "adapter")
    assert main(["audit", str(base), f"{base}+{out / 'adapter'}", "--out", str(out), "--quiet"]) == 2
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_peak_memory_is_one_tensor_not_the_merged_model(tmp):
    """Audit a 256 MiB base against itself + a LoRA on every tensor: the merged model (256 MiB more)
    is never materialised; extra resident memory stays at a few tensors."""
    g = torch.Generator().manual_seed(0)
    n_tensors, side, r = 64, 1024, 8
    modules = [f"model.layers.{i}.mlp.up_proj" for i in range(n_tensors)]
    save_state({f"{m}.weight": torch.randn(side, side, generator=g) for m in modules}, tmp / "base")
    (tmp / "adapter").mkdir()
    factors = {}
    for m in modules:
        factors[f"base_model.model.{m}.lora_A.weight"] = torch.randn(r, side, generator=g)
        factors[f"base_model.model.{m}.lora_B.weight"] = 0.01 * torch.randn(side, r, generator=g)
    save_file(factors, tmp / "adapter" / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": ["up_proj"]}
    (tmp / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    del factors
    base = tmp / "base"
    audit(base, base, progress=False, device="cpu")  # warm up: numba's kernels load on first use (~100 MiB)
    res, extra = peak_rss_growth(lambda: audit(base, open_lora(base, tmp / "adapter"), progress=False, device="cpu"))
    model_bytes = n_tensors * side * side * 4
    assert res.stats["total"].numel == n_tensors * side * side
    assert (res.tensors["fraction_equal"] < 1).all()
    # the pairs in flight and the merge's temporaries, a few 4 MiB tensors (~34 MiB measured; 94 MiB
    # before the merge wrote in place): far below the 256 MiB merged model
    assert extra < model_bytes / 4, f"extra RSS {extra / 2**20:.0f} MiB for a {model_bytes / 2**20:.0f} MiB model"


def test_commands_that_run_the_model_load_base_plus_adapter(tmp):
    """cka and eval take BASE+ADAPTER too: the model they run is PEFT's merged model, bit for bit."""
    from helpers import tiny_tokenizer

    from prism_analysis.representations.model_loader import load_model

    base, adapter, merged = make_lora(tmp, **QV)
    tiny_tokenizer().save_pretrained(base)
    ours, _ = load_model(f"{base}+{adapter}", device="cpu", progress=False)
    theirs, _ = load_model(merged, device="cpu", tokenizer=base, progress=False)
    a, b = ours.state_dict(), theirs.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
