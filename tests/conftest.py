import os
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from browser import Chromium, find_chromium, group_members
from hypothesis.configuration import set_hypothesis_home_dir

from depthlab.data import files

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))  # tvnets: the user-layout nets

# Under pytest-xdist (``make test`` runs ``-n auto``) the workers share the cores: each gets its share
# of torch's intra-op threads instead of all of them, so two workers on two cores do not oversubscribe.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


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


# ----------------------------------------------------------------------------- a real browser
# The HTML report tests open pages in headless Chromium (tests/browser.py). Without Chromium they are
# skipped, except under CI (env CI set), where they fail.

def _unavailable(why: str):
    if os.environ.get("CI"):
        pytest.fail(f"{why}; CI must run the browser test (.ci/run installs chromium)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def chromium_path():
    try:
        import websocket  # noqa: F401  (websocket-client)
    except ImportError:
        _unavailable("websocket-client is not installed (pip install -e '.[test]')")
    path = find_chromium()
    if path is None:
        _unavailable("no Chromium found (install Debian's `chromium` package, or set DEPTHLAB_CHROMIUM to a "
                     "Chromium or Chrome binary)")
    return path


@pytest.fixture(scope="module")
def browser(chromium_path):
    with Chromium(chromium_path, timeout=30) as b:
        yield b
    assert not group_members(b.proc.pid), "chromium processes outlived the test"



# ----------------------------------------------------------------------------- a clean checkout
# Tests leave no files in the checkout: every run directory or cache a test needs lives in a tmp dir.
# The files present when the session starts are compared with those at its end; a new one fails the
# run (exit status 1) and is named. Caches of the tools themselves are not counted.
_ROOT = Path(__file__).resolve().parent.parent
_TOOL_DIRS = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", "mutants", "depthlab.egg-info"}
_before: "set[str]" = set()
# hypothesis keeps its example database and constants cache in ./.hypothesis unless told otherwise
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="depthlab-tests-hypothesis-")
set_hypothesis_home_dir(_HYPOTHESIS_HOME)


def _checkout_files() -> "set[str]":
    found = set()
    for folder, dirs, names in os.walk(_ROOT):
        dirs[:] = [d for d in dirs if d not in _TOOL_DIRS]
        found.update(os.path.relpath(os.path.join(folder, n), _ROOT) for n in names)
    return found


def pytest_sessionstart(session):
    # mutmut runs the suite inside its own copy; under pytest-xdist the controller process checks
    if not os.environ.get("MUTANT_UNDER_TEST") and not os.environ.get("PYTEST_XDIST_WORKER"):
        _before.update(_checkout_files())


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_HYPOTHESIS_HOME, ignore_errors=True)
    if os.environ.get("MUTANT_UNDER_TEST") or not _before:
        return
    left = sorted(_checkout_files() - _before)
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write("\n")
            reporter.write_line(f"tests left {len(left)} file(s) in the checkout: {left[:10]}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
