"""The example plugin package (examples/iagbench-example-plugin), installed for real.

pip installs it into a temporary folder (never the venv's site-packages); `iagbench` subprocesses
then see it through PYTHONPATH and find it by its entry point, exactly as a user's install would.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from iagbench import ConfigurationError, Context, Example, LoRAAdapter, Passage
from iagbench.contract.plugins import load_plugins
from iagbench.contract.registry import Entry
from iagbench.runs.runner import check_compatible

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "iagbench-example-plugin"
IAGBENCH = Path(sys.executable).parent / "iagbench"

# Corpus order matters: ties keep file order. Titles answer sample-001 (Au, exact), sample-003
# (Virgil) and sample-004 ("Iron" for gold "iron": equal ignoring case).
CORPUS = [
    {"id": "toy-iron", "title": "Iron", "text": "Iron is the element with the chemical symbol Fe."},
    {"id": "toy-au", "title": "Au", "text": "Gold is the element whose symbol on the periodic table is Au."},
    {
        "id": "toy-virgil",
        "title": "Virgil",
        "text": "In the Divine Comedy the Roman poet Virgil guides Dante through Hell.",
    },
    {
        "id": "toy-opera",
        "title": "Sydney Opera House",
        "text": "A performing arts centre on Sydney Harbour, opened in 1973.",
    },
]
HOOKS = ["register_commands", "register_imaginers", "register_metrics", "register_readers"]
COMPONENTS = {
    "imaginers": ["keyword-passages", "seeded-lora"],
    "readers": ["first-passage-title", "lora-lm"],
    "metrics": ["exact_title"],
    "commands": ["keyword-search"],
}
LLAMA_TARGETS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
QUESTIONS = [
    "who wrote the divine comedy",
    "what is the chemical symbol for gold",
    "when did the titanic sink",
    "which planet is known as the red planet",
    "how many sonnets did shakespeare write",
    "what is the capital of australia",
]
# What a third-party plugin may import from iagbench: the package itself, the toolkit, Trainable.
PUBLIC_PREFIXES = ("iagbench.lm.", "iagbench.text.", "iagbench.files.")
PUBLIC_MODULES = {"iagbench", "iagbench.lm", "iagbench.text", "iagbench.files", "iagbench.contract.components"}

MISMATCHED_READER = """
from iagbench import Reader, hookimpl


class ClosedBookOnly(Reader):
    accepts = frozenset()

    def __init__(self, **options):
        raise RuntimeError("loaded")

    def answer(self, examples, contexts):
        raise RuntimeError("loaded")


@hookimpl
def register_readers(register):
    register("closed-book-only", ClosedBookOnly, description="reads no context; must never be built here")
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package, pip-installed into a temporary --target folder."""
    root = tmp_path_factory.mktemp("example-plugin")
    # Build from a copy: setuptools would leave build/ and *.egg-info in the repository otherwise.
    source = shutil.copytree(EXAMPLE, root / "src", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"]
    command += ["--disable-pip-version-check", "--quiet", "--target", str(root / "site"), str(source)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (root / "site" / "iagbench_example_plugin-0.1.0.dist-info").is_dir()
    return root / "site"


def iagbench(*args: str, cwd: Path, site: Path | None, plugin_file: Path | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "IAGBENCH_PLUGINS")}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    if plugin_file is not None:
        env["IAGBENCH_PLUGINS"] = str(plugin_file)
    return subprocess.run(
        [str(IAGBENCH), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def described(result: subprocess.CompletedProcess) -> dict[str, dict]:
    assert result.returncode == 0, result.stderr
    return {plugin["name"]: plugin for plugin in json.loads(result.stdout)}


def test_entry_point_discovery(site: Path, tmp_path: Path) -> None:
    assert "example" not in described(iagbench("plugins", cwd=tmp_path, site=None)), "installed in the venv already"
    example = described(iagbench("plugins", cwd=tmp_path, site=site))["example"]
    assert example == {
        "name": "example",
        "distribution": "iagbench-example-plugin",
        "version": "0.1.0",
        "module": "iagbench_example_plugin",
        "hooks": HOOKS,
        "components": COMPONENTS,
    }


def test_list_shows_components_with_their_plugin(site: Path, tmp_path: Path) -> None:
    result = iagbench("list", cwd=tmp_path, site=site)
    assert result.returncode == 0, result.stderr
    listed: dict[str, dict[str, str]] = {}
    for line in result.stdout.splitlines():
        if not line.startswith(" "):
            kind = line.rstrip(":")
            listed[kind] = {}
        else:
            listed[kind][line.split()[0]] = line.rsplit("[", 1)[1].rstrip("]")
    for kind, names in COMPONENTS.items():
        for name in names:
            assert listed[kind][name] == "example"
    assert listed["readers"]["tiny-llama"] == "iagbench-readers"  # the built-ins are still there


def test_run_with_the_example_components(site: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(passage) + "\n" for passage in CORPUS), encoding="utf-8")
    output = tmp_path / "run"
    result = iagbench(
        "run", "--dataset", "sample", "--split", "test", "--limit", "10",
        "--imaginer", "keyword-passages", "--imaginer-args", f"corpus={corpus}",
        "--reader", "first-passage-title", "--output", str(output), "--no-progress",
        cwd=tmp_path, site=site,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr

    results = json.loads((output / "results.json").read_text())
    assert results["n"] == 10
    assert results["imaginer"] == "keyword-passages" and results["reader"] == "first-passage-title"
    assert results["metric_versions"]["exact_title"] == "1"
    assert results["metrics"]["exact_title"] == pytest.approx(30.0)  # sample-001, -003, -004
    assert json.loads((output / "config.json").read_text())["plugins"]["example"] == "0.1.0"
    components = json.loads((output / "components.json").read_text())
    assert components["imaginer"] == {"corpus": str(corpus.resolve()), "passages": 4, "k": 3}

    lines = (output / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 10
    records = {record["id"]: record for record in map(json.loads, lines)}
    assert len(records) == 10
    by_id = {passage["id"]: passage for passage in CORPUS}
    for record in records.values():
        passages = record["context"]["passages"]
        assert len(passages) <= 3
        for passage in passages:
            assert {key: passage[key] for key in ("id", "title", "text")} == by_id[passage["id"]]
        assert record["prediction"] == (passages[0]["title"] if passages else "")
    assert records["sample-001"]["prediction"] == "Au"
    assert records["sample-001"]["details"] == {"passage_id": "toy-au"}
    assert records["sample-004"]["scores"]["exact_title"] == 1.0  # "Iron" vs gold "iron"
    # "...wreck of the titanic in 1985": Virgil shares {in, the}; Iron, Au and Opera share one word
    # each, and file order keeps Iron and Au.
    assert [p["id"] for p in records["sample-002"]["context"]["passages"]] == ["toy-virgil", "toy-iron", "toy-au"]
    assert [p["score"] for p in records["sample-002"]["context"]["passages"]] == [2.0, 1.0, 1.0]
    # "how many sonnets did shakespeare write" shares no word with the corpus: no passage, empty answer.
    assert records["sample-009"]["context"]["passages"] == [] and records["sample-009"]["prediction"] == ""


def test_the_plugins_command_runs_with_its_options_and_the_plugins_components(site: Path, tmp_path: Path) -> None:
    """register_commands: `iagbench keyword-search` comes from the installed package, in help and in use."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(passage) + "\n" for passage in CORPUS), encoding="utf-8")
    result = iagbench("--help", cwd=tmp_path, site=site)
    assert result.returncode == 0 and "keyword-search" in result.stdout
    result = iagbench(
        "keyword-search", "which metal is Fe", "--corpus", str(corpus), "--k", "1", cwd=tmp_path, site=site
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 1 and lines[0]["title"] == "Iron"
    result = iagbench("keyword-search", "which metal", cwd=tmp_path, site=site)
    assert result.returncode == 2 and "the option --corpus is required" in result.stderr


def test_mismatched_reader_is_rejected_before_anything_loads(site: Path, tmp_path: Path) -> None:
    plugin_file = tmp_path / "closed_book_only.py"
    plugin_file.write_text(MISMATCHED_READER, encoding="utf-8")
    output = tmp_path / "mismatch"
    result = iagbench(
        "run", "--dataset", "sample", "--split", "test", "--limit", "10",
        # the corpus does not exist either: building the imaginer would fail with another message
        "--imaginer", "keyword-passages", "--imaginer-args", f"corpus={tmp_path / 'missing.jsonl'}",
        "--reader", "closed-book-only", "--output", str(output), "--no-progress",
        cwd=tmp_path, site=site, plugin_file=plugin_file,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    error = result.stderr.strip()
    assert len(error.splitlines()) == 1, error
    assert error.startswith("iagbench: error: ")
    assert "imaginer 'keyword-passages'" in error and "reader 'closed-book-only'" in error
    assert "loaded" not in result.stdout + result.stderr
    assert not output.exists()


def test_in_process_with_builtins_only(tmp_path: Path) -> None:
    """The testing tip of docs/plugins.md: the plugin module passed as ``extra``, nothing installed."""
    spec = importlib.util.spec_from_file_location(
        "example_plugin_under_test", EXAMPLE / "iagbench_example_plugin" / "__init__.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plugins = load_plugins(builtins_only=True, extra=(module,), plugin_files=())

    keyword = plugins["imaginers"].get("keyword-passages")
    check_compatible(keyword, plugins["readers"].get("first-passage-title"))
    closed = type("Closed", (), {"accepts": frozenset()})
    with pytest.raises(ConfigurationError, match="imaginer 'keyword-passages' provides"):
        check_compatible(keyword, Entry("readers", "closed", closed, "test"))

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(passage) + "\n" for passage in CORPUS), encoding="utf-8")
    imaginer = keyword.build(corpus=str(corpus), k=1)
    [context] = imaginer.imagine([Example("q", "which chemical element is gold", ("Au",))])
    # Iron shares {chemical, element, is}, Au {element, is, gold}: a tie, and file order keeps Iron.
    assert context.passages == (Passage(CORPUS[0]["text"], "Iron", "toy-iron", 3.0),)
    with pytest.raises(ConfigurationError, match="corpus="):
        keyword.build()
    with pytest.raises(ConfigurationError, match="k=0"):
        keyword.build(corpus=str(corpus), k=0)

    metric = plugins["metrics"].get("exact_title").build()
    assert metric.score("IRON", ["Fe", "iron"], []) == {"exact_title": 1.0}
    assert metric.score("the iron", ["iron"], []) == {"exact_title": 0.0}  # case only: no article removal


@pytest.fixture
def installed(site: Path, monkeypatch: pytest.MonkeyPatch):
    """The installed example package, importable in this process (sys.path and sys.modules restored after)."""
    monkeypatch.syspath_prepend(str(site))
    yield importlib.import_module("iagbench_example_plugin")
    for name in [name for name in sys.modules if name.split(".")[0] == "iagbench_example_plugin"]:
        del sys.modules[name]


def test_lora_reader_applies_each_examples_own_adapter(installed) -> None:
    """The toolkit pair (lora.py), built through the registry: adapters change every answer, row by row."""
    import torch

    plugins = load_plugins(builtins_only=True, extra=(installed,), plugin_files=())
    seeded, lora_lm = plugins["imaginers"].get("seeded-lora"), plugins["readers"].get("lora-lm")
    check_compatible(seeded, lora_lm)
    check_compatible(plugins["imaginers"].get("keyword-passages"), lora_lm)  # it reads passages too
    imaginer = seeded.build()  # tiny-llama: the reader's default model
    reader = lora_lm.build(device="cpu")
    assert imaginer.describe() == {"model": "tiny-llama", "targets": LLAMA_TARGETS, "rank": 4, "scale": 2.0}

    examples = [Example(f"q{i}", question, ("x",)) for i, question in enumerate(QUESTIONS)]
    contexts = imaginer.imagine(examples)
    assert all(isinstance(context.adapter, LoRAAdapter) and context.kinds == {"adapter"} for context in contexts)
    again = imaginer.imagine(examples[:1])[0].adapter  # seeded by the question's text: the same weights again
    for target in LLAMA_TARGETS:
        assert torch.equal(again.a[target], contexts[0].adapter.a[target])
        assert torch.equal(again.b[target], contexts[0].adapter.b[target])

    def generated(answers: list) -> list[tuple[str, str]]:
        return [(str(answer), answer.raw) for answer in answers]

    plain = generated(reader.answer(examples, [Context() for _ in examples]))
    adapted = generated(reader.answer(examples, contexts))
    # A large effect, not a small drift: every one of the questions gets another continuation.
    assert all(a[1] != p[1] for a, p in zip(adapted, plain)), (adapted, plain)
    assert len({raw for _, raw in adapted}) == len(examples)
    # Per example, not per batch: each question alone, or in a batch in reverse order, answers the same.
    alone = [generated(reader.answer([example], [context]))[0] for example, context in zip(examples, contexts)]
    backwards = generated(reader.answer(examples[::-1], contexts[::-1]))[::-1]
    assert alone == adapted == backwards
    # Passages and an adapter together (what keyword-passages+seeded-lora gives): both count.
    passage = (Passage("Gold is the element whose symbol on the periodic table is Au.", "Au"),)
    both = generated(reader.answer(examples[1:2], [Context(passage, contexts[1].adapter)]))
    assert both != adapted[1:2] and both != generated(reader.answer(examples[1:2], [Context(passage)]))


def test_run_with_the_lora_pair(site: Path, tmp_path: Path) -> None:
    output = tmp_path / "lora-run"
    result = iagbench(
        "run", "--dataset", "sample", "--split", "test", "--limit", "10",
        "--imaginer", "seeded-lora", "--reader", "lora-lm", "--reader-args", "device=cpu",
        "--metrics", "em", "--output", str(output), "--no-progress",
        cwd=tmp_path, site=site,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    results = json.loads((output / "results.json").read_text())
    assert results["n"] == 10 and results["imaginer"] == "seeded-lora" and results["reader"] == "lora-lm"
    components = json.loads((output / "components.json").read_text())
    assert components["imaginer"]["targets"] == LLAMA_TARGETS
    assert components["reader"]["model"]["preset"] == "tiny-llama" and components["reader"]["device"] == "cpu"
    records = [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 10 and len({record["id"] for record in records}) == 10
    for record in records:
        adapter = record["context"]["adapter"]  # LoRAAdapter.describe(), written by the runner
        assert adapter["type"] == "lora" and adapter["rank"] == 4 and adapter["targets"] == LLAMA_TARGETS
        assert adapter["delta_norm"] > 0 and record["context"]["passages"] == []
        assert isinstance(record["prediction"], str) and record["raw"]


def imports_of(path: Path) -> tuple[list[str], list[str]]:
    """The modules a file imports, and its string constants that look like dotted module paths (lazy factories)."""
    modules, strings = [], []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules.append(node.module if node.level == 0 else f"{'.' * node.level}{node.module or ''}")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and re.fullmatch(r"[A-Za-z_][\w.]*(:\w+)?", node.value)
        ):
            strings.append(node.value.split(":")[0])
    return modules, strings


def test_the_example_uses_only_the_public_api() -> None:
    """A third party has `iagbench` and its toolkit (`iagbench.lm`, `.text`, `.files`), never `iagbench_plugins`."""
    package = EXAMPLE / "iagbench_example_plugin"
    files = {file.relative_to(package).as_posix(): file for file in sorted(package.rglob("*.py"))}
    assert set(files) >= {"__init__.py", "lora.py"}
    imports = {name: imports_of(file) for name, file in files.items()}
    for name, (modules, strings) in imports.items():
        assert not [m for m in modules + strings if m.split(".")[0] == "iagbench_plugins"], name
        private = [
            m
            for m in modules
            if m.split(".")[0] == "iagbench" and m not in PUBLIC_MODULES and not m.startswith(PUBLIC_PREFIXES)
        ]
        assert not private, f"{name} imports private iagbench modules: {private}"
    assert {"iagbench.lm.adapter_host", "iagbench.lm.skeletons", "iagbench.lm.decoding", "iagbench.lm.models"} <= set(
        imports["lora.py"][0]
    )
    assert "torch" in imports["lora.py"][0] and "torch" not in imports["__init__.py"][0]  # the hook module stays light
    assert "iagbench_example_plugin.lora" in imports["__init__.py"][1]  # ...and names lora.py lazily
