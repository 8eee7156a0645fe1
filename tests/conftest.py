"""Fixtures shared by the unit and end-to-end tests (helpers: tests/helpers.py)."""

import signal

import pytest
import torch
from helpers import synthetic_task


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The tests' models and batches are tiny: with torch's default of a thread per core, OpenMP's
    threads wait on each other for every small op, and a busy machine (a campaign beside the
    suite) turns that into seconds a step. One thread, as the app's own clients use
    (``torch-threads = 1``); the run processes of the end-to-end tests set their own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def ctrl_c_armed():
    """Tests send SIGINT as a terminal's Ctrl-C would. A suite started as a background job of a
    script (``pytest &``) inherits SIGINT ignored (POSIX), and an ignored signal stays ignored
    across exec: every launcher a test starts would be deaf to it. Re-arm it for the session;
    caught signals reset to the default in children."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        yield
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        yield


@pytest.fixture
def task_data():
    return synthetic_task()


@pytest.fixture
def task_identity(monkeypatch):
    """Flower stamps messages with the running task's ids; give a test one."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0, raising=False)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1, raising=False)
