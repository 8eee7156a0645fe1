"""The report's and the comparison's tables from hand-made results."""

import json

import pytest

from mefl import cli, compare, report, stats
from mefl.report_text import tuning_note


def fake_results(personalized: float, rounds_to_target: int | None) -> dict:
    return {
        "target_accuracy": 0.75,
        "rounds": [{"personalized": {"block5": {"accuracy": personalized}}}],
        "rounds_to_target": {"personalized": {"block5": rounds_to_target}},
    }


def test_targets_without_single_exit_runs_are_not_judged_as_missed():
    deepest = {"me": "block5", "se": "block5"}
    lines = report._targets("fmnist", {0: fake_results(0.93, 1)}, {}, deepest)
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| target")]
    assert [row.rsplit("|", 2)[1].strip() for row in rows] == [
        "met",
        "not measured yet: no completed single-exit run",
        "met",
    ]

    both = report._targets(
        "fmnist",
        {0: fake_results(0.85, 9), 1: fake_results(0.87, 7)},
        {0: fake_results(0.86, 5), 1: fake_results(0.86, 5)},
        deepest,
    )
    rows = [line for line in both if line.startswith("| ") and not line.startswith("| target")]
    # 86 % < 90 %; gap 0 is not beyond the spread; seed 0 needed 9 rounds.
    assert [row.rsplit("|", 2)[1].strip() for row in rows] == ["**missed**"] * 3
    assert report._targets("har", {}, {0: fake_results(0.8, 3)}, deepest) == []


def test_reports_of_tuning_runs_say_they_score_validation_parts():
    assert tuning_note({"validation-fraction": 0.0}) == []
    assert "validation part" in tuning_note({"validation-fraction": 0.2})[0]


def test_comparison_of_tuning_runs_marks_the_central_test_set_not_scored(tmp_path):
    """Tuning runs skip the central test set: their row says n/a there, and the table says that
    its "local test parts" are validation parts."""
    exits = ["block1", "block5"]
    last = {kind: {e: {"accuracy": acc} for e in exits} for kind, acc in (("personalized", 0.9), ("global_local", 0.8))}
    results = {
        "status": "completed",
        "strategy": "FedAvg",
        "exit_names": exits,
        "run_config": {"validation-fraction": 0.2},
        "rounds": [{**last, "bytes_down": 2e6, "bytes_up": 1e6, "seconds": 60.0}],
        "rounds_to_target": {"personalized": {"block5": 1}},
    }
    run = tmp_path / "c0" / "runs" / "me-seed0" / "attempt"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(results))
    table = compare.write_comparison([tmp_path / "c0"], tmp_path / "comparison.md").read_text()
    row = next(line for line in table.splitlines() if "| me, 0 |" in line)
    assert [c.strip() for c in row.split("|")[1:-1]] == [
        "c0",
        "FedAvg",
        "me, 0",
        "1",
        "90.0 / 90.0",
        "80.0 / 80.0",
        "n/a",
        "1 / not reached",
        "3",
        "1.0",
    ]
    assert "validation part" in table


def write_run(campaign, name: str, config: dict, personalized: float) -> None:
    """A completed run's results.json, as much of it as the report reads (one round, one client)."""
    variant = name.split("-")[0]
    exits = ["block1", "block3", "block5"] if variant == "me" else ["block5"]
    scores = {
        kind: {e: {"accuracy": personalized, "per_client": {"0": personalized}} for e in exits}
        for kind in ("personalized", "global_local", "central")
    }
    results = {
        "status": "completed",
        "strategy": "FedAvg",
        "exit_names": exits,
        "target_accuracy": 0.75,
        "run_config": {"task": "fmnist", "multi-exit": variant == "me", "seed": int(name[-1]), **config},
        "rounds": [{**scores, "bytes_down": 2e6, "bytes_up": 1e6, "seconds": 60.0}],
        "rounds_to_target": {kind: {exits[-1]: 1} for kind in scores},
        "bytes_to_target": {kind: {exits[-1]: 3e6} for kind in scores},
        "partitions": [{"train": 10}],
        "wall_seconds": 60.0,
        "started_at": "2026-11-28T08:00:00+00:00",
    }
    attempt = campaign / "runs" / name / "attempt"
    attempt.mkdir(parents=True)
    (attempt / "results.json").write_text(json.dumps(results))


def test_report_takes_single_exit_runs_from_a_campaign_that_differs_only_in_distillation(tmp_path):
    c0, c05 = tmp_path / "fmnist-c0", tmp_path / "fmnist"
    for seed, acc in ((0, 0.90), (1, 0.92)):
        write_run(c0, f"me-seed{seed}", {"distill-weight": 0.0}, acc)
        write_run(c05, f"se-seed{seed}", {"distill-weight": 0.5}, acc + 0.04)
    write_run(c05, "me-seed0", {"distill-weight": 0.5}, 0.5)  # not taken: only single-exit runs are
    write_run(c05, "se-seed2", {"distill-weight": 0.5}, 0.5)  # not taken: no multi-exit seed 2 to pair it with

    cli.main(["report", "--out", str(c0), "--se-from", str(c05)])
    text = (c0 / "report.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| personalized (each"))
    assert [c.strip() for c in row.split("|")[2:4]] == ["91.00 ± 1.41", "95.00 ± 1.41"]
    assert "`../fmnist/runs/se-seed0/attempt/results.json`" in text
    assert "`runs/me-seed0/attempt/results.json`" in text
    assert "The single-exit runs are those of `../fmnist`" in text
    assert "se-seed2" not in text
    # The folder remembers where its single-exit runs come from: a later report (or `run`) without
    # --se-from keeps them.
    (c0 / "report.md").unlink()
    cli.main(["report", "--out", str(c0)])
    assert (c0 / "report.md").read_text() == text

    # Any other difference in settings (here the number of local epochs) is refused.
    write_run(tmp_path / "e2", "se-seed0", {"distill-weight": 0.5, "local-epochs": 2}, 0.9)
    with pytest.raises(SystemExit, match="differs from multi-exit seed 0 in local-epochs"):
        report.write_report(c0, tmp_path / "e2")
    # Single-exit runs in both folders would be ambiguous.
    write_run(c0, "se-seed0", {"distill-weight": 0.0}, 0.9)
    with pytest.raises(SystemExit, match="holds single-exit runs of its own"):
        report.write_report(c0, c05)


def test_run_with_se_from_runs_the_multi_exit_variant_only(tmp_path, capsys):
    assert cli.main(["study", "--task", "fmnist", "--out", str(tmp_path), "--se-from", str(tmp_path)]) == 2
    assert "--variants me" in capsys.readouterr().err


def test_per_seed_table_pairs_the_two_models_of_a_seed():
    deepest = {"me": "block5", "se": "block5"}
    me = {0: fake_results(0.93, 1), 1: fake_results(0.90, 1)}
    se = {0: fake_results(0.92, 1), 2: fake_results(0.95, 1)}
    rows = [
        line for line in report._per_seed(me, se, deepest) if line.startswith("| ") and not line.startswith("| seed")
    ]
    # fake_results scores no central test set: n/a there; a seed only one model ran: no gap.
    assert [[c.strip() for c in row.split("|")[1:-1]] for row in rows] == [
        ["0", "93.00", "92.00", "+1.00", "n/a", "n/a", "n/a"],
        ["1", "90.00", "n/a", "n/a", "n/a", "n/a", "n/a"],
        ["2", "n/a", "95.00", "n/a", "n/a", "n/a", "n/a"],
    ]
    # Only seed 0 has both models: one gap, no spread, no t-test.
    assert "personalized +1.00, ME ahead in 1 of 1 (one-sided sign test p = 0.5)." in "\n".join(
        report._per_seed(me, se, deepest)
    )
    assert report._per_seed(me, {}, deepest) == []


def test_paired_summary_judges_the_gaps_of_the_seeds():
    # Three gaps of +1.94 / +0.65 / +0.91 points (results/har-c0, seeds 0-2): all favour ME.
    text = stats.paired_summary([0.0194, 0.0065, 0.0091])
    assert text.startswith("+1.17 ± 0.68, ME ahead in 3 of 3")
    assert "sign test p = 0.125" in text  # 1/2**3
    assert text.endswith("paired t-test p = 0.0488)")  # t = 1.17 / (0.68 / sqrt 3) = 2.97, 2 dof
    # A tie counts for neither side and leaves the sign test.
    assert stats.paired_summary([0.01, 0.0, -0.01]).startswith(
        "+0.00 ± 1.00, ME ahead in 1 of 3 (one-sided sign test p = 0.75"
    )


def test_a_stopped_command_says_so_in_one_line(monkeypatch, capsys):
    def stopped(args):
        raise KeyboardInterrupt("signal 15")

    monkeypatch.setattr(cli.methods, "configs_for", lambda *a, **k: stopped(None))
    assert cli.main(["methods", "--task", "har", "--out", "/nonexistent"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mefl methods: stopped; completed runs are kept" in err
