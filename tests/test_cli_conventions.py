"""The command line follows the conventions users bring from other tools (issue 15, CLI items 1-4)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import typer
from typer.testing import CliRunner

import medclf
from medclf.cli.main import app
from medclf.config import load_config, outcome_config

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = ["prepare", "train", "evaluate", "recalibrate", "report", "predict", "explain", "ensemble", "compare",
            "study", "attack", "ood", "export", "profile", "demo", "serve"]
PRESETS = "cpu_small, demo, pneumoniamnist_cpu, resnet50_imagenet_224, vit_b16"


def command_paths(command=None, path=()) -> list[tuple[str, ...]]:
    """Every command line that names a command: (), ("train",), ("prepare", "rsna"), ..."""
    command = command or typer.main.get_command(app)
    paths = [path]
    for name, sub in getattr(command, "commands", {}).items():
        paths += command_paths(sub, (*path, name))
    return paths


def help_of(*path: str, flag: str = "--help") -> str:
    result = CliRunner().invoke(app, [*path, flag], prog_name="medclf")
    assert result.exit_code == 0, result.output
    return result.output


def section(text: str, title: str) -> list[str]:
    """The indented lines under `title:` up to the next blank line."""
    lines = text.split(f"\n{title}:\n", 1)[1].splitlines()
    return lines[: lines.index("")] if "" in lines else lines


def test_version_is_the_package_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"medclf {medclf.__version__}\n"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert medclf.__version__ == project["version"]


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "medclf")
def test_dash_h_is_help_on_every_command(path):
    assert help_of(*path, flag="-h") == help_of(*path)


def test_commands_are_listed_in_workflow_order():
    listed = [line.split()[0] for line in section(help_of(), "Commands")]
    assert listed == WORKFLOW
    assert [line.split()[0] for line in section(help_of("prepare"), "Commands")] == [
        "rsna", "medmnist", "folder", "merge"]


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "medclf")
def test_every_help_ends_with_real_examples(path):
    lines = help_of(*path).rstrip("\n").splitlines()
    start = lines.index("  Examples:")
    examples = [line.strip() for line in lines[start + 1:] if line.strip()]
    assert 1 <= len(examples) <= 2
    for example in examples:  # each example runs the command whose help shows it
        assert example == " ".join(("medclf", *path)) or example.startswith(" ".join(("medclf", *path, "")))


@pytest.mark.parametrize("path", [p for p in command_paths() if p not in ((), ("prepare",))],
                         ids=lambda p: " ".join(p))
def test_every_option_and_argument_has_help_and_flags_read_as_flags(path):
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    for param in command.params:
        assert (param.help or "").strip(), f"{' '.join(path)}: {param.name} has no help"
        stray = re.search(r"\s[.,;](\s|$)|[.,;]{2}$|\(\)|\[\]", param.help)  # " ." ".." "()": text lost in between
        assert not stray, f"{param.name}: stray punctuation in {param.help!r}"
    text = help_of(*path)
    assert "<bool>" not in text
    for param in command.params:
        if getattr(param, "is_flag", False) and param.opts[0] != "--version":
            assert re.search(rf"^\s+{re.escape(param.opts[0])}( / --\S+)?\s{{2,}}\S", text, re.M), param.opts[0]


def test_workers_default_says_how_many():
    cores = len(os.sched_getaffinity(0))
    assert f"[default: every core this process may use, {cores} here]" in " ".join(help_of("prepare", "rsna").split())


def test_batch_size_has_a_description():
    text = " ".join(help_of("predict").split())
    assert "--batch-size <int> Images per forward pass. [default: 32]" in text


@pytest.mark.slow
def test_config_help_and_not_found_error_list_the_presets(tmp_path):
    assert f"one of {PRESETS}." in " ".join(help_of("train").split())
    proc = subprocess.run([sys.executable, "-m", "medclf", "train", "--data", str(tmp_path), "--out",
                           str(tmp_path / "run"), "--config", "resnet5O"], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO / "src")}, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == (f"error: config preset 'resnet5O' not found: give a YAML file or one of {PRESETS}\n")


def test_the_old_preset_name_still_loads_the_resnet50_recipe():
    recipe = load_config("resnet50_imagenet_224")
    assert (recipe.model.name, recipe.model.input_size, recipe.model.pretrained, recipe.data.flip) == (
        "resnet50", 224, True, True)
    assert load_config("seed_resnet50").preset == "seed_resnet50"  # the config records the name it was given
    assert outcome_config(load_config("seed_resnet50").to_dict()) == outcome_config(recipe.to_dict())
    assert outcome_config(load_config("configs/seed_resnet50.yaml").to_dict()) == outcome_config(recipe.to_dict())


def test_class_balanced_loss_is_reachable_and_documented():
    assert load_config(None, ["loss.class_balanced=true"]).loss.class_balanced is True
    assert "loss.class_balanced=true" in help_of("train")
    for doc in ("README.md", "docs/imbalance.md"):
        assert "loss.class_balanced=true" in (REPO / doc).read_text(), doc


def test_readme_shows_study_and_the_seed_comparison_grid():
    readme = (REPO / "README.md").read_text()
    assert "medclf study configs/study_cpu.yaml" in readme
    assert "medclf study configs/study_seed.yaml" in readme


def test_readme_commands_write_only_where_git_ignores():
    """Every path a README command writes (--out, a predictions CSV, a study folder) is ignored by git."""
    readme = (REPO / "README.md").read_text()
    blocks = "\n".join(re.findall(r"```\n(.*?)```", readme, re.S))
    written = re.findall(r"--out (\S+)", blocks)
    assert len(written) >= 6
    ignored = [line.strip("/") for line in (REPO / ".gitignore").read_text().splitlines()
               if line.startswith("/") and line.endswith("/")]
    for path in written:
        assert Path(path).parts[0] in ignored, f"README writes {path} into the repository"
    for study in ("study_cpu", "study_seed"):
        out = load_study_paths(REPO / "configs" / f"{study}.yaml")
        for path in out:
            assert Path(path).parts[0] in ignored, f"{study}.yaml writes {path} into the repository"


def load_study_paths(path: Path) -> list[str]:
    import yaml

    study = yaml.safe_load(path.read_text())
    return [study["out"], study["data"]]
