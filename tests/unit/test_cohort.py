"""A cohort-trained round equals the per-client round (dropout off): the ResNet at every exit
level, every teacher, clipping, ragged shards (a single-sample last batch included) and a
federation of mixed levels."""

import copy

import pytest
import torch
from helpers import REPO, synthetic_task

from mefl_app.cohort import CohortResNet, cohort_multi_exit_loss, train_by_level, train_cohort
from mefl_app.model.loss import multi_exit_loss
from mefl_app.model.resnet import MultiExitResNet
from mefl_app.settings import RunSettings
from mefl_app.train import train_local

SIZES = (37, 49, 23)  # batch 8: ragged last batches; 49 leaves a single sample, which is skipped


def _models(exit_after, count, seed=0):
    torch.manual_seed(seed)
    models = [MultiExitResNet(10, exit_after=exit_after, dropout=0.0) for _ in range(count)]
    return models


def _shards(sizes):
    data = synthetic_task(n=sum(sizes) + 10).train
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [data.subset(torch.arange(s, s + n)) for s, n in zip(starts, sizes)]


def _trained(trainer, models, shards, settings, seeds):
    """The cohort trainer's result, each client's batches ordered by its own seed."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    return trainer(models, shards, settings, generators=generators, device=torch.device("cpu"))


def _per_client(models, shards, settings, seeds):
    states, losses = [], []
    for model, shard, seed in zip(models, shards, seeds):
        model = copy.deepcopy(model)
        losses.append(
            train_local(
                model, shard, settings, generator=torch.Generator().manual_seed(seed), device=torch.device("cpu")
            )
        )
        states.append({n: p.detach() for n, p in model.named_parameters()})
    return states, losses


def _assert_same(cohort_states, cohort_losses, states, losses):
    """Float tolerance: the cohort's NHWC grouped convolutions sum in another order than each
    client's own, and the differences grow over the steps (up to ~2e-4 after 24 steps of the
    5-block model at lr 0.05; a wrong batch, mask or gradient moves weights by 1e-2 and more)."""
    assert cohort_losses == pytest.approx(losses, rel=1e-4, abs=1e-6)
    for got, want in zip(cohort_states, states):
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=5e-4, msg=name)


@pytest.mark.parametrize("exit_after", [(1,), (1, 3), (1, 3, 5)])
@pytest.mark.parametrize("teacher", ["last", "mutual"])
def test_a_cohort_round_equals_each_clients_own_training(exit_after, teacher):
    settings = RunSettings(
        local_epochs=2, batch_size=8, learning_rate=0.05, max_grad_norm=1.0, distill_teacher=teacher, distill_weight=0.5
    )
    models, shards, seeds = _models(exit_after, 3), _shards(SIZES), [11, 12, 13]
    result = _trained(train_cohort, models, shards, settings, seeds)
    _assert_same(result.state_dicts, result.train_losses, *_per_client(models, shards, settings, seeds))


def test_a_mixed_level_federation_trains_as_cohorts_per_level_like_its_clients():
    settings = RunSettings(local_epochs=1, batch_size=8, exit_loss_weights="depth", distill_teacher="last-additive")
    models = _models((1,), 1, 1) + _models((1, 3), 2, 2) + _models((1, 3, 5), 1, 3)
    shards, seeds = _shards((30, 17, 41, 26)), [1, 2, 3, 4]
    result = _trained(train_by_level, models, shards, settings, seeds)
    _assert_same(result.state_dicts, result.train_losses, *_per_client(models, shards, settings, seeds))


def test_own_exit_training_leaves_the_other_heads_alone_as_the_per_client_loop_does():
    settings = RunSettings(local_epochs=1, batch_size=8, exit_training="own-exit", distill_weight=0.0)
    models, shards, seeds = _models((1, 3), 2), _shards((20, 30)), [5, 6]
    result = _trained(train_cohort, models, shards, settings, seeds)
    for state, model in zip(result.state_dicts, models):  # exit 1 weighs 0: no gradient, no weight decay
        torch.testing.assert_close(state["exits.0.3.weight"], model.exits[0][3].weight.detach())
    _assert_same(result.state_dicts, result.train_losses, *_per_client(models, shards, settings, seeds))


def test_the_grouped_forward_and_loss_are_each_clients_own():
    models = _models((1, 3, 5), 2)
    x = torch.randn(2, 5, 1, 28, 28)
    cohort = CohortResNet(models).eval()
    y = torch.randint(0, 10, (2, 5))
    mask = torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2])  # client 2: 3 real samples, 2 padding
    with torch.no_grad():
        grouped = cohort(x)
        losses = cohort_multi_exit_loss(grouped, y, mask, distill_weight=0.5, temperature=3.0)
        for c, model in enumerate(models):
            own = model.eval()(x[c])
            for e in range(3):
                torch.testing.assert_close(grouped[e][c], own[e], rtol=1e-4, atol=1e-5)
            n = int(mask[c].sum())
            want = multi_exit_loss([z[:n] for z in own], y[c, :n], distill_weight=0.5, temperature=3.0)
            torch.testing.assert_close(losses[c], want, rtol=1e-5, atol=1e-6)


def test_an_auto_cohort_size_follows_the_measurements_on_a_cpu_and_the_memory_on_a_gpu():
    from mefl_app.server.cohort_grid import auto_cohort_size

    assert auto_cohort_size("cpu", 40.0, 0.0, 8, 24)[0] == 4  # 24 clients: fastest in cohorts of 4
    assert auto_cohort_size("cpu", 40.0, 0.0, 100, 100)[0] == 5  # about 24 messages a round
    assert auto_cohort_size("cpu", 40.0, 0.0, 3, 500)[0] == 3  # no more than the largest level group
    assert auto_cohort_size("cpu", 40.0, 0.0, 1, 3)[0] == 0  # no two clients at one level
    assert auto_cohort_size("cuda", 40.0, 1000.0, 24, 24)[0] == 12  # half of 1000 MB / 40 MB
    assert auto_cohort_size("cuda", 1.0, 80_000.0, 8, 24)[0] == 8  # no more than the largest level group
    size, why = auto_cohort_size("cuda", 600.0, 1000.0, 8, 24)
    assert size == 0 and "600 MB" in why  # not even two fit


def test_the_server_picks_no_cohorts_where_they_cannot_train_exactly():
    """On a CPU the ResNet with group norm trains in cohorts of 4; BatchNorm and a level a node
    chose for itself get no cohorts on any device."""
    from mefl_app.server.census import LEVEL_CHOICE, NUM_TRAIN
    from mefl_app.server_app import pick_cohort_size
    from mefl_app.task import initial_model

    data = synthetic_task(n=64)
    census = {node: {"exit-level": 3, NUM_TRAIN: 20} for node in range(4)}
    for overrides, answers, expected, reason in [
        ({}, census, 4, "cohorts of up to 4 clients on the cpu"),
        ({"norm": "batch"}, census, 0, "only the ResNet with group norm"),
        ({}, {**census, 9: {"exit-level": 2, NUM_TRAIN: 5, LEVEL_CHOICE: {}}}, 0, "fixed levels"),
    ]:
        settings = RunSettings.from_app_dir(REPO, {"task": "fmnist", "device": "cpu", **overrides})
        model = initial_model(settings, data.num_classes, data.input_shape)
        size, why = pick_cohort_size(settings, model, data, answers)
        assert size == expected and reason in why, why


@pytest.mark.usefixtures("task_identity")
def test_the_cohort_grid_sends_one_message_per_cohort_and_answers_for_every_client():
    """Train and evaluate messages of 4 clients at one level, cohorts of 2: the grid below sees two
    ``train.cohort`` (then ``evaluate.cohort``) messages, the strategy gets 4 replies, each from its
    client's node with that client's record; query messages pass through."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

    from mefl_app.server.cohort_grid import PARTITIONS_KEY, CohortGrid, arrays_key, metrics_key

    class Below:
        sent: list[Message] = []

        def send_and_receive(self, messages, *, timeout=None):
            replies = []
            for m in messages:
                self.sent.append(m)
                content = {}
                for i, partition in enumerate(m.content["config"].get(PARTITIONS_KEY, [])):
                    content[metrics_key(i)] = MetricRecord({"partition-id": partition})
                    if m.metadata.message_type.startswith(MessageType.TRAIN):
                        content[arrays_key(i)] = ArrayRecord({"w": torch.full((1,), float(partition))})
                replies.append(Message(RecordDict(content), reply_to=m))
            return replies

    # Equal shard sizes, nodes in no order of their partitions: cohorts by partition, in every run.
    census = {node: {"partition-id": node - 10, "exit-level": 3, "num-train": 50} for node in (12, 10, 13, 11)}
    grid = CohortGrid(Below(), 2, census)
    for kind in (MessageType.TRAIN, MessageType.EVALUATE):
        Below.sent.clear()
        messages = [
            Message(RecordDict({"arrays": ArrayRecord(), "config": ConfigRecord({})}), dst_node_id=n, message_type=kind)
            for n in census
        ]
        replies = list(grid.send_and_receive(messages))
        assert [m.metadata.message_type for m in Below.sent] == [f"{kind}.cohort"] * 2
        assert [m.content["config"][PARTITIONS_KEY] for m in Below.sent] == [[0, 1], [2, 3]]
        assert sorted(r.metadata.src_node_id for r in replies) == [10, 11, 12, 13]
        for reply in replies:
            assert reply.metadata.message_type == kind
            assert reply.content["metrics"]["partition-id"] == reply.metadata.src_node_id - 10
            assert ("arrays" in reply.content) == (kind == MessageType.TRAIN)
            if kind == MessageType.TRAIN:  # that client's own arrays
                assert reply.content["arrays"]["w"].numpy()[0] == reply.metadata.src_node_id - 10


def test_a_cohort_message_answers_for_each_member_as_its_own_message_would(monkeypatch, task_identity):
    """The ClientApp's ``train.cohort`` and ``evaluate.cohort`` handlers, whose members share one
    model object, against one ``train`` / ``evaluate`` message per partition (dropout off): the
    same arrays to float tolerance, the same scores, for members at two exit levels in turn."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

    from mefl_app import client_app
    from mefl_app.data.shards import make_client_shard
    from mefl_app.server.cohort_grid import PARTITIONS_KEY, arrays_key, metrics_key
    from mefl_app.task import build_model

    data = synthetic_task(n=400)
    run_config = {
        "local-epochs": 1,
        "min-partition-size": 10,
        "exit-dropout": 0.0,
        "exit-profile": "1:2,3:2",
        "batch-size": 8,
    }
    settings = RunSettings.from_run_config(run_config)
    monkeypatch.setattr(
        client_app,
        "load_client_shard",
        lambda s, node, *a: make_client_shard(data, s, int(node["partition-id"]), int(node["num-partitions"])),
    )
    torch.manual_seed(0)
    model = build_model(settings, 10, (1, 28, 28))

    def context(partition):
        config = {"partition-id": partition, "num-partitions": 4}
        return Context(run_id=1, node_id=1, node_config=config, state=RecordDict(), run_config=run_config)

    def message(kind, partitions=None):
        config = {"num-classes": 10, "input-shape": [1, 28, 28], "server-round": 1}
        if partitions is not None:
            config[PARTITIONS_KEY] = partitions
            kind = f"{kind}.cohort"
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord(config)})
        return Message(content, dst_node_id=1, message_type=kind)

    for partitions in ([0, 1], [2, 3]):  # level 1, then level 3 (the profile's halves)
        trained = client_app.train_cohort_message(message(MessageType.TRAIN, partitions), context(partitions[0]))
        scored = client_app.evaluate_cohort_message(message(MessageType.EVALUATE, partitions), context(partitions[0]))
        for index, partition in enumerate(partitions):
            own = client_app.train(message(MessageType.TRAIN), context(partition))
            got, want = trained.content[arrays_key(index)], own.content["arrays"]
            assert got.keys() == want.keys()
            for name in want:
                torch.testing.assert_close(got[name].numpy(), want[name].numpy(), rtol=1e-3, atol=5e-4, msg=name)
            got_metrics, want_metrics = trained.content[metrics_key(index)], own.content["metrics"]
            assert got_metrics["partition-id"] == want_metrics["partition-id"] == partition
            own_scores = client_app.evaluate(message(MessageType.EVALUATE), context(partition)).content["metrics"]
            assert dict(scored.content[metrics_key(index)]) == dict(own_scores)
