"""The training loop: synchronous data-parallel SGD with gradient accumulation.

One optimizer step = one global batch of ``run.batch_size`` images, split evenly over the
processes (torchrun) and, within a process, into micro-batches whose gradients are accumulated
(DDP's ``no_sync`` for all but the last). The LR of each step comes from a pure schedule
function; the images of each step from the step number (``data/sampler.py``). So the state of a
run is its step, and a resumed run continues exactly where the checkpoint was taken.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from largebatch import checkpoint, distributed, models
from largebatch.config import Config, config_to_dict, to_toml
from largebatch.augment import BatchAugmenter, batch_loss
from largebatch.data import (ImageFileDataset, Normalizer, SkippedFiles, build_datasets, skipped_files_all_ranks,
                             training_batches)
from largebatch.data.sampler import StreamSampler
from largebatch.data.prefetch import machine_input_settings, prefetch_to_device
from largebatch.errors import CheckpointError, ConfigError, UserError
from largebatch.evaluate import evaluate
from largebatch.noise_scale import NoiseScaleMonitor
from largebatch.optim import build_optimizer, describe_groups, trust_ratio_summary
from largebatch.precision import Precision
from largebatch.progress import MetricsLog, Progress, epoch_records
from largebatch.schedule import build_schedule, scaled_lr


MIN_LOSS_SCALE = 1e-4  # fp16: below this the run is diverging, not overflowing now and then (fairseq's minimum)


class DivergenceError(UserError):
    """The loss became NaN or infinite at ``step`` (learning rate ``lr``)."""

    def __init__(self, message: str, step: int = -1, lr: float = float("nan"), epoch: float = float("nan")):
        super().__init__(message)
        self.step, self.lr, self.epoch = step, lr, epoch


@dataclass(frozen=True)
class BatchPlan:
    """How the global batch is split: ``global_batch = world_size * per_process_batch`` and
    ``per_process_batch`` is covered by ``accumulation_steps`` micro-batches of at most
    ``micro_batch_size`` images."""

    global_batch: int
    world_size: int
    per_process_batch: int
    micro_batch_size: int
    accumulation_steps: int


def plan_batches(global_batch: int, world_size: int, micro_batch_size: int = 0,
                 device_type: str = "cpu") -> BatchPlan:
    if global_batch % world_size:
        raise ConfigError(f"run.batch_size ({global_batch}) must be divisible by the number of "
                          f"processes ({world_size})")
    per_process = global_batch // world_size
    # On CPU the cost per image grows with the micro-batch (caches); 128 is near the optimum for
    # small images on 2 cores. On a GPU, 256 fills the device for ResNet-50.
    micro = micro_batch_size or (256 if device_type == "cuda" else 128)
    micro = min(micro, per_process)
    return BatchPlan(global_batch, world_size, per_process, micro, math.ceil(per_process / micro))


def fit_micro_batch(micro_batch_size: int, try_micro_batch) -> int:
    """The largest of ``micro_batch_size``, its half, quarter ... for which ``try_micro_batch(size)``
    (one forward and backward pass) does not run out of device memory."""
    size = micro_batch_size
    while True:
        try:
            try_micro_batch(size)
            return size
        except torch.OutOfMemoryError:
            if size == 1:
                raise ConfigError("run.micro_batch_size: even one image per micro-batch does not fit in device "
                                  "memory; use a smaller model or --image-size") from None
            size //= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def default_run_dir(config: Config) -> Path:
    return Path("runs") / f"{config.recipe}-b{config.run.batch_size}-{config.optimizer.name}-s{config.run.seed}"


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


class StopRequest:
    """SIGTERM / SIGINT set a flag; the loop checkpoints at the end of the step and exits."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        def handler(signum, frame):
            self.requested = True
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: no signal handling
            pass
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def prepare_run_dir(config: Config, context: distributed.DistributedContext, resume: str) -> Path:
    """The run directory, refusing to start a new run over one that has checkpoints. Its
    config.toml is written once the run has started (or its checkpoint has loaded)."""
    out = Path(config.run.out) if config.run.out else default_run_dir(config)
    if context.is_main:
        existing = checkpoint.list_checkpoints(out / "checkpoints")
        if existing and not resume:
            raise ConfigError(f"--out {out} already holds a run with checkpoints; continue it with "
                              "--resume auto, or choose another --out")
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    distributed.barrier(context)
    return out


def find_resume_state(resume: str, out: Path, device: torch.device) -> tuple[Path, dict[str, Any]] | None:
    """(checkpoint path, state) to resume from: the newest valid one for ``auto`` (None if the run
    has none yet), or the given file."""
    if not resume:
        return None
    if resume == "auto":
        return checkpoint.load_latest(out / "checkpoints", map_location=device)
    return Path(resume), checkpoint.load(Path(resume), map_location=device)


# The settings that define a run's data order and schedule: a resume must not change them.
# (The LR and the number of epochs may change: the divergence message suggests lowering the LR.)
RUN_DEFINING_KEYS = (("model", "name"), ("optimizer", "name"), ("data", "dataset"), ("run", "batch_size"),
                     ("run", "seed"))


def check_resume_config(saved: dict[str, Any], config: Config, source: Path) -> None:
    """Refuse, naming each key, a resume whose run-defining settings differ from the checkpoint's."""
    differences = []
    for section, key in RUN_DEFINING_KEYS:
        before = saved.get(section, {}).get(key)
        now = getattr(getattr(config, section), key)
        if before is not None and before != now:
            differences.append(f"{section}.{key} is {before!r} there and {now!r} here")
    if differences:
        raise CheckpointError(f"checkpoint {source} does not fit this run ({'; '.join(differences)}); resume with "
                              "the run's settings (its config.toml) or start a new run with another --out")


def load_model_state(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load weights, naming the keys that differ when the checkpoint is from another model."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}")
        raise CheckpointError(f"checkpoint {source} does not fit this model ({'; '.join(parts)})")
    model.load_state_dict(state_dict)


def train(config: Config, resume: str = "") -> dict[str, Any]:
    """Run (or resume) training as configured; returns the summary written to summary.json."""
    context = distributed.setup(config.run.device, config.run.backend, config.run.threads)
    if not resume and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        resume = "auto"  # torchrun restarted the group after a failure: continue from the last checkpoint
    try:
        return _train(config, context, resume)
    finally:
        distributed.teardown(context)


def forward_backward(model: torch.nn.Module, micro_batches: list, normalizer: Normalizer, precision: Precision,
                     per_process_batch: int, ddp: bool, augmenter: BatchAugmenter | None = None, step: int = 0,
                     offset: int = 0, monitor: NoiseScaleMonitor | None = None) -> torch.Tensor:
    """Accumulate the gradient of this process's part of the global batch; return the summed loss.

    Each micro-batch's loss is summed over its images and divided by the per-process batch, so the
    accumulated gradient is the mean over this process's images, whatever the micro-batch split;
    DDP then averages over processes (its all-reduce runs on the last micro-batch only).
    ``augmenter`` (batched, on the device) sees each micro-batch with its ``offset`` in the global
    batch of ``step``, so the augmented stream does not depend on the split or on a resume.
    ``monitor`` (gradient noise scale) sees the gradient before and after each micro-batch."""
    device = normalizer.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    for index, (images, labels) in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        images, targets = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if augmenter is not None:
            images, targets = augmenter(images, targets, step, offset)  # pixel units, before normalising
        offset += len(labels)
        with contextlib.nullcontext() if last or not ddp else model.no_sync():
            if monitor is not None:
                monitor.before_micro_batch(index)
            with precision.autocast():
                logits = model(normalizer(images))
            loss = batch_loss(logits.to(precision.parameter_dtype), targets,
                              augmenter.label_smoothing if augmenter is not None else 0.0)
            precision.backward(loss / per_process_batch)
            if monitor is not None:
                monitor.after_micro_batch(index, len(labels))
        loss_sum += loss.detach()
    return loss_sum


def _train(config: Config, context: distributed.DistributedContext, resume: str) -> dict[str, Any]:
    run, device = config.run, context.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: cuDNN times its algorithms once, keeps the fastest
    torch.manual_seed(run.seed)
    random.seed(run.seed)
    out = prepare_run_dir(config, context, resume)

    # Data, model, batch plan, LR schedule, optimizer.
    train_set, test_set, info = build_datasets(config.data, seed=run.seed)
    precision = Precision.build(run.precision, device)
    model = models.build(config.model.name, num_classes=info.num_classes, in_channels=info.channels,
                         zero_init_residual=config.model.zero_init_residual)
    if run.sync_batchnorm:
        model = distributed.use_sync_batchnorm(model, context)
    model = model.to(device=device, dtype=precision.parameter_dtype,
                     memory_format=torch.channels_last if run.channels_last else torch.preserve_format)
    batches = plan_batches(run.batch_size, context.world_size, run.micro_batch_size, device.type)
    if device.type == "cuda" and not run.micro_batch_size:
        # automatic micro-batch on a GPU: the default, halved until a forward/backward pass fits
        def try_micro_batch(size: int) -> None:
            images = torch.zeros(size, info.channels, info.image_size, info.image_size, dtype=torch.uint8)
            forward_backward(model, [(images, torch.zeros(size, dtype=torch.long))], normalizer, precision, size, False)
            model.zero_grad(set_to_none=True)
        normalizer = Normalizer(info.mean, info.std, device, channels_last=run.channels_last,
                                dtype=precision.parameter_dtype)
        buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}  # BN statistics
        fitted = fit_micro_batch(batches.micro_batch_size, try_micro_batch)
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
        if fitted != batches.micro_batch_size:
            batches = plan_batches(run.batch_size, context.world_size, fitted, device.type)
    peak_lr = scaled_lr(config.optimizer.lr, run.batch_size, config.schedule.base_batch_size,
                        config.schedule.scaling)
    schedule = build_schedule(config.schedule, peak_lr, run.epochs, len(train_set), run.batch_size)
    optimizer = build_optimizer(config.optimizer, model, peak_lr)
    sampler = StreamSampler(len(train_set), run.batch_size, run.seed)
    normalizer = Normalizer(info.mean, info.std, device, channels_last=run.channels_last,
                            dtype=precision.parameter_dtype)
    steps_per_epoch = len(train_set) / run.batch_size
    augmenter = BatchAugmenter(config.data.augmentation, info.num_classes, info.image_size, run.seed, run.batch_size,
                               channels=info.channels, in_workers=isinstance(train_set, ImageFileDataset),
                               color_jitter=config.data.color_jitter, lighting=config.data.lighting)

    # Resume: weights, optimizer, scaler, step, RNG and the metrics so far.
    start_step, records, train_time, skipped_steps = 0, [], 0.0, 0
    epoch_loss, epoch_steps, epoch_images, epoch_time = 0.0, 0, 0, 0.0  # since the last epoch's end
    found = find_resume_state(resume, out, device)
    state = found[1] if found else None
    if found is not None:
        source, state = found
        load_model_state(model, state["model"], str(source))
        check_resume_config(state.get("config", {}), config, source)
        try:
            optimizer.load_state_dict(state["optimizer"])
        except ValueError as error:
            raise CheckpointError(f"checkpoint {source}: its optimizer state does not fit this optimizer's parameter "
                                  f"groups ({error}); resume with the optimizer settings of the run (skip_adaptation, "
                                  "skip_weight_decay) or start a new run") from None
        if precision.scaler is not None and state.get("scaler"):
            precision.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_step, records, train_time = state["step"], list(state["metrics"]), state["train_time_s"]
        epoch_loss, epoch_steps, epoch_images, epoch_time = state["epoch_accumulators"]
        skipped_steps = state.get("skipped_steps", 0)
    skipped_before = state.get("skipped_files", []) if state is not None else []  # counted, not warned again
    evaluation_skipped = SkippedFiles(skipped_before)  # unreadable test images, over all evaluations of this run
    ddp_model = distributed.wrap_model(model, context)
    monitor = None
    if run.noise_scale:  # before compile and before the first backward (it registers a DDP communication hook)
        monitor = NoiseScaleMonitor(model, ddp_model, context.world_size, batches.per_process_batch, run.batch_size,
                                    batches.accumulation_steps, smoothing=1.0,
                                    every=run.noise_scale_every, precision=precision.name)
        if state is not None and state.get("noise_scale"):
            monitor.load_state_dict(state["noise_scale"])
    train_model = torch.compile(ddp_model) if run.compile else ddp_model

    log = MetricsLog(out / "metrics.jsonl", enabled=context.is_main)
    log.reset(records)
    if context.is_main:  # only now: a refused resume leaves the run directory as it was
        checkpoint.write_atomic(out / "config.toml", to_toml(config).encode())
    progress = Progress(schedule.total_steps, run.epochs, enabled=context.is_main)
    derived = {"global_batch_size": run.batch_size, "processes": context.world_size,
               "per_process_batch": batches.per_process_batch, "micro_batch_size": batches.micro_batch_size,
               "accumulation_steps": batches.accumulation_steps, "peak_lr": peak_lr,
               "total_steps": schedule.total_steps, "warmup_steps": schedule.warmup_steps,
               "steps_per_epoch": round(steps_per_epoch, 3), "train_images": len(train_set),
               "test_images": len(test_set), "device": str(device), "precision": precision.name,
               "augmentation": augmenter.describe()}
    progress.message(f"largebatch: {config.model.name} on {info.dataset}, {config.optimizer.name}, "
                     + ", ".join(f"{k} {v}" for k, v in derived.items()))
    progress.message(describe_groups(optimizer, config.optimizer.name))
    if start_step:
        progress.message(f"resumed from step {start_step} (epoch {sampler.epoch_at(start_step):.2f})")

    def save(step: int) -> None:
        skipped = skipped_files_all_ranks(training_stream.skipped + evaluation_skipped.entries())  # a collective
        if context.is_main:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "rng": rng_state(), "metrics": records, "train_time_s": train_time,
                     "epoch_accumulators": [epoch_loss, epoch_steps, epoch_images, epoch_time],
                     "skipped_steps": skipped_steps, "skipped_files": skipped, "config": config_to_dict(config),
                     "scaler": precision.scaler.state_dict() if precision.scaler is not None else {},
                     "noise_scale": monitor.state_dict() if monitor is not None else {}}
            checkpoint.save(out / "checkpoints", step, state, keep=run.keep_checkpoints)
        distributed.barrier(context)

    def run_evaluation() -> dict[str, float]:
        distributed.broadcast_buffers(model, context)
        with precision.autocast():
            return evaluate(model, test_set, context, normalizer, 2 * batches.micro_batch_size,
                            workers=config.data.workers, skipped=evaluation_skipped)

    best_top1, target_reached = max((r.get("top1") or 0.0 for r in records), default=0.0), None
    for r in epoch_records(records):
        if target_reached is None and run.target_top1 and (r.get("top1") or 0) >= run.target_top1:
            target_reached = r
    started = time.perf_counter() - (epoch_records(records)[-1]["elapsed_s"] if epoch_records(records) else 0.0)
    step = start_step
    input_settings = machine_input_settings(device.type, workers=config.data.workers,
                                            device_prefetch=config.data.prefetch)
    training_stream = training_batches(train_set, sampler, start_step, schedule.total_steps, context.rank,
                                       context.world_size, batches.accumulation_steps, workers=input_settings.workers,
                                       pin_memory=device.type == "cuda", prefetch_factor=input_settings.loader_prefetch,
                                       skipped=skipped_before)
    data_stream = prefetch_to_device(training_stream, device, input_settings.device_prefetch)
    with StopRequest() as stop:
        while step < schedule.total_steps:
            # 1. the learning rate of this step, 2. forward and backward over the micro-batches
            lr = schedule(step)
            set_lr(optimizer, lr)
            step_start = time.perf_counter()
            loss_sum = forward_backward(train_model, next(data_stream), normalizer, precision,
                                        batches.per_process_batch, context.enabled, augmenter, step,
                                        context.rank * batches.per_process_batch, monitor)
            if monitor is not None:
                monitor.after_backward()  # every rank: a one-number all-reduce with several processes
            # 3. all ranks agree on the loss and on a stop request before the weights change
            flags = torch.stack([loss_sum, torch.tensor(float(stop.requested), device=device, dtype=torch.float64)])
            distributed.all_reduce_sum(flags, context)
            step_loss = flags[0].item() / run.batch_size
            # A finite loss far above a uniform guess is divergence too: SGD at too high an LR can sit at
            # a loss of 1e5 and chance accuracy for the rest of the run without ever reaching NaN.
            exploded = run.divergence_loss > 0 and math.isfinite(step_loss) and step_loss > run.divergence_loss
            if (not math.isfinite(step_loss) and precision.scaler is None) or exploded:
                raise DivergenceError(
                    f"loss became {step_loss:.4g}{f' (above run.divergence_loss {run.divergence_loss:g})' if exploded else ''} "
                    f"at step {step} (epoch {sampler.epoch_at(step):.2f}, lr {lr:.4g}); "
                    "the learning rate is likely too high or the warmup too short: lower --lr or raise "
                    "--warmup-epochs, then resume from the last checkpoint with --resume auto",
                    step=step, lr=lr, epoch=sampler.epoch_at(step))
            # 4. the optimizer step (fp16: skipped when the scaled gradients overflowed), then drop the gradients
            if not precision.step(optimizer):
                skipped_steps += 1
                if precision.scaler.get_scale() < MIN_LOSS_SCALE:
                    raise DivergenceError(
                        f"fp16 loss scale fell below {MIN_LOSS_SCALE:g} at step {step} (lr {lr:.4g}): the loss or "
                        f"gradients overflow at every step ({skipped_steps} steps skipped); lower --lr, raise "
                        "--warmup-epochs or use --precision bf16, then resume with --resume auto",
                        step=step, lr=lr, epoch=sampler.epoch_at(step))
            optimizer.zero_grad(set_to_none=True)
            step += 1
            elapsed = time.perf_counter() - step_start
            train_time += elapsed
            epoch_time += elapsed
            epoch_loss += step_loss if math.isfinite(step_loss) else 0.0
            epoch_steps += 1
            epoch_images += run.batch_size
            epoch_float = sampler.epoch_at(step)
            progress.step(step - 1, epoch_float, step_loss, lr, epoch_images / max(epoch_time, 1e-9))
            if run.log_every and step % run.log_every == 0:
                record = {"kind": "step", "step": step, "epoch": round(epoch_float, 4), "lr": lr, "loss": step_loss}
                trust = trust_ratio_summary(optimizer)  # read every N steps only: it waits for the device
                if trust is not None:
                    record.update(zip(("trust_ratio_min", "trust_ratio_median", "trust_ratio_max"), trust.tolist()))
                records.append(record)
                log.append(record)

            # 5. at an epoch boundary: evaluate, log, checkpoint
            finished = step == schedule.total_steps
            if int(epoch_float + 1e-9) > int(sampler.epoch_at(step - 1) + 1e-9) or finished:
                epoch = run.epochs if finished else int(epoch_float + 1e-9)
                record = {"kind": "epoch", "epoch": epoch, "step": step, "lr": lr,
                          "train_loss": epoch_loss / epoch_steps,
                          "top1": None, "top5": None, "images_per_s": epoch_images / max(epoch_time, 1e-9),
                          "elapsed_s": time.perf_counter() - started, "train_time_s": train_time}
                if precision.scaler is not None:
                    record["skipped_steps"] = skipped_steps
                if monitor is not None:  # this epoch's mean of the |G|^2 and tr(Sigma) estimates, and their ratio
                    record.update(monitor.values())
                    monitor.reset()
                if epoch % run.eval_every == 0 or finished:
                    record.update(run_evaluation())
                    record["elapsed_s"] = time.perf_counter() - started
                    best_top1 = max(best_top1, record["top1"])
                    if target_reached is None and run.target_top1 and record["top1"] >= run.target_top1:
                        target_reached = record
                records.append(record)
                log.append(record)
                progress.epoch(record)
                epoch_loss, epoch_steps, epoch_images, epoch_time = 0.0, 0, 0, 0.0
                if finished or epoch % run.checkpoint_every == 0:
                    save(step)
                if target_reached is not None and run.stop_at_target:
                    progress.message(f"target top-1 {run.target_top1} reached at epoch {epoch}; stopping")
                    break
            elif run.checkpoint_every_steps and step % run.checkpoint_every_steps == 0:
                save(step)
            if flags[1].item() > 0:
                save(step)
                progress.message(f"stopped by signal at step {step}; checkpoint saved. Resume with: "
                                 f"largebatch train --recipe {out / 'config.toml'} --resume auto")
                return {"stopped_at_step": step}

    last = next((r for r in reversed(epoch_records(records)) if r.get("top1") is not None), {})
    skipped_files = len(skipped_files_all_ranks(training_stream.skipped + evaluation_skipped.entries()))
    summary = {
        "top1": last.get("top1"), "top5": last.get("top5"), "best_top1": best_top1,
        "train_time_s": train_time,
        "images_per_s": step * run.batch_size / max(train_time, 1e-9) if step else 0.0,
        "wall_time_s": time.perf_counter() - started,
        "epochs": run.epochs, "steps": step, "model": config.model.name, "dataset": info.dataset,
        "optimizer": config.optimizer.name, "skipped_files": skipped_files, "skipped_steps": skipped_steps,
        "target_top1": run.target_top1 or None,
        "target_epoch": target_reached["epoch"] if target_reached else None,
        "target_elapsed_s": target_reached["elapsed_s"] if target_reached else None,
        **derived,
    }
    if context.is_main:
        checkpoint.write_atomic(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        progress.message(f"done: top1 {summary['top1']:.4f} top5 {summary['top5']:.4f} in "
                         f"{summary['wall_time_s']:.0f} s ({summary['images_per_s']:,.0f} img/s); run directory {out}")
    return summary
