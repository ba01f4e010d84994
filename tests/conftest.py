"""Shared fixtures: the real data folder, the `iagbench` script, isolated plugins, and a model-free test reader."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from iagbench.contract.plugins import default_plugins, load_plugins

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("IAGBENCH_DATA") or REPO.parent / "shared" / "data")

ECHO_PLUGIN = textwrap.dedent(
    '''
    """A model-free reader for tests: deterministic answers, an optional delay, an optional stall."""

    import os
    import threading

    from iagbench import Answer, Reader, hookimpl

    STALL_ENV = "ECHO_READER_STALL_AFTER"


    def _bucket(example_id):
        digits = "".join(ch for ch in example_id if ch.isdigit())
        return int(digits) % 4 if digits else sum(map(ord, example_id)) % 4


    class EchoReader(Reader):
        """mode=first-word answers the question's first word; mode=mixed answers gold, 'the gold!',
        'not gold' or 'no idea' by id, so em, f1 and subspan_em all differ."""

        accepts = frozenset({"passages"})

        def __init__(self, mode="first-word", delay=0.0):
            self.mode, self.delay, self.calls = mode, float(delay), 0

        def answer(self, examples, contexts):
            self.calls += 1
            stall_after = int(os.environ.get(STALL_ENV) or 0)
            if stall_after and self.calls > stall_after:
                threading.Event().wait(120)  # hold still until the test kills this process
            if self.delay:
                threading.Event().wait(self.delay)
            return [self._one(example) for example in examples]

        def _one(self, example):
            if self.mode == "first-word":
                return example.question.split()[0]
            gold = example.answers[0]
            text = [gold, f"the {gold}!", f"not {gold}", "no idea"][_bucket(example.id)]
            return Answer(text, raw=f"raw: {text}")


    @hookimpl
    def register_readers(register):
        register("echo", EchoReader, description="model-free test reader")
    '''
)


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory):
    """Model caches in a temporary folder; no plugin files or runs folder from the user's shell."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IAGBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.delenv("IAGBENCH_PLUGINS", raising=False)
        patch.delenv("IAGBENCH_RUNS", raising=False)
        default_plugins.cache_clear()
        yield
    default_plugins.cache_clear()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: tiny models train far faster on one thread than on two that other jobs share."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real ../shared/data folder (or $IAGBENCH_DATA)."""
    if not (DATA / "nq" / "NQ-open.dev.jsonl").is_file():
        pytest.skip(f"the real data folder {DATA} is absent (set IAGBENCH_DATA or check out ../shared/data)")
    return DATA


@pytest.fixture(scope="session")
def iagbench_cli() -> str:
    """The `iagbench` console script of the running interpreter's environment."""
    script = Path(sys.executable).with_name("iagbench")
    if not script.is_file():
        pytest.skip(f"no iagbench script next to {sys.executable} (install the package: pip install -e .)")
    return str(script)


@pytest.fixture
def plugins():
    """The built-in plugins only, as this distribution's entry points register them."""
    return load_plugins(builtins_only=True)


@pytest.fixture(scope="session")
def echo_plugin_file(tmp_path_factory) -> Path:
    """A plugin file registering the model-free `echo` reader (load it with IAGBENCH_PLUGINS)."""
    path = tmp_path_factory.mktemp("plugin_files") / "echo_reader.py"
    path.write_text(ECHO_PLUGIN, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def echo_plugins(echo_plugin_file):
    """The built-in plugins plus the echo reader file."""
    return load_plugins(builtins_only=True, plugin_files=(str(echo_plugin_file),))


@pytest.fixture(scope="session")
def cli(iagbench_cli):
    """``cli(*args, env=..., cwd=...)`` runs the `iagbench` script in a subprocess."""
    return functools.partial(run_cli, iagbench_cli)


@pytest.fixture(scope="session")
def invoke_cli():
    """``invoke_cli(*args, plugin_files=...)`` calls `iagbench.commands.main.main` in this process: (code, stdout, stderr)."""
    return invoke


def run_cli(cli: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120):
    """Run the `iagbench` script in a subprocess; return the CompletedProcess (text)."""
    return subprocess.run(
        [cli, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})}
    )


@contextlib.contextmanager
def _plugin_env(plugin_files: tuple[Path, ...]):
    with pytest.MonkeyPatch.context() as patch:
        if plugin_files:
            patch.setenv("IAGBENCH_PLUGINS", os.pathsep.join(map(str, plugin_files)))
        default_plugins.cache_clear()
        try:
            yield
        finally:
            default_plugins.cache_clear()


def invoke(*args: str, plugin_files: tuple[Path, ...] = ()) -> tuple[int, str, str]:
    """Call `iagbench.commands.main.main` in this process; return (exit code, stdout, stderr)."""
    from iagbench.commands.main import main

    out, err = io.StringIO(), io.StringIO()
    with _plugin_env(plugin_files), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()
