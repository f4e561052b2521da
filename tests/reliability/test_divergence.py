"""A non-finite loss never changes the weights (the update is skipped on the device) and stops
the run at the next log boundary, naming the first bad step, its learning rate and the likely
cause; nothing is written over the last good checkpoint. With fp16 loss scaling an overflowing
step is skipped and counted instead.

The fault is injected in the loss (``torch.nn.functional.cross_entropy`` during training, i.e.
with gradients on; evaluation runs without), so it lands on a chosen step; the real divergence of
a too-high learning rate is tests/test_train.py::test_divergence_stops_with_step_and_lr."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
import torch.nn.functional as F

from largebatch import precision as precision_module
from largebatch.config import load_config
from largebatch.optim.guard import GuardedStep
from largebatch.schedule import build_schedule


def poison_loss(monkeypatch, from_call: int, value: float, until_call: int | None = None, on_call=lambda: None):
    """Training forward passes number ``from_call`` (1-based) to ``until_call`` get loss * value."""
    original, calls = F.cross_entropy, {"n": 0}

    def cross_entropy(*args, **kwargs):
        loss = original(*args, **kwargs)
        if not torch.is_grad_enabled():
            return loss  # evaluation
        calls["n"] += 1
        if from_call <= calls["n"] <= (until_call or calls["n"]):
            on_call()
            return loss * value
        return loss
    monkeypatch.setattr(F, "cross_entropy", cross_entropy)
    return calls


def record_guarded_steps(monkeypatch):
    """For each optimizer step: (skipped on the device, weights unchanged by it)."""
    original, calls = GuardedStep.__call__, []

    def step(self, optimizer):
        before = [p.detach().clone() for group in optimizer.param_groups for p in group["params"]]
        found_inf = original(self, optimizer)
        after = [p.detach() for group in optimizer.param_groups for p in group["params"]]
        calls.append((bool(found_inf), all(torch.equal(a, b) for a, b in zip(before, after))))
        return found_inf
    monkeypatch.setattr(GuardedStep, "__call__", step)
    return calls


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_loss_changes_no_weight_and_saves_nothing(tmp_path, train_argv, monkeypatch, helpers, cli, value):
    """Checkpoints (and so log boundaries) every 2 steps; the 6th step (step index 5, in epoch 2)
    is poisoned: skipped on the device, and the boundary after it stops the run."""
    out = tmp_path / "run"
    argv = train_argv(out, "--checkpoint-every-steps", "2", "--keep-checkpoints", "10")
    seen = {}
    poison_loss(monkeypatch, from_call=6, value=value,
                on_call=lambda: seen.setdefault("before", helpers.file_digests(out / "checkpoints")))
    steps = record_guarded_steps(monkeypatch)

    code, _, err = cli(argv)
    line = helpers.assert_one_line_error(code, err, f"loss became {value}", "at step 5", "epoch 1.25",
                                         "learning rate is likely too high", "warmup too short",
                                         "--resume auto")
    assert code == 3  # diverged: the run did not finish
    config = load_config("fashion_mnist", {"optimizer.lr": 2.0, "schedule.warmup_epochs": 0.5,
                                           "run.batch_size": 64})
    lr = build_schedule(config.schedule, 2.0, 2, 256, 64)(5)
    assert f"lr {lr:.4g})" in line
    assert steps == [(False, False)] * 5 + [(True, True)]  # the poisoned step changed no weight; the run stopped
    assert set(seen["before"]) == {f"step-0000000{s}.{ext}" for s in (2, 4) for ext in ("pt", "sha256")}
    assert helpers.file_digests(out / "checkpoints") == seen["before"]
    assert not (out / "summary.json").exists()


def fp16_on_cpu(monkeypatch):
    """fp16 with a GradScaler on CPU, computing in fp32: the scaler's skip logic is what is under
    test, and real fp16 convolutions on CPU are slow (the command line allows fp16 on CUDA only)."""
    monkeypatch.setattr(precision_module, "resolve", lambda name, device: name)
    monkeypatch.setattr(precision_module.Precision, "autocast", lambda self: contextlib.nullcontext())


def test_fp16_overflow_is_skipped_and_counted_not_fatal(tmp_path, train_argv, monkeypatch, cli):
    fp16_on_cpu(monkeypatch)
    poison_loss(monkeypatch, from_call=3, until_call=3, value=float("inf"))
    steps = record_guarded_steps(monkeypatch)
    out = tmp_path / "run"
    code, _, err = cli(train_argv(out, "--precision", "fp16"))
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_steps"] == 1 and summary["steps"] == 8
    assert steps == [(False, False)] * 2 + [(True, True)] + [(False, False)] * 5  # the overflow changed nothing
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records] == [1, 1]
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in records)


def test_fp16_loss_that_stays_non_finite_stops_the_run(tmp_path, train_argv, monkeypatch, cli):
    fp16_on_cpu(monkeypatch)
    poison_loss(monkeypatch, from_call=3, value=float("inf"))  # every step from the third on
    out = tmp_path / "run"
    # 40 steps of 8 images: 38 overflowing steps in a row take the scale from 2**16 to 2**-22
    code, _, err = cli(train_argv(out, "--precision", "fp16", "--batch-size", "8", "--micro-batch-size", "8",
                                  "--train-subset", "64", "--epochs", "5"))
    assert code == 3, err
    assert "loss scale" in err and "step" in err and "Traceback" not in err
    assert not (out / "summary.json").exists()
