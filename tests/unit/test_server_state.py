"""What strategies and FedDyn's clients keep between rounds, saved and restored: a run continued
from its checkpoint goes on as it would have (server_state.py, client_state.py)."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from helpers import FourNodes, synthetic_task, train_reply

from mefl_app import client_app
from mefl_app.client_state import RUNS_KEY, load_client_state, save_client_state
from mefl_app.data.shards import make_client_shard
from mefl_app.server.exit_levels import ExitLevelAggregation
from mefl_app.server.feddyn import ALPHA_KEY
from mefl_app.server.hypernetwork import HypernetworkFill
from mefl_app.server.resume import load_resume_point
from mefl_app.server.run_folder import RunRecorder
from mefl_app.server.server_state import load_server_state, server_state
from mefl_app.server.strategies import build_strategy, keeps_server_state
from mefl_app.settings import RunSettings, SettingsError
from mefl_app.task import build_model

pytestmark = pytest.mark.usefixtures("task_identity")
START = ArrayRecord({"s": Array(np.zeros((4, 2), np.float32)), "t": Array(np.ones((6, 2), np.float32))})


def _replies(server_round):
    """Round ``server_round``'s uploads: a deep client (s and t) and a shallow one (s only)."""
    rng = np.random.default_rng(server_round)
    deep = {"s": rng.normal(size=(4, 2)), "t": rng.normal(size=(6, 2))}
    return [train_reply(deep, 0, level=2), train_reply({"s": rng.normal(size=(4, 2))}, 1, level=1)]


def _round(strategy, server_round, arrays):
    list(strategy.configure_train(server_round, arrays, ConfigRecord(), FourNodes()))
    return strategy.aggregate_train(server_round, _replies(server_round))[0]


def _strategy(name):
    settings = RunSettings(
        strategy=name.removesuffix("+hypernetworks"),
        min_train_nodes=1,
        min_available_nodes=1,
        server_momentum=0.9 if name == "fedavgm" else 0.0,  # FedAvgM keeps no momentum without it
    )
    strategy = ExitLevelAggregation(build_strategy(settings), {1: ["s"], 2: ["s", "t"]})  # as the app wraps it
    if name.endswith("+hypernetworks"):  # HypeMeFed's fill around the strategy: its networks are state too
        strategy = HypernetworkFill(strategy, [("s", "t")], rank=2, epochs=3, seed=0)
    return strategy


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad", "fedavgm", "feddyn", "fedavg+hypernetworks"])
def test_a_strategy_given_its_saved_state_aggregates_round_3_as_the_uninterrupted_one(name, tmp_path):
    whole = _strategy(name)
    arrays = _round(whole, 2, _round(whole, 1, START))
    torch.save(server_state(whole), tmp_path / "state.pt")  # what the checkpoint holds
    expected = _round(whole, 3, arrays)

    continued = _strategy(name)
    load_server_state(continued, torch.load(tmp_path / "state.pt", weights_only=True))
    got = _round(continued, 3, arrays)
    for key in expected.keys():
        np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), rtol=1e-6)
    restarted = _round(_strategy(name), 3, arrays)  # without the state: another aggregate
    assert any(not np.allclose(restarted[k].numpy(), expected[k].numpy()) for k in expected.keys())


def test_each_state_is_saved_once_a_stateless_strategy_saves_nothing_and_a_foreign_state_is_refused():
    assert list(server_state(_strategy("feddyn"))) == ["1:FedDyn"]  # not also for the wrapper around it
    assert list(server_state(_strategy("fedavg+hypernetworks"))) == ["0:HypernetworkFill"]
    assert server_state(_strategy("fedavg")) == {}
    with pytest.raises(ValueError, match="1:FedAdam"):
        load_server_state(_strategy("fedavg"), server_state(_strategy("fedadam")))


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "feddyn"])
def test_resume_knows_from_the_settings_alone_which_strategies_save_state(name):
    """``keeps_server_state`` (asked before any strategy exists) agrees with what is saved."""
    strategy = _strategy(name)
    _round(strategy, 2, _round(strategy, 1, START))
    assert bool(server_state(strategy)) == keeps_server_state(RunSettings(strategy=name))


def test_the_checkpoint_carries_the_server_state_to_the_continuation(tmp_path):
    """The recorder writes the state beside each round's model, keeps only the newest, and
    resume-from loads both; a FedDyn run whose clients kept their state in memory is refused."""
    (tmp_path / "run").mkdir()
    settings = RunSettings(strategy="fedadam", num_server_rounds=5)
    recorder = RunRecorder(tmp_path / "run", {"run_config": settings.as_run_config()}, ["block5"], 0.5)
    for server_round in (1, 2):
        recorder.round_started(server_round)
        recorder.finish_round(server_round, 5, START, {"0:FedAdam": {"m_t": {"s": torch.full((2,), server_round)}}})
    assert sorted(p.name for p in (tmp_path / "run").glob("*.pt")) == ["checkpoint-round2.pt", "server-state-round2.pt"]
    point = load_resume_point(tmp_path / "run", settings)
    assert point.server_round == 2 and point.server_state["0:FedAdam"]["m_t"]["s"].eq(2).all()
    feddyn = RunSettings(strategy="feddyn", num_server_rounds=5)
    with pytest.raises(SettingsError, match="client-state-dir is empty"):
        load_resume_point(tmp_path / "run", feddyn)
    with pytest.raises(SettingsError, match="adaptive DP clipping"):
        load_resume_point(tmp_path / "run", RunSettings(strategy="fedadam", num_server_rounds=5, dp="adaptive"))


def test_a_client_finds_the_newest_state_before_the_round_in_the_newest_run_that_has_one(tmp_path):
    for server_round in (1, 2, 3):
        save_client_state(tmp_path, "old", 7, server_round, {"g": torch.full((2,), float(server_round))})
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["partition-7-round2.pt", "partition-7-round3.pt"]
    assert load_client_state(tmp_path, ["old"], 7, 4)["g"].eq(3).all()
    assert load_client_state(tmp_path, ["old"], 7, 3)["g"].eq(2).all()  # round 3 was trained again
    assert load_client_state(tmp_path, ["new", "old"], 7, 4)["g"].eq(3).all()  # the continuation has none yet
    save_client_state(tmp_path, "new", 7, 4, {"g": torch.full((2,), 4.0)})
    assert load_client_state(tmp_path, ["new", "old"], 7, 5)["g"].eq(4).all()
    assert load_client_state(tmp_path, ["old"], 8, 4) is None  # another client


def test_a_feddyn_client_in_a_fresh_process_continues_from_the_state_on_its_disk(monkeypatch, tmp_path):
    """Round 2 on a node that lost its Context.state (a continued run) trains as round 2 on the
    node that kept it."""
    shard = make_client_shard(synthetic_task(n=200), RunSettings(min_partition_size=10), 0, 1)
    monkeypatch.setattr(client_app, "load_client_shard", lambda *args: shard)
    model = build_model(RunSettings(), 10, (1, 28, 28))
    run_config = {"local-epochs": 1, "min-partition-size": 10, "client-state-dir": str(tmp_path)}

    def train(server_round, context, runs):
        config = {"num-classes": 10, "input-shape": [1, 28, 28], "server-round": server_round, ALPHA_KEY: 0.1}
        config = ConfigRecord({**config, RUNS_KEY: runs})
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": config})
        reply = client_app.train(Message(content, dst_node_id=1, message_type=MessageType.TRAIN), context)
        return reply.content["arrays"].to_torch_state_dict()

    def fresh():
        return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config)

    kept = fresh()
    train(1, kept, ["stopped"])
    expected = train(2, kept, ["stopped"])
    got = train(2, fresh(), ["continued", "stopped"])
    restarted = train(2, fresh(), ["elsewhere"])  # no state found: g starts at zero
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])
    assert any(not torch.allclose(restarted[n], expected[n]) for n in expected if n.endswith("weight"))
