import pytest
import torch
from helpers import layers_run
from torch.utils.flop_counter import FlopCounterMode

from mefl_app.model.resnet import MultiExitResNet


def _blocks_run(model, x, **kwargs):
    return layers_run(model.blocks, model, x, **kwargs)


def test_forward_returns_one_logit_tensor_per_exit_shallowest_first():
    model = MultiExitResNet().eval()
    logits = model(torch.randn(5, 1, 28, 28))
    assert model.num_exits == 3
    assert [z.shape for z in logits] == [torch.Size([5, 10])] * 3


def test_exits_follow_the_configured_blocks():
    model = MultiExitResNet(exit_after=(2, 4))
    assert model.num_exits == 2
    assert len(model.blocks) == 4  # nothing built past the last exit
    assert _blocks_run(model, torch.randn(2, 1, 28, 28)) == [1, 2, 3, 4]


@pytest.mark.parametrize("k, blocks", [(1, [1]), (2, [1, 2, 3]), (3, [1, 2, 3, 4, 5])])
def test_stopping_at_exit_k_computes_no_later_block(k, blocks):
    model = MultiExitResNet()
    assert _blocks_run(model, torch.randn(2, 1, 28, 28), up_to_exit=k) == blocks
    assert len(model(torch.randn(2, 1, 28, 28), up_to_exit=k)) == k


def test_early_exit_costs_fewer_flops_and_the_full_pass_stays_under_budget():
    model = MultiExitResNet().eval()
    flops = []
    for k in (1, 2, 3):
        with FlopCounterMode(display=False) as counter:
            model(torch.randn(1, 1, 28, 28), up_to_exit=k)
        flops.append(counter.get_total_flops())
    assert flops[0] < flops[1] < flops[2] < 20e6


def test_up_to_exit_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="up_to_exit"):
        MultiExitResNet()(torch.randn(1, 1, 28, 28), up_to_exit=4)


def test_single_exit_baseline_is_the_same_backbone_with_only_the_last_exit():
    torch.manual_seed(0)
    multi = MultiExitResNet(exit_after=(1, 3, 5))
    torch.manual_seed(0)
    single = MultiExitResNet(exit_after=(5,))
    assert single.num_exits == 1
    multi_state, single_state = multi.state_dict(), single.state_dict()
    backbone = [k for k in multi_state if not k.startswith("exits.")]
    assert backbone == [k for k in single_state if not k.startswith("exits.")]
    # Same seed, same initial backbone and same initial last exit: only the structure differs.
    for key in backbone:
        torch.testing.assert_close(multi_state[key], single_state[key])
    torch.testing.assert_close(multi.exits[2][-1].weight, single.exits[0][-1].weight)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_norm_layer_is_a_setting(norm):
    model = MultiExitResNet(norm=norm)
    kinds = {type(m).__name__ for m in model.modules()}
    assert ("BatchNorm2d" in kinds) == (norm == "batch")
    assert ("GroupNorm" in kinds) == (norm == "group")


def test_exit_head_is_pool_flatten_dropout_linear():
    head = MultiExitResNet().exits[0]
    assert [type(m).__name__ for m in head] == ["AdaptiveAvgPool2d", "Flatten", "Dropout", "Linear"]
    assert head[2].p == 0.5


def test_channels_last_changes_the_layout_not_the_model():
    """The ``channels-last`` setting: same state dict (names, shapes, values), same outputs, and
    its arrays load into a default-layout model and back."""
    from flwr.app import ArrayRecord

    from mefl_app.settings import RunSettings
    from mefl_app.task import initial_model

    nhwc = initial_model(RunSettings(channels_last=True), 10, (1, 28, 28)).eval()
    nchw = initial_model(RunSettings(channels_last=False), 10, (1, 28, 28)).eval()
    assert nhwc.blocks[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not nchw.blocks[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    a, b = nhwc.state_dict(), nchw.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        for za, zb in zip(nhwc(x), nchw(x)):
            torch.testing.assert_close(za, zb, rtol=1e-4, atol=1e-5)
    nchw.load_state_dict(ArrayRecord(a).to_torch_state_dict())
    assert all(torch.equal(v, a[k]) for k, v in nchw.state_dict().items())


@pytest.mark.parametrize("norm", ["group", "batch"])
@pytest.mark.parametrize(("inplanes", "planes", "stride"), [(16, 16, 1), (16, 32, 2)])
def test_basic_block_computes_what_torchvisions_does(norm, inplanes, planes, stride):
    from torchvision.models import resnet as torchvision_resnet

    from mefl_app.model import resnet

    def block(module):
        norm_layer = resnet.make_norm_layer(norm)
        downsample = None
        if stride != 1 or inplanes != planes:
            downsample = torch.nn.Sequential(module.conv1x1(inplanes, planes, stride), norm_layer(planes))
        return module.BasicBlock(inplanes, planes, stride, downsample, norm_layer=norm_layer)

    torch.manual_seed(0)
    ours, theirs = block(resnet), block(torchvision_resnet)
    for norm_module in (m for m in theirs.modules() if isinstance(m, torch.nn.GroupNorm | torch.nn.BatchNorm2d)):
        torch.nn.init.normal_(norm_module.weight), torch.nn.init.normal_(norm_module.bias)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(4, inplanes, 14, 14)
    ours.eval(), theirs.eval()
    assert torch.equal(ours(x), theirs(x))
    ours.train(), theirs.train()
    grads = []
    for model in (ours, theirs):
        x_ = x.clone().requires_grad_()
        model(x_).square().sum().backward()
        grads.append([x_.grad] + [p.grad for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
