"""Activations captured with nnsight: every layer, every family, pooling and padding."""

import pytest
import torch
from helpers import PROSE, save_model, tiny_tokenizer
from torch import nn

from prism_analysis.representations.activations import _capture, _unwrap, collect_activations, find_modules
from prism_analysis.representations.model_loader import load_model
from prism_analysis.tiny import FAMILIES


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request, tmp_path_factory):
    path = save_model(tmp_path_factory.mktemp(request.param) / "ckpt", request.param)
    return load_model(path, device="cpu")


def final_norm(model):
    """The norm HF applies to the last block's output before ``hidden_states[-1]``."""
    if hasattr(model, "transformer"):  # GPT-2
        return model.transformer.ln_f
    return model.model.norm if hasattr(model.model, "norm") else model.model.norm_f


def assert_matches_hidden_states(model, tok, texts, pool):
    """Layer 0 is what the first block receives (HF's hidden_states[0]: GPT-2's token + position
    embeddings, Granite's scaled embedding), layers 1..L-1 are HF's hidden_states[1..L-1], and the
    last is the raw output of the last block (HF applies the final norm to hidden_states[L])."""
    acts = collect_activations(model, tok, texts, pool=pool, batch_size=len(texts))
    row = 0
    for text in texts:
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hs = model(ids, output_hidden_states=True).hidden_states
        assert acts.shape[0] == len(hs)
        rows = ids.shape[1] if pool == "tokens" else 1
        for layer in range(len(hs) - 1):
            want = hs[layer][0].float()
            if pool == "mean":
                want = want.mean(0, keepdim=True)
            torch.testing.assert_close(acts[layer, row : row + rows], want, rtol=1e-5, atol=1e-5)
        if pool == "tokens":
            with torch.no_grad():
                normed = final_norm(model)(acts[-1, row : row + rows][None])[0]
            torch.testing.assert_close(normed, hs[-1][0].float(), rtol=1e-4, atol=1e-4)
        row += rows
    assert row == acts.shape[1]


def test_captures_embedding_and_every_block(loaded):
    model, tok = loaded
    _, n_layers = find_modules(model)
    acts = collect_activations(model, tok, PROSE[:3], pool="tokens")
    assert acts.shape[0] == n_layers + 1
    assert_matches_hidden_states(model, tok, PROSE[:3], "tokens")


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=len(tiny_tokenizer()))
    path = tmp_path_factory.mktemp("gpt2") / "ckpt"
    GPT2LMHeadModel(config).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return load_model(path, device="cpu")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return load_model(save_model(tmp_path_factory.mktemp("llama") / "ckpt", "llama"), device="cpu")


@pytest.mark.parametrize("pool", ["tokens", "mean"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_layer_zero_is_what_the_first_block_receives(request, family, pool):
    """GPT-2's first block receives token + position embeddings; the token embedding alone is not it."""
    model, tok = request.getfixturevalue(family)
    texts = [PROSE[0], "Short one.", PROSE[2]]
    assert_matches_hidden_states(model, tok, texts, pool)
    one = collect_activations(model, tok, texts, pool=pool, batch_size=1)
    torch.testing.assert_close(
        collect_activations(model, tok, texts, pool=pool, batch_size=3), one, rtol=1e-4, atol=1e-4
    )


def test_batched_with_padding_equals_one_by_one(loaded):
    model, tok = loaded
    texts = [PROSE[0], "Short one.", PROSE[2] + " " + PROSE[3], "x"]
    for pool in ("mean", "last", "tokens"):
        one = collect_activations(model, tok, texts, pool=pool, batch_size=1)
        batched = collect_activations(model, tok, texts, pool=pool, batch_size=4)
        torch.testing.assert_close(batched, one, rtol=1e-4, atol=1e-4)
    mean = collect_activations(model, tok, texts, pool="mean")
    assert mean.shape[1] == len(texts)


def test_unwrap_never_takes_batch_element_zero_of_a_tensor():
    h = torch.randn(3, 5, 8)
    assert _unwrap(h) is h  # transformers >= 5: a tensor
    assert _unwrap((h, None)) is h  # transformers < 5: a tuple


def test_block_input_is_found_as_a_keyword_argument():
    """A block called as ``block(attention_mask=..., hidden_states=h)``: nnsight's ``.input`` (the
    first keyword) would be the mask; we take ``hidden_states``."""
    from nnsight import NNsight

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

        def forward(self, hidden_states, attention_mask=None):
            return self.proj(hidden_states)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.layers = nn.ModuleList([Block(), Block()])

        def forward(self, input_ids, attention_mask=None):
            h = 3.0 * self.embed(input_ids)
            for block in self.layers:
                h = block(attention_mask=attention_mask, hidden_states=h)
            return h

    model = Model()
    ids = torch.tensor([[1, 2, 3]])
    hidden = _capture(NNsight(model), "layers", 2, ids, torch.ones_like(ids))
    with torch.no_grad():
        first = 3.0 * model.embed(ids)
        torch.testing.assert_close(hidden[0], first)
        torch.testing.assert_close(hidden[2], model(ids))


def test_load_errors_are_one_line(tmp):
    from prism_analysis.errors import PrismError

    with pytest.raises(PrismError, match="no such file"):
        load_model(tmp / "missing")
    path = save_model(tmp / "m", "llama")
    for f in path.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(PrismError, match="tokenizer"):
        load_model(path)
