"""Every method preset, 2 rounds through Flower's real simulation engine, with a third of the
clients at each exit level: each completes and records the ensemble beside the exits."""

import pytest
from helpers import REPO, only_results

from mefl_app.settings import METHODS

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_two_rounds_with_clients_at_every_exit_level(superlink, small_fmnist, tmp_path, method):
    config = {
        "method": method,
        "data-dir": small_fmnist,
        "output-dir": tmp_path / "out",
        "num-server-rounds": 2,
        "local-epochs": 1,
        "min-partition-size": 10,
        "exit-profile": "1:1,2:1,3:1",
    }
    proc = superlink.run(REPO, config, num_supernodes=3)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = only_results(tmp_path / "out")
    assert results["status"] == "completed", results.get("error")
    assert results["run_config"]["method"] == method
    assert results["strategy"] == ("FedDyn" if method == "depthfl" else "FedAvg")
    for entry in results["rounds"]:
        for kind in ("personalized", "global_local", "central"):
            assert 0.0 <= entry[f"{kind}_ensemble"]["accuracy"] <= 1.0, kind
        trained = entry["aggregated_partitions"]
        assert trained == ([2] if method == "exclusive" else [0, 1, 2])
