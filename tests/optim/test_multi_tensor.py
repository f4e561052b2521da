"""How the multi-tensor steps split their tensors, and the trust-ratio summary."""

import torch

from largebatch.optim import multi_tensor


def test_cpu_chunks_cover_every_tensor_in_order(monkeypatch):
    monkeypatch.setattr(multi_tensor, "CPU_CHUNK_ELEMENTS", 10)
    sizes = [4, 4, 4, 30, 1, 9, 2]
    tensors = [torch.zeros(n) for n in sizes]
    # 4 + 4 fit in 10, the third 4 does not; 30 is alone; 1 + 9 fit; 2 starts the last chunk
    assert multi_tensor.chunks(tensors) == [(0, 2), (2, 3), (3, 4), (4, 6), (6, 7)]
    assert multi_tensor.chunks([]) == [(0, 0)]


def test_default_chunks_are_a_few_megabytes():
    tensors = [torch.zeros(300_000) for _ in range(10)]
    assert multi_tensor.chunks(tensors) == [(0, 3), (3, 6), (6, 9), (9, 10)]


def test_summary_is_min_lower_median_max():
    ratios = torch.tensor([0.5, 0.125, 0.25, 2.0])
    assert multi_tensor.summary(ratios).tolist() == [0.125, 0.25, 2.0]
    assert multi_tensor.summary(None) is None and multi_tensor.summary(torch.zeros(0)) is None
