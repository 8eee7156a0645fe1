"""The field's methods on hand computations: DepthFL's mutual distillation and ramp, ScaleFL's
additive distillation, depth weights and warm-up, FedDyn's server and client state, the presets."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from helpers import FourNodes, synthetic_task, train_reply

from mefl_app import client_app, metrics
from mefl_app.data.shards import make_client_shard
from mefl_app.metrics import pooled_metric_record
from mefl_app.model.loss import distill_schedule, multi_exit_loss
from mefl_app.server.feddyn import ALPHA_KEY, FedDyn
from mefl_app.settings import RunSettings, SettingsError
from mefl_app.task import build_model
from mefl_app.train import FedDynState, train_local

pytestmark = pytest.mark.usefixtures("task_identity")


def _kl(teacher, student, t):
    p = F.softmax(teacher / t, dim=1)
    return (p * (p.log() - F.log_softmax(student / t, dim=1))).sum(dim=1).mean()


def test_mutual_distillation_is_depthfls_every_exit_from_every_other_exit():
    torch.manual_seed(0)
    z, y, c, t = [torch.randn(5, 4) for _ in range(3)], torch.randint(0, 4, (5,)), 0.7, 2.0
    by_hand = sum(
        F.cross_entropy(z[k], y) + c / 2 * t**2 * sum(_kl(z[j], z[k], t) for j in range(3) if j != k) for k in range(3)
    )
    loss = multi_exit_loss(z, y, distill_weight=c, temperature=t, teacher="mutual")
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert multi_exit_loss(z[:1], y, distill_weight=c, temperature=t, teacher="mutual").item() == pytest.approx(
        F.cross_entropy(z[0], y).item()
    )


def test_mutual_distillation_never_pulls_a_teacher():
    z = [torch.randn(5, 4, requires_grad=True) for _ in range(2)]
    y = torch.randint(0, 4, (5,))
    multi_exit_loss(z, y, distill_weight=1.0, temperature=1.0, teacher="mutual").backward()
    alone = [p.detach().clone().requires_grad_() for p in z]
    for k in range(2):  # each exit's gradient: its own CE and its own KL towards the other (detached)
        (F.cross_entropy(alone[k], y) + _kl(alone[1 - k].detach(), alone[k], 1.0)).backward()
        assert torch.allclose(z[k].grad, alone[k].grad, atol=1e-6)


def test_additive_distillation_with_depth_weights_is_scalefls_loss():
    torch.manual_seed(1)
    z, y, c, t = [torch.randn(6, 5) for _ in range(3)], torch.randint(0, 5, (6,)), 0.05, 3.0
    weights = RunSettings(exit_loss_weights="depth").loss_weights()
    assert weights == pytest.approx((1 / 6, 2 / 6, 3 / 6))
    assert RunSettings(exit_loss_weights="depth").loss_weights(2) == pytest.approx((1 / 3, 2 / 3))
    by_hand = sum(weights[k] * (F.cross_entropy(z[k], y) + c * t**2 * _kl(z[2], z[k], t)) for k in range(2))
    by_hand = by_hand + weights[2] * F.cross_entropy(z[2], y)
    loss = multi_exit_loss(z, y, distill_weight=c, temperature=t, teacher="last-additive", exit_weights=weights)
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_distillation_schedules_depthfls_ramp_and_scalefls_warm_up():
    assert distill_schedule(0.5, 7, 50) == 0.5  # no schedule: the weight itself
    ramp = [distill_schedule(1.0, r, 100, ramp=0.3) for r in (1, 16, 31, 100)]  # R = 30 rounds
    assert ramp == pytest.approx([math.exp(-5.0), math.exp(-5.0 * 0.5**2), 1.0, 1.0])
    warm = [distill_schedule(0.05, r, 40, warmup=0.25) for r in (1, 10, 11, 40)]
    assert warm == [0.0, 0.0, 0.05, 0.05]


def test_feddyn_server_state_and_aggregate_per_array_by_hand():
    alpha = 0.5
    strategy = FedDyn(alpha, min_train_nodes=1, min_available_nodes=1, train_metrics_aggr_fn=pooled_metric_record)
    previous = ArrayRecord(
        {"a": Array(np.array([0.0, 0.0], dtype=np.float32)), "b": Array(np.array([4.0], dtype=np.float32))}
    )
    messages = list(strategy.configure_train(1, previous, ConfigRecord(), FourNodes()))
    assert all(m.content["config"][ALPHA_KEY] == alpha for m in messages)  # the clients learn alpha
    # Two clients hold "a" (one of them also "b"): different depths.
    arrays, aggregate = strategy.aggregate_train(
        1, [train_reply({"a": [1.0, 2.0]}, 0), train_reply({"a": [3.0, 6.0], "b": [8.0]}, 1)]
    )
    h_a = -alpha * 2 / 4 * np.array([2.0, 4.0])  # mean a = [2, 4], |P| = 2
    h_b = -alpha * 1 / 4 * np.array([4.0])  # mean b = [8], |P| = 1, previous 4
    np.testing.assert_allclose(strategy.h["a"], h_a)
    np.testing.assert_allclose(arrays["a"].numpy(), np.array([2.0, 4.0]) - h_a / alpha)
    np.testing.assert_allclose(arrays["b"].numpy(), np.array([8.0]) - h_b / alpha)
    assert aggregate[metrics.AGGREGATED_PARTITIONS] == [0, 1]
    # Round 2: an array nobody sends keeps its value and its h; h accumulates.
    list(strategy.configure_train(2, arrays, ConfigRecord(), FourNodes()))
    again, _ = strategy.aggregate_train(2, [train_reply({"a": arrays["a"].numpy() + 1.0}, 0)])
    np.testing.assert_allclose(again["b"].numpy(), arrays["b"].numpy())
    np.testing.assert_allclose(strategy.h["b"], h_b)
    np.testing.assert_allclose(strategy.h["a"], h_a - alpha * 1 / 4 * np.ones(2))


def test_feddyn_client_state_update_is_g_minus_alpha_times_the_drift(task_data):
    settings = RunSettings(local_epochs=1, min_partition_size=10)
    model = build_model(settings, 10, (1, 28, 28), 1)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = FedDynState(0.1, {n: torch.full_like(p, 0.01) for n, p in model.named_parameters()})
    before = {n: g.clone() for n, g in state.grads.items()}
    generator = torch.Generator().manual_seed(0)
    train_local(model, task_data.train, settings, generator=generator, device=torch.device("cpu"), feddyn=state)
    for name, p in model.named_parameters():
        torch.testing.assert_close(state.grads[name], before[name] - 0.1 * (p.detach() - start[name]))


def test_a_feddyn_clients_state_stays_on_its_node_between_rounds(monkeypatch):
    data = synthetic_task(n=200)
    shard = make_client_shard(data, RunSettings(min_partition_size=10), 0, 1)
    monkeypatch.setattr(client_app, "load_client_shard", lambda *args: shard)
    context = Context(
        run_id=1,
        node_id=1,
        node_config={},
        state=RecordDict(),
        run_config={"local-epochs": 1, "min-partition-size": 10},
    )
    model = build_model(RunSettings(), 10, (1, 28, 28))
    states = []
    for server_round in (1, 2):
        config = ConfigRecord(
            {"num-classes": 10, "input-shape": [1, 28, 28], "server-round": server_round, ALPHA_KEY: 0.1}
        )
        message = Message(
            RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": config}),
            dst_node_id=1,
            message_type=MessageType.TRAIN,
        )
        client_app.train(message, context)
        states.append(context.state[client_app.FEDDYN_STATE].to_torch_state_dict())
    assert set(states[0]) == {n for n, _ in model.named_parameters()}
    assert any(not torch.equal(states[0][n], states[1][n]) for n in states[0])  # round 2 started from round 1's


def test_a_method_fills_the_keys_left_at_their_default_and_keeps_the_others():
    depthfl = RunSettings.from_run_config({"method": "depthfl"})
    assert (depthfl.distill_teacher, depthfl.distill_weight, depthfl.strategy) == ("mutual", 1.0, "feddyn")
    own = RunSettings.from_run_config({"method": "depthfl", "strategy": "fedprox", "distill-temperature": 2.0})
    assert (own.strategy, own.distill_temperature, own.distill_ramp) == ("fedprox", 2.0, 0.3)
    scalefl = RunSettings.from_run_config({"method": "scalefl"})
    assert (scalefl.exit_loss_weights, scalefl.distill_warmup, scalefl.distill_teacher) == (
        "depth",
        0.25,
        "last-additive",
    )
    assert RunSettings.from_run_config({"method": "exclusive"}).exit_training == "exclusive"
    assert RunSettings.from_run_config({}) == RunSettings()  # the study: nothing changes
    with pytest.raises(
        SettingsError, match="method must be one of study, exclusive, depthfl, hypemefed, inclusivefl, scalefl"
    ):
        RunSettings.from_run_config({"method": "fedbn"})


@pytest.mark.parametrize(
    "config",
    [
        {"strategy": "krum"},
        {"strategy": "fedmedian"},
        {"strategy": "qfedavg"},
        {"dp": "fixed", "dp-num-sampled-clients": 3},
    ],
)
def test_a_strategy_that_cannot_aggregate_mixed_exit_levels_is_refused_before_round_1(config):
    with pytest.raises(SettingsError, match="cannot aggregate the partial uploads of clients at different exit levels"):
        RunSettings.from_run_config({"exit-profile": "1:1,3:2", **config})
    with pytest.raises(SettingsError, match="cannot aggregate the partial uploads"):
        RunSettings.from_run_config({"exit-profile": "2:3", **config})  # one level, but not the deepest
    RunSettings.from_run_config({"exit-profile": "3:3", **config})  # every reply is the whole model


def test_the_hypernetwork_generates_the_next_layers_shape_and_learns_through_its_maps():
    from mefl_app.server.hypernetwork import LowRankHypernetwork

    network = LowRankHypernetwork((16, 16, 3, 3), (32, 16, 3, 3), rank=100)
    assert network.rank == 48  # capped by the (16 x 3) x (16 x 3) view of the source
    source = torch.randn(16, 16, 3, 3)
    out = network(source)
    assert out.shape == (32, 16, 3, 3)
    F.mse_loss(out, torch.randn(32, 16, 3, 3)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in network.parameters())
    lstm = LowRankHypernetwork((256, 3), (256, 64), rank=8)
    assert lstm(torch.randn(256, 3)).shape == (256, 64)


def test_hypernetworks_fill_only_the_layers_a_client_did_not_send():
    from mefl_app.server.hypernetwork import HypernetworkFill

    class Keep:  # a wrapped strategy that shows what it was handed
        def aggregate_train(self, server_round, replies):
            self.seen = [next(iter(m.content.array_records.values())) for m in replies]
            return None, None

    pairs = [("s", "t"), ("t", "u")]
    shallow = train_reply({"s": np.ones((4, 2))}, 0)
    deep = train_reply({"s": np.ones((4, 2)), "t": np.full((6, 2), 2.0), "u": np.zeros((6, 2))}, 1)
    fill = HypernetworkFill(Keep(), pairs, rank=2, epochs=3, seed=0)
    fill.aggregate_train(1, [shallow, deep])
    shallow_after, deep_after = fill.inner.seen
    assert set(shallow_after.keys()) == {"s", "t", "u"}  # t from s, then u from the generated t
    assert shallow_after["t"].numpy().shape == (6, 2) and shallow_after["u"].numpy().shape == (6, 2)
    np.testing.assert_array_equal(shallow_after["s"].numpy(), np.ones((4, 2)))  # what it sent stays
    for name in ("s", "t", "u"):  # a client that sent everything is left as it was
        np.testing.assert_array_equal(deep_after[name].numpy(), deep.content["arrays"][name].numpy())
    assert set(fill.networks) == {("s", "t"), ("t", "u")}  # trained on the deep client's pairs


def test_own_exit_training_teaches_each_client_only_its_deepest_exit(task_data):
    settings = RunSettings.from_run_config({"method": "inclusivefl", "local-epochs": 1, "min-partition-size": 10})
    assert settings.loss_weights(2) == (0.0, 1.0) and settings.loss_weights(1) == (1.0,)
    assert all(settings.trains_at(level) for level in (1, 2, 3))
    RunSettings.from_run_config({"method": "inclusivefl", "exit-profile": "1:1,2:1,3:1"})  # every level has a loss
    model = build_model(settings, 10, (1, 28, 28), 2)
    heads = [[p.detach().clone() for p in head.parameters()] for head in model.exits]
    block = model.blocks[0].conv1.weight.detach().clone()
    generator = torch.Generator().manual_seed(0)
    train_local(model, task_data.train, settings, generator=generator, device=torch.device("cpu"))
    moved = [
        any(not torch.equal(a, b) for a, b in zip(old, head.parameters())) for old, head in zip(heads, model.exits)
    ]
    assert moved == [False, True] and not torch.equal(block, model.blocks[0].conv1.weight)


def test_momentum_distillation_blends_each_shallower_levels_top_layer_by_hand():
    from mefl_app.server.momentum_distillation import MomentumDistillation

    class Keep:  # a wrapped strategy that shows what it was handed
        def configure_train(self, server_round, arrays, config, grid):
            return []

        def aggregate_train(self, server_round, replies):
            self.seen = [
                {k: v.numpy() for k, v in next(iter(m.content.array_records.values())).items()} for m in replies
            ]
            return None, None

    previous = {"layers.0.w": [1.0, 1.0], "layers.1.w": [2.0, 2.0], "layers.2.w": [3.0, 3.0]}
    pairs = {1: [("layers.0.w", ["layers.1.w"])], 2: [("layers.1.w", ["layers.2.w"])]}
    replies = [
        train_reply({"layers.0.w": [0.9, 0.9], "layers.1.w": [1.8, 1.8], "layers.2.w": [2.0, 2.4]}, 0, 3, 1),
        train_reply({"layers.0.w": [0.9, 0.9], "layers.1.w": [1.8, 1.8], "layers.2.w": [2.4, 2.8]}, 1, 3, 3),
        train_reply({"layers.0.w": [0.8, 0.8], "layers.1.w": [1.9, 2.1]}, 2, 2, 2),
        train_reply({"layers.0.w": [0.5, 1.5]}, 3, 1, 5),
    ]
    blend = MomentumDistillation(Keep(), pairs, beta=0.2)
    blend.configure_train(
        1, ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in previous.items()}), None, None
    )
    blend.aggregate_train(1, replies)
    deep_a, deep_b, middle, shallow = blend.inner.seen
    # The deepest level is left as it was.
    np.testing.assert_allclose(deep_a["layers.1.w"], [1.8, 1.8])
    np.testing.assert_allclose(deep_b["layers.2.w"], [2.4, 2.8])
    # Level 2: m = 3 - (1 * [2.0, 2.4] + 3 * [2.4, 2.8]) / 4 = [0.7, 0.3]; its own step [0.1, -0.1];
    # blended 0.2 m + 0.8 step = [0.22, -0.02]. Its lower layer is not its top: unchanged.
    np.testing.assert_allclose(middle["layers.1.w"], [1.78, 2.02], rtol=1e-6)
    np.testing.assert_allclose(middle["layers.0.w"], [0.8, 0.8])
    # Level 1 learns from level 2's blended step: m = [0.22, -0.02]; own step [0.5, -0.5].
    np.testing.assert_allclose(shallow["layers.0.w"], [1 - 0.444, 1 + 0.404], rtol=1e-6)
    # Without a deeper client this round the momentum is zero: only (1 - beta) of the own step.
    blend.aggregate_train(2, [train_reply({"layers.0.w": [0.5, 1.5]}, 3, 1, 5)])
    np.testing.assert_allclose(blend.inner.seen[0]["layers.0.w"], [0.6, 1.4], rtol=1e-6)


def test_momentum_distillation_pairs_only_layers_of_one_shape():
    from mefl_app.server.momentum_distillation import momentum_pairs

    def pairs(task):
        settings = RunSettings(task=task)
        model = build_model(settings, 10, (151, 3) if task == "har" else (1, 28, 28))
        shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
        return momentum_pairs("layers" if task == "har" else "blocks", settings.exit_positions, shapes)

    lstm = pairs("har")
    # Layer 1 reads 3 channels, layer 2 the hidden state: their input weights differ in shape.
    assert dict(lstm[1]) == {
        n: [f"layers.1.{n[9:]}"] for n in ("layers.0.weight_hh_l0", "layers.0.bias_ih_l0", "layers.0.bias_hh_l0")
    }
    assert [top for top, _ in lstm[2]] == [
        f"layers.1.{n}" for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    ]
    assert pairs("fmnist") == {1: [], 2: []}  # 16 -> 32 -> 64 channels: nothing has the shape of the block below
    with pytest.raises(SettingsError, match="momentum-distillation .* needs a multi-exit model whose shallower"):
        RunSettings.from_run_config({"method": "inclusivefl", "exit-training": "exclusive"})


def _fake_run(accuracies, mflops):
    central = {f"e{i}": {"accuracy": a} for i, a in enumerate(accuracies, 1)}
    return {"rounds": [{"central": central, "client_train_mflops": {"0": mflops}}] * 5}


def test_the_goals_section_says_which_goal_is_met_in_numbers():
    from mefl.methods import goals_section

    runs = {
        "all-deep": {0: _fake_run([0.70, 0.70], 100.0), 1: _fake_run([0.72, 0.72], 100.0)},
        "study": {0: _fake_run([0.69, 0.69], 50.0), 1: _fake_run([0.70, 0.70], 50.0)},
        "depthfl": {0: _fake_run([0.75, 0.74], 55.0), 1: _fake_run([0.78, 0.76], 55.0)},
        "exclusive": {0: _fake_run([0.60, 0.60], 30.0), 1: _fake_run([0.61, 0.61], 30.0)},
        "inclusivefl": {0: _fake_run([0.71, 0.75], 50.0), 1: _fake_run([0.72, 0.76], 50.0)},
        "depthfl-no-kd": {0: _fake_run([0.70, 0.70], 50.0), 1: _fake_run([0.70, 0.70], 50.0)},
    }
    text = "\n".join(goals_section(runs, ["e1", "e2"]))
    assert "best method here is **depthfl**" in text  # the ablation is no candidate
    assert "**met**. depthfl uses 55 % of the compute" in text and "(seeds [0, 1]): +5.50 at e1, +4.00 at e2" in text
    assert "`exclusive` at every exit*: **met** (seeds [0, 1]: +16.00 at e1, +14.50 at e2)" in text
    # Paired gaps over the study's method: e1 +6 and +8 (mean 7.00, std 1.41), e2 +5, +6 (5.50 ± 0.71).
    assert "spread* (the paired" in text and "**met** (+7.00 ± 1.41 at e1, +5.50 ± 0.71 at e2)" in text
    assert "**not the same here**" in text
    assert "not ahead at every exit of `inclusivefl` (seeds [0, 1]: +5.00 at e1, -0.50 at e2)" in text
    del runs["inclusivefl"][1]  # compared on the seeds both have: seed 0 alone
    assert "of `inclusivefl` (seeds [0]: +4.00 at e1, -1.00 at e2)" in "\n".join(goals_section(runs, ["e1", "e2"]))
    unchecked = {n: r for n, r in runs.items() if n not in ("inclusivefl", "depthfl-no-kd")}
    assert "3. *DepthFL's published ordering*: not checked here" in "\n".join(goals_section(unchecked, ["e1", "e2"]))
    runs["depthfl"][0] = _fake_run([0.75, 0.74], 65.0)
    runs["depthfl"][1] = _fake_run([0.78, 0.76], 65.0)
    assert "**not met**. depthfl uses 65 % of the compute" in "\n".join(goals_section(runs, ["e1", "e2"]))


def test_the_report_says_first_which_runs_the_recorded_commands_still_lack(tmp_path):
    import json

    from mefl.methods import progress_line, runs_asked_for

    commands = [
        "mefl methods --task har --seeds 0 1 --methods study --out x",
        "mefl methods --task har --seeds 0 --methods study depthfl-no-kd --out x",  # adds one run
    ]
    (tmp_path / "campaign.json").write_text(json.dumps([{"command": c} for c in commands]))
    asked = runs_asked_for(tmp_path)
    assert asked == ["all-deep-seed0", "study-seed0", "all-deep-seed1", "study-seed1", "depthfl-no-kd-seed0"]
    runs = {"all-deep": {0: {}, 1: {}}, "study": {0: {}}, "depthfl-no-kd": {0: {}}}
    assert progress_line(runs, asked)[0].startswith("**In progress: 4 of 5 runs complete**; not yet: study-seed1.")
    runs["study"][1] = {}
    assert progress_line(runs, asked)[0].startswith("**Complete**: all 5 runs")
    assert progress_line(runs, runs_asked_for(tmp_path / "no-campaign")) == []


def test_the_seed_by_seed_table_shows_each_seeds_central_accuracy_and_a_dash_for_a_missing_run():
    from mefl.methods import per_seed_section

    runs = {
        "all-deep": {0: _fake_run([0.701, 0.7], 1.0), 2: _fake_run([0.5, 0.6], 1.0)},
        "study": {0: _fake_run([0.65, 0.66], 1.0)},
    }
    rows = [line for line in per_seed_section(runs, ["all-deep", "study"], ["e1", "e2"]) if line.startswith("| ")]
    assert rows == [
        "| method | seed 0 | seed 2 |",
        "| all-deep | 70.1 / 70.0 | 50.0 / 60.0 |",
        "| study | 65.0 / 66.0 | — |",
    ]


def test_plot_legends_name_the_seeds_only_while_configurations_have_different_seeds():
    from mefl.plots import seeds_label

    run = _fake_run([0.5, 0.6], 1.0)
    in_progress = {"all-deep": {0: run, 1: run}, "study": {0: run}}
    assert seeds_label(in_progress, "all-deep") == "all-deep (seeds 0, 1)"
    assert seeds_label(in_progress, "study") == "study (seeds 0)"
    assert seeds_label({"all-deep": {1: run, 0: run}, "study": {0: run, 1: run}}, "study") == "study"


def test_the_data_behind_each_exit_is_the_share_the_clients_reaching_it_hold():
    from mefl.methods import data_behind_exits

    # Three clients at levels 1, 2, 3; two labels: 10 + 30, 30 + 10 and 10 + 10 examples.
    run = {
        "federation": {"0": {"exit-level": 1}, "1": {"exit-level": 2}, "2": {"exit-level": 3}},
        "partitions": {
            "0": {"label_counts_train": [10, 30]},
            "1": {"label_counts_train": [30, 10]},
            "2": {"label_counts_train": [10, 10]},
        },
    }
    rows = data_behind_exits({"all-deep": {0: {}}, "study": {0: run}}, ["e1", "e2", "e3"])
    # Exit 2: clients 1-2 hold 60 of 100 examples; label 2: 20 of 50. Exit 3: 20 of 100; label 1: 10 of 50.
    assert rows[-2] == "| 0 | 100 % (100 %) | 60 % (40 %) | 20 % (20 %) |"
    assert data_behind_exits({"all-deep": {0: {}}}, ["e1"]) == []


def test_tuning_runs_without_central_scores_give_no_per_seed_numbers_and_no_goals():
    from mefl.methods import goals_section, per_seed_section

    tuning = {"rounds": [{"global_local": {"e1": {"accuracy": 0.5}}, "client_train_mflops": {"0": 1.0}}] * 5}
    runs = {"all-deep": {0: tuning}, "study": {0: tuning}}
    assert "| study | n/a |" in per_seed_section(runs, ["all-deep", "study"], ["e1"])
    assert "Not measurable: these runs did not score the central test set" in goals_section(runs, ["e1"])[2]
