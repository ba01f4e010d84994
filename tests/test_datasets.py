"""Built-in dataset plugins: file formats, stable ids, the local data layout, the hub path, the sample set."""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from iagbench import ConfigurationError, DataError, Example, Passage
from iagbench.contract.plugins import load_plugins
from iagbench_plugins.datasets import formats
from iagbench_plugins.datasets.qa import FidJson, NaturalQuestions, TriviaQA, WebQuestions
from iagbench_plugins.datasets.sample import Sample

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("IAGBENCH_DATA") or REPO.parent / "shared" / "data")
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"the real data folder {DATA} is absent (set IAGBENCH_DATA or check out ../shared/data)"
)
CLASSES = {"nq": NaturalQuestions, "triviaqa": TriviaQA, "webq": WebQuestions}


@functools.cache
def real(name: str, split: str) -> tuple[Example, ...]:
    return tuple(CLASSES[name](data_dir=DATA).load(split))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def sha_id(dataset: str, split: str, question: str) -> str:
    return f"{dataset}-{split}-{hashlib.sha1(question.strip().encode()).hexdigest()[:10]}"


# ---- the real data ----


@needs_data
@pytest.mark.parametrize(
    "name, split, count",
    [
        ("nq", "test", 3610),
        ("nq", "dev", 1800),
        ("nq", "train", 8757),
        ("triviaqa", "test", 11313),
        ("triviaqa", "train", 8837),
        ("webq", "test", 2032),
        ("webq", "train", 3778),
    ],
)
def test_real_split_counts_and_shape(name, split, count):
    examples = real(name, split)
    assert len(examples) == count
    assert all(e.question.strip() and e.answers and all(a.strip() for a in e.answers) for e in examples)
    assert len({e.id for e in examples}) == count


@needs_data
@pytest.mark.parametrize("name, split", [("nq", "test"), ("triviaqa", "test"), ("webq", "train")])
def test_ids_are_stable_across_loads(name, split):
    again = list(CLASSES[name](data_dir=DATA).load(split))
    assert [e.id for e in again] == [e.id for e in real(name, split)]


@needs_data
def test_id_rules_on_real_files():
    assert real("nq", "test")[0].id == sha_id("nq", "test", real("nq", "test")[0].question)
    assert real("webq", "test")[0].id == "wqs000000"  # WebQuestions' own qId wins


@needs_data
def test_csv_quoted_triviaqa_lines_parse_exactly():
    by_question = {e.question: e for e in real("triviaqa", "test")}
    # Line 18: the question carries a second layer of csv quoting, which is undone.
    crackers = by_question['How many different animal shapes are there in the "Animal Crackers" cookie zoo?']
    assert crackers.answers == (
        "Eighteen--two bears (one walking, one seated), a bison, camel, cougar, elephant, giraffe, gorilla, "
        "hippopotamus, hyena , kangaroo, lion, monkey, rhinoceros, seal, sheep, tier, and zebra",
    )
    # Line 24: both columns quoted; the answer list holds strings with apostrophes ("Hitler's health").
    bomb = by_question['Who was the target of the failed "Bomb Plot" of 1944?']
    # A question that only starts and ends with a quotation keeps its quotes.
    assert any(q.startswith('"Rodney you plonka" and "This time next year') for q in by_question)
    assert not any(q.startswith('"') and '""' in q for q in by_question)
    assert len(bomb.answers) == 60
    assert bomb.answers[:4] == ("Hitlerian", "Adolph Schicklgruber", "HitlerAdolf", "Hitler's medical health")
    assert bomb.answers[-3:] == ("Adolfus Hitler", "Hitler", "Adolph hitler")
    assert "Adolf Hitler's medical condition" in bomb.answers


@needs_data
def test_nq_ids_agree_between_nq_open_jsonl_and_dpr_csv():
    from_csv = list(NaturalQuestions(path=DATA / "nq" / "nq-test.qa.csv").load("test"))
    jsonl_ids = {e.question: e.id for e in real("nq", "test")}
    csv_ids = {e.question: e.id for e in from_csv}
    assert len(from_csv) == 3610
    shared = jsonl_ids.keys() & csv_ids.keys()
    # DPR's csv re-tokenises 291 questions ("earth 's axis"), so only identical texts can share an id.
    assert len(shared) == 3610 - 291
    assert all(jsonl_ids[q] == csv_ids[q] for q in shared)


@needs_data
def test_fid_json_reads_gzip_jsonl_oracle_with_passages():
    examples = list(FidJson(path=DATA / "nq-oracle" / "nq-open-oracle.jsonl.gz").load("test"))
    assert len(examples) == 2655
    assert all(len(e.ctxs) == 1 and e.ctxs[0].text and e.ctxs[0].score is None for e in examples)


@needs_data
def test_data_dir_defaults_to_env(monkeypatch):
    monkeypatch.setenv("IAGBENCH_DATA", str(DATA))
    assert len(list(NaturalQuestions().load("dev"))) == 1800


@needs_data
def test_describe_files_with_sha256():
    described = WebQuestions(data_dir=DATA).describe("train")
    assert described["source"] == "files"
    assert [Path(f["path"]).name for f in described["files"]] == ["trainmodel.json", "val.json", "devtest.json"]
    first = described["files"][0]
    assert Path(first["path"]).is_absolute() and first["format"] == "json"
    assert first["sha256"] == hashlib.sha256((DATA / "webq" / "trainmodel.json").read_bytes()).hexdigest()
    assert "3,778" in described["note"]
    assert "training questions available offline" in NaturalQuestions(data_dir=DATA).describe("train")["note"]


# ---- layout and option errors ----


def test_no_data_dir_names_the_file_and_how_to_pass_one(monkeypatch):
    monkeypatch.delenv("IAGBENCH_DATA", raising=False)
    with pytest.raises(ConfigurationError, match=r"nq/NQ-open\.dev\.jsonl.*--data-dir.*IAGBENCH_DATA"):
        NaturalQuestions().load("test")


def test_missing_file_names_the_full_path(tmp_path):
    with pytest.raises(ConfigurationError) as caught:
        TriviaQA(data_dir=tmp_path).load("test")
    assert str(tmp_path / "triviaqa" / "trivia-test.qa.csv") in str(caught.value)


@pytest.mark.parametrize("cls", [TriviaQA, WebQuestions])
def test_dev_without_local_file_says_how_to_supply_one(cls, tmp_path):
    with pytest.raises(ConfigurationError) as caught:
        cls(data_dir=tmp_path).load("dev")
    message = str(caught.value)
    assert all(part in message for part in ("'dev'", f"'{cls.name}'", "path=", "source=hub"))


def test_unknown_split_is_refused(tmp_path):
    with pytest.raises(ConfigurationError, match=r"no split 'validation'.*train, dev, test"):
        NaturalQuestions(data_dir=tmp_path).load("validation")
    with pytest.raises(ConfigurationError, match="no split 'dev'"):
        Sample(root=tmp_path).load("dev")


def test_bad_options_are_refused():
    with pytest.raises(ConfigurationError, match="source"):
        NaturalQuestions(source="web")
    with pytest.raises(ConfigurationError, match="unknown question file format 'xml'"):
        NaturalQuestions(format="xml")
    with pytest.raises(ConfigurationError, match="path="):
        FidJson().load("test")


def test_path_option_reads_several_files_for_any_split(tmp_path):
    a = write(tmp_path / "a.jsonl", '{"question": "q1", "answer": ["x"]}\n')
    b = write(tmp_path / "b.qa.csv", "q2\t['y']\n")
    examples = list(TriviaQA(path=f"{a}{os.pathsep}{b}").load("dev"))
    assert [(e.id, e.answers) for e in examples] == [
        (sha_id("triviaqa", "dev", "q1"), ("x",)),
        (sha_id("triviaqa", "dev", "q2"), ("y",)),
    ]
    with pytest.raises(ConfigurationError, match=str(tmp_path / "nope.json")):
        FidJson(path=tmp_path / "nope.json").load("x")


# ---- formats and ids ----


def test_repeated_questions_get_numbered_ids(tmp_path):
    path = write(
        tmp_path / "q.jsonl",
        "".join(json.dumps({"question": q, "answer": ["a"]}) + "\n" for q in ["q", " q ", "r", "q"]),
    )
    ids = [e.id for e in NaturalQuestions(path=path).load("test")]
    base = sha_id("nq", "test", "q")
    assert ids == [base, f"{base}-2", sha_id("nq", "test", "r"), f"{base}-3"]


def test_fid_json_gzip_jsonl_and_json_array(tmp_path):
    records = [
        {
            "id": 7,
            "question": "who?",
            "answers": ["me"],
            "ctxs": [{"id": "p1", "title": "T", "text": "me.", "score": "81.5"}],
        },
        {"question": "what?", "answer": ["it"], "ctxs": [{"title": "U", "text": "it."}]},
    ]
    gz = tmp_path / "dev.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    array = write(tmp_path / "dev.json", json.dumps(records, indent=1))
    for path in (gz, array):
        examples = list(FidJson(path=path).load("my-split"))
        assert examples[0] == Example("7", "who?", ("me",), (Passage("me.", "T", "p1", 81.5),))
        assert examples[1] == Example(sha_id("fid-json", "my-split", "what?"), "what?", ("it",), (Passage("it.", "U"),))
    assert FidJson(path=gz).describe("x")["files"][0]["format"] == "jsonl"


def test_detect_format_and_override(tmp_path):
    lines = write(tmp_path / "q.json", '{"question": "q", "answer": ["a"]}\n')
    assert formats.detect_format(lines) == "jsonl"
    assert formats.detect_format(write(tmp_path / "q.txt", ' [{"question": "q", "answers": ["a"]}]')) == "json"
    assert formats.detect_format(write(tmp_path / "q.data", "q\t['a']\n")) == "dpr-csv"
    assert formats.detect_format(tmp_path / "x.qa.csv") == "dpr-csv"
    with pytest.raises(ConfigurationError, match="format="):
        formats.detect_format(write(tmp_path / "q.bin", "nothing here"))
    with pytest.raises(DataError, match="expected a JSON array"):
        list(NaturalQuestions(path=lines, format="json").load("test"))


JSONL_OK = '{"question": "q", "answer": ["a"]}\n'


@pytest.mark.parametrize(
    "name, text, line, field",
    [
        ("bad.jsonl", JSONL_OK + "{not json\n", 2, None),
        ("bad.jsonl", JSONL_OK + "\n" + '{"answer": ["a"]}\n', 3, "question"),
        ("bad.jsonl", '{"question": "  ", "answer": ["a"]}\n', 1, "question"),
        ("bad.jsonl", JSONL_OK + '{"question": "q", "answer": "a"}\n', 2, "answer"),
        ("bad.jsonl", '{"question": "q", "answers": []}\n', 1, "answers"),
        ("bad.jsonl", '{"question": "q", "answers": ["a", 3]}\n', 1, "answers[1]"),
        ("bad.jsonl", '{"question": "q", "answers": ["a"], "id": 1.5}\n', 1, "id"),
        ("bad.jsonl", "[1, 2]\n", 1, None),
        ("bad.jsonl", '{"question": "q", "answers": ["a"], "ctxs": {"text": "t"}}\n', 1, "ctxs"),
        (
            "bad.jsonl",
            '{"question": "q", "answers": ["a"], "ctxs": [{"title": "", "text": "t"}, {"title": "T"}]}\n',
            1,
            "ctxs[1].text",
        ),
        ("bad.jsonl", '{"question": "q", "answers": ["a"], "ctxs": [{"text": "t"}]}\n', 1, "ctxs[0].title"),
        (
            "bad.jsonl",
            '{"question": "q", "answers": ["a"], "ctxs": [{"title": "", "text": "t", "score": "high"}]}\n',
            1,
            "ctxs[0].score",
        ),
        ("bad.qa.csv", "q\t['a']\nq2\t['b']\textra\n", 2, None),
        ("bad.qa.csv", "q\t['a']\nonly a question\n", 2, None),
        ("bad.qa.csv", "q\t['a']\nq2\tnot a list\n", 2, "answers"),
        ("bad.qa.csv", "q\t['a']\nq2\t[1, 2]\n", 2, "answers[0]"),
        ("bad.qa.csv", "q\t['a']\nq2\t'a'\n", 2, "answers"),
        ("bad.qa.csv", "q\t[]\n", 1, "answers"),
        ("bad.qa.csv", '"a ""quoted""\nquestion"\t[\'a\']\n\t[\'b\']\n', 3, "question"),
        (
            "bad.json",
            '[\n {"qId": "w1", "qText": "q", "answers": ["a"]},\n {"qId": "w2",\n  "answers": ["a"]}\n]',
            3,
            "qText",
        ),
        ("bad.json", '[\n {"question": "q", "answers": ["a"]},\n {"question": "q", "answers": "a"}\n]', 3, "answers"),
        ("bad.json", '[\n {"question": "q", "answers": ["a"]},\n {"question": "q" "answers": ["a"]}\n]', 3, None),
        ("bad.json", '[\n {"question": "q", "answers": ["a"]}', 2, None),
        ("bad.json", '[\n {"question": "q", "answers": ["a"]}\n]\n\n[]\n', 5, None),
    ],
)
def test_malformed_records_name_file_line_and_field(tmp_path, name, text, line, field):
    path = write(tmp_path / name, text)
    with pytest.raises(DataError) as caught:
        list(FidJson(path=path).load("test"))
    error = caught.value
    assert (error.path, error.line, error.field) == (str(path), line, field)
    assert f"{path}:{line}" in str(error)
    if field:
        assert f"'{field}'" in str(error)


def test_undecodable_files_raise_data_error(tmp_path):
    (tmp_path / "bad.jsonl").write_bytes(b'{"question": "q", "answers": ["a"]}\n{"question": "\xff"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not UTF-8"):
        list(FidJson(path=tmp_path / "bad.jsonl").load("test"))
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot decompress"):
        list(FidJson(path=tmp_path / "bad.jsonl.gz", format="jsonl").load("test"))


# ---- the hub path, on a local folder in the hub's schema ----


def hub_folder(root: Path, splits: dict[str, dict[str, list]]) -> Path:
    import datasets

    (root / "data").mkdir(parents=True)
    for split, columns in splits.items():
        datasets.Dataset.from_dict(columns).to_parquet(root / "data" / f"{split}-00000-of-00001.parquet")
    return root


@pytest.fixture
def offline_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_hub_nq_maps_test_to_validation_with_the_same_ids_as_files(tmp_path, offline_hub):
    question = "when was the last time anyone was on the moon"
    folder = hub_folder(
        tmp_path / "nq_open",
        {
            "train": {"question": ["t"], "answer": [["a"]]},
            "validation": {"question": [question], "answer": [["December 1972"]]},
        },
    )
    dataset = NaturalQuestions(source="hub", hub_id=str(folder), cache_dir=str(tmp_path / "cache"))
    assert list(dataset.load("test")) == [Example(sha_id("nq", "test", question), question, ("December 1972",))]
    assert [e.question for e in dataset.load("train")] == ["t"]
    assert dataset.describe("test") == {
        "source": "hub",
        "hub_id": str(folder),
        "hub_config": None,
        "split": "validation",
        "note": dataset.hub_note,
    }
    with pytest.raises(ConfigurationError, match="no hub split for split 'dev'"):
        dataset.load("dev")


def test_hub_triviaqa_answers_are_aliases_then_value(tmp_path, offline_hub):
    answers = [{"aliases": ["Paris", "paris"], "value": "Paris, France"}, {"aliases": ["Rome"], "value": "Rome"}]
    folder = hub_folder(tmp_path / "tqa", {"validation": {"question": ["q1", "q2"], "answer": answers}})
    examples = list(TriviaQA(source="hub", hub_id=str(folder), cache_dir=str(tmp_path / "cache")).load("test"))
    assert [e.answers for e in examples] == [("Paris", "paris", "Paris, France"), ("Rome",)]
    assert TriviaQA(source="hub").describe("train")["hub_config"] == "unfiltered.nocontext"


def test_hub_webq_and_missing_field(tmp_path, offline_hub):
    folder = hub_folder(tmp_path / "wq", {"test": {"url": ["u"], "question": ["q?"], "answers": [["a"]]}})
    assert [
        e.answers for e in WebQuestions(source="hub", hub_id=str(folder), cache_dir=str(tmp_path / "c")).load("test")
    ] == [("a",)]
    broken = hub_folder(tmp_path / "broken", {"validation": {"question": ["q1", "q2"], "answers": [["a"], ["b"]]}})
    with pytest.raises(DataError) as caught:
        list(NaturalQuestions(source="hub", hub_id=str(broken), cache_dir=str(tmp_path / "c")).load("test"))
    assert str(broken) in str(caught.value) and "row 0" in str(caught.value) and caught.value.field == "answer"


def test_hub_source_and_path_conflict():
    with pytest.raises(ConfigurationError, match="not both"):
        NaturalQuestions(source="hub", path="x.jsonl")


# ---- the sample set ----


def sample_root(tmp_path: Path, questions: list[dict]) -> Path:
    passages = [
        {"id": "p1", "title": "Moon", "text": "Apollo 17 left the Moon in December 1972."},
        {"id": "p2", "title": "", "text": "Two."},
    ]
    write(tmp_path / "passages.jsonl", "".join(json.dumps(p) + "\n" for p in passages))
    write(tmp_path / "questions.jsonl", "".join(json.dumps(q) + "\n" for q in questions))
    return tmp_path


def test_sample_examples_carry_gold_passages(tmp_path):
    root = sample_root(
        tmp_path,
        [
            {"id": "s1", "split": "test", "question": "When?", "answers": ["1972"], "passage_ids": ["p1", "p2"]},
            {"id": "s2", "split": "train", "question": "What?", "answers": ["two"], "passage_ids": []},
        ],
    )
    [example] = Sample(root=root).load("test")
    assert example.id == "s1" and example.answers == ("1972",)
    assert [(p.id, p.title) for p in example.ctxs] == [("p1", "Moon"), ("p2", "")]
    assert [e.id for e in Sample(root=root).load("train")] == ["s2"]
    assert Sample(root=root).describe("test")["note"] == "a smoke-test set, not a benchmark"


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"passage_ids": ["p9"]}, "passage_ids"),
        ({"split": "dev"}, "split"),
        ({"answers": []}, "answers"),
        ({"id": "s1"}, "id"),
    ],
)
def test_sample_bad_records(tmp_path, bad, field):
    good = {"id": "s1", "split": "test", "question": "q", "answers": ["a"], "passage_ids": ["p1"]}
    root = sample_root(tmp_path, [good, {**good, "id": "s2", **bad}])
    with pytest.raises(DataError) as caught:
        Sample(root=root).load("test")
    assert (caught.value.line, caught.value.field) == (2, field)
    assert str(root / "questions.jsonl") in str(caught.value)


def test_sample_missing_files(tmp_path):
    with pytest.raises(ConfigurationError, match="questions.jsonl"):
        Sample(root=tmp_path).load("test")


def test_bundled_sample_data_shape():
    test, train = Sample().load("test"), Sample().load("train")
    assert len(test) >= 90
    assert len({e.id for e in [*test, *train]}) == len(test) + len(train)
    assert all(e.question and e.answers and e.ctxs for e in test)


# ---- registration ----


def test_registered_through_the_builtin_entry_point():
    registry = load_plugins(builtins_only=True)["datasets"]
    expected = {
        "nq": ("nq-open", "naturalquestions"),
        "triviaqa": ("tqa", "trivia_qa"),
        "webq": ("webquestions", "web_questions"),
        "fid-json": (),
        "sample": (),
    }
    for name, aliases in expected.items():
        entry = registry.get(name)
        assert entry.aliases == aliases and entry.description and isinstance(entry.factory_ref, str)
        assert all(registry.get(alias) is entry for alias in aliases)
    assert registry.get("tqa").load() is TriviaQA
    assert registry.get("sample").load() is Sample
    assert isinstance(registry.get("nq").build(data_dir="/nowhere"), NaturalQuestions)


def test_plugin_module_imports_neither_torch_nor_datasets(tmp_path):
    data = write(tmp_path / "q.qa.csv", "q\t['a']\n")
    code = f"""
import sys
import iagbench_plugins.datasets as plugin
from iagbench.contract.plugins import load_plugins
registry = load_plugins(entry_points=False, plugin_files=(), extra=(plugin,))["datasets"]
assert len(list(registry.get("nq").build(path={str(data)!r}).load("test"))) == 1
heavy = sorted(m for m in ("torch", "datasets", "pandas", "transformers") if m in sys.modules)
assert not heavy, heavy
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
