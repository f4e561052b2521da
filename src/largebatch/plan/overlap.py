"""How much of the gradient all-reduce the backward pass hides, as PyTorch's DistributedDataParallel
overlaps them.

DDP groups the gradients into buckets in reverse parameter order (the last layers first), about
``bucket_cap_mb`` = 25 MiB each (torch.nn.parallel.DistributedDataParallel documentation), and
launches a bucket's all-reduce as soon as all its gradients are computed; the all-reduces run one
after another on one communication stream. So the first all-reduce starts once the last layers'
backward is done, and at least the last bucket's all-reduce always comes after the backward pass.

Model (stated assumptions): the gradient bytes become ready at a uniform rate during the backward
pass (in ResNet-50 the last stage, computed first, holds about 60% of the parameters, so real
buckets fill sooner: the model errs towards less overlap); each bucket pays its own all-reduce,
latency terms included. Bucket i, holding bytes up to a fraction f_i of the gradient, is ready at
f_i x backward and starts when it is ready and the previous bucket is done; what runs past the end
of the backward pass is exposed.
"""

from __future__ import annotations

from collections.abc import Callable

MiB = 2 ** 20
DDP_BUCKET_BYTES = 25 * MiB  # DistributedDataParallel(bucket_cap_mb=25), the default


def bucket_sizes(message_bytes: float, bucket_bytes: float) -> list[float]:
    """The bucket sizes of a gradient of ``message_bytes``, in the order they are all-reduced."""
    if message_bytes <= 0:
        return []
    full, rest = divmod(message_bytes, bucket_bytes)
    return [bucket_bytes] * int(full) + ([rest] if rest > 0 else [])


def exposed_seconds(message_bytes: float, bucket_bytes: float, backward_s: float,
                    allreduce_seconds: Callable[[float], float]) -> float:
    """Seconds of all-reduce left after the backward pass ends, for buckets of ``bucket_bytes``.

    ``allreduce_seconds(n)`` is the time of one all-reduce of n bytes. With one bucket nothing is
    hidden (the all-reduce starts when the backward pass ends); with many, up to all but the last
    bucket is.
    """
    sizes = bucket_sizes(message_bytes, bucket_bytes)
    done, ready_bytes = 0.0, 0.0
    for size in sizes:
        ready_bytes += size
        ready = backward_s * ready_bytes / message_bytes
        done = max(done, ready) + allreduce_seconds(size)
    return max(0.0, done - backward_s)
