"""`iagbench compress --prune tokens`: LongLLMLingua's token-level pruning by contrastive perplexity after the coarse
selection (the reference: data/compress.py:65-87, ``condition_compare=True``), on the random tiny-llama."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from iagbench import ConfigurationError, Passage
from iagbench_plugins.imagination.commands import _identity
from iagbench_plugins.imagination.compress import Compressor, prune_tokens

REPO = Path(__file__).resolve().parents[1]
PASSAGES = REPO / "plugins" / "sample_data" / "passages.jsonl"


def overlap_scorer(question, conditions):
    words = set(question.lower().split()) - {"what", "is", "the", "of"}
    return [float(len(words & set(re.findall(r"\w+", c.lower())))) for c in conditions]


def test_prune_tokens_keeps_the_best_within_the_budget_in_order():
    assert prune_tokens([0.5, 2.0, -1.0, 2.0, 1.0], 3) == [1, 3, 4]
    assert prune_tokens([1.0, 1.0, 1.0], 2) == [0, 1]  # ties: earlier first
    assert prune_tokens([1.0], 5) == [0]


def test_pruning_keeps_the_highest_scoring_tokens_in_order():
    compressor = Compressor("tiny-llama", target_tokens=8, scorer=overlap_scorer, prune="tokens")
    tokenizer = compressor.lm.tokenizer

    def shape_scorer(question, ids):  # a stand-in we control: capitals 2, vowels 1, the rest 0 (byte tokens)
        pieces = [tokenizer.decode([i]) for i in ids]
        return [2.0 if p.isupper() else 1.0 if p in "aeiou" else 0.0 for p in pieces]

    compressor.token_scorer = shape_scorer
    passages = [Passage("Lima is the capital city of Peru.", "Lima", "p1"), Passage("Spiders have legs.", "S", "p2")]
    pair = compressor.compress("what is the capital city of peru", passages)
    # coarse: both sentences fit 8 + 100 tokens; then L and P (2), S (2), and the five earliest vowels (1)
    assert pair["tokens_before_pruning"] == len("Lima is the capital city of Peru.\nSpiders have legs.")
    assert pair["compressed"] == "LiaieaPS" and pair["tokens"] == 8 and pair["source_ids"] == ["p1", "p2"]
    described = compressor.describe()
    assert described["version"] == "2" and described["prune"]["context_budget"] == 100
    short = compressor.compress("q", [Passage("Lima.", "", "p1")])  # within the budget: nothing pruned
    assert short["compressed"] == "Lima." and short["tokens_before_pruning"] == 5
    plain = Compressor("tiny-llama", target_tokens=8, scorer=overlap_scorer)
    assert "prune" not in plain.describe() and plain.describe()["version"] == "1"
    assert "tokens_before_pruning" not in plain.compress("q", passages)
    with pytest.raises(ConfigurationError, match=r"^compress option prune='words': expected one of none, tokens"):
        Compressor("tiny-llama", prune="words")


def test_contrastive_logprob_is_log_p_given_the_question_less_log_p_alone():
    compressor = Compressor("tiny-llama", prune="tokens")
    lm, question = compressor.lm, "what is the capital of peru"
    ids = lm.encode("Lima is the capital.", special=False)
    scores = compressor.contrastive_logprob(question, ids)
    start = [lm.tokenizer.bos_token_id]

    def by_hand(prefix):  # one unpadded row
        row = torch.tensor([prefix + ids])
        with torch.no_grad():
            logprobs = torch.log_softmax(lm.model(row).logits[0, :-1].float(), -1)
        return logprobs[-len(ids) :].gather(-1, row[0, -len(ids) :, None])[:, 0]

    expected = by_hand(start + lm.encode(f"{question}\n\n", special=False)) - by_hand(start)
    assert scores == pytest.approx(expected.tolist(), abs=1e-4)


def test_compress_command_prunes_only_when_asked_and_keeps_earlier_identities(invoke_cli, tmp_path, plugins):
    from iagbench.contract.job import JobSpec

    job = JobSpec(
        command="compress", dataset="sample", split="train", imaginer="bm25", imaginer_args={}, output=tmp_path / "x"
    )
    options = {"model": "tiny-llama", "target_tokens": 64, "granularity": "sentence"}
    assert _identity(plugins, job, options)["compressor"] == {**options, "version": "1"}  # as before this option
    output = tmp_path / "pairs.jsonl"
    args = ["compress", "--split", "train", "--imaginer", "bm25", "--imaginer-args", f"corpus={PASSAGES},k=3",
            "--output", str(output), "--model", "tiny-llama", "--target-tokens", "20", "--no-progress", "--limit", "2"]  # fmt: skip
    code, _, err = invoke_cli(*args, "--prune", "tokens")
    assert code == 0, err
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert all(r["tokens"] <= 21 and r["tokens_before_pruning"] > 20 for r in records)
    config = json.loads(output.with_name(output.name + ".config.json").read_text())
    assert config["identity"]["compressor"]["version"] == "2" and config["identity"]["compressor"]["prune"] == "tokens"
    code, _, err = invoke_cli(*args)
    assert code == 2 and "holds another compression configuration" in err
