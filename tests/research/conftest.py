"""The research tier runs its models on one torch thread: on a shared 2-core machine two OpenMP threads
that wait for each other can be many times slower than one (the studies and the demo default to one too)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
