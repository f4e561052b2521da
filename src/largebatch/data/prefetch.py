"""Overlapped input: the next step's batches travel to the GPU while the current step trains.

The training stream (:func:`largebatch.data.training_batches`) yields, per optimizer step, a list
of (uint8 images, int64 labels) micro-batches in host memory, pinned when the loader runs on a
CUDA machine. :class:`DevicePrefetcher` keeps ``depth`` steps copied to the device ahead of the
one being trained:

- the copies run on a side CUDA stream with ``non_blocking=True``, so from pinned memory they are
  DMA transfers that overlap the kernels of the current step on the default stream;
- an event recorded after each step's copies is what the training stream waits on when that step
  is handed out (``wait_event``), so compute never reads a half-copied batch and never waits on
  a copy issued for a later step;
- each handed-out tensor is marked as used by the training stream (``record_stream``): its memory
  was allocated on the side stream, and without the mark the caching allocator could give it to
  the next copy while the training stream still reads it.

On a CPU there is nothing to copy: :func:`prefetch_to_device` returns the stream unchanged (the
loader's worker processes already decode ahead). :func:`choose_input_settings` picks the loader
workers, their read-ahead and the device prefetch depth from the CPU count and the device; every
choice can be overridden.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from largebatch.errors import ConfigError

MicroBatch = tuple[torch.Tensor, torch.Tensor]  # (images, labels)
Step = list[MicroBatch]  # one optimizer step's micro-batches

# Enough decoded micro-batches in host memory, over all workers together, to ride out a slow
# image or a step boundary (optimizer step, all-reduce, logging) without the training process
# waiting; DataLoader's own default of 2 per worker gives this once there are 2 workers.
MIN_READY_MICRO_BATCHES = 4


@dataclass(frozen=True)
class InputSettings:
    """How input is fed to one training process."""

    workers: int  # loader processes decoding image files (0: decode in the training process)
    loader_prefetch: int  # micro-batches each worker keeps decoded ahead (DataLoader's prefetch_factor)
    device_prefetch: int  # optimizer steps copied to the GPU ahead of the one training (0: none)


def choose_input_settings(cores: int, local_processes: int, device_type: str, workers: int = -1,
                          loader_prefetch: int = 0, device_prefetch: int = -1) -> InputSettings:
    """Input settings from the machine (a pure function; :func:`machine_input_settings` reads the
    machine). Automatic values, each replaced by an explicit argument:

    - ``workers`` (-1): the cores of this machine shared among its ``local_processes`` training
      processes, less one core for each training process itself: ``cores // local_processes - 1``,
      at least 1 and at most 32;
    - ``loader_prefetch`` (0): ``max(2, ceil(4 / workers))`` micro-batches per worker, so that at
      least 4 are ready in all;
    - ``device_prefetch`` (-1): 1 step on CUDA (double buffering: one step trains while the next is
      copied; a copy from pinned memory of a uint8 ResNet-50 micro-batch of 256, 38.5 MB, takes
      about 2 ms, far less than the step), 0 elsewhere. On a CPU it is always 0: there is no copy.
    """
    if cores < 1 or local_processes < 1:
        raise ConfigError(f"input settings: need at least one core and one process, got {cores} cores "
                          f"and {local_processes} processes")
    if workers < -1 or loader_prefetch < 0 or device_prefetch < -1:
        raise ConfigError("data.workers must be >= -1, the loader prefetch >= 0 and data.prefetch >= -1 "
                          "(-1 and 0 mean automatic)")
    if workers == -1:
        workers = max(1, min(32, cores // local_processes - 1))
    if loader_prefetch == 0:
        loader_prefetch = max(2, math.ceil(MIN_READY_MICRO_BATCHES / max(1, workers)))
    if device_type != "cuda":
        device_prefetch = 0
    elif device_prefetch == -1:
        device_prefetch = 1
    return InputSettings(workers, loader_prefetch, device_prefetch)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_input_settings(device_type: str, workers: int = -1, loader_prefetch: int = 0,
                           device_prefetch: int = -1) -> InputSettings:
    """:func:`choose_input_settings` for this machine: its available cores and the training
    processes torchrun started on it (``LOCAL_WORLD_SIZE``, 1 without torchrun)."""
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return choose_input_settings(available_cores(), local_processes, device_type, workers, loader_prefetch,
                                 device_prefetch)


@dataclass
class _Staged:
    step: Step  # on the device once ``ready`` has passed
    ready: torch.cuda.Event | None  # recorded on the side stream after the step's copies
    host: Step  # the host tensors, referenced until the step is handed out


class DevicePrefetcher:
    """Iterator over ``steps`` (lists of (images, labels)) that keeps ``depth`` steps copied to
    ``device`` ahead of the one handed out. Yields every step exactly once, in order; an error
    raised by ``steps`` is raised when the step it belongs to is asked for, not earlier.

    On CUDA the copies run on a side stream (see the module docstring); on another device the
    steps are queued as they are, which only reads ahead (use :func:`prefetch_to_device`, which
    does not wrap at all there)."""

    def __init__(self, steps: Iterable[Step], device: torch.device, depth: int = 1):
        if depth < 1:
            raise ConfigError(f"data.prefetch: the device prefetch depth must be at least 1, got {depth}")
        self.device, self.depth = torch.device(device), depth
        self._steps = iter(steps)
        self._cuda = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(self.device) if self._cuda else None
        self._queue: deque[_Staged] = deque()
        self._error: BaseException | None = None
        self._exhausted = False
        self._fill()

    def __iter__(self) -> DevicePrefetcher:
        return self

    def __next__(self) -> Step:
        if not self._queue:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            raise StopIteration
        staged = self._queue.popleft()
        # Issue the following step's copies before this step's kernels are queued, so that they
        # run during this step (the loader has it ready in host memory).
        self._fill()
        if staged.ready is not None:
            training_stream = torch.cuda.current_stream(self.device)
            training_stream.wait_event(staged.ready)
            for images, labels in staged.step:
                images.record_stream(training_stream)
                labels.record_stream(training_stream)
        return staged.step

    def _fill(self) -> None:
        while not self._exhausted and len(self._queue) < self.depth:
            try:
                step = next(self._steps)
            except StopIteration:
                self._exhausted = True
            except Exception as error:  # e.g. DataError: raised when its step is asked for
                self._error, self._exhausted = error, True
            else:
                self._queue.append(self._stage(step))

    def _stage(self, step: Step) -> _Staged:
        if not self._cuda:
            return _Staged(step, None, step)
        with torch.cuda.stream(self._stream):
            on_device = [(images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True))
                         for images, labels in step]
            ready = torch.cuda.Event()
            ready.record(self._stream)
        return _Staged(on_device, ready, step)


def prefetch_to_device(steps: Iterator[Step], device: torch.device, depth: int) -> Iterator[Step]:
    """``steps`` with ``depth`` steps copied ahead to a CUDA ``device`` (:class:`DevicePrefetcher`);
    on another device, or with ``depth`` 0, ``steps`` itself, unchanged."""
    device = torch.device(device)
    if device.type != "cuda" or depth == 0:
        return steps
    return DevicePrefetcher(steps, device, depth)
