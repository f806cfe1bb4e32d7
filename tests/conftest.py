import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Model tests use tiny tensors: one intra-op thread is faster and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
