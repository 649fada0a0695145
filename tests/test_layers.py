"""Attention blocks: parity with timm, both conventions, the factory and attention capture."""
from collections import OrderedDict
from functools import partial

import pytest
import timm.layers
import timm.layers.cbam
import torch
import torch.nn as nn

from cvattn.layers import (CbamModule, ChannelAttn, EcaModule, SEModule, SpatialAttn, capture_attention, create_attn,
                           eca_kernel_size, list_attn)

from helpers import randomise



@pytest.fixture
def x():
    return torch.randn(4, 64, 9, 7, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("channels, paper_width, timm_width", [(64, 4, 8), (256, 16, 16), (48, 3, 8)])
def test_se_width_conventions(channels, paper_width, timm_width):
    assert SEModule(channels).fc1.out_channels == paper_width
    assert create_attn("se_timm", channels).fc1.out_channels == timm_width
    assert timm.layers.SEModule(channels).fc1.out_channels == timm_width


@pytest.mark.parametrize("name", ["se", "se_timm"])
def test_se_matches_timm(name, x):
    ours = randomise(create_attn(name, 64))
    theirs = timm.layers.SEModule(64, rd_divisor=ours.fc1.out_channels if name == "se" else 8)
    assert ours.fc1.out_channels == theirs.fc1.out_channels
    theirs.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), theirs.eval()(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("channels, kernel", [(16, 3), (64, 3), (96, 3), (128, 5), (1024, 5), (2048, 7)])
def test_eca_adaptive_kernel(channels, kernel):
    assert eca_kernel_size(channels) == kernel
    assert EcaModule(channels).conv.kernel_size == (kernel,)
    assert timm.layers.EcaModule(channels).conv.kernel_size == (kernel,)


@pytest.mark.parametrize("channels", [64, 128])
def test_eca_matches_timm(channels):
    x = torch.randn(3, channels, 5, 5)
    ours = randomise(EcaModule(channels))
    theirs = timm.layers.EcaModule(channels)
    theirs.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-6, rtol=0)


def test_cbam_timm_convention_matches_timm(x):
    ours = randomise(create_attn("cbam_timm", 64))
    theirs = timm.layers.cbam.CbamModule(64)
    theirs.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), theirs.eval()(x), atol=1e-6, rtol=0)


def test_cbam_timm_gradients_match_timm_in_training_mode():
    """``max`` instead of timm's ``amax``: same input gradient and weight gradients wherever maxima are unique."""
    torch.manual_seed(0)
    ours = randomise(create_attn("cbam_timm", 32)).train()
    theirs = timm.layers.cbam.CbamModule(32).train()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 32, 9, 11, requires_grad=True)
    grads = []
    for module in (ours, theirs):
        x.grad = None
        out = module(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append((x.grad.clone(), {k: p.grad.clone() for k, p in module.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-6, rtol=1e-5)
    for name, grad in grads[0][1].items():
        torch.testing.assert_close(grad, grads[1][1][name], atol=1e-5, rtol=1e-5, msg=name)


def test_cbam_paper_convention_is_timm_with_swapped_pooling_and_biases(x):
    """Paper CBAM = timm CBAM with the spatial conv's two input channels swapped and the MLP biases added."""
    ours = randomise(CbamModule(64))
    assert ours.channel.fc1.bias is not None and ours.spatial.max_first
    theirs = timm.layers.cbam.CbamModule(64).eval()
    state = {k: v for k, v in ours.state_dict().items() if not k.endswith("bias") or "bn" in k}
    state["spatial.conv.conv.weight"] = state["spatial.conv.conv.weight"].flip(1)
    theirs.load_state_dict(state)
    with torch.no_grad():
        for fc in ("fc1", "fc2"):
            getattr(ours.channel, fc).bias.zero_()
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-6, rtol=0)
    with torch.no_grad():
        ours.channel.fc2.bias.fill_(0.3)
    assert not torch.allclose(ours(x), theirs(x), atol=1e-4)


def test_spatial_gate_reads_max_then_mean():
    gate = SpatialAttn(kernel_size=1).eval()
    with torch.no_grad():
        gate.conv.conv.weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))  # weight only the first input
    x = torch.tensor([[[[1.0]], [[3.0]]]])  # max 3, mean 2
    with capture_attention(gate) as maps:
        gate(x)
    bn = gate.conv.bn
    expected = torch.sigmoid((torch.tensor(3.0) - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps))
    torch.testing.assert_close(maps[""].flatten(), expected)


def test_factory_names_and_errors():
    assert create_attn("none", 8) is None and create_attn(None, 8) is None
    for name in list_attn():
        block = create_attn(name, 32)
        assert block(torch.randn(2, 32, 4, 4)).shape == (2, 32, 4, 4)
    with pytest.raises(ValueError, match=r"Unknown attention 'cbma'.*Did you mean 'cbam'.*'eca'"):
        create_attn("cbma", 32)
    with pytest.raises(ValueError, match="positive integer number of channels, got 0"):
        SEModule(0)
    with pytest.raises(ValueError, match="positive odd integer, got 4"):
        EcaModule(32, kernel_size=4)
    with pytest.raises(ValueError, match="Unknown activation 'relux'.*'relu'"):
        SEModule(32, act_layer="relux")
    with pytest.raises(ValueError, match="Unknown convention 'keras'"):
        ChannelAttn(32, convention="keras")


def test_capture_attention_returns_the_applied_gates(x):
    block = randomise(CbamModule(64))
    with capture_attention(block) as maps:
        out = block(x)
    channel, spatial = maps["channel"], maps["spatial"]
    assert channel.shape == (4, 64, 1, 1) and spatial.shape == (4, 1, 9, 7)
    assert ((channel > 0) & (channel < 1)).all()
    torch.testing.assert_close(out, x * channel * spatial)
    assert channel.requires_grad  # stays in the graph for gradient-weighted maps
    block(x)  # after the with-block nothing is collected any more
    assert maps["channel"] is channel and not block.channel.gate._forward_hooks


@pytest.mark.parametrize("name", ["se", "eca", "cbam", "cbam_timm"])
def test_blocks_plug_into_timm_models(name):
    """timm builds attn_layer blocks with device=/dtype= (timm ≥ 1.0.20): ours take them, so they drop in."""
    import timm

    from cvattn.layers import get_attn

    model = timm.create_model("resnet18", pretrained=False, num_classes=3,
                              block_args=dict(attn_layer=get_attn(name))).eval()
    blocks = [m for m in model.modules() if isinstance(m, type(create_attn(name, 8)))]
    assert len(blocks) == 8
    with capture_attention(model) as maps:
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    assert len(maps) == 8 * (2 if name.startswith("cbam") else 1)
    double = create_attn(name, 16, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in double.parameters())


class PositionGate(nn.Module):
    """A user's block, registered nowhere and importing nothing from cvattn: it offers the contract's
    ``attn_kind`` and ``gate``, so the models, ``capture_attention`` and the gate maps find it."""

    attn_kind = "spatial"

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, kernel_size, padding=kernel_size // 2)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.conv(x.mean(1, keepdim=True)))       # (B, C, H, W) * (B, 1, H, W)


@pytest.mark.parametrize("name, blocks, size", [("resnet20", 9, 32), ("convnet2", 2, 28)])
def test_a_user_block_plugs_into_the_models_and_is_captured(name, blocks, size):
    import cvattn
    from cvattn.layers import attention_blocks, get_attn

    assert get_attn(PositionGate) is PositionGate
    model = cvattn.create_model(name, attn_layer=PositionGate, attn_kwargs=dict(kernel_size=5), in_chans=3)
    found = attention_blocks(model)
    assert len(found) == blocks and all(isinstance(b, PositionGate) for b in found.values())
    assert all(path.endswith(".attn") and b.conv.kernel_size == (5, 5) for path, b in found.items())
    for m in model.modules():       # undo the ResNet's zero-init of each branch's last BN, so gradients reach the gates
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
    x = torch.randn(2, 3, size, size)
    with capture_attention(model) as maps:
        model(x).sum().backward()
    assert list(maps) == list(found)                                   # every block's gate, in forward order
    first_path, first = next(iter(found.items()))
    assert maps[first_path].shape[1] == 1 and ((maps[first_path] > 0) & (maps[first_path] < 1)).all()
    assert first.conv.weight.grad.abs().sum() > 0                       # the block is in the graph


def test_get_attn_takes_callables_and_refuses_other_values():
    from cvattn.layers import attention_blocks, get_attn

    wide_se = partial(SEModule, rd_ratio=1 / 4)
    assert get_attn(wide_se) is wide_se and create_attn(wide_se, 64).fc1.out_channels == 16
    assert get_attn("NONE") is None and get_attn("SE") is SEModule
    with pytest.raises(ValueError, match=r"attn_layer must be a block name, a block class or a callable.*got 3 "
                                         r"of type int.*'cbam'"):
        get_attn(3)

    class Typo(PositionGate):
        attn_kind = "spatail"
    with pytest.raises(ValueError, match=r"Typo at 'block' declares attn_kind='spatail'. Did you mean 'spatial'"):
        attention_blocks(nn.Sequential(OrderedDict(block=Typo(4))))
