"""Gradient noise scale: the estimator against closed forms, the monitor's two code paths."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest
import torch
from torch import nn

from largebatch.derive import split_batch
from largebatch.errors import ConfigError
from largebatch.noise_scale import (NoiseScaleMonitor, NoiseScaleSmoother, format_noise_scale, squared_norm,
                                    unbiased_norm_sq, unbiased_trace)

# Linear regression y = x.w* + noise, x ~ N(0, diag(c)), loss 1/2 (x.w - y)^2 per example. At weights w,
# with u = w - w*, the per-example gradient is g = x x^T u - x noise, so
#   G = C u,   Sigma = C u u^T C + (u^T C u) C + sigma^2 C   (Gaussian fourth moments)
#   |G|^2 = |C u|^2,   tr(Sigma) = |C u|^2 + (u^T C u + sigma^2) tr(C).
DIMENSION = 8
VARIANCES = torch.linspace(0.5, 2.0, DIMENSION, dtype=torch.float64)
NOISE_STD = 1.0


def true_values(u: torch.Tensor) -> tuple[float, float]:
    cu = VARIANCES * u
    norm_sq = float(cu @ cu)
    trace = norm_sq + (float(u @ cu) + NOISE_STD ** 2) * float(VARIANCES.sum())
    return norm_sq, trace


def trace_of_square(u: torch.Tensor) -> float:
    """tr(Sigma^2) for the Sigma above."""
    cu = (VARIANCES * u).view(-1, 1)
    sigma = cu @ cu.T + (float(u @ (VARIANCES * u)) + NOISE_STD ** 2) * torch.diag(VARIANCES)
    return float((sigma @ sigma).trace())


def regression_batch(generator: torch.Generator, size: int, w_star: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(size, DIMENSION, generator=generator, dtype=torch.float64) * VARIANCES.sqrt()
    y = x @ w_star + NOISE_STD * torch.randn(size, generator=generator, dtype=torch.float64)
    return x, y


def regression_model(u: torch.Tensor, w_star: torch.Tensor) -> nn.Module:
    model = nn.Linear(DIMENSION, 1, bias=False).to(torch.float64)
    with torch.no_grad():
        model.weight.copy_((w_star + u).view(1, -1))
    return model


def measured_step(model: nn.Module, monitor: NoiseScaleMonitor, micro_batches, per_process_batch: int):
    """What train.forward_backward does, with the monitor's calls: summed loss / per-process batch."""
    for index, (x, y) in enumerate(micro_batches):
        monitor.before_micro_batch(index)
        loss = 0.5 * (model(x).squeeze(1) - y).square().sum()
        (loss / per_process_batch).backward()
        monitor.after_micro_batch(index, len(y))
    sample = monitor.after_backward()
    model.zero_grad(set_to_none=True)
    return sample


def test_estimators_invert_the_expected_norms():
    # E|G_B|^2 = |G|^2 + tr(Sigma) / B exactly: the estimators return the parts.
    norm_sq, trace = 0.7, 35.0
    small = norm_sq + trace / 16
    big = norm_sq + trace / 128
    assert unbiased_norm_sq(small, big, 16, 128) == pytest.approx(norm_sq)
    assert unbiased_trace(small, big, 16, 128) == pytest.approx(trace)
    with pytest.raises(ValueError):
        unbiased_trace(small, big, 128, 16)


def test_squared_norm_is_the_sum_of_squares():
    tensors = [torch.tensor([3.0, 4.0]), torch.tensor([[1.0, 2.0], [2.0, 0.0]])]
    assert float(squared_norm(tensors)) == 25.0 + 9.0


def test_monitor_is_within_ten_percent_of_the_closed_form_noise_scale():
    """One process, 4 micro-batches of 16 (big batch 64), 800 steps at fixed weights (the spread over
    seeds is about 1.5% here)."""
    generator = torch.Generator().manual_seed(0)
    w_star = torch.randn(DIMENSION, generator=generator, dtype=torch.float64)
    u = torch.tensor([0.6, -0.4, 0.3, 0.5, -0.2, 0.4, -0.5, 0.3], dtype=torch.float64)
    norm_sq, trace = true_values(u)
    model = regression_model(u, w_star)
    monitor = NoiseScaleMonitor(model, None, split_batch(64, 1, 16), smoothing=1.0)
    for _ in range(800):
        x, y = regression_batch(generator, 64, w_star)
        measured_step(model, monitor, list(zip(x.split(16), y.split(16))), 64)
    values = monitor.values()
    true_scale = trace / norm_sq
    assert 10 < true_scale < 60  # the regime the test is about: B_small < B_simple ~ B_big
    assert values["grad_noise_scale"] == pytest.approx(true_scale, rel=0.10)
    assert values["grad_trace_sigma"] == pytest.approx(trace, rel=0.05)
    assert values["grad_norm_sq"] == pytest.approx(norm_sq, rel=0.10)
    # the reported standard error is of the right size: above the Gaussian, G = 0 spread of the mean,
    # sqrt(2 tr(Sigma^2) / (B_big (B_big - B_small)) / steps) (these gradients have heavier tails and a
    # signal), and the actual error is within a few of it
    floor = math.sqrt(2 * trace_of_square(u) / (64 * 48) / 800)
    assert floor < values["grad_norm_sq_stderr"] < 10 * floor
    assert abs(values["grad_norm_sq"] - norm_sq) < 4 * values["grad_norm_sq_stderr"]


def test_one_process_small_batch_norm_is_each_micro_batch_gradient():
    """The monitor's small-batch norm equals the mean over micro-batches of |mean gradient|^2,
    computed here directly; unequal micro-batches use the harmonic mean of their sizes."""
    generator = torch.Generator().manual_seed(1)
    w_star = torch.randn(DIMENSION, generator=generator, dtype=torch.float64)
    model = regression_model(torch.full((DIMENSION,), 0.3, dtype=torch.float64), w_star)
    x, y = regression_batch(generator, 62, w_star)
    micro = list(zip(torch.tensor_split(x, 4), torch.tensor_split(y, 4)))  # sizes 16, 16, 15, 15
    monitor = NoiseScaleMonitor(model, None, split_batch(62, 1, 16))
    sample = measured_step(model, monitor, micro, 62)

    def mean_gradient(xs, ys):
        model.zero_grad()
        (0.5 * (model(xs).squeeze(1) - ys).square().mean()).backward()
        return model.weight.grad.clone()

    expected_small = sum(float(mean_gradient(xs, ys).square().sum()) for xs, ys in micro) / 4
    expected_big = float(mean_gradient(x, y).square().sum())
    assert float(sample.small_sq) == pytest.approx(expected_small, rel=1e-10)
    assert float(sample.big_sq) == pytest.approx(expected_big, rel=1e-10)
    assert sample.small_batch == pytest.approx(4 / (2 / 16 + 2 / 15))
    assert sample.big_batch == 62


def test_a_parameter_first_used_in_a_later_micro_batch_counts_whole():
    """Conditional computation: the extra layer gets its first gradient in the second micro-batch."""
    torch.manual_seed(0)
    base, extra = nn.Linear(3, 1).double(), nn.Linear(3, 1).double()
    model = nn.ModuleDict({"base": base, "extra": extra})
    monitor = NoiseScaleMonitor(model, None, split_batch(8, 1, 4))
    x = torch.randn(8, 3, dtype=torch.float64)
    gradients = []
    for index, (part, use_extra) in enumerate(((x[:4], False), (x[4:], True))):
        monitor.before_micro_batch(index)
        out = base(part) + (extra(part) if use_extra else 0)
        (out.square().sum() / 8).backward()
        monitor.after_micro_batch(index, 4)
        gradients.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()])
    sample = monitor.after_backward()
    first = sum(float(g.square().sum()) for g in gradients[0])
    second = sum(float((b - a).square().sum()) for a, b in zip(gradients[0], gradients[1]))
    assert float(sample.small_sq) == pytest.approx((first + second) / 2 * (8 / 4) ** 2, rel=1e-12)


def test_smoother_ema_is_bias_corrected_and_skips_non_finite():
    smoother = NoiseScaleSmoother(decay=0.5)
    smoother.update(torch.tensor(2.0), torch.tensor(10.0))
    assert smoother.values() == {"grad_noise_scale": 5.0, "grad_norm_sq": 2.0, "grad_trace_sigma": 10.0,
                                 "grad_norm_sq_stderr": None}
    smoother.update(torch.tensor(float("nan")), torch.tensor(1.0))  # ignored
    smoother.update(torch.tensor(4.0), torch.tensor(10.0))
    # corrected EMA of (2, 4) with decay 0.5: (0.25 * 2 + 0.5 * 4) / 0.75
    assert smoother.values()["grad_norm_sq"] == pytest.approx((0.25 * 2 + 0.5 * 4) / 0.75)
    state = smoother.state_dict()
    restored = NoiseScaleSmoother(decay=0.5)
    restored.load_state_dict(state)
    assert restored.values() == smoother.values()


def test_reset_starts_a_new_interval():
    smoother = NoiseScaleSmoother(decay=1.0)
    smoother.update(torch.tensor(1000.0), torch.tensor(1000.0))  # an earlier epoch, a thousand times larger
    smoother.reset()
    smoother.update(torch.tensor(1.0), torch.tensor(30.0))
    smoother.update(torch.tensor(3.0), torch.tensor(50.0))
    # standard error of the mean of (1, 3): sample standard deviation sqrt(2) over sqrt(2)
    assert smoother.values() == {"grad_noise_scale": 20.0, "grad_norm_sq": 2.0, "grad_trace_sigma": 40.0,
                                 "grad_norm_sq_stderr": pytest.approx(1.0)}
    restored = NoiseScaleSmoother(decay=1.0)
    restored.load_state_dict(smoother.state_dict())
    restored.update(torch.tensor(5.0), torch.tensor(40.0))  # continues the same mean: (1, 3, 5)
    assert restored.values()["grad_norm_sq"] == 3.0 and restored.values()["grad_norm_sq_stderr"] == pytest.approx(
        2 / 3 ** 0.5)


def test_unresolved_when_smoothed_norm_is_not_positive():
    smoother = NoiseScaleSmoother(decay=1.0)
    assert smoother.values()["grad_noise_scale"] is None  # nothing measured
    assert format_noise_scale(smoother.values()) == "not measured yet"
    smoother.update(torch.tensor(-0.5), torch.tensor(10.0))
    smoother.update(torch.tensor(0.3), torch.tensor(12.0))
    values = smoother.values()
    assert values["grad_norm_sq"] == pytest.approx(-0.1) and values["grad_noise_scale"] is None
    assert format_noise_scale(values).startswith("unresolved")
    smoother.update(torch.tensor(1.2), torch.tensor(14.0))
    assert smoother.values()["grad_noise_scale"] == pytest.approx(12.0 / (1.0 / 3))


def test_every_measures_one_step_in_n():
    generator = torch.Generator().manual_seed(2)
    w_star = torch.randn(DIMENSION, generator=generator, dtype=torch.float64)
    model = regression_model(torch.zeros(DIMENSION, dtype=torch.float64) + 0.2, w_star)
    monitor = NoiseScaleMonitor(model, None, split_batch(32, 1, 16), every=3)
    measured = []
    for _ in range(7):
        x, y = regression_batch(generator, 32, w_star)
        measured.append(measured_step(model, monitor, list(zip(x.split(16), y.split(16))), 32) is not None)
    assert measured == [True, False, False, True, False, False, True]
    assert float(monitor.smoother.count) == 3


def test_configuration_errors_name_the_fix():
    model = nn.Linear(2, 1)
    with pytest.raises(ConfigError, match="--micro-batch-size"):
        NoiseScaleMonitor(model, None, split_batch(128, 1, 128))
    with pytest.raises(ConfigError, match="fp16"):
        NoiseScaleMonitor(model, None, split_batch(128, 1, 32), precision="fp16")
    with pytest.raises(ConfigError, match="noise_scale_every"):
        NoiseScaleMonitor(model, None, split_batch(128, 1, 32), every=0)


# --- one process with 4 accumulation steps against 4 processes (gloo) ------------------------

class SmallNet(nn.Module):
    """Conv-BN-ReLU, pool, linear: BatchNorm makes each micro-batch's gradient depend on its split."""

    def __init__(self, batch_norm: bool):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4) if batch_norm else nn.Identity()
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.norm(self.conv(x))), 2)
        return self.head(x.flatten(1))


def run_steps(rank: int, world_size: int, accumulation: int, batch_norm: bool, steps: int = 6,
              global_batch: int = 64) -> dict:
    """The training step of train.py (DDP no_sync for all but the last micro-batch) with the monitor,
    on the data every configuration shares: the global batch split into rank slices in order, then
    into micro-batches. Weights change by SGD between steps."""
    torch.manual_seed(0)
    model = SmallNet(batch_norm).to(torch.float64)
    ddp_model = model
    if world_size > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model)
    split = split_batch(global_batch, world_size, -(-global_batch // (world_size * accumulation)))
    assert split.accumulation_steps == accumulation
    per_process = split.per_process_batch
    monitor = NoiseScaleMonitor(model, ddp_model, split, smoothing=1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(1)
    samples = []
    for _ in range(steps):
        images = torch.randn(global_batch, 1, 8, 8, generator=generator, dtype=torch.float64)
        labels = torch.randint(0, 3, (global_batch,), generator=generator)
        mine = torch.tensor_split(torch.arange(global_batch), world_size)[rank]
        micro = torch.tensor_split(mine, accumulation)
        for index, indices in enumerate(micro):
            last = index == len(micro) - 1
            context = ddp_model.no_sync() if world_size > 1 and not last else torch.enable_grad()
            with context:
                monitor.before_micro_batch(index)
                loss = nn.functional.cross_entropy(ddp_model(images[indices]), labels[indices], reduction="sum")
                (loss / per_process).backward()
                monitor.after_micro_batch(index, len(indices))
        sample = monitor.after_backward()
        samples.append([float(sample.small_sq), float(sample.big_sq), sample.small_batch, sample.big_batch])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"samples": samples, "values": monitor.values()}


def _worker(rank: int, world_size: int, accumulation: int, batch_norm: bool, port: int, out: str) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = run_steps(rank, world_size, accumulation, batch_norm)
        if rank == 0:
            with open(out, "w") as handle:
                json.dump(result, handle)
    finally:
        dist.destroy_process_group()


def run_processes(tmp_path, world_size: int, accumulation: int, batch_norm: bool) -> dict:
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / f"w{world_size}-a{accumulation}.json"
    mp.spawn(_worker, args=(world_size, accumulation, batch_norm, port, str(out)), nprocs=world_size, join=True)
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="gloo multi-process test")
@pytest.mark.parametrize("processes, accumulation, batch_norm", [(4, 1, True), (4, 2, False)])
def test_four_processes_equal_one_process_with_four_accumulation_steps(tmp_path, processes, accumulation,
                                                                       batch_norm):
    """Small batch 16 either way: one micro-batch of one process, or one process's 16 images (with
    2 accumulated micro-batches of 8, read by the communication hook after accumulation; without
    BatchNorm, whose statistics would differ for micro-batches of 8)."""
    single = run_steps(0, 1, 4, batch_norm)
    multi = run_processes(tmp_path, processes, accumulation, batch_norm)
    for one, many in zip(single["samples"], multi["samples"]):
        assert many[2:] == one[2:] == [16.0, 64.0]
        assert many[0] == pytest.approx(one[0], rel=1e-9) and many[1] == pytest.approx(one[1], rel=1e-9)
    for key, value in single["values"].items():
        assert multi["values"][key] == pytest.approx(value, rel=1e-9), key
    assert math.isfinite(single["values"]["grad_trace_sigma"])


def test_measuring_the_noise_scale_does_not_change_training(tiny_data, tmp_path):
    # The study's lars-b1024 run is trained with --noise-scale and stands for the plain run
    # (docs/study/README.md): the monitor must only read gradients, never change them.
    from largebatch.config import build_config, load_recipe
    from largebatch.progress import epoch_records, read_metrics
    from largebatch.train import train

    def run(name: str, noise_scale: bool) -> list[dict]:
        config = build_config(load_recipe("fashion_mnist"), {
            "data.data_dir": str(tiny_data), "run.out": str(tmp_path / name), "run.epochs": 2,
            "run.batch_size": 128, "run.micro_batch_size": 32, "schedule.warmup_epochs": 0.5,
            "optimizer.lr": 2.0, "run.threads": 1, "run.noise_scale": noise_scale})
        train(config)
        return epoch_records(read_metrics(tmp_path / name / "metrics.jsonl"))

    plain, measured = run("plain", False), run("measured", True)
    assert any(r.get("grad_trace_sigma") is not None for r in measured)
    assert [(r["train_loss"], r["top1"]) for r in plain] == [(r["train_loss"], r["top1"]) for r in measured]
