"""Parameter groups by rank and module type, and build_optimizer from the config."""

import math

import pytest
import torch
from torch import nn

from largebatch import models
from largebatch.config import OptimizerConfig, all_flags, build_config
from largebatch.errors import ConfigError
from largebatch.optim import LAMB, LARS, build_optimizer, describe_groups, parameter_groups, trust_ratio_summary


class Scaled(nn.Module):
    """A module with a 1-D parameter that is neither a bias nor a normalization parameter."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        return self.linear(x) * self.scale


def toy_model():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.LayerNorm(4 * 26 * 26),
                          nn.Linear(4 * 26 * 26, 4), Scaled())
    model[4].weight.requires_grad_(False)  # frozen: in no group
    return model


def grouped(groups):
    return {g["name"]: g for g in groups}


def test_paper_rule_is_one_group_of_everything():
    model = toy_model()
    (group,) = parameter_groups(model, 5e-4)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert group["params"] == trainable and group["adapt"] and group["weight_decay"] == 5e-4
    assert group["lr_scale"] == 1.0 and group["name"] == "adapted, decayed"


def test_rank_rule_selects_every_tensor_of_rank_at_most_one():
    model = toy_model()
    groups = grouped(parameter_groups(model, 5e-4, skip_adaptation="1d", skip_weight_decay="1d",
                                      skip_adaptation_lr_scale=2.0, skip_weight_decay_lr_scale=0.5))
    assert set(groups) == {"adapted, decayed", "not adapted, not decayed"}
    assert groups["adapted, decayed"]["params"] == [model[0].weight, model[5].linear.weight]
    one_d = groups["not adapted, not decayed"]
    assert one_d["params"] == [model[1].weight, model[1].bias, model[3].weight, model[3].bias, model[4].bias,
                               model[5].scale, model[5].linear.bias]
    assert one_d["weight_decay"] == 0.0 and not one_d["adapt"] and one_d["lr_scale"] == 1.0  # 2.0 * 0.5


def test_module_rule_selects_normalization_layers_and_biases_only():
    model = toy_model()
    groups = grouped(parameter_groups(model, 5e-4, skip_weight_decay="bn_bias", skip_weight_decay_lr_scale=0.1))
    assert set(groups) == {"adapted, decayed", "adapted, not decayed"}
    assert groups["adapted, decayed"]["params"] == [model[0].weight, model[5].scale, model[5].linear.weight]
    excluded = groups["adapted, not decayed"]
    assert excluded["params"] == [model[1].weight, model[1].bias, model[3].weight, model[3].bias, model[4].bias,
                                  model[5].linear.bias]
    assert excluded["weight_decay"] == 0.0 and excluded["lr_scale"] == 0.1


def test_normalization_rule_leaves_other_biases_in():
    # Goyal et al. 2017, sec. 5.1: no weight decay on BN's gamma and beta; other biases are decayed
    model = toy_model()
    groups = grouped(parameter_groups(model, 1e-4, skip_adaptation="bn_bias", skip_weight_decay="bn"))
    assert groups["adapted, decayed"]["params"] == [model[0].weight, model[5].scale, model[5].linear.weight]
    assert groups["not adapted, decayed"]["params"] == [model[4].bias, model[5].linear.bias]
    assert groups["not adapted, decayed"]["weight_decay"] == 1e-4
    assert groups["not adapted, not decayed"]["params"] == [model[1].weight, model[1].bias, model[3].weight,
                                                            model[3].bias]


def test_separate_rules_for_adaptation_and_weight_decay():
    model = toy_model()
    groups = grouped(parameter_groups(model, 1e-4, skip_adaptation="bn_bias", skip_weight_decay="1d",
                                      skip_adaptation_lr_scale=3.0))
    assert groups["adapted, not decayed"]["params"] == [model[5].scale]  # 1-D, but no bias or norm
    assert groups["adapted, not decayed"]["lr_scale"] == 1.0
    assert groups["not adapted, not decayed"]["lr_scale"] == 3.0
    assert "not adapted, decayed" not in groups


def test_shared_parameters_are_placed_once():
    linear = nn.Linear(3, 3)
    model = nn.Sequential(linear, nn.ReLU(), linear)
    (group,) = parameter_groups(model, 0.0)
    assert len(group["params"]) == 2


def test_build_optimizer_for_each_name():
    model = models.build("fast_resnet", 10)
    lars = build_optimizer(OptimizerConfig(name="lars"), model, 2.0)
    assert isinstance(lars, LARS) and not lars.param_groups[0]["clip"]
    assert lars.param_groups[0]["trust_ratio_max"] == math.inf and lars.param_groups[0]["lr"] == 2.0
    larc = build_optimizer(OptimizerConfig(name="larc", trust_ratio_max=5.0), model, 2.0)
    assert isinstance(larc, LARS) and larc.param_groups[0]["clip"] and larc.param_groups[0]["trust_ratio_max"] == 5.0
    lamb = build_optimizer(OptimizerConfig(name="lamb", momentum=0.8, lamb_beta2=0.99, lamb_eps=1e-8), model, 0.01)
    assert isinstance(lamb, LAMB) and lamb.param_groups[0]["betas"] == (0.8, 0.99) and lamb.param_groups[0]["eps"] == 1e-8
    sgd = build_optimizer(OptimizerConfig(name="sgd", skip_adaptation="1d", skip_weight_decay="1d",
                                          skip_weight_decay_lr_scale=0.5), model, 0.1)
    assert isinstance(sgd, torch.optim.SGD)
    assert [g["name"] for g in sgd.param_groups] == ["decayed", "not decayed"]  # adaptation rule ignored
    assert [g["lr"] for g in sgd.param_groups] == [0.1, 0.05]
    assert trust_ratio_summary(sgd) is None


def test_build_optimizer_paper_defaults_and_summary_line():
    model = models.build("fast_resnet", 10)
    optimizer = build_optimizer(OptimizerConfig(), model, 1.0)
    (group,) = optimizer.param_groups
    assert group["adapt"] and group["weight_decay"] == 5e-4 and group["trust_denominator"] == "sum_of_norms"
    assert group["lr_in_velocity"] and group["eps"] == 0.0 and group["trust_coefficient"] == 0.001
    line = describe_groups(optimizer, "lars")
    assert line == "lars parameter groups: adapted, decayed: 23 tensors, 116,602 values, wd 0.0005, lr x1"


def test_build_optimizer_groups_follow_the_config_and_set_each_lr():
    model = models.build("fast_resnet", 10)
    config = OptimizerConfig(skip_adaptation="bn_bias", skip_weight_decay="bn_bias", skip_adaptation_lr_scale=0.5)
    optimizer = build_optimizer(config, model, 4.0)
    groups = grouped(optimizer.param_groups)
    assert groups["not adapted, not decayed"]["lr"] == 2.0 and groups["adapted, decayed"]["lr"] == 4.0
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 23
    F = torch.nn.functional
    F.cross_entropy(model(torch.randn(2, 1, 28, 28)), torch.tensor([0, 1])).backward()
    optimizer.step()
    assert trust_ratio_summary(optimizer).shape == (3,)
    assert optimizer.trust_ratios().numel() == len(groups["adapted, decayed"]["params"])


@pytest.mark.parametrize("overrides, message", [
    ({"optimizer.trust_ratio_min": 2.0, "optimizer.trust_ratio_max": 1.0}, "trust_ratio_min"),
    ({"optimizer.name": "lamb", "optimizer.lamb_beta2": 1.0}, "lamb_beta2"),
    ({"optimizer.name": "sgd", "optimizer.nesterov": True, "optimizer.momentum": 0.0}, "nesterov"),
])
def test_build_optimizer_rejects_inconsistent_settings(overrides, message):
    config = build_config({}, overrides)
    with pytest.raises(ConfigError, match=message):
        build_optimizer(config.optimizer, models.build("fast_resnet", 10), 1.0)


def test_switches_are_recipe_keys_and_flags():
    config = build_config({"optimizer": {"trust_denominator": "norm_of_sum", "lr_in_velocity": False,
                                         "skip_adaptation": "1d", "trust_ratio_max": 10.0}})
    assert config.optimizer.trust_denominator == "norm_of_sum" and not config.optimizer.lr_in_velocity
    flags = all_flags()  # asserts that no two fields share a flag
    for flag in ("trust-denominator", "lr-in-velocity", "trust-ratio-min", "trust-ratio-max", "skip-adaptation",
                 "skip-adaptation-lr-scale", "skip-weight-decay", "skip-weight-decay-lr-scale", "lamb-beta2",
                 "lamb-eps"):
        assert flags[flag][0] == "optimizer"
    with pytest.raises(ConfigError, match="optimizer.trust_denominator: expected one of sum_of_norms, norm_of_sum"):
        build_config({"optimizer": {"trust_denominator": "sum"}})


def test_config_offers_exactly_the_rules_and_denominators_the_optimizers_know():
    from largebatch import config
    from largebatch.optim import groups, lars
    assert config.EXCLUSION_RULES == groups.EXCLUSION_RULES
    fields = {f.name: f for f in config.section_fields("optimizer")}
    assert fields["trust_denominator"].metadata["choices"] == lars.TRUST_DENOMINATORS
