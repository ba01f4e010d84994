"""`iagbench run` under torchrun: shards by example id, rank 0 merges into the one-process file, and a
run interrupted with one number of processes resumes with another, every example scored once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from test_train import kill_group

from iagbench.contract.errors import ConfigurationError, ProcessesError, RunFolderError
from iagbench.contract.plugins import load_plugins
from iagbench.runs.processes import Processes, shard_of
from iagbench.runs.runner import RunSpec, run
from iagbench_plugins.datasets.sample import Sample

SAMPLE_TEST = Sample().load("test")
# the bare prompt: with the few-shot one the random model gives every question the same answer
TINY = (
    "--reader",
    "tiny-llama",
    "--limit",
    "20",
    "--batch-size",
    "4",
    "--reader-args",
    "prompt=plain,max_new_tokens=4",
    "--no-progress",
)
ECHO = ("--reader", "echo", "--limit", "40", "--batch-size", "2", "--no-progress")
LEFTOVERS = ("predictions.rank*", "rank*-of-*.json")


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n")[:-1]]


def untimed(record: dict) -> dict:
    """A record without its wall seconds (a measurement that differs between runs)."""
    return {**record, "cost": {k: v for k, v in record.get("cost", {}).items() if k != "seconds"}}


def read(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text(encoding="utf-8"))


def torchrun(nproc: int, *args: str, cwd: Path, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    """``python -m torch.distributed.run --nproc_per_node N -m iagbench.commands.main run ARGS`` (no process group)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "iagbench.commands.main", "run", *args]  # fmt: skip
    return subprocess.Popen(
        command, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, text=True, **popen
    )


def finished(process: subprocess.Popen, timeout: float = 240) -> str:
    """Wait for a launch started with pipes; fail with its output unless it exited 0; return its stderr."""
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"exit {process.returncode}\n{out}\n{err[-6000:]}"
    return err


def only_folder(runs: Path) -> Path:
    folders = list(runs.iterdir())
    assert len(folders) == 1, folders
    return folders[0]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The reference: the TINY configuration run by one process (this one; tests/test_runs.py checks it
    writes what `iagbench run` writes)."""
    spec = RunSpec("sample", "test", "none", "tiny-llama", reader_args={"prompt": "plain", "max_new_tokens": 4}, limit=20,
                   batch_size=4, runs_dir=tmp_path_factory.mktemp("one_process") / "runs")  # fmt: skip
    folder, _ = run(spec, load_plugins(builtins_only=True), progress=False, log=lambda message: None)
    assert len({r["raw"] for r in lines(folder.predictions_path)}) >= 10  # answers that tell examples apart
    return folder.path


@pytest.fixture(scope="module")
def echo_reference(tmp_path_factory, echo_plugins) -> Path:
    """The ECHO configuration run by one process, in this process."""
    spec = RunSpec(
        "sample", "test", "none", "echo", limit=40, batch_size=2, runs_dir=tmp_path_factory.mktemp("echo") / "runs"
    )
    folder, _ = run(spec, echo_plugins, progress=False, log=lambda message: None)
    return folder.path


@pytest.mark.parametrize("nproc", [2, 3])
def test_several_processes_write_what_one_process_writes(one_process, nproc, tmp_path):
    process = torchrun(nproc, *TINY, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err[-6000:]
    folder = only_folder(tmp_path / "runs")
    assert folder.name == one_process.name  # the configuration hash does not depend on the world size
    # same records, same order; but for wall seconds, the same per-example cost (docs/cost.md)
    assert [untimed(r) for r in lines(folder / "predictions.jsonl")] == [
        untimed(r) for r in lines(one_process / "predictions.jsonl")
    ]
    assert not [p for pattern in LEFTOVERS for p in folder.glob(pattern)]
    assert out.count("run folder:") == 1 and folder.name in out  # one table, from rank 0

    results, reference = read(folder, "results.json"), read(one_process, "results.json")
    assert results["n"] == 20 and results["metrics"] == reference["metrics"] and results["world_size"] == nproc
    cost, one = results["cost"], reference["cost"]  # the ranks' costs add up to one process's
    assert {k: v for k, v in cost["total"].items() if k != "seconds"} == {
        k: v for k, v in one["total"].items() if k != "seconds"
    }
    assert cost["total"]["tokens"]["input"] > 0 and cost["total"]["reader_flops"] > 0
    assert len(cost["peak_memory"]["per_process"]) == nproc and cost["peak_memory"]["bytes"] == sum(
        cost["peak_memory"]["per_process"]
    )
    shards = results["predicted_by"]
    assert [s["file"] for s in shards] == [f"predictions.rank{r}-of-{nproc}.jsonl" for r in range(nproc)]
    expected = [sum(shard_of(e.id, nproc) == r for e in SAMPLE_TEST[:20]) for r in range(nproc)]
    assert [s["examples"] for s in shards] == expected and all(
        s["batch_size"] == 4 and s["device"] == "cpu" for s in shards
    )
    assert read(folder, "env.json")["world_size"] == nproc and read(one_process, "env.json")["world_size"] == 1
    assert read(folder, "config.json")["identity"] == read(one_process, "config.json")["identity"]


def test_two_processes_killed_then_three_resume_without_duplicates(echo_reference, echo_plugin_file, tmp_path):
    env = {"IAGBENCH_PLUGINS": str(echo_plugin_file)}
    # The echo reader stalls on its 3rd batch: each rank writes 2 batches of 2, then the launch is killed.
    with open(tmp_path / "killed.err", "w") as err:
        process = torchrun(2, *ECHO, cwd=tmp_path, env={**env, "ECHO_READER_STALL_AFTER": "2"},
                           stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while sorted(len(lines(p)) for p in tmp_path.glob("runs/*/predictions.rank*-of-2.jsonl")) != [4, 4]:
            assert process.poll() is None, (tmp_path / "killed.err").read_text()[-6000:]
            assert time.monotonic() < deadline, "the two ranks did not write 4 predictions each in 120 s"
            time.sleep(0.1)
    finally:
        kill_group(process)  # torchrun's workers too: each is in a session of its own
    folder = only_folder(tmp_path / "runs")
    killed = {r["id"]: r for p in folder.glob("predictions.rank*-of-2.jsonl") for r in lines(p)}
    assert len(killed) == 8 and not (folder / "predictions.jsonl").exists() and not (folder / "results.json").exists()
    # and rank 1 had cut its next line short
    reference = {r["id"]: r for r in lines(echo_reference / "predictions.jsonl")}
    cut = next(i for i in reference if i not in killed and shard_of(i, 2) == 1)
    with open(folder / "predictions.rank1-of-2.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(reference[cut])[:40])

    process = torchrun(3, *ECHO, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = finished(process)
    assert "(8 of 40 examples already done)" in err
    records = lines(folder / "predictions.jsonl")
    # each example once, in the one-process order
    assert [untimed(r) for r in records] == [untimed(r) for r in lines(echo_reference / "predictions.jsonl")]
    assert all(untimed(reference[i]) == untimed(r) for i, r in killed.items())
    assert not [p for pattern in LEFTOVERS for p in folder.glob(pattern)]
    results = read(folder, "results.json")
    assert results["n"] == 40 and results["world_size"] == 3
    by_file = {s["file"]: s["examples"] for s in results["predicted_by"]}
    assert by_file["predictions.rank0-of-2.jsonl"] == by_file["predictions.rank1-of-2.jsonl"] == 4
    assert sum(by_file[f"predictions.rank{r}-of-3.jsonl"] for r in range(3)) == 32  # only what was left
    assert [s["world_size"] for s in read(folder, "env.json")["resumed"]] == [3]


def test_rank_0_alone_stops_naming_the_missing_rank_then_one_process_finishes(echo_plugins, echo_reference, tmp_path):
    spec = RunSpec("sample", "test", "none", "echo", limit=40, batch_size=2, output=tmp_path / "run", wait_timeout=0.5)
    with pytest.raises(
        ProcessesError, match=r"no new prediction from rank\(s\) 1 of 2 in 0.5 s \(\d+ examples missing\)"
    ):
        run(spec, echo_plugins, progress=False, log=lambda message: None, processes=Processes(0, 2, 0))
    shard = spec.output / "predictions.rank0-of-2.jsonl"
    done = [r["id"] for r in lines(shard)]
    assert sorted(done) == sorted(e.id for e in SAMPLE_TEST[:40] if shard_of(e.id, 2) == 0)
    assert (spec.output / "rank0-of-2.json").is_file() and not (spec.output / "results.json").exists()

    logs: list[str] = []
    folder, results = run(spec, echo_plugins, progress=False, log=logs.append)  # one process takes over
    assert f"({len(done)} of 40 examples already done)" in logs[0]
    assert [untimed(r) for r in lines(folder.predictions_path)] == [
        untimed(r) for r in lines(echo_reference / "predictions.jsonl")
    ]
    assert not [p for pattern in LEFTOVERS for p in folder.path.glob(pattern)]
    assert [(s["file"], s["examples"]) for s in results["predicted_by"]] == [
        ("predictions.jsonl", 40 - len(done)),
        ("predictions.rank0-of-2.jsonl", len(done)),
    ]


def test_another_rank_waits_for_rank_0_to_start_the_folder(echo_plugins, tmp_path):
    spec = RunSpec("sample", "test", "none", "echo", limit=10, output=tmp_path / "run", wait_timeout=0.3)
    with pytest.raises(ProcessesError, match=r"config.json: rank 0 has not written it after 0.3 s"):
        run(spec, echo_plugins, progress=False, log=lambda message: None, processes=Processes(1, 2, 1))
    assert not spec.output.exists()


def test_a_merge_cut_short_is_finished_and_two_different_predictions_are_refused(
    echo_plugins, echo_reference, tmp_path
):
    spec = RunSpec("sample", "test", "none", "echo", limit=40, batch_size=2)
    records = lines(echo_reference / "predictions.jsonl")

    def unfinished(name: str, shard: list[dict]) -> Path:
        folder = Path(shutil.copytree(echo_reference, tmp_path / name))
        (folder / "results.json").unlink()
        (folder / "predictions.rank1-of-3.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in shard)
        )
        return folder

    # predictions.jsonl written, shards not yet removed: the copies are the same records
    folder = unfinished("copied", records[5:9])
    _, results = run(replace(spec, output=folder), echo_plugins, progress=False, log=lambda message: None)
    assert lines(folder / "predictions.jsonl") == records and results["n"] == 40
    assert not list(folder.glob("predictions.rank*"))

    changed = dict(records[7], prediction="something else")
    folder = unfinished("conflict", [changed])
    with pytest.raises(RunFolderError, match=f"example '{changed['id']}' has another prediction"):
        run(replace(spec, output=folder), echo_plugins, progress=False, log=lambda message: None)


def test_launcher_environment():
    assert Processes.from_environment({}) == Processes(0, 1, 0)
    assert Processes.from_environment({"RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "0"}) == Processes(2, 3, 0)
    with pytest.raises(ConfigurationError, match="WORLD_SIZE is set but LOCAL_RANK is not"):
        Processes.from_environment({"RANK": "1", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigurationError, match="RANK=2, WORLD_SIZE=2"):
        Processes.from_environment({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    ids = [e.id for e in SAMPLE_TEST]
    for world in (1, 2, 3, 8):
        owners = [[i for i in ids if Processes(r, world, r).owns(i)] for r in range(world)]
        assert sorted(sum(owners, [])) == sorted(ids)  # every example has one rank
        assert min(map(len, owners)) >= len(ids) / world / 2  # and the ranks share them out
