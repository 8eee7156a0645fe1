"""The report's target table from hand-made results: judged per variant present."""

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
