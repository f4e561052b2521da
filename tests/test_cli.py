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


@pytest.mark.parametrize("recipe", cfg.recipe_names())
def test_dry_run_json_resolves_every_builtin_recipe(recipe, capsys):
    import json
    assert main(["train", "--recipe", recipe, "--dry-run", "--json", "--processes", "8", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"config", "derived", "lr_schedule", "param_groups"}
    derived = result["derived"]
    for key in ("global_batch_size", "processes", "per_process_batch", "micro_batch_size", "accumulation_steps",
                "peak_lr", "total_steps", "warmup_steps", "steps_per_epoch"):
        assert key in derived, key
    assert derived["processes"] == 8
    assert derived["per_process_batch"] * 8 == derived["global_batch_size"] == result["config"]["run"]["batch_size"]
    steps = [step for step, _ in result["lr_schedule"]]
    assert steps[0] == 0 and steps[-1] == derived["total_steps"] - 1 and steps == sorted(steps)
    for group in result["param_groups"]:
        assert set(group) >= {"tensors", "values", "weight_decay", "adapted", "lr_scale"}
    if result["config"]["data"]["dataset"] == "imagenet":
        assert derived["train_images"] == 1_281_167 and derived["test_images"] == 50_000


def test_dry_run_numbers_match_a_real_runs_plan(tiny_data, tmp_path, capsys):
    import json
    flags = ["--data-dir", str(tiny_data), "--batch-size", "128", "--micro-batch-size", "32", "--epochs", "2",
             "--warmup-epochs", "0.5", "--threads", "1"]
    assert main(["train", *flags, "--dry-run", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert main(["train", *flags, "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    saved = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert planned["derived"] == saved["derived"]
    assert planned["lr_schedule"] == saved["lr_schedule"]
    assert planned["param_groups"] == saved["param_groups"]
    assert planned["config"]["data"]["num_classes"] == saved["config"]["data"]["num_classes"] == 10


def test_dry_run_prints_a_readable_plan(capsys):
    assert main(["train", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "global batch" in text and "LR at steps" in text and "parameter groups" in text


def test_abbreviated_options_are_errors(cli_env):
    result = run_cli(["train", "--opt", "sgd", "--dry-run"], cli_env)
    assert result.returncode == 2
    assert "unrecognized arguments: --opt" in result.stderr and "Traceback" not in result.stderr
