"""Study files: the grid, validation by the recipe code, names, duplicates, LR factors, --set."""

import math

import pytest

from largebatch.errors import ConfigError
from largebatch.study import load_study
from largebatch.study.spec import parse_setting

STUDY = """
[study]
base = "fashion_mnist"
batch_sizes = [64, 256]
epochs = 1
seeds = [0]

[variants.sgd]
optimizer = {{ name = "sgd", lr = 0.05 }}
schedule = {{ scaling = "linear", base_batch_size = 64, warmup_epochs = 0.5 }}
run = {{ micro_batch_size = 64, threads = 1 }}
data = {{ data_dir = "{data}" }}

[variants.lars]
optimizer = {{ name = "lars", lr = 2.0 }}
schedule = {{ scaling = "sqrt", base_batch_size = 256, warmup_epochs = 0.5 }}
run = {{ micro_batch_size = 64, threads = 1 }}
data = {{ data_dir = "{data}" }}
"""


def write(tmp_path, text):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return str(path)


def test_study_expands_the_grid_with_each_rule(tmp_path):
    study = load_study(write(tmp_path, STUDY.format(data="/nowhere")), out=str(tmp_path / "out"))
    assert [r.name for r in study.runs] == ["sgd-b64-none-s0", "sgd-b256-none-s0", "lars-b64-none-s0",
                                            "lars-b256-none-s0"]
    from largebatch.study.runs import peak_lr
    assert peak_lr(study.runs[1].config) == pytest.approx(0.2)
    assert all(r.config.run.epochs == 1 for r in study.runs)
    assert all(r.config.run.out == str(tmp_path / "out" / r.name) for r in study.runs)


def test_lr_factors_multiply_the_rate_and_name_every_run():
    study = load_study("tuned_fashion_mnist")
    names = {r.name: r for r in study.runs}
    # the names of the folders the study has been writing all along
    run = names["sgd_nesterov-b16384-none-s0-lr0.25"]
    assert run.config.optimizer.lr == 0.05 * 0.25 and run.lr_factor == 0.25
    assert names["lars-b4096-none-s0-lr1"].config.optimizer.lr == 10.0
    assert len(study.runs) == 3 * 2 * 5 and study.best_seeds == [1, 2] and study.widen_limit == 6 and study.min_top1 == 0.5
    baseline = load_study("tuned_fashion_mnist_baseline")
    assert baseline.out == study.out and not baseline.sweeps
    assert [r.name for r in baseline.runs][:3] == ["sgd_nesterov-b128-none-s0", "sgd_nesterov-b128-none-s1",
                                                   "sgd_nesterov-b128-none-s2"]


def test_make_run_builds_widened_points_with_the_same_validation():
    study = load_study("tuned_fashion_mnist")
    run = study.make_run("lamb", 4096, "none", 1, 0.125)
    assert run.name == "lamb-b4096-none-s1-lr0.125" and run.config.optimizer.lr == 0.02 * 0.125
    with pytest.raises(ConfigError, match="optimizer.lr: expected a number > 0.0, got inf"):
        study.make_run("lars", 4096, "none", 1, 1e308)  # 10 x 1e308
    with pytest.raises(ConfigError, match="LR factor"):
        study.make_run("lamb", 4096, "none", 1, float("nan"))


def test_set_values_reach_the_config_and_grid_keys_are_refused():
    study = load_study("study_fashion_mnist")
    key, value = parse_setting("run.noise_scale=true")
    run = study.make_run("lars", 1024, "none", 0, 1.0, {key: value})
    assert run.config.run.noise_scale is True and run.name == "lars-b1024-none-s0"
    assert parse_setting("run.precision = bf16") == ("run.precision", "bf16")
    assert parse_setting("schedule.warmup_epochs=3") == ("schedule.warmup_epochs", 3.0)
    for text, message in [("run.noise_scale", "expected section.key=value"), ("run.nope=1", "unknown key"),
                          ("run.batch_size=64", "the study's grid sets this key"),
                          ("optimizer.lr=1", "the study's grid sets this key"),
                          ("run.noise_scale=3", "expected true or false"),
                          ("schedule.warmup_epochs=inf", "expected a number")]:
        with pytest.raises(ConfigError, match=message):
            parse_setting(text)


BAD = [
    ("[study]\nbatch_sizes = [64]\n", "needs at least one"),
    ("[study]\nbatch_sizes = []\n[variants.a]\n", "batch_sizes must be a non-empty list"),
    ("[study]\nbatch_sizes = [64]\nbogus = 1\n[variants.a]\n", "unknown key 'study.bogus'"),
    ("[study]\nbatch_sizes = [64]\n[variants.a]\noptimizer = { name = 'adamx' }\n", "optimizer.name"),
    ("[study]\nbatch_sizes = [64]\n[variants.a]\nrunn = { seed = 1 }\n", "variants.a.runn"),
    ("[study]\nbatch_sizes = [0]\n[variants.a]\n", r"study.batch_sizes\[0\]: expected an integer in \[1, "),
    ("[study]\nbatch_sizes = [64]\nseeds = [-1]\n[variants.a]\n", r"study.seeds\[0\]"),
    ("[study]\nbatch_sizes = [64]\nepochs = 0\n[variants.a]\n", "study.epochs"),
    ("[study]\nbatch_sizes = [64]\naugmentations = ['wild']\n[variants.a]\n", r"study.augmentations\[0\]"),
    ("[study]\nbatch_sizes = [64]\nlr_factors = [0.0]\n[variants.a]\n", r"study.lr_factors\[0\]"),
    ("[study]\nbatch_sizes = [64]\nlr_factors = [nan]\n[variants.a]\n", r"study.lr_factors\[0\]"),
    ("[study]\nbatch_sizes = [64]\nlr_factors = [inf]\n[variants.a]\n", r"study.lr_factors\[0\]"),
    ("[study]\nbatch_sizes = [64]\nwiden_limit = 11\n[variants.a]\n", "study.widen_limit"),
    ("[study]\nbatch_sizes = [64]\nwiden_limit = -1\n[variants.a]\n", "study.widen_limit"),
    ("[study]\nbatch_sizes = [64]\nmin_top1 = 1.5\n[variants.a]\n", "study.min_top1"),
    ('[study]\nbatch_sizes = [64]\n[variants."../../../ESCAPED"]\n', "variant name '../../../ESCAPED' is not allowed"),
    ('[study]\nbatch_sizes = [64]\n[variants."/tmp/abs"]\n', "variant name '/tmp/abs' is not allowed"),
    ('[study]\nbatch_sizes = [64]\n[variants.lars-bias_excluded]\n', "variant name 'lars-bias_excluded'"),
    ("[study]\nbatch_sizes = [64]\nseeds = [0, 0]\n[variants.a]\n", "study.seeds holds 0 and 0"),
    ("[study]\nbatch_sizes = [64, 64]\n[variants.a]\n", "study.batch_sizes holds 64 and 64"),
    ("[study]\nbatch_sizes = [64]\nlr_factors = [1.0, 1.0000001]\n[variants.a]\n",
     "study.lr_factors holds 1.0 and 1.0000001, the same grid point"),
    ("[study]\nbatch_sizes = [64]\nlr_factors = [1.453125]\n[variants.a]\n",
     r"study.lr_factors\[0\]: 1.453125 has more significant digits than a run name keeps \(6\); use 1.45312"),
    ("[study]\nbatch_sizes = [64]\nseeds = [0]\nbest_seeds = [0, 1]\n[variants.a]\n",
     "seed 0 is in both study.seeds and study.best_seeds"),
    ('[study]\nbatch_sizes = [64]\nout = "a\\nb"\n[variants.a]\n', "study.out: contains the control character"),
    # factor x lr must itself be a valid LR: 1e308 x 10 is infinite
    ("[study]\nbatch_sizes = [64]\nlr_factors = [1.0, 10.0]\n[variants.a]\noptimizer = { lr = 1e308 }\n",
     "run a-b64-none-s0-lr10: optimizer.lr: expected a number > 0.0, got inf"),
    # and so must the peak LR the scaling rule makes of it: 1e307 x 4096 / 256
    ("[study]\nbatch_sizes = [4096]\n[variants.a]\noptimizer = { lr = 1e307 }\n"
     "schedule = { scaling = 'linear', base_batch_size = 1 }\n", r"run a-b4096-none-s0: optimizer.lr: the peak LR \(inf"),
    ("[study]\nbatch_sizes = " + str(list(range(1, 101))) + "\nseeds = " + str(list(range(101)))
     + "\n[variants.a]\n", "more than 10,000"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[m for _, m in BAD])
def test_bad_study_files_are_rejected_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_study(write(tmp_path, text))
    assert "\n" not in str(error.value)


def test_builtin_studies_validate():
    study = load_study("study_fashion_mnist")
    assert {r.batch_size for r in study.runs} == {128, 1024, 2048, 4096, 8192, 16384}
    assert {r.variant for r in study.runs} == {"sgd", "lars"}
    from largebatch.study.spec import STUDY_DIR
    names = sorted(p.stem for p in STUDY_DIR.glob("*.toml"))
    assert {"tuned_fashion_mnist", "tuned_fashion_mnist_lars", "augmentation_fashion_mnist"} <= set(names)
    for name in names:
        runs = load_study(name).runs
        assert len({r.name for r in runs}) == len(runs)
        assert all(math.isfinite(r.config.optimizer.lr) for r in runs)


def test_a_missing_study_names_the_built_in_ones():
    with pytest.raises(ConfigError, match="built-in studies: .*tuned_fashion_mnist"):
        load_study("no_such_study")
