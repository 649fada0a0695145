"""Score functions and ScoreAttention against the formulas written out by hand (loops and einsum)."""
import math

import pytest
import torch

from cvattn.layers.score_attention import SCORES, ScoreAttention, create_score


def by_hand(score: torch.nn.Module, name: str, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """e_ij for q (Nq, d_q), k (Nk, d_k), one pair at a time."""
    out = torch.empty(len(q), len(k))
    for i in range(len(q)):
        for j in range(len(k)):
            if name == "dot":
                out[i, j] = (q[i] * k[j]).sum()
            elif name == "scaled_dot":
                out[i, j] = (q[i] * k[j]).sum() / math.sqrt(k.shape[-1])
            elif name == "general":
                out[i, j] = q[i] @ score.weight @ k[j]                            # qᵀ W k
            else:
                out[i, j] = score.v @ torch.tanh(score.query_weight @ q[i] + score.key_weight @ k[j])
    return out


@pytest.mark.parametrize("name", SCORES)
def test_each_score_is_its_formula(name):
    torch.manual_seed(0)
    d_q, d_k = (6, 6) if name in ("dot", "scaled_dot") else (6, 4)
    score = create_score(name, d_q, d_k)
    q, k = torch.randn(2, 3, 5, d_q), torch.randn(2, 3, 7, d_k)                   # (B, heads, N, d)
    e = score(q, k)
    assert e.shape == (2, 3, 5, 7)
    for b in range(2):
        for h in range(3):
            torch.testing.assert_close(e[b, h], by_hand(score, name, q[b, h], k[b, h]), rtol=1e-5, atol=1e-5)


def test_additive_hidden_width_and_general_shapes():
    assert create_score("additive", 6, 4, hidden_dim=9).v.shape == (9,)
    assert create_score("additive", 6, 4).v.shape == (4,)                         # d_a defaults to d_k
    assert create_score("general", 6, 4).weight.shape == (6, 4)


def test_bad_score_names_and_widths():
    with pytest.raises(ValueError, match=r"Unknown score function 'scaled_dott'\. Did you mean 'scaled_dot'\?"):
        create_score("scaled_dott", 4, 4)
    with pytest.raises(ValueError, match=r"query width 8 and key width 4.*'general' or 'additive'"):
        create_score("dot", 8, 4)
    with pytest.raises(ValueError, match=r"query width 8 and key width 4"):
        create_score("scaled_dot", 8, 4)
    with pytest.raises(ValueError, match=r"built for query width 6 and key width 4; got queries of width 6 .* keys "
                                         r"of width 5"):
        create_score("general", 6, 4)(torch.randn(2, 6), torch.randn(3, 5))
    with pytest.raises(ValueError, match="hidden_dim must be a positive integer"):
        create_score("additive", 4, 4, hidden_dim=0)
    with pytest.raises(ValueError, match="dim=10 is not divisible by num_heads=3"):
        ScoreAttention(10, 3)
    with pytest.raises(ValueError, match=r"dim=8 and takes \(B, N, 8\); got a tensor of shape \(2, 5, 6\)"):
        ScoreAttention(8, 2)(torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match="num_queries must be a positive integer, got 0"):
        ScoreAttention(8, 2, num_queries=0)


def attention_by_hand(module: ScoreAttention, name: str, x: torch.Tensor, mask=None, window=None):
    """Multi-head attention written out: per head project, score pair by pair, softmax, weighted sum, W_O."""
    B, N, C = x.shape
    H, d = module.num_heads, module.head_dim
    if module.num_queries is None:
        w_q, w_k, w_v = module.qkv.weight.chunk(3)
        b_q, b_k, b_v = module.qkv.bias.chunk(3)
        queries = torch.einsum("bnc,oc->bno", x, w_q) + b_q
    else:
        w_q, b_q = module.q.weight, module.q.bias
        w_k, w_v = module.kv.weight.chunk(2)
        b_k, b_v = module.kv.bias.chunk(2)
        queries = (torch.einsum("nc,oc->no", module.queries, w_q) + b_q).expand(B, -1, -1)
    keys = torch.einsum("bnc,oc->bno", x, w_k) + b_k
    values = torch.einsum("bnc,oc->bno", x, w_v) + b_v
    heads_out, weights = [], torch.empty(B, H, queries.shape[1], N)
    for h in range(H):
        part = slice(h * d, (h + 1) * d)
        per_image = []
        for b in range(B):
            e = by_hand(module.score, name, queries[b, :, part], keys[b, :, part])  # (Nq, N)
            if mask is not None:
                e = torch.where(mask, e, torch.tensor(float("-inf")))
            a = torch.exp(e - e.max(-1, keepdim=True).values)
            a = a / a.sum(-1, keepdim=True)
            if window is not None:
                a = a * window[b]
            weights[b, h] = a
            per_image.append(torch.einsum("ij,jc->ic", a, values[b, :, part]))
        heads_out.append(torch.stack(per_image))
    out = torch.cat(heads_out, dim=-1) @ module.proj.weight.T + module.proj.bias
    return out, weights


@pytest.mark.parametrize("num_queries", [None, 3], ids=["self", "learned_queries"])
@pytest.mark.parametrize("name", SCORES)
def test_score_attention_is_the_formula(name, num_queries):
    torch.manual_seed(0)
    module = ScoreAttention(12, num_heads=2, score=name, num_queries=num_queries).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(2, 5, 12)
    out, attn = module(x, need_weights=True)
    expected, weights = attention_by_hand(module, name, x)
    nq = 5 if num_queries is None else 3
    assert out.shape == (2, nq, 12) and attn.shape == (2, 2, nq, 5)
    torch.testing.assert_close(attn, weights, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(module.last_attn, attn.detach())
    assert not module.last_attn.requires_grad
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, nq))
    assert module(x)[1] is None                                                  # weights only when asked


@pytest.mark.parametrize("name", SCORES)
def test_mask_and_window(name):
    torch.manual_seed(1)
    module = ScoreAttention(8, num_heads=2, score=name, num_queries=2).eval()
    x = torch.randn(3, 6, 8)
    mask = torch.rand(2, 6) > 0.4
    mask[:, 0] = True                                                            # every row allows a key
    window = torch.rand(3, 2, 6)
    out, attn = module(x, attn_mask=mask, need_weights=True, window=window[:, None])
    expected, weights = attention_by_hand(module, name, x, mask, window)
    torch.testing.assert_close(attn, weights, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert (attn[:, :, ~mask] == 0).all()


def test_scaled_dot_equals_the_vit_attention_and_sdpa():
    """Self-attention with 'scaled_dot' is the ViT's multi-head attention on the same weights (same key layout)."""
    from cvattn.models.vit import Attention

    torch.manual_seed(0)
    reference = Attention(16, num_heads=4).eval()
    module = ScoreAttention(16, num_heads=4, score="scaled_dot").eval()
    module.load_state_dict(reference.state_dict())
    x = torch.randn(2, 7, 16)
    out, attn = module(x, need_weights=True)
    ref_out, ref_attn = reference(x, need_weights=True)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(attn, ref_attn)
    torch.testing.assert_close(out, reference(x)[0], rtol=1e-5, atol=1e-5)        # the fused SDPA path


@pytest.mark.parametrize("name", SCORES)
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    module = ScoreAttention(8, num_heads=2, score=name, num_queries=2)
    x = torch.randn(2, 5, 8, requires_grad=True)
    module(x)[0].square().sum().backward()
    assert x.grad.abs().sum() > 0
    for param_name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, param_name


# ---- the ViT with another score function ---------------------------------------------------------------------
VIT = dict(img_size=28, patch_size=7, in_chans=1, num_classes=5, embed_dim=16, depth=2, num_heads=2)


def test_vit_default_score_keeps_the_fused_attention():
    from cvattn.models.vit import Attention, VisionTransformer

    torch.manual_seed(0)
    default = VisionTransformer(**VIT)
    torch.manual_seed(0)
    explicit = VisionTransformer(**VIT, attn_score="scaled_dot")
    assert all(type(block.attn) is Attention for block in explicit.blocks)
    assert default.state_dict().keys() == explicit.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), explicit.state_dict().values()))


@pytest.mark.parametrize("name", ["dot", "general", "additive"])
def test_vit_with_another_score_reads_its_attention(name):
    from cvattn.models.vit import VisionTransformer, local_attention_mask

    torch.manual_seed(0)
    model = VisionTransformer(**VIT, attn_score=name, local_window=1).eval()
    assert all(isinstance(block.attn, ScoreAttention) for block in model.blocks)
    assert model.blocks[0].attn.qkv.weight.shape == (48, 16)                     # the ViT's qkv layout
    x = torch.randn(2, 1, 28, 28)
    logits, attn = model.forward_attention(x)
    torch.testing.assert_close(logits, model(x))
    assert attn.shape == (2, 2, 2, 17, 17)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, 2, 17))
    allowed = local_attention_mask((4, 4), 1)
    assert (attn[..., ~allowed] == 0).all()
    torch.testing.assert_close(model.blocks[-1].attn.last_attn, attn[:, -1])
    # the block's attention is the score's formula: compare with ScoreAttention's own by-hand reference
    block = model.blocks[0]
    tokens = block.norm1(model._embed(x)[0])
    _, weights = attention_by_hand(block.attn, name, tokens.detach(), allowed)
    torch.testing.assert_close(attn[:, 0], weights, rtol=1e-5, atol=1e-5)


def test_vit_bad_score_name():
    from cvattn.models.vit import VisionTransformer

    with pytest.raises(ValueError, match=r"Unknown score function 'adittive'\. Did you mean 'additive'\?"):
        VisionTransformer(**VIT, attn_score="adittive")
