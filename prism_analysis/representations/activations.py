"""Every layer's hidden states of a Hugging Face causal LM, captured with nnsight.

For each prompt we capture, in one forward pass, the embedding output and the output of every
decoder block (PRISM: "embedding output and every block", so L + 1 representations for L blocks).

The embedding output (layer 0) is what the first block receives: its input hidden states, read
from the block's inputs, not the output of the token-embedding module. The two differ for GPT-2
(token + position embeddings), Granite (token embedding times ``embedding_multiplier``) and any
family that adds something between the embedding and the first block; reading the block's input
gives, for every family, HF's ``output_hidden_states[0]``. It is the first positional argument
of the block, or its ``hidden_states`` keyword (transformers 5 may pass it either way).

The block outputs are read from the blocks themselves, not from ``output_hidden_states``, whose
last entry has the final norm applied. In transformers >= 5 a decoder block returns a tensor, not
a tuple; taking ``.output[0]`` there would silently keep batch element 0 -- we unwrap a tuple only
when it is one.

Pooling over the tokens of a prompt:

- ``mean``   mean over real tokens (PRISM's choice; one prompt per forward pass, so no padding)
- ``last``   the last real token
- ``tokens`` every real token (feed these to :class:`prism_analysis.representations.cka.StreamingCKA`)

Prompts may be batched: sequences are right-padded and pads are masked out of every pooling, so a
batch gives the same result as one prompt at a time (causal models: real tokens never see pads).
:func:`iter_activations` yields one batch at a time; :func:`collect_activations` stacks them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..errors import PrismError, warn

POOLS = ("mean", "last", "tokens")


def find_modules(model: nn.Module) -> tuple[str, int]:
    """``(decoder block list path, number of blocks)`` of a causal LM: its longest ModuleList
    named ``layers``, ``h``, ``blocks`` or ``block``."""
    best = None
    for name, mod in model.named_modules():
        is_blocks = isinstance(mod, nn.ModuleList) and name.split(".")[-1] in ("layers", "h", "blocks", "block")
        if is_blocks and (best is None or len(mod) > len(best[1])):
            best = (name, mod)
    if best is None:
        raise PrismError(f"cannot find the decoder blocks of {type(model).__name__}")
    return best[0], len(best[1])


def _envoy(root, path: str):
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def _unwrap(out) -> torch.Tensor:
    """A block's hidden states: the tensor itself (transformers >= 5) or element 0 of a tuple (< 5)."""
    return out if torch.is_tensor(out) else out[0]


def _block_input(inputs) -> torch.Tensor:
    """The hidden states a block receives, from its ``(args, kwargs)``: the first positional
    argument, else the ``hidden_states`` keyword."""
    args, kwargs = inputs
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    raise PrismError(f"cannot find the hidden states among the first block's inputs ({', '.join(kwargs)})")


def _capture(nn_model, layers_path: str, n_layers: int, input_ids, attention_mask):
    """Hidden states (L + 1, batch, seq, d) of one forward pass, traced with nnsight: the first
    block's input, then every block's output."""
    saved = []
    with torch.no_grad(), nn_model.trace(input_ids=input_ids, attention_mask=attention_mask):
        blocks = _envoy(nn_model, layers_path)
        saved.append(blocks[0].inputs.save())
        for i in range(n_layers):
            saved.append(blocks[i].output.save())
    return torch.stack([_block_input(saved[0])] + [_unwrap(s) for s in saved[1:]])


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pool: str) -> torch.Tensor:
    """hidden (L+1, b, s, d), mask (b, s) -> (L+1, rows, d) float32; rows = b, or real tokens."""
    h = hidden.float()
    if pool == "mean":
        m = mask.to(h.dtype)[None, :, :, None]
        return (h * m).sum(2) / m.sum(2)
    if pool == "last":
        last = mask.sum(1) - 1
        return h[:, torch.arange(h.shape[1], device=h.device), last]
    if pool == "tokens":
        return h[:, mask.bool()]
    raise ValueError(f"unknown pooling {pool!r}; choose one of {', '.join(POOLS)}")


def iter_activations(
    model,
    tokenizer,
    texts: Sequence[str],
    pool: str = "mean",
    batch_size: int = 1,
    max_length: int | None = 512,
    progress: bool = False,
) -> Iterator[torch.Tensor]:
    """Yield, per batch of prompts, a (L + 1, rows, d) float32 tensor of pooled hidden states.

    ``rows`` is the number of prompts in the batch (``mean``, ``last``) or of their real tokens
    (``tokens``). Tensors stay on the model's device.
    """
    if pool not in POOLS:
        raise ValueError(f"unknown pooling {pool!r}; choose one of {', '.join(POOLS)}")
    from nnsight import NNsight

    from ..progress import progress_bar

    layers_path, n_layers = find_modules(model)
    nn_model = NNsight(model)
    device = next(model.parameters()).device
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    vocab = model.get_input_embeddings().num_embeddings
    context = getattr(model.config, "max_position_embeddings", None)
    if context and (max_length is None or max_length > context):
        too_long = sum(len(tokenizer(t)["input_ids"]) > context for t in texts)
        if too_long:
            warn(
                f"{too_long} of {len(texts)} prompts are longer than the model's context ({context} tokens); "
                f"they are cut to {context} tokens"
            )
        max_length = context
    model.eval()
    for start in progress_bar(range(0, len(texts), batch_size), desc="activations", enabled=progress):
        batch = list(texts[start : start + batch_size])
        enc = tokenizer(
            batch,
            return_tensors="pt",
            padding=True,
            truncation=max_length is not None,
            max_length=max_length,
            padding_side="right",
        )
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        if int(mask.sum(1).min()) == 0:
            raise PrismError(f"prompt {start + int(mask.sum(1).argmin())} tokenizes to nothing")
        if int(ids.max()) >= vocab:
            raise PrismError(
                f"the tokenizer gives token id {int(ids.max())}, but the model embeds only {vocab} tokens: "
                "it is not this model's tokenizer"
            )
        hidden = _capture(nn_model, layers_path, n_layers, ids, mask)
        yield _pool(hidden, mask, pool)


def collect_activations(
    model,
    tokenizer,
    texts: Sequence[str],
    pool: str = "mean",
    batch_size: int = 1,
    max_length: int | None = 512,
    progress: bool = False,
) -> torch.Tensor:
    """All prompts at once: (L + 1, n, d) float32 (``tokens``: n = total real tokens)."""
    return torch.cat(list(iter_activations(model, tokenizer, texts, pool, batch_size, max_length, progress)), dim=1)
