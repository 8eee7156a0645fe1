"""End-to-end through Flower's real simulation engine (SuperLink + Ray), small synthetic data
in the real Fashion-MNIST file format."""

import pytest
from helpers import REPO, only_results, write_idx_fashion_mnist, write_unimib_shar

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fmnist_dir(tmp_path_factory):
    return write_idx_fashion_mnist(tmp_path_factory.mktemp("data"), n_train=600, n_test=150)


def assert_complete_results(results, exits, clients, rounds, pool_size):
    """Every exit has all three accuracies for every round, replies and bytes are counted."""
    assert results["status"] == "completed", results.get("error")
    assert results["exit_names"] == exits
    assert [r["round"] for r in results["rounds"]] == list(range(1, rounds + 1))
    for entry in results["rounds"]:
        for kind in ("personalized", "global_local", "central"):
            assert list(entry[kind]) == exits, kind
            for metrics in entry[kind].values():
                assert 0.0 <= metrics["accuracy"] <= 1.0
        assert len(entry["personalized"][exits[-1]]["per_client"]) == clients
        assert entry["replies"]["train"] == {
            "sent": clients,
            "ok": clients,
            "failed": 0,
            "missing": 0,
            "partitions": list(range(clients)),
            "errors": {},
        }
        assert entry["replies"]["evaluate"]["ok"] == clients
        assert entry["bytes_down"] > 0 and entry["bytes_up"] > 0
        # Down: the model to every trainer and every evaluator; up: every trained model.
        assert entry["bytes_down"] == 2 * entry["bytes_up"]
        assert entry["seconds"] > 0
    assert sorted(results["partitions"]) == [str(c) for c in range(clients)]
    assert sum(p["num_train"] + p["num_test"] for p in results["partitions"].values()) == pool_size
    assert set(results["rounds_to_target"]) == {"personalized", "global_local", "central"}


def test_two_rounds_three_clients_write_complete_results(superlink, fmnist_dir, tmp_path):
    config = {
        "data-dir": fmnist_dir,
        "output-dir": tmp_path,
        "num-server-rounds": 2,
        "local-epochs": 1,
        "min-partition-size": 20,
        "target-accuracy": 0.2,
    }
    proc = superlink.run(REPO, config, num_supernodes=3)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = only_results(tmp_path)
    assert_complete_results(results, ["block1", "block3", "block5"], clients=3, rounds=2, pool_size=600)
    for entry in results["rounds"]:
        assert {"mean", "std", "min", "max"} == set(entry["personalized"]["block1"]["client_accuracy"])
    assert results["rounds"][1]["bytes_cumulative"] == 2 * results["rounds"][0]["bytes_cumulative"]
    run_dir = next(tmp_path.glob("*/"))
    assert (run_dir / "model.pt").exists()
    assert "[mefl] round 2/2" in proc.stdout


def test_a_seed_repeats_to_the_last_bit(superlink, fmnist_dir, tmp_path):
    # Two clients train at a time and finish in any order; the server aggregates the replies in
    # partition order, so two runs of one seed must agree exactly, not only closely.
    config = {"data-dir": fmnist_dir, "num-server-rounds": 3, "local-epochs": 1, "min-partition-size": 20}
    runs = []
    for name in ("first", "second"):
        proc = superlink.run(REPO, {**config, "output-dir": tmp_path / name}, num_supernodes=4)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        results = only_results(tmp_path / name)
        runs.append([(entry["train_loss"], entry["central"], entry["personalized"]) for entry in results["rounds"]])
    assert runs[0] == runs[1]


def test_single_exit_run_reports_only_the_last_exit(superlink, fmnist_dir, tmp_path):
    config = {
        "data-dir": fmnist_dir,
        "output-dir": tmp_path,
        "num-server-rounds": 1,
        "local-epochs": 1,
        "multi-exit": False,
        "min-partition-size": 20,
    }
    proc = superlink.run(REPO, config, num_supernodes=2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = only_results(tmp_path)
    assert results["status"] == "completed", results.get("error")
    assert results["exit_names"] == ["block5"]
    assert set(results["rounds"][0]["central"]) == {"block5"}


def test_bad_setting_stops_the_run_before_training(superlink, fmnist_dir, tmp_path):
    config = {"data-dir": fmnist_dir, "output-dir": tmp_path, "dirichlet-alpha": -1.0}
    proc = superlink.run(REPO, config, num_supernodes=2)
    assert "dirichlet-alpha must lie in (0, inf), got -1.0" in proc.stdout + proc.stderr
    assert not list(tmp_path.glob("*/results.json"))  # nothing that looks like a run


def test_har_task_runs_the_same_loop_on_unimib_shar_files(superlink, tmp_path_factory, tmp_path):
    data_dir = write_unimib_shar(tmp_path_factory.mktemp("har"), n=240, num_classes=4)
    config = {
        "task": "har",
        "data-dir": data_dir,
        "output-dir": tmp_path,
        "num-server-rounds": 2,
        "local-epochs": 1,
        "hidden-size": 16,
        "min-partition-size": 10,
        "target-accuracy": 0.5,
    }
    proc = superlink.run(REPO, config, num_supernodes=3)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = only_results(tmp_path)
    assert_complete_results(results, ["layer1", "layer2", "layer3"], clients=3, rounds=2, pool_size=192)
    assert results["model"]["class"] == "MultiExitLSTM" and results["data"]["central_test_size"] == 48
