"""Activations captured with nnsight: every layer, every family, pooling and padding."""

import pytest
import torch
from helpers import PROSE, save_model

from prism_analysis.activations import _unwrap, collect_activations, find_modules
from prism_analysis.model_loader import load_model
from prism_train.models import FAMILIES


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request, tmp_path_factory):
    path = save_model(tmp_path_factory.mktemp(request.param) / "ckpt", request.param)
    return load_model(path, device="cpu")


def test_captures_embedding_and_every_block(loaded):
    model, tok = loaded
    _, _, n_layers = find_modules(model)
    texts = PROSE[:3]
    acts = collect_activations(model, tok, texts, pool="tokens")
    ids = tok(texts[0], return_tensors="pt")["input_ids"]
    hs = model(ids, output_hidden_states=True).hidden_states
    n0 = ids.shape[1]
    assert acts.shape[0] == n_layers + 1 == len(hs)
    # embedding output and every block output but the last equal HF's hidden_states
    scale = getattr(model.config, "embedding_multiplier", 1.0)  # Granite scales the embedding output
    torch.testing.assert_close(acts[0, :n0] * scale, hs[0][0].float(), rtol=1e-5, atol=1e-5)
    for layer in range(1, n_layers):
        torch.testing.assert_close(acts[layer, :n0], hs[layer][0].float(), rtol=1e-5, atol=1e-5)
    # the last block output is captured raw: HF's last hidden state has the final norm applied
    final_norm = model.model.norm if hasattr(model.model, "norm") else model.model.norm_f
    torch.testing.assert_close(final_norm(acts[-1, :n0][None]).squeeze(0), hs[-1][0].float(), rtol=1e-4, atol=1e-4)


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


def test_load_errors_are_one_line(tmp):
    from prism_analysis.errors import PrismError

    with pytest.raises(PrismError, match="no such file"):
        load_model(tmp / "missing")
    path = save_model(tmp / "m", "llama")
    for f in path.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(PrismError, match="tokenizer"):
        load_model(path)
