"""Fixtures of the end-to-end tests: one Ray cluster for the session, a private simulation
SuperLink per module attached to it, small data."""

import os

import pytest
from helpers import write_idx_fashion_mnist

from mefl.runtime.simulation import RayCluster, SimulationSuperLink


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A Ray cluster started once: the runs of ``superlink`` attach to it instead of starting and
    tearing down Ray each (several seconds a run). The per-run Ray of a plain ``flwr run .`` is
    exercised by test_faults.py, whose SuperLinks start their own."""
    with RayCluster(tmp_path_factory.mktemp("ray"), num_cpus=os.cpu_count() or 1) as cluster:
        yield cluster


@pytest.fixture
def campaigns_on_the_session_cluster(monkeypatch, ray_cluster):
    """Campaign commands in the test attach to the session's Ray cluster (``RAY_ADDRESS``) instead
    of starting their own; test_resume_runs.py's killed campaign still starts and stops its own."""
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)


@pytest.fixture(scope="module")
def superlink(tmp_path_factory, ray_cluster):
    """A private ``flower-superlink --simulation`` for the module's runs, on the session's Ray cluster."""
    with SimulationSuperLink(tmp_path_factory.mktemp("flwr-home"), ray_address=ray_cluster.address) as link:
        yield link


@pytest.fixture(scope="module")
def small_fmnist(tmp_path_factory):
    """300 training and 60 test images in Fashion-MNIST's IDX files."""
    return write_idx_fashion_mnist(tmp_path_factory.mktemp("data"), n_train=300, n_test=60)
