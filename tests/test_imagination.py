"""Explicit imagination: `generate` (GenRead-style), question-aware compression and `iagbench compress`
(resumable pairs), and `imagine` trained on pairs (loss goes down, the checkpoint reloads its generations).

All with the random tiny-llama, one torch thread (the tests share two CPU cores).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from statistics import fmean

import pytest
import torch

from iagbench import ConfigurationError, Example, Passage
from iagbench.contract.plugins import load_plugins
from iagbench.training.folder import read_log
from iagbench.training.spec import TrainSpec
from iagbench.training.train import train
from iagbench_plugins.imagination.compress import Compressor, join_units, select, split_sentences, units_of
from iagbench_plugins.imagination.generate import GenerateImaginer
from iagbench_plugins.imagination.imagine import ImagineImaginer

REPO = Path(__file__).resolve().parents[1]
PASSAGES = REPO / "plugins" / "sample_data" / "passages.jsonl"
QUESTIONS = [
    Example("a", "who wrote the iliad", ("Homer",)),
    Example("b", "what is the capital city of peru", ("Lima",)),
    Example("c", "how many legs does a spider have", ("8",)),
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(builtins_only=True, plugin_files=())


# generate


def test_generate_is_greedy_batch_independent_and_records_its_prompt():
    imaginer = GenerateImaginer("tiny-llama", max_new_tokens=6)
    together = imaginer.imagine(QUESTIONS)
    alone = [imaginer.imagine([example])[0] for example in QUESTIONS]
    assert together == alone
    assert all(len(c.passages) == 1 and c.passages[0].title == "generated" and c.passages[0].text for c in together)
    described = imaginer.describe()
    assert described["prompt"] == {
        "name": "genread",
        "version": "1",
        "instruction": "Generate a background document from Wikipedia to answer the given question.",
    }
    assert described["chat_template"] is False and described["max_new_tokens"] == 6  # tiny-llama has no chat template
    with pytest.raises(ConfigurationError, match="generate option max_new_tokens=0"):
        GenerateImaginer("tiny-llama", max_new_tokens=0)


def test_run_with_generate_gives_the_reader_the_generated_document(invoke_cli, tmp_path):
    code, _, err = invoke_cli(
        "run",
        "--imaginer",
        "generate",
        "--imaginer-args",
        "model=tiny-llama,max_new_tokens=8",
        "--reader",
        "tiny-llama",
        "--reader-args",
        "max_new_tokens=2",
        "--limit",
        "3",
        "--metrics",
        "em",
        "--no-progress",
        "--output",
        str(tmp_path),
    )
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for record in records:
        (passage,) = record["context"]["passages"]
        assert passage["title"] == "generated" and passage["text"]
        assert record["details"]["passages_in_prompt"] == 1
    assert json.loads((tmp_path / "components.json").read_text())["imaginer"]["prompt"]["name"] == "genread"


# compression


def test_select_takes_the_best_units_that_fit_in_their_original_order():
    assert select([-3.0, -1.0, -2.0], [10, 10, 10], budget=20) == [1, 2]
    assert select([-1.0, -2.0, -3.0], [30, 10, 10], budget=25) == [1, 2]  # the best does not fit: skipped
    assert select([-1.0, -1.0, -1.0], [10, 10, 10], budget=20) == [0, 1]  # ties: earlier first
    assert select([-1.0], [30], budget=20) == []


def test_sentences_and_units():
    text = 'J. R. R. Tolkien wrote "The Hobbit." It was published in 1937! Dr. Watson met Mr. Holmes. Is it 5 ft. tall? Yes.'
    assert split_sentences(text) == [
        'J. R. R. Tolkien wrote "The Hobbit."',
        "It was published in 1937!",
        "Dr. Watson met Mr. Holmes.",
        "Is it 5 ft. tall?",
        "Yes.",
    ]
    passages = [Passage("One. Two.", "A", "p1"), Passage("Three.", "B", "p2")]
    assert [(u.passage, u.text) for u in units_of(passages, "sentence")] == [(0, "One."), (0, "Two."), (1, "Three.")]
    assert [(u.passage, u.text) for u in units_of(passages, "passage")] == [(0, "One. Two."), (1, "Three.")]
    assert join_units(units_of(passages, "sentence")) == "One. Two.\nThree."


def overlap_scorer(question, conditions):
    """A stand-in for log p(question | unit) that we control: the question's content words in the unit."""
    words = set(question.lower().split()) - {"what", "is", "the", "of"}
    return [float(len(words & set(re.findall(r"\w+", c.lower())))) for c in conditions]


def test_compression_keeps_what_makes_the_question_likelier_within_the_budget():
    compressor = Compressor("tiny-llama", target_tokens=60, scorer=overlap_scorer)  # byte tokens: 60 characters
    passages = [
        Passage("Lima is the capital city of Peru. It lies on the coast.", "Lima", "p1"),
        Passage("Cusco was the capital of the Inca Empire. Peru has many mountains.", "Cusco", "p2"),
        Passage("Spiders have eight legs.", "Spider", "p3"),
    ]
    pair = compressor.compress("what is the capital city of peru", passages)
    # best: "Lima is the capital city of Peru." (3 words, 33 bytes); then, tied at 1 word, "Cusco was the capital
    # of the Inca Empire." (41 bytes: does not fit) and "Peru has many mountains." (24: fits); in passage order
    assert pair["compressed"] == "Lima is the capital city of Peru.\nPeru has many mountains."
    assert pair["source_ids"] == ["p1", "p2"] and pair["tokens"] <= 60 and not pair["cut"]
    assert pair["kept"] == [0, 3]
    cut = Compressor("tiny-llama", target_tokens=10, scorer=overlap_scorer).compress(
        "capital city of peru", passages[:1]
    )
    assert cut["cut"] and cut["compressed"] == "Lima is th" and cut["source_ids"] == ["p1"]
    assert Compressor("tiny-llama", scorer=overlap_scorer).compress("q", [])["compressed"] == ""


def test_question_logprob_is_the_mean_log_probability_of_the_question_after_each_unit():
    compressor = Compressor("tiny-llama", batch_size=2)
    conditions = ["Lima is the capital of Peru.", "Spiders have eight legs, and so do scorpions.", "x"]
    question = "what is the capital of peru"
    scores = compressor.question_logprob(question, conditions)
    lm = compressor.lm
    target = lm.encode(f"\n{question} We can get the answer to this question in the given documents.", special=False)
    for condition, score in zip(conditions, scores):  # by hand, one unpadded row at a time
        ids = torch.tensor([lm.encode(condition) + target])
        with torch.no_grad():
            logprobs = torch.log_softmax(lm.model(ids).logits[0, :-1].float(), -1)
        expected = logprobs[-len(target) :].gather(-1, ids[0, -len(target) :, None]).mean().item()
        assert score == pytest.approx(expected, abs=1e-4)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("progress", [True, False])
def test_compress_and_retrieve_load_their_models_with_the_library_bars_following_progress(
    invoke_cli, tmp_path, monkeypatch, progress
):
    """As `iagbench run`: with --no-progress, transformers' "Loading weights" bar is off while the
    scoring model and the imaginer load (what `library_progress_bars` does: tests/test_start_up.py)."""
    import iagbench.runs.passages as passages
    import iagbench_plugins.imagination.commands as commands

    seen: list[bool] = []
    for module in (passages, commands):
        real = module.library_progress_bars
        monkeypatch.setattr(module, "library_progress_bars", lambda on, real=real: seen.append(on) or real(on))
    flag = [] if progress else ["--no-progress"]
    source = ["--split", "train", "--limit", "1", "--imaginer", "bm25", "--imaginer-args", f"corpus={PASSAGES},k=1"]
    code, _, err = invoke_cli(
        "compress", *source, "--model", "tiny-llama", "--output", str(tmp_path / "p.jsonl"), *flag
    )
    assert code == 0, err
    code, _, err = invoke_cli("retrieve", *source, "--output", str(tmp_path / "r.jsonl"), *flag)
    assert code == 0, err
    assert seen == [progress] * 3  # compress's passage source and scoring model, retrieve's passage source


def test_compress_command_writes_pairs_and_resumes_after_a_crash(invoke_cli, tmp_path):
    output = tmp_path / "pairs.jsonl"
    args = [
        "compress",
        "--split",
        "train",
        "--imaginer",
        "bm25",
        "--imaginer-args",
        f"corpus={PASSAGES},k=3",
        "--output",
        str(output),
        "--model",
        "tiny-llama",
        "--target-tokens",
        "80",
        "--no-progress",
    ]
    code, out, err = invoke_cli(*args, "--limit", "3")
    assert code == 0, err
    assert json.loads(out)["written"] == 3
    first = read_lines(output)
    for record in first:
        assert set(record) >= {"id", "question", "answers", "compressed", "source_ids", "tokens"}
        assert record["compressed"] and 0 < record["tokens"] <= 80 and record["source_ids"]
    # a crash in the middle of the third line: the same command, now for 5 questions, redoes it and adds two
    lines = output.read_text().splitlines(keepends=True)
    output.write_text("".join(lines[:2]) + lines[2][:20])
    code, out, err = invoke_cli(*args, "--limit", "5")
    assert code == 0, err
    assert (json.loads(out)["written"], json.loads(out)["already_there"]) == (3, 2)
    again = read_lines(output)
    assert [r["id"] for r in again] == [r["id"] for r in first] + [r["id"] for r in again[3:]] and len(again) == 5
    assert again[:3] == first  # greedy and deterministic: the redone line is the same
    code, out, _ = invoke_cli(*args, "--limit", "5")
    assert code == 0 and json.loads(out)["written"] == 0
    code, _, err = invoke_cli(*args[:-3], "--target-tokens", "50", "--no-progress")
    assert code == 2 and "holds another compression configuration (differs in: compressor.target_tokens)" in err
    code, _, err = invoke_cli(
        "compress", "--imaginer", "none", "--output", str(tmp_path / "x.jsonl"), "--model", "tiny-llama"
    )
    assert code == 2 and "imaginer 'none' provides no passages: nothing to compress" in err


# imagine


def write_pairs(path: Path, examples, target=lambda example: "Paris is big.") -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(
                json.dumps({"id": example.id, "question": example.question, "compressed": target(example)}) + "\n"
            )
    return path


def test_imagine_trains_on_pairs_and_its_checkpoint_generates_what_it_learned(plugins, tmp_path):
    examples = plugins["datasets"].get("sample").build().load("train")[:16]
    pairs = write_pairs(tmp_path / "pairs.jsonl", examples)
    options = {"model": "tiny-llama", "pairs": str(pairs), "max_new_tokens": 16}
    untrained = ImagineImaginer(**options)
    before = [c.passages[0].text for c in untrained.imagine(QUESTIONS)]
    output = tmp_path / "trained"
    _, summary = train(
        TrainSpec(
            dataset="sample",
            imaginer="imagine",
            reader="tiny-llama",
            imaginer_args=options,
            limit=16,
            steps=80,
            batch_size=8,
            lr=1e-2,
            warmup_steps=5,
            log_every=1,
            save_every=80,
            eval_every=80,
            eval_limit=2,
            eval_split="test",
            output=output,
        ),
        plugins,
        progress=False,
        log=lambda message: None,
    )
    log = read_log(output)
    losses = [r["loss"] for r in log if "loss" in r]
    assert fmean(losses[-3:]) < 0.05 and fmean(losses[:3]) > 2.0, losses  # it learns the pairs by heart
    assert "eval_em" in log[-1]  # evaluation ran the trained imaginer and the reader
    checkpoint = output / "checkpoints" / "step-000080"
    assert (checkpoint / "imaginer.safetensors").is_file() and not (checkpoint / "reader.safetensors").exists()
    loaded = ImagineImaginer("tiny-llama", checkpoint=str(output), max_new_tokens=16)
    after = [c.passages[0] for c in loaded.imagine(QUESTIONS)]
    assert [p.text for p in after] == ["Paris is big."] * 3 != before  # on questions it never saw
    assert after[0].title == "imagined" and loaded.describe()["checkpoint"] == str(checkpoint)
    again = ImagineImaginer("tiny-llama", checkpoint=str(checkpoint), max_new_tokens=16)
    assert [c.passages[0].text for c in again.imagine(QUESTIONS)] == ["Paris is big."] * 3


def test_imagine_training_errors_name_the_pairs_file(plugins, tmp_path):
    examples = plugins["datasets"].get("sample").build().load("train")[:4]
    pairs = write_pairs(tmp_path / "pairs.jsonl", examples[:3])
    imaginer = ImagineImaginer("tiny-llama", pairs=str(pairs))
    with pytest.raises(
        ConfigurationError,
        match=rf"{re.escape(str(pairs))}: no pair for 1 training example\(s\) \(first: id '{examples[3].id}'\)",
    ):
        imaginer.prepare(examples)
    other = Example(examples[0].id, "a different question", ("x",))
    with pytest.raises(ConfigurationError, match="the pairs come from another dataset"):
        imaginer.loss([other], [])
    with pytest.raises(ConfigurationError, match="needs its targets: --imaginer-args pairs="):
        ImagineImaginer("tiny-llama").loss(examples[:1], [])
    with pytest.raises(ConfigurationError, match="no such file"):
        ImagineImaginer("tiny-llama", pairs=str(tmp_path / "missing.jsonl"))


def test_imagine_with_a_lora_trains_only_the_lora_and_a_trainable_reader_is_refused(plugins, tmp_path):
    imaginer = ImagineImaginer("tiny-llama", lora_rank=2)
    trainable = {name for name, p in imaginer.lm.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert {id(p) for p in imaginer.trainable_module().parameters()} == {
        id(p) for p in imaginer.lm.model.parameters() if p.requires_grad
    }
    examples = plugins["datasets"].get("sample").build().load("train")[:4]
    pairs = write_pairs(tmp_path / "pairs.jsonl", examples)
    with pytest.raises(ConfigurationError, match="trains on its own loss, which gives reader 'tiny-llama' no gradient"):
        train(
            TrainSpec(
                dataset="sample",
                imaginer="imagine",
                reader="tiny-llama",
                limit=4,
                steps=1,
                batch_size=2,
                imaginer_args={"model": "tiny-llama", "pairs": str(pairs)},
                reader_args={"lora_rank": 2},
                output=tmp_path / "out",
            ),
            plugins,
            progress=False,
            log=lambda message: None,
        )


def test_imagine_trains_with_a_reader_that_has_no_loss(echo_plugins, tmp_path):
    """The imaginer's own loss is the objective: a model-free reader (no Trainable.loss) only evaluates."""
    examples = echo_plugins["datasets"].get("sample").build().load("train")[:4]
    pairs = write_pairs(tmp_path / "pairs.jsonl", examples)
    _, summary = train(
        TrainSpec(
            dataset="sample",
            imaginer="imagine",
            reader="echo",
            limit=4,
            steps=1,
            batch_size=2,
            imaginer_args={"model": "tiny-llama", "pairs": str(pairs)},
            output=tmp_path / "out",
        ),
        echo_plugins,
        progress=False,
        log=lambda message: None,
    )
    assert summary["step"] == 1 and summary["loss"] > 0


def test_imagine_n_returns_the_k_best_beams_deterministically_and_train_false_freezes_it(tmp_path):
    imaginer = ImagineImaginer("tiny-llama", n=3, max_new_tokens=6)
    contexts = imaginer.imagine(QUESTIONS)
    assert contexts == imaginer.imagine(QUESTIONS)  # deterministic
    for context in contexts:
        texts = [p.text for p in context.passages]
        assert len(texts) == 3 and len(set(texts)) == 3, texts  # three different documents
        assert all(p.title == "imagined" for p in context.passages)
    assert [imaginer.imagine([example])[0] for example in QUESTIONS] == contexts  # alone or batched (left padding)
    described = imaginer.describe()
    assert described["n"] == 3 and described["decoding"].startswith("beam search (num_beams=3")
    with pytest.raises(ConfigurationError, match="imagine option n=0"):
        ImagineImaginer("tiny-llama", n=0)

    frozen = ImagineImaginer("tiny-llama", train=False)
    assert frozen.trainable_module() is None and not any(p.requires_grad for p in frozen.lm.model.parameters())
    assert frozen.describe()["train"] is False


def test_a_frozen_imagine_writes_each_question_once_and_the_same_documents():
    frozen = ImagineImaginer("tiny-llama", train=False, max_new_tokens=6)
    prompts_generated = []
    generate = frozen.lm.generate_counted

    def counting_generate(prompts, max_new_tokens):
        prompts_generated.extend(prompts)
        return generate(prompts, max_new_tokens)

    frozen.lm.generate_counted = counting_generate
    first = frozen.imagine(QUESTIONS[:2])
    again = frozen.imagine([QUESTIONS[2], QUESTIONS[0], QUESTIONS[2]])  # one new question, one seen, one repeated
    assert len(prompts_generated) == 3  # every question written once
    assert again[1] == first[0] and again[0] == again[2]
    trainable = ImagineImaginer("tiny-llama", max_new_tokens=6)  # same seed, same weights, nothing reused
    assert trainable.written is None
    assert trainable.imagine(QUESTIONS) == [*first, again[0]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": "a", "question": "q", "compressed": "c"}\n{"id": "b", "question": "q"\n', ":2: not valid JSON"),
        ('["a"]\n', ":1: expected a JSON object"),
        ('{"id": "a", "question": "q"}\n', ":1: field 'compressed': expected a string"),
        (
            '{"id": "a", "question": "q", "compressed": "c"}\n\n{"id": "a", "question": "q", "compressed": "d"}\n',
            ":3: field 'id': 'a' appears twice",
        ),
    ],
)
def test_a_bad_pairs_line_is_one_error_naming_file_line_and_field(tmp_path, content, message):
    from iagbench import DataError
    from iagbench_plugins.imagination.imagine import read_pairs

    path = tmp_path / "pairs.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}{message}")):
        read_pairs(path)
