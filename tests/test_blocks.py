"""The attention zoo beyond SE/ECA/CBAM: parity with timm's blocks (outputs, gradients and BN statistics, on the
same weights), BAM and triplet attention against their equations and the authors' code structure, the maps each
block offers by the AttentionBlock protocol, drop-in use in cvattn and timm models, and the errors for bad input."""
import types

import pytest
import timm
import timm.layers
import timm.layers.cbam
import timm.layers.coord_attn
import timm.layers.gather_excite
import torch
import torch.nn as nn
import torch.nn.functional as F

import cvattn
from cvattn.checks import state_dict_mismatch
from cvattn.contracts import AttentionBlock
from cvattn.layers import (BamModule, GatherExcite, NonLocalAttn, SelectiveKernel, TripletAttention,
                           capture_attention, create_attn, get_attn)

from helpers import randomise

C = 64
NEW_BLOCKS = ["ese", "ceca", "ge", "ge_timm", "gc", "gc_timm", "gca", "gca_timm", "coord", "coord_timm", "nl",
              "nl_timm", "sk", "sk_timm", "lcbam", "bam", "triplet"]



def _buildable_timm_gather_excite(monkeypatch):
    """timm 1.0.31's GatherExcite passes device/dtype positionally to its MLP, convolutions and BNs and fails to
    build with ``use_mlp=True`` (its default) or ``extra_params=True``; drop those stray positional arguments so
    that timm's own structure and forward can be compared."""
    module = timm.layers.gather_excite
    real_conv, real_mlp, real_bn = module.create_conv2d, module.ConvMlp, nn.BatchNorm2d
    monkeypatch.setattr(module, "create_conv2d", lambda i, o, *_, **kw: real_conv(i, o, **kw))
    monkeypatch.setattr(module, "ConvMlp", lambda i, h, *_, **kw: real_mlp(i, h, **kw))
    monkeypatch.setattr(module, "nn", types.SimpleNamespace(
        Sequential=nn.Sequential, Identity=nn.Identity, Module=nn.Module, BatchNorm2d=lambda c, *_: real_bn(c)))


# (our name, our kwargs, timm's constructor)
PARITY = [
    ("ese", {}, lambda: timm.layers.EffectiveSEModule(C)),
    ("ceca", {}, lambda: timm.layers.CecaModule(C)),
    ("ge", {}, lambda: timm.layers.GatherExcite(C, use_mlp=False)),
    ("ge_timm", {}, lambda: timm.layers.GatherExcite(C)),
    ("ge", dict(extent=2), lambda: timm.layers.GatherExcite(C, extent=2, use_mlp=False)),
    ("ge_timm", dict(extent=4), lambda: timm.layers.GatherExcite(C, extent=4)),
    ("ge", dict(extent=2, extra_params=True), lambda: timm.layers.GatherExcite(C, extent=2, extra_params=True,
                                                                              use_mlp=False)),
    ("ge_timm", dict(extent=4, extra_params=True), lambda: timm.layers.GatherExcite(C, extent=4, extra_params=True)),
    ("gc", {}, lambda: timm.layers.GlobalContext(C, rd_ratio=1 / 16)),
    ("gc_timm", {}, lambda: timm.layers.GlobalContext(C)),
    ("gca_timm", {}, lambda: timm.layers.GlobalContext(C, fuse_add=True, fuse_scale=False)),
    ("gc_timm", dict(fuse_add=True), lambda: timm.layers.GlobalContext(C, fuse_add=True)),
    ("gc_timm", dict(use_attn=False), lambda: timm.layers.GlobalContext(C, use_attn=False)),
    ("coord", {}, lambda: timm.layers.coord_attn.CoordAttn(C, rd_channels=8, bias=True)),
    ("coord_timm", {}, lambda: timm.layers.coord_attn.CoordAttn(C)),
    ("nl", {}, lambda: timm.layers.NonLocalAttn(C, use_scale=False, rd_ratio=1 / 2, rd_divisor=1)),
    ("nl_timm", {}, lambda: timm.layers.NonLocalAttn(C)),
    ("sk", {}, lambda: timm.layers.SelectiveKernel(C, split_input=False, rd_channels=32)),
    ("sk_timm", {}, lambda: timm.layers.SelectiveKernel(C)),
    ("sk_timm", dict(kernel_size=(3, 5, 7), keep_3x3=False, split_input=False), lambda: timm.layers.SelectiveKernel(
        C, kernel_size=[3, 5, 7], keep_3x3=False, split_input=False)),
    ("lcbam", {}, lambda: timm.layers.cbam.LightCbamModule(C)),
]


def _ids(case):
    return case[0] + "".join(f"-{k}={v}" for k, v in case[1].items())


def _run(module: nn.Module, x: torch.Tensor):
    """Output, input gradient, parameter gradients and buffers after one forward/backward."""
    x = x.clone().requires_grad_(True)
    out = module(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return (out.detach(), x.grad, {k: p.grad for k, p in module.named_parameters()},
            {k: b.clone() for k, b in module.named_buffers()})


@pytest.mark.parametrize("name, kwargs, make_timm", PARITY, ids=[_ids(c) for c in PARITY])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_matches_timm(name, kwargs, make_timm, train, monkeypatch):
    _buildable_timm_gather_excite(monkeypatch)
    ours = randomise(create_attn(name, C, **kwargs)).train(train)
    theirs = make_timm().train(train)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, C, 9, 7, generator=torch.Generator().manual_seed(1))
    ours_run, theirs_run = _run(ours, x), _run(theirs, x)
    for mine, timms in zip(ours_run, theirs_run):
        torch.testing.assert_close(mine, timms, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name, width", [("gc", 4), ("gc_timm", 8), ("coord", 8), ("coord_timm", 8), ("nl", 32),
                                         ("nl_timm", 8), ("sk", 32), ("sk_timm", 8)])
def test_reduced_width_conventions(name, width):
    block = create_attn(name, C)
    reducer = {"gc": lambda b: b.mlp_scale.fc1, "coord": lambda b: b.conv1, "nl": lambda b: b.t,
               "sk": lambda b: b.attn.fc_reduce}[name.split("_")[0]]
    assert reducer(block).out_channels == width
    assert create_attn("coord", 1024).conv1.out_channels == 32   # the authors' max(8, C // 32)


def test_global_context_starts_as_the_identity_with_additive_fusion():
    x = torch.randn(2, C, 5, 5)
    torch.testing.assert_close(create_attn("gca", C)(x), x)


def test_non_local_starts_as_the_identity():
    x = torch.randn(2, C, 5, 5)
    torch.testing.assert_close(create_attn("nl", C).eval()(x), x)


# ---- BAM: the paper's equations and the authors' code structure -------------------------------------------------

def test_bam_follows_the_paper_equations():
    """M(F) = σ(M_c(F) + M_s(F)), F' = F + F ⊗ M(F), each branch written out from the module's weights."""
    bam = randomise(BamModule(C)).eval()
    x = torch.randn(3, C, 12, 10)

    def bn(t, m):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    ch, sp = bam.channel, bam.spatial
    m_c = F.conv2d(F.relu(bn(F.conv2d(F.adaptive_avg_pool2d(x, 1), ch.fc1.weight, ch.fc1.bias), ch.bn)),
                   ch.fc2.weight, ch.fc2.bias)                                               # (B, C, 1, 1)
    s = F.relu(bn(F.conv2d(x, sp.reduce.weight, sp.reduce.bias), sp.reduce_bn))
    for i in range(2):
        s = F.relu(bn(F.conv2d(s, getattr(sp, f"conv{i}").weight, getattr(sp, f"conv{i}").bias, padding=4,
                               dilation=4), getattr(sp, f"bn{i}")))
    m_s = F.conv2d(s, sp.final.weight, sp.final.bias)                                        # (B, 1, H, W)
    expected = x + x * torch.sigmoid(m_c + m_s)
    torch.testing.assert_close(bam(x), expected, atol=1e-6, rtol=1e-5)


def test_bam_has_the_authors_layer_structure():
    """r=16, d=4, two dilated 3×3 convolutions: the parameter count of the authors' ChannelGate + SpatialGate."""
    bam, rd = BamModule(C), C // 16
    channel_gate = (C * rd + rd) + 2 * rd + (rd * C + C)                  # Linear, BatchNorm1d, Linear
    spatial_gate = (C * rd + rd) + 2 * rd + 2 * (rd * rd * 9 + rd + 2 * rd) + (rd + 1)
    assert sum(p.numel() for p in bam.parameters()) == channel_gate + spatial_gate
    dilated = [m for m in bam.spatial if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert [m.dilation for m in dilated] == [(4, 4), (4, 4)]
    assert BamModule(8).channel.fc1.out_channels == 1                     # narrow layers keep one hidden unit


# ---- Triplet attention: the authors' rotating form ---------------------------------------------------------------

def _official_triplet(block: TripletAttention, x: torch.Tensor) -> torch.Tensor:
    """The authors' forward: rotate the input, Z-pool over dim 1, conv + BN, sigmoid, scale, rotate back."""
    def attention_gate(gate, t):
        pooled = torch.cat((torch.max(t, 1)[0].unsqueeze(1), torch.mean(t, 1).unsqueeze(1)), dim=1)
        return t * torch.sigmoid(gate.conv(pooled))

    out_cw = attention_gate(block.cw, x.permute(0, 2, 1, 3).contiguous()).permute(0, 2, 1, 3).contiguous()
    out_hc = attention_gate(block.hc, x.permute(0, 3, 2, 1).contiguous()).permute(0, 3, 2, 1).contiguous()
    out_hw = attention_gate(block.hw, x)
    return 1 / 3 * (out_hw + out_cw + out_hc)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_triplet_matches_the_authors_rotating_form(train):
    ours = randomise(TripletAttention(C)).train(train)
    reference = randomise(TripletAttention(C)).train(train)   # same seed: same weights, run the authors' way
    reference.forward = types.MethodType(_official_triplet, reference)
    x = torch.randn(4, C, 9, 7, generator=torch.Generator().manual_seed(2))
    # The two forms sum the conv weights' gradients over the positions in another order (rotated layouts), so
    # those agree to float32 rounding of a sum (relative 1e-4), the outputs to 1e-6.
    (out, *grads_and_buffers), (ref_out, *ref_grads_and_buffers) = _run(ours, x), _run(reference, x)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grads_and_buffers, ref_grads_and_buffers, atol=1e-5, rtol=1e-4)


def test_triplet_has_the_authors_state_dict_keys_and_momentum():
    keys = {f"{b}.conv.{layer}.{p}" for b in ("cw", "hc", "hw") for layer, ps in
            (("conv", ["weight"]), ("bn", ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]))
            for p in ps}
    block = TripletAttention(C)
    assert set(block.state_dict()) == keys
    assert block.hw.conv.bn.momentum == 0.01 and block.hw.conv.conv.kernel_size == (7, 7)


# ---- Maps by the protocol ----------------------------------------------------------------------------------------

# name → the (relative path, kind, shape) of every gate site, for x of shape (2, C, 6, 5)
MAPS = {
    "ese": [("", "channel", (2, C, 1, 1))],
    "ceca": [("", "channel", (2, C, 1, 1))],
    "ge": [("", "channel", (2, C, 1, 1))],
    "ge_timm": [("", "channel", (2, C, 1, 1))],
    "gc": [("spatial", "spatial", (2, 1, 6, 5)), ("channel", "channel", (2, C, 1, 1))],
    "gc_timm": [("spatial", "spatial", (2, 1, 6, 5)), ("channel", "channel", (2, C, 1, 1))],
    "gca": [("spatial", "spatial", (2, 1, 6, 5))],
    "gca_timm": [("spatial", "spatial", (2, 1, 6, 5))],
    "coord": [("", "spatial", (2, C, 6, 5))],
    "coord_timm": [("", "spatial", (2, C, 6, 5))],
    "nl": [("", "spatial", (2, 1, 6, 5))],
    "nl_timm": [("", "spatial", (2, 1, 6, 5))],
    "sk": [("channel", "channel", (2, C, 1, 1))],
    "sk_timm": [("channel", "channel", (2, C, 1, 1))],
    "lcbam": [("channel", "channel", (2, C, 1, 1)), ("spatial", "spatial", (2, 1, 6, 5))],
    "bam": [("", "spatial", (2, C, 6, 5))],
    "triplet": [("hw", "spatial", (2, 1, 6, 5))],
}


def test_every_new_name_is_registered_and_has_its_maps_listed():
    assert set(NEW_BLOCKS) <= set(cvattn.layers.list_attn())
    assert set(MAPS) == set(NEW_BLOCKS)


@pytest.mark.parametrize("name", NEW_BLOCKS)
def test_capture_returns_each_gate_with_the_contract_shape(name):
    model = nn.Sequential(nn.Conv2d(3, C, 3, padding=1), create_attn(name, C)).eval()
    x = torch.randn(2, 3, 6, 5)
    with capture_attention(model) as maps:
        model(x)
    expected = {"1" + (f".{path}" if path else ""): (kind, shape) for path, kind, shape in MAPS[name]}
    assert {k: tuple(v.shape) for k, v in maps.items()} == {k: shape for k, (_, shape) in expected.items()}
    modules = dict(model.named_modules())
    for path, (kind, shape) in expected.items():
        assert isinstance(modules[path], AttentionBlock) and modules[path].attn_kind == kind
        # the contract: 'channel' → (B, C, 1, 1); 'spatial' → (B, 1, H, W) or per-channel (B, C, H, W)
        assert shape[2:] == (1, 1) if kind == "channel" else (shape[1] in (1, C) and shape[2:] == (6, 5))


@pytest.mark.parametrize("name, applied", [
    ("ese", lambda x, g: x * g), ("ceca", lambda x, g: x * g), ("ge_timm", lambda x, g: x * g),
    ("coord", lambda x, g: x * g), ("bam", lambda x, g: x * (1 + g)),
])
def test_captured_gate_is_the_attention_applied(name, applied):
    block = randomise(create_attn(name, C)).eval()
    x = torch.randn(2, C, 6, 5)
    with capture_attention(block) as maps:
        out = block(x)
    torch.testing.assert_close(out, applied(x, maps[""]), atol=1e-6, rtol=1e-5)


def test_ge_with_a_local_extent_declares_a_per_position_spatial_map():
    block = GatherExcite(C, extent=2)
    assert block.attn_kind == "spatial" and GatherExcite.attn_kind == "channel"
    with capture_attention(block) as maps:
        out = block(torch.randn(2, C, 6, 5))
    assert maps[""].shape == out.shape


def test_distribution_maps_sum_to_one_and_give_the_context():
    """GC's context weights and non-local's mean received attention are distributions over positions."""
    x = torch.randn(2, C, 6, 5)
    gc = randomise(create_attn("gc", C)).eval()
    nl = randomise(NonLocalAttn(C)).eval()
    with capture_attention(gc) as gc_maps, capture_attention(nl) as nl_maps:
        gc(x), nl(x)
    for weights in (gc_maps["spatial"], nl_maps[""]):
        torch.testing.assert_close(weights.sum((2, 3)), torch.ones(2, 1))
    context = (x * gc_maps["spatial"]).sum((2, 3), keepdim=True)
    torch.testing.assert_close(gc.channel.gate(gc.mlp_scale(context)), gc_maps["channel"])


@pytest.mark.parametrize("name", ["gc", "sk"])
def test_channel_sites_output_the_gated_features(name):
    """The channel-gate saliency map reads a channel block's output as the gated features A·g, as for SE."""
    block = randomise(create_attn(name, C)).eval()
    x = torch.randn(2, C, 6, 5)
    outputs = {}
    block.channel.register_forward_hook(lambda _m, _i, out: outputs.setdefault("site", out))
    with capture_attention(block) as maps:
        out = block(x)
    if name == "sk":
        torch.testing.assert_close(outputs["site"], out)
    else:
        torch.testing.assert_close(outputs["site"], x * maps["channel"])


def test_sk_channel_map_is_the_first_paths_weight():
    block = randomise(SelectiveKernel(C)).eval()
    x = torch.randn(2, C, 6, 5)
    with capture_attention(block) as maps:
        out = block(x)
    paths = [path(x) for path in block.paths]
    torch.testing.assert_close(out, paths[0] * maps["channel"] + paths[1] * (1 - maps["channel"]),
                               atol=1e-5, rtol=1e-5)


# ---- Drop-in use ---------------------------------------------------------------------------------------------------

def _train_step(model: nn.Module, x: torch.Tensor) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = F.cross_entropy(model(x), torch.arange(x.shape[0]) % 10)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


@pytest.mark.parametrize("name", NEW_BLOCKS)
def test_drops_into_the_convnet_and_trains_a_step(name):
    model = cvattn.create_model("convnet2", num_classes=10, in_chans=1, width=8, attn_layer=name).train()
    assert sum(1 for m in model.modules() if type(m) is type(create_attn(name, 8))) == 2
    _train_step(model, torch.randn(4, 1, 12, 12))


def test_attention_in_chosen_convnet_blocks_only():
    model = cvattn.create_model("convnet4", width=8, attn_layer="nl", attn_blocks=[2, 3])
    assert [type(block.attn).__name__ for block in model.blocks] == ["Identity", "Identity", "NonLocalAttn",
                                                                     "NonLocalAttn"]
    plain = cvattn.create_model("convnet4", width=8)
    without = {k: v for k, v in model.state_dict().items() if ".attn." not in k}
    assert without.keys() == plain.state_dict().keys()
    _train_step(model, torch.randn(4, 1, 32, 32))
    for bad in ([4], [-1], 3, [True], ["3"]):
        with pytest.raises(ValueError, match=r"attn_blocks must be a list of block indices from 0 to 3 \(depth=4\)"):
            cvattn.create_model("convnet4", attn_layer="nl", attn_blocks=bad)


def test_gc_drops_into_resnet20_and_trains_a_step():
    model = cvattn.create_model("resnet20", attn_layer="gc", in_chans=1, num_classes=10).train()
    blocks = [m for m in model.modules() if isinstance(m, cvattn.layers.GlobalContext)]
    assert len(blocks) == 9
    _train_step(model, torch.randn(4, 1, 16, 16))


@pytest.mark.parametrize("name", ["bam", "triplet", "coord"])
def test_drops_into_timm_resnet(name):
    """timm's ResNet blocks call ``attn_layer(channels, device=..., dtype=...)``."""
    model = timm.create_model("resnet18", block_args=dict(attn_layer=get_attn(name)), num_classes=10).eval()
    block_type = type(create_attn(name, 64))
    found = [m for m in model.modules() if type(m) is block_type]
    assert len(found) == 8
    if name == "bam":
        assert [m.channel.fc2.out_channels for m in found] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


# ---- Bad input ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, words", [
    (lambda: SelectiveKernel(C, groups=3), ["groups=3", "divide", "1"]),
    (lambda: create_attn("sk_timm", 63), ["63", "divisible by 2"]),
    (lambda: SelectiveKernel(C, kernel_size=(3, 4)), ["odd", "(3, 4)"]),
    (lambda: NonLocalAttn(C, rd_channels=0), ["rd_channels", "0"]),
    (lambda: NonLocalAttn(0), ["NonLocalAttn", "0"]),
    (lambda: GatherExcite(C, extent=3), ["extent", "power of 2", "3"]),
    (lambda: GatherExcite(C, extra_params=True), ["extra_params", "extent > 0"]),
    (lambda: create_attn("gc", C, fuse_scale=False), ["fuse_add", "fuse_scale"]),
    (lambda: create_attn("coord", C, convention="paperr"), ["'paperr'", "'paper'", "'timm'"]),
    (lambda: create_attn("bamm", C), ["'bamm'", "Did you mean 'bam'", "'triplet'", "'none'"]),
    (lambda: create_attn("tripplet", C), ["Did you mean 'triplet'"]),
    (lambda: TripletAttention(C, kernel_size=4), ["kernel_size", "odd", "4"]),
])
def test_bad_input_names_the_value_and_what_is_accepted(make, words):
    with pytest.raises(ValueError) as info:
        make()
    for word in words:
        assert word in str(info.value)


def test_timm_weights_of_another_block_are_refused_with_the_keys_named():
    ours = create_attn("gc_timm", C)
    other = timm.layers.SEModule(C).state_dict()
    with pytest.raises(RuntimeError, match="Missing key"):
        ours.load_state_dict(other)
    sentence = state_dict_mismatch(other, ours.state_dict())
    assert "missing keys" in sentence and "conv_attn.weight" in sentence and "unexpected keys: 4" in sentence
