"""Fixtures shared by the unit and end-to-end tests (helpers: tests/helpers.py)."""

import signal

import pytest
from helpers import synthetic_task


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
