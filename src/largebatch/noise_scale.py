"""The gradient noise scale, measured during training from gradients the step already computes.

McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model of Large-Batch Training" (arXiv
1812.06162). With G the true gradient and Sigma the per-example gradient covariance, a batch of B
examples has a gradient G_B with E|G_B|^2 = |G|^2 + tr(Sigma) / B. Two batch sizes
B_small < B_big give unbiased estimates of both parts (their Appendix A):

    |G|^2     = (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) = (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

and the simple noise scale B_simple = tr(Sigma) / |G|^2 (their section 2), which predicts the
critical batch size beyond which a larger batch stops cutting the number of steps. Each step's
estimates are noisy (|G|^2 may come out negative), so numerator and denominator are smoothed
separately over steps and divided afterwards, as the paper advises.

Where the two batch sizes come from, in our training step (``train.forward_backward``):

- one process with gradient accumulation: the small batch is one micro-batch (its gradient is the
  change of the accumulated ``.grad`` across its backward pass), the big batch the whole step;
- several processes: the small batch is one process's part of the global batch (its local
  gradient, read by a DDP communication hook before the all-reduce), the big batch the
  all-reduced gradient in ``.grad`` after the backward pass.

No extra forward or backward pass: the cost is one copy of the gradients per micro-batch (one
process) or one norm per DDP bucket and a one-number all-reduce (several processes), all with
fused ``torch._foreach`` operations and no host synchronisation until :meth:`values`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from largebatch.errors import ConfigError


def unbiased_norm_sq(small_sq, big_sq, small_batch: float, big_batch: float):
    """Unbiased estimate of |G|^2 from squared gradient norms at two batch sizes
    (McCandlish et al. 2018, App. A): (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small).
    Works on floats and on tensors."""
    if not 0 < small_batch < big_batch:
        raise ValueError(f"need 0 < small_batch < big_batch, got {small_batch} and {big_batch}")
    return (big_batch * big_sq - small_batch * small_sq) / (big_batch - small_batch)


def unbiased_trace(small_sq, big_sq, small_batch: float, big_batch: float):
    """Unbiased estimate of tr(Sigma), the per-example gradient variance summed over parameters
    (McCandlish et al. 2018, App. A): (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)."""
    if not 0 < small_batch < big_batch:
        raise ValueError(f"need 0 < small_batch < big_batch, got {small_batch} and {big_batch}")
    return (small_sq - big_sq) / (1.0 / small_batch - 1.0 / big_batch)


def squared_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Sum of squares of all elements of ``tensors``, as a float64 0-dim tensor on their device:
    one fused norm per tensor list, no per-tensor ``.item()``."""
    if not tensors:
        return torch.zeros((), dtype=torch.float64)
    norms = torch._foreach_norm(tensors)
    return torch.stack(norms).to(torch.float64).square().sum()


@dataclass(frozen=True)
class NoiseSample:
    """One step's measurement: the mean squared norm of the small-batch gradients, the squared norm
    of the big-batch gradient, and their batch sizes. ``small_batch`` is the harmonic mean of the
    small batches' sizes, which keeps the estimate unbiased when micro-batches differ by an image:
    E[mean_i |G_i|^2] = |G|^2 + tr(Sigma) mean_i(1 / b_i)."""

    small_sq: torch.Tensor
    big_sq: torch.Tensor
    small_batch: float
    big_batch: float

    def norm_sq(self) -> torch.Tensor:
        return unbiased_norm_sq(self.small_sq, self.big_sq, self.small_batch, self.big_batch)

    def trace(self) -> torch.Tensor:
        return unbiased_trace(self.small_sq, self.big_sq, self.small_batch, self.big_batch)


class NoiseScaleSmoother:
    """Exponential moving averages of the |G|^2 and tr(Sigma) estimates, kept apart and divided only
    when read (the paper's advice: the ratio of two noisy averages, not the average of noisy ratios).

    ``decay`` is the weight of the past per measured step; the averages are bias-corrected as in Adam
    (divided by 1 - decay^n), so early values are not pulled toward zero. ``decay = 1`` is the plain
    mean over all measurements since the last :meth:`reset` (the limit of the corrected average),
    ``decay = 0`` the last one. Values stay tensors on the training device; non-finite samples are
    ignored without a host sync.

    For per-epoch records, the plain mean over the epoch (``decay = 1``, reset after each record) is
    the better choice: an EMA spanning an epoch still gives the previous epochs weight, and while
    |G|^2 falls by orders of magnitude (late training, LR decay) those older, larger values dominate
    both averages and freeze their ratio.
    """

    def __init__(self, decay: float = 0.99, device: torch.device | str = "cpu"):
        if not 0.0 <= decay <= 1.0:
            raise ConfigError(f"noise scale smoothing: expected a decay in [0, 1], got {decay}")
        self.decay = decay
        zero = torch.zeros((), dtype=torch.float64, device=device)
        self.norm_sq_average = zero.clone()
        self.trace_average = zero.clone()
        self.norm_sq_squares = zero.clone()  # plain mean only: sum of squared deviations (Welford)
        self.count = zero.clone()  # measurements taken in (a tensor: skipping needs no sync)

    def reset(self) -> None:
        """Forget all measurements (start a new averaging interval)."""
        self.norm_sq_average = torch.zeros_like(self.norm_sq_average)
        self.trace_average = torch.zeros_like(self.trace_average)
        self.norm_sq_squares = torch.zeros_like(self.norm_sq_squares)
        self.count = torch.zeros_like(self.count)

    def update(self, norm_sq: torch.Tensor, trace: torch.Tensor) -> None:
        norm_sq = torch.as_tensor(norm_sq, dtype=torch.float64, device=self.count.device)
        trace = torch.as_tensor(trace, dtype=torch.float64, device=self.count.device)
        finite = torch.isfinite(norm_sq) & torch.isfinite(trace)
        count = self.count + finite.to(torch.float64)
        if self.decay == 1.0:  # running mean: weight 1/n for the n-th sample
            weight = finite.to(torch.float64) / count.clamp(min=1.0)
        else:  # raw EMA; bias correction is applied when read
            weight = finite.to(torch.float64) * (1.0 - self.decay)
        previous = self.norm_sq_average
        self.norm_sq_average = torch.where(finite, previous + weight * (norm_sq - previous), previous)
        if self.decay == 1.0:
            self.norm_sq_squares = torch.where(finite, self.norm_sq_squares
                                               + (norm_sq - previous) * (norm_sq - self.norm_sq_average),
                                               self.norm_sq_squares)
        self.trace_average = torch.where(finite, self.trace_average + weight * (trace - self.trace_average),
                                         self.trace_average)
        self.count = count

    def _corrected(self, average: torch.Tensor) -> float | None:
        count = float(self.count.item())
        if count == 0:
            return None
        if self.decay == 1.0:
            return float(average.item())
        return float(average.item()) / (1.0 - self.decay ** count)

    def values(self) -> dict[str, float | None]:
        """``grad_norm_sq`` (|G|^2), ``grad_trace_sigma`` (tr Sigma) and ``grad_noise_scale``
        (B_simple = their ratio; None, "unresolved", while the smoothed |G|^2 is not positive:
        the gradient's signal is then below what the measurements can separate from noise), and
        with the plain mean, ``grad_norm_sq_stderr``: the standard error of the |G|^2 mean from the
        spread of the steps' estimates (the relative error of B_simple is about stderr / |G|^2, since
        tr Sigma is far better determined). None where not defined."""
        norm_sq, trace = self._corrected(self.norm_sq_average), self._corrected(self.trace_average)
        resolved = norm_sq is not None and trace is not None and norm_sq > 0
        count = float(self.count.item())
        stderr = None
        if self.decay == 1.0 and count >= 2:
            stderr = math.sqrt(max(0.0, float(self.norm_sq_squares.item())) / (count - 1) / count)
        return {"grad_noise_scale": trace / norm_sq if resolved else None,
                "grad_norm_sq": norm_sq, "grad_trace_sigma": trace, "grad_norm_sq_stderr": stderr}

    def state_dict(self) -> dict[str, float]:
        return {"decay": self.decay, "norm_sq_average": float(self.norm_sq_average.item()),
                "trace_average": float(self.trace_average.item()),
                "norm_sq_squares": float(self.norm_sq_squares.item()), "count": float(self.count.item())}

    def load_state_dict(self, state: dict[str, float]) -> None:
        device = self.count.device
        self.norm_sq_average = torch.tensor(state["norm_sq_average"], dtype=torch.float64, device=device)
        self.trace_average = torch.tensor(state["trace_average"], dtype=torch.float64, device=device)
        self.norm_sq_squares = torch.tensor(state.get("norm_sq_squares", 0.0), dtype=torch.float64, device=device)
        self.count = torch.tensor(state["count"], dtype=torch.float64, device=device)


class NoiseScaleMonitor:
    """Measures the gradient noise scale inside the training step.

    The loop calls, for each step::

        for index, micro_batch in enumerate(micro_batches):
            monitor.before_micro_batch(index)
            ... forward, (loss.sum() / per_process_batch).backward() ...
            monitor.after_micro_batch(index, len(labels))
        monitor.after_backward()        # before the optimizer step; returns this step's NoiseSample
        ... optimizer.step(); optimizer.zero_grad(set_to_none=True)

    and ``monitor.values()`` when it logs, then ``monitor.reset()`` to average each epoch on its own
    (any rank: all ranks hold the same averages, since the small-batch norms are all-reduced and the
    big-batch gradient is the same everywhere). Assumes what ``train.forward_backward``
    does: each micro-batch's loss is summed over its images and divided by ``per_process_batch``,
    so ``.grad`` holds the mean gradient over this process's images (several processes: DDP
    averages over processes), and that the gradients are None or zero when a step begins
    (``optimizer.zero_grad``): the first micro-batch's gradient is read as the whole ``.grad``.

    One process needs at least two micro-batches per step (``accumulation_steps >= 2``): with one,
    there is only one batch size to compare. Gradients scaled for fp16 are not supported (their
    scale changes between steps and overflowing steps carry inf): ``precision`` 'fp16' raises;
    fp32, fp64 and bf16 autocast (fp32 gradients) are measured as they are.

    ``smoothing``: the decay of :class:`NoiseScaleSmoother` (1: plain mean since the last reset).
    ``every``: measure one step in ``every`` (the others cost one attribute check per call).
    """

    def __init__(self, model: nn.Module, ddp_model: nn.Module | None, plan, smoothing: float = 0.99, every: int = 1,
                 precision: str = "fp32"):
        world_size, per_process_batch = plan.processes, plan.per_process_batch
        global_batch, accumulation_steps = plan.global_batch_size, plan.accumulation_steps
        if precision == "fp16":
            raise ConfigError("run.noise_scale: not supported with fp16 loss scaling (the gradients carry a "
                              "changing scale); use --precision bf16 or fp32")
        if every < 1:
            raise ConfigError(f"run.noise_scale_every: expected an integer >= 1, got {every}")
        self.world_size = world_size
        self.per_process_batch = per_process_batch
        self.global_batch = global_batch
        self.every = every
        if world_size == 1 and accumulation_steps < 2:
            raise ConfigError(
                f"run.noise_scale: with one process the noise scale compares micro-batches with the whole "
                f"batch, but batch {global_batch} is one micro-batch; set --micro-batch-size to at most "
                f"{global_batch // 2} (e.g. {max(1, global_batch // 4)}), or train on several processes")
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        if not self.parameters:
            raise ValueError("the model has no trainable parameters")
        device = self.parameters[0].device
        self.smoother = NoiseScaleSmoother(smoothing, device)
        self._steps = 0
        self._measuring = True
        # one process: the gradients accumulated before the current micro-batch, and the sums over
        # this step's micro-batches of |g_i|^2 and of 1 / b_i
        self._snapshot: list[torch.Tensor] = []
        self._snapshot_parameters: list[nn.Parameter] | None = None
        self._small_sq = torch.zeros((), dtype=torch.float64, device=device)
        self._inverse_sizes = 0.0
        self._micro_batches = 0
        if world_size > 1:
            if not isinstance(ddp_model, nn.parallel.DistributedDataParallel):
                raise ValueError("several processes: pass the DistributedDataParallel model as ddp_model")
            ddp_model.register_comm_hook(None, self._communication_hook)

    # --- the two code paths ------------------------------------------------------------------

    def _communication_hook(self, process_group, bucket):
        """DDP's default all-reduce (divide by the world size, sum), after adding this rank's
        squared norm of the bucket: the bucket holds this process's gradient, accumulated over its
        micro-batches, before any averaging."""
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
        if self._measuring:
            self._small_sq += bucket.buffer().norm().to(torch.float64).square()
        return default_hooks.allreduce_hook(process_group, bucket)

    def _gradients(self) -> list[torch.Tensor]:
        return [p.grad for p in self.parameters if p.grad is not None]

    def before_micro_batch(self, index: int) -> None:
        """Remember the gradients accumulated so far (one process, from the second micro-batch on)."""
        if not self._measuring or self.world_size > 1 or index == 0:
            return
        self._snapshot_parameters = [p for p in self.parameters if p.grad is not None]
        grads = [p.grad for p in self._snapshot_parameters]
        if len(self._snapshot) != len(grads) or any(s.shape != g.shape for s, g in zip(self._snapshot, grads)):
            self._snapshot = [torch.empty_like(g) for g in grads]
        torch._foreach_copy_(self._snapshot, grads)

    def after_micro_batch(self, index: int, size: int) -> None:
        """Add this micro-batch's squared gradient norm (one process). Its contribution to ``.grad`` is
        (size / per_process_batch) x its mean gradient, hence the rescaling."""
        if not self._measuring or self.world_size > 1 or size <= 0:
            return
        if index == 0:
            squared = squared_norm(self._gradients())
        else:
            if self._snapshot_parameters is None:
                raise RuntimeError("noise scale: call before_micro_batch before each micro-batch")
            # snapshot - after = -(this micro-batch's share); parameters whose first gradient came in
            # this micro-batch (conditional computation) contribute their whole gradient
            torch._foreach_sub_(self._snapshot, [p.grad for p in self._snapshot_parameters])
            seen = {id(p) for p in self._snapshot_parameters}
            squared = squared_norm(self._snapshot) + squared_norm(
                [p.grad for p in self.parameters if p.grad is not None and id(p) not in seen]).to(self._small_sq.device)
            self._snapshot_parameters = None
        self._small_sq += squared * (self.per_process_batch / size) ** 2
        self._inverse_sizes += 1.0 / size
        self._micro_batches += 1

    def after_backward(self) -> NoiseSample | None:
        """Combine this step's small-batch and big-batch norms (call after the last backward, before
        the optimizer step). Returns the step's raw sample (None on unmeasured steps)."""
        measured = self._measuring
        self._steps += 1
        self._measuring = self._steps % self.every == 0
        if not measured:
            return None
        big_sq = squared_norm(self._gradients())
        if self.world_size > 1:
            small_sq = self._small_sq.clone()
            import torch.distributed as dist
            dist.all_reduce(small_sq)  # the mean over processes of |local gradient|^2
            sample = NoiseSample(small_sq / self.world_size, big_sq, float(self.per_process_batch),
                                 float(self.global_batch))
        else:
            if self._micro_batches < 2:
                raise RuntimeError("noise scale: fewer than two micro-batches were measured in this step; "
                                   "call before_micro_batch and after_micro_batch around each one")
            sample = NoiseSample(self._small_sq / self._micro_batches, big_sq,
                                 self._micro_batches / self._inverse_sizes, float(self.global_batch))
        self._small_sq = torch.zeros_like(self._small_sq)
        self._inverse_sizes, self._micro_batches = 0.0, 0
        self.smoother.update(sample.norm_sq(), sample.trace())
        return sample

    # --- reading and checkpointing -------------------------------------------------------------

    def values(self) -> dict[str, float | None]:
        """The smoothed ``grad_noise_scale`` (None: unresolved), ``grad_norm_sq`` and
        ``grad_trace_sigma``, for metrics.jsonl."""
        return self.smoother.values()

    def reset(self) -> None:
        """Start a new averaging interval (with ``smoothing=1``: call after logging each epoch)."""
        self.smoother.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"smoother": self.smoother.state_dict(), "steps": self._steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.smoother.load_state_dict(state["smoother"])
        self._steps = int(state["steps"])
        self._measuring = self._steps % self.every == 0


def format_noise_scale(values: dict[str, float | None]) -> str:
    """'B_simple 3,100 (|G|^2 0.0123 +- 0.002, tr Sigma 38.1)', or 'unresolved (...)'."""
    norm_sq, trace, scale = values.get("grad_norm_sq"), values.get("grad_trace_sigma"), values.get("grad_noise_scale")
    if norm_sq is None or trace is None:
        return "not measured yet"
    stderr = values.get("grad_norm_sq_stderr")
    parts = f"|G|^2 {norm_sq:.4g}" + (f" +- {stderr:.2g}" if stderr is not None else "") + f", tr Sigma {trace:.4g}"
    if scale is None or not math.isfinite(scale):
        return f"unresolved ({parts}: the smoothed |G|^2 is not positive)"
    return f"B_simple {scale:,.0f} ({parts})"
