"""A stopped run continues from its last finished round (``resume-from``): checkpoints on disk,
clear refusals, and end-to-end the same round 3 as a run that never stopped."""

import json

import pytest
import torch
from flwr.app import ArrayRecord

from mefl import campaigns
from mefl_app.server.resume import load_resume_point
from mefl_app.server.run_folder import RESULTS_FILE, RunRecorder
from mefl_app.settings import RunSettings, SettingsError

EXITS = ["block1", "block3", "block5"]


def arrays(value: float) -> ArrayRecord:
    return ArrayRecord({"w": torch.full((2, 2), value)})


def stopped_run(run_dir, rounds=2, num_rounds=5, **config) -> dict:
    """A run folder as a run killed during round ``rounds + 1`` leaves it."""
    settings = RunSettings(num_server_rounds=num_rounds, **config)
    run_dir.mkdir(parents=True, exist_ok=True)
    recorder = RunRecorder(run_dir, {"run_config": settings.as_run_config()}, EXITS, target=0.5)
    for r in range(1, rounds + 1):
        recorder.round_started(r)
        recorder.add_bytes(r, down=100, up=50)
        recorder.record_value(r, "central", {e: {"accuracy": 0.3 * r, "loss": 1.0} for e in EXITS})
        recorder.finish_round(r, num_rounds, arrays(float(r)))
    recorder.round_started(rounds + 1)  # the round the process died in
    recorder.add_bytes(rounds + 1, down=100)
    recorder.write()
    return json.loads((run_dir / RESULTS_FILE).read_text())


def test_each_finished_round_replaces_the_checkpoint(tmp_path):
    results = stopped_run(tmp_path, rounds=2)
    assert results["checkpoint"] == {"round": 2, "file": "checkpoint-round2.pt"}
    assert sorted(p.name for p in tmp_path.glob("checkpoint*")) == ["checkpoint-round2.pt"]
    assert torch.load(tmp_path / "checkpoint-round2.pt")["w"].eq(2.0).all()


def test_resume_point_checks_the_stopped_run(tmp_path):
    stopped_run(tmp_path / "run", rounds=2, num_rounds=5)
    point = load_resume_point(tmp_path / "run", RunSettings(num_server_rounds=5))
    assert point.server_round == 2 and point.state_dict["w"].eq(2.0).all()
    # Longer (or differently placed) continuations are fine.
    load_resume_point(tmp_path / "run", RunSettings(num_server_rounds=9, output_dir="elsewhere"))

    refusals = {
        "no results.json": (tmp_path / "nothing", RunSettings()),
        "already has 2 rounds": (tmp_path / "run", RunSettings(num_server_rounds=2)),
        # Saved without its strategy's state (FedAdam's moments), as mefl wrote them before it kept it.
        "without its strategy's server state": (tmp_path / "run", RunSettings(num_server_rounds=5, strategy="fedadam")),
        "learning-rate: 0.01 there, 0.1 here": (tmp_path / "run", RunSettings(num_server_rounds=5, learning_rate=0.1)),
    }
    for message, (run_dir, settings) in refusals.items():
        with pytest.raises(SettingsError, match=message):
            load_resume_point(run_dir, settings)

    stopped_run(tmp_path / "early", rounds=0)
    with pytest.raises(SettingsError, match="no finished round"):
        load_resume_point(tmp_path / "early", RunSettings())

    (tmp_path / "run" / "checkpoint-round2.pt").unlink()  # e.g. a clone: results.json without its .pt
    with pytest.raises(SettingsError, match="checkpoint-round2.pt, which is not there"):
        load_resume_point(tmp_path / "run", RunSettings(num_server_rounds=5))


def test_continuation_takes_over_finished_rounds_only(tmp_path):
    before = stopped_run(tmp_path / "old", rounds=2, num_rounds=5)
    point = load_resume_point(tmp_path / "old", RunSettings(num_server_rounds=5))
    (tmp_path / "new").mkdir()
    recorder = RunRecorder(tmp_path / "new", {}, EXITS, target=0.5)
    recorder.continue_from(point)
    after = recorder.results
    assert [r["round"] for r in after["rounds"]] == [1, 2]  # the unfinished round 3 is dropped
    assert after["rounds"] == before["rounds"][:2]
    assert after["rounds_to_target"]["central"]["block1"] == 2  # 0.6 >= 0.5 first in round 2
    assert after["resumed"] == [{"from": str((tmp_path / "old").resolve()), "after_round": 2}]
    assert after["earlier_wall_seconds"] >= 0
    # The new folder can be continued on its own: it holds the checkpoint it started from.
    assert after["checkpoint"] == {"round": 2, "file": "checkpoint-round2.pt"}
    assert torch.load(tmp_path / "new" / "checkpoint-round2.pt")["w"].eq(2.0).all()
    recorder.round_started(3)
    recorder.add_bytes(3, down=10)
    recorder.finish_round(3, 5, arrays(3.0))
    assert after["rounds"][-1]["bytes_cumulative"] == before["rounds"][1]["bytes_cumulative"] + 10
    assert sorted(p.name for p in (tmp_path / "new").glob("checkpoint*")) == ["checkpoint-round3.pt"]


def test_a_completed_run_keeps_one_copy_of_its_final_model_and_can_be_extended(tmp_path):
    (tmp_path / "done").mkdir()
    settings = RunSettings(num_server_rounds=1)
    recorder = RunRecorder(tmp_path / "done", {"run_config": settings.as_run_config()}, EXITS, target=0.5)
    recorder.round_started(1)
    recorder.finish_round(1, 1, arrays(1.0))
    recorder.complete(arrays(1.0))
    assert sorted(p.name for p in (tmp_path / "done").glob("*.pt")) == ["model.pt"]
    assert recorder.results["checkpoint"] == {"round": 1, "file": "model.pt"}
    point = load_resume_point(tmp_path / "done", RunSettings(num_server_rounds=4))
    assert point.server_round == 1 and point.state_dict["w"].eq(1.0).all()


def test_campaigns_pick_the_attempt_to_continue(tmp_path):
    """Stopped runs and completed runs shorter than asked for are continued; runs with enough
    rounds are done; stateful strategies start over. Completed runs from before checkpoints were
    named in results.json continue from model.pt."""
    folder = tmp_path / "runs" / "me-seed0"
    stopped_run(folder / "20261127-000000-a", rounds=2, num_rounds=5)
    assert campaigns.stopped_attempt(folder, {"num-server-rounds": 5}) == folder / "20261127-000000-a"
    assert campaigns.stopped_attempt(folder, {"num-server-rounds": 2}) is None
    lost = folder / "20261127-000000-a" / "checkpoint-round2.pt"
    lost.rename(lost.with_suffix(".away"))  # a checkpoint that is gone: start over, not fail
    assert campaigns.stopped_attempt(folder, {"num-server-rounds": 5}) is None
    lost.with_suffix(".away").rename(lost)
    assert campaigns.stopped_attempt(folder, {"num-server-rounds": 5, "strategy": "fedadam"}) is None
    for method in ("depthfl", "hypemefed"):  # FedDyn's h, the hypernetworks: server state a checkpoint lacks
        assert campaigns.stopped_attempt(folder, {"num-server-rounds": 5, "method": method}) is None
    assert not campaigns.is_done(folder, {"num-server-rounds": 2})  # nothing completed yet

    old = folder / "20261127-000001-b"  # completed, 3 rounds, old format: no "checkpoint" key
    old.mkdir()
    (old / RESULTS_FILE).write_text(json.dumps({"status": "completed", "rounds": [{"round": r} for r in (1, 2, 3)]}))
    torch.save({"w": torch.zeros(1)}, old / "model.pt")
    assert campaigns.is_done(folder, {"num-server-rounds": 3})
    assert not campaigns.is_done(folder, {"num-server-rounds": 4})
    assert campaigns.stopped_attempt(folder, {"num-server-rounds": 4}) == old  # the newest attempt


def test_a_run_with_a_distillation_schedule_keeps_its_number_of_rounds(tmp_path):
    """The ramp and the warm-up are shares of num-server-rounds: a longer continuation would
    change the schedule of the rounds it takes over."""
    stopped_run(tmp_path / "old", rounds=2, num_rounds=5, distill_warmup=0.25)
    with pytest.raises(SettingsError, match="num-server-rounds: 5 there, 8 here"):
        load_resume_point(tmp_path / "old", RunSettings(num_server_rounds=8, distill_warmup=0.25))
    assert load_resume_point(tmp_path / "old", RunSettings(num_server_rounds=5, distill_warmup=0.25)).server_round == 2
