"""The campaign commands' options, checks and exit codes."""

import json

import pytest

from mefl.campaigns import campaign_ray_cluster
from mefl.cli import build_parser, main


@pytest.mark.parametrize("text, share", [("0", 0.0), ("0.0625", 0.0625), ("1", 1.0), ("2", 2.0)])
def test_gpus_per_client_takes_a_share_of_one_gpu_or_whole_gpus(text, share):
    args = ["study", "--task", "fmnist", "--out", "x", "--gpus-per-client", text]
    assert build_parser().parse_args(args).gpus_per_client == share


@pytest.mark.parametrize("text", ["-0.5", "1.5"])
def test_gpus_per_client_refuses_what_ray_cannot_schedule(text, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["study", "--task", "fmnist", "--out", "x", "--gpus-per-client", text])
    assert "share of one GPU" in capsys.readouterr().err


def test_a_misspelled_run_config_key_is_named_before_anything_starts(tmp_path, capsys):
    out = tmp_path / "campaign"
    assert main(["study", "--task", "har", "--out", str(out), "--run-config", "lerning-rate=0.1"]) == 2
    assert "unknown run-config key 'lerning-rate'; did you mean 'learning-rate'?" in capsys.readouterr().err
    assert not out.exists()


def test_a_bad_value_in_any_run_of_a_campaign_fails_before_the_first_run(tmp_path, capsys):
    out = tmp_path / "campaign"
    assert main(["study", "--task", "fmnist", "--out", str(out), "--run-config", "learning-rate=-1.0"]) == 2
    assert capsys.readouterr().err.strip() == "mefl study: error: learning-rate must lie in (0, inf), got -1.0"
    assert not out.exists()


def _run_folder(parent, name, status, error=None):
    folder = parent / name
    folder.mkdir(parents=True)
    results = {"status": status, "rounds": [{"round": 1, "seconds": 1.0}], "run_config": {"num-server-rounds": 3}}
    (folder / "results.json").write_text(json.dumps({**results, **({"error": error} if error else {})}))
    return folder


def test_status_exits_0_only_when_every_run_completed(tmp_path, capsys):
    done = _run_folder(tmp_path / "out", "a-run1", "completed")
    assert main(["status", str(done)]) == 0
    assert capsys.readouterr().out.strip() == f"{done}: completed after 1 of 3 rounds"
    _run_folder(tmp_path / "out", "b-run2", "failed", "NonFiniteError: round 1: ...")
    assert main(["status", str(tmp_path / "out")]) == 1  # an output-dir: every run in it
    assert "b-run2: failed after 1 of 3 rounds: NonFiniteError: round 1: ..." in capsys.readouterr().out
    assert main(["status", str(tmp_path / "nowhere")]) == 1
    assert "no results.json in" in capsys.readouterr().out


def test_status_of_a_campaign_reads_the_newest_attempt_of_each_run(tmp_path, capsys):
    runs = tmp_path / "campaign" / "runs"
    _run_folder(runs / "me-seed0", "20261201-000000-old", "failed", "stopped")
    _run_folder(runs / "me-seed0", "20261201-000001-new", "completed")
    assert main(["status", str(tmp_path / "campaign")]) == 0
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    assert main(["status", str(tmp_path / "empty")]) == 1  # no run at all is no success
    _run_folder(runs / "se-seed0", "20261201-000002-x", "interrupted", "stopped by a signal")
    assert main(["status", str(tmp_path / "campaign")]) == 1
    assert "interrupted after 1 of 3 rounds: stopped by a signal" in capsys.readouterr().out


def test_the_shard_command_refuses_nonsense_in_one_line_and_leaves_nothing_behind(tmp_path, capsys):
    out = tmp_path / "shards"
    assert main(["shards", "--num-partitions", "0", "--out", str(out)]) == 2
    assert capsys.readouterr().err == "mefl shards: error: --num-partitions must be >= 1, got 0\n"
    missing = tmp_path / "no-data"
    config = f"task='har' data-dir='{missing}'"
    assert main(["shards", "--num-partitions", "3", "--out", str(out), "--run-config", config]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "acc_data.mat not found" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob("shards*"))


def test_a_campaign_attaches_to_the_ray_cluster_ray_address_names_and_starts_none(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    said = []
    with campaign_ray_cluster(tmp_path / "work", said.append) as address:
        assert address == "10.0.0.1:6379"
    assert not (tmp_path / "work").exists() and "RAY_ADDRESS=10.0.0.1:6379" in said[0]
