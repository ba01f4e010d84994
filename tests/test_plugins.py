"""The plugin manager and the registries: entry points, fake plugins, clashes, typos, lazy factories."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
import types

import pytest

import iagbench
from iagbench import ConfigurationError, Context, Imaginer, Reader, UnknownNameError, hookimpl
from iagbench.contract.plugins import builtin_entry_points, load_plugins
from iagbench.contract.registry import Entry, Registry
from iagbench.runs.runner import RunSpec, check_compatible, resolve, run
from iagbench_plugins.imaginers import NoImagination

BUILTINS = {  # plugin -> kind -> names it registers
    "iagbench-datasets": {"datasets": {"nq", "triviaqa", "webq", "fid-json", "sample"}},
    "iagbench-imaginers": {"imaginers": {"none", "given"}},
    "iagbench-hyperlora": {"imaginers": {"hyperlora"}},
    "iagbench-imagination": {"imaginers": {"generate", "imagine"}, "commands": {"compress"}},
    "iagbench-retrieval": {"imaginers": {"bm25", "dense", "hybrid"}},
    "iagbench-readers": {
        "readers": {
            "causal-lm",
            "smollm2-135m",
            "llama-7b",
            "llama-13b",
            "tiny-llama",
            "fid-t5",
            "fid-t5-base",
            "fid-t5-large",
            "fid-t5-3b",
            "fid-tiny",
        }
    },
    "iagbench-metrics": {"metrics": {"em", "f1", "subspan_em", "has_answer"}},
}
BUILTIN_PLUGINS = set(BUILTINS)
BUILTIN_NAMES = {
    kind: set().union(*(kinds.get(kind, set()) for kinds in BUILTINS.values()))
    for kind in ("datasets", "imaginers", "readers", "metrics")
}


def fake_plugin(name: str, **hooks) -> types.ModuleType:
    """A plugin module called ``name`` whose hooks are the given functions (marked as hook implementations)."""
    module = types.ModuleType(name)
    for hook, function in hooks.items():
        setattr(module, hook, hookimpl(function))
    return module


class PassageImaginer(Imaginer):
    provides = frozenset({"passages"})

    def imagine(self, examples):
        return [Context() for _ in examples]


def exploding(kind: str):
    """A factory class declaring ``provides``/``accepts`` that fails the test if it is ever built."""

    def __init__(self, **options):
        raise AssertionError(f"the {kind} was built although the pair is incompatible")

    return __init__


class DeafReader(Reader):
    accepts = frozenset()
    __init__ = exploding("reader")

    def answer(self, examples, contexts):
        raise AssertionError("never called")


class ExplodingPassageImaginer(PassageImaginer):
    __init__ = exploding("imaginer")


# ---- built-ins through this distribution's entry points ----


def test_builtins_come_from_this_distributions_entry_points(plugins):
    points = {ep.name: ep for ep in builtin_entry_points()}
    assert set(points) == BUILTIN_PLUGINS
    assert {name for name, _ in plugins.manager.list_name_plugin()} == BUILTIN_PLUGINS
    for name, plugin in plugins.manager.list_name_plugin():
        assert plugin is points[name].load()
    for kind, names in BUILTIN_NAMES.items():
        assert {entry.name for entry in plugins[kind]} == names
        assert all(entry.name in BUILTINS[entry.plugin][kind] for entry in plugins[kind])


def test_full_load_finds_the_builtins_with_their_distribution_and_version():
    plugins = load_plugins()
    described = {item["name"]: item for item in plugins.describe()}
    assert BUILTIN_PLUGINS <= set(described)
    for name, kinds in BUILTINS.items():
        item = described[name]
        assert item["distribution"] == "iagbench" and item["version"] == iagbench.__version__
        assert item["hooks"] == sorted(f"register_{kind}" for kind in kinds)
        assert {kind: set(names) for kind, names in item["components"].items()} == kinds
    for kind, names in BUILTIN_NAMES.items():
        assert names <= {entry.name for entry in plugins[kind]}


def test_third_party_entry_point_is_discovered(tmp_path, monkeypatch):
    (tmp_path / "iagbench_thirdparty_probe.py").write_text(
        textwrap.dedent(
            """
            from iagbench import hookimpl

            @hookimpl
            def register_imaginers(register):
                register("thirdparty-imaginer", "iagbench.runs.runner:DEFAULT_RUNS_DIR", description="probe")
            """
        )
    )
    dist_info = tmp_path / "iagbench_thirdparty_probe-1.2.3.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: iagbench-thirdparty-probe\nVersion: 1.2.3\n")
    (dist_info / "entry_points.txt").write_text("[iagbench]\nthirdparty = iagbench_thirdparty_probe\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "iagbench_thirdparty_probe", raising=False)

    plugins = load_plugins()
    assert plugins["imaginers"].get("thirdparty-imaginer").plugin == "thirdparty"
    described = {item["name"]: item for item in plugins.describe()}
    assert described["thirdparty"]["distribution"] == "iagbench-thirdparty-probe"
    assert described["thirdparty"]["version"] == "1.2.3"
    assert "thirdparty-imaginer" not in load_plugins(builtins_only=True)["imaginers"]


# ---- fake plugins ----


def test_extra_plugin_adds_an_imaginer_the_runner_resolves():
    def register_imaginers(register):
        register("fake-imaginer", PassageImaginer, aliases=("fake-alias",), description="a fake")

    plugin = fake_plugin("fake_plugin", register_imaginers=register_imaginers)
    plugins = load_plugins(builtins_only=True, extra=(plugin,))
    entry = plugins["imaginers"].get("fake-imaginer")
    assert entry.plugin == "fake_plugin" and entry.description == "a fake"
    assert plugins["imaginers"].get("fake-alias") is entry
    assert isinstance(entry.build(), PassageImaginer)
    resolved = resolve(RunSpec("sample", "test", "fake-alias", "tiny-llama"), plugins)
    assert resolved.imaginer is entry and resolved.reader.name == "tiny-llama"
    assert "fake_plugin" in {item["name"] for item in plugins.describe()}
    assert "fake-imaginer" not in load_plugins(builtins_only=True)["imaginers"]


@pytest.mark.parametrize("name, aliases, clash", [("sample", (), "sample"), ("my-nq", ("nq-open",), "nq-open")])
def test_a_name_or_alias_registered_twice_names_both_plugins(name, aliases, clash):
    def register_datasets(register):
        register(name, "somewhere:Something", aliases=aliases)

    with pytest.raises(ConfigurationError) as error:
        load_plugins(builtins_only=True, extra=(fake_plugin("intruder", register_datasets=register_datasets),))
    message = str(error.value)
    assert f"'{clash}' is registered twice" in message
    assert "'iagbench-datasets'" in message and "'intruder'" in message


def test_two_fake_plugins_clashing_on_a_reader_name():
    def first(register):
        register("twin", DeafReader)

    def second(register):
        register("other", DeafReader, aliases=("twin",))

    with pytest.raises(ConfigurationError) as error:
        load_plugins(
            builtins_only=True,
            extra=(fake_plugin("one", register_readers=first), fake_plugin("two", register_readers=second)),
        )
    message = str(error.value)
    assert "reader name 'twin' is registered twice: by plugin '" in message
    assert "'one'" in message and "'two'" in message


def test_misspelt_hook_makes_loading_fail():
    def register_reader(register):  # typo: the hook is register_readers
        register("typo-reader", DeafReader)

    with pytest.raises(ConfigurationError, match="unknown hook 'register_reader'"):
        load_plugins(builtins_only=True, extra=(fake_plugin("typo_plugin", register_reader=register_reader),))


def test_misspelt_hook_in_a_plugin_file_is_one_line_on_the_command_line(tmp_path, invoke_cli):
    typo = tmp_path / "typo_plugin.py"
    typo.write_text("from iagbench import hookimpl\n\n@hookimpl\ndef register_reader(register):\n    pass\n")
    code, out, err = invoke_cli("list", plugin_files=(typo,))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("iagbench: error:") and "register_reader" in err


def test_bad_registrations_are_refused():
    def no_name(register):
        register("", DeafReader)

    def not_callable(register):
        register("number", 42)

    with pytest.raises(ConfigurationError, match="without a name"):
        load_plugins(builtins_only=True, extra=(fake_plugin("p1", register_readers=no_name),))
    with pytest.raises(ConfigurationError, match="neither callable nor a 'module:attribute' string"):
        load_plugins(builtins_only=True, extra=(fake_plugin("p2", register_readers=not_callable),))


# ---- names ----


def test_unknown_name_suggests_close_names_and_lists_the_known_ones(plugins):
    with pytest.raises(UnknownNameError) as error:
        plugins["readers"].get("tiny-lama")
    message = str(error.value)
    assert "unknown reader 'tiny-lama'" in message and "Did you mean 'tiny-llama'" in message
    assert (
        "Known readers: causal-lm, fid-t5, fid-t5-3b, fid-t5-base, fid-t5-large, fid-tiny, llama-13b, llama-7b, smollm2-135m, tiny-llama"
        in message
    )

    with pytest.raises(UnknownNameError, match="Did you mean 'closed-book'"):
        plugins["imaginers"].get("closed-bok")

    with pytest.raises(UnknownNameError) as error:
        plugins["datasets"].get("zzzz")
    assert "Did you mean" not in str(error.value) and "nq-open" in str(error.value) and "webq" in str(error.value)


def test_empty_registry_says_none():
    with pytest.raises(UnknownNameError, match=r"Known metrics: \(none\)"):
        Registry("metrics").get("em")


# ---- lazy factories ----


def test_lazy_factory_is_imported_only_when_used(tmp_path, monkeypatch):
    module_name = "iagbench_lazy_probe_module"
    (tmp_path / f"{module_name}.py").write_text(
        "from iagbench import Reader\n"
        "class ProbeReader(Reader):\n"
        "    accepts = frozenset({'passages'})\n"
        "    def __init__(self, **options):\n"
        "        self.options = options\n"
        "    def answer(self, examples, contexts):\n"
        "        return ['x' for _ in examples]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module_name, raising=False)

    def register_readers(register):
        register("probe", f"{module_name}:ProbeReader")

    plugins = load_plugins(builtins_only=True, extra=(fake_plugin("lazy_plugin", register_readers=register_readers),))
    entry = plugins["readers"].get("probe")
    assert module_name not in sys.modules
    assert entry.factory_ref == f"{module_name}:ProbeReader"
    assert entry.declared("accepts") == frozenset({"passages"})
    assert module_name in sys.modules
    reader = entry.build(k=3)
    assert type(reader).__name__ == "ProbeReader" and reader.options == {"k": 3}


def test_lazy_reference_without_attribute_is_a_configuration_error():
    entry = Entry("readers", "broken", "just_a_module", plugin="p")
    with pytest.raises(ConfigurationError, match="must read 'module:attribute'"):
        entry.load()


def test_list_and_plugins_commands_import_neither_torch_nor_transformers():
    code = textwrap.dedent(
        """
        import sys
        from iagbench.commands.main import main
        assert main(["list"]) == 0
        assert main(["list", "readers"]) == 0
        assert main(["plugins"]) == 0
        heavy = [m for m in ("torch", "transformers", "datasets") if m in sys.modules]
        assert not heavy, heavy
        lazy = [m for m in ("iagbench_plugins.readers.causal_lm", "iagbench_plugins.datasets.qa") if m in sys.modules]
        assert not lazy, lazy
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "tiny-llama" in result.stdout and "closed-book" in result.stdout and "has_answer" in result.stdout
    described = json.loads(result.stdout[result.stdout.index("\n[") + 1 :])
    assert BUILTIN_PLUGINS <= {item["name"] for item in described}


# ---- plugin files ----


def test_plugin_files_from_the_environment(tmp_path, monkeypatch):
    first, second = tmp_path / "first.py", tmp_path / "second.py"
    first.write_text(
        "from iagbench import hookimpl\n\n@hookimpl\ndef register_metrics(register):\n"
        "    register('file-metric', 'iagbench_plugins.metrics:ExactMatch', description='from a file')\n"
    )
    second.write_text(
        "from iagbench import hookimpl\n\n@hookimpl\ndef register_datasets(register):\n"
        "    register('file-dataset', 'iagbench_plugins.datasets.sample:Sample')\n"
    )
    monkeypatch.setenv("IAGBENCH_PLUGINS", os.pathsep.join([str(first), str(second)]))
    plugins = load_plugins(builtins_only=True)
    assert plugins["metrics"].get("file-metric").plugin == f"file:{first}"
    assert plugins["datasets"].get("file-dataset").plugin == f"file:{second}"
    assert plugins["metrics"].get("file-metric").build().score("Paris", ["paris"], []) == {"em": 1.0}

    monkeypatch.setenv("IAGBENCH_PLUGINS", str(tmp_path / "missing.py"))
    with pytest.raises(ConfigurationError, match="missing.py does not exist"):
        load_plugins(builtins_only=True)


def test_plugin_file_reader_is_listed_by_the_command_line(echo_plugin_file, invoke_cli):
    code, out, _ = invoke_cli("list", "readers", plugin_files=(echo_plugin_file,))
    assert code == 0
    assert any(
        line.split()[0] == "echo" and line.endswith(f"[file:{echo_plugin_file}]") for line in out.splitlines()[1:]
    )
    code, out, _ = invoke_cli("list", "readers")
    assert code == 0 and "echo" not in out.split()


# ---- compatibility ----


def test_incompatible_pair_is_refused_before_anything_is_built(tmp_path):
    def register_imaginers(register):
        register("passage-maker", ExplodingPassageImaginer)

    def register_readers(register):
        register("deaf", DeafReader)
        register("deaf-partial", functools.partial(DeafReader))

    plugins = load_plugins(
        builtins_only=True,
        extra=(fake_plugin("compat", register_imaginers=register_imaginers, register_readers=register_readers),),
    )
    for reader in ("deaf", "deaf-partial"):
        spec = RunSpec("sample", "test", "passage-maker", reader, limit=2, runs_dir=tmp_path / "runs")
        with pytest.raises(ConfigurationError) as error:
            run(spec, plugins, progress=False, log=lambda message: None)
        message = str(error.value)
        assert (
            f"imaginer 'passage-maker' provides ['passages'] but reader '{reader}' accepts only no context" in message
        )
    assert not (tmp_path / "runs").exists()
    # The same imaginer passes with a reader that accepts passages (still nothing built).
    check_compatible(plugins["imaginers"].get("passage-maker"), plugins["readers"].get("tiny-llama"))
    check_compatible(plugins["imaginers"].get("none"), plugins["readers"].get("deaf"))


def test_undeclared_or_unknown_context_kinds_are_refused():
    class Vague(Reader):
        def answer(self, examples, contexts):
            return []

    class Odd(PassageImaginer):
        provides = frozenset({"passages", "telepathy"})

    reader = Entry("readers", "vague", Vague, plugin="p")
    with pytest.raises(ConfigurationError, match="unknown context kinds \\['telepathy'\\]"):
        check_compatible(Entry("imaginers", "odd", Odd, plugin="p"), Entry("readers", "r", DeafReader, plugin="p"))
    undeclared = Entry("readers", "bare", lambda **options: None, plugin="p")
    with pytest.raises(ConfigurationError, match="reader 'bare' of plugin 'p' does not declare 'accepts'"):
        check_compatible(Entry("imaginers", "i", PassageImaginer, plugin="p"), undeclared)
    check_compatible(Entry("imaginers", "i", Imaginer, plugin="p"), reader)  # both default to no context


def test_a_single_string_alias_is_one_alias():
    class Plugin:
        @hookimpl
        def register_imaginers(self, register):
            register("nothing-at-all", NoImagination, aliases="nada")

    registry = load_plugins(builtins_only=True, extra=(Plugin(),), plugin_files=())["imaginers"]
    assert registry.get("nada").name == "nothing-at-all"
    assert "n" not in registry


def test_builtin_plugins_report_their_distribution_and_version():
    described = {p["name"]: p for p in load_plugins(builtins_only=True, plugin_files=()).describe()}
    assert described["iagbench-readers"]["distribution"] == "iagbench"
    assert described["iagbench-readers"]["version"] == importlib.metadata.version("iagbench")
