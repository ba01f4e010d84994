"""The command line's frame: commands from plugins (``register_commands``), messages through `logging` with
-v/-q, no third-party noise in a plain run, and the option tables that recipes and defaults are read from."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from iagbench.commands.arguments import Invocation
from iagbench.commands.main import build_parser

COMMAND_PLUGIN = textwrap.dedent(
    '''
    from iagbench import hookimpl


    class Shout:
        """iagbench shout: prints its words in capitals and the number of questions of a split."""

        @staticmethod
        def configure(options):
            options.add("words", nargs="+")
            options.add("--times", type=int, default=1, help="how often (default: 1)")
            options.add("--dataset", default="sample")

        @staticmethod
        def run(invocation):
            words = " ".join(invocation.args.words).upper()
            dataset = invocation.plugins["datasets"].get(invocation.given("dataset")).build()
            print(" ".join([words] * invocation.given("times")), len(list(dataset.load("test"))))
            return 0


    @hookimpl
    def register_commands(register):
        register("shout", Shout, description="say it louder")
    '''
)


@pytest.fixture
def command_plugin(tmp_path):
    path = tmp_path / "shout_plugin.py"
    path.write_text(COMMAND_PLUGIN, encoding="utf-8")
    return path


def test_a_plugin_adds_a_command_with_its_options_and_the_loaded_plugins(invoke_cli, command_plugin):
    code, out, err = invoke_cli("shout", "hello", "there", "--times", "2", plugin_files=(command_plugin,))
    assert code == 0, err
    assert out.strip() == "HELLO THERE HELLO THERE 100"  # the sample set has 100 test questions
    code, out, _ = invoke_cli("plugins", plugin_files=(command_plugin,))
    described = {item["name"]: item for item in json.loads(out)}
    assert described[f"file:{command_plugin}"]["components"] == {"commands": ["shout"]}
    assert "register_commands" in described[f"file:{command_plugin}"]["hooks"]
    assert described["iagbench-imagination"]["components"]["commands"] == ["compress"]  # a built-in plugin's command


def test_a_plugin_command_cannot_take_a_builtin_name(invoke_cli, tmp_path):
    path = tmp_path / "clash.py"
    path.write_text(COMMAND_PLUGIN.replace('register("shout"', 'register("run"'), encoding="utf-8")
    code, out, err = invoke_cli("list", plugin_files=(path,))
    assert code == 2 and out == ""
    assert err.strip() == f"iagbench: error: plugin 'file:{path}' registers command 'run', which iagbench has already"


def test_quiet_keeps_only_warnings_and_verbose_still_shows_info(invoke_cli, tmp_path):
    args = ["run", "--dataset", "sample", "--limit", "2", "--reader", "tiny-llama", "--no-progress"]
    code, _, err = invoke_cli(*args, "--output", str(tmp_path / "a"))
    assert code == 0 and "run folder:" in err
    code, _, err = invoke_cli(*args, "--output", str(tmp_path / "b"), "-q")
    assert code == 0 and err == ""
    code, _, err = invoke_cli("-q", *args, "--output", str(tmp_path / "c"))  # before the command too
    assert code == 0 and err == ""
    code, _, err = invoke_cli(*args, "--output", str(tmp_path / "d"), "-v")
    assert code == 0 and "run folder:" in err


@pytest.mark.slow
def test_a_plain_run_of_a_real_model_prints_no_third_party_lines(cli, tmp_path):
    """transformers imports DeepSpeed (installed for training) at every model load, and DeepSpeed's accelerator
    probe used to log "Setting accelerator to CPU" into every run on a CPU."""
    env = {key: value for key, value in os.environ.items() if key != "DS_ACCELERATOR"}
    result = cli("run", "--dataset", "sample", "--limit", "1", "--reader", "smollm2-135m", "--output", str(tmp_path / "r"),
                 "--no-progress", env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "accelerator" not in result.stderr.lower() and "deepspeed" not in result.stderr.lower(), result.stderr
    assert "Loading weights" not in result.stderr, result.stderr  # transformers' bar follows --no-progress


def test_defaults_come_from_the_engine_specs_and_non_defaults_are_recorded():
    from iagbench.runs.runner import RunSpec
    from iagbench.training.spec import TrainSpec

    parser = build_parser()
    args = parser.parse_args(["run", "--reader", "echo"])
    job = Invocation(args, args.options, None).job()
    assert job.settings["batch_size"] == RunSpec.batch_size and job.non_default == {"reader": "echo"}
    args = parser.parse_args(["train", "--reader", "echo", "--lr", "1e-4", "--reader-args", "a=1,b=x"])
    job = Invocation(args, args.options, None).job()
    assert job.settings["lr"] == TrainSpec.lr and job.settings["batch_size"] == TrainSpec.batch_size
    assert job.reader_args == {"a": 1, "b": "x"} and job.non_default == {
        "reader": "echo",
        "reader_args": {"a": 1, "b": "x"},
    }
    args = parser.parse_args(["run"])
    with pytest.raises(Exception, match="the option --reader is required"):
        Invocation(args, args.options, None).job()
