import subprocess
import sys

import pytest

from largebatch import config as cfg
from largebatch.cli import main


def run_cli(args, env):
    return subprocess.run([sys.executable, "-m", "largebatch", *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["train", "--batch-size", "-5"], "--batch-size: expected an integer in [1, 2147483648], got -5"),
    (["train", "--optimizer", "adamx"], "argument --optimizer: invalid choice: 'adamx'"),
    (["train", "--recipe", "no_such_recipe"], "unknown recipe 'no_such_recipe'"),
])
def test_bad_command_lines_print_one_line_without_traceback(args, message, cli_env):
    result = run_cli(args, cli_env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_recipe_with_unknown_key_fails_in_one_line(tmp_path, cli_env):
    recipe = tmp_path / "bad.toml"
    recipe.write_text("[run]\nepochs = 1\nbatchsize = 64\n")
    result = run_cli(["train", "--recipe", str(recipe)], cli_env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "largebatch: error: unknown key 'run.batchsize' (allowed in [run]: " +
        ", ".join(f.name for f in cfg.section_fields("run")) + ")"]


def test_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, (section, field) in cfg.all_flags().items():
        assert f"--{flag}" in text
    assert text.count("(default:") >= len(cfg.all_flags())
    assert "GLOBAL batch size" in text and "(default: 4096)" in text


def test_top_level_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ("train", "evaluate", "models"):
        assert command in out


def test_missing_data_says_how_to_get_it(tmp_path, capsys):
    code = main(["train", "--data-dir", str(tmp_path / "empty"), "--epochs", "1", "--out", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "dataset-fashion-mnist" in err and "--data-dir" in err
