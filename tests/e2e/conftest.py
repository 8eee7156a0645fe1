"""Fixtures of the end-to-end tests: a private simulation SuperLink per module, small data."""

import pytest
from helpers import write_idx_fashion_mnist

from mefl.runtime.simulation import SimulationSuperLink


@pytest.fixture(scope="module")
def superlink(tmp_path_factory):
    """A private ``flower-superlink --simulation`` for the module's runs (Ray started per run)."""
    with SimulationSuperLink(tmp_path_factory.mktemp("flwr-home")) as link:
        yield link


@pytest.fixture(scope="module")
def small_fmnist(tmp_path_factory):
    """300 training and 60 test images in Fashion-MNIST's IDX files."""
    return write_idx_fashion_mnist(tmp_path_factory.mktemp("data"), n_train=300, n_test=60)
