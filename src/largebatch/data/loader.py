"""Loading batches of an image-file data set in worker processes (torch DataLoader).

A *request* is one batch: a list of data-set indices, for training their stream positions, and
the output side (0: the transform's; progressive resizing sets it per step).
Requests go to ``workers`` processes in order and come back in order; each worker decodes a
whole batch into shared memory (:meth:`ImageFileDataset.load_batch`), so the training process
only receives tensors. Since an image's random choices depend on its stream position alone,
the batches are the same for any number of workers, including none.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from largebatch.data.files import Batch, ImageFileDataset
from largebatch.data.prefetch import machine_input_settings

Request = tuple[Sequence[int], Sequence[int] | None, int]  # (indices, stream positions or None, side)


def resolve_workers(workers: int) -> int:
    """``-1``: the workers :func:`largebatch.data.prefetch.choose_input_settings` gives this machine
    (the one worker policy: its cores shared among its training processes, less one for each)."""
    if workers >= 0:
        return workers
    return machine_input_settings("cpu", workers=workers).workers


class _BatchReader(Dataset):
    """What a worker runs: ``__getitems__`` receives one request and returns the whole batch."""

    def __init__(self, dataset: ImageFileDataset):
        self.dataset = dataset

    def __getitems__(self, request: Request) -> Batch:
        indices, positions, size = request
        return self.dataset.load_batch(indices, positions, size)

    def __getitem__(self, index: int):  # DataLoader needs it to exist; batches use __getitems__
        raise NotImplementedError


def _as_is(batch: Batch) -> Batch:
    return batch


def _plain(requests: Iterable[tuple]) -> Iterator[Request]:
    for request in requests:
        indices, positions = request[0], request[1]
        size = int(request[2]) if len(request) > 2 else 0
        yield indices.tolist(), (positions.tolist() if positions is not None else None), size


def file_batches(dataset: ImageFileDataset, requests: Iterable[tuple], workers: int = 0,
                 pin_memory: bool | None = None, prefetch_factor: int = 2, reader: type[Dataset] | None = None
                 ) -> Iterator[Batch]:
    """One :class:`Batch` per request ((indices, positions or None[, side]) tensors), in order;
    ``workers`` processes (0: in this process; -1: :func:`resolve_workers`). ``pin_memory``
    (default: when CUDA is available) puts the batches in page-locked memory for asynchronous
    copies to the GPU. ``reader`` replaces what a worker does with a request (default: decode
    it, :meth:`ImageFileDataset.load_batch`)."""
    workers = resolve_workers(workers)
    reader_dataset = (reader or _BatchReader)(dataset)
    if workers == 0:
        for request in _plain(requests):
            yield reader_dataset.__getitems__(request)
        return
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    loader = DataLoader(reader_dataset, batch_sampler=_plain(requests), num_workers=workers,
                        collate_fn=_as_is, pin_memory=pin_memory, prefetch_factor=prefetch_factor)
    yield from loader
