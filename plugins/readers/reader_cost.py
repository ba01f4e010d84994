"""What the readers count for ``Answer.details["cost"]`` and their ``cost_model()`` shapes (docs/cost.md)."""

from __future__ import annotations

from typing import Any

from iagbench.lm.flops import (  # noqa: F401 (the readers' cost_model shapes, importable from here)
    decoder_only_shape,
    encoder_decoder_shape,
    non_embedding_parameters,
)


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
