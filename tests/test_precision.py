"""Numeric precision of the training step: bf16 autocast trains, keeps the master state in fp32;
fp64 stays fp64; fp16 is refused on CPU; ``auto`` picks per device."""

from __future__ import annotations

import math

import pytest
import torch

from largebatch import models
from largebatch.config import OptimizerConfig
from largebatch.data import Normalizer
from largebatch.errors import ConfigError
from largebatch.optim import build_optimizer
from largebatch.precision import Precision, resolve
from largebatch.train import forward_backward

CPU = torch.device("cpu")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def setup(precision_name: str, device: torch.device = CPU, optimizer: str = "lars", lr: float = 0.05,
          count: int = 32):
    """fast_resnet, its optimizer, a normaliser and one fixed batch of two micro-batches."""
    precision = Precision.build(precision_name, device)
    torch.manual_seed(0)
    model = models.build("fast_resnet", num_classes=10, in_channels=1)
    model = model.to(device=device, dtype=precision.parameter_dtype, memory_format=torch.channels_last).train()
    optimizer = build_optimizer(OptimizerConfig(name=optimizer, lr=lr), model, lr)
    normalizer = Normalizer((0.286,), (0.353,), device, channels_last=True, dtype=precision.parameter_dtype)
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (count, 1, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    half = count // 2
    micro_batches = [(images[:half].to(device), labels[:half].to(device)),
                     (images[half:].to(device), labels[half:].to(device))]
    return precision, model, optimizer, normalizer, micro_batches


def train_steps(precision, model, optimizer, normalizer, micro_batches, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        count = sum(len(labels) for _, labels in micro_batches)
        loss = forward_backward(model, micro_batches, normalizer, precision, per_process_batch=count, ddp=False)
        losses.append(loss.item() / count)
        precision.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
    return losses


def test_bf16_autocast_trains_without_nan():
    precision, model, optimizer, normalizer, micro_batches = setup("bf16", optimizer="sgd", lr=0.005, count=16)
    losses = train_steps(precision, model, optimizer, normalizer, micro_batches, steps=4)
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 0.6 * losses[0]  # it fits the fixed batch (fp32: 3.33 -> 1.29 in these 4 steps)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bf16_autocast_is_active_in_the_forward_pass():
    precision, model, _, normalizer, micro_batches = setup("bf16")
    with precision.autocast():
        logits = model(normalizer(micro_batches[0][0]))
    assert logits.dtype == torch.bfloat16


def test_bf16_weights_gradients_and_optimizer_state_stay_fp32():
    precision, model, optimizer, normalizer, micro_batches = setup("bf16")
    loss = forward_backward(model, micro_batches, normalizer, precision, per_process_batch=32, ddp=False)
    assert loss.dtype == torch.float64  # summed in fp64 by forward_backward
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    precision.step(optimizer)
    buffers = [state["momentum_buffer"] for state in optimizer.state.values()]
    assert len(buffers) == len(list(model.parameters()))
    assert all(buffer.dtype == torch.float32 for buffer in buffers)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    bn_stats = [b for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var"))]
    assert bn_stats and all(b.dtype == torch.float32 for b in bn_stats)


def test_bf16_loss_is_close_to_fp32_loss():
    """Autocast changes the rounding of the forward pass, not what it computes."""
    losses = {}
    for name in ("fp32", "bf16"):
        precision, model, _, normalizer, micro_batches = setup(name)
        losses[name] = forward_backward(model, micro_batches, normalizer, precision, 32, ddp=False).item() / 32
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)


def test_fp64_parameters_inputs_gradients_and_state_stay_fp64():
    precision, model, optimizer, normalizer, micro_batches = setup("fp64")
    assert precision.parameter_dtype == torch.float64
    assert normalizer(micro_batches[0][0]).dtype == torch.float64
    with precision.autocast():
        assert model(normalizer(micro_batches[0][0])).dtype == torch.float64
    losses = train_steps(precision, model, optimizer, normalizer, micro_batches, steps=2)
    assert all(math.isfinite(loss) for loss in losses)
    forward_backward(model, micro_batches, normalizer, precision, 32, ddp=False)
    assert all(p.dtype == torch.float64 and p.grad.dtype == torch.float64 for p in model.parameters())
    assert all(state["momentum_buffer"].dtype == torch.float64 for state in optimizer.state.values())
    assert all(b.dtype == torch.float64 for b in model.buffers() if b.is_floating_point())


def test_fp16_is_refused_on_cpu_with_one_line():
    with pytest.raises(ConfigError) as error:
        Precision.build("fp16", CPU)
    message = str(error.value)
    assert "\n" not in message and "run.precision" in message and "bf16" in message


@pytest.mark.parametrize("name, expected", [("auto", "fp32"), ("fp32", "fp32"), ("bf16", "bf16"), ("fp64", "fp64")])
def test_resolve_on_cpu(name, expected):
    assert resolve(name, CPU) == expected
    assert Precision.build(name, CPU).scaler is None


def test_step_without_scaler_always_steps():
    precision, model, optimizer, normalizer, micro_batches = setup("fp32")
    before = [p.detach().clone() for p in model.parameters()]
    forward_backward(model, micro_batches, normalizer, precision, 32, ddp=False)
    assert precision.step(optimizer) is True
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


@CUDA
def test_auto_is_bf16_on_a_cuda_device_that_supports_it():
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    assert resolve("auto", torch.device("cuda")) == expected


@CUDA
def test_fp16_scaler_skips_a_step_with_infinite_gradients_and_leaves_weights_alone():
    device = torch.device("cuda")
    precision, model, optimizer, normalizer, micro_batches = setup("fp16", device)
    assert precision.scaler is not None
    forward_backward(model, micro_batches, normalizer, precision, 32, ddp=False)
    next(model.parameters()).grad.fill_(float("inf"))
    before = [p.detach().clone() for p in model.parameters()]
    assert precision.step(optimizer) is False
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    optimizer.zero_grad(set_to_none=True)
    losses = train_steps(precision, model, optimizer, normalizer, micro_batches, steps=3)
    assert all(math.isfinite(loss) for loss in losses)


@CUDA
def test_bf16_on_cuda_trains_with_fp32_master_state():
    device = torch.device("cuda")
    precision, model, optimizer, normalizer, micro_batches = setup("bf16", device, optimizer="sgd", lr=0.005)
    losses = train_steps(precision, model, optimizer, normalizer, micro_batches, steps=4)
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())
