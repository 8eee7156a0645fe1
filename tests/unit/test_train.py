import pytest
import torch
from helpers import synthetic_task

from mefl_app.device import select_device
from mefl_app.evaluate import evaluate_exits
from mefl_app.model.resnet import MultiExitResNet
from mefl_app.settings import RunSettings
from mefl_app.train import FedDynState, train_local

CPU = torch.device("cpu")


def test_local_training_learns_every_exit():
    data = synthetic_task(n=800, num_classes=4)
    settings = RunSettings(local_epochs=4, batch_size=32, learning_rate=0.01)
    torch.manual_seed(0)
    model = MultiExitResNet(num_classes=4)
    before = evaluate_exits(model, data.test, batch_size=100, device=CPU)
    loss = train_local(model, data.train, settings, generator=torch.Generator().manual_seed(0), device=CPU)
    after = evaluate_exits(model, data.test, batch_size=100, device=CPU)
    assert loss > 0
    assert all(a > 0.6 for a in after.accuracy), after.accuracy  # chance: 0.25
    assert all(a < b for a, b in zip(before.accuracy, after.accuracy))


def test_training_is_deterministic_for_a_seed(task_data):
    settings = RunSettings(local_epochs=1)
    states = []
    for _ in range(2):
        torch.manual_seed(3)
        model = MultiExitResNet()
        torch.manual_seed(4)
        train_local(model, task_data.train, settings, generator=torch.Generator().manual_seed(4), device=CPU)
        states.append(model.state_dict())
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key])


def test_single_exit_training_ignores_the_multi_exit_loss_settings(task_data):
    """Why a campaign that varies only C, T or the exit weights may reuse another's single-exit runs (``--se-from``)."""
    states = []
    for weight, temperature, exit_weights in ((0.0, 3.0, ""), (0.5, 3.0, ""), (0.9, 1.0, "0.2,0.2,3")):
        settings = RunSettings(
            local_epochs=1,
            multi_exit=False,
            distill_weight=weight,
            distill_temperature=temperature,
            exit_loss_weights=exit_weights,
        )
        torch.manual_seed(3)
        model = MultiExitResNet(exit_after=(5,))
        train_local(model, task_data.train, settings, generator=torch.Generator().manual_seed(4), device=CPU)
        states.append(model.state_dict())
    for other in states[1:]:
        for key in states[0]:
            torch.testing.assert_close(states[0][key], other[key], rtol=0, atol=0)


def test_exit_loss_weights_reach_local_training(task_data):
    """Weight 0 on exits 1-2: their heads get no gradient (no weight decay here), exit 3's does."""
    settings = RunSettings(local_epochs=1, weight_decay=0.0, exit_loss_weights="0,0,1")
    torch.manual_seed(3)
    model = MultiExitResNet()
    before = [[p.detach().clone() for p in head.parameters()] for head in model.exits]
    train_local(model, task_data.train, settings, generator=torch.Generator().manual_seed(4), device=CPU)
    changed = [
        any(not torch.equal(b, p) for b, p in zip(old, head.parameters())) for old, head in zip(before, model.exits)
    ]
    assert changed == [False, False, True]


@pytest.mark.parametrize("penalty", ["fedprox", "feddyn"])
def test_fedprox_and_feddyn_leave_the_heads_of_exits_of_weight_0_untouched(task_data, penalty):
    """Own-exit training with weight decay: the penalties reach only what the loss trains, so the
    heads of exits 1-2 (weight 0) stay exactly as they were, and exit 3's moves."""
    settings = RunSettings(local_epochs=1, weight_decay=1e-3, exit_training="own-exit")
    torch.manual_seed(3)
    model = MultiExitResNet()
    before = [[p.detach().clone() for p in head.parameters()] for head in model.exits]
    state = FedDynState(0.1, {n: torch.full_like(p, 0.01) for n, p in model.named_parameters()})
    extra = {"proximal_mu": 0.5} if penalty == "fedprox" else {"feddyn": state}
    train_local(model, task_data.train, settings, generator=torch.Generator().manual_seed(4), device=CPU, **extra)
    changed = [
        any(not torch.equal(b, p) for b, p in zip(old, head.parameters())) for old, head in zip(before, model.exits)
    ]
    assert changed == [False, False, True]
    if penalty == "feddyn":  # an untouched head's state keeps its value: g - alpha * 0
        assert torch.equal(state.grads["exits.0.3.weight"], torch.full_like(model.exits[0][3].weight, 0.01))


def test_proximal_term_keeps_weights_closer_to_the_global_model(task_data):
    settings = RunSettings(local_epochs=1, learning_rate=0.05)
    drift = {}
    for mu in (0.0, 1.0):
        torch.manual_seed(0)
        model = MultiExitResNet()
        start = [p.detach().clone() for p in model.parameters()]
        torch.manual_seed(1)
        train_local(
            model, task_data.train, settings, generator=torch.Generator().manual_seed(1), device=CPU, proximal_mu=mu
        )
        drift[mu] = sum((p.detach() - s).pow(2).sum().item() for p, s in zip(model.parameters(), start))
    assert drift[1.0] < drift[0.0]


def test_gradient_norms_before_clipping_are_reported_per_step(task_data):
    settings = RunSettings(local_epochs=1, batch_size=32, max_grad_norm=1e-3)
    norms: list[float] = []
    torch.manual_seed(0)
    train_local(
        MultiExitResNet(),
        task_data.train,
        settings,
        generator=torch.Generator().manual_seed(0),
        device=CPU,
        grad_norms=norms,
    )
    steps = sum(1 for start in range(0, len(task_data.train), 32) if len(task_data.train) - start >= 2)
    assert len(norms) == steps and all(n > 1e-3 for n in norms)  # the norm before clipping, not after


def test_evaluation_counts_per_exit_in_batches(task_data):
    model = MultiExitResNet()
    whole = evaluate_exits(model, task_data.test, batch_size=1000, device=CPU)
    batched = evaluate_exits(model, task_data.test, batch_size=7, device=CPU)
    assert whole.correct == batched.correct and whole.total == len(task_data.test)
    assert all(abs(a - b) < 1e-3 for a, b in zip(whole.loss_sum, batched.loss_sum))
    assert not model.training


def test_device_setting_picks_cuda_only_where_torch_sees_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device(RunSettings(device="auto")).type == "cpu"
    assert select_device(RunSettings(device="cpu")).type == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        select_device(RunSettings(device="cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device(RunSettings(device="auto")).type == "cuda"
    assert select_device(RunSettings(device="cpu")).type == "cpu"
