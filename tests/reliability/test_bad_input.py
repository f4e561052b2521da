"""Bad command lines and recipes: each exits non-zero with one line on stderr that names the option,
key or file, and no traceback. Most run in this process (``largebatch.cli.main``); a few run the
real ``python -m largebatch`` to prove the same holds for the installed command."""

from __future__ import annotations

import gzip

import pytest
import torch

# (flags added to a valid tiny training command, text the one error line must contain)
BAD_TRAIN_FLAGS = [
    (["--batch-size", "-5"], "--batch-size: expected an integer in [1, 2147483648], got -5"),
    (["--batch-size", "0"], "--batch-size: expected an integer in [1, 2147483648], got 0"),
    (["--batch-size", "1.5"], "argument --batch-size: invalid int value: '1.5'"),
    (["--batch-size", "true"], "argument --batch-size: invalid int value: 'true'"),
    (["--batch-size"], "argument --batch-size: expected one argument"),
    (["--epochs", "0"], "--epochs: expected an integer in [1, 1000000], got 0"),
    (["--lr", "0"], "--lr: expected a number > 0.0, got 0.0"),
    (["--lr", "-1"], "--lr: expected a number > 0.0, got -1.0"),
    (["--lr", "nan"], "--lr: expected a number > 0.0, got nan"),
    (["--lr", "inf"], "--lr: expected a number > 0.0, got inf"),
    (["--lr", "ten"], "argument --lr: invalid float value: 'ten'"),
    (["--momentum", "1.5"], "--momentum: expected a number in [0.0, 1.0], got 1.5"),
    (["--weight-decay", "-0.1"], "--weight-decay: expected a number >= 0.0"),
    (["--warmup-epochs", "-1"], "--warmup-epochs: expected a number in [0.0, 1000000]"),
    (["--trust-coefficient", "0"], "--trust-coefficient: expected a number > 0.0"),
    (["--milestones", "30,x"], "argument --milestones: expected comma-separated numbers, got '30,x'"),
    (["--milestones", "30,nan"], "--milestones: expected a list of numbers"),
    (["--optimizer", "adamx"], "argument --optimizer: invalid choice: 'adamx'"),
    (["--dataset", "cifar10"], "argument --dataset: invalid choice: 'cifar10'"),
    (["--decay", "linear"], "argument --decay: invalid choice: 'linear'"),
    (["--scaling", "quadratic"], "argument --scaling: invalid choice: 'quadratic'"),
    (["--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["--augmentation", "heavy"], "argument --augmentation: invalid choice: 'heavy'"),
    (["--compile", "yes"], "unrecognized arguments: yes"),
    (["--batchsize", "64"], "unrecognized arguments: --batchsize 64"),
    (["--micro-batch-size", "128", "--batch-size", "64"],
     "run.micro_batch_size (128) is larger than run.batch_size (64)"),
    (["--image-size", "32"], "data.image_size: fashion-mnist images are 28x28"),
    (["--seed", "-1"], "--seed: expected an integer in [0, 4294967295], got -1"),
    (["--seed", "99999999999"], "--seed: expected an integer in [0, 4294967295]"),
    (["--threads", "-1"], "--threads: expected an integer in [0, 4096]"),
    (["--workers", "-2"], "--workers: expected an integer in [-1, 1024]"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints: expected an integer in [1, 1000]"),
    (["--eval-every", "0"], "--eval-every: expected an integer in [1, 1000000]"),
    (["--checkpoint-every-steps", "-1"], "--checkpoint-every-steps: expected an integer >= 0"),
    (["--target-top1", "1.5"], "--target-top1: expected a number in [0.0, 1.0]"),
    (["--color-jitter", "2"], "--color-jitter: expected a number in [0.0, 1.0]"),
    (["--synthetic-images", "0"], "--synthetic-images: expected an integer in [1, 2147483648]"),
    (["--model", "resnet9000"], "unknown model 'resnet9000'"),
    (["--model", "alexnet_bn", "--zero-init-residual"], "alexnet_bn has no residual blocks"),
    (["--precision", "fp16"], "fp16 with loss scaling needs a CUDA device"),
    (["--recipe", "no_such_recipe"], "unknown recipe 'no_such_recipe'"),
    (["--recipe", "missing/recipe.toml"], "recipe file missing/recipe.toml not found"),
]
if not torch.cuda.is_available():
    BAD_TRAIN_FLAGS.append((["--device", "cuda"], "cuda was asked for but no CUDA device is available"))


@pytest.mark.parametrize("flags, message", BAD_TRAIN_FLAGS, ids=[" ".join(f) for f, _ in BAD_TRAIN_FLAGS])
def test_bad_training_flag(flags, message, train_argv, tmp_path, helpers, cli):
    code, _, err = cli(train_argv(tmp_path / "run", *flags))
    helpers.assert_one_line_error(code, err, message)
    assert code == 2


# Paths: (flags given a tmp_path, text of the one line); each function prepares the files it names.
def missing_data(tmp_path):
    return ["--data-dir", str(tmp_path / "nowhere")], "--data-dir"


def data_dir_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    return ["--data-dir", str(tmp_path / "file")], "--data-dir"


def corrupt_idx(tmp_path, tiny_data):
    broken = tmp_path / "fashion-mnist"
    broken.mkdir()
    for path in tiny_data.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    with gzip.open(broken / "train-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(b"\x00\x00\x08\x03 not an idx file")
    return ["--data-dir", str(broken)], "train-images-idx3-ubyte.gz"


def resume_missing_file(tmp_path):
    return ["--resume", str(tmp_path / "none.pt")], f"cannot read checkpoint {tmp_path / 'none.pt'}"


def resume_directory(tmp_path):
    return ["--resume", str(tmp_path)], f"cannot read checkpoint {tmp_path} (Is a directory)"


def resume_text_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    return ["--resume", str(tmp_path / "notes.txt")], "not a zip archive"


def out_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    return ["--out", str(tmp_path / "taken")], "is a file, not a directory; choose another --out"


def out_holds_a_run(tmp_path, finished_run):
    return ["--out", str(finished_run[0])], "already holds a run (checkpoints, config.toml"


PATH_CASES = [missing_data, data_dir_is_a_file, corrupt_idx, resume_missing_file, resume_directory,
              resume_text_file, out_is_a_file, out_holds_a_run]


@pytest.mark.parametrize("case", PATH_CASES, ids=[c.__name__ for c in PATH_CASES])
def test_bad_path(case, train_argv, tmp_path, tiny_data, finished_run, helpers, cli, request):
    arguments = {"tiny_data": tiny_data, "finished_run": finished_run}
    names = case.__code__.co_varnames[:case.__code__.co_argcount]
    flags, message = case(tmp_path, **{n: arguments[n] for n in names if n != "tmp_path"})
    code, _, err = cli(train_argv(tmp_path / "run", *flags))  # a second --out wins over the first
    helpers.assert_one_line_error(code, err, message)
    assert code == 2


# (recipe text, text of the one line)
BAD_RECIPES = [
    ("[run\nepochs = 1\n", "not valid TOML"),
    ("[run]\nepochs = 1\nepochs = 2\n", "not valid TOML"),
    ("[optimiser]\nlr = 1.0\n", "unknown key 'optimiser'"),
    ("[run]\nbatchsize = 64\n", "unknown key 'run.batchsize'"),
    ("learning_rate = 1.0\n", "unknown key 'learning_rate'"),
    ("[run]\nseed = \"zero\"\n", "run.seed: expected an integer"),
    ("[run]\nseed = 1.5\n", "run.seed: expected an integer"),
    ("[run]\nseed = true\n", "run.seed: expected an integer"),
    ("[run]\ncompile = 1\n", "run.compile: expected true or false, got 1"),
    ("[optimizer]\nmomentum = [0.9]\n", "optimizer.momentum: expected a number"),
    ("[optimizer]\nmomentum = {value = 0.9}\n", "optimizer.momentum: expected a number"),
    ("[optimizer]\nmomentum = 1979-05-27\n", "optimizer.momentum: expected a number"),
    ("[optimizer]\nmomentum = nan\n", "optimizer.momentum: expected a number"),
    ("[optimizer]\nweight_decay = inf\n", "optimizer.weight_decay: expected a number"),
    ("[optimizer]\nweight_decay = 1e400\n", "optimizer.weight_decay: expected a number"),
    ("[optimizer]\nweight_decay = 1" + "0" * 400 + "\n", "optimizer.weight_decay: expected a number"),
    ("[run]\nseed = 1" + "0" * 30 + "\n", "run.seed: expected an integer in [0, 4294967295]"),
    ("[schedule]\nmilestones = [1, \"a\"]\n", "schedule.milestones: expected a list of numbers"),
    ("[schedule]\nmilestones = [[1]]\n", "schedule.milestones: expected a list of numbers"),
    ("[optimizer]\nname = \"\"\n", "optimizer.name: expected one of lars"),
    ("run = 5\n", "[run] must be a table"),
    ("description = 5\n", "'description' must be a string"),
    ("extends = 5\n", "'extends' must be a recipe name or path"),
    ("extends = \"no_such_base\"\n", "unknown recipe 'no_such_base'"),
    ("extends = \"bad.toml\"\n", "'extends' forms a cycle"),  # the file extends itself
    ("[data]\nimage_size = 32\n", "data.image_size: fashion-mnist images are 28x28"),
]


@pytest.mark.parametrize("text, message", BAD_RECIPES, ids=[m for _, m in BAD_RECIPES])
def test_bad_recipe(text, message, train_argv, tmp_path, helpers, cli):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text)
    code, _, err = cli(train_argv(tmp_path / "run", "--recipe", str(recipe)))
    line = helpers.assert_one_line_error(code, err, message)
    assert code == 2
    if "not valid TOML" in message or "must be" in message or "cycle" in message:
        assert str(recipe) in line  # the file is named


def test_recipe_that_is_not_utf8(train_argv, tmp_path, helpers, cli):
    recipe = tmp_path / "latin1.toml"
    recipe.write_bytes("description = \"caf\xe9\"\n".encode("latin-1"))
    code, _, err = cli(train_argv(tmp_path / "run", "--recipe", str(recipe)))
    helpers.assert_one_line_error(code, err, str(recipe), "not valid TOML")


# Other commands
BAD_OTHER = [
    (["trian"], "argument COMMAND: invalid choice: 'trian'"),
    (["evaluate"], "the following arguments are required: run_dir"),
    (["evaluate", "{tmp}/nowhere"], "not a run directory"),
    (["evaluate", "{run}", "--checkpoint", "{tmp}/none.pt"], "cannot read checkpoint"),
    (["evaluate", "{run}", "--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["recipes", "no_such_recipe"], "unknown recipe 'no_such_recipe'"),
    (["study", "{tmp}/nowhere.toml"], "study file"),
    (["plan", "--processors", "8"], "--device: give a device preset"),
    (["plan", "--device", "v100", "--processors", "0"], "--processors: expected an integer >= 1, got 0"),
    (["plan", "--device", "v100", "--processors", "8", "--model", "resnet9000"], "unknown model 'resnet9000'"),
    (["plan", "--device", "v100", "--processors", "8", "--epochs", "nan"], "--epochs: expected a number > 0"),
    (["plan", "--device-file", "{tmp}/none.json", "--processors", "8"], "none.json does not exist"),
    (["report", "{tmp}/nowhere"], "no complete runs"),
]


@pytest.mark.parametrize("argv, message", BAD_OTHER, ids=[" ".join(a) for a, _ in BAD_OTHER])
def test_bad_command(argv, message, tmp_path, finished_run, helpers, cli):
    argv = [a.format(tmp=tmp_path, run=finished_run[0]) for a in argv]
    code, _, err = cli(argv)
    helpers.assert_one_line_error(code, err, message)
    assert code == 2


# The real command, a few of each kind: an argparse error, a validation error, a recipe error, a
# missing name (each starts a new Python: about a second apiece, so only these few).
SUBPROCESS_CASES = [
    (["train", "--lr", "nan"], "--lr: expected a number > 0.0, got nan"),
    (["train", "--dataset", "cifar10"], "invalid choice: 'cifar10'"),
    (["train", "--recipe", "{tmp}/bad.toml"], "not valid TOML"),
    (["recipes", "no_such_recipe"], "unknown recipe 'no_such_recipe'"),
]


@pytest.mark.parametrize("argv, message", SUBPROCESS_CASES, ids=[" ".join(a[:3]) for a, _ in SUBPROCESS_CASES])
def test_bad_command_line_through_the_real_command(argv, message, tmp_path, tiny_data, cli_env, helpers):
    (tmp_path / "bad.toml").write_text("[run\n")
    argv = [a.format(tmp=tmp_path, data=tiny_data) for a in argv]
    result = helpers.run_subprocess(argv, cli_env)
    helpers.assert_one_line_error(result.returncode, result.stderr, message)
    assert result.returncode == 2


def test_study_file_that_is_not_utf8(tmp_path, helpers, cli):
    study = tmp_path / "latin1.toml"
    study.write_bytes("description = \"caf\xe9\"\n".encode("latin-1"))
    code, _, err = cli(["study", str(study), "--dry-run"])
    helpers.assert_one_line_error(code, err, str(study))
