import math

import pytest

from largebatch import config as cfg
from largebatch.errors import ConfigError


def write(tmp_path, text, name="r.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_default_recipe_is_the_main_job():
    config = cfg.load_config()
    assert config.recipe == cfg.DEFAULT_RECIPE
    assert config.data.dataset == "fashion-mnist"
    assert config.optimizer.name == "lars"
    assert config.run.batch_size == 4096
    assert config.schedule.decay == "poly" and config.schedule.power == 2.0


@pytest.mark.parametrize("name", cfg.recipe_names())
def test_every_builtin_recipe_validates(name):
    cfg.load_config(name)


def test_unknown_key_is_named_with_allowed_keys(tmp_path):
    path = write(tmp_path, "[optimizer]\nlrr = 1.0\n")
    with pytest.raises(ConfigError, match=r"unknown key 'optimizer.lrr'.*allowed in \[optimizer\]: name, lr"):
        cfg.load_config(path)


def test_unknown_section_and_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'optimiser'"):
        cfg.load_config(write(tmp_path, "[optimiser]\nlr = 1.0\n"))


@pytest.mark.parametrize("text, message", [
    ("[run]\nbatch_size = -5\n", r"run.batch_size: expected an integer in \[1, 2147483648\], got -5"),
    ("[run]\nbatch_size = 12.5\n", r"run.batch_size: expected an integer"),
    ("[run]\nbatch_size = true\n", r"run.batch_size: expected an integer"),
    ("[optimizer]\nname = \"adamx\"\n", r"optimizer.name: expected one of lars, larc, lamb, sgd, got 'adamx'"),
    ("[optimizer]\nlr = 0.0\n", r"optimizer.lr: expected a number > 0.0"),
    ("[optimizer]\nlr = nan\n", r"optimizer.lr: expected a number"),
    ("[optimizer]\nlr = inf\n", r"optimizer.lr: expected a number"),
    ("[optimizer]\nmomentum = 1.5\n", r"optimizer.momentum: expected a number in \[0.0, 1.0\]"),
    ("[schedule]\nmilestones = [\"a\"]\n", r"schedule.milestones: expected a list of numbers"),
    ("[model]\nzero_init_residual = 1\n", r"model.zero_init_residual: expected true or false"),
    ("[run]\nmicro_batch_size = 8192\n", r"micro_batch_size \(8192\) is larger than run.batch_size"),
    ("[optimizer]\nlr = \"high\"\n", r"optimizer.lr: expected a number"),
    ("[run]\n", None),
])
def test_bad_values_are_rejected_by_name(tmp_path, text, message):
    path = write(tmp_path, text)
    if message is None:
        cfg.load_config(path)
        return
    with pytest.raises(ConfigError, match=message):
        cfg.load_config(path)


def test_extends_and_overrides_take_precedence(tmp_path):
    base = write(tmp_path, "[run]\nepochs = 7\nbatch_size = 512\n", "base.toml")
    child = write(tmp_path, f'extends = "{base}"\n[run]\nepochs = 9\n', "child.toml")
    config = cfg.build_config(cfg.load_recipe(child), {"run.seed": 3})
    assert (config.run.epochs, config.run.batch_size, config.run.seed) == (9, 512, 3)
    assert config.recipe == "child"


def test_extends_cycle_is_an_error(tmp_path):
    write(tmp_path, 'extends = "b.toml"\n', "a.toml")
    write(tmp_path, 'extends = "a.toml"\n', "b.toml")
    with pytest.raises(ConfigError, match="cycle"):
        cfg.load_config(str(tmp_path / "a.toml"))


def test_invalid_toml_and_missing_recipe(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        cfg.load_config(write(tmp_path, "[run\n"))
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        cfg.load_config("nope")


def test_saved_config_round_trips(tmp_path):
    config = cfg.build_config(cfg.load_recipe("fashion_mnist"),
                              {"schedule.milestones": [30.0, 60.0], "run.out": 'a "quoted" dir'})
    path = write(tmp_path, cfg.to_toml(config), "saved.toml")
    again = cfg.load_config(path)
    assert cfg.config_to_dict(again) == cfg.config_to_dict(config)
    assert cfg.config_from_dict(cfg.config_to_dict(config)) == config


def test_flags_are_unique_and_cover_every_field():
    flags = cfg.all_flags()
    count = sum(len(cfg.section_fields(s)) for s in cfg.SECTIONS)
    assert len(flags) == count
    assert {"batch-size", "optimizer", "lr", "epochs", "seed", "out", "data-dir", "model"} <= set(flags)


def test_check_value_accepts_ints_for_floats():
    field = dict((f.name, f) for f in cfg.section_fields("optimizer"))["lr"]
    value = cfg.check_value("optimizer.lr", field, 3)
    assert value == 3.0 and isinstance(value, float) and not math.isnan(value)
