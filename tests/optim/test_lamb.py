"""LAMB against values worked out by hand from the paper's formula, and the same properties as LARS."""

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F

from largebatch.optim import LAMB, multi_tensor

FOREACH = pytest.mark.parametrize("foreach", [True, False], ids=["multi_tensor", "reference"])
BASE = dict(lr=0.01, betas=(0.9, 0.999), eps=0.2, weight_decay=0.1)


def one_tensor(w, g, **options):
    p = torch.nn.Parameter(torch.tensor(w, dtype=torch.float64))
    p.grad = torch.tensor(g, dtype=torch.float64)
    return p, LAMB([p], **options)


def close(actual, expected):
    torch.testing.assert_close(actual.detach(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


# w = [3, 4], g = [0.6, -0.8], beta1 0.9, beta2 0.999, eps 0.2, weight decay 0.1, lr 0.01.
# Step 1: m = 0.1 g, v = 0.001 g^2, so m_hat = g and sqrt(v_hat) = |g| = [0.6, 0.8];
#   r = [0.6 / 0.8, -0.8 / 1.0] + 0.1 * [3, 4] = [1.05, -0.4];  trust = ||w|| / ||r|| = 5 / sqrt(1.2625).
R1 = [1.05, -0.4]
TRUST1 = 5 / math.sqrt(1.05 ** 2 + 0.4 ** 2)


@FOREACH
@pytest.mark.parametrize("switches, trust", [
    ({}, TRUST1),
    ({"adapt": False}, 1.0),
    ({"trust_ratio_max": 2.0}, 2.0),
    ({"trust_ratio_min": 10.0}, 10.0),
])
def test_one_step_by_hand(foreach, switches, trust):
    p, optimizer = one_tensor([3.0, 4.0], [0.6, -0.8], foreach=foreach, **{**BASE, **switches})
    optimizer.step()
    close(optimizer.state[p]["exp_avg"], [0.06, -0.08])
    close(optimizer.state[p]["exp_avg_sq"], [0.00036, 0.00064])
    close(p, [3 - 0.01 * trust * R1[0], 4 - 0.01 * trust * R1[1]])
    if switches.get("adapt", True):
        close(optimizer.trust_ratios(), [trust])


@FOREACH
def test_two_steps_by_hand(foreach):
    p, optimizer = one_tensor([3.0, 4.0], [0.6, -0.8], foreach=foreach, **BASE)
    optimizer.step()
    w1 = [3 - 0.01 * TRUST1 * R1[0], 4 - 0.01 * TRUST1 * R1[1]]
    p.grad = torch.tensor([0.2, 0.4], dtype=torch.float64)
    optimizer.step()
    # m = 0.9 * [0.06, -0.08] + 0.1 * [0.2, 0.4];  v = 0.999 * [0.00036, 0.00064] + 0.001 * [0.04, 0.16]
    m, v = [0.074, -0.032], [0.00039964, 0.00079936]
    close(optimizer.state[p]["exp_avg"], m)
    close(optimizer.state[p]["exp_avg_sq"], v)
    m_hat = [x / (1 - 0.9 ** 2) for x in m]
    v_hat = [x / (1 - 0.999 ** 2) for x in v]
    r = [mh / (math.sqrt(vh) + 0.2) + 0.1 * w for mh, vh, w in zip(m_hat, v_hat, w1)]
    trust = math.hypot(*w1) / math.hypot(*r)
    close(optimizer.trust_ratios(), [trust])
    close(p, [w - 0.01 * trust * x for w, x in zip(w1, r)])


@FOREACH
def test_zero_weights_and_zero_gradients(foreach):
    # zero weights: trust 1, w = -lr * r with r = g / (|g| + eps) = [0.6 / 0.8, -0.8 / 1.0]
    p, optimizer = one_tensor([0.0, 0.0], [0.6, -0.8], foreach=foreach, **BASE)
    optimizer.step()
    close(p, [-0.01 * 0.75, 0.01 * 0.8])
    # zero gradient and zero weights: r = 0, nothing moves, no NaN
    p, optimizer = one_tensor([0.0, 0.0], [0.0, 0.0], foreach=foreach, **BASE)
    optimizer.step()
    close(p, [0.0, 0.0])
    close(optimizer.trust_ratios(), [1.0])


@pytest.mark.parametrize("chunk_elements", [1 << 20, 40], ids=["one_chunk", "chunks"])
def test_multi_tensor_equals_reference(monkeypatch, chunk_elements):
    monkeypatch.setattr(multi_tensor, "CPU_CHUNK_ELEMENTS", chunk_elements)
    generator = torch.Generator().manual_seed(0)
    shapes = [(8, 4, 3, 3), (8,), (8,), (5, 8), (5,)]
    initial = [torch.randn(s, generator=generator) for s in shapes]
    initial[2].zero_()
    runs = []
    for foreach in (True, False):
        params = [torch.nn.Parameter(w.clone()) for w in initial]
        optimizer = LAMB([{"params": params[:3]}, {"params": params[3:], "adapt": False, "weight_decay": 0.0}],
                         lr=0.01, weight_decay=0.01, trust_ratio_max=5.0, foreach=foreach)
        gradients = torch.Generator().manual_seed(1)
        for step in range(12):
            optimizer.param_groups[0]["lr"] = 0.01 * (1 + step)
            for index, p in enumerate(params):
                p.grad = None if (index == 3 and step % 3 == 0) else torch.randn(p.shape, generator=gradients)
            optimizer.step()
        runs.append((params, optimizer))
    (multi, multi_optimizer), (reference, reference_optimizer) = runs
    for a, b in zip(multi, reference):
        assert torch.equal(a, b)
    assert multi_optimizer.state[multi[3]]["step"] == 8  # it skipped the steps without a gradient
    assert torch.equal(multi_optimizer.trust_ratios(), reference_optimizer.trust_ratios())


def test_gradients_unchanged_and_no_host_sync(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3, generator=generator)) for _ in range(3)]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)
    before = [p.grad.clone() for p in params]
    optimizer = LAMB(params, lr=0.01, weight_decay=0.01, trust_ratio_max=3.0)
    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, lambda *a, **k: (_ for _ in ()).throw(AssertionError("host sync")))
    optimizer.step()
    optimizer.step()
    optimizer.trust_ratio_summary()
    monkeypatch.undo()
    for p, grad in zip(params, before):
        assert torch.equal(p.grad, grad)


def test_grad_scaler_skips_an_inf_step_and_state_dict_round_trips():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    optimizer = LAMB(model.parameters(), lr=0.01, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    images, labels = torch.randn(4, 16), torch.tensor([0, 1, 2, 0])

    def step(model, optimizer, poison=False):
        optimizer.zero_grad()
        scaler.scale(F.cross_entropy(model(images), labels)).backward()
        if poison:
            model[0].weight.grad[0, 0] = float("nan")
        scaler.step(optimizer)
        scaler.update()

    step(model, optimizer)
    weights, state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    step(model, optimizer, poison=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key])
    for index, entry in state["state"].items():
        after = optimizer.state_dict()["state"][index]
        assert after["step"] == entry["step"] == 1
        assert torch.equal(after["exp_avg"], entry["exp_avg"]) and torch.equal(after["exp_avg_sq"], entry["exp_avg_sq"])

    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    resumed_model = copy.deepcopy(model)
    resumed = LAMB(resumed_model.parameters(), lr=1.0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for _ in range(3):
        step(model, optimizer)
        step(resumed_model, resumed)
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("options, message", [
    ({"betas": (0.9, 1.0)}, "betas"), ({"eps": 0.0}, "eps"), ({"trust_ratio_min": 3.0, "trust_ratio_max": 2.0}, "trust_ratio_min"),
])
def test_bad_options_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        LAMB([torch.nn.Parameter(torch.zeros(2))], lr=0.01, **options)
