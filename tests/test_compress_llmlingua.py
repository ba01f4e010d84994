"""`iagbench compress --prune llmlingua`: the port of LLMLingua 0.2.2's compress_prompt with the reference's arguments
(data/compress.py:74-87). Each piece is checked on a case small enough to follow LLMLingua's code by hand; "l.N" are
lines of llmlingua/prompt_compressor.py (0.2.2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from iagbench import ConfigurationError, Passage
from iagbench.lm.decoding import cache_keyword
from iagbench_plugins.imagination.commands import _identity
from iagbench_plugins.imagination.compress import Compressor
from iagbench_plugins.imagination.llmlingua import (
    INSTRUCTION,
    QUESTION_SUFFIX,
    _refresh,
    dynamic_ratios,
    iterative_prune,
    rank,
    select_contexts,
    threshold,
    window_ratios,
)

REPO = Path(__file__).resolve().parents[1]
PASSAGES = REPO / "plugins" / "sample_data" / "passages.jsonl"


def test_rank_and_the_coarse_budget_include_the_crossing_context_in_rank_order():
    assert rank([3.0, 1.0, 2.0, 1.0]) == [1, 3, 2, 0]  # ascending question NLL, ties in index order (l.2043-2044)
    # budget 64 + 100 = 164: 164 - 100 = 64, 64 - 50 = 14, 14 - 70 < 0: context 1 crosses it, is kept, and ends it
    assert select_contexts([2, 0, 1, 3], [50, 70, 100, 30], 64, 100) == [2, 0, 1]
    # a budget that reaches exactly 0 is not below it: the next context comes in too (l.1215)
    assert select_contexts([0, 1, 2], [100, 64, 30], 64, 100) == [0, 1, 2]
    assert select_contexts([1, 0], [500, 600], 64, 100) == [1]  # the best alone already crosses it


def test_dynamic_ratios_go_from_plus_to_minus_0_4_down_the_rank():
    assert dynamic_ratios(1) == [0]
    assert dynamic_ratios(2) == [0.4, -0.4]
    assert dynamic_ratios(3) == [0.4, 0.0, -0.4]
    assert dynamic_ratios(5) == pytest.approx([0.4, 0.2, 0.0, -0.2, -0.4])


def test_window_ratios_cut_the_estimated_lengths_into_windows_of_200():
    # tau = 60 / (599 + 1) = 0.1; ratios clip(0.1 + offset, 0, 1): 0.5, 0.1, 0 (l.1031-1037)
    windows = window_ratios([100, 150, 349], 60, [0.4, 0.0, -0.4])
    assert windows == [[(100, 0.5), (99, 0.1)], [(51, 0.1), (149, 0)], [(200, 0)]]  # the first window has 199
    long = window_ratios([700], 70, [0])  # 1 + 700: 199, then 501 > 200: two whole windows, then 101
    assert [[length for length, _ in window] for window in long] == [[199], [200], [200], [101]]
    assert {ratio for window in long for _, ratio in window} == {70 / 701}


def test_threshold_is_the_int_n_ratio_th_highest_score():
    scores = torch.tensor([0.5, 3.0, -1.0, 2.0, 1.0])
    assert threshold(scores, 0.4) == 2.0  # int(5 * 0.4) - 1 = 1: the second highest (l.1517-1521)
    assert threshold(scores, 0.1) == 3.0  # at least the highest
    assert threshold(scores, 1.0) == float("-inf")  # a ratio of 1 keeps everything


def test_refresh_writes_only_the_positions_after_the_kv_cache():
    assert _refresh(torch.tensor([1.0, 2, 3, 4]), torch.tensor([9.0, 8, 7]), 1, 3).tolist() == [1, 8, 7, 4]
    assert _refresh(torch.tensor([1.0, 2]), torch.tensor([9.0, 8, 7, 6]), 1, 4).tolist() == [1, 8, 7, 6]
    assert _refresh(None, torch.tensor([9.0, 8]), 0, 1).tolist() == [9, 8]


Q = 1  # the question's token in the hand-made sequences below; context token c_j is 10 + j
VALUE = {10: 9.0, 11: 3.0, 12: 1.0, 13: 0.0, 14: 6.0, 15: 5.0, 16: 2.0, 17: 4.0}


def value_losses(calls):
    """Losses whose contrastive score (own loss - loss given the question) of a token is VALUE[token]."""

    def losses(rows):
        calls.append(rows)
        return [[10.0 - VALUE.get(t, 0.0) if row[0] == Q else 10.0 for t in row[1:]] for row in rows]

    return losses


def test_iterative_prune_windows_thresholds_and_rescoring_by_hand():
    calls: list = []
    ids = [Q] + [10 + j for j in range(8)]  # start 1, 8 context tokens
    windows = window_ratios([10], 5.5, [0], size=4)  # tau 0.5: [[(3, .5)], [(4, .5)], [(3, .5)]]
    assert windows == [[(3, 0.5)], [(4, 0.5)], [(3, 0.5)]]
    kept = iterative_prune(ids, 1, windows, value_losses(calls), size=4)
    # iteration 1 scores everything: the scores of c1..c7 are 3 1 0 6 5 2 4, threshold the 3rd highest (4); the
    # window is positions [1, 4) = c0 c1 c2, each kept when the score of the token after it (l.1418-1424) is > 4: none.
    # iteration 2 re-scores the kept prefix Q c3 c4 c5 c6 (and c3 c4 c5 c6 without the question), the scores left are
    # 6 5 2 4 (of c4..c7), threshold the 2nd highest (5); window [1, 5) = c3 c4 c5 c6: only c3 (6 > 5) stays; the
    # last token stays outside every window; then end (6) is past the 3 tokens left and the loop stops.
    assert kept == [13, 17]
    assert calls[0] == [ids, ids[1:]]
    assert calls[1] == [[Q, 13, 14, 15, 16], [13, 14, 15, 16]]
    assert len(calls) == 2


def test_iterative_prune_leaves_a_short_context_whole():
    # under 200 tokens the window starts at len - 200 < 0 and end - 200 + 8 = -185: need_idx[-185:] = 1 (l.1427)
    # marks every position, as LLMLingua does: nothing is pruned
    ids = [Q] + [10 + j for j in range(6)]
    assert iterative_prune(ids, 1, window_ratios([8], 0.9, [0]), value_losses([])) == ids[1:]


def upper_losses(tokenizer):
    """Losses whose contrastive score is 1 for an upper-case letter, 0 for any other byte."""

    def losses(rows):
        asked = tokenizer.encode("q", add_special_tokens=False)[0]
        return [[10.0 - (tokenizer.decode([t]).isupper() if row[0] == asked else 0) for t in row[1:]] for row in rows]

    return losses


def test_compress_ranks_selects_reorders_prunes_and_assembles_by_hand():
    compressor = Compressor("tiny-llama", target_tokens=10, granularity="passage", prune="llmlingua")
    port = compressor.llmlingua
    port.question_nll = lambda contexts, query: [2.0, 1.0, 3.0]  # rank: B, A, C
    port.losses = upper_losses(compressor.lm.tokenizer)
    passages = [Passage("a" * 82, "A", "pa"), Passage("Lima" + "b" * 178, "B", "pb"), Passage("c", "C", "pc")]
    pair = compressor.compress("q?", passages)
    # the byte tokenizer: "title: B context: Lima..." is 200 tokens, A's 100; budget 10 + 100 = 110 - 200 < 0 at
    # once: B alone (a single context in the selection gets the offset 0)
    assert pair["kept"] == [1] and pair["source_ids"] == ["pb"] and pair["dynamic_ratios"] == [0]
    compressor = Compressor(
        "tiny-llama", target_tokens=10, granularity="passage", prune="llmlingua", context_budget=200
    )
    port = compressor.llmlingua
    port.question_nll = lambda contexts, query: [2.0, 1.0, 3.0]
    port.losses = upper_losses(compressor.lm.tokenizer)
    pair = compressor.compress("q?", passages)
    # budget 210: B leaves 10, A crosses it: B then A (by rank), offsets +0.4 and -0.4; the text is
    # "q?\n\n" (start 4) + B (200) + "\n\n" + A (100); windows [[(199, 0.43)], [(3, 0.43), (102, 0)]]: the first
    # covers B's first 199 tokens, where only the two spaces before B and L (upper case next) stay; after it the end
    # (4 + 199 - 197 + 200) is past the 109 tokens left, so the rest (B's last "b", A) is never pruned
    assert pair["kept"] == [1, 0] and pair["source_ids"] == ["pb", "pa"] and pair["dynamic_ratios"] == [0.4, -0.4]
    assert pair["scores"] == [-1.0, -2.0] and pair["tokens_before_pruning"] == 302
    assert pair["compressed"] == "  b\n\ntitle: A context: " + "a" * 82
    assert pair["compressed_prompt"] == f"{INSTRUCTION}\n\n{pair['compressed']}\n\nq?"
    assert pair["tokens"] == len(pair["compressed"])


def test_question_nll_is_the_mean_loss_of_the_question_after_the_context():
    compressor = Compressor("tiny-llama", granularity="passage", prune="llmlingua", batch_size=2)
    lm, port = compressor.lm, compressor.llmlingua
    contexts = ["title: Lima context: Lima is the capital.", "title: X context: y", "title: Z context: a b c"]
    query = "what is the capital of peru" + QUESTION_SUFFIX
    scores = port.question_nll(contexts, query)

    def by_hand(context):  # get_ppl(context + query) on one unpadded row, losses from len(tokens(context)) - 1 on
        row = torch.tensor([lm.encode(context + query)])
        with torch.no_grad():
            logprobs = torch.log_softmax(lm.model(row).logits[0, :-1].float(), -1)
        losses = -logprobs.gather(-1, row[0, 1:, None])[:, 0]
        return losses[len(lm.encode(context)) - 1 :].mean().item()

    assert scores == pytest.approx([by_hand(c) for c in contexts], abs=1e-4)
    assert port.prefix_length("what is it?\n\n", contexts[0]) == len("what is it?\n\n")


def test_compress_command_llmlingua_mode_and_unchanged_defaults(invoke_cli, tmp_path, plugins):
    from iagbench.contract.job import JobSpec

    job = JobSpec(
        command="compress", dataset="sample", split="train", imaginer="bm25", imaginer_args={}, output=tmp_path / "x"
    )
    options = {"model": "tiny-llama", "target_tokens": 64, "granularity": "sentence"}
    assert _identity(plugins, job, options)["compressor"] == {**options, "version": "1"}
    tokens = {**options, "prune": "tokens", "context_budget": 100}
    assert _identity(plugins, job, tokens)["compressor"] == {**tokens, "version": "2"}
    plain = Compressor("tiny-llama").describe()
    assert plain["version"] == "1" and "prune" not in plain and plain["method"].startswith("question-aware coarse")
    assert Compressor("tiny-llama", prune="tokens").describe()["prune"]["context_budget"] == 100
    with pytest.raises(ConfigurationError, match="prune='llmlingua' keeps or drops whole passages"):
        Compressor("tiny-llama", prune="llmlingua")
    output = tmp_path / "pairs.jsonl"
    args = ["compress", "--split", "train", "--imaginer", "bm25", "--imaginer-args", f"corpus={PASSAGES},k=3",
            "--output", str(output), "--model", "tiny-llama", "--no-progress", "--limit", "2"]  # fmt: skip
    code, _, err = invoke_cli(*args, "--prune", "llmlingua", "--granularity", "passage")
    assert code == 0, err
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == 2
    for record in records:
        assert record["compressed_prompt"].startswith(INSTRUCTION + "\n\n")
        assert record["compressed_prompt"].endswith("\n\n" + record["question"])
        assert record["kept"] and len(record["dynamic_ratios"]) == len(record["kept"])
        assert record["tokens_before_pruning"] >= record["tokens"]
    config = json.loads(output.with_name(output.name + ".config.json").read_text())
    identity = config["identity"]["compressor"]
    assert identity == {"model": "tiny-llama", "target_tokens": 64, "granularity": "passage", "prune": "llmlingua",
                        "context_budget": 100, "version": "3"}  # fmt: skip
    assert config["compressor"]["prune"]["method"] == "llmlingua" and config["compressor"]["version"] == "3"
    code, _, err = invoke_cli(*args, "--granularity", "passage")
    assert code == 2 and "holds another compression configuration" in err


class _OldStyleCache:
    """LLMLingua 0.2.2 hands its model the key/value cache as a list of (keys, values) per layer and slices the one
    it gets back so; transformers 5 takes and returns a Cache object. This converts between them, nothing else."""

    def __init__(self, model):
        self.model = model

    def __call__(self, input_ids, attention_mask=None, past_key_values=None, use_cache=True):
        from types import SimpleNamespace

        from transformers import DynamicCache

        cache = None
        if past_key_values is not None:
            cache = DynamicCache()
            for layer, (keys, values) in enumerate(past_key_values):
                cache.update(keys, values, layer)
        keyword = cache_keyword(self.model)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, **{keyword: cache})
        layers = [(layer.keys, layer.values) for layer in getattr(out, keyword).layers]
        return SimpleNamespace(logits=out.logits, past_key_values=layers)


@pytest.mark.parametrize(("target", "kept"), [(10, 1), (200, 2)])
def test_the_port_equals_llmlingua_0_2_2_itself_on_the_same_model(target, kept):
    """The real LLMLingua 0.2.2 ``compress_prompt`` with the reference's arguments (data/compress.py:74-87), run on
    our scoring model (its constructor, which loads Llama-2-7B and downloads tiktoken's GPT-3.5 encoding, is
    skipped: tiktoken only feeds the ratio it reports), gives the same compressed prompt as the port."""
    import random
    from types import SimpleNamespace

    prompt_compressor = pytest.importorskip("llmlingua.prompt_compressor")
    compressor = Compressor("tiny-llama", target_tokens=target, granularity="passage", prune="llmlingua", batch_size=1)
    lm = compressor.lm
    reference = object.__new__(prompt_compressor.PromptCompressor)
    reference.__dict__.update(
        model_name="tiny-llama", use_llmlingua2=False, retrieval_model=None, open_api_config={}, cache_bos_num=10,
        prefix_bos_num=100, tokenizer=lm.tokenizer, model=_OldStyleCache(lm.model), device="cpu", context_idxs=[],
        max_position_embeddings=lm.model.config.max_position_embeddings,
        oai_tokenizer=SimpleNamespace(encode=lambda text: lm.encode(text, special=False)),
    )  # fmt: skip
    passages = [json.loads(line) for line in PASSAGES.read_text().splitlines()]
    questions = [
        json.loads(line)["question"] for line in (PASSAGES.parent / "questions.jsonl").read_text().splitlines()
    ]
    rng = random.Random(0)
    compared = 0
    for question in questions[:6]:
        # passages cut to 60-200 characters (tiny-llama's tokens are bytes): several fit the coarse budget, so the
        # dynamic ratios and more than one window come into play
        chosen = [{**p, "text": p["text"][: rng.randint(60, 200)]} for p in rng.sample(passages, 8)]
        ours = compressor.compress(question, [Passage(p["text"], p["title"], p["id"]) for p in chosen])
        theirs = reference.compress_prompt(
            [f"title: {p['title']} context: {p['text']}" for p in chosen], instruction=INSTRUCTION, question=question,
            target_token=target, condition_compare=True, condition_in_question="after", rank_method="longllmlingua",
            use_sentence_level_filter=False, context_budget="+100", dynamic_context_compression_ratio=0.4,
            reorder_context="sort",
        )  # fmt: skip
        assert ours["compressed_prompt"] == theirs["compressed_prompt"], question
        compared += len(ours["kept"]) >= kept and ours["tokens_before_pruning"] > ours["tokens"]
    assert compared >= 3  # cases that pruned, with several passages (dynamic ratios) at the larger target
