"""Resource-aware exits: partial models, partial uploads and their aggregation, early exit."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian
from helpers import synthetic_task

from mefl_app import client_app, metrics
from mefl_app.evaluate import evaluate_exits, first_confident_exit
from mefl_app.metrics import ExitScores
from mefl_app.model.flops import forward_mflops_per_exit
from mefl_app.model.resnet import MultiExitResNet
from mefl_app.server.exit_levels import ExitLevelAggregation, PartialUploadError, average_per_array
from mefl_app.settings import RunSettings, SettingsError
from mefl_app.task import build_model, exit_level

pytestmark = pytest.mark.usefixtures("task_identity")


def test_threshold_policy_picks_the_first_confident_exit():
    confident, unsure = [9.0, 0.0, 0.0], [0.1, 0.0, 0.0]  # softmax max ~1.0 vs ~0.36
    logits = torch.tensor(
        [
            [confident, unsure, unsure, unsure],  # exit 1
            [confident, confident, unsure, unsure],  # exit 2
            [unsure, unsure, confident, unsure],  # exit 3
        ]
    )
    assert first_confident_exit(logits, 0.9).tolist() == [0, 1, 2, 2]  # the last sample falls through
    assert first_confident_exit(logits, 0.3).tolist() == [0, 0, 0, 0]
    assert first_confident_exit(logits, 1.0).tolist() == [2, 2, 2, 2]


def test_early_exit_evaluation_counts_accuracy_and_cost():
    data = synthetic_task(n=50)
    model = MultiExitResNet()
    cost = forward_mflops_per_exit(model, data.test.x[0])
    fixed = evaluate_exits(
        model, data.test, batch_size=7, device=torch.device("cpu"), thresholds=(1.0,), exit_mflops=cost
    )
    # Threshold 1.0 never stops early: the policy is the last exit.
    assert fixed.early_correct == [fixed.correct[-1]]
    assert fixed.early_average_mflops == pytest.approx([cost[-1]])
    cheap = evaluate_exits(
        model, data.test, batch_size=7, device=torch.device("cpu"), thresholds=(1e-9,), exit_mflops=cost
    )
    assert cheap.early_correct == [cheap.correct[0]] and cheap.early_average_mflops == pytest.approx([cost[0]])


def test_level_k_model_is_the_front_of_the_full_model():
    settings = RunSettings()
    full = build_model(settings, 10, (1, 28, 28)).state_dict()
    for level, blocks in ((1, 1), (2, 3), (3, 5)):
        part = build_model(settings, 10, (1, 28, 28), level)
        assert part.num_exits == level
        assert set(part.state_dict()) <= set(full)
        assert {k.split(".")[1] for k in part.state_dict() if k.startswith("blocks.")} == {
            str(b) for b in range(blocks)
        }


def test_exit_level_from_node_config_or_profile():
    settings = RunSettings(exit_profile="1:2,2:1,3:1")
    assert [exit_level(settings, {}, p) for p in range(4)] == [1, 1, 2, 3]
    assert exit_level(settings, {"exit-level": 2}, 0) == 2  # the device's own setting wins
    assert exit_level(RunSettings(), {}, 5) == 3
    with pytest.raises(SettingsError, match="covers 4 clients"):
        exit_level(settings, {}, 4)
    with pytest.raises(SettingsError, match="exit-profile"):
        RunSettings(exit_profile="4:2").validate()


def _train_message(arrays: ArrayRecord, server_round=1) -> Message:
    config = ConfigRecord({"num-classes": 10, "input-shape": [1, 28, 28], "server-round": server_round})
    return Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=1, message_type=MessageType.TRAIN)


def test_a_level_1_client_trains_and_uploads_only_level_1_arrays(monkeypatch):
    data = synthetic_task(n=200)
    monkeypatch.setattr(client_app, "load_client_shard", lambda *args: _shard(data))
    full = build_model(RunSettings(), 10, (1, 28, 28))
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"exit-level": 1},
        state=RecordDict(),
        run_config={"local-epochs": 1, "min-partition-size": 10},
    )
    reply = client_app.train(_train_message(ArrayRecord(full.state_dict())), context)
    uploaded = reply.content["arrays"]
    expected = set(build_model(RunSettings(), 10, (1, 28, 28), 1).state_dict())
    assert set(uploaded.keys()) == expected and len(expected) < len(full.state_dict())
    record = reply.content["metrics"]
    assert record[metrics.EXIT_LEVEL] == 1 and len(record[metrics.CORRECT]) == 1
    assert record[metrics.TRAIN_MFLOPS] > 0
    # It trained: its arrays moved away from the global ones.
    assert not np.allclose(
        uploaded["blocks.0.conv1.weight"].numpy(), full.state_dict()["blocks.0.conv1.weight"].numpy()
    )


def _shard(data):
    from mefl_app.data.shards import make_client_shard

    return make_client_shard(data, RunSettings(min_partition_size=10), 0, 1)


def _reply(arrays: dict[str, np.ndarray], examples: int, level: int, partition: int) -> Message:
    scores = ExitScores([1] * level, [0.5] * level, [4] * level)
    record = metrics.scores_record(partition, examples, scores, **{metrics.TRAIN_LOSS: 1.0})
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}), "metrics": record})
    message = Message(content, dst_node_id=0, message_type=MessageType.TRAIN)
    message.metadata.__dict__["_src_node_id"] = 100 + partition  # as if node 100+p had sent it
    return message


GLOBAL = {"a": np.array([0.0, 0.0]), "b": np.array([10.0]), "c": np.array([5.0])}


def test_mixed_uploads_average_each_array_over_its_senders():
    uploads = [
        ({"a": np.array([1.0, 2.0])}, 1, 0),  # level 1, weight 1
        ({"a": np.array([4.0, 8.0]), "b": np.array([1.0])}, 3, 1),  # level 2, weight 3
    ]
    records = [(ArrayRecord({k: Array(v) for k, v in u.items()}), w) for u, w, _ in uploads]
    averaged, sent = average_per_array(records, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}))
    # By hand: a = (1*[1,2] + 3*[4,8]) / 4 = [3.25, 6.5]; b = [1] (only sender); c kept at 5.
    np.testing.assert_allclose(averaged["a"].numpy(), [3.25, 6.5])
    np.testing.assert_allclose(averaged["b"].numpy(), [1.0])
    np.testing.assert_allclose(averaged["c"].numpy(), [5.0])
    assert sent == {"a", "b"}


class _Grid:
    def get_node_ids(self):
        return [100, 101, 102]


def _wrapper(inner):
    levels = {1: ["a"], 2: ["a", "b"], 3: ["a", "b", "c"]}
    strategy = ExitLevelAggregation(inner, levels)
    strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}), ConfigRecord(), _Grid())
    return strategy


def test_partial_aggregation_with_fedavg_matches_the_hand_computation():
    strategy = _wrapper(FedAvg(min_train_nodes=1, min_available_nodes=1))
    replies = [
        _reply({"a": np.array([1.0, 2.0])}, 1, 1, 0),
        _reply({"a": np.array([4.0, 8.0]), "b": np.array([1.0])}, 3, 2, 1),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["a"].numpy(), [3.25, 6.5])
    np.testing.assert_allclose(arrays["b"].numpy(), [1.0])
    np.testing.assert_allclose(arrays["c"].numpy(), [5.0])  # nobody sent it: previous value


def test_a_missing_array_keeps_its_previous_value_under_a_server_optimizer():
    strategy = _wrapper(FedAdam(min_train_nodes=1, min_available_nodes=1))
    replies = [
        _reply({"a": np.array([1.0, 2.0])}, 1, 1, 0),
        _reply({"a": np.array([1.0, 2.0]), "b": np.array([0.0])}, 1, 2, 1),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["c"].numpy(), [5.0])
    assert not np.allclose(arrays["a"].numpy(), [0.0, 0.0])


def test_downlink_is_trimmed_once_the_level_is_known():
    strategy = _wrapper(FedAvg(min_train_nodes=1, min_available_nodes=1))
    strategy.aggregate_train(
        1, [_reply({"a": np.array([1.0, 2.0])}, 1, 1, 0), _reply({k: v for k, v in GLOBAL.items()}, 1, 3, 2)]
    )
    messages = strategy.configure_train(
        2, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}), ConfigRecord(), _Grid()
    )
    sizes = {m.metadata.dst_node_id: set(m.content["arrays"].keys()) for m in messages}
    assert sizes[100] == {"a"} and sizes[102] == {"a", "b", "c"} and sizes[101] == {"a", "b", "c"}  # 101: unknown yet


def test_order_statistic_strategies_are_refused_on_mixed_uploads():
    strategy = _wrapper(FedMedian(min_train_nodes=1, min_available_nodes=1))
    with pytest.raises(PartialUploadError, match="FedMedian cannot aggregate partial uploads"):
        strategy.aggregate_train(1, [_reply({"a": np.array([1.0, 2.0])}, 1, 1, 0), _reply(GLOBAL, 1, 3, 2)])
    # Uniform uploads still pass straight through to it.
    arrays, _ = strategy.aggregate_train(1, [_reply(GLOBAL, 1, 3, 0), _reply(GLOBAL, 1, 3, 2)])
    np.testing.assert_allclose(arrays["b"].numpy(), [10.0])


def test_aggregates_keep_the_models_dtype_under_a_float64_server_optimizer():
    # FedAdam computes in float64; a float32 model must go back out as float32 (half the bytes).
    model = {k: v.astype(np.float32) for k, v in GLOBAL.items()}
    strategy = ExitLevelAggregation(FedAdam(min_train_nodes=1, min_available_nodes=1), {3: list(model)})
    strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in model.items()}), ConfigRecord(), _Grid())
    arrays, _ = strategy.aggregate_train(1, [_reply({k: v + 1 for k, v in model.items()}, 1, 3, 0)])
    assert {arrays[k].dtype for k in model} == {"float32"}
    assert 10.0 < arrays["b"].numpy()[0] < 11.0  # the server step moved towards the update


def test_tracking_hands_replies_to_the_strategy_in_partition_order(tmp_path):
    # Replies arrive in the order clients finish; float sums depend on order, so the inner
    # strategy must always get them in the same (partition) order for a seed to repeat exactly.
    from mefl_app.server.run_folder import RunRecorder
    from mefl_app.server.tracking import TrackingStrategy

    class Recording(FedAvg):
        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            self.seen = [int(metrics.metric_record_of(m.content)[metrics.PARTITION_ID]) for m in replies]
            return super().aggregate_train(server_round, replies)

    inner = Recording(min_train_nodes=1, min_available_nodes=1)
    recorder = RunRecorder(tmp_path, {}, ["exit1"], target=0.5)
    strategy = TrackingStrategy(inner, recorder)
    strategy.configure_train(1, ArrayRecord({"a": Array(np.zeros(2))}), ConfigRecord(), _Grid())
    replies = [_reply({"a": np.array([float(p), 1.0])}, 1 + p, 1, p) for p in (2, 0, 1)]
    for reply in replies:  # what a training reply carries besides the scores
        reply.content["metrics"].update(
            {metrics.TRAIN_SECONDS: 1.0, metrics.TRAIN_MFLOPS: 1.0, metrics.LABEL_COUNTS: [1, 0]}
        )
    arrays, _ = strategy.aggregate_train(1, replies)
    assert inner.seen == [0, 1, 2]
    np.testing.assert_allclose(arrays["a"].numpy(), [(0 * 1 + 1 * 2 + 2 * 3) / 6, 1.0])


def test_the_ensemble_predicts_with_the_average_of_the_exits_softmax(task_data):
    model = MultiExitResNet().eval()
    scores = evaluate_exits(model, task_data.test, batch_size=7, device=torch.device("cpu"))
    with torch.no_grad():
        probabilities = torch.stack(model(task_data.test.x)).softmax(dim=2).mean(dim=0)
    assert scores.ensemble_correct == int((probabilities.argmax(dim=1) == task_data.test.y).sum())
    pooled = metrics.pool([scores, scores])
    assert (
        pooled.ensemble_correct == 2 * scores.ensemble_correct and pooled.ensemble_accuracy == scores.ensemble_accuracy
    )
