"""Every built-in strategy, a user strategy and DP run 2 rounds end-to-end in the real
simulation engine (conftest.py's SuperLink, on the session's Ray cluster)."""

import pytest
from helpers import SHORT_RUN, completed_run, write_idx_fashion_mnist

from mefl_app.server.strategies import BUILTIN_STRATEGIES

pytestmark = pytest.mark.e2e
CLIENTS = 4


@pytest.fixture(scope="module")
def fmnist_dir(tmp_path_factory):
    return write_idx_fashion_mnist(tmp_path_factory.mktemp("data"), n_train=320, n_test=80)


def _run(superlink, fmnist_dir, tmp_path, **config):
    config = {
        "data-dir": fmnist_dir,
        "output-dir": tmp_path,
        **SHORT_RUN,
        **config,
    }
    results = completed_run(superlink, config, CLIENTS)
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    for entry in results["rounds"]:
        for kind in ("personalized", "global_local", "central"):
            assert list(entry[kind]) == ["block1", "block3", "block5"], kind
        # Personalized accuracy is on record for every client that trained, whatever was aggregated.
        assert len(entry["personalized"]["block5"]["per_client"]) == CLIENTS
        assert entry["replies"]["train"]["ok"] == CLIENTS
        assert entry["bytes_up"] > 0 and entry["bytes_down"] > 0
    # The aggregate goes out in the model's dtype (float32), whatever the strategy computes in.
    assert results["rounds"][1]["bytes_down"] == results["rounds"][0]["bytes_down"]
    return results


@pytest.mark.parametrize("name", sorted(BUILTIN_STRATEGIES))
def test_builtin_strategy_runs_two_rounds(superlink, fmnist_dir, tmp_path, name):
    extra = {"proximal-mu": 0.01} if name == "fedprox" else {}
    results = _run(superlink, fmnist_dir, tmp_path, strategy=name, **extra)
    assert results["strategy"] == BUILTIN_STRATEGIES[name].__name__
    aggregated = results["rounds"][0]["aggregated_partitions"]
    if name == "krum":
        assert len(aggregated) == 1  # Krum keeps one update; the others still count above
    elif name == "multikrum":
        assert len(aggregated) == 1  # num-nodes-to-select = 1 (Flower's default)
    elif name != "bulyan":
        assert aggregated == list(range(CLIENTS))


def test_user_strategy_by_import_path(superlink, fmnist_dir, tmp_path):
    results = _run(
        superlink,
        fmnist_dir,
        tmp_path,
        strategy="mefl_app.example_strategy:UpdateNormFedAvg",
        **{"strategy-kwargs": '{"tag": "hello"}'},
    )
    assert results["strategy"] == "UpdateNormFedAvg"


def test_differential_privacy_wrapper(superlink, fmnist_dir, tmp_path):
    results = _run(
        superlink,
        fmnist_dir,
        tmp_path,
        strategy="fedavgm",
        dp="fixed",
        **{"dp-num-sampled-clients": CLIENTS, "dp-noise-multiplier": 0.1, "dp-clipping-norm": 5.0},
    )
    assert results["strategy"] == "DifferentialPrivacyServerSideFixedClipping"
