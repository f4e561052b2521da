"""The multi-tensor steps against the per-tensor reference loops over 100 steps of real training:
a small ResNet on random 1x28x28 images, LR warmed up then decayed (poly 2)."""

import pytest
import torch
import torch.nn.functional as F

from largebatch import models
from largebatch.optim import LAMB, LARS
from largebatch.schedule import Schedule


def train_small_resnet(foreach: bool, steps: int, optimizer_class=LARS, peak_lr: float = 2.0, **options):
    """``steps`` steps of fast_resnet on one fixed random batch, warmup then poly decay."""
    torch.manual_seed(0)
    model = models.build("fast_resnet", 10)
    images, labels = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    optimizer = optimizer_class(model.parameters(), lr=peak_lr, foreach=foreach, **options)
    schedule = Schedule(peak_lr=peak_lr, total_steps=steps, warmup_steps=steps // 10, decay="poly", power=2.0)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = schedule(step)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def assert_relatively_close(a: torch.Tensor, b: torch.Tensor, tolerance: float = 1e-6) -> None:
    assert torch.isfinite(a).all()
    relative = (a - b).norm() / b.norm()
    assert relative <= tolerance, f"relative difference {relative:.3g}"
    torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance * b.abs().max().item())


def test_lars_multi_tensor_equals_reference_after_100_steps_on_a_resnet():
    start = torch.cat([p.detach().flatten() for p in models.build("fast_resnet", 10).parameters()])
    multi = train_small_resnet(True, 100, weight_decay=5e-4)
    reference = train_small_resnet(False, 100, weight_decay=5e-4)
    assert (multi - start).norm() > 1e-2 * start.norm()  # it trained: the comparison is not vacuous
    assert_relatively_close(multi, reference)


@pytest.mark.slow
def test_lars_multi_tensor_equals_reference_after_100_steps_on_a_resnet_with_every_switch():
    options = dict(weight_decay=5e-4, eps=1e-8, nesterov=True, clip=True, trust_denominator="norm_of_sum",
                   lr_in_velocity=False, trust_ratio_min=1e-5, trust_ratio_max=0.5)
    assert_relatively_close(train_small_resnet(True, 100, **options), train_small_resnet(False, 100, **options))



@pytest.mark.slow
def test_lamb_multi_tensor_equals_reference_after_100_steps_on_a_resnet():
    options = dict(peak_lr=0.01, optimizer_class=LAMB, weight_decay=0.01)
    assert_relatively_close(train_small_resnet(True, 100, **options), train_small_resnet(False, 100, **options))
