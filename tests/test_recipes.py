"""Named recipes (configs/recipes): every shipped recipe loads and expands for its commands; errors name the
file and key; each recipe runs end to end on fid-tiny (train a couple of steps where it trains, then run --limit 3),
with tiny-llama for the imagination LMs and bm25 over the sample passages. One torch thread (shared cores)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from iagbench import ConfigurationError
from iagbench.commands.arguments import Invocation
from iagbench.commands.main import build_parser
from iagbench.commands.recipes import SHIPPED, available, load

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "plugins" / "sample_data" / "passages.jsonl"
RECIPES = sorted(available())
TINY_HYPER = "hyperlora.encoder=hashing,hyperlora.rank=4,hyperlora.hidden=32,hyperlora.feature_dims=2"
TRAIN_SMALL = [
    "--steps",
    "2",
    "--batch-size",
    "2",
    "--grad-accum",
    "1",
    "--warmup-steps",
    "0",
    "--limit",
    "4",
    "--save-every",
    "2",
    "--no-progress",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def job_of(*argv: str):
    """The job specification the command line builds: parsed, then the recipe merged in."""
    args = build_parser().parse_args(argv)
    return Invocation(args, args.options, None).job()


def test_the_shipped_recipes_cover_every_row_and_merge_into_their_commands():
    assert {"t5-closed-book", "t5-lora", "fid-teacher", "genread", "imcqa-0", "imcqa-1", "imcqa-k"} <= set(RECIPES)
    values = ["--set", "corpus=C", "--set", "pairs=P"]
    for name in RECIPES:
        recipe = load(name)
        assert recipe.path.parent == SHIPPED and recipe.description and recipe.row
        assert recipe.sha256 == hashlib.sha256(recipe.path.read_bytes()).hexdigest()
        for command in recipe.sections:
            job = job_of(
                command, "--recipe", name, *values
            )  # every key is an option of the command, with a valid value
            assert job.non_default["recipe"]["name"] == name and job.reader
            if command == "train":
                lr = 1e-3 if name.endswith("-reference") else 1e-4  # run.sh's learning rate
                assert job.output == Path(f"trained/{name}-sample") and job.settings["lr"] == lr
                # the reference's weight-decay rule (T5's layer norms decayed too) in the *-reference recipes only
                assert job.settings["no_decay"] == ("reference" if name.endswith("-reference") else "norms")


def test_the_command_line_overrides_and_merges_and_placeholders_resolve():
    job = job_of("run", "--recipe", "imcqa-k", "--reader", "fid-tiny", "--set", "lm=tiny-llama", "--set",
                 "imagine_checkpoint=", "--imaginer-args", "imagine.n=2")  # fmt: skip
    assert job.reader == "fid-tiny" and job.imaginer == "imagine+hyperlora"
    assert job.imaginer_args == {
        "imagine.model": "tiny-llama",
        "imagine.n": 2,
        "hyperlora.model": "fid-tiny",
        "hyperlora.rank": 32,
        "hyperlora.checkpoint": "trained/imcqa-k-sample",
    }  # no imagine.checkpoint
    assert list(job.imaginer_args)[:2] == ["imagine.model", "imagine.n"]  # the recipe's order; the command line's value
    assert job.reader_args == {"text_maxlength": 256, "train": "none", "checkpoint": "trained/fid-teacher-sample"}
    assert job.non_default["recipe"]["set"] == {"lm": "tiny-llama", "imagine_checkpoint": ""}
    job = job_of("train", "--recipe", "t5-lora", "--epochs", "1", "--train-dir", "elsewhere", "--dataset", "nq")
    # --epochs replaces the recipe's --steps (one of the two)
    assert job.settings["epochs"] == 1 and job.settings["steps"] is None and job.output == Path("elsewhere/t5-lora-nq")
    with pytest.raises(ConfigurationError, match="--set fills a recipe's placeholders"):
        job_of("run", "--reader", "fid-tiny", "--set", "lm=x")


def test_unknown_recipe_bad_key_and_missing_placeholder_are_one_line_errors(invoke_cli, tmp_path):
    code, _, err = invoke_cli("run", "--recipe", "imcqa-2")
    assert code == 2 and "unknown recipe 'imcqa-2' (did you mean" in err and "'imcqa-1'" in err
    bad = tmp_path / "bad.toml"
    bad.write_text('description = "d"\nrow = "r"\n[run]\nreader = "fid-tiny"\nreader_arg = "x=1"\n')
    code, _, err = invoke_cli("run", "--recipe", str(bad))
    assert (
        code == 2
        and f"{bad}: [run] key 'reader_arg': iagbench run has no option --reader-arg (did you mean 'reader_args'?)"
        in err
    )
    bad.write_text('description = "d"\nrow = "r"\n[run]\nreader = "fid-tiny"\ndataset = "nq"\n')
    code, _, err = invoke_cli("run", "--recipe", str(bad))
    assert code == 2 and f"{bad}: [run] key 'dataset': the data comes from the command line" in err
    bad.write_text('description = "d"\nrow = "r"\nrunn = {}\n')
    with pytest.raises(ConfigurationError, match=r"bad.toml: unknown key 'runn' \(did you mean 'run'\?\)"):
        load(str(bad))
    code, _, err = invoke_cli("run", "--recipe", "fid-teacher")
    assert (
        code == 2
        and "fid-teacher.toml: [run] imaginer_args.corpus: placeholder {corpus} has no value: give --set corpus=VALUE"
        in err
    )
    code, _, err = invoke_cli("run", "--recipe", "imcqa-imagine")
    assert code == 2 and "recipe 'imcqa-imagine' has no [run] section" in err


def test_a_recipe_needs_no_paper_table_row(tmp_path):
    mine = tmp_path / "mine.toml"
    mine.write_text('description = "my settings"\n[run]\nreader = "fid-tiny"\n')
    recipe = load(str(mine))
    assert recipe.row == "" and recipe.sections == {"run": {"reader": "fid-tiny"}}
    mine.write_text('description = "d"\nrow = 3\n[run]\nreader = "fid-tiny"\n')
    with pytest.raises(ConfigurationError, match="key 'row': expected a non-empty string"):
        load(str(mine))


def test_iagbench_recipes_lists_each_with_its_row(invoke_cli):
    code, out, _ = invoke_cli("recipes")
    assert code == 0 and len(out.splitlines()) == len(RECIPES)
    assert any(line.startswith("t5-lora") and "LoRA:" in line for line in out.splitlines())


# ---- end to end on fid-tiny ----

COMMON = ["--reader", "fid-tiny", "--set", "lm=tiny-llama", "--set", f"corpus={CORPUS}"]
RUN_SMALL = ["--limit", "3", "--reader-args", "max_new_tokens=3", "--no-progress"]
IMAGINER = {  # tiny settings merged into the recipes' imaginer options
    "genread": "max_new_tokens=4",
    "imcqa-0": TINY_HYPER.replace("hyperlora.", ""),
    "imcqa-1": f"imagine.max_new_tokens=4,{TINY_HYPER}",
    "imcqa-k": f"imagine.max_new_tokens=4,imagine.n=2,{TINY_HYPER}",
}
IMAGINER.update({f"{name}-reference": options for name, options in IMAGINER.items() if name.startswith("imcqa")})


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """The fid-teacher recipe trained for two steps (the ImcQA recipes' teacher and student weights)."""
    from iagbench.commands.main import main

    output = tmp_path_factory.mktemp("trained") / "fid-teacher"
    assert main(["train", "--recipe", "fid-teacher", *COMMON, "--set", f"train_output={output}", *TRAIN_SMALL]) == 0
    return output


def run_recipe(invoke_cli, name, tmp_path, *extra):
    output = tmp_path / "run"
    imaginer = ["--imaginer-args", IMAGINER[name]] if name in IMAGINER else []
    code, _, err = invoke_cli("run", "--recipe", name, *COMMON, *RUN_SMALL, *imaginer, *extra, "--output", str(output))
    assert code == 0, err
    assert len((output / "predictions.jsonl").read_text().splitlines()) == 3
    config = json.loads((output / "config.json").read_text())
    recorded = config["non_default_options"]["recipe"]
    assert recorded["name"] == name and recorded["sha256"] == load(name).sha256
    return output


@pytest.mark.parametrize("name", ["t5-closed-book", "t5-lora", "genread", "t5-lora-reference"])
def test_trained_rows_train_then_run(invoke_cli, tmp_path, name):
    trained = tmp_path / "trained"
    imaginer = ["--imaginer-args", IMAGINER[name]] if name in IMAGINER else []
    code, _, err = invoke_cli(
        "train", "--recipe", name, *COMMON, *imaginer, "--set", f"train_output={trained}", *TRAIN_SMALL
    )
    assert code == 0, err
    config = json.loads((trained / "train_config.json").read_text())
    assert config["non_default_options"]["recipe"]["name"] == name
    assert (trained / "checkpoints" / "step-000002" / "reader.safetensors").is_file()
    run = run_recipe(invoke_cli, name, tmp_path, "--set", f"train_output={trained}")
    reader = json.loads((run / "components.json").read_text())["reader"]
    assert reader["checkpoint"] == str(trained / "checkpoints" / "step-000002")
    assert reader["lora_rank"] == (32 if name.startswith("t5-lora") else 0)
    if name == "t5-lora-reference":  # the reference's norms and embeddings train next to the LoRA
        assert reader["train_parts"] == ["norms", "embeddings"]
        assert config["identity"]["training"]["no_decay"] == "reference"  # and decay as the reference's
        saved = load_file(str(trained / "checkpoints" / "step-000002" / "reader.safetensors"))
        assert "shared.weight" in saved and any(key.endswith("layer_norm.weight") for key in saved)


def test_fid_teacher_trains_then_runs(invoke_cli, tmp_path, teacher):
    run = run_recipe(invoke_cli, "fid-teacher", tmp_path, "--set", f"train_output={teacher}")
    records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert all(r["details"]["passages"] == 10 for r in records)  # bm25 top-10 of the sample passages


@pytest.fixture(scope="module")
def hypernetwork(tmp_path_factory, teacher):
    """A hypernetwork trained for two steps on the answer loss alone (no teacher), through the teacher's frozen weights."""
    from iagbench.commands.main import main

    output = tmp_path_factory.mktemp("trained") / "hyperlora"
    assert (
        main(
            [
                "train",
                "--imaginer",
                "hyperlora",
                "--imaginer-args",
                "model=fid-tiny," + IMAGINER["imcqa-0"],
                "--reader",
                "fid-tiny",
                "--reader-args",
                f"train=none,checkpoint={teacher}",
                "--output",
                str(output),
                *TRAIN_SMALL,
            ]
        )
        == 0
    )
    return output


@pytest.mark.parametrize("name", ["imcqa-0", "imcqa-1", "imcqa-k"])
def test_imcqa_run_section_as_shipped(invoke_cli, tmp_path, teacher, hypernetwork, name):
    """The run section with a hypernetwork trained without distillation, the teacher's weights as the student's,
    an untrained imagine LM (imagine_checkpoint set empty)."""
    run = run_recipe(
        invoke_cli,
        name,
        tmp_path,
        "--set",
        f"teacher_checkpoint={teacher}",
        "--set",
        f"train_output={hypernetwork}",
        "--set",
        "imagine_checkpoint=",
    )
    records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert {r["details"]["passages"] for r in records} == {{"imcqa-0": 0, "imcqa-1": 1, "imcqa-k": 2}[name]}


@pytest.mark.parametrize(
    "name", ["imcqa-0", "imcqa-1", "imcqa-k", "imcqa-0-reference", "imcqa-1-reference", "imcqa-k-reference"]
)
def test_imcqa_distils_from_the_teacher_then_runs(invoke_cli, tmp_path, teacher, name):
    trained = tmp_path / "trained"
    code, _, err = invoke_cli(
        "train",
        "--recipe",
        name,
        *COMMON,
        "--imaginer-args",
        IMAGINER[name],
        "--set",
        f"teacher_checkpoint={teacher}",
        "--set",
        "imagine_checkpoint=",
        "--set",
        f"train_output={trained}",
        *TRAIN_SMALL,
    )
    assert code == 0, err
    assert (trained / "checkpoints" / "step-000002" / "imaginer.safetensors").is_file()
    config = json.loads((trained / "train_config.json").read_text())
    assert config["non_default_options"]["recipe"]["name"] == name
    if name.endswith("-reference"):  # the reference's KD loss and hypernetwork
        distillation, log = config["identity"]["distillation"], (trained / "log.jsonl").read_text()
        assert [distillation[k] for k in ("kd_scale", "kd_positions", "kl_term")] == ["none", "all", True]
        assert '"kl_term"' in log and config["identity"]["training"]["max_grad_norm"] == 0
        assert config["identity"]["training"]["no_decay"] == "reference"  # T5's layer norms decayed too
        # the reference's student: the pretrained T5 (no checkpoint), its norms, embedding and FFNs trained
        student = config["identity"]["reader"]["options"]
        assert "checkpoint" not in student and student["train_parts"] == "norms,embeddings,ffn"
        assert student["input"] == "single-row" and student["text_maxlength"] == 512
        assert (trained / "checkpoints" / "step-000002" / "reader.safetensors").is_file()
    run_recipe(
        invoke_cli,
        name,
        tmp_path,
        "--set",
        f"teacher_checkpoint={teacher}",
        "--set",
        f"train_output={trained}",
        "--set",
        "imagine_checkpoint=",
    )
