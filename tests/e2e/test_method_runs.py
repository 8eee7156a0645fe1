"""Every method preset, 2 rounds through Flower's real simulation engine, with a third of the
clients at each exit level: each completes and records the ensemble beside the exits."""

import pytest
from helpers import SHORT_RUN, completed_run, write_unimib_shar

from mefl_app.settings import METHODS

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_two_rounds_with_clients_at_every_exit_level(superlink, small_fmnist, tmp_path, method):
    config = {
        "method": method,
        "data-dir": small_fmnist,
        "output-dir": tmp_path / "out",
        **SHORT_RUN,
        "exit-profile": "1:1,2:1,3:1",
    }
    if method == "hypemefed":  # 2 passes, not 25, over each round's pairs: the server's training is unit-tested
        config["hypernetwork-epochs"] = 2
    results = completed_run(superlink, config, 3)
    assert results["run_config"]["method"] == method
    assert results["strategy"] == ("FedDyn" if method == "depthfl" else "FedAvg")
    for entry in results["rounds"]:
        for kind in ("personalized", "global_local", "central"):
            assert 0.0 <= entry[f"{kind}_ensemble"]["accuracy"] <= 1.0, kind
        trained = entry["aggregated_partitions"]
        assert trained == ([2] if method == "exclusive" else [0, 1, 2])
    if method == "inclusivefl":  # the ResNet's blocks change width at every exit: nothing to blend
        assert results["momentum_distillation"] == {"1": [], "2": []}


def test_inclusivefls_momentum_distillation_blends_the_lstms_top_layers(superlink, tmp_path_factory, tmp_path):
    config = {
        "method": "inclusivefl",
        "task": "har",
        "data-dir": write_unimib_shar(tmp_path_factory.mktemp("har"), n=240, num_classes=4),
        "output-dir": tmp_path / "out",
        "hidden-size": 16,
        **SHORT_RUN,
        "exit-profile": "1:1,2:1,3:1",
    }
    results = completed_run(superlink, config, 3)
    blended = results["momentum_distillation"]
    assert blended["1"] == ["layers.0.weight_hh_l0", "layers.0.bias_ih_l0", "layers.0.bias_hh_l0"]
    assert blended["2"] == [f"layers.1.{n}" for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    assert [entry["aggregated_partitions"] for entry in results["rounds"]] == [[0, 1, 2], [0, 1, 2]]
