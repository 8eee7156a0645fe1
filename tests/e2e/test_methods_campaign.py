"""``mefl methods`` end to end on a tiny configuration: the reference and a method on the same
shards, and a report whose numbers are the results files'."""

import pytest
from helpers import write_idx_fashion_mnist

from mefl import cli
from mefl.campaigns import completed_results

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("campaigns_on_the_session_cluster")]


def test_the_methods_campaign_runs_the_reference_and_each_method_and_reports(tmp_path):
    data = write_idx_fashion_mnist(tmp_path / "data", n_train=300, n_test=60)
    out = tmp_path / "methods"
    config = f"data-dir='{data}' num-server-rounds=2 local-epochs=1 min-partition-size=10"
    argv = ["methods", "--task", "fmnist", "--seeds", "0", "--methods", "depthfl", "--clients", "3", "--out", str(out)]
    assert cli.main([*argv, "--run-config", config]) == 0
    reference, depthfl = (
        completed_results(out / "runs" / "all-deep-seed0"),
        completed_results(out / "runs" / "depthfl-seed0"),
    )
    assert reference["run_config"]["exit-profile"] == "" and depthfl["run_config"]["exit-profile"] == "1:1,2:1,3:1"
    assert reference["partitions"] == depthfl["partitions"]  # the same shards
    report = (out / "report.md").read_text()
    assert "**Complete**: all 2 runs that the campaign's commands" in report
    assert "| 0 | 100 % (100 %) |" in report.split("## Training data behind each exit")[1]
    row = next(
        line
        for line in report.split("## global model on the central test set")[1].splitlines()
        if line.startswith("| depthfl |")
    )
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1] == f"{100 * depthfl['rounds'][-1]['central']['block1']['accuracy']:.2f}"
    mean2 = (
        depthfl["rounds"][0]["central"]["block1"]["accuracy"] + depthfl["rounds"][1]["central"]["block1"]["accuracy"]
    ) / 2
    assert cells[2] == f"{100 * mean2:.2f}"  # 2 rounds: the "last 5" mean is over both
    for png in ("accuracy_per_round.png", "accuracy_vs_compute.png"):
        assert (out / png).stat().st_size > 0 and png in report
