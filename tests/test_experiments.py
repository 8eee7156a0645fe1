"""The experiment command end-to-end on a tiny configuration; the report's numbers must be the
ones in the results files."""


import pytest

from conftest import write_idx_fashion_mnist
from mefl_app import experiments


@pytest.mark.parametrize("text, share", [("0", 0.0), ("0.0625", 0.0625), ("1", 1.0), ("2", 2.0)])
def test_gpus_per_client_takes_a_share_of_one_gpu_or_whole_gpus(text, share):
    args = ["run", "--task", "fmnist", "--out", "x", "--gpus-per-client", text]
    assert experiments.build_parser().parse_args(args).gpus_per_client == share


@pytest.mark.parametrize("text", ["-0.5", "1.5"])
def test_gpus_per_client_refuses_what_ray_cannot_schedule(text, capsys):
    with pytest.raises(SystemExit):
        experiments.build_parser().parse_args(["run", "--task", "fmnist", "--out", "x", "--gpus-per-client", text])
    assert "share of one GPU" in capsys.readouterr().err


@pytest.mark.e2e
def test_campaign_runs_both_variants_and_reports_from_results_files(tmp_path, monkeypatch):
    data = write_idx_fashion_mnist(tmp_path / "data", n_train=300, n_test=60)
    out = tmp_path / "campaign"
    argv = ["run", "--task", "fmnist", "--seeds", "0", "--clients", "3", "--out", str(out),
            "--run-config", f"data-dir='{data}' num-server-rounds=2 local-epochs=1 min-partition-size=10 target-accuracy=0.2"]
    monkeypatch.setattr("sys.argv", ["experiments", *argv])
    experiments.main(argv)

    me = experiments.completed_results(out / "runs" / "me-seed0")
    se = experiments.completed_results(out / "runs" / "se-seed0")
    assert me and se, "both variants completed"
    assert me["run_config"]["partition-seed"] == se["run_config"]["partition-seed"] == 0  # identical shards
    assert me["partitions"] == se["partitions"]  # the same shards (label counts, sizes)
    report = (out / "report.md").read_text()
    for png in ("accuracy_personalized.png", "accuracy_global_local.png", "accuracy_central.png", "per_client_spread.png"):
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
        text for kind in ("personalized", "central") for text in (
            f"{100 * final['me'][kind]['block5']['accuracy']:.2f}", f"{100 * final['se'][kind]['block5']['accuracy']:.2f}",
            f"{100 * (final['me'][kind]['block5']['accuracy'] - final['se'][kind]['block5']['accuracy']):+.2f}")]
    # Table 3: every exit of the multi-exit model.
    table3 = report.split("## Table 3")[1]
    row3 = next(line for line in table3.splitlines() if line.startswith("| central |"))
    assert [c.strip() for c in row3.split("|")[1:-1]][1:] == [
        f"{100 * me['rounds'][-1]['central'][e]['accuracy']:.2f}" for e in ("block1", "block3", "block5")]
    assert "python -m mefl_app.experiments run --task fmnist" in report

    # Re-running skips the completed runs and retrains nothing; the report is rebuilt alone.
    before = sorted(p.name for p in (out / "runs" / "me-seed0").iterdir())
    experiments.main(argv)
    assert sorted(p.name for p in (out / "runs" / "me-seed0").iterdir()) == before
    (out / "report.md").unlink()
    experiments.main(["report", "--out", str(out)])
    assert (out / "report.md").read_text() == report

    # compare: one row per run, the final-round accuracies of the results files.
    table = experiments.write_comparison([out], tmp_path / "comparison.md").read_text()
    me_row = next(line for line in table.splitlines() if "| me, 0 |" in line)
    cells = [c.strip() for c in me_row.split("|")[1:-1]]
    assert cells[1] == me["strategy"] and cells[3] == "2"
    assert cells[6] == " / ".join(f"{100 * me['rounds'][-1]['central'][e]['accuracy']:.1f}" for e in ("block1", "block3", "block5"))
    assert "| se, 0 |" in table
