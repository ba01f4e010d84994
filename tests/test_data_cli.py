"""`iagbench data export` and `iagbench data stats` on the real data, through the `iagbench` script."""

from __future__ import annotations

import json

import pytest


def exported(result) -> list[dict]:
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")
    # JSON lines end at "\n" only: a question may hold U+2028, which str.splitlines() would split at
    return [json.loads(line) for line in result.stdout.split("\n")[:-1]]


@pytest.mark.parametrize(
    "dataset, split, count, first_question",
    [
        ("nq", "test", 3610, "when was the last time anyone was on the moon"),
        ("webq", "train", 3778, None),
        ("triviaqa", "test", 11313, None),
    ],
)
def test_export_writes_every_question_of_the_split(cli, data_dir, dataset, split, count, first_question):
    records = exported(cli("data", "export", dataset, "--split", split, "--data-dir", str(data_dir)))
    assert len(records) == count
    assert len({r["id"] for r in records}) == count
    for record in records:
        assert set(record) == {"id", "question", "answers"}
        assert isinstance(record["id"], str) and record["id"]
        assert isinstance(record["question"], str) and record["question"].strip()
        assert record["answers"] and all(isinstance(a, str) and a.strip() for a in record["answers"])
    if first_question:
        assert records[0]["question"] == first_question


def test_export_limit_and_data_folder_from_the_environment(cli, data_dir):
    limited = exported(
        cli("data", "export", "nq", "--split", "test", "--limit", "5", env={"IAGBENCH_DATA": str(data_dir)})
    )
    full = exported(cli("data", "export", "nq", "--split", "test", "--limit", "6", "--data-dir", str(data_dir)))
    assert len(limited) == 5 and limited == full[:5]


def test_export_of_a_file_with_passages_keeps_them(cli, data_dir):
    path = data_dir / "nq-oracle" / "nq-open-oracle.jsonl.gz"
    records = exported(
        cli("data", "export", "fid-json", "--split", "test", "--limit", "3", "--dataset-args", f"path={path}")
    )
    assert len(records) == 3
    assert all(r["ctxs"] and all(c["text"] for c in r["ctxs"]) for r in records)


def test_stats_reports_each_split(cli, data_dir):
    result = cli("data", "stats", "nq", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["dataset"] == "nq" and set(stats["splits"]) == {"train", "dev", "test"}
    counts = {split: info["examples"] for split, info in stats["splits"].items()}
    assert counts == {"test": 3610, "dev": 1800, "train": 8757}
    for info in stats["splits"].values():
        assert info["unique_ids"] == info["examples"] and info["answers_per_question_mean"] >= 1
        assert info["source"]["files"][0]["sha256"]


def test_stats_marks_a_split_without_files_as_unavailable(cli, data_dir):
    result = cli("data", "stats", "webq", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    splits = json.loads(result.stdout)["splits"]
    assert splits["test"]["examples"] == 2032 and splits["train"]["examples"] == 3778
    assert "has no local file for split 'dev'" in splits["dev"]["unavailable"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (("data", "export", "triviaqa", "--split", "dev"), "dataset 'triviaqa' has no local file for split 'dev'"),
        (("data", "export", "nq", "--split", "validation"), "dataset 'nq' has no split 'validation'"),
        (("data", "stats", "nq", "--split", "validation"), "dataset 'nq' has no split 'validation'"),
        (("data", "export", "trivia", "--split", "test"), "Did you mean 'triviaqa'"),
    ],
)
def test_data_errors_are_one_line(cli, data_dir, args, needle):
    result = cli(*args, "--data-dir", str(data_dir))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("iagbench: error: ")
    assert needle in result.stderr and "Traceback" not in result.stderr
