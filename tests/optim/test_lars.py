"""LARS against values worked out by hand, its two implementations against each other, and the
properties a training loop relies on (no host sync, p.grad untouched, GradScaler, state_dict)."""

import copy
import io
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from largebatch import models
from largebatch.optim import LARS, multi_tensor

FOREACH = pytest.mark.parametrize("foreach", [True, False], ids=["multi_tensor", "reference"])


def one_tensor(w, g, **options):
    """A float64 parameter with its gradient, and a LARS over it."""
    p = torch.nn.Parameter(torch.tensor(w, dtype=torch.float64))
    p.grad = torch.tensor(g, dtype=torch.float64)
    return p, LARS([p], **options)


def close(actual, expected):
    torch.testing.assert_close(actual.detach(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


# w = [3, 4] (norm 5), g = [0.8, -0.6] (norm 1, orthogonal to w), beta 0.1, eta 0.01, lr 3, m 0.9.
# g + beta * w = [1.1, -0.2].  Paper: local_lr = 0.01 * 5 / (1 + 0.1 * 5) = 1/30, so
# v = lr * local_lr * (g + beta * w) = 0.1 * [1.1, -0.2] = [0.11, -0.02] and w = [2.89, 4.02].
BASE = dict(lr=3.0, momentum=0.9, weight_decay=0.1, trust_coefficient=0.01)
W, G, D = [3.0, 4.0], [0.8, -0.6], [1.1, -0.2]
NORM_OF_SUM_RATIO = 0.01 * 5 / math.sqrt(1.1 ** 2 + 0.2 ** 2)  # eta * ||w|| / ||g + beta w||


@FOREACH
@pytest.mark.parametrize("switches, expected_weights, expected_ratio", [
    ({}, [2.89, 4.02], 1 / 30),
    # the denominator ||g + beta*w|| = sqrt(1.25) instead of ||g|| + beta*||w|| = 1.5
    ({"trust_denominator": "norm_of_sum"}, [3 - 3 * NORM_OF_SUM_RATIO * 1.1, 4 + 3 * NORM_OF_SUM_RATIO * 0.2],
     NORM_OF_SUM_RATIO),
    # LR outside the velocity: same first step (v holds [0.11, -0.02] / 3, checked below)
    ({"lr_in_velocity": False}, [2.89, 4.02], 1 / 30),
    # Nesterov: w - (u + m * v) = w - 1.9 * [0.11, -0.02]
    ({"nesterov": True}, [3 - 0.209, 4 + 0.038], 1 / 30),
    ({"momentum": 0.0}, [2.89, 4.02], 1 / 30),
    # eps 0.5: 0.05 / (1 + 0.5 + 0.5) = 0.025, update 3 * 0.025 * [1.1, -0.2]
    ({"eps": 0.5}, [3 - 0.0825, 4 + 0.015], 0.025),
    # LARC at lr 3: rate min(1/30, 3) = 1/30, so the ratio to lr is 1/90
    ({"clip": True}, [3 - 1.1 / 30, 4 + 0.2 / 30], 1 / 90),
    # LARC at lr 0.01: rate min(1/30, 0.01) = 0.01, ratio 1, update 0.01 * [1.1, -0.2]
    ({"clip": True, "lr": 0.01}, [3 - 0.011, 4 + 0.002], 1.0),
    # bounds: 1/30 raised to 0.05 or lowered to 0.02
    ({"trust_ratio_min": 0.05}, [3 - 0.165, 4 + 0.03], 0.05),
    ({"trust_ratio_max": 0.02}, [3 - 0.066, 4 + 0.012], 0.02),
    # no adaptation: plain momentum SGD, update 3 * [1.1, -0.2]
    ({"adapt": False}, [3 - 3.3, 4 + 0.6], None),
])
def test_one_step_by_hand(foreach, switches, expected_weights, expected_ratio):
    p, optimizer = one_tensor(W, G, foreach=foreach, **{**BASE, **switches})
    optimizer.step()
    close(p, expected_weights)
    if expected_ratio is None:
        assert optimizer.trust_ratios() is None
    else:
        close(optimizer.trust_ratios(), [expected_ratio])
    if switches == {"lr_in_velocity": False}:
        close(optimizer.state[p]["momentum_buffer"], [1.1 / 30, -0.2 / 30])
    assert ("momentum_buffer" in optimizer.state[p]) == (switches.get("momentum", 0.9) != 0)


# Two steps with the LR changing between them (2, then 1): where the LR sits now matters.
# w = [3, 4], g1 = [0.6, 0.8], beta 0.1, eta 0.01, m 0.9.
#   step 1: local_lr = 0.05 / 1.5 = 1/30, g + beta*w = [0.9, 1.2]; either way w1 = [2.94, 3.92]
#           (inside: v1 = 2/30 * [0.9, 1.2] = [0.06, 0.08]; outside: v1 = [0.03, 0.04], w -= 2 v1).
#   step 2: g2 = [0.294, 0.392] (norm 0.49), ||w1|| = 4.9: local_lr = 0.049 / (0.49 + 0.49) = 0.05,
#           g2 + beta*w1 = [0.588, 0.784], times 0.05 = [0.0294, 0.0392].
#     inside:  v2 = 0.9 * [0.06, 0.08] + 1 * [0.0294, 0.0392] = [0.0834, 0.1112]; w2 = [2.8566, 3.8088]
#     outside: v2 = 0.9 * [0.03, 0.04] + [0.0294, 0.0392] = [0.0564, 0.0752];  w2 = w1 - 1 * v2 = [2.8836, 3.8448]
@FOREACH
@pytest.mark.parametrize("lr_in_velocity, expected", [(True, [2.8566, 3.8088]), (False, [2.8836, 3.8448])])
def test_two_steps_by_hand_with_changing_lr(foreach, lr_in_velocity, expected):
    p, optimizer = one_tensor([3.0, 4.0], [0.6, 0.8], lr=2.0, momentum=0.9, weight_decay=0.1,
                              trust_coefficient=0.01, lr_in_velocity=lr_in_velocity, foreach=foreach)
    optimizer.step()
    close(p, [2.94, 3.92])
    p.grad = torch.tensor([0.294, 0.392], dtype=torch.float64)
    optimizer.param_groups[0]["lr"] = 1.0
    optimizer.step()
    close(optimizer.trust_ratios(), [0.05])
    close(p, expected)


@FOREACH
@pytest.mark.parametrize("w, g, switches, expected", [
    # a zero-initialised bias: ||w|| = 0 gives local_lr 1, so it moves by lr * g
    ([0.0, 0.0], [0.5, -1.0], {}, [-1.5, 3.0]),
    # a zero gradient: local_lr 1, weight decay alone acts: w - 3 * 0.1 * w
    ([3.0, 4.0], [0.0, 0.0], {}, [2.1, 2.8]),
    # ... with the norm_of_sum denominator ||0 + 0.1 w|| = 0.5: local_lr 0.05 / 0.5 = 0.1
    ([3.0, 4.0], [0.0, 0.0], {"trust_denominator": "norm_of_sum"}, [3 - 0.09, 4 - 0.12]),
    # both zero: nothing moves, nothing is NaN
    ([0.0, 0.0], [0.0, 0.0], {}, [0.0, 0.0]),
    ([0.0, 0.0], [0.0, 0.0], {"trust_denominator": "norm_of_sum", "clip": True}, [0.0, 0.0]),
    # LARC caps the zero-norm 1 at lr 3 to 1/3 (timm); apex's form steps on lr * g uncapped
    ([0.0, 0.0], [0.5, -1.0], {"clip": True}, [-0.5, 1.0]),
    ([0.0, 0.0], [0.5, -1.0], {"clip": True, "zero_norm": "gradient_only"}, [-1.5, 3.0]),
    # bounds apply to the zero-norm 1 only in the default form
    ([0.0, 0.0], [0.5, -1.0], {"trust_ratio_max": 0.5}, [-0.75, 1.5]),
    ([0.0, 0.0], [0.5, -1.0], {"trust_ratio_max": 0.5, "zero_norm": "gradient_only"}, [-1.5, 3.0]),
    # apex: a zero gradient means no step at all, weight decay included
    ([3.0, 4.0], [0.0, 0.0], {"zero_norm": "gradient_only"}, [3.0, 4.0]),
    ([3.0, 4.0], [0.0, 0.0], {"zero_norm": "gradient_only", "momentum": 0.0}, [3.0, 4.0]),
    ([3.0, 4.0], [0.0, 0.0], {"zero_norm": "gradient_only", "nesterov": True}, [3.0, 4.0]),
    # ||g + beta w|| = 0.5 is not zero: the tensor is adapted and decayed as usual
    ([3.0, 4.0], [0.0, 0.0], {"trust_denominator": "norm_of_sum", "zero_norm": "gradient_only"},
     [3 - 0.09, 4 - 0.12]),
])
def test_zero_norms(foreach, w, g, switches, expected):
    p, optimizer = one_tensor(w, g, foreach=foreach, **{**BASE, **switches})
    optimizer.step()
    close(p, expected)
    assert all(torch.isfinite(value).all() for value in optimizer.state[p].values())


@FOREACH
def test_parameters_without_gradient_are_skipped(foreach):
    used = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    unused = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    used.grad = torch.tensor(G, dtype=torch.float64)
    optimizer = LARS([used, unused], foreach=foreach, **BASE)
    optimizer.step()
    close(used, [2.89, 4.02])
    close(unused, [1.0, 2.0])
    assert unused not in optimizer.state
    close(optimizer.trust_ratios(), [1 / 30])


# Every combination of the switches, on several tensors with random gradients: the multi-tensor
# step and the reference loop agree to the last bit, step after step, with a changing LR.
SWITCHES = [combination for combination in itertools.product(
    ["sum_of_norms", "norm_of_sum"], [True, False], [False, True], [False, True], [0.0, 0.9],
    ["rate_one", "gradient_only"])
    if not (combination[2] and combination[4] == 0)]  # Nesterov needs momentum


@pytest.mark.parametrize("chunk_elements", [1 << 20, 40], ids=["one_chunk", "chunks"])
@pytest.mark.parametrize("denominator, lr_in_velocity, nesterov, clip, momentum, zero_norm", SWITCHES)
def test_multi_tensor_equals_reference(monkeypatch, chunk_elements, denominator, lr_in_velocity, nesterov, clip,
                                       momentum, zero_norm):
    monkeypatch.setattr(multi_tensor, "CPU_CHUNK_ELEMENTS", chunk_elements)
    generator = torch.Generator().manual_seed(0)
    shapes = [(8, 4, 3, 3), (8,), (8,), (5, 8), (5,), (3,)]
    initial = [torch.randn(s, generator=generator) for s in shapes]
    initial[2].zero_()  # a zero-initialised bias
    runs = []
    for foreach in (True, False):
        params = [torch.nn.Parameter(w.clone()) for w in initial]
        groups = [{"params": params[:4]}, {"params": params[4:], "adapt": False, "weight_decay": 0.0}]
        optimizer = LARS(groups, lr=1.0, momentum=momentum, weight_decay=1e-3, trust_coefficient=0.02,
                         eps=1e-9, nesterov=nesterov, clip=clip, trust_denominator=denominator,
                         lr_in_velocity=lr_in_velocity, trust_ratio_min=1e-4, trust_ratio_max=10.0,
                         zero_norm=zero_norm, foreach=foreach)
        gradients = torch.Generator().manual_seed(1)
        for step in range(12):
            optimizer.param_groups[0]["lr"] = optimizer.param_groups[1]["lr"] = 0.5 + 0.1 * step
            for index, p in enumerate(params):
                p.grad = None if (index == 3 and step % 3 == 0) else torch.randn(p.shape, generator=gradients)
            if step % 4 == 1:
                params[1].grad.zero_()  # a tensor with a zero gradient
            optimizer.step()
        runs.append((params, optimizer))
    (multi, multi_optimizer), (reference, reference_optimizer) = runs
    for a, b in zip(multi, reference):
        assert torch.equal(a, b)
    assert torch.equal(multi_optimizer.trust_ratios(), reference_optimizer.trust_ratios())
    for a, b in zip(multi, reference):
        for key in multi_optimizer.state[a]:
            assert torch.equal(multi_optimizer.state[a][key], reference_optimizer.state[b][key])


@pytest.mark.parametrize("lr_in_velocity", [True, False])
@pytest.mark.parametrize("nesterov", [False, True])
def test_without_adaptation_equals_torch_sgd(lr_in_velocity, nesterov):
    generator = torch.Generator().manual_seed(0)
    initial = [torch.randn(6, 4, generator=generator), torch.randn(4, generator=generator)]
    ours = [torch.nn.Parameter(w.clone()) for w in initial]
    theirs = [torch.nn.Parameter(w.clone()) for w in initial]
    lars = LARS(ours, lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=nesterov, adapt=False,
                lr_in_velocity=lr_in_velocity)
    sgd = torch.optim.SGD(theirs, lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=nesterov)
    for _ in range(30):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn(a.shape, generator=generator)
            b.grad = a.grad.clone()
        lars.step()
        sgd.step()
    for a, b in zip(ours, theirs):
        assert not torch.equal(a, torch.zeros_like(a))
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@FOREACH
@pytest.mark.parametrize("switches", [{}, {"trust_denominator": "norm_of_sum"}, {"nesterov": True},
                                      {"momentum": 0.0}, {"lr_in_velocity": False, "clip": True}])
def test_gradients_are_not_modified(foreach, switches):
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3, generator=generator)) for _ in range(3)]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)
    before = [p.grad.clone() for p in params]
    optimizer = LARS(params, foreach=foreach, **{**BASE, **switches})
    for _ in range(2):
        optimizer.step()
    for p, grad in zip(params, before):
        assert torch.equal(p.grad, grad)


def raise_host_sync(*args, **kwargs):
    raise AssertionError("the optimizer step read a tensor value on the host")


@FOREACH
@pytest.mark.parametrize("switches", [{}, {"trust_denominator": "norm_of_sum", "nesterov": True},
                                      {"clip": True, "lr_in_velocity": False, "trust_ratio_max": 2.0},
                                      {"momentum": 0.0, "adapt": False}])
def test_step_never_reads_tensor_values_on_the_host(monkeypatch, foreach, switches):
    model = models.build("fast_resnet", 10)
    F.cross_entropy(model(torch.randn(2, 1, 28, 28)), torch.tensor([1, 2])).backward()
    next(model.parameters()).grad = None
    optimizer = LARS(model.parameters(), foreach=foreach, **{**BASE, **switches})
    before = [p.detach().clone() for p in model.parameters()]
    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, raise_host_sync)
    optimizer.step()
    optimizer.step()
    summary = optimizer.trust_ratio_summary()
    monkeypatch.undo()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    if switches.get("adapt", True):
        assert summary.shape == (3,) and torch.isfinite(summary).all()


def scaled_model_step(model, optimizer, scaler, images, labels, poison: bool = False):
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(F.cross_entropy(model(images), labels)).backward()
    if poison:
        next(model.parameters()).grad.view(-1)[0] = float("inf")
    scaler.step(optimizer)
    scaler.update()


@FOREACH
def test_grad_scaler_skips_an_inf_step_bit_for_bit(foreach):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    optimizer = LARS(model.parameters(), foreach=foreach, **BASE)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    images, labels = torch.randn(4, 16), torch.tensor([0, 1, 2, 0])
    scaled_model_step(model, optimizer, scaler, images, labels)
    weights = copy.deepcopy(model.state_dict())
    state = copy.deepcopy(optimizer.state_dict())
    scaled_model_step(model, optimizer, scaler, images, labels, poison=True)
    assert scaler.get_scale() == 2.0 ** 11  # the scaler saw the inf and backed off
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key])
    after = optimizer.state_dict()
    for index, entry in state["state"].items():
        assert torch.equal(after["state"][index]["momentum_buffer"], entry["momentum_buffer"])


def test_grad_scaler_trust_ratios_come_from_unscaled_gradients():
    """A power-of-two loss scale is undone exactly before the step, so the scaled run is the
    unscaled run bit for bit."""
    images, labels = torch.randn(4, 16), torch.tensor([0, 1, 2, 0])
    weights, ratios = [], []
    for scale in (None, 2.0 ** 14):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        optimizer = LARS(model.parameters(), **BASE)
        for _ in range(3):
            if scale is None:
                optimizer.zero_grad()
                F.cross_entropy(model(images), labels).backward()
                optimizer.step()
            else:
                scaled_model_step(model, optimizer, torch.amp.GradScaler("cpu", init_scale=scale), images, labels)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        ratios.append(optimizer.trust_ratios())
    assert torch.equal(weights[0], weights[1])
    assert torch.equal(ratios[0], ratios[1])


def test_bf16_autocast_keeps_weights_and_state_fp32():
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    optimizer = LARS(model.parameters(), **BASE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(torch.randn(4, 16)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    for p in model.parameters():
        assert p.dtype == torch.float32 and optimizer.state[p]["momentum_buffer"].dtype == torch.float32
    assert optimizer.trust_ratios().dtype == torch.float32


@pytest.mark.parametrize("switches", [{}, {"lr_in_velocity": False, "nesterov": True, "clip": True}])
def test_state_dict_round_trip_continues_identically(switches):
    torch.manual_seed(0)
    model = models.build("fast_resnet", 10)
    images, labels = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])

    def train(model, optimizer, steps):
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()

    groups = lambda m: [{"params": [p for p in m.parameters() if p.ndim > 1]},  # noqa: E731
                        {"params": [p for p in m.parameters() if p.ndim <= 1], "adapt": False, "lr_scale": 0.5}]
    optimizer = LARS(groups(model), lr=0.5, weight_decay=5e-4, **switches)
    train(model, optimizer, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # what checkpoint.load accepts
    assert {key for entry in saved["optimizer"]["state"].values() for key in entry} == {"momentum_buffer"}

    resumed_model = models.build("fast_resnet", 10)
    resumed_model.load_state_dict(saved["model"])
    resumed = LARS(groups(resumed_model), lr=9.0, weight_decay=0.0)  # values the state must replace
    resumed.load_state_dict(saved["optimizer"])
    assert resumed.param_groups[1]["lr_scale"] == 0.5 and resumed.param_groups[0]["weight_decay"] == 5e-4
    train(model, optimizer, 3)
    train(resumed_model, resumed, 3)
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)


def test_works_with_torch_lr_schedulers_and_closures():
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    optimizer = LARS([p], **BASE)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)

    def closure():
        optimizer.zero_grad()
        loss = (p * torch.tensor([0.8, -0.6], dtype=torch.float64)).sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    close(loss, 3 * 0.8 - 4 * 0.6)
    close(p, [2.89, 4.02])  # the gradient computed in the closure is [0.8, -0.6]
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 1.5


def test_trust_ratio_summary():
    ws = [[3.0, 4.0], [0.0, 0.0], [3.0, 4.0], [6.0, 8.0]]
    gs = [[0.8, -0.6], [1.0, 1.0], [0.8, -0.6], [0.8, -0.6]]
    params = []
    for w, g in zip(ws, gs):
        params.append(torch.nn.Parameter(torch.tensor(w, dtype=torch.float64)))
        params[-1].grad = torch.tensor(g, dtype=torch.float64)
    optimizer = LARS([{"params": params[:2]}, {"params": params[2:3], "adapt": False}, {"params": params[3:]}],
                     **BASE)
    assert optimizer.trust_ratio_summary() is None
    optimizer.step()
    # adapted: 1/30 ([3, 4]), 1 (zero weights), 0.01 * 10 / (1 + 1) = 0.05 ([6, 8]); the unadapted one is left out
    close(optimizer.trust_ratios(), [1 / 30, 1.0, 0.05])
    close(optimizer.trust_ratio_summary(), [1 / 30, 0.05, 1.0])


@pytest.mark.parametrize("options, message", [
    ({"trust_denominator": "sum"}, "trust_denominator"),
    ({"trust_ratio_min": 2.0, "trust_ratio_max": 1.0}, "trust_ratio_min"),
    ({"nesterov": True, "momentum": 0.0}, "Nesterov"),
    ({"lr": -1.0}, "lr"),
    ({"momentum": 1.5}, "momentum"),
    ({"zero_norm": "skip"}, "zero_norm"),
])
def test_bad_options_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        LARS([torch.nn.Parameter(torch.zeros(2))], **{**BASE, **options})


@pytest.mark.parametrize("clip, nesterov", [(False, False), (True, False), (False, True)])
def test_lr_outside_the_velocity_equals_timm_lars(clip, nesterov):
    """Where timm is installed: our torch-style variant is timm's Lars (eps 1e-8, dampening 0)."""
    timm_optim = pytest.importorskip("timm.optim")
    generator = torch.Generator().manual_seed(0)
    initial = [torch.randn(6, 4, generator=generator, dtype=torch.float64),
               torch.randn(4, generator=generator, dtype=torch.float64)]
    ours = [torch.nn.Parameter(w.clone()) for w in initial]
    theirs = [torch.nn.Parameter(w.clone()) for w in initial]
    lars = LARS(ours, lr=0.5, momentum=0.9, weight_decay=1e-2, eps=1e-8, lr_in_velocity=False, clip=clip,
                nesterov=nesterov)
    timm_lars = timm_optim.Lars(theirs, lr=0.5, momentum=0.9, weight_decay=1e-2, trust_clip=clip, nesterov=nesterov)
    for step in range(20):
        for optimizer in (lars, timm_lars):
            optimizer.param_groups[0]["lr"] = 0.5 / (step + 1)
        for a, b in zip(ours, theirs):
            a.grad = torch.randn(a.shape, generator=generator, dtype=torch.float64)
            b.grad = a.grad.clone()
        lars.step()
        timm_lars.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("foreach", [True, False])
def test_deepcopy_keeps_the_implementation_and_state(foreach):
    p, optimizer = one_tensor(W, G, foreach=foreach, trust_denominator="norm_of_sum", **BASE)
    optimizer.step()
    copied = copy.deepcopy(optimizer)
    assert copied.foreach == foreach
    copied_p = copied.param_groups[0]["params"][0]
    copied_p.grad = torch.tensor(G, dtype=torch.float64)
    p.grad = torch.tensor(G, dtype=torch.float64)
    optimizer.step()
    copied.step()
    assert torch.equal(p, copied_p)


# Independent references for the two LARC forms, in float64, each written from its source:
# apex/parallel/LARC.py (NVIDIA/apex at e13873d, the last commit that has it) wraps torch's SGD;
# timm/optim/lars.py (huggingface/pytorch-image-models at 9d8ccd2).

def apex_larc_step(params, inner_sgd, trust_coefficient, clip, eps):
    """apex LARC.step(): per tensor, only where both norms are non-zero, fold weight decay into the
    gradient and scale it by the (clipped) adaptive rate; then the wrapped SGD steps without weight
    decay. A tensor with a zero norm gets the wrapped SGD's step on its raw gradient."""
    group = inner_sgd.param_groups[0]
    weight_decay, lr = group["weight_decay"], group["lr"]
    group["weight_decay"] = 0.0
    with torch.no_grad():
        for p in params:
            weight_norm, gradient_norm = p.norm(), p.grad.norm()
            if weight_norm != 0 and gradient_norm != 0:
                rate = trust_coefficient * weight_norm / (gradient_norm + weight_norm * weight_decay + eps)
                if clip:
                    rate = min(rate / lr, 1)
                p.grad += weight_decay * p
                p.grad *= rate
    inner_sgd.step()
    group["weight_decay"] = weight_decay


def timm_lars_step(params, state, lr, momentum, weight_decay, trust_coefficient, eps, clip, nesterov):
    """timm Lars.step() with always_adapt: the ratio is 1 where a norm is 0 and is then clipped
    like any other; weight decay is always added; torch-style momentum, dampening 0."""
    with torch.no_grad():
        for p in params:
            weight_norm, gradient_norm = p.norm(), p.grad.norm()
            ratio = trust_coefficient * weight_norm / (gradient_norm + weight_norm * weight_decay + eps)
            ratio = ratio if (weight_norm > 0 and gradient_norm > 0) else torch.tensor(1.0, dtype=p.dtype)
            if clip:
                ratio = torch.clamp(ratio / lr, max=1.0)
            update = (p.grad + weight_decay * p) * ratio
            if p not in state:
                state[p] = update.clone()
            else:
                state[p].mul_(momentum).add_(update)
            update = update + momentum * state[p] if nesterov else state[p]
            p -= lr * update


def larc_problem():
    """Three float64 tensors, one zero-initialised; gradients drawn per step, one of them zero
    every third step; the LR changes every step (warmup-like, then decay-like)."""
    generator = torch.Generator().manual_seed(3)
    initial = [torch.randn(6, 4, generator=generator, dtype=torch.float64),
               torch.zeros(4, dtype=torch.float64),
               torch.randn(5, generator=generator, dtype=torch.float64)]
    gradients = []
    for step in range(15):
        step_gradients = [torch.randn(w.shape, generator=generator, dtype=torch.float64) for w in initial]
        if step % 3 == 2:
            step_gradients[2].zero_()
        gradients.append(step_gradients)
    rates = [1.5 + 0.5 * step if step < 5 else 3.0 / (step - 3) for step in range(15)]  # above and below 1
    return initial, gradients, rates


@FOREACH
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("nesterov", [False, True])
def test_gradient_only_form_equals_apex_larc(foreach, clip, nesterov):
    initial, gradients, rates = larc_problem()
    ours = [torch.nn.Parameter(w.clone()) for w in initial]
    theirs = [torch.nn.Parameter(w.clone()) for w in initial]
    lars = LARS(ours, lr=rates[0], momentum=0.9, weight_decay=1e-2, trust_coefficient=0.02, eps=1e-8, clip=clip,
                nesterov=nesterov, lr_in_velocity=False, zero_norm="gradient_only", foreach=foreach)
    sgd = torch.optim.SGD(theirs, lr=rates[0], momentum=0.9, weight_decay=1e-2, nesterov=nesterov)
    for lr, step_gradients in zip(rates, gradients):
        lars.param_groups[0]["lr"] = sgd.param_groups[0]["lr"] = lr
        for a, b, g in zip(ours, theirs, step_gradients):
            a.grad, b.grad = g.clone(), g.clone()
        lars.step()
        apex_larc_step(theirs, sgd, trust_coefficient=0.02, clip=clip, eps=1e-8)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert not torch.equal(ours[1], initial[1]) and not torch.equal(ours[2], initial[2])


@FOREACH
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("nesterov", [False, True])
def test_rate_one_form_equals_timm_lars(foreach, clip, nesterov):
    initial, gradients, rates = larc_problem()
    ours = [torch.nn.Parameter(w.clone()) for w in initial]
    theirs = [w.clone() for w in initial]
    lars = LARS(ours, lr=rates[0], momentum=0.9, weight_decay=1e-2, trust_coefficient=0.02, eps=1e-8, clip=clip,
                nesterov=nesterov, lr_in_velocity=False, foreach=foreach)
    state = {}
    for lr, step_gradients in zip(rates, gradients):
        lars.param_groups[0]["lr"] = lr
        for a, b, g in zip(ours, theirs, step_gradients):
            a.grad, b.grad = g.clone(), g.clone()
        lars.step()
        timm_lars_step(theirs, state, lr, 0.9, 1e-2, 0.02, 1e-8, clip, nesterov)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.detach(), b, rtol=1e-12, atol=1e-12)


def test_the_two_zero_norm_forms_differ_where_the_papers_say():
    """Same problem, the only difference the zero-norm form: the zero-initialised tensor (capped
    by LARC in one, not the other) and the tensor with zero gradients (decayed in one) differ;
    the ordinary tensor agrees until the others feed back through the loss (here: never)."""
    initial, gradients, rates = larc_problem()
    results = {}
    for form in ("rate_one", "gradient_only"):
        params = [torch.nn.Parameter(w.clone()) for w in initial]
        lars = LARS(params, lr=rates[0], momentum=0.9, weight_decay=1e-2, trust_coefficient=0.02, clip=True,
                    zero_norm=form)
        for lr, step_gradients in zip(rates, gradients):
            lars.param_groups[0]["lr"] = lr
            for p, g in zip(params, step_gradients):
                p.grad = g.clone()
            lars.step()
        results[form] = params
    torch.testing.assert_close(results["rate_one"][0], results["gradient_only"][0], rtol=0, atol=0)
    assert not torch.allclose(results["rate_one"][1], results["gradient_only"][1])
    assert not torch.allclose(results["rate_one"][2], results["gradient_only"][2])
