import json
import os
import signal

import pytest
import torch

from largebatch import checkpoint
from largebatch.config import load_config
from largebatch.progress import epoch_records, read_metrics
from largebatch.errors import Interrupted
from largebatch.train import DivergenceError, train

SUMMARY_KEYS = {"top1", "top5", "best_top1", "train_time_s", "images_per_s", "epochs", "global_batch_size"}
RECORD_KEYS = {"epoch", "step", "lr", "train_loss", "top1", "top5", "images_per_s", "elapsed_s"}


def tiny_config(tiny_data, out, augmentation="none", **run):
    overrides = {"data.augmentation": augmentation, "data.data_dir": str(tiny_data), "run.out": str(out), "run.epochs": 2, "run.batch_size": 128,
                 "run.micro_batch_size": 32, "schedule.warmup_epochs": 0.5, "optimizer.lr": 2.0,
                 "run.threads": 1}
    overrides.update({f"run.{k}": v for k, v in run.items()})
    from largebatch.config import build_config, load_recipe
    return build_config(load_recipe("fashion_mnist"), overrides)


def final_weights(out):
    path = checkpoint.list_checkpoints(out / "checkpoints")[-1]
    return checkpoint.load(path)["model"]


def test_run_directory_has_config_metrics_summary_and_checkpoints(tiny_data, tmp_path):
    out = tmp_path / "run"
    summary = train(tiny_config(tiny_data, out))
    assert (out / "config.toml").is_file()
    assert load_config(str(out / "config.toml")).run.batch_size == 128  # the saved config is a recipe
    records = epoch_records(read_metrics(out / "metrics.jsonl"))
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        assert RECORD_KEYS <= set(record)
        assert 0.0 <= record["top1"] <= record["top5"] <= 1.0
    saved = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(saved)
    assert saved["top1"] == records[-1]["top1"] == summary["top1"]
    assert saved["steps"] == 8  # 2 epochs x 512 images / 128
    assert saved["accumulation_steps"] == 4
    assert checkpoint.list_checkpoints(out / "checkpoints")
    # the tiny task is learnable: loss falls and top-1 is above chance (0.1) after 8 steps
    assert records[1]["train_loss"] < 0.8 * records[0]["train_loss"]
    assert records[-1]["top1"] > 0.2


def test_existing_run_is_not_overwritten_without_resume(tiny_data, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny_data, out, epochs=1))
    from largebatch.errors import ConfigError
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_config(tiny_data, out, epochs=1))


@pytest.mark.parametrize("augmentation", ["none", "strong"])
def test_sigterm_saves_and_resume_matches_uninterrupted_run(tiny_data, tmp_path, monkeypatch, augmentation):
    reference = tmp_path / "reference"
    train(tiny_config(tiny_data, reference, augmentation, epochs=3))

    interrupted = tmp_path / "interrupted"
    from largebatch.optim.lars import LARS
    original_step, calls = LARS.step, {"n": 0}

    def step_then_signal(self, closure=None):
        calls["n"] += 1
        if calls["n"] == 6:  # mid-epoch 2 (4 steps per epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return original_step(self, closure)

    monkeypatch.setattr(LARS, "step", step_then_signal)
    with pytest.raises(Interrupted, match="at step 7") as stopped:
        # all ranks agree on the request at the next log boundary (every 7 steps here): step 7
        train(tiny_config(tiny_data, interrupted, augmentation, epochs=3, log_every=7))
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert checkpoint.load(checkpoint.list_checkpoints(interrupted / "checkpoints")[-1])["step"] == 7
    assert not (interrupted / "summary.json").exists()  # nothing says the run finished
    monkeypatch.setattr(LARS, "step", original_step)
    train(tiny_config(tiny_data, interrupted, augmentation, epochs=3), resume="auto")

    for key, value in final_weights(reference).items():
        assert torch.equal(value, final_weights(interrupted)[key]), key
    records = epoch_records(read_metrics(interrupted / "metrics.jsonl"))
    assert [r["epoch"] for r in records] == [1, 2, 3]
    reference_records = epoch_records(read_metrics(reference / "metrics.jsonl"))
    assert [r["top1"] for r in records] == [r["top1"] for r in reference_records]
    assert [r["train_loss"] for r in records] == pytest.approx([r["train_loss"] for r in reference_records])


def test_divergence_stops_with_step_and_lr(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path / "run", epochs=1)
    config.optimizer.name = "sgd"
    config.optimizer.lr = 1e30
    with pytest.raises(DivergenceError, match=r"at step \d+ .*lr .*too high"):
        train(config)


def test_a_finite_loss_above_the_divergence_threshold_stops_the_run(tiny_data, tmp_path):
    # ln(10) = 2.3 at the first step, far above a threshold of 0.01: stopped there, named as such.
    config = tiny_config(tiny_data, tmp_path / "run", epochs=1, divergence_loss=0.01)
    with pytest.raises(DivergenceError, match=r"above run.divergence_loss 0.01\) at step 0 ") as caught:
        train(config)
    assert caught.value.step == 0
    # 0 switches the threshold off: the same run trains to the end.
    config = tiny_config(tiny_data, tmp_path / "run2", epochs=1, divergence_loss=0.0)
    assert 0.0 <= train(config)["top1"] <= 1.0


def test_fit_micro_batch_halves_until_it_fits():
    from largebatch.train import fit_micro_batch
    tried = []

    def try_size(size):
        tried.append(size)
        if size > 48:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    assert fit_micro_batch(256, try_size) == 32
    assert tried == [256, 128, 64, 32]

    def never(size):
        raise torch.OutOfMemoryError("simulated")
    from largebatch.errors import ConfigError
    with pytest.raises(ConfigError, match="micro_batch_size"):
        fit_micro_batch(4, never)


def test_step_records_log_trust_ratios_every_n_steps(tiny_data, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny_data, out, epochs=1, log_every=2))
    records = read_metrics(out / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [2, 4]
    for r in steps:
        assert 0 < r["trust_ratio_min"] <= r["trust_ratio_median"] <= r["trust_ratio_max"]
    assert [r["epoch"] for r in epoch_records(records)] == [1]


def test_noise_scale_is_logged_per_epoch(tiny_data, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny_data, out, epochs=2, noise_scale=True))
    records = epoch_records(read_metrics(out / "metrics.jsonl"))
    for record in records:
        assert {"grad_noise_scale", "grad_norm_sq", "grad_trace_sigma"} <= set(record)
        assert record["grad_trace_sigma"] > 0
        if record["grad_norm_sq"] > 0:  # resolved: B_simple = tr(Sigma) / |G|^2
            assert record["grad_noise_scale"] == pytest.approx(record["grad_trace_sigma"] / record["grad_norm_sq"])
        else:
            assert record["grad_noise_scale"] is None
