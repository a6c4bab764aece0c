"""Reading, aligning and streaming checkpoints; every bad input is a PrismError naming the file."""

import json

import pytest
import torch
from helpers import model_state, peak_rss_growth, save_state
from safetensors.torch import save_file

from prism_analysis.checkpoints.align import align
from prism_analysis.checkpoints.local import Checkpoint
from prism_analysis.checkpoints.stream import stream_aligned
from prism_analysis.errors import PrismError
from prism_analysis.weights.audit import audit


@pytest.fixture
def pair(tmp):
    state, config = model_state("llama")
    save_state(state, tmp / "a", config)
    save_state({k: v * 1.5 for k, v in state.items()}, tmp / "b", config, shards=3)
    return tmp / "a", tmp / "b", state


def test_single_sharded_and_file_give_the_same_tensors(pair, tmp):
    a, b, state = pair
    ca, cb, cf = Checkpoint(a), Checkpoint(b), Checkpoint(a / "model.safetensors")
    assert set(ca.names) == set(cb.names) == set(cf.names) == set(state)
    assert ca.architecture == "llama"
    for name in ["model.embed_tokens.weight", "model.layers.3.mlp.down_proj.weight"]:
        assert torch.equal(ca.get(name), state[name])
        assert torch.equal(cb.get(name), state[name] * 1.5)
    assert ca.nbytes == sum(v.nbytes for v in state.values())


def test_every_dtype_safetensors_knows_reads_and_audits(tmp):
    """Every torch dtype safetensors can store reads back, and audits (integers compared exactly)."""
    dtypes = [
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.uint16,
        torch.uint32,
        torch.uint64,
        torch.bool,
        torch.float8_e4m3fn,
        torch.float8_e5m2,
    ]
    a = {f"w_{str(dt)[6:]}": torch.arange(6).to(dt) for dt in dtypes}
    b = {k: v.clone() for k, v in a.items()}
    b["w_uint16"][0] = 7
    save_state(a, tmp / "a")
    save_state(b, tmp / "b")
    ck = Checkpoint(tmp / "a")
    for name, value in a.items():
        assert ck.info(name).dtype == value.dtype and torch.equal(ck.get(name), value), name
    res = audit(tmp / "a", tmp / "b", progress=False, device="cpu")
    rows = res.tensors.set_index("name")
    assert rows.loc["w_uint16", "n_changed_0.01"] == 1 and rows.loc["w_uint16", "max_abs_diff"] == 7
    assert rows.drop(index="w_uint16")["fraction_equal"].eq(1.0).all()


def test_stream_aligned_yields_in_order(pair):
    a, b, state = pair
    ca, cb = Checkpoint(a), Checkpoint(b)
    names = list(state)
    seen = [(n, torch.equal(x * 1.5, y)) for n, (x, y) in stream_aligned([ca, cb], names, progress=False, prefetch=2)]
    assert [n for n, _ in seen] == names and all(ok for _, ok in seen)


def test_one_sided_tensors_are_reported_not_fatal(tmp):
    state, config = model_state("llama")
    extra = dict(state, **{"model.extra.weight": torch.ones(3)})
    less = {k: v for k, v in state.items() if k != "model.layers.0.mlp.up_proj.weight"}
    save_state(extra, tmp / "a", config)
    save_state(less, tmp / "b", config)
    res = audit(tmp / "a", tmp / "b", progress=False)
    assert res.only_in_a == ["model.extra.weight", "model.layers.0.mlp.up_proj.weight"]
    assert res.only_in_b == []
    assert len(res.tensors) == len(less)


def test_tied_head_is_matched_to_the_stored_embedding(tmp):
    state, config = model_state("llama")
    tied = {k: v for k, v in state.items() if k != "lm_head.weight"}
    save_state(tied, tmp / "tied", dict(config, tie_word_embeddings=True))
    untied = dict(state, **{"lm_head.weight": state["model.embed_tokens.weight"] * 1.02})
    save_state(untied, tmp / "untied", dict(config, tie_word_embeddings=False))
    al = align(Checkpoint(tmp / "tied"), Checkpoint(tmp / "untied"))
    assert al.tied == ["lm_head.weight"] and "lm_head.weight" in al.common
    assert al.only_in_a == al.only_in_b == []
    res = audit(tmp / "tied", tmp / "untied", progress=False)
    head = res.tensors.set_index("name").loc["lm_head.weight"]
    assert head["normalized_l2"] == pytest.approx(0.02, rel=1e-6)
    # both tied: the embedding is compared once, no phantom head
    al2 = align(Checkpoint(tmp / "tied"), Checkpoint(tmp / "tied"))
    assert "lm_head.weight" not in al2.common and al2.tied == []


def expect_error(fn, path_part, problem_part):
    with pytest.raises(PrismError) as e:
        fn()
    msg = str(e.value)
    assert path_part in msg and problem_part in msg and "\n" not in msg, msg
    return msg


def test_bad_inputs(tmp, pair):
    a, b, _ = pair
    expect_error(lambda: Checkpoint(tmp / "nope"), "nope", "no such file")
    (tmp / "empty_dir").mkdir()
    expect_error(lambda: Checkpoint(tmp / "empty_dir"), "empty_dir", "no model.safetensors")
    # truncated
    data = (a / "model.safetensors").read_bytes()
    (tmp / "trunc").mkdir()
    (tmp / "trunc" / "model.safetensors").write_bytes(data[: len(data) // 2])
    expect_error(lambda: Checkpoint(tmp / "trunc"), "trunc/model.safetensors", "truncated")
    # garbage
    (tmp / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    expect_error(lambda: Checkpoint(tmp / "garbage.safetensors"), "garbage.safetensors", "corrupt")
    # index naming a missing shard
    (b / "model-00002-of-00003.safetensors").rename(tmp / "moved.safetensors")
    expect_error(lambda: Checkpoint(b), "model.safetensors.index.json", "model-00002-of-00003.safetensors")
    # empty checkpoint
    (tmp / "zero").mkdir()
    save_file({}, tmp / "zero" / "model.safetensors")
    expect_error(lambda: Checkpoint(tmp / "zero"), "zero", "no tensors")
    # not a checkpoint file
    (tmp / "notes.txt").write_text("hi")
    expect_error(lambda: Checkpoint(tmp / "notes.txt"), "notes.txt", "not a checkpoint")


def test_shape_mismatch_and_architecture_mismatch(tmp):
    state, config = model_state("llama")
    save_state(state, tmp / "a", config)
    bad = dict(state, **{"model.layers.0.mlp.up_proj.weight": torch.zeros(3, 3)})
    save_state(bad, tmp / "b", config)
    expect_error(lambda: audit(tmp / "a", tmp / "b", progress=False), "model.layers.0.mlp.up_proj.weight", "shape")
    other_state, other_cfg = model_state("nemotron_h")
    save_state(other_state, tmp / "c", other_cfg)
    expect_error(lambda: audit(tmp / "a", tmp / "c", progress=False), "c", "different architectures")
    save_state({"x": torch.ones(2)}, tmp / "d")
    expect_error(lambda: audit(tmp / "a", tmp / "d", progress=False), "a", "no tensor names in common")


def test_pickle_refused_by_default_and_weights_only_when_allowed(tmp):
    state, config = model_state("llama")
    (tmp / "p").mkdir()
    torch.save(state, tmp / "p" / "pytorch_model.bin")
    (tmp / "p" / "config.json").write_text(json.dumps(config))
    msg = expect_error(lambda: Checkpoint(tmp / "p"), "pytorch_model.bin", "refusing to unpickle")
    assert "allow_pickle" in msg and "safetensors" in msg  # the Python parameter (the CLI shows --allow-pickle)
    save_state(state, tmp / "s", config)
    res = audit(tmp / "p", tmp / "s", progress=False, allow_pickle=True)
    assert res.stats["total"].compute()["normalized_l2"] == 0.0

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"w": torch.ones(2), "evil": Evil()}, tmp / "evil.bin")
    expect_error(lambda: Checkpoint(tmp / "evil.bin", allow_pickle=True), "evil.bin", "cannot load pickle")


def test_peak_memory_is_bounded_by_a_few_tensors_not_the_checkpoint(tmp):
    """Audit a 2 x 256 MiB pair made of 4 MiB tensors: extra resident memory stays far below it."""
    g = torch.Generator().manual_seed(0)
    n_tensors, numel = 64, 1 << 20
    state = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(numel, generator=g) for i in range(n_tensors)}
    save_state(state, tmp / "a")
    save_state({k: v * 1.001 for k, v in state.items()}, tmp / "b")
    del state
    res, extra = peak_rss_growth(lambda: audit(tmp / "a", tmp / "b", progress=False, device="cpu"))
    pair_bytes = 2 * n_tensors * numel * 4
    assert res.stats["total"].numel == n_tensors * numel
    # one pair in float64 work buffers (~10 x 4 MiB) + prefetch: far below the 512 MiB pair
    assert extra < pair_bytes / 4, f"extra RSS {extra / 2**20:.0f} MiB for a {pair_bytes / 2**20:.0f} MiB pair"


def test_each_header_is_parsed_once_whatever_the_tensor_count(tmp, monkeypatch):
    """Linear time in the number of tensors: opening and streaming a checkpoint reads each file's
    header once (re-parsing it for every tensor made 20,000 tensors take >600 s)."""
    import safetensors

    from prism_analysis.checkpoints import stream as reader

    n = 3000  # MoE-like: many small tensors, in 2 shards
    state = {f"model.layers.{i // 100}.mlp.experts.{i % 100}.w1.weight": torch.full((4,), float(i)) for i in range(n)}
    save_state(state, tmp / "a", shards=2)
    save_state({k: v + 1 for k, v in state.items()}, tmp / "b", shards=2)
    opened = []
    original = safetensors.safe_open
    monkeypatch.setattr(safetensors, "safe_open", lambda *a, **k: opened.append(a[0]) or original(*a, **k))
    ca, cb = Checkpoint(tmp / "a"), Checkpoint(tmp / "b")
    seen = sum(torch.equal(x + 1, y) for _, (x, y) in reader.stream_aligned([ca, cb], ca.names, progress=False))
    assert seen == n
    assert len(opened) == 4, "two shards per checkpoint, each header read once"


def test_a_tied_head_counts_once_whatever_the_file_format(tmp):
    """pytorch_model.bin keeps a copy of a tied lm_head, safetensors leaves it out: the audit must
    count the embedding once either way (it counted 104,960 elements instead of 104,576)."""
    import shutil

    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256))
    model.save_pretrained(tmp / "safetensors")
    (tmp / "bin").mkdir()
    torch.save(model.state_dict(), tmp / "bin" / "pytorch_model.bin")
    shutil.copy(tmp / "safetensors" / "config.json", tmp / "bin" / "config.json")
    assert "lm_head.weight" in torch.load(tmp / "bin" / "pytorch_model.bin", weights_only=True)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.01)
    model.save_pretrained(tmp / "later")
    st = audit(tmp / "safetensors", tmp / "later", progress=False, device="cpu")
    for first, second in [(tmp / "bin", tmp / "later"), (tmp / "later", tmp / "bin")]:
        res = audit(first, second, progress=False, device="cpu", allow_pickle=True)
        assert res.summary()["total"]["numel"] == st.summary()["total"]["numel"]
        assert res.summary()["total"]["normalized_l2"] == pytest.approx(
            audit(tmp / "later", tmp / "safetensors", progress=False, device="cpu").summary()["total"]["normalized_l2"]
            if first == tmp / "later"
            else st.summary()["total"]["normalized_l2"],
            rel=1e-12,
        )
        assert "lm_head" not in set(res.tensors["component"]), "the head is the embedding, counted once"
