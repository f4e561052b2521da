"""The MAC and parameter counter, and the torch-free table generated from it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from largebatch import models
from largebatch.cli import main as cli_main
from largebatch.model_costs import MODEL_COSTS
from largebatch.models.cost import TABLE_PATH, count_cost, cost_table, model_cost, render_table_module

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def table() -> dict[str, dict[str, int]]:
    """The counter's cost of every model at its defaults, counted once for this module."""
    return cost_table()


def test_two_layer_net_counted_exactly():
    # Conv 3 -> 8, 3x3, padding 1 on 10x10: 8 x 10 x 10 = 800 outputs, each 3 x 3 x 3 = 27 MACs:
    # 21,600. Linear 800 -> 5: 5 outputs x 800 = 4,000. Biases, ReLU: not counted. Total 25,600.
    # Parameters: 8 x 27 + 8 = 224, and 800 x 5 + 5 = 4,005: 4,229.
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(800, 5))
    assert count_cost(net, 10) == (25_600, 4_229)


def test_grouped_strided_convolution_and_rectangular_input_counted_exactly():
    # Conv 4 -> 6, 3x3, stride 2, 2 groups on 9x11: output 4 x 5 per channel, 6 x 20 = 120 outputs,
    # each sees 4 / 2 = 2 input channels x 9 = 18 MACs: 2,160. Parameters 6 x 2 x 9 = 108 (no bias).
    # Linear 120 -> 3 without bias: 360 MACs and 360 parameters.
    net = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, groups=2, bias=False), nn.BatchNorm2d(6),
                        nn.Flatten(), nn.Linear(120, 3, bias=False))
    assert count_cost(net, (9, 11)) == (2_160 + 360, 108 + 12 + 360)  # BN: 6 gammas + 6 betas


# Published per-image forward cost at 224x224 (torchvision's model tables, in GMACs, which it
# labels GFLOPS): conv and linear multiply-accumulates, as counted here.
PUBLISHED_GMACS = {"resnet18": 1.81, "resnet34": 3.66, "resnet50": 4.09, "resnet101": 7.80,
                   "resnet152": 11.51, "alexnet_bn": 0.71}


@pytest.mark.parametrize("name", PUBLISHED_GMACS)
def test_imagenet_models_match_published_macs_within_two_percent(name, table):
    assert table[name]["macs"] == pytest.approx(PUBLISHED_GMACS[name] * 1e9, rel=0.02)


def test_resnet50_v1_costs_less_than_v15(table):
    # The v1 stride on the 1x1 convolution makes the 3x3 of the first block of stages 2-4 run at
    # the reduced resolution: 3.86 vs 4.09 GMACs.
    assert table["resnet50_v1"]["macs"] == pytest.approx(3.86e9, rel=0.01)
    assert table["resnet50_v1"]["macs"] < table["resnet50"]["macs"]


def test_doubling_the_side_quadruples_convolution_macs(table):
    # ResNet-50's output stride is 32: at 448 every feature map has 4x the positions of 224;
    # the classifier (2048 x 1000 MACs) stays.
    classifier = 2048 * 1000
    at_224, at_448 = model_cost("resnet50", 224).macs, model_cost("resnet50", 448).macs
    assert at_224 == table["resnet50"]["macs"]
    assert at_448 - classifier == 4 * (at_224 - classifier)


def test_counting_on_meta_equals_counting_real_weights():
    real = models.build("resnet20", num_classes=10)
    assert count_cost(real, 32) == model_cost("resnet20")
    assert count_cost(real, 28, in_channels=3) == model_cost("resnet20", input_size=28)


def test_counter_leaves_the_model_as_it_was():
    model = models.build("fast_resnet", num_classes=10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_cost(model, 28)
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # BN statistics too


def test_generated_table_equals_the_counter(table):
    """Fails when a model changed and `python -m largebatch.models.cost --write` was not run."""
    assert list(table) == models.list_models()
    assert MODEL_COSTS == table
    assert TABLE_PATH.read_text() == render_table_module(table)
    assert MODEL_COSTS["resnet50"] == {"macs": table["resnet50"]["macs"], "params": 25_557_032,
                                       "input_size": 224, "in_channels": 3, "num_classes": 1000}


def test_table_imports_without_torch():
    env = dict(os.environ, PYTHONPATH=str(SRC))
    code = ("import sys, largebatch.model_costs as m; "
            "assert 'torch' not in sys.modules; print(m.MODEL_COSTS['fast_resnet']['params'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "116602"


@pytest.mark.slow  # counts every model again in a fresh process
def test_cost_module_check_reports_the_table_current():
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "largebatch.models.cost", "--check"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "is up to date" in result.stdout and "resnet50" in result.stdout


def test_models_command_prints_name_parameters_gmacs_and_input(capsys, table):
    assert cli_main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "parameters", "GMACs", "input", "classes"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert list(rows) == models.list_models()
    assert rows["resnet50"] == ["25,557,032", f"{table['resnet50']['macs'] / 1e9:.4f}", "3x224x224", "1000"]
    assert rows["fast_resnet"] == ["116,602", f"{table['fast_resnet']['macs'] / 1e9:.4f}", "1x28x28", "10"]
