"""PanSt3R inference-flow semantics on the tiny pseudo-random model (seconds): view reordering, the
non-keyframe path, batching, feature reuse, memory masking and the building blocks' conventions."""

from __future__ import annotations

import pytest
import torch

from panst3r import build_model
from panst3r.model.heads import norm_exp, postprocess_pointmap
from panst3r.model.layers import RoPE2D, grid_positions
from panst3r.model.mask_transformer import sine_position_encoding

H, W = 64, 96


@pytest.fixture(scope="module", params=["v1", "v2"])
def model(request):
    return build_model(request.param, "tiny")


@pytest.fixture(scope="module")
def views():
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, H, W, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def text(model):
    return torch.randn(5, model.text_dim, generator=torch.Generator().manual_seed(1))


def test_output_contract(model, views, text):
    out = model.infer(views, [0, 2], text)
    Q = model.config.num_queries
    assert tuple(out.pts3d.shape) == (4, H, W, 3) and tuple(out.pts3d_local.shape) == (4, H, W, 3)
    assert tuple(out.conf.shape) == (4, H, W) and bool((out.conf > 1).all())
    assert tuple(out.pred_logits.shape) == (Q, 5) and tuple(out.out_queries.shape) == (Q, model.config.hidden_dim)
    assert len(out.pred_masks) == 4 and all(tuple(m.shape) == (Q, H // 2, W // 2) for m in out.pred_masks)
    assert out.keyframes == [0, 2] and out.true_shape == (H, W)
    assert all(t.dtype == torch.float32 for t in [out.pts3d, out.conf, out.pred_logits, *out.pred_masks])
    assert torch.isfinite(torch.stack(out.pred_masks)).all()


def test_views_come_back_in_input_order(model, views, text):
    """Permuting the inputs (with the same keyframes in the same order) permutes the outputs."""
    a = model.infer(views, [0, 2], text)
    perm = [2, 3, 0, 1]  # new index j holds old view perm[j]; keyframes 0, 2 are now 2, 0
    b = model.infer(views[perm], [2, 0], text)
    for j, i in enumerate(perm):
        assert torch.allclose(b.pts3d[j], a.pts3d[i], atol=1e-5)
        assert torch.allclose(b.pred_masks[j], a.pred_masks[i], atol=1e-5)
    assert torch.allclose(b.pred_logits, a.pred_logits, atol=1e-6)


def test_non_keyframes_use_fixed_keyframe_queries(model, views, text):
    """A non-keyframe changes nothing for the keyframes; its masks are the prediction heads on out_queries."""
    a = model.infer(views, [0, 2], text)
    b = model.infer(views[[0, 2]], [0, 1], text)
    assert torch.allclose(a.pred_logits, b.pred_logits, atol=1e-6)
    assert torch.allclose(a.out_queries, b.out_queries, atol=1e-6)
    assert torch.allclose(a.pred_masks[2], b.pred_masks[1], atol=1e-5)
    # the keyframe flow with view 1 as the only extra keyframe gives other queries (the path differs)
    c = model.infer(views, [0, 2, 1], text)
    assert not torch.allclose(c.out_queries, a.out_queries, atol=1e-4)


def test_batching_and_feature_reuse_do_not_change_results(model, views, text):
    a = model.infer(views, [1, 3], text)
    b = model.infer(views, [1, 3], text, max_bs=3)
    enc = model.encode(views)
    c = model.infer(views, [1, 3], text, encoded=enc)
    d = model.infer(views, [1, 3], text, encoded=enc)  # renders now served from the cache
    assert len(enc.renders) == 4
    for o in (b, c, d):
        assert torch.allclose(o.pts3d, a.pts3d, atol=1e-5)
        assert all(torch.allclose(x, y, atol=1e-4) for x, y in zip(o.pred_masks, a.pred_masks))
    assert torch.equal(c.pred_masks[0], d.pred_masks[0]) and torch.equal(c.conf, d.conf)


def test_single_view_and_bad_arguments(model, views, text):
    out = model.infer(views[:1], [0], text)  # memory from the view paired with itself, as the demo does
    assert tuple(out.pts3d.shape) == (1, H, W, 3)
    with pytest.raises(ValueError, match="distinct"):
        model.infer(views, [0, 0], text)
    with pytest.raises(ValueError, match="text_embeddings"):
        model.infer(views, [0], torch.zeros(3, model.text_dim + 1))
    with pytest.raises(ValueError, match="multiple of 16"):
        model.infer(views[..., :60, :], [0], text)


def test_memory_update_masks_own_tokens(model, views):
    """Memory layout: N tokens per image and layer; a later batch appends without touching old entries."""
    m = model
    enc = m.encode(views[:3])
    mem = m.build_memory(enc.x_enc[:2], enc.pos)
    N = enc.pos.shape[0]
    assert len(mem) == m.config.dec_depth and mem[0].shape == (2 * N, m.config.dec_dim)
    x2 = enc.x_enc[:2].clone()
    x2[1] += 1.0
    mem2 = m.build_memory(x2, enc.pos)
    # layer 0 stores norm_y(input + feedback offset); the offset of image 0 comes from its last-block input,
    # which depends on image 1 through cross-attention, so image 0's entry changes too
    assert not torch.allclose(mem[0][:N], mem2[0][:N])
    # a third image adds N tokens per layer and leaves the old entries untouched
    mem3 = m.must3r_decoder.update_memory(enc.x_enc[2:3], enc.pos[None], mem)
    assert mem3[5 % len(mem3)].shape[0] == 3 * N
    assert all(torch.equal(a, b[: 2 * N]) for a, b in zip(mem, mem3))


def _reference_update(dec, x_enc, pos, mem):
    """Memory update written with one joint key set and an explicit own-token attention mask."""
    import torch.nn.functional as F

    n, N, _ = x_enc.shape
    x = dec.feat_embed_enc_to_dec(x_enc)
    gets_embed = torch.ones(n, 1, 1)
    if mem is None:
        gets_embed[0] = 0  # the reference image
    x = x + gets_embed * dec.image2_embed
    old = 0 if mem is None else mem[0].shape[0]
    allowed = torch.ones(n, old + n * N, dtype=torch.bool)
    for j in range(n):
        allowed[j, old + j * N: old + (j + 1) * N] = False
    inputs = []
    for i, blk in enumerate(dec.blocks_dec):
        inputs.append(x)
        kv = blk.norm_y(x).reshape(1, n * N, -1)
        if mem is not None:
            kv = torch.cat([mem[i][None], kv], dim=1)
        x = x + blk.attn(blk.norm1(x), pos)
        ca, h = blk.cross_attn, blk.cross_attn.num_heads
        C = x.shape[-1]
        q = ca.projq(blk.norm2(x)).reshape(n, N, h, C // h).transpose(1, 2)
        k = ca.projk(kv).reshape(1, -1, h, C // h).transpose(1, 2).expand(n, -1, -1, -1)
        v = ca.projv(kv).reshape(1, -1, h, C // h).transpose(1, 2).expand(n, -1, -1, -1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None, None, :])
        x = x + ca.proj(o.transpose(1, 2).reshape(n, N, C))
        x = x + blk.mlp(blk.norm3(x))
    offset = dec.feedback_layer(dec.feedback_norm(inputs[-1]))
    last = len(inputs) - 1
    new = [blk.norm_y(inputs[i] + (offset if i < last else 0)).reshape(n * N, -1) for i, blk in enumerate(dec.blocks_dec)]
    return new if mem is None else [torch.cat([m, t]) for m, t in zip(mem, new)]


def test_memory_update_matches_masked_reference(model, views):
    dec = model.must3r_decoder
    enc = model.encode(views)
    pos = enc.pos[None]
    with torch.no_grad():
        ref = _reference_update(dec, enc.x_enc[:2], pos.expand(2, -1, -1), None)
        ref = _reference_update(dec, enc.x_enc[2:4], pos.expand(2, -1, -1), ref)  # a later 2-image batch
    ours = dec.update_memory(enc.x_enc[:2], pos.expand(2, -1, -1), None)
    ours = dec.update_memory(enc.x_enc[2:4], pos.expand(2, -1, -1), ours)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, ref))


def test_rope_and_positional_conventions():
    pos = grid_positions(2, 3)
    assert pos.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    rope = RoPE2D(100.0)
    x = torch.randn(1, 1, 6, 8)
    y = rope(x, pos[None])
    # position (0, 0) is the identity; rotation preserves the norm of each rotated pair
    assert torch.allclose(y[0, 0, 0], x[0, 0, 0])
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-6)
    # column-only shift: the row half (first 4 dims) is unchanged, the column half rotates by angle 1 * freq;
    # for d=4 per half, frequencies are 1 and 1/100^(2/4) = 0.1, pairs (0,2) and (1,3)
    a = x[0, 0, 1, 4:]
    c, s = torch.cos(torch.tensor([1.0, 0.1])), torch.sin(torch.tensor([1.0, 0.1]))
    expect = torch.cat([a[:2] * c - a[2:] * s, a[2:] * c + a[:2] * s])
    assert torch.allclose(y[0, 0, 1, :4], x[0, 0, 1, :4]) and torch.allclose(y[0, 0, 1, 4:], expect, atol=1e-6)
    pe = sine_position_encoding(2, 3, 4)
    assert tuple(pe.shape) == (6, 8)
    # [y-part, x-part] with (sin, cos) pairs; position k of n maps to 2*pi*k/n, frequency pair j divided by
    # 10000^(2j/num_feats): row 0 of 2 -> pi, column 0 of 3 -> 2*pi/3
    tp = 2 * torch.pi
    assert abs(pe[0, 1].item() - (-1.0)) < 1e-5 and abs(pe[3, 1].item() - 1.0) < 1e-5  # cos(pi), cos(2 pi)
    assert abs(pe[0, 4].item() - torch.sin(torch.tensor(tp / 3)).item()) < 1e-5
    assert abs(pe[0, 5].item() - torch.cos(torch.tensor(tp / 3)).item()) < 1e-5
    assert abs(pe[0, 6].item() - torch.sin(torch.tensor(tp / 3 / 100)).item()) < 1e-5
    assert abs(pe[5, 6].item() - torch.sin(torch.tensor(tp / 100)).item()) < 1e-5  # column 2 of 3


def test_pointmap_postprocess():
    raw = torch.tensor([[3.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    pts, loc, conf = postprocess_pointmap(raw)
    assert torch.allclose(pts[0], torch.tensor([0.6, 0.8, 0.0]) * torch.expm1(torch.tensor(5.0)))
    assert torch.equal(loc[0], torch.zeros(3)) and conf.item() == 2.0
    assert torch.allclose(norm_exp(torch.tensor([[-2.0, 0, 0]])), torch.tensor([[-torch.expm1(torch.tensor(2.0)), 0, 0]]))
