"""The training step never reads the device: host reads grow with log boundaries, not steps."""

import torch

from largebatch.config import build_config, load_recipe
from largebatch.train import train

HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")


def count_host_reads(monkeypatch) -> dict[str, int]:
    counts = dict.fromkeys(HOST_READS, 0)
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


def reads_for(steps: int, tiny_data, tmp_path, monkeypatch) -> int:
    """Host reads of a one-epoch run of ``steps`` steps of 8 images, logging every 10 steps."""
    config = build_config(load_recipe("fashion_mnist"), {
        "data.data_dir": str(tiny_data), "data.train_subset": 8 * steps, "run.out": str(tmp_path / f"run{steps}"),
        "run.epochs": 1, "run.batch_size": 8, "run.micro_batch_size": 8, "run.log_every": 10, "run.threads": 1,
        "schedule.warmup_epochs": 0.2})
    with monkeypatch.context() as patch:
        counts = count_host_reads(patch)
        summary = train(config)
    assert summary["steps"] == steps
    return sum(counts.values())


def test_host_reads_grow_by_one_per_log_boundary_not_per_step(tiny_data, tmp_path, monkeypatch):
    twenty = reads_for(20, tiny_data, tmp_path, monkeypatch)
    forty = reads_for(40, tiny_data, tmp_path, monkeypatch)
    # 20 more steps add two log boundaries (steps 30 and 40 instead of step 20 ending the epoch once)
    print(f"host reads: {twenty} for 20 steps, {forty} for 40 steps")
    assert forty - twenty <= 2, (twenty, forty)


def test_the_count_sees_a_read_per_step_when_there_is_one(tiny_data, tmp_path, monkeypatch):
    """The counter itself works: a step that reads its loss is counted once per step."""
    from largebatch import train as train_module
    original = train_module.train_step

    def reading_step(*args, **kwargs):
        loss, skipped = original(*args, **kwargs)
        loss.item()
        return loss, skipped
    monkeypatch.setattr(train_module, "train_step", reading_step)
    twenty = reads_for(20, tiny_data, tmp_path, monkeypatch)
    forty = reads_for(40, tiny_data, tmp_path, monkeypatch)
    assert forty - twenty >= 20
