import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these tests are tiny, and on a shared 2-core machine two threads per
    process spin against other jobs and run many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
