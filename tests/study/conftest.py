"""Run directories as training leaves them, written without training: config.toml (from a real
config), metrics.jsonl and summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from largebatch import config as cfg


def write_run(directory: Path, name: str, batch: int = 128, top1_by_epoch=((1, 0.5), (2, 0.7)), *,
              optimizer: str = "lars", lr: float = 1.0, seed: int = 0, augmentation: str = "none",
              diverged: bool = False, summary: dict | None = None, complete: bool = True) -> Path:
    """A finished run directory ``directory/name``; ``summary`` entries replace the written ones."""
    run = Path(directory) / name
    run.mkdir(parents=True, exist_ok=True)  # a run trained again over one stopped before its first checkpoint
    config = cfg.load_config("fashion_mnist", {"optimizer.name": optimizer, "optimizer.lr": lr,
                                               "run.batch_size": batch, "run.seed": seed,
                                               "data.augmentation": augmentation,
                                               "run.epochs": max(1, len(top1_by_epoch)), "run.out": str(run)})
    (run / "config.toml").write_text(cfg.to_toml(config))
    lines = [{"kind": "step", "step": 1, "loss": 2.0}]
    lines += [{"kind": "epoch", "epoch": e, "step": 10 * e, "train_loss": 1.0 / e, "top1": t, "elapsed_s": 3.0 * e}
              for e, t in top1_by_epoch]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if complete:
        last = top1_by_epoch[-1][1] if top1_by_epoch else None
        data = {"global_batch_size": batch, "top1": None if diverged else last, "top5": None if diverged else 1.0,
                "best_top1": last, "epochs": max(1, len(top1_by_epoch)), "steps": 10 * len(top1_by_epoch),
                "wall_time_s": 65.0, "train_time_s": 60.0, "images_per_s": 10.0, "optimizer": optimizer}
        if diverged:
            data["diverged"] = True
        data.update(summary or {})
        (run / "summary.json").write_text(json.dumps(data))
    return run


@pytest.fixture
def make_run():
    return write_run


@pytest.fixture
def cli_main(capsys):
    """``cli_main(argv)`` -> (exit code, stdout, stderr) of ``largebatch`` run in this process."""
    from largebatch.cli import main

    def run(argv: list[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return run
