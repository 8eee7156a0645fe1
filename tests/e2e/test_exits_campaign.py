"""Resource-aware exits end to end: a mixed exit profile through the real simulation engine."""

import pytest
from helpers import write_idx_fashion_mnist

from mefl import cli, exits
from mefl.campaigns import completed_results

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("campaigns_on_the_session_cluster")]


def test_exit_comparison_runs_three_configurations_and_reports(tmp_path):
    data = write_idx_fashion_mnist(tmp_path / "data", n_train=300, n_test=60)
    out = tmp_path / "exits"
    cli.main(
        [
            "exits",
            "--rounds",
            "2",
            "--clients",
            "3",
            "--out",
            str(out),
            "--run-config",
            f"data-dir='{data}' local-epochs=1 min-partition-size=10",
        ]
    )
    runs = {name: completed_results(out / "runs" / name) for name in exits.CONFIGS}
    assert all(runs.values()), "all three configurations completed"
    deep, mixed, exclusive = runs["all-deep"], runs["mixed-partial"], runs["exclusive"]
    assert mixed["run_config"]["exit-profile"] == "1:1,2:1,3:1"
    assert mixed["rounds"][1]["client_exit_levels"] == {"0": 1, "1": 2, "2": 3}
    # Partial training: the level-1 and level-2 clients receive only their part and send it back,
    # from round 1 on (the census before round 1 tells the server their levels).
    assert mixed["rounds"][0]["bytes_up"] < deep["rounds"][0]["bytes_up"]
    assert mixed["rounds"][0]["bytes_down"] == mixed["rounds"][1]["bytes_down"] < deep["rounds"][0]["bytes_down"]
    # Compute: shallower clients train less; in exclusive mode only the deepest client trains.
    flops = {name: sum(sum(r["client_train_mflops"].values()) for r in res["rounds"]) for name, res in runs.items()}
    assert flops["exclusive"] < flops["mixed-partial"] < flops["all-deep"]
    assert exclusive["rounds"][0]["aggregated_partitions"] == [2]
    # Per-exit records: exit 1 is scored on every client, the deepest exit only on the level-3 one.
    assert mixed["rounds"][1]["personalized"]["block1"]["clients"] == 3
    assert mixed["rounds"][1]["personalized"]["block5"]["clients"] == 1
    assert len(mixed["rounds"][1]["global_local_early_exit"]["accuracy"]) == len(mixed["early_exit_thresholds"])
    report = (out / "report.md").read_text()
    assert "mixed-partial" in report and "early_exit.png" in report and (out / "early_exit.png").exists()
