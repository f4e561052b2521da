"""Process group setup for synchronous data parallelism (torch.distributed + torchrun).

Without torchrun this is one process with world size 1 and no process group: the same training
code path, with collectives that are no-ops. Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK set)
it initialises the process group: NCCL on CUDA, gloo on CPU, unless told otherwise.
"""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from largebatch.errors import ConfigError


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def choose_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("run.device: cuda was asked for but no CUDA device is available; use --device cpu")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(device: str = "auto", backend: str = "auto", threads: int = 0) -> DistributedContext:
    """Read torchrun's environment, pick the device and backend, and join the process group."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    chosen_device = choose_device(device, local_rank)
    if chosen_device.type == "cuda":
        torch.cuda.set_device(chosen_device)
    # Share the cores among the processes of a node rather than oversubscribing them (OpenMP threads
    # spin while waiting: two processes with all cores each run several times slower than one).
    if not threads and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = int(os.environ["OMP_NUM_THREADS"])
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // local_world_size))
    context = DistributedContext(rank, world_size, local_rank, local_world_size, chosen_device)
    if world_size > 1:
        if backend == "auto":
            backend = "nccl" if chosen_device.type == "cuda" else "gloo"
        if backend == "nccl" and chosen_device.type != "cuda":
            raise ConfigError("run.backend: nccl needs CUDA devices; use --backend gloo on CPU")
        if not dist.is_initialized():
            timeout = datetime.timedelta(minutes=30)
            extra = {"device_id": chosen_device} if backend == "nccl" else {}
            if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
                # torchrun's agent store outlives a restarted group, and torch 2.13 does not prefix its keys
                # per attempt: a restarted rank can read the dead rank 0's address and fail (or hang).
                # A prefix per restart keeps each attempt's rendezvous keys apart.
                attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
                store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                                      is_master=False, timeout=timeout)
                dist.init_process_group(backend, store=dist.PrefixStore(f"attempt_{attempt}", store), rank=rank,
                                        world_size=world_size, timeout=timeout, **extra)
            else:
                dist.init_process_group(backend, timeout=timeout, **extra)
        context.backend = backend
    return context


def teardown(context: DistributedContext) -> None:
    """Destroy the process group, after collecting what still refers to it: a DDP model left to the
    interpreter's final clean-up frees its gloo work objects without the GIL, which aborts the
    process ("terminate called without an active exception") now and then."""
    if context.enabled and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum a tensor over all processes, in place (a no-op with one process)."""
    if context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def is_peer_failure(error: BaseException) -> bool:
    """True for the errors a collective raises when another process of the job died or hung
    (gloo: connection closed or reset; NCCL: a DistBackendError; either: a timeout)."""
    if isinstance(error, getattr(dist, "DistBackendError", ())) or isinstance(error, getattr(dist, "DistNetworkError", ())):
        return True
    text = str(error)
    return any(sign in text for sign in ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                                         "Timed out", "timed out", "ProcessGroupGloo", "NCCL communicator"))


def use_sync_batchnorm(model: nn.Module, context: DistributedContext) -> nn.Module:
    """Replace BatchNorm layers by SyncBatchNorm (statistics over all processes' micro-batches).
    Call before building the optimizer; needs CUDA devices (torch has no CPU SyncBatchNorm)."""
    if context.device.type != "cuda":
        raise ConfigError("run.sync_batchnorm needs CUDA devices (torch's SyncBatchNorm has no CPU kernel); "
                          "use --no-sync-batchnorm on CPU")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model) if context.enabled else model


def wrap_model(model: nn.Module, context: DistributedContext) -> nn.Module:
    """DistributedDataParallel around ``model`` when there are several processes."""
    if not context.enabled:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    # Buffers (BN running stats) are broadcast from rank 0 at each forward by default; that is
    # what keeps evaluation identical on every rank.
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def broadcast_buffers(model: nn.Module, context: DistributedContext) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), so that evaluation on
    every shard uses the same model."""
    if context.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
