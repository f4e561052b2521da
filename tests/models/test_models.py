"""Architectures: parameter counts, key names, shapes, initialisation, memory format, compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from largebatch import models
from largebatch.errors import ConfigError
from largebatch.models.resnet import BasicBlock, Bottleneck
from largebatch.models.small import CifarBasicBlock, Residual


def build_on_meta(name: str, **kwargs) -> nn.Module:
    """Build without allocating weights: shapes and counts only."""
    with torch.device("meta"):
        return models.build(name, **kwargs)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Reference counts. ResNets: torchvision's published numbers (1000 classes). ResNet-20: He et al.
# 2016 quote 0.27M; 269,722 = stem 432 + 32, stage 1 3 x (2 x 2,304 + 2 x 32), stage 2
# (4,608 + 9,216 + 128) + 2 x (2 x 9,216 + 128), stage 3 (18,432 + 36,864 + 256) + 2 x (2 x 36,864 + 256),
# fc 650. AlexNet-BN: torchvision's AlexNet has 61,100,840; we drop the 1,152 convolution biases and
# the 8,192 biases of fc6/fc7 and add BN gamma and beta for each (2 x 1,152 + 2 x 8,192):
# 61,100,840 + 1,152 + 8,192 = 61,110,184. The Caffe layout: BVLC AlexNet's 60,965,224, minus 1,376
# convolution biases, plus 2 x 1,376 BN parameters = 60,966,600.
REFERENCE_PARAMETERS = {
    "resnet18": (1000, 11_689_512),
    "resnet34": (1000, 21_797_672),
    "resnet50": (1000, 25_557_032),
    "resnet50_v1": (1000, 25_557_032),
    "resnet101": (1000, 44_549_160),
    "resnet152": (1000, 60_192_808),
    "alexnet_bn": (1000, 61_110_184),
    "alexnet_bn_caffe": (1000, 60_966_600),
    "resnet20": (10, 269_722),
    "fast_resnet": (10, 116_602),
}


@pytest.mark.parametrize("name", REFERENCE_PARAMETERS)
def test_parameter_counts_equal_the_reference_architectures(name):
    num_classes, expected = REFERENCE_PARAMETERS[name]
    assert parameter_count(build_on_meta(name, num_classes=num_classes)) == expected


def test_every_model_is_listed_with_its_defaults():
    assert models.list_models() == list(models.MODELS)
    assert {"resnet18", "resnet34", "resnet50", "alexnet_bn", "resnet20", "fast_resnet"} <= set(models.MODELS)
    assert models.default_input_size("resnet50") == 224 and models.default_input_size("fast_resnet") == 28
    assert models.default_in_channels("fast_resnet") == 1 and models.default_in_channels("resnet20") == 3


def batch_norm_keys(prefix: str) -> list[str]:
    return [f"{prefix}.{key}" for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def torchvision_resnet_keys(convolutions_per_block: int, layers: tuple[int, ...]) -> list[str]:
    """torchvision's ResNet state-dict keys, in order, written out from its naming scheme."""
    keys = ["conv1.weight", *batch_norm_keys("bn1")]
    for stage, blocks in enumerate(layers, 1):
        for block in range(blocks):
            prefix = f"layer{stage}.{block}"
            for index in range(1, convolutions_per_block + 1):
                keys += [f"{prefix}.conv{index}.weight", *batch_norm_keys(f"{prefix}.bn{index}")]
            # A projection where the shape changes: stages 2-4 (stride 2), and stage 1 of the
            # bottleneck nets (64 -> 256 channels).
            if block == 0 and (stage > 1 or convolutions_per_block == 3):
                keys += [f"{prefix}.downsample.0.weight", *batch_norm_keys(f"{prefix}.downsample.1")]
    return keys + ["fc.weight", "fc.bias"]


@pytest.mark.parametrize("name, convolutions_per_block, layers", [
    ("resnet18", 2, (2, 2, 2, 2)),
    ("resnet34", 2, (3, 4, 6, 3)),
    ("resnet50", 3, (3, 4, 6, 3)),
    ("resnet101", 3, (3, 4, 23, 3)),
])
def test_resnet_state_dict_keys_follow_torchvision(name, convolutions_per_block, layers):
    state = build_on_meta(name).state_dict()
    assert list(state) == torchvision_resnet_keys(convolutions_per_block, layers)


def test_resnet50_shapes_and_where_the_stride_sits():
    v15, v1 = build_on_meta("resnet50"), build_on_meta("resnet50_v1")
    state = v15.state_dict()
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)
    assert state["layer2.0.downsample.0.weight"].shape == (512, 256, 1, 1)
    assert state["fc.weight"].shape == (1000, 2048)
    # v1.5: the 3x3 convolution downsamples; v1 (He et al.'s Caffe model): the first 1x1 does.
    for stage in (v15.layer2, v15.layer3, v15.layer4):
        assert stage[0].conv1.stride == (1, 1) and stage[0].conv2.stride == (2, 2)
    for stage in (v1.layer2, v1.layer3, v1.layer4):
        assert stage[0].conv1.stride == (2, 2) and stage[0].conv2.stride == (1, 1)
    # Same keys and shapes: weights load across the two variants.
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in v1.state_dict().items()}


@pytest.mark.parametrize("name", models.list_models())
def test_output_shape_of_every_model_at_its_default_input_size(name):
    model = build_on_meta(name, num_classes=7)
    size, channels = models.default_input_size(name), models.default_in_channels(name)
    output = model(torch.zeros(2, channels, size, size, device="meta"))
    assert output.shape == (2, 7)


@pytest.mark.parametrize("name, channels, size", [
    ("fast_resnet", 1, 28),
    ("resnet20", 3, 32),
    ("resnet20", 1, 28),
    ("resnet56", 1, 28),
    ("resnet18", 1, 28),
    ("alexnet_bn", 1, 64),
])
def test_small_inputs_and_any_channel_count_run_on_cpu(name, channels, size):
    torch.manual_seed(0)
    model = models.build(name, num_classes=10, in_channels=channels)
    output = model(torch.randn(2, channels, size, size))
    assert output.shape == (2, 10) and torch.isfinite(output).all()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == channels


def test_state_dict_of_one_build_loads_strictly_into_another():
    torch.manual_seed(1)
    source = models.build("resnet18", num_classes=10, in_channels=1)
    source(torch.randn(4, 1, 32, 32))  # move the BN running statistics off their initial values
    torch.manual_seed(2)
    target = models.build("resnet18", num_classes=10, in_channels=1)
    x = torch.randn(3, 1, 32, 32)
    source.eval(), target.eval()
    assert not torch.equal(source(x), target(x))
    target.load_state_dict(source.state_dict(), strict=True)
    assert torch.equal(source(x), target(x))


@pytest.mark.parametrize("name", ["resnet20", "fast_resnet"])
def test_state_dict_round_trip_through_a_file(name, tmp_path):
    source = models.build(name, num_classes=5)
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    target = models.build(name, num_classes=5)
    target.load_state_dict(torch.load(tmp_path / "weights.pt"), strict=True)
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key


@pytest.mark.parametrize("name", ["alexnet_bn", "alexnet_bn_caffe", "resnet50_v1", "resnet152"])
def test_large_models_load_their_own_state_dict_strictly(name):
    # On the meta device: the keys and shapes are checked, no 60M-parameter weights are made.
    target = build_on_meta(name)
    target.load_state_dict(build_on_meta(name).state_dict(), strict=True, assign=True)


# --- zero_init_residual ----------------------------------------------------------------------

RESIDUAL_BLOCKS = (BasicBlock, Bottleneck, CifarBasicBlock, Residual)


def run_recording_blocks(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """(block, its input, its output) for every residual block, in forward order."""
    records = []

    def record(module, inputs, output):
        records.append((module, inputs[0].detach().clone(), output.detach().clone()))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, RESIDUAL_BLOCKS)]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return records


def starts_as_identity(block: nn.Module, x: torch.Tensor, output: torch.Tensor) -> bool:
    """Exactly what each block design computes when its residual branch is zero:
    ResNet and CIFAR blocks, out = relu(branch + shortcut(x)) -> relu(shortcut(x)), which is x itself
    where the shortcut is the identity (x >= 0 there: it comes out of a ReLU or a max-pool of one);
    fast_resnet's block, out = x + branch (no ReLU after the sum) -> x."""
    with torch.no_grad():
        if isinstance(block, Residual):
            expected = x
        else:
            expected = F.relu(block.shortcut(x))
    return torch.equal(output, expected)


@pytest.mark.parametrize("name, channels, size, blocks", [
    ("fast_resnet", 1, 28, 2),
    ("resnet20", 3, 32, 9),
    ("resnet18", 3, 64, 8),
    ("resnet50", 3, 64, 16),
])
@pytest.mark.parametrize("training", [True, False])
def test_zero_init_residual_makes_every_block_start_as_identity(name, channels, size, blocks, training):
    torch.manual_seed(0)
    x = torch.randn(2, channels, size, size)
    model = models.build(name, num_classes=10, in_channels=channels, zero_init_residual=True).train(training)
    records = run_recording_blocks(model, x)
    assert len(records) == blocks
    for block, block_input, block_output in records:
        assert starts_as_identity(block, block_input, block_output), block
        if isinstance(block, Residual) or getattr(block, "downsample", 1) is None \
                or (isinstance(block, CifarBasicBlock) and block.stride == 1 and not block.extra_channels):
            assert torch.equal(block_output, block_input)  # identity shortcut: the block is the identity

    # Without the option the same blocks are not the identity (the check above can fail).
    model = models.build(name, num_classes=10, in_channels=channels).train(training)
    records = run_recording_blocks(model, x)
    assert not any(starts_as_identity(block, i, o) for block, i, o in records)


def test_zero_init_residual_zeroes_exactly_the_last_bn_of_each_branch():
    model = models.build("resnet50", zero_init_residual=True)
    zeroed = {name for name, m in model.named_modules()
              if isinstance(m, nn.BatchNorm2d) and torch.count_nonzero(m.weight) == 0}
    expected = {f"layer{s}.{b}.bn3" for s, blocks in enumerate((3, 4, 6, 3), 1) for b in range(blocks)}
    assert zeroed == expected


def test_he_initialisation_of_convolutions():
    torch.manual_seed(0)
    conv = models.build("resnet50").layer3[1].conv2  # 256 -> 256, 3x3: fan_out 2,304
    expected_std = (2 / (256 * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.02)


# --- user errors -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"name": "resnet51"}, "unknown model 'resnet51' (choose from alexnet_bn,"),
    ({"name": "alexnet_bn", "zero_init_residual": True}, "alexnet_bn has no residual blocks"),
    ({"name": "resnet50", "width": 2}, "resnet50 has no option width (its options: none)"),
    ({"name": "alexnet_bn", "droput": 0.1}, "alexnet_bn has no option droput (its options: dropout)"),
    ({"name": "resnet18", "num_classes": 0}, "num_classes must be at least 1"),
])
def test_bad_model_options_raise_one_line_config_errors(kwargs, message):
    with pytest.raises(ConfigError) as error:
        build_on_meta(**kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_options_reach_the_constructor():
    assert build_on_meta("alexnet_bn", dropout=0.25).classifier.drop6.p == 0.25
    assert build_on_meta("fast_resnet", widths=(8, 16, 32)).fc.in_features == 32


# --- memory format and compilation -----------------------------------------------------------

@pytest.mark.parametrize("name, channels, size", [
    ("fast_resnet", 1, 28),
    ("resnet20", 3, 32),
    ("resnet18", 3, 64),
    ("alexnet_bn", 3, 64),
    ("alexnet_bn_caffe", 3, 67),
])
@pytest.mark.parametrize("training", [True, False])
def test_channels_last_forward_equals_contiguous_forward(name, channels, size, training):
    torch.manual_seed(0)
    model = models.build(name, num_classes=10, in_channels=channels).train(training)
    if name.startswith("alexnet"):
        model.classifier.drop6.p = model.classifier.drop7.p = 0.0  # dropout masks differ between calls
    x = torch.randn(4, channels, size, size)
    with torch.no_grad():
        reference = model(x)
        model = model.to(memory_format=torch.channels_last)
        first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        assert first_conv.weight.is_contiguous(memory_format=torch.channels_last)
        output = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(output, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # 10-35 s of compilation each on 2 CPU cores
@pytest.mark.parametrize("name, channels, size", [("fast_resnet", 1, 28), ("resnet20", 3, 32)])
def test_torch_compile_matches_eager_on_cpu(name, channels, size):
    torch.manual_seed(0)
    model = models.build(name, num_classes=10).eval().to(memory_format=torch.channels_last)
    x = torch.randn(8, channels, size, size).to(memory_format=torch.channels_last)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
