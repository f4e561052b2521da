"""The training loop: synchronous data-parallel SGD with gradient accumulation.

One optimizer step = one global batch of ``run.batch_size`` images, split evenly over the
processes (torchrun) and, within a process, into micro-batches whose gradients are accumulated
(DDP's ``no_sync`` for all but the last). How the batch is split and what LR each step gets come
from :func:`largebatch.derive.derive`; the images of each step from the step number
(``data/sampler.py``). So the state of a run is its step, and a resumed run continues exactly.

The host never waits for the device inside a step: the loss stays on the device, and a step
with a non-finite gradient is skipped there (:class:`largebatch.optim.guard.GuardedStep`). Every
``run.log_every`` steps, at every epoch's end and at checkpoint steps, a *log boundary* makes one
all-reduce and one host read: it logs the mean loss, stops a diverged run (naming its first bad
step), and stops all ranks together on SIGTERM/SIGINT after saving a checkpoint.

Reading order: :func:`train` (directory, lock, process group) -> :func:`build_run` (data, model,
plan, optimizer) -> :func:`train_loop`, which calls :func:`train_step` each step,
:func:`close_window` at log boundaries and :func:`end_of_epoch` at epoch ends.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from largebatch import checkpoint, distributed, models, rundir
from largebatch.augment import BatchAugmenter, batch_loss
from largebatch.config import Config, config_to_dict, to_toml
from largebatch.data import (DataInfo, ImageFileDataset, Normalizer, SkippedFiles, build_datasets,
                             skipped_files_all_ranks, training_batches)
from largebatch.data.prefetch import machine_input_settings, prefetch_to_device
from largebatch.data.sampler import StreamSampler
from largebatch.derive import RunPlan, derive, with_micro_batch
from largebatch.errors import CheckpointError, ConfigError, Interrupted, UserError
from largebatch.evaluate import evaluate
from largebatch.noise_scale import NoiseScaleMonitor
from largebatch.optim import build_optimizer, describe_groups, trust_ratio_summary
from largebatch.optim.guard import GuardedStep
from largebatch.precision import Precision
from largebatch.progress import MetricsLog, Progress, TensorBoardLog, epoch_records
from largebatch.provenance import provenance
from largebatch.state import TrainState

MIN_LOSS_SCALE = 1e-4  # fp16: below this the run is diverging, not overflowing now and then (fairseq's minimum)


class DivergenceError(UserError):
    """The loss became non-finite, or exceeded ``run.divergence_loss``, at ``step`` (LR ``lr``).
    The command line exits with status 3: the run did not finish."""

    exit_code = 3

    def __init__(self, message: str, step: int = -1, lr: float = float("nan"), epoch: float = float("nan")):
        super().__init__(message)
        self.step, self.lr, self.epoch = step, lr, epoch


class PeerFailure(UserError):
    """Another process of the job, or a data loader process, died; the checkpoints are intact."""


# ---------------------------------------------------------------------------------------------
# Entry point

def train(config: Config, resume: str = "", *, extend_schedule: bool = False, model: nn.Module | None = None,
          train_set=None, test_set=None) -> dict[str, Any]:
    """Run (or resume) training as configured; returns the summary written to summary.json.

    ``resume`` is ``""`` (a new run), ``"auto"`` (the newest valid checkpoint of the run directory;
    a fresh start if it has none) or a checkpoint file. ``extend_schedule`` lets a resume change
    the schedule (epochs, warmup, decay). ``model``, ``train_set`` and ``test_set`` replace the
    built-in ones (see :func:`largebatch.fit`). Raises :class:`DivergenceError` when the run
    diverges and :class:`largebatch.errors.Interrupted` when a signal stopped it (after saving)."""
    out = run_directory(config)
    if not resume and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        resume = "auto"  # torchrun restarted the group after a failure: continue from the last checkpoint
    # Every process checks on its own, before any collective call: a refusal is one line per process.
    rundir.check_start(out, resume, bool(checkpoint.list_checkpoints(out / "checkpoints")))
    is_main = int(os.environ.get("RANK", "0")) == 0
    with rundir.RunLock(out, " ".join(sys.argv)) if is_main else contextlib.nullcontext(), StopRequest() as stop:
        context = distributed.setup(config.run.device, config.run.backend, config.run.threads)
        try:
            return _train(config, context, out, resume, extend_schedule, model, train_set, test_set, stop)
        except RuntimeError as error:
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
            if context.enabled and distributed.is_peer_failure(error):
                raise PeerFailure(f"another process of this job failed ({first_line}); the checkpoints in "
                                  f"{out / 'checkpoints'} are intact: start the job again with --resume auto") from None
            if "DataLoader worker" in str(error):  # killed (out of memory?) or crashed while decoding
                raise PeerFailure(f"a data loader process died ({first_line}); the checkpoints in {out / 'checkpoints'} "
                                  "are intact: check memory (fewer --workers) and resume with --resume auto") from None
            raise
        finally:
            distributed.teardown(context)


def run_directory(config: Config) -> Path:
    run = config.run
    if run.out:
        return Path(run.out)
    return Path("runs") / rundir.default_name(config.data.dataset, config.model.name, run.batch_size,
                                             config.optimizer.name, run.seed)


def _train(config: Config, context: distributed.DistributedContext, out: Path, resume: str, extend_schedule: bool,
           model: nn.Module | None, train_set, test_set, stop: StopRequest) -> dict[str, Any]:
    torch.manual_seed(config.run.seed)
    random.seed(config.run.seed)
    run = build_run(config, context, out, model, train_set, test_set)
    state, changes = restore(run, resume, extend_schedule)
    if state.step >= run.plan.total_steps and (out / "summary.json").is_file():
        run.progress.message(f"{out} is already complete (step {state.step} of {run.plan.total_steps}); "
                             "nothing to do")
        return json.loads((out / "summary.json").read_text(encoding="utf-8"))
    start_run_files(run, state, changes)
    try:
        train_loop(run, state, stop)
        return finish(run, state)
    finally:
        run.tensorboard.close()


# ---------------------------------------------------------------------------------------------
# Building a run: everything a step needs, once

@dataclass
class Run:
    config: Config
    context: distributed.DistributedContext
    out: Path
    plan: RunPlan
    info: DataInfo
    train_set: Any
    test_set: Any
    model: nn.Module  # unwrapped: checkpoints and evaluation
    train_model: nn.Module  # DDP and torch.compile applied
    optimizer: torch.optim.Optimizer
    guarded_step: GuardedStep
    precision: Precision
    normalizer: Normalizer
    augmenter: BatchAugmenter
    sampler: StreamSampler
    monitor: NoiseScaleMonitor | None
    log: MetricsLog
    progress: Progress
    tensorboard: TensorBoardLog
    provenance: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0  # time.perf_counter() of the run's start, earlier sessions included
    training_stream: Any = None  # its .skipped: the unreadable training images this rank met
    evaluation_skipped: SkippedFiles = field(default_factory=SkippedFiles)  # over all evaluations of the run


def build_run(config: Config, context: distributed.DistributedContext, out: Path, model: nn.Module | None = None,
              train_set=None, test_set=None) -> Run:
    """Data, model, plan, optimizer and the rest, for ``config`` on this process."""
    run, device = config.run, context.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: cuDNN times its algorithms once, keeps the fastest
    if train_set is None:
        if config.data.dataset == "custom":
            raise ConfigError("data.dataset custom is given in Python: largebatch.fit(model, train_set, test_set)")
        train_set, test_set, info = build_datasets(config.data, seed=run.seed)
    else:
        info = train_set.info(config.data.num_classes, test_set, model)
    resolve_data(config, info)
    precision = Precision.build(run.precision, device)
    if model is None:
        model = models.build(config.model.name, num_classes=info.num_classes, in_channels=info.channels,
                             zero_init_residual=config.model.zero_init_residual)
    check_model_input(model, config.model.name, info)
    if run.sync_batchnorm:
        model = distributed.use_sync_batchnorm(model, context)
    model = model.to(device=device, dtype=precision.parameter_dtype,
                     memory_format=torch.channels_last if run.channels_last else torch.preserve_format)
    normalizer = Normalizer(info.mean, info.std, device, channels_last=run.channels_last,
                            dtype=precision.parameter_dtype)
    plan = derive(config, context.world_size, len(train_set), len(test_set), device.type)
    if device.type == "cuda" and not run.micro_batch_size:
        plan = with_micro_batch(plan, largest_micro_batch(plan.micro_batch_size, model, info, normalizer, precision))
    optimizer = build_optimizer(config.optimizer, model, plan.peak_lr)
    augmenter = BatchAugmenter(config.data.augmentation, info.num_classes, info.image_size, run.seed,
                               plan.global_batch_size, channels=info.channels,
                               in_workers=isinstance(train_set, ImageFileDataset),
                               color_jitter=config.data.color_jitter, lighting=config.data.lighting,
                               label_smoothing=config.data.label_smoothing)
    return Run(config=config, context=context, out=out, plan=plan, info=info, train_set=train_set,
               test_set=test_set, model=model, train_model=model, optimizer=optimizer,
               guarded_step=GuardedStep(precision.scaler), precision=precision, normalizer=normalizer,
               augmenter=augmenter, sampler=StreamSampler(plan.train_images, plan.global_batch_size, run.seed),
               monitor=None, log=MetricsLog(out / "metrics.jsonl", enabled=context.is_main),
               progress=Progress(plan.total_steps, plan.epochs, enabled=context.is_main),
               tensorboard=TensorBoardLog(out / "tensorboard", enabled=context.is_main and run.tensorboard))


def check_model_input(model: nn.Module, name: str, info: DataInfo) -> None:
    """One forward pass of a blank image on the CPU, before any training: a model that cannot take
    the data set's images, or gives another number of outputs than it has classes, is a
    ConfigError naming both (not a shape error in the middle of the first step)."""
    was_training = model.training
    model.eval()
    shape = (info.channels, info.image_size, info.image_size)
    try:
        with torch.no_grad():
            outputs = model(torch.zeros(1, *shape, dtype=next(model.parameters()).dtype)).shape[-1]
    except (RuntimeError, ValueError) as error:
        raise ConfigError(f"model {name} cannot take the data set's {'x'.join(map(str, shape))} images "
                          f"({str(error).splitlines()[0][:100]}); choose another --model or --image-size") from None
    finally:
        model.train(was_training)
    if outputs != info.num_classes:
        raise ConfigError(f"model {name} gives {outputs} outputs but the data set has {info.num_classes} classes")


def resolve_data(config: Config, info: DataInfo) -> None:
    """Write the data set's resolved values into the config (config.toml then says what ran)."""
    for key, value in (("num_classes", info.num_classes), ("image_size", info.image_size)):
        given = getattr(config.data, key)
        if given and given != value:
            raise ConfigError(f"data.{key} is {given} but the data set gives {value}; use 0 or {value}")
        setattr(config.data, key, value)


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


def largest_micro_batch(micro_batch_size: int, model: nn.Module, info: DataInfo, normalizer: Normalizer,
                        precision: Precision) -> int:
    """:func:`fit_micro_batch` with real passes of ``model`` (its BatchNorm statistics put back)."""
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}

    def try_micro_batch(size: int) -> None:
        images = torch.zeros(size, info.channels, info.image_size, info.image_size, dtype=torch.uint8)
        forward_backward(model, [(images, torch.zeros(size, dtype=torch.long))], normalizer, precision, size, False)
        model.zero_grad(set_to_none=True)

    size = fit_micro_batch(micro_batch_size, try_micro_batch)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    return size


def restore(run: Run, resume: str, extend_schedule: bool) -> tuple[TrainState, dict[str, list[Any]]]:
    """The training state to start from: a fresh one, or the checkpoint's (weights, optimizer,
    scaler, RNG and noise-scale state loaded into ``run``), with the settings it changes."""
    state, changes = TrainState(), {}
    found = checkpoint.find_resume_state(resume, run.out, run.context.device)
    if found is not None:
        source, saved = found
        refusals, changes = checkpoint.resume_differences(saved.get("config", {}), run.config, extend_schedule)
        if refusals:
            raise CheckpointError(f"checkpoint {source} does not fit this run ({'; '.join(refusals)}); resume with the "
                                  "run's settings (its config.toml), pass --extend-schedule to change only the "
                                  "schedule, or start a new run with another --out")
        checkpoint.check_data_identity(saved.get("data"), data_identity(run), source)
        checkpoint.load_model_state(run.model, saved["model"], str(source))
        try:
            run.optimizer.load_state_dict(saved["optimizer"])
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"checkpoint {source}: its optimizer state does not fit this optimizer's parameter "
                                  f"groups ({error}); resume with the optimizer settings of the run (skip_adaptation, "
                                  "skip_weight_decay) or start a new run") from None
        if run.precision.scaler is not None and saved.get("scaler"):
            run.precision.scaler.load_state_dict(saved["scaler"])
        checkpoint.set_rng_state(saved["rng"])
        state = TrainState.from_state_dict(saved.get("train_state"), f"checkpoint {source}")
        run.evaluation_skipped = SkippedFiles(state.skipped_files)  # counted, not warned about again
        if extend_schedule and any(key == "run.epochs" or key.startswith("schedule.") for key in changes):
            run.progress.message(describe_schedule_change(saved["config"], run, state.step))
    ddp_model = distributed.wrap_model(run.model, run.context)
    if run.config.run.noise_scale:  # before compile and the first backward: it registers a DDP communication hook
        run.monitor = NoiseScaleMonitor(run.model, ddp_model, run.plan, smoothing=1.0,
                                        every=run.config.run.noise_scale_every, precision=run.precision.name)
        if found is not None and found[1].get("noise_scale"):
            run.monitor.load_state_dict(found[1]["noise_scale"])
    run.train_model = torch.compile(ddp_model) if run.config.run.compile else ddp_model
    return state, changes


def describe_schedule_change(saved_config: dict[str, Any], run: Run, step: int) -> str:
    """The LR curve before and after an --extend-schedule resume, at a few steps from ``step`` on."""
    from largebatch.config import config_from_dict
    before = derive(config_from_dict(saved_config), run.plan.processes, run.plan.train_images, run.plan.test_images)
    after = run.plan
    points = sorted({step, (step + after.total_steps) // 2, max(step, after.total_steps - 1)})
    shown = ", ".join(f"step {s}: {before.lr_at(s) if s < before.total_steps else 0.0:.4g} -> {after.lr_at(s):.4g}"
                      for s in points)
    return (f"schedule changed at step {step}: {before.total_steps} -> {after.total_steps} steps; LR {shown}")


def data_identity(run: Run) -> dict[str, Any]:
    """What a resume must find unchanged in the data: the class list and the training set size."""
    return {"classes": list(run.info.classes), "train_images": run.plan.train_images}


def describe(run_or_config, plan: RunPlan, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What ``--dry-run --json`` prints and ``plan.json`` holds: the resolved config, the derived
    numbers, the LR at chosen steps and the parameter groups."""
    config = run_or_config.config if isinstance(run_or_config, Run) else run_or_config
    groups = [{"name": g.get("name", f"group {i}"), "tensors": len(g["params"]),
               "values": sum(p.numel() for p in g["params"]), "weight_decay": g.get("weight_decay", 0.0),
               "adapted": bool(g.get("adapt", False)) and config.optimizer.name != "sgd",
               "lr_scale": g.get("lr_scale", 1.0)} for i, g in enumerate(optimizer.param_groups)]
    return {"config": config_to_dict(config), "derived": plan.as_dict(), "lr_schedule": plan.lr_points(),
            "param_groups": groups}


def start_run_files(run: Run, state: TrainState, changes: dict[str, list[Any]]) -> None:
    """config.toml, plan.json and run.json (rank 0), written only now: a refused resume leaves the
    run directory as it was. Prints the plan and the provenance."""
    run.started = time.perf_counter() - (epoch_records(state.records)[-1]["elapsed_s"] if state.records
                                         and epoch_records(state.records) else 0.0)
    run.log.reset(state.records)
    run.provenance = provenance(run.context, run.info.classes, previous=run.out / "run.json", resumed_at=state.step,
                                changes=changes)
    if run.context.is_main:
        checkpoint.write_atomic(run.out / "config.toml", to_toml(run.config).encode())
        checkpoint.write_atomic(run.out / "plan.json", (json.dumps(describe(run, run.plan, run.optimizer), indent=2)
                                                        + "\n").encode())
        write_provenance(run)
    p, config, info = run.progress, run.config, run.info
    p.message(f"largebatch: {config.model.name} on {info.dataset}, {config.optimizer.name}, {run.precision.name} on "
              f"{run.context.device}; augmentation {run.augmenter.describe()}; run directory {run.out}")
    p.message(run.plan.describe())
    p.message(describe_groups(run.optimizer, config.optimizer.name))
    session = run.provenance["resumes"][-1] if run.provenance.get("resumes") else run.provenance
    p.message(f"  {session['largebatch']}, torch {session['torch']}"
              f"{', commit ' + session['git_commit'][:12] if session.get('git_commit') else ''}, on "
              f"{session['host']}, {session['world_size']} process(es), {session['device_name']}")
    if state.step:
        p.message(f"resumed from step {state.step} (epoch {run.plan.epoch_at(state.step):.2f})"
                  + (f"; changed: {', '.join(f'{k} {v[0]!r} -> {v[1]!r}' for k, v in changes.items())}"
                     if changes else ""))


def write_provenance(run: Run) -> None:
    checkpoint.write_atomic(run.out / "run.json", (json.dumps(run.provenance, indent=2) + "\n").encode())


# ---------------------------------------------------------------------------------------------
# The loop

class StopRequest:
    """SIGTERM / SIGINT set a flag; all ranks agree on it at the next log boundary."""

    def __init__(self):
        self.signal_number = 0
        self._previous = {}

    def __enter__(self) -> StopRequest:
        def handler(signum, frame):
            if signum == signal.SIGINT and self.signal_number == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, without waiting for the boundary
            self.signal_number = signum
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: no signal handling
            pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


@dataclass
class Window:
    """The steps since the last log boundary: their losses and skip flags stay on the device."""

    first_step: int
    started: float = field(default_factory=time.perf_counter)
    losses: list[torch.Tensor] = field(default_factory=list)
    skipped: list[torch.Tensor] = field(default_factory=list)
    data_wait_s: float = 0.0


def train_loop(run: Run, state: TrainState, stop: StopRequest) -> None:
    """Steps from ``state.step`` to the end of the schedule, or to a stop that ``stop`` (SIGTERM,
    SIGINT) requested."""
    plan, config = run.plan, run.config.run
    input_settings = machine_input_settings(run.context.device.type, workers=run.config.data.workers,
                                            device_prefetch=run.config.data.prefetch)
    run.training_stream = training_batches(
        run.train_set, run.sampler, state.step, plan.total_steps, run.context.rank, run.context.world_size,
        plan.accumulation_steps, workers=input_settings.workers, pin_memory=run.context.device.type == "cuda",
        prefetch_factor=input_settings.loader_prefetch, skipped=state.skipped_files, decode=run.config.data.decode,
        device=run.context.device)
    data = prefetch_to_device(run.training_stream, run.context.device, input_settings.device_prefetch)
    window, rate = Window(state.step), 0.0
    while state.step < plan.total_steps:
        step, lr = state.step, plan.lr_at(state.step)
        waited = time.perf_counter()
        micro_batches = next(data)
        window.data_wait_s += time.perf_counter() - waited
        loss_sum, skipped = train_step(run, micro_batches, step, lr)
        window.losses.append(loss_sum)
        window.skipped.append(skipped)
        state.step += 1
        run.progress.step(state.step, plan.epoch_at(state.step), lr, rate)
        if not is_log_boundary(plan, config, state.step):
            continue
        stopping, rate = close_window(run, state, window, lr, stop.signal_number)
        saved = False
        if epoch_ended(plan, state.step):
            saved = end_of_epoch(run, state, lr)
        elif config.checkpoint_every_steps and state.step % config.checkpoint_every_steps == 0:
            save_checkpoint(run, state)
            saved = True
        if stopping:
            if not saved:
                save_checkpoint(run, state)
            raise Interrupted(f"stopped by signal at step {state.step}; checkpoint saved. Resume with: largebatch "
                              f"train --recipe {run.out / 'config.toml'} --resume auto", stopping)
        if state.target_record is not None and config.stop_at_target:
            run.progress.message(f"target top-1 {config.target_top1} reached at epoch "
                                 f"{state.target_record['epoch']}; stopping")
            break
        window = Window(state.step)


def train_step(run: Run, micro_batches: list, step: int, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step with no host synchronisation: (this process's summed loss, skipped flag),
    both on the device."""
    set_lr(run.optimizer, lr)
    loss_sum = forward_backward(run.train_model, micro_batches, run.normalizer, run.precision,
                                run.plan.per_process_batch, run.context.enabled, run.augmenter, step,
                                run.context.rank * run.plan.per_process_batch, run.monitor)
    if run.monitor is not None:
        run.monitor.after_backward()  # every rank: a one-number all-reduce with several processes
    skipped = run.guarded_step(run.optimizer)
    run.optimizer.zero_grad(set_to_none=True)
    return loss_sum, skipped


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def forward_backward(model: nn.Module, micro_batches: list, normalizer: Normalizer, precision: Precision,
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


def epoch_ended(plan: RunPlan, step: int) -> bool:
    return step == plan.total_steps or int(plan.epoch_at(step) + 1e-9) > int(plan.epoch_at(step - 1) + 1e-9)


def is_log_boundary(plan: RunPlan, config, step: int) -> bool:
    return (epoch_ended(plan, step) or bool(config.log_every and step % config.log_every == 0)
            or bool(config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0))


def close_window(run: Run, state: TrainState, window: Window, lr: float, signal_number: int) -> tuple[int, float]:
    """The log boundary after ``window``'s steps: one all-reduce (losses, stop request) and one
    host read. Stops a diverged run; logs the mean loss; returns (the signal all ranks agreed to
    stop on, or 0; images/s of the window)."""
    device, plan, config = run.context.device, run.plan, run.config.run
    count = len(window.losses)
    flags = [torch.full((), float(bool(signal_number)), dtype=torch.float64, device=device),
             torch.full((), float(signal_number), dtype=torch.float64, device=device)]
    reduced = distributed.all_reduce_sum(torch.stack(window.losses + flags), run.context)
    extras = [torch.stack(window.skipped).to(torch.float64)]
    trust = trust_ratio_summary(run.optimizer)
    if trust is not None:
        extras.append(trust.to(torch.float64))
    if run.precision.scaler is not None:
        extras.append(run.precision.scaler._get_scale_async().to(torch.float64).reshape(1))
    values = torch.cat([reduced] + extras).tolist()  # the one host read of the window
    elapsed = time.perf_counter() - window.started
    losses = [value / plan.global_batch_size for value in values[:count]]
    stopping, signals = values[count:count + 2]  # ranks that caught a signal, and the sum of their signal numbers
    stop_signal = (signal_number or round(signals / stopping)) if stopping else 0
    skipped = values[count + 2:2 * count + 2]
    rest = values[2 * count + 2:]
    check_divergence(run, window.first_step, losses, rest[-1] if run.precision.scaler is not None else None,
                     int(sum(skipped)) + state.skipped_steps)
    state.skipped_steps += int(sum(skipped))
    state.train_time_s += elapsed
    state.epoch_time_s += elapsed
    state.epoch_loss_sum += sum(loss for loss in losses if math.isfinite(loss))
    state.epoch_steps += count
    state.epoch_images += count * plan.global_batch_size
    images_per_s = count * plan.global_batch_size / max(elapsed, 1e-9)
    mean_loss = sum(losses) / count
    epoch = plan.epoch_at(state.step)
    if config.log_every and state.step % config.log_every == 0:
        record = {"kind": "step", "step": state.step, "epoch": round(epoch, 4), "lr": lr, "loss": mean_loss}
        if trust is not None:
            record.update(zip(("trust_ratio_min", "trust_ratio_median", "trust_ratio_max"), rest[:3]))
        state.records.append(record)
        run.log.append(record)
        run.tensorboard.scalars(state.step, {"train/loss": mean_loss, "train/lr": lr,
                                             "train/images_per_s": images_per_s,
                                             **{f"trust_ratio/{k[12:]}": v for k, v in record.items()
                                                if k.startswith("trust_ratio_")}})
    run.progress.boundary(state.step, epoch, mean_loss, lr, images_per_s, window.data_wait_s / max(elapsed, 1e-9))
    return stop_signal, images_per_s


def check_divergence(run: Run, first_step: int, losses: list[float], loss_scale: float | None, skipped: int) -> None:
    """Raise DivergenceError at the first step of the window whose loss is non-finite (without fp16
    loss scaling, which skips such steps) or above ``run.divergence_loss``, or when the fp16 loss
    scale has fallen below MIN_LOSS_SCALE."""
    limit = run.config.run.divergence_loss
    for offset, loss in enumerate(losses):
        step = first_step + offset
        # A finite loss far above a uniform guess is divergence too: SGD at too high an LR can sit at
        # a loss of 1e5 and chance accuracy for the rest of the run without ever reaching NaN.
        exploded = limit > 0 and math.isfinite(loss) and loss > limit
        if (not math.isfinite(loss) and run.precision.scaler is None) or exploded:
            lr = run.plan.lr_at(step)
            raise DivergenceError(
                f"loss became {loss:.4g}{f' (above run.divergence_loss {limit:g})' if exploded else ''} at step {step} "
                f"(epoch {run.plan.epoch_at(step):.2f}, lr {lr:.4g}); the learning rate is likely too high or the "
                "warmup too short: resume from the last checkpoint with a lower LR (--resume auto --lr X), or start "
                "a new run with a longer --warmup-epochs", step=step, lr=lr, epoch=run.plan.epoch_at(step))
    if loss_scale is not None and loss_scale < MIN_LOSS_SCALE:
        step = first_step + len(losses) - 1
        raise DivergenceError(
            f"fp16 loss scale fell below {MIN_LOSS_SCALE:g} by step {step} (lr {run.plan.lr_at(step):.4g}): the loss "
            f"or gradients overflow at every step ({skipped} steps skipped); resume with a lower --lr or --precision "
            "bf16 (--resume auto)", step=step, lr=run.plan.lr_at(step), epoch=run.plan.epoch_at(step))


def end_of_epoch(run: Run, state: TrainState, lr: float) -> bool:
    """Record the epoch (evaluating when due), log it, checkpoint when due; returns whether a
    checkpoint was saved."""
    plan, config = run.plan, run.config.run
    finished = state.step == plan.total_steps
    epoch = plan.epochs if finished else int(plan.epoch_at(state.step) + 1e-9)
    record = {"kind": "epoch", "epoch": epoch, "step": state.step, "lr": lr,
              "train_loss": state.epoch_loss_sum / max(state.epoch_steps, 1), "top1": None, "top5": None,
              "images_per_s": state.epoch_images / max(state.epoch_time_s, 1e-9),
              "elapsed_s": time.perf_counter() - run.started, "train_time_s": state.train_time_s}
    if run.precision.scaler is not None:
        record["skipped_steps"] = state.skipped_steps
    if run.monitor is not None:  # this epoch's mean of the |G|^2 and tr(Sigma) estimates, and their ratio
        record.update(run.monitor.values())
        run.monitor.reset()
    improved = False
    if epoch % config.eval_every == 0 or finished:
        record.update(run_evaluation(run))
        record["elapsed_s"] = time.perf_counter() - run.started
        if state.best_top1 is None or record["top1"] > state.best_top1:
            state.best_top1, state.best_epoch, improved = record["top1"], epoch, True
        if state.target_record is None and config.target_top1 and record["top1"] >= config.target_top1:
            state.target_record = record
    state.records.append(record)
    run.log.append(record)
    run.progress.epoch(record)
    run.tensorboard.scalars(state.step, {f"epoch/{k}": v for k, v in record.items() if k not in ("kind", "step")})
    state.epoch_loss_sum, state.epoch_steps, state.epoch_images, state.epoch_time_s = 0.0, 0, 0, 0.0
    if finished or epoch % config.checkpoint_every == 0 or improved:
        save_checkpoint(run, state, best=improved)
        return True
    return False


def run_evaluation(run: Run) -> dict[str, float]:
    distributed.broadcast_buffers(run.model, run.context)
    with run.precision.autocast():
        return evaluate(run.model, run.test_set, run.context, run.normalizer, 2 * run.plan.micro_batch_size,
                        workers=run.config.data.workers, skipped=run.evaluation_skipped,
                        progress=run.progress.evaluation)


def save_checkpoint(run: Run, state: TrainState, best: bool = False) -> None:
    """Save the run's state at ``state.step`` (every rank calls this: it gathers skipped files)."""
    state.skipped_files = skipped_files(run)  # a collective
    if run.context.is_main:
        saved = {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(), "step": state.step,
                 "rng": checkpoint.rng_state(), "train_state": state.state_dict(), "config": config_to_dict(run.config),
                 "data": data_identity(run),
                 "scaler": run.precision.scaler.state_dict() if run.precision.scaler is not None else {},
                 "noise_scale": run.monitor.state_dict() if run.monitor is not None else {}}
        checkpoint.save(run.out / "checkpoints", state.step, saved, keep=run.config.run.keep_checkpoints, best=best)
    distributed.barrier(run.context)


def skipped_files(run: Run) -> list[str]:
    """The unreadable files every rank met, training and evaluation (a collective: all ranks call it)."""
    training = run.training_stream.skipped if run.training_stream is not None else []
    return skipped_files_all_ranks(training + run.evaluation_skipped.entries())


def finish(run: Run, state: TrainState) -> dict[str, Any]:
    """summary.json (rank 0) and the summary it holds."""
    config = run.config
    evaluated = [r for r in epoch_records(state.records) if r.get("top1") is not None]
    last = evaluated[-1] if evaluated else {}
    target = state.target_record
    skipped = len(skipped_files(run))
    summary = {
        "top1": last.get("top1"), "top5": last.get("top5"), "best_top1": state.best_top1,
        "best_epoch": state.best_epoch, "train_time_s": state.train_time_s,
        "images_per_s": state.step * run.plan.global_batch_size / max(state.train_time_s, 1e-9) if state.step else 0.0,
        "wall_time_s": time.perf_counter() - run.started,
        "epochs": run.plan.epochs, "steps": state.step, "model": config.model.name, "dataset": run.info.dataset,
        "optimizer": config.optimizer.name, "skipped_files": skipped, "skipped_steps": state.skipped_steps,
        "target_top1": config.run.target_top1 or None,
        "target_epoch": target["epoch"] if target else None,
        "target_elapsed_s": target["elapsed_s"] if target else None,
        **run.plan.as_dict(),
        "test_images": last.get("test_images", run.plan.test_images),
        "device": str(run.context.device), "precision": run.precision.name,
        "augmentation": run.augmenter.describe(),
    }
    if run.context.is_main:
        checkpoint.write_atomic(run.out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        run.provenance["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_provenance(run)
        run.progress.message(f"done: top1 {summary['top1']:.4f} top5 {summary['top5']:.4f} in "
                             f"{summary['wall_time_s']:.0f} s ({summary['images_per_s']:,.0f} img/s); run directory "
                             f"{run.out}")
    distributed.barrier(run.context)  # every rank is done with collectives before the group is destroyed
    return summary


# ---------------------------------------------------------------------------------------------
# Checking a recipe without training

def dry_run(config: Config, processes: int = 1, device_type: str = "cpu") -> tuple[dict[str, Any], RunPlan]:
    """What :func:`describe` says of a run of ``config`` on ``processes`` processes, and its plan,
    without data or training: the image counts come from the data folder where there is one, else
    the data set's published size."""
    from largebatch.data.counts import count_images
    train_images, test_images, source = count_images(config.data)
    channels, image_size, classes = {"fashion-mnist": (1, 28, 10), "mnist": (1, 28, 10)}.get(
        config.data.dataset, (3, config.data.image_size or 224, config.data.num_classes or 1000))
    if config.data.dataset == "imagenet" and config.data.data_dir:
        from largebatch.data import imagenet
        classes = len(imagenet.list_split(imagenet.locate(config.data.data_dir), "train").classes)
    resolve_data(config, DataInfo(config.data.dataset, classes, channels, image_size, (), (), train_images,
                                  test_images))
    plan = derive(config, processes, train_images, test_images, device_type)
    model = models.build(config.model.name, num_classes=classes, in_channels=channels,
                         zero_init_residual=config.model.zero_init_residual)
    result = describe(config, plan, build_optimizer(config.optimizer, model, plan.peak_lr))
    result["image_counts"] = source
    return result, plan


def format_dry_run(result: dict[str, Any], plan_text: str) -> str:
    """The human-readable form of :func:`dry_run`'s result."""
    lines = [f"{result['config']['recipe']}: {result['config']['model']['name']} on {result['config']['data']['dataset']} "
             f"({result['image_counts']}), {result['config']['optimizer']['name']}", plan_text, "  LR at steps:"]
    lines += [f"    {step:>8,}  {lr:.6g}" for step, lr in result["lr_schedule"]]
    lines.append("  parameter groups:")
    lines += [f"    {g['name']}: {g['tensors']} tensors, {g['values']:,} values, wd {g['weight_decay']:g}, "
              f"{'adapted' if g['adapted'] else 'not adapted'}, lr x{g['lr_scale']:g}" for g in result["param_groups"]]
    return "\n".join(lines)
