"""Run folders under faults: two processes on one folder, duplicated ids, `score --write` on an unfinished
run, a stray predictions file, a read-only folder, a full disk, bad paths and bad files: one-line errors,
each example once, no line lost."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from iagbench.contract.errors import RunFolderError
from iagbench.runs.folder import RunFolder

ECHO = ("run", "--reader", "echo", "--limit", "20", "--no-progress")
MIXED = ("--reader-args", "mode=mixed", "--batch-size", "2")
IDS = 20


def lines(path: Path) -> list[dict]:
    """The records of a JSON-lines file, without the wall-clock seconds of their cost (they differ run to run)."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n")[:-1]]
    for record in records:
        record.get("cost", {}).pop("seconds", None)
    return records


def one_line_error(stderr: str) -> str:
    assert stderr.count("\n") == 1 and stderr.startswith("iagbench: error: "), stderr
    assert "Traceback" not in stderr
    return stderr


def last_line_error(stderr: str) -> str:
    """The error line that ends a run's messages (its progress lines come first)."""
    assert "Traceback" not in stderr and stderr.endswith("\n"), stderr
    *before, last = stderr.splitlines()
    assert last.startswith("iagbench: error: ") and not any("error" in line for line in before), stderr
    return last


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but for the (empty when free) lock files."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.endswith(".lock")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, invoke_cli, echo_plugin_file) -> Path:
    """20 sample questions answered by the echo reader in mixed mode (every score varies), in 10 batches."""
    folder = tmp_path_factory.mktemp("finished") / "run"
    code, _, err = invoke_cli(*ECHO, *MIXED, "--output", str(folder), plugin_files=(echo_plugin_file,))
    assert code == 0, err
    return folder


@pytest.fixture
def echo(invoke_cli, echo_plugin_file):
    """``echo(*args)``: `iagbench` in this process with the echo reader loaded."""
    return lambda *args: invoke_cli(*args, plugin_files=(echo_plugin_file,))


def unfinished_copy(finished: Path, where: Path, keep: int = IDS) -> Path:
    folder = Path(shutil.copytree(finished, where))
    (folder / "results.json").unlink()
    text = (folder / "predictions.jsonl").read_text(encoding="utf-8")
    (folder / "predictions.jsonl").write_text("".join(text.splitlines(keepends=True)[:keep]), encoding="utf-8")
    return folder


# ---- 1. one writer per run folder ----


def test_two_runs_on_one_folder_one_stops_naming_the_holder(iagbench_cli, cli, echo_plugin_file, tmp_path):
    output = tmp_path / "run"
    args = (*ECHO, "--batch-size", "1", "--reader-args", "delay=0.4", "--output", str(output))
    env = {**os.environ, "IAGBENCH_PLUGINS": str(echo_plugin_file)}
    both = [
        subprocess.Popen([iagbench_cli, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    ended = [(process, *process.communicate(timeout=120)) for process in both]
    assert sorted(process.returncode for process, _, _ in ended) == [0, 2], [err for _, _, err in ended]
    winner = next(process for process, _, _ in ended if process.returncode == 0)
    loser_err = next(err for process, _, err in ended if process.returncode == 2)
    message = one_line_error(loser_err)
    assert f"{output}: another iagbench process is writing this run folder" in message
    assert f"pid {winner.pid} on {socket.gethostname()} since " in message

    ids = [record["id"] for record in lines(output / "predictions.jsonl")]
    assert len(ids) == IDS and len(set(ids)) == IDS
    rerun = cli(*args, env={"IAGBENCH_PLUGINS": str(echo_plugin_file)})
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads((output / "results.json").read_text())["n"] == IDS


def test_locks_are_per_rank_and_name_their_holder(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    with folder.lock(0), folder.lock(1):  # rank 0's files and rank 1's shard: two writers side by side
        with pytest.raises(RunFolderError, match=rf"pid {os.getpid()} on .* since "):
            folder.lock(0).acquire()
        with pytest.raises(RunFolderError, match=r"rank 1's shard"):
            folder.lock(1).acquire()
    with folder.lock(0):  # released on exit
        pass


def test_a_folder_with_duplicated_ids_is_repaired_on_resume(finished, echo, tmp_path):
    folder = unfinished_copy(finished, tmp_path / "doubled", keep=14)
    first = (folder / "predictions.jsonl").read_bytes()
    again = [dict(record, prediction="second copy") for record in lines(folder / "predictions.jsonl")[:6]]
    with open(folder / "predictions.jsonl", "a", encoding="utf-8") as handle:  # what two writers left behind
        handle.write("".join(json.dumps(record) + "\n" for record in again))

    code, _, err = echo(*ECHO, *MIXED, "--output", str(folder))
    assert code == 0, err
    assert sum("duplicated records" in line for line in err.splitlines()) == 1, err
    assert "dropped 6 duplicated records" in err and "kept the first complete record of each of 14 examples" in err
    assert "(14 of 20 examples already done)" in err
    repaired = (folder / "predictions.jsonl").read_bytes()
    assert repaired.startswith(first)  # the first record of each id kept, in place
    records = lines(folder / "predictions.jsonl")
    assert len(records) == IDS and len({r["id"] for r in records}) == IDS
    assert "second copy" not in repaired.decode()
    assert lines(folder / "predictions.jsonl") == lines(finished / "predictions.jsonl")


# ---- 2. score --write ----


def test_score_write_on_an_unfinished_run_touches_nothing(finished, echo, tmp_path):
    folder = unfinished_copy(finished, tmp_path / "unfinished", keep=14)
    before = files_of(folder)
    code, _, err = echo("score", str(folder), "--write", "--metrics", "em")
    assert code == 2 and "run not finished" in one_line_error(err)
    assert files_of(folder) == before

    code, _, err = echo(*ECHO, *MIXED, "--output", str(folder))
    assert code == 0, err
    results = json.loads((folder / "results.json").read_text())
    assert results["n"] == IDS and set(results["counts"].values()) == {IDS}, results["counts"]


def test_score_write_is_atomic_when_the_disk_fills(finished, echo, tmp_path, monkeypatch):
    folder = Path(shutil.copytree(finished, tmp_path / "copy"))
    before = files_of(folder)
    monkeypatch.setattr(os, "write", failing_write(os.write, ".tmp", after=0))
    code, _, err = echo("score", str(folder), "--write", "--metrics", "em")
    assert code == 2 and "No space left on device" in one_line_error(err)
    assert files_of(folder) == before  # no half-written file, no temporary file left
    monkeypatch.undo()

    code, _, err = echo("score", str(folder), "--write", "--metrics", "em")
    assert code == 0, err
    assert all(set(record["scores"]) == {"em"} for record in lines(folder / "predictions.jsonl"))
    assert set(json.loads((folder / "results.json").read_text())["metrics"]) == {"em"}


# ---- 3. a stray predictions file ----


def test_stray_predictions_without_config_are_refused(finished, echo, tmp_path):
    stray = tmp_path / "stray"
    stray.mkdir()
    shutil.copy(finished / "predictions.jsonl", stray / "predictions.jsonl")
    before = files_of(stray)
    code, out, err = echo(*ECHO, *MIXED, "--output", str(stray))
    assert code == 2 and out == ""
    assert f"{stray}: holds predictions but no config.json" in one_line_error(err)
    assert files_of(stray) == before


# ---- 4. one-line errors ----


def failing_write(real_write, suffix: str, after: int):
    """An ``os.write`` that, on the file ending in ``suffix``, lets ``after`` writes through, then writes half of
    the next one and fails with ENOSPC (a disk that fills mid-write)."""
    calls = {"n": 0}

    def write(fd: int, data) -> int:
        if not os.readlink(f"/proc/self/fd/{fd}").endswith(suffix):
            return real_write(fd, data)
        calls["n"] += 1
        if calls["n"] <= after:
            return real_write(fd, data)
        real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


def test_a_full_disk_mid_run_loses_no_line(finished, echo, tmp_path, monkeypatch):
    output = tmp_path / "run"
    monkeypatch.setattr(os, "write", failing_write(os.write, "predictions.jsonl", after=3))
    code, _, err = echo(*ECHO, *MIXED, "--output", str(output))
    assert code == 2
    message = last_line_error(err)
    assert f"{output / 'predictions.jsonl'}: cannot write (No space left on device)" in message
    written = (output / "predictions.jsonl").read_text(encoding="utf-8")
    assert written.endswith("\n") and lines(output / "predictions.jsonl") == lines(finished / "predictions.jsonl")[:6]
    monkeypatch.undo()

    code, _, err = echo(*ECHO, *MIXED, "--output", str(output))
    assert code == 0, err
    assert "(6 of 20 examples already done)" in err
    assert lines(output / "predictions.jsonl") == lines(finished / "predictions.jsonl")


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)``: chmod 555, and under root (which chmod does not stop) refuse writes there as the
    kernel would for anyone else."""

    def make(folder: Path) -> None:
        folder.chmod(0o555)
        if os.geteuid() != 0:
            return
        inside = str(folder.resolve()) + os.sep

        def denied(path) -> bool:
            named = isinstance(path, (str, os.PathLike))
            return named and str(Path(os.fspath(path)).resolve()).startswith(inside)

        def guard(real, writes):
            def call(path, *args, **kwargs):
                if denied(path) and writes(args, kwargs):
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
                return real(path, *args, **kwargs)

            return call

        def text_writes(args, kwargs) -> bool:
            return any(c in (args[0] if args else kwargs.get("mode", "r")) for c in "wax+")

        def flag_writes(args, kwargs) -> bool:
            return bool((args[0] if args else kwargs["flags"]) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))

        monkeypatch.setattr(os, "open", guard(os.open, flag_writes))
        monkeypatch.setattr(builtins, "open", guard(builtins.open, text_writes))
        monkeypatch.setattr(io, "open", guard(io.open, text_writes))

    yield make


def test_a_read_only_output_folder_is_one_line(finished, echo, tmp_path, read_only):
    folder = unfinished_copy(finished, tmp_path / "read-only", keep=14)
    before = files_of(folder)
    read_only(folder)
    try:
        code, _, err = echo(*ECHO, *MIXED, "--output", str(folder))
    finally:
        folder.chmod(0o755)
    assert code == 2
    message = one_line_error(err)
    assert str(folder) in message and "Permission denied" in message and "choose a writable --output" in message
    assert files_of(folder) == before


def test_output_pointing_at_a_file_is_one_line(echo, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("mine\n")
    code, _, err = echo(*ECHO, "--output", str(path))
    assert code == 2 and f"{path}: is a file, not a run folder" in one_line_error(err)
    assert path.read_text() == "mine\n"


def test_score_a_file_that_is_not_utf8_is_one_line(finished, echo, tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prediction": "x", "answers": ["x"]}\n{"prediction": "caf\xe9", "answers": ["x"]}\n')
    code, _, err = echo("score", str(path))
    assert code == 2 and f"{path}:2: not UTF-8 text" in one_line_error(err)

    folder = Path(shutil.copytree(finished, tmp_path / "run"))
    with open(folder / "predictions.jsonl", "ab") as handle:
        handle.write(b'{"id": "x", "prediction": "caf\xe9"}\n')
    code, _, err = echo("score", str(folder))
    assert code == 2 and f"{folder / 'predictions.jsonl'}:{IDS + 1}: not UTF-8 text" in one_line_error(err)


@pytest.mark.parametrize(
    "text, needle",
    [
        ('{"id": "a", "prediction": "x", "answers": ["x"]}\n' * 2, ":2: field 'id': example 'a' appears twice"),
        ("", ": no records to score"),
        ("\n\n", ": no records to score"),
    ],
)
def test_score_refuses_duplicated_ids_and_empty_files(echo, tmp_path, text, needle):
    path = tmp_path / "predictions.jsonl"
    path.write_text(text, encoding="utf-8")
    code, out, err = echo("score", str(path))
    assert code == 2 and out == "" and f"{path}{needle}" in one_line_error(err)


@pytest.mark.parametrize("command", ["report", "compare"])
def test_report_and_compare_on_a_missing_folder_say_so(finished, echo, tmp_path, command):
    missing = tmp_path / "no-such-run"
    code, _, err = echo(command, *([str(finished)] if command == "compare" else []), str(missing))
    message = one_line_error(err)
    assert code == 2 and f"no run folder at {missing}" in message and "same command again" not in message


def test_report_on_a_folder_that_is_not_a_run_says_so(echo, tmp_path):
    code, _, err = echo("report", str(tmp_path))
    assert code == 2 and f"{tmp_path}: not a run folder (no config.json)" in one_line_error(err)


def test_holder_line_waits_for_the_holder_to_write_it(tmp_path):
    folder = RunFolder(tmp_path)
    lock = folder.lock(0)
    started = time.monotonic()
    with lock:
        (tmp_path / ".lock").write_text("")  # as just after the holder took it, before it wrote who it is
        with pytest.raises(RunFolderError, match="holder unknown"):
            folder.lock(0).acquire()
    assert time.monotonic() - started < 5
