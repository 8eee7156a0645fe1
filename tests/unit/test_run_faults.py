"""Run-time faults met by the server and the client, on hand-made replies: a run never ends
``completed`` on numbers that mean nothing, and every stop is recorded with its reason."""

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.run import RunNotRunningException
from helpers import synthetic_task

from mefl_app import metrics
from mefl_app.data.shards import make_client_shard
from mefl_app.health import NonFiniteError, strict_json
from mefl_app.metrics import ExitScores, pooled_metric_record
from mefl_app.model.resnet import MultiExitResNet
from mefl_app.server.census import FederationError, check_federation, short_reason
from mefl_app.server.run_folder import RunRecorder
from mefl_app.server.tracking import DeadWorker, TooFewReplies, TrackingStrategy
from mefl_app.settings import RunSettings
from mefl_app.train import train_local

pytestmark = pytest.mark.usefixtures("task_identity")
# How Flower's simulation engine reports an exception raised in a ClientApp.
CLIENT_APP_ERROR = (
    "<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException ClientAppException occurred. Message: "
)


class _Grid:
    def get_node_ids(self):
        return list(range(100, 104))


def _train_reply(partition: int, value: float = 1.0) -> Message:
    scores = ExitScores([1], [0.5], [4])
    extra = {metrics.TRAIN_LOSS: 1.0, metrics.TRAIN_SECONDS: 1.0, metrics.TRAIN_MFLOPS: 1.0, metrics.LABEL_COUNTS: [1]}
    record = metrics.scores_record(partition, 10, scores, **extra)
    content = RecordDict({"arrays": ArrayRecord({"a": Array(np.full(2, value))}), "metrics": record})
    message = Message(content, dst_node_id=0, message_type=MessageType.TRAIN)
    message.metadata.__dict__["_src_node_id"] = 100 + partition
    return message


def _error_reply(node: int, reason: str) -> Message:
    instruction = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    reply = Message(Error(code=0, reason=reason), reply_to=instruction)
    reply.metadata.__dict__["_src_node_id"] = node
    return reply


@pytest.fixture
def tracked(tmp_path):
    recorder = RunRecorder(tmp_path, {}, ["exit1"], target=0.5)
    inner = FedAvg(min_train_nodes=1, min_available_nodes=1, train_metrics_aggr_fn=pooled_metric_record)
    strategy = TrackingStrategy(inner, recorder, min_train_replies=1, min_train_fraction=0.5)
    strategy.configure_train(1, ArrayRecord({"a": Array(np.zeros(2))}), ConfigRecord(), _Grid())
    return strategy, recorder


def test_an_upload_with_non_finite_arrays_is_never_aggregated(tracked):
    strategy, recorder = tracked
    arrays, _ = strategy.aggregate_train(1, [_train_reply(0, 1.0), _train_reply(1, math.nan), _train_reply(2, 3.0)])
    np.testing.assert_allclose(arrays["a"].numpy(), [2.0, 2.0])  # the mean of partitions 0 and 2
    replies = recorder.results["rounds"][-1]["replies"]["train"]
    assert replies["ok"] == 2 and "non-finite arrays in the upload (a)" in replies["errors"]["101"]


def test_a_round_with_fewer_replies_than_min_train_fraction_of_those_sampled_fails(tracked):
    strategy, _ = tracked  # 4 sampled, 50 %: 2 needed
    reason = CLIENT_APP_ERROR + "boom'>"
    with pytest.raises(TooFewReplies, match=r"1 of 4 training replies succeeded, at least 2 needed.*first error"):
        strategy.aggregate_train(1, [_train_reply(0), _error_reply(101, reason)])


def test_a_round_in_which_nobody_trained_fails(tracked):
    strategy, _ = tracked  # exclusive training: the shallow clients answer, none of them trains
    idle = [_train_reply(p) for p in range(4)]
    for reply in idle:
        reply.content["metrics"][metrics.NUM_EXAMPLES] = 0
    with pytest.raises(TooFewReplies, match="none of the 4 successful training replies trained"):
        strategy.aggregate_train(1, idle)


def test_a_dead_simulation_worker_stops_the_run_naming_it(tracked):
    strategy, _ = tracked
    reason = "<class 'ray.exceptions.ActorDiedError'>:<'The actor died unexpectedly before finishing this task.'>"
    with pytest.raises(
        DeadWorker, match=r"round 1 train: the simulation worker serving node 103 died .*ActorDiedError"
    ):
        strategy.aggregate_train(1, [_train_reply(0), _train_reply(1), _train_reply(2), _error_reply(103, reason)])


def test_a_non_finite_aggregate_stops_the_run(tracked, monkeypatch):
    strategy, _ = tracked
    monkeypatch.setattr(
        FedAvg, "aggregate_train", lambda self, r, replies: (ArrayRecord({"a": Array(np.full(2, np.inf))}), None)
    )
    with pytest.raises(NonFiniteError, match=r"round 1: the aggregated model has non-finite arrays \(a\)"):
        strategy.aggregate_train(1, [_train_reply(0), _train_reply(1)])


def test_a_diverging_client_names_the_epoch_and_step_and_uploads_nothing(task_data):
    settings = RunSettings(learning_rate=1e9, local_epochs=2, min_partition_size=10, distill_weight=0.0)
    shard = make_client_shard(synthetic_task(n=200), settings, 0, 1)
    with pytest.raises(NonFiniteError, match=r"non-finite training loss \(nan\) in local epoch 1, step \d+"):
        train_local(
            MultiExitResNet(),
            shard.train,
            settings,
            generator=torch.Generator().manual_seed(0),
            device=torch.device("cpu"),
        )


def test_results_json_is_strict_json(tmp_path):
    recorder = RunRecorder(tmp_path, {}, ["exit1"], target=0.5)
    recorder.record_value(1, "train_loss", math.nan)
    recorder.record_value(1, "spread", [1.0, math.inf, -math.inf])
    recorder.write()

    def refuse(token):
        raise ValueError(f"{token} is not JSON (RFC 8259)")

    results = json.loads((tmp_path / "results.json").read_text(), parse_constant=refuse)
    assert results["rounds"][0]["train_loss"] is None and results["rounds"][0]["spread"] == [1.0, None, None]
    assert strict_json({"x": (math.nan, 2)}) == {"x": [None, 2]}


@pytest.mark.parametrize(
    "error, status",
    [
        (RuntimeError("boom"), "failed"),
        (KeyboardInterrupt(), "interrupted"),
        (SystemExit(3), "interrupted"),
        (RunNotRunningException(), "interrupted"),  # the ServerApp's next call after ``flwr stop``
    ],
)
def test_a_stop_by_a_signal_is_recorded_as_interrupted_and_a_fault_as_failed(tmp_path, error, status):
    recorder = RunRecorder(tmp_path, {}, ["exit1"], target=0.5)
    recorder.fail(error)
    recorder.interrupt("a late signal changes nothing")
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == status and results["error"]


def _answer(partition, num_partitions=2, level=3, from_node=0):
    return {
        "partition-id": partition,
        "num-partitions": num_partitions,
        "exit-level": level,
        "level-from-node": from_node,
    }


@pytest.mark.parametrize(
    "census, profile, message",
    [
        ({1: _answer(0), 2: _answer(0)}, "", r"partition 0 is held by 2 nodes \(1, 2\)"),
        ({1: _answer(0), 2: _answer(5)}, "", r"partition id\(s\) \[5\] outside 0..1 \(num-partitions 2\)"),
        ({1: _answer(0), 2: _answer(1, num_partitions=3)}, "", "the nodes disagree on num-partitions: 2, 3"),
        (
            {1: _answer(0), 2: _answer(1)},
            "1:8,2:8,3:8",
            r"exit-profile '1:8,2:8,3:8' covers 24 clients, the federation has 2 partitions",
        ),
        (
            {1: _answer(0), 2: _answer(1, level=0)},
            "1:1",
            r"exit-profile '1:1' covers 1 clients, the federation has 2 partitions",
        ),
    ],
)
def test_a_federation_that_does_not_fit_the_settings_is_refused(census, profile, message):
    with pytest.raises(FederationError, match=message):
        check_federation(RunSettings(exit_profile=profile), census)


def test_a_federation_that_fits_passes_and_node_levels_need_no_profile():
    check_federation(RunSettings(exit_profile="1:1,3:1"), {1: _answer(0, level=1), 2: _answer(1)})
    check_federation(
        RunSettings(exit_profile="1:5"), {1: _answer(0, level=2, from_node=1), 2: _answer(1, level=1, from_node=1)}
    )


@pytest.mark.parametrize(
    "reason, short",
    [
        (
            CLIENT_APP_ERROR
            + "partition 3, round 2: non-finite training loss (nan) in local epoch 1, step 4\nTraceback'>",
            "partition 3, round 2: non-finite training loss (nan) in local epoch 1, step 4",
        ),
        (
            "<class 'mefl_app.data.tensors.DataError'>:<'shard-file /x.npz is corrupt or truncated (bad)'>",
            "DataError: shard-file /x.npz is corrupt or truncated (bad)",
        ),
    ],
)
def test_error_reasons_are_cut_to_the_line_that_matters(reason, short):
    assert short_reason(reason) == short


def _gone_pid() -> int:
    """The pid of a process that has ended."""
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(gone.stdout)


def test_a_run_whose_process_is_gone_is_reported_killed_not_running(tmp_path):
    from mefl.campaigns import run_status

    for name in ("live", "dead"):
        (tmp_path / name).mkdir()
    live = RunRecorder(tmp_path / "live", {"run_config": {"num-server-rounds": 3}}, ["block5"], 0.75)
    assert run_status(live.run_dir)[0] == "running"  # this test's own process still runs
    dead = RunRecorder(tmp_path / "dead", {"run_config": {"num-server-rounds": 3}}, ["block5"], 0.75)
    dead.results["process"]["pid"] = _gone_pid()
    dead.write()
    status, line = run_status(dead.run_dir)
    assert status == "killed" and "its process is gone" in line


def test_a_stopped_campaign_records_its_run_interrupted_when_the_serverapp_could_not(tmp_path):
    """The campaign's stop ended the ServerApp before its exit handler wrote: the campaign writes
    "interrupted" itself, so the run reads as resumable, not as running or killed. A run whose
    process still lives is left alone; one killed outright, found by a later campaign, is recorded
    as such."""
    from mefl.campaigns import KILLED_BEFORE, record_abandoned, run_status

    for name in ("stopped", "live", "killed"):
        (tmp_path / name / "attempt").mkdir(parents=True)
    stopped = RunRecorder(tmp_path / "stopped" / "attempt", {"run_config": {"num-server-rounds": 3}}, ["block5"], 0.75)
    stopped.results["process"]["pid"] = _gone_pid()
    stopped.write()
    live = RunRecorder(tmp_path / "live" / "attempt", {"run_config": {"num-server-rounds": 3}}, ["block5"], 0.75)
    for folder in ("stopped", "live"):
        record_abandoned(tmp_path / folder)
    status, line = run_status(tmp_path / "stopped")
    assert status == "interrupted" and "ServerApp was ended" in line
    assert json.loads((stopped.run_dir / "results.json").read_text())["finished_at"]
    assert run_status(live.run_dir)[0] == "running"
    # A later campaign finds an attempt killed outright (its machine stopped): recorded as such.
    killed = RunRecorder(tmp_path / "killed" / "attempt", {"run_config": {"num-server-rounds": 3}}, ["block5"], 0.75)
    killed.results["process"]["pid"] = _gone_pid()
    killed.write()
    record_abandoned(tmp_path / "killed", KILLED_BEFORE)
    status, line = run_status(tmp_path / "killed")
    assert status == "interrupted" and KILLED_BEFORE in line
    # A run that cannot be continued starts afresh beside its killed attempt: that one is closed too.
    for attempt in ("1-older", "2-newer"):
        (tmp_path / "fresh" / attempt).mkdir(parents=True)
    older = RunRecorder(tmp_path / "fresh" / "1-older", {"run_config": {"num-server-rounds": 3}}, ["block5"], 0.75)
    older.results["process"]["pid"] = _gone_pid()
    older.write()
    newer = RunRecorder(tmp_path / "fresh" / "2-newer", {"run_config": {"num-server-rounds": 3}}, ["block5"], 0.75)
    record_abandoned(tmp_path / "fresh", KILLED_BEFORE)
    assert run_status(older.run_dir)[0] == "interrupted"
    assert run_status(newer.run_dir)[0] == "running"
