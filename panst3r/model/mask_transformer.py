"""Mask2Former-style query decoder over the tokens of several views, with a cosine class head.

One feature level (stride 16). Layer order (post-norm): masked cross-attention -> self-attention -> FFN,
then the prediction heads, whose masks (thresholded sigmoid < 0.5 at the token grid) block keys in the
next layer's cross-attention; a query whose row is fully blocked is unblocked. The queries attend to the
tokens of all views given jointly; each view has its own sine position encoding.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MaskTransformer", "sine_position_encoding", "PanopticDecoder"]


def sine_position_encoding(h: int, w: int, num_feats: int, temperature: float = 10000.0, device=None) -> Tensor:
    """DETR sine encoding, normalised to (0, 2pi]: [h*w, 2*num_feats] as [y-part, x-part], row-major."""
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device)[:, None].expand(h, w)
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device)[None, :].expand(h, w)
    y = y / (y[-1:, :] + eps) * scale
    x = x / (x[:, -1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    px = x[..., None] / dim_t
    py = y[..., None] / dim_t
    px = torch.stack([px[..., 0::2].sin(), px[..., 1::2].cos()], dim=-1).flatten(2)
    py = torch.stack([py[..., 0::2].sin(), py[..., 1::2].cos()], dim=-1).flatten(2)
    return torch.cat([py, px], dim=-1).reshape(h * w, 2 * num_feats)


class _CrossAttentionLayer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(dim, heads, dropout=0.0)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt: Tensor, memory: Tensor, mask: Tensor, pos: Tensor, query_pos: Tensor) -> Tensor:
        out = self.multihead_attn(tgt + query_pos, memory + pos, memory, attn_mask=mask, need_weights=False)[0]
        return self.norm(tgt + out)


class _SelfAttentionLayer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=0.0)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt: Tensor, query_pos: Tensor) -> Tensor:
        q = tgt + query_pos
        return self.norm(tgt + self.self_attn(q, q, tgt, need_weights=False)[0])


class _FFNLayer(nn.Module):
    def __init__(self, dim: int, ff_dim: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, ff_dim)
        self.linear2 = nn.Linear(ff_dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt: Tensor) -> Tensor:
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class _MLP(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int = 3):
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])])

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskTransformer(nn.Module):
    def __init__(self, hidden_dim: int = 768, mask_dim: int = 256, num_queries: int = 200, num_heads: int = 8,
                 num_layers: int = 6, ff_dim: int = 2048, text_dim: int = 768):
        super().__init__()
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.cls_logit_scale = nn.Parameter(torch.tensor(1.0))
        self.self_attn_layers = nn.ModuleList([_SelfAttentionLayer(hidden_dim, num_heads) for _ in range(num_layers)])
        self.cross_attn_layers = nn.ModuleList([_CrossAttentionLayer(hidden_dim, num_heads) for _ in range(num_layers)])
        self.ffn_layers = nn.ModuleList([_FFNLayer(hidden_dim, ff_dim) for _ in range(num_layers)])
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(1, hidden_dim)
        self.lang_embed = nn.Linear(hidden_dim, text_dim)
        self.mask_embed = _MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def prediction_heads(self, output: Tensor, mask_features: Sequence[Tensor], text: Tensor | None
                         ) -> tuple[Tensor | None, list[Tensor]]:
        """output [Q, D] queries -> (class logits [Q, C] or None, per-view mask logits [Q, h2, w2])."""
        q = self.decoder_norm(output)
        logits = None
        if text is not None:
            e = self.lang_embed(q)
            e = e / (e.norm(dim=-1, keepdim=True) + 1e-7)
            t = text / text.norm(dim=-1, keepdim=True)
            logits = self.cls_logit_scale.exp() * (e @ t.T)
        me = self.mask_embed(q)  # [Q, mask_dim]
        masks = [torch.einsum("qc,chw->qhw", me, mf) for mf in mask_features]
        return logits, masks

    def _attn_mask(self, masks: Sequence[Tensor], grids: Sequence[tuple[int, int]]) -> Tensor:
        blocked = []
        for m, hw in zip(masks, grids):
            r = F.interpolate(m[None], size=hw, mode="bilinear", align_corners=False)[0]  # [Q, h, w]
            blocked.append(r.sigmoid().flatten(1) < 0.5)
        mask = torch.cat(blocked, dim=1)  # [Q, S]
        mask[mask.all(dim=1)] = False
        return mask[None].expand(self.num_heads, -1, -1)  # [heads, Q, S] (batch 1)

    def forward(self, fpn: Sequence[Tensor], mask_features: Sequence[Tensor], text: Tensor
                ) -> tuple[Tensor, list[Tensor], Tensor]:
        """fpn: V maps [D, h, w]; mask_features: V maps [mask_dim, h2, w2]; text [C, E] raw embeddings.

        Returns pred_logits [Q, C], pred_masks (V x [Q, h2, w2]) and out_queries [Q, D].
        """
        grids = [tuple(f.shape[-2:]) for f in fpn]
        src = torch.cat([f.flatten(1).T for f in fpn], dim=0) + self.level_embed.weight[0]  # [S, D]
        pe = torch.cat([sine_position_encoding(h, w, self.hidden_dim // 2, device=src.device).to(src.dtype)
                        for h, w in grids], dim=0)
        memory, pos = src[:, None], pe[:, None]  # sequence-first, batch 1
        output = self.query_feat.weight[:, None]  # [Q, 1, D]
        query_pos = self.query_embed.weight[:, None]
        _, masks = self.prediction_heads(output[:, 0], mask_features, None)
        for i in range(len(self.cross_attn_layers)):
            attn_mask = self._attn_mask(masks, grids)
            output = self.cross_attn_layers[i](output, memory, attn_mask, pos, query_pos)
            output = self.self_attn_layers[i](output, query_pos)
            output = self.ffn_layers[i](output)
            last = i == len(self.cross_attn_layers) - 1
            logits, masks = self.prediction_heads(output[:, 0], mask_features, text if last else None)
        if logits is None:  # zero layers
            logits, masks = self.prediction_heads(output[:, 0], mask_features, text)
        return logits, masks, output[:, 0]


class PanopticDecoder(nn.Module):
    """Optional v2 input mixer -> upscaler -> mask transformer. State-dict prefix `panoptic_decoder.`."""

    def __init__(self, upscaler: nn.Module, mask_transformer: MaskTransformer, input_mixer: nn.Module | None = None):
        super().__init__()
        if input_mixer is not None:
            self.input_mixer = input_mixer
        else:
            self.input_mixer = None
        self.upscaler = upscaler
        self.mask_transformer = mask_transformer

    def features(self, fused: Tensor, pos: Tensor, img: Tensor, hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """fused [B, N, 2816] -> (fpn [B, D, h, w], mask features [B, mask_dim, H/2, W/2]), per view."""
        x = fused if self.input_mixer is None else self.input_mixer(fused, pos)
        return self.upscaler(x, hw, img)
