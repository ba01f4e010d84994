"""Metrics against hand-computed golden values and the edge cases where definitions differ."""

from __future__ import annotations

import unicodedata

import pytest

from iagbench import Metric, Passage
from iagbench.contract.plugins import load_plugins
from iagbench.runs.scoring import aggregate, metric_versions, score_example
from iagbench.text.normalize import exact_match, f1, normalize_answer, subspan_em, token_f1
from iagbench_plugins.metrics import F1, ExactMatch, HasAnswer, SubspanEM, has_answer_ks
from iagbench_plugins.metrics.dpr_tokenizer import SimpleTokenizer, has_answer, has_answer_at_k

NFC_RONTGEN = unicodedata.normalize("NFC", "Röntgen")
NFD_RONTGEN = unicodedata.normalize("NFD", "Röntgen")


def passages(*texts: str) -> list[Passage]:
    return [Passage(text=text) for text in texts]


# --- normalize_answer -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Beatles", "beatles"),
        ("  Mark\tTWAIN\n", "mark twain"),
        ("U.S.A.", "usa"),
        ("a man, a plan, an canal", "man plan canal"),
        ("Anne the theatre", "anne theatre"),  # articles only as whole words
        ("the,beatles", "thebeatles"),  # punctuation goes before articles: "the" is no longer a word
        ("1,000", "1000"),
        ("3.14", "314"),
        ("“Twain”", "“twain”"),  # string.punctuation is ASCII only
        ("", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


# --- exact match ------------------------------------------------------------------------------


def test_em_articles_punctuation_case() -> None:
    assert exact_match("the Beatles!", ["Beatles"]) == 1.0
    assert exact_match("U.S.A.", ["USA"]) == 1.0
    assert exact_match("1,000", ["1000"]) == 1.0


def test_em_is_not_containment() -> None:
    assert exact_match("not Mark Twain", ["Mark Twain"]) == 0.0
    assert exact_match("Mark Twain Jr", ["Mark Twain"]) == 0.0


def test_em_max_over_aliases() -> None:
    assert exact_match("Samuel Clemens", ["Mark Twain", "Samuel Clemens"]) == 1.0
    assert exact_match("Samuel", ["Mark Twain", "Samuel Clemens"]) == 0.0


def test_em_has_no_unicode_normalisation() -> None:
    # The SQuAD normalisation compares code points: NFC and NFD spellings differ.
    assert exact_match(NFC_RONTGEN, [NFD_RONTGEN]) == 0.0
    assert exact_match(NFC_RONTGEN, ["röntgen"]) == 1.0


def test_em_numbers() -> None:
    assert exact_match("1972", ["1972"]) == 1.0
    assert exact_match("1972", ["19723"]) == 0.0


def test_em_and_f1_need_answers() -> None:
    with pytest.raises(ValueError):
        exact_match("x", [])
    with pytest.raises(ValueError):
        f1("x", [])
    with pytest.raises(TypeError):
        exact_match("Twain", "Twain")


# --- F1 ---------------------------------------------------------------------------------------


def test_f1_partial_overlap() -> None:
    # pred tokens [great, mark, twain], gold [mark, twain]: P = 2/3, R = 1, F1 = 4/5.
    assert f1("the great Mark Twain", ["Mark Twain"]) == pytest.approx(0.8, abs=1e-12)
    # pred [mark, twain], gold [samuel, langhorne, clemens, mark, twain]: P = 1, R = 2/5, F1 = 4/7.
    assert f1("Mark Twain", ["Samuel Langhorne Clemens Mark Twain"]) == pytest.approx(4 / 7, abs=1e-12)


def test_f1_counts_repeated_tokens_once_per_gold_occurrence() -> None:
    # Counter overlap: min(2, 1) = 1 common token; P = 1/2, R = 1, F1 = 2/3.
    assert token_f1("twain twain", "twain") == pytest.approx(2 / 3, abs=1e-12)


def test_f1_max_over_aliases() -> None:
    # vs "Samuel Clemens": P = 2/3, R = 1 -> 0.8; vs "Mark Twain": 0.
    assert f1("Samuel Langhorne Clemens", ["Mark Twain", "Samuel Clemens"]) == pytest.approx(0.8, abs=1e-12)
    assert f1("Mark Twain", ["Samuel Clemens", "mark twain."]) == 1.0


def test_f1_no_overlap_and_empty() -> None:
    assert f1("Hemingway", ["Mark Twain"]) == 0.0
    # SQuAD v1.1: no common token gives 0, even when both sides normalise to nothing.
    assert f1("the", ["a"]) == 0.0


# --- subspan EM -------------------------------------------------------------------------------


def test_subspan_em_containment() -> None:
    assert subspan_em("not Mark Twain", ["Mark Twain"]) == 1.0
    assert subspan_em("It was written by mark twain.", ["Mark Twain"]) == 1.0
    assert subspan_em("Hemingway", ["Mark Twain"]) == 0.0


def test_subspan_em_is_substring_based() -> None:
    # best_subspan_em is a plain substring test, unlike has_answer's token match.
    assert subspan_em("Twainer", ["Twain"]) == 1.0
    assert subspan_em("19723", ["1972"]) == 1.0


def test_subspan_em_aliases_and_empty() -> None:
    assert subspan_em("Samuel Clemens wrote it", ["Mark Twain", "Samuel Clemens"]) == 1.0
    assert subspan_em("Mark", ["Mark Twain"]) == 0.0
    assert subspan_em("anything", []) == 0.0


# --- DPR tokenizer and has_answer ---------------------------------------------------------------


def test_simple_tokenizer() -> None:
    tokens = SimpleTokenizer().tokenize("Hello, world! It's 3.5 Röntgen")
    assert tokens == ["Hello", ",", "world", "!", "It", "'", "s", "3", ".", "5", "Röntgen"]
    assert SimpleTokenizer().tokenize("Hello WORLD", uncased=True) == ["hello", "world"]
    # Combining marks stay inside the word.
    assert SimpleTokenizer().tokenize(NFD_RONTGEN) == [NFD_RONTGEN]


def test_has_answer_is_token_based() -> None:
    assert has_answer(["1972"], "It happened in 19723.") is False
    assert has_answer(["1972"], "It happened in 1972.") is True
    assert has_answer(["Twain"], "Twainer wrote it") is False
    assert has_answer(["Mark Twain"], "written by MARK  TWAIN, an American") is True
    assert has_answer(["Mark Twain"], "Mark the Twain") is False


def test_has_answer_punctuation_and_numbers_are_tokens() -> None:
    assert has_answer(["1,000"], "about 1,000 people") is True
    assert has_answer(["1000"], "about 1,000 people") is False
    assert has_answer(["U.S."], "the U.S. army") is True
    assert has_answer(["US"], "the U.S. army") is False


def test_has_answer_unicode_nfd() -> None:
    assert has_answer([NFC_RONTGEN], f"Wilhelm {NFD_RONTGEN} found X-rays") is True
    assert has_answer([NFD_RONTGEN], f"Wilhelm {NFC_RONTGEN} found X-rays") is True
    assert has_answer(["RÖNTGEN"], f"Wilhelm {NFC_RONTGEN}") is True
    assert has_answer(["Rontgen"], f"Wilhelm {NFC_RONTGEN}") is False


def test_has_answer_aliases_and_reference_quirk() -> None:
    assert has_answer(["Hemingway", "Twain"], "Twain wrote it") is True
    assert has_answer([], "Twain wrote it") is False
    # As in DPR: an answer with no tokens matches any text.
    assert has_answer([""], "Twain wrote it") is True


def test_has_answer_at_k() -> None:
    ctxs = passages("nothing", "still nothing", "Mark Twain wrote it", "more")
    assert has_answer_at_k(["Mark Twain"], ctxs, [1, 2, 3, 4]) == {1: 0.0, 2: 0.0, 3: 1.0, 4: 1.0}
    assert has_answer_at_k(["Hemingway"], ctxs, [1, 4]) == {1: 0.0, 4: 0.0}


def test_has_answer_reads_text_not_title() -> None:
    ctx = [Passage(text="An American writer and humorist.", title="Mark Twain")]
    assert has_answer_at_k(["Mark Twain"], ctx, [1]) == {1: 0.0}


# --- the metric classes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, ks",
    [
        (0, ()),
        (1, (1,)),
        (3, (1, 3)),
        (5, (1, 5)),
        (20, (1, 5, 20)),
        (25, (1, 5, 20, 25)),
        (100, (1, 5, 20, 100)),
        (150, (1, 5, 20, 100)),
    ],
)
def test_has_answer_ks(n: int, ks: tuple[int, ...]) -> None:
    assert has_answer_ks(n) == ks


def test_has_answer_metric_keys_and_capping() -> None:
    metric = HasAnswer()
    assert metric.score("x", ["Twain"], []) == {}
    ctxs = passages(*(["filler"] * 21 + ["Twain"] + ["filler"] * 3))  # answer in passage 22 of 25
    assert metric.score("x", ["Twain"], ctxs) == {
        "has_answer@1": 0.0,
        "has_answer@5": 0.0,
        "has_answer@20": 0.0,
        "has_answer@25": 1.0,
    }
    ctxs = passages(*(["filler"] * 120 + ["Twain"] + ["filler"] * 29))  # passage 121 of 150: beyond 100
    assert metric.score("x", ["Twain"], ctxs) == {
        "has_answer@1": 0.0,
        "has_answer@5": 0.0,
        "has_answer@20": 0.0,
        "has_answer@100": 0.0,
    }
    ctxs = passages("filler", "Twain", "filler")
    assert metric.score("x", ["Twain"], ctxs) == {"has_answer@1": 0.0, "has_answer@3": 1.0}


def test_metric_classes_on_not_mark_twain() -> None:
    args = ("not Mark Twain", ["Mark Twain"], [])
    assert ExactMatch().score(*args) == {"em": 0.0}
    assert SubspanEM().score(*args) == {"subspan_em": 1.0}
    assert F1().score(*args) == {"f1": pytest.approx(0.8, abs=1e-12)}  # P = 2/3, R = 1


def test_metric_classes_declare_name_and_version() -> None:
    for cls in (ExactMatch, F1, SubspanEM, HasAnswer):
        assert issubclass(cls, Metric)
        assert isinstance(cls.version, str) and cls.version
        assert cls.__doc__


def test_plugin_registers_through_plugin_manager() -> None:
    registry = load_plugins(builtins_only=True)["metrics"]
    for name, cls in [("em", ExactMatch), ("f1", F1), ("subspan_em", SubspanEM), ("has_answer", HasAnswer)]:
        entry = registry.get(name)
        assert entry.plugin == "iagbench-metrics"
        assert entry.description
        metric = entry.build()
        assert isinstance(metric, cls) and metric.name == name
    assert registry.get("em").build().score("The Beatles", ["beatles"], []) == {"em": 1.0}


def test_metrics_package_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, iagbench_plugins.metrics; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- scoring helpers --------------------------------------------------------------------------


def test_score_example_merges() -> None:
    metrics = [ExactMatch(), F1(), SubspanEM(), HasAnswer()]
    scores = score_example(metrics, "Mark Twain", ["Mark Twain"], passages("by Mark Twain", "none"))
    assert scores == {"em": 1.0, "f1": 1.0, "subspan_em": 1.0, "has_answer@1": 1.0, "has_answer@2": 1.0}


class _Broken(Metric):
    name = "broken"
    version = "0"

    def score(self, prediction, answers, passages):
        raise RuntimeError("boom")


def test_score_example_propagates_errors_and_rejects_duplicates() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        score_example([ExactMatch(), _Broken()], "a", ["a"], [])
    with pytest.raises(ValueError, match="em"):
        score_example([ExactMatch(), ExactMatch()], "a", ["a"], [])


def test_aggregate_means_in_percent_and_counts() -> None:
    records = [
        {"em": 1.0, "has_answer@1": 1.0},
        {"em": 0.0},
        {"em": 1.0, "has_answer@1": 0.0, "f1": 0.5},
    ]
    result = aggregate(records)
    assert result["metrics"] == {
        "em": pytest.approx(200 / 3, abs=1e-9),
        "has_answer@1": pytest.approx(50.0),
        "f1": pytest.approx(50.0),
    }
    assert result["counts"] == {"em": 3, "has_answer@1": 2, "f1": 1}
    assert aggregate([]) == {"metrics": {}, "counts": {}}
    assert aggregate(iter([{"em": 1.0}])) == {"metrics": {"em": 100.0}, "counts": {"em": 1}}


def test_metric_versions() -> None:
    assert metric_versions([ExactMatch(), HasAnswer()]) == {"em": "1", "has_answer": "1"}
