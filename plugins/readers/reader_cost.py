"""What the readers count for ``Answer.details["cost"]`` and their ``cost_model()`` shapes (docs/cost.md)."""

from __future__ import annotations

from typing import Any


def non_embedding_parameters(model: Any) -> int:
    """Parameters less the input embedding table (a lookup, no multiply); an untied LM head stays in."""
    embedding = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    return int(total - embedding.numel())


def decoder_only_shape(model: Any) -> dict[str, dict[str, int]]:
    """A causal LM's one part, ``decoder``: non-embedding parameters, layers, hidden size."""
    config = model.config
    return {
        "decoder": {
            "parameters": non_embedding_parameters(model),
            "layers": int(config.num_hidden_layers),
            "d_model": int(config.hidden_size),
        }
    }


def encoder_decoder_shape(model: Any) -> dict[str, dict[str, int]]:
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


def causal_cost(question_tokens: int, input_tokens: int, context_tokens: int, generated: int) -> dict[str, Any]:
    """Token counts of one prompt, and its forward pass: P + G - 1 tokens, token t attending to t positions."""
    processed = input_tokens + max(generated - 1, 0)
    return {
        "question_tokens": question_tokens,
        "context_tokens": context_tokens,
        "input_tokens": input_tokens,
        "generated_tokens": generated,
        "passes": {"decoder": {"tokens": processed, "attended": processed * (processed + 1) // 2}},
    }


def fid_cost(question_tokens: int, rows: list[int], passages: int, generated: int) -> dict[str, Any]:
    """FiD: encoder rows of ``rows`` tokens each attending to their row; G decoder steps, step t attending to
    t positions and (cross-attention) every encoder token."""
    encoder = sum(rows)
    asked = question_tokens * len(rows)
    return {
        "question_tokens": asked,
        "context_tokens": encoder - asked if passages else 0,
        "input_tokens": encoder,
        "generated_tokens": generated,
        "passes": {
            "encoder": {"tokens": encoder, "attended": sum(n * n for n in rows)},
            "decoder": {"tokens": generated, "attended": generated * (generated + 1) // 2 + generated * encoder},
        },
    }
