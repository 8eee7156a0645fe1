import math

import pytest
import torch
import torch.nn.functional as F

from mefl_app.model.loss import multi_exit_loss


def _hand_kl(teacher, student, T):
    p = [math.exp(t / T) for t in teacher]
    p = [v / sum(p) for v in p]
    q = [math.exp(s / T) for s in student]
    q = [v / sum(q) for v in q]
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _hand_ce(z, y):
    return -z[y] + math.log(sum(math.exp(v) for v in z))


def test_matches_a_hand_computation():
    z1, z2, z3 = [1.0, 0.0, -1.0], [0.5, 0.2, 0.1], [2.0, -1.0, 0.0]
    y, C, T = 0, 0.3, 2.0
    logits = [torch.tensor([z]) for z in (z1, z2, z3)]
    loss = multi_exit_loss(logits, torch.tensor([y]), distill_weight=C, temperature=T)
    expected = _hand_ce(z3, y) + sum((1 - C) * _hand_ce(z, y) + C * T**2 * _hand_kl(z3, z, T) for z in (z1, z2))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_next_teacher_distils_from_the_exit_above():
    z1, z2, z3 = [1.0, 0.0, -1.0], [0.5, 0.2, 0.1], [2.0, -1.0, 0.0]
    y, C, T = 2, 0.5, 3.0
    logits = [torch.tensor([z]) for z in (z1, z2, z3)]
    loss = multi_exit_loss(logits, torch.tensor([y]), distill_weight=C, temperature=T, teacher="next")
    expected = (
        _hand_ce(z3, y)
        + (1 - C) * (_hand_ce(z1, y) + _hand_ce(z2, y))
        + C * T**2 * (_hand_kl(z2, z1, T) + _hand_kl(z3, z2, T))
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_zero_weight_is_exactly_the_sum_of_cross_entropies():
    torch.manual_seed(0)
    logits, y = [torch.randn(8, 10) for _ in range(3)], torch.randint(0, 10, (8,))
    loss = multi_exit_loss(logits, y, distill_weight=0.0, temperature=3.0)
    assert torch.equal(
        loss, F.cross_entropy(logits[2], y) + F.cross_entropy(logits[0], y) + F.cross_entropy(logits[1], y)
    )


@pytest.mark.parametrize("C", [0.0, 0.5])
def test_exit_weights_scale_each_exit_term(C):
    torch.manual_seed(0)
    logits, y = [torch.randn(8, 10) for _ in range(3)], torch.randint(0, 10, (8,))
    terms = []
    for k in range(3):  # exit k's term alone: the other exits weigh 0
        weights = [0.0, 0.0, 0.0]
        weights[k] = 1.0
        terms.append(multi_exit_loss(logits, y, distill_weight=C, temperature=3.0, exit_weights=weights))
    assert sum(terms).item() == pytest.approx(
        multi_exit_loss(logits, y, distill_weight=C, temperature=3.0).item(), rel=1e-6
    )
    weighted = multi_exit_loss(logits, y, distill_weight=C, temperature=3.0, exit_weights=[0.5, 0.25, 2.0])
    assert weighted.item() == pytest.approx((0.5 * terms[0] + 0.25 * terms[1] + 2.0 * terms[2]).item(), rel=1e-6)


def test_single_exit_is_plain_cross_entropy():
    z, y = torch.randn(4, 10), torch.randint(0, 10, (4,))
    assert torch.equal(multi_exit_loss([z], y, distill_weight=0.7, temperature=2.0), F.cross_entropy(z, y))


@pytest.mark.parametrize("teacher", ["last", "next"])
def test_the_deepest_exit_gets_no_distillation_gradient(teacher):
    torch.manual_seed(1)
    y = torch.randint(0, 10, (6,))
    logits = [torch.randn(6, 10, requires_grad=True) for _ in range(3)]
    multi_exit_loss(logits, y, distill_weight=0.9, temperature=4.0, teacher=teacher).backward()
    deepest = logits[2].detach().clone().requires_grad_(True)
    F.cross_entropy(deepest, y).backward()
    torch.testing.assert_close(logits[2].grad, deepest.grad)  # only its own CE reaches it


def test_next_teacher_gets_only_its_own_loss_gradient():
    torch.manual_seed(2)
    y = torch.randint(0, 10, (6,))
    logits = [torch.randn(6, 10, requires_grad=True) for _ in range(3)]
    C, T = 0.5, 3.0
    multi_exit_loss(logits, y, distill_weight=C, temperature=T, teacher="next").backward()
    # Exit 2 is teacher of exit 1 and student of exit 3: its gradient is its own student loss only.
    z2 = logits[1].detach().clone().requires_grad_(True)
    own = (1 - C) * F.cross_entropy(z2, y) + C * T**2 * F.kl_div(
        F.log_softmax(z2 / T, 1), F.softmax(logits[2].detach() / T, 1), reduction="batchmean"
    )
    own.backward()
    torch.testing.assert_close(logits[1].grad, z2.grad)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"distill_weight": 1.5, "temperature": 1.0}, "distill_weight"),
        ({"distill_weight": 0.5, "temperature": 0.0}, "temperature"),
        ({"distill_weight": 0.5, "temperature": 1.0, "teacher": "first"}, "teacher"),
        ({"distill_weight": 0.5, "temperature": 1.0, "exit_weights": [1.0, 1.0]}, "exit_weights"),
        ({"distill_weight": 0.5, "temperature": 1.0, "exit_weights": [-1.0]}, "exit_weights"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        multi_exit_loss([torch.randn(2, 3)], torch.tensor([0, 1]), **kwargs)
