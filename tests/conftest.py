from urllib.error import URLError

import pytest
import torch

from depthlab.data import files


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network in any test, and the default data dir is a scratch folder; records attempted URLs."""
    calls = []

    def refuse(url, *args, **kwargs):
        calls.append(url)
        raise URLError("network disabled in tests")

    monkeypatch.setattr(files, "urlopen", refuse)
    monkeypatch.setenv("DEPTHLAB_DATA_DIR", str(tmp_path / "default-data"))
    return calls


@pytest.fixture(scope="module")
def one_thread():
    """Model tests use tiny tensors: one intra-op thread is faster and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
