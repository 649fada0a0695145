"""Attention-pooling heads and the models built on them: formulas, shapes, the local-p window, gradients, bad
arguments, and their native saliency maps."""
import math

import pytest
import torch
import torch.nn.functional as F

import cvattn
from cvattn.contracts import AttentionPooler, FeatureBackbone
from cvattn.layers.attention_pool import AttentionPool2d, ClassAttentionPool2d, LocalPAttentionPool2d
from cvattn.layers.score_attention import SCORES
from cvattn.models.attnpool import AttentionPoolClassifier
from cvattn.saliency import available_methods, default_methods, saliency
from cvattn.saliency.runtime import normalise

HEAD_MODELS = ["attnpool_convnet2", "classattn_convnet2", "localp_convnet2",
               "attnpool_convnet4", "classattn_convnet4", "localp_convnet4",
               "attnpool_resnet20", "classattn_resnet20", "localp_resnet20"]


def randomise(module: torch.nn.Module, std: float = 0.5) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)
    return module


def softmax_attention(head, x: torch.Tensor, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The one-head attention pooling written out: (pooled (B, Q, C), weights (B, Q, H·W))."""
    attn = head.attn
    tokens = x.flatten(2).transpose(1, 2)                                       # (B, N, C)
    queries = F.linear(attn.queries, attn.q.weight, attn.q.bias)                # (Q, C)
    w_k, w_v = attn.kv.weight.chunk(2)
    b_k, b_v = attn.kv.bias.chunk(2)
    keys, values = F.linear(tokens, w_k, b_k), F.linear(tokens, w_v, b_v)
    scores = torch.einsum("qc,bnc->bqn", queries, keys) / math.sqrt(x.shape[1])  # scaled dot
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None], float("-inf"))
    weights = scores.softmax(-1)
    return weights, values


def test_shared_head_is_the_formula_and_gap_is_a_special_case():
    head = randomise(AttentionPool2d(6, 4)).eval()
    x = torch.randn(2, 6, 3, 5)
    weights, values = softmax_attention(head, x)
    pooled = F.linear(torch.einsum("bqn,bnc->bqc", weights, values), head.attn.proj.weight, head.attn.proj.bias)
    torch.testing.assert_close(head(x), head.fc(pooled[:, 0]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(head(x, pre_logits=True), pooled[:, 0], rtol=1e-5, atol=1e-5)
    logits, maps = head.forward_with_attention(x)
    assert logits.shape == (2, 4) and maps.shape == (2, 1, 3, 5)
    torch.testing.assert_close(maps.flatten(2), weights, rtol=1e-5, atol=1e-6)

    # A zero query scores every position alike; with W_V, W_O the identity the pool is the mean: GAP.
    with torch.no_grad():
        for p in head.attn.parameters():
            p.zero_()
        for linear in (head.attn.kv, head.attn.proj):
            linear.weight[-6:].copy_(torch.eye(6))
    torch.testing.assert_close(head(x, pre_logits=True), x.mean((2, 3)))


def test_per_class_head_gives_each_class_its_own_pooled_vector():
    head = randomise(ClassAttentionPool2d(6, 3)).eval()
    x = torch.randn(2, 6, 4, 4)
    weights, values = softmax_attention(head, x)
    pooled = F.linear(torch.einsum("bqn,bnc->bqc", weights, values), head.attn.proj.weight, head.attn.proj.bias)
    expected = torch.stack([pooled[:, k] @ head.weight[k] + head.bias[k] for k in range(3)], dim=1)
    torch.testing.assert_close(head(x), expected, rtol=1e-5, atol=1e-5)
    assert head(x, pre_logits=True).shape == (2, 3, 6)
    logits, maps = head.forward_with_attention(x)
    assert maps.shape == (2, 3, 4, 4)
    torch.testing.assert_close(maps.sum((2, 3)), torch.ones(2, 3))
    assert not torch.allclose(maps[:, 0], maps[:, 1])                            # one map per class


def test_local_p_window_is_centred_where_predicted():
    head = randomise(LocalPAttentionPool2d(6, 3, half_window=2)).eval()
    x = torch.randn(2, 6, 9, 7)
    window, inside, centre = (t.detach() for t in head.window(x))
    expected_centre = torch.sigmoid(head.centre(x.mean((2, 3)))) * torch.tensor([8.0, 6.0])
    torch.testing.assert_close(centre, expected_centre)
    assert head.sigma == 1.0                                                     # σ = D / 2
    rows, cols = torch.meshgrid(torch.arange(9.0), torch.arange(7.0), indexing="ij")
    for b in range(2):
        r, c = centre[b]
        square = ((rows - r).abs() <= 2) & ((cols - c).abs() <= 2)
        gaussian = torch.exp(-((rows - r) ** 2 + (cols - c) ** 2) / 2)
        torch.testing.assert_close(window[b].reshape(9, 7), gaussian * square)
        peak = divmod(int(window[b].argmax()), 7)
        assert peak == (round(float(r)), round(float(c)))                       # the nearest grid point
    # The pooled weights: softmax over the window's positions, times the Gaussian.
    logits, maps = head.forward_with_attention(x)
    weights, values = softmax_attention(head, x, inside)
    torch.testing.assert_close(maps.flatten(2), weights * window[:, None], rtol=1e-5, atol=1e-6)
    assert (maps.flatten(2)[~inside[:, None]] == 0).all()
    torch.testing.assert_close(head.last_centre, centre)
    pooled = F.linear(torch.einsum("bqn,bnc->bqc", weights * window[:, None], values), head.attn.proj.weight,
                      head.attn.proj.bias)
    torch.testing.assert_close(logits, head.fc(pooled[:, 0]), rtol=1e-5, atol=1e-5)


def test_local_p_centre_starts_mid_map_and_follows_the_features():
    head = LocalPAttentionPool2d(4, 2)
    x = torch.randn(3, 4, 8, 8)
    torch.testing.assert_close(head.window(x)[2], torch.full((3, 2), 3.5))
    with torch.no_grad():
        head.centre[0].weight.copy_(torch.eye(4))
        head.centre[-1].weight.copy_(torch.tensor([[5.0, 0, 0, 0], [0, -5.0, 0, 0]]))
    bright = torch.zeros(1, 4, 8, 8)
    bright[:, 0] = 1.0                                                           # mean channel 0 high → bottom row
    centre = head.window(bright)[2][0]
    assert centre[0] > 6.5 and 3.4 < centre[1] < 3.6


@pytest.mark.parametrize("head_name", ["attn", "class_attn", "local_p"])
@pytest.mark.parametrize("score", SCORES)
def test_every_head_and_score_trains_end_to_end(head_name, score):
    torch.manual_seed(0)
    model = AttentionPoolClassifier(cvattn.create_model("convnet2", width=4, features_only=True), num_classes=3,
                                    head=head_name, score=score, num_heads=2)
    if head_name == "local_p":
        torch.nn.init.normal_(model.attn_pool.centre[-1].weight, std=0.5)     # so W_p gets a gradient too
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 3)
    F.cross_entropy(logits, torch.tensor([0, 2])).backward()
    assert x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("name", HEAD_MODELS)
def test_models_keep_the_backbone_contract_and_offer_their_map(name):
    model = cvattn.create_model(name, num_classes=5).eval()
    assert isinstance(model, FeatureBackbone) and isinstance(model, AttentionPooler)
    x = torch.randn(2, model.in_chans, 32, 32)
    features = model.forward_features(x)
    logits, maps = model.forward_pool_attention(x)
    torch.testing.assert_close(logits, model(x))
    queries = 5 if name.startswith("classattn") else 1
    assert maps.shape == (2, queries, *features.shape[-2:])
    assert model.feature_info[-1]["module"].startswith("backbone.")
    assert "pool_attention" in available_methods(model) and "pool_attention" in default_methods(model)
    backbone = cvattn.create_model(name, features_only=True)
    assert not isinstance(backbone, AttentionPooler) and "pool_attention" not in available_methods(backbone)


def test_plain_cnns_do_not_offer_the_pool_map():
    assert "pool_attention" not in available_methods(cvattn.create_model("convnet2"))
    assert "pool_attention" not in available_methods(cvattn.create_model("vit_tiny_patch4_28", depth=1))


def test_per_class_saliency_is_the_target_class_map():
    model = randomise(cvattn.create_model("classattn_convnet2", width=8, num_classes=4), std=0.3).eval()
    x = torch.randn(3, 1, 28, 28)
    _, maps = model.forward_pool_attention(x)                                   # (3, 4, 7, 7)
    by_class = [saliency(model, x, "pool_attention", target=k) for k in range(4)]
    for k in range(4):
        expected = normalise(F.interpolate(maps[:, k:k + 1], size=(28, 28), mode="bilinear")[:, 0])
        torch.testing.assert_close(by_class[k], expected)
    assert not torch.allclose(by_class[0], by_class[1])                        # the map depends on the target
    per_image = saliency(model, x, "pool_attention", target=[2, 0, 3])
    for i, k in enumerate([2, 0, 3]):
        torch.testing.assert_close(per_image[i], by_class[k][i])


def test_shared_and_local_p_saliency_ignore_the_target_and_show_window_times_attention():
    for name in ("attnpool_convnet2", "localp_convnet2"):
        model = randomise(cvattn.create_model(name, width=8), std=0.3).eval()
        x = torch.randn(2, 1, 28, 28)
        torch.testing.assert_close(saliency(model, x, "pool_attention", target=0),
                                   saliency(model, x, "pool_attention", target=7))
    # local-p: zero outside the window around the predicted centre (7×7 map, D = 2)
    _, maps = model.forward_pool_attention(x)
    window, inside, _ = model.attn_pool.window(model.forward_features(x))
    assert (maps.flatten(2)[~inside[:, None]] == 0).all() and (maps.flatten(2)[inside[:, None]] > 0).all()


def test_bad_arguments():
    backbone = cvattn.create_model("convnet2", width=4, features_only=True)
    with pytest.raises(ValueError, match=r"Unknown attention-pooling head 'class_atn'\. Did you mean 'class_attn'"):
        AttentionPoolClassifier(backbone, head="class_atn")
    with pytest.raises(ValueError, match=r"Unknown score function 'genral'\. Did you mean 'general'"):
        cvattn.create_model("attnpool_convnet2", score="genral")
    with pytest.raises(ValueError, match="half_window must be a positive integer, got 0"):
        cvattn.create_model("localp_convnet2", half_window=0)
    with pytest.raises(ValueError, match="dim=64 is not divisible by num_heads=3"):
        cvattn.create_model("attnpool_convnet2", num_heads=3)
    with pytest.raises(ValueError, match=r"needs a backbone with forward_features.*got a Linear"):
        AttentionPoolClassifier(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"Model 'attnpool_convnet2' does not take the argument 'widht'\. Did you "
                                         r"mean 'width'"):
        cvattn.create_model("attnpool_convnet2", widht=8)
    with pytest.raises(ValueError, match=r"built for feature maps of 8 channels, \(B, 8, H, W\); got a tensor of "
                                         r"shape \(2, 6, 4, 4\)"):
        AttentionPool2d(8, 3)(torch.randn(2, 6, 4, 4))
    with pytest.raises(ValueError, match=r"in_chans=1.*shape \(2, 3, 28, 28\)"):
        cvattn.create_model("classattn_convnet2")(torch.randn(2, 3, 28, 28))
