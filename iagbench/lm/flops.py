"""Forward FLOPs by the formula of docs/cost.md, and the model shapes it needs: shared by the runner (readers'
``passes``) and by components that count their own FLOPs (an imaginer's ``Context.cost["flops"]``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Shape = dict[str, dict[str, int]]  # part -> {"parameters": N, "layers": L, "d_model": d}
Passes = dict[str, dict[str, int]]  # part -> {"tokens": T, "attended": A}


def forward_flops(shape: Shape, passes: Passes) -> int:
    """Sum over parts of 2 N T + 2 L d A (N parameters, L layers, d width, T tokens, A attended positions)."""
    total = 0
    for part, counts in passes.items():
        model = shape.get(part)
        if model is None:
            continue
        total += 2 * model["parameters"] * counts["tokens"]
        total += 2 * model["layers"] * model["d_model"] * counts["attended"]
    return total


def causal_passes(tokens: int, rows: int = 1) -> Passes:
    """``rows`` causal passes over ``tokens`` tokens each (token t attends to t positions) as one ``decoder`` part."""
    return {"decoder": {"tokens": rows * tokens, "attended": rows * tokens * (tokens + 1) // 2}}


def non_embedding_parameters(model: Any) -> int:
    """Parameters less the input embedding table (a lookup, no multiply); an untied LM head stays in."""
    embedding = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    return int(total - embedding.numel())


def decoder_only_shape(model: Any) -> Shape:
    """A causal LM's one part, ``decoder``: non-embedding parameters, layers, hidden size."""
    config = model.config
    return {
        "decoder": {
            "parameters": non_embedding_parameters(model),
            "layers": int(config.num_hidden_layers),
            "d_model": int(config.hidden_size),
        }
    }


def encoder_only_shape(model: Any) -> Shape:
    """A BERT-like encoder's one part, ``encoder``: parameters less every embedding table (word, position, type:
    lookups), layers, hidden size."""
    import torch

    tables = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    config = model.config
    parameters = int(sum(p.numel() for p in model.parameters()) - tables)
    return {
        "encoder": {
            "parameters": parameters,
            "layers": int(config.num_hidden_layers),
            "d_model": int(config.hidden_size),
        }
    }


def encoder_decoder_shape(model: Any) -> Shape:
    """A T5's ``encoder`` and ``decoder`` parts (each stack's parameters less the shared embedding; the LM head
    with the decoder)."""
    config = model.config
    shared = model.get_input_embeddings().weight
    encoder = sum(p.numel() for p in model.encoder.parameters() if p is not shared)
    total = sum(p.numel() for p in model.parameters())
    decoder = total - shared.numel() - encoder
    d_model = int(config.d_model)
    return {
        "encoder": {"parameters": int(encoder), "layers": int(config.num_layers), "d_model": d_model},
        "decoder": {"parameters": int(decoder), "layers": int(config.num_decoder_layers), "d_model": d_model},
    }


def sentence_encoder_costs(model: Any, texts: Sequence[str], shape: Shape | None = None) -> list[tuple[int, int]]:
    """Per text, (tokens, forward FLOPs) of a sentence-transformers ``model``: its tokens as encoded (cut to its
    ``max_seq_length``), each attending to all of them (one bidirectional pass; pooling not counted)."""
    shape = shape or encoder_only_shape(model[0].auto_model)
    counts = [int(n) for n in model.tokenize(list(texts))["attention_mask"].sum(-1).tolist()]
    return [(n, forward_flops(shape, {"encoder": {"tokens": n, "attended": n * n}})) for n in counts]
