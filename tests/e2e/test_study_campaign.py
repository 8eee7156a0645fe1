"""``mefl study`` end-to-end on a tiny configuration; the report's numbers must be the ones in
the results files."""

import pytest
from helpers import write_idx_fashion_mnist

from mefl import cli
from mefl.campaigns import completed_results
from mefl.compare import write_comparison

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("campaigns_on_the_session_cluster")]


def test_campaign_runs_both_variants_and_reports_from_results_files(tmp_path):
    data = write_idx_fashion_mnist(tmp_path / "data", n_train=300, n_test=60)
    out = tmp_path / "campaign"
    argv = [
        "study",
        "--task",
        "fmnist",
        "--seeds",
        "0",
        "--clients",
        "3",
        "--out",
        str(out),
        "--run-config",
        f"data-dir='{data}' num-server-rounds=2 local-epochs=1 min-partition-size=10 target-accuracy=0.2",
    ]
    assert cli.main(argv) == 0

    me = completed_results(out / "runs" / "me-seed0")
    se = completed_results(out / "runs" / "se-seed0")
    assert me and se, "both variants completed"
    assert me["run_config"]["partition-seed"] == se["run_config"]["partition-seed"] == 0  # identical shards
    assert me["partitions"] == se["partitions"]  # the same shards (label counts, sizes)
    report = (out / "report.md").read_text()
    for png in (
        "accuracy_personalized.png",
        "accuracy_global_local.png",
        "accuracy_central.png",
        "per_client_spread.png",
    ):
        assert (out / png).stat().st_size > 0 and png in report

    # Table 1: the numbers are the results files' final-round accuracies.
    row = next(line for line in report.splitlines() if line.startswith("| personalized (each"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1] == f"{100 * me['rounds'][-1]['personalized']['block5']['accuracy']:.2f}"
    assert cells[2] == f"{100 * se['rounds'][-1]['personalized']['block5']['accuracy']:.2f}"
    # Per seed: the two models of seed 0 side by side, and their gap.
    paired = next(line for line in report.splitlines() if line.startswith("| 0 |"))
    final = {v: r["rounds"][-1] for v, r in (("me", me), ("se", se))}
    assert [c.strip() for c in paired.split("|")[1:-1]] == ["0"] + [
        text
        for kind in ("personalized", "central")
        for text in (
            f"{100 * final['me'][kind]['block5']['accuracy']:.2f}",
            f"{100 * final['se'][kind]['block5']['accuracy']:.2f}",
            f"{100 * (final['me'][kind]['block5']['accuracy'] - final['se'][kind]['block5']['accuracy']):+.2f}",
        )
    ]
    # Table 3: every exit of the multi-exit model.
    table3 = report.split("## Table 3")[1]
    row3 = next(line for line in table3.splitlines() if line.startswith("| central |"))
    assert [c.strip() for c in row3.split("|")[1:-1]][1:] == [
        f"{100 * me['rounds'][-1]['central'][e]['accuracy']:.2f}" for e in ("block1", "block3", "block5")
    ]
    assert "mefl study --task fmnist" in report

    # Re-running skips the completed runs and retrains nothing; the report is rebuilt alone.
    before = sorted(p.name for p in (out / "runs" / "me-seed0").iterdir())
    assert cli.main(argv) == 0
    assert sorted(p.name for p in (out / "runs" / "me-seed0").iterdir()) == before
    (out / "report.md").unlink()
    assert cli.main(["report", "--out", str(out)]) == 0
    assert (out / "report.md").read_text() == report

    # compare: one row per run, the final-round accuracies of the results files.
    table = write_comparison([out], tmp_path / "comparison.md").read_text()
    me_row = next(line for line in table.splitlines() if "| me, 0 |" in line)
    cells = [c.strip() for c in me_row.split("|")[1:-1]]
    assert cells[1] == me["strategy"] and cells[3] == "2"
    assert cells[6] == " / ".join(
        f"{100 * me['rounds'][-1]['central'][e]['accuracy']:.1f}" for e in ("block1", "block3", "block5")
    )
    assert "| se, 0 |" in table
