"""Test-set evaluation, sharded over processes and summed exactly.

Each rank evaluates a disjoint shard (``data.sampler.shard_indices``); correct counts, loss and
image counts are summed with one all-reduce, so top-1 over 10,000 or 50,000 images counts every
image once whatever the number of processes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from largebatch import distributed
from largebatch.data import Normalizer, SkippedFiles, load_batches
from largebatch.data.sampler import shard_indices
from largebatch.errors import DataError


@torch.no_grad()
def evaluate(model: nn.Module, dataset, context: distributed.DistributedContext, normalizer: Normalizer,
             batch_size: int = 256, workers: int = 0, skipped: SkippedFiles | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Top-1, top-5 (fractions in [0, 1]) and mean cross-entropy of ``model`` on ``dataset``, and
    ``test_images``, the number of images evaluated (all ranks together). Unreadable images are
    left out and added to ``skipped`` (a run's list, warned once per file). The sums stay on the
    device until one read at the end. ``progress(images_done, images_total)`` is called after each
    batch with this rank's counts (host numbers). A test set of which no image could be
    evaluated is a DataError, not a top-1 of 0."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=context.device)  # top1, top5, loss, count
    indices = shard_indices(len(dataset), context.rank, context.world_size)
    done = 0
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
        done += len(labels)
        if progress is not None:
            progress(done, len(indices))
    distributed.all_reduce_sum(totals, context)
    model.train(was_training)
    top1, top5, loss, count = totals.tolist()
    if count == 0:
        raise DataError(f"no test image could be evaluated ({len(dataset)} listed); check the test set's files")
    return {"top1": top1 / count, "top5": top5 / count, "test_loss": loss / count, "test_images": int(count)}


def evaluate_run(run_dir: str, checkpoint_file: str = "", data_dir: str = "", device: str = "auto") -> dict:
    """Evaluate a run directory's newest valid checkpoint (or ``checkpoint_file``) on its test set."""
    from pathlib import Path

    from largebatch import checkpoint, models
    from largebatch.config import load_config
    from largebatch.data import build_datasets
    from largebatch.errors import CheckpointError, ConfigError

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
    checkpoint.load_model_state(model, state["model"], str(path))
    model.to(context.device)
    skipped = SkippedFiles()
    result = evaluate(model, test_set, context, Normalizer(info.mean, info.std, context.device), skipped=skipped)
    return {"checkpoint": str(path), "step": state["step"], **result, "skipped_files": skipped.paths()}
