"""Test-set evaluation, sharded over processes and summed exactly.

Each rank evaluates a disjoint shard (``data.sampler.shard_indices``); correct counts, loss and
image counts are summed with one all-reduce, so top-1 over 10,000 or 50,000 images counts every
image once whatever the number of processes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from largebatch import distributed
from largebatch.data import Normalizer, SkippedFiles, load_batches
from largebatch.data.sampler import shard_indices


@torch.no_grad()
def evaluate(model: nn.Module, dataset, context: distributed.DistributedContext, normalizer: Normalizer,
             batch_size: int = 256, workers: int = 0, skipped: SkippedFiles | None = None) -> dict[str, float]:
    """Top-1, top-5 (fractions in [0, 1]) and mean cross-entropy of ``model`` on ``dataset``;
    unreadable images are left out and added to ``skipped`` (a run's list, warned once per file)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=context.device)  # top1, top5, loss, count
    indices = shard_indices(len(dataset), context.rank, context.world_size)
    for images, labels in load_batches(dataset, indices.split(batch_size), workers, skipped=skipped):
        labels = labels.to(context.device, non_blocking=True)
        logits = model(normalizer(images)).float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top == labels[:, None]
        totals[0] += hits[:, 0].sum()
        totals[1] += hits.any(dim=1).sum()
        totals[2] += F.cross_entropy(logits, labels, reduction="sum")
        totals[3] += len(labels)
    distributed.all_reduce_sum(totals, context)
    model.train(was_training)
    count = max(1.0, totals[3].item())
    return {"top1": totals[0].item() / count, "top5": totals[1].item() / count,
            "test_loss": totals[2].item() / count, "test_images": int(totals[3].item())}


def evaluate_run(run_dir: str, checkpoint_file: str = "", data_dir: str = "", device: str = "auto") -> dict:
    """Evaluate a run directory's newest valid checkpoint (or ``checkpoint_file``) on its test set."""
    from pathlib import Path

    from largebatch import checkpoint, models
    from largebatch.config import load_config
    from largebatch.data import build_datasets
    from largebatch.errors import CheckpointError, ConfigError
    from largebatch.train import load_model_state

    run_path = Path(run_dir)
    if not (run_path / "config.toml").is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no config.toml)")
    config = load_config(str(run_path / "config.toml"))
    if data_dir:
        config.data.data_dir = data_dir
    context = distributed.DistributedContext(device=distributed.choose_device(device, 0))
    if checkpoint_file:
        path, state = Path(checkpoint_file), checkpoint.load(Path(checkpoint_file), context.device)
    else:
        found = checkpoint.load_latest(run_path / "checkpoints", context.device)
        if found is None:
            raise CheckpointError(f"{run_path / 'checkpoints'}: no usable checkpoint")
        path, state = found
    _, test_set, info = build_datasets(config.data, seed=config.run.seed)
    model = models.build(config.model.name, num_classes=info.num_classes, in_channels=info.channels)
    load_model_state(model, state["model"], str(path))
    model.to(context.device)
    skipped = SkippedFiles()
    result = evaluate(model, test_set, context, Normalizer(info.mean, info.std, context.device), skipped=skipped)
    return {"checkpoint": str(path), "step": state["step"], **result, "skipped_files": skipped.paths()}
