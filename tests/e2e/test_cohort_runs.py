"""Cohort training through Flower's real simulation engine: with dropout off, a run whose
clients train in cohorts (``cohort-size``) matches the per-client run, round by round, while
strategies, tracking and results see one reply per client."""

import pytest
from helpers import REPO, SHORT_RUN, completed_run

pytestmark = pytest.mark.e2e


def _run(superlink, small_fmnist, out, **extra):
    config = {
        "data-dir": small_fmnist,
        "output-dir": out,
        **SHORT_RUN,
        "exit-dropout": 0.0,
        "exit-profile": "1:1,3:3",
        **extra,
    }
    return completed_run(superlink, config, 4)


def test_a_cohort_run_matches_the_per_client_run(superlink, small_fmnist, tmp_path):
    alone = _run(superlink, small_fmnist, tmp_path / "alone")
    cohorts = _run(superlink, small_fmnist, tmp_path / "cohorts", **{"cohort-size": 2})  # level 3: cohorts of 2, 1
    central_size = alone["data"]["central_test_size"]
    for a, c in zip(alone["rounds"], cohorts["rounds"]):
        assert c["replies"]["train"]["ok"] == 4 and c["aggregated_partitions"] == [0, 1, 2, 3]
        assert c["replies"]["evaluate"]["ok"] == 4  # evaluated in cohorts too, one reply per client
        assert c["bytes_up"] == a["bytes_up"] and c["bytes_down"] == a["bytes_down"]  # as if sent per client
        for name in ("block1", "block3", "block5"):
            got, want = c["central"][name], a["central"][name]
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-3)
            assert abs(got["accuracy"] - want["accuracy"]) <= 1 / central_size + 1e-9
            for kind in ("personalized", "global_local"):
                assert c[kind][name]["per_client"].keys() == a[kind][name]["per_client"].keys()
        assert c["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)


def test_cohorts_are_refused_where_they_cannot_batch(superlink, small_fmnist, tmp_path):
    config = {"data-dir": small_fmnist, "output-dir": tmp_path, "cohort-size": 4, "strategy": "feddyn"}
    proc = superlink.run(REPO, config, num_supernodes=2)
    assert "cohort-size 4 needs no FedProx / FedDyn term in the local loss" in proc.stdout + proc.stderr
