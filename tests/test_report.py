"""The report's and the comparison's tables from hand-made results."""

import json

from mefl_app import experiments


def fake_results(personalized: float, rounds_to_target: int | None) -> dict:
    return {
        "target_accuracy": 0.75,
        "rounds": [{"personalized": {"block5": {"accuracy": personalized}}}],
        "rounds_to_target": {"personalized": {"block5": rounds_to_target}},
    }


def test_targets_without_single_exit_runs_are_not_judged_as_missed():
    deepest = {"me": "block5", "se": "block5"}
    lines = experiments._targets("fmnist", {0: fake_results(0.93, 1)}, {}, deepest)
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| target")]
    assert [row.rsplit("|", 2)[1].strip() for row in rows] == [
        "met", "not measured yet: no completed single-exit run", "met"]

    both = experiments._targets("fmnist", {0: fake_results(0.85, 9), 1: fake_results(0.87, 7)},
                                {0: fake_results(0.86, 5), 1: fake_results(0.86, 5)}, deepest)
    rows = [line for line in both if line.startswith("| ") and not line.startswith("| target")]
    # 86 % < 90 %; gap 0 is not beyond the spread; seed 0 needed 9 rounds.
    assert [row.rsplit("|", 2)[1].strip() for row in rows] == ["**missed**"] * 3
    assert experiments._targets("har", {}, {0: fake_results(0.8, 3)}, deepest) == []


def test_reports_of_tuning_runs_say_they_score_validation_parts():
    assert experiments._tuning_note({"validation-fraction": 0.0}) == []
    assert "validation part" in experiments._tuning_note({"validation-fraction": 0.2})[0]


def test_comparison_of_tuning_runs_marks_the_central_test_set_not_scored(tmp_path):
    """Tuning runs skip the central test set: their row says n/a there, and the table says that
    its "local test parts" are validation parts."""
    exits = ["block1", "block5"]
    last = {kind: {e: {"accuracy": acc} for e in exits}
            for kind, acc in (("personalized", 0.9), ("global_local", 0.8))}
    results = {"status": "completed", "strategy": "FedAvg", "exit_names": exits,
               "run_config": {"validation-fraction": 0.2},
               "rounds": [{**last, "bytes_down": 2e6, "bytes_up": 1e6, "seconds": 60.0}],
               "rounds_to_target": {"personalized": {"block5": 1}}}
    run = tmp_path / "c0" / "runs" / "me-seed0" / "attempt"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(results))
    table = experiments.write_comparison([tmp_path / "c0"], tmp_path / "comparison.md").read_text()
    row = next(line for line in table.splitlines() if "| me, 0 |" in line)
    assert [c.strip() for c in row.split("|")[1:-1]] == [
        "c0", "FedAvg", "me, 0", "1", "90.0 / 90.0", "80.0 / 80.0", "n/a", "1 / not reached", "3", "1.0"]
    assert "validation part" in table
