"""MUSt3R multi-view decoder with a per-layer token memory (ViT-B, 12 layers) and the pointmap head.

Memory semantics (as the official decoder):
* update: the first image of the very first batch is the reference (no `image2_embed`); every other image
  gets `image2_embed`. Block i cross-attends to `old_mem_i + norm_y_i(x)` minus the image's own tokens.
  After the last block, `offset = feedback_layer(feedback_norm(input of the last block))` is added to the
  inputs of blocks 0..L-2 and `norm_y_i(input_i (+ offset))` is appended to the memory of layer i.
* render: `image2_embed` on every image, full cross-attention to the stored memory, memory unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .heads import PointmapHead
from .layers import CrossAttention, Mlp, RoPE2D, SelfAttention

__all__ = ["DecoderBlock", "MUSt3RDecoder", "Memory"]

Memory = list  # per layer: [M, C] tensor of normalised memory tokens


class DecoderBlock(nn.Module):
    """Self-attention (RoPE) -> cross-attention to the layer memory -> MLP, all pre-norm (eps 1e-6)."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads, rope=rope)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.norm_y = nn.LayerNorm(dim, eps=1e-6)  # normalises tokens on their way into memory
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, pos: Tensor, mem) -> Tensor:
        # x: [B, N, C]; pos: [B, N, 2]; mem: [B, M, C] (already through norm_y) or its projected (k, v)
        x = x + self.attn(self.norm1(x), pos)
        x = x + self.cross_attn(self.norm2(x), mem)
        return x + self.mlp(self.norm3(x))


class MUSt3RDecoder(nn.Module):
    def __init__(self, enc_dim: int = 1024, dim: int = 768, depth: int = 12, num_heads: int = 12,
                 patch_size: int = 16, mlp_ratio: float = 4.0):
        super().__init__()
        self.dim = dim
        rope = RoPE2D(100.0)
        self.feat_embed_enc_to_dec = nn.Linear(enc_dim, dim)
        self.image2_embed = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks_dec = nn.ModuleList([DecoderBlock(dim, num_heads, rope, mlp_ratio) for _ in range(depth)])
        self.feedback_layer = Mlp(dim, int(dim * mlp_ratio))
        self.feedback_norm = nn.LayerNorm(dim)  # default eps 1e-5, unlike the rest of the decoder
        self.norm_dec = nn.LayerNorm(dim, eps=1e-6)
        self.head_dec = PointmapHead(dim, patch_size)

    @torch.no_grad()
    def update_memory(self, x_enc: Tensor, pos: Tensor, mem: Optional[Memory]) -> Memory:
        """Add n images to the memory (None = empty). x_enc: [n, N, enc_dim]; pos: [n, N, 2]."""
        n, N, _ = x_enc.shape
        x = self.feat_embed_enc_to_dec(x_enc)  # [n, N, C]
        if mem is None:
            if n < 2:
                raise ValueError("the first memory batch needs at least two images (duplicate a single view)")
            x = torch.cat([x[:1], x[1:] + self.image2_embed], dim=0)
        else:
            x = x + self.image2_embed
        inputs = []
        for i, blk in enumerate(self.blocks_dec):
            inputs.append(x)
            new = blk.norm_y(x)  # [n, N, C]
            old = [] if mem is None else [mem[i]]
            # each image sees the old memory and the new tokens of the *other* images of the batch
            kv = torch.stack([torch.cat(old + [new[k] for k in range(n) if k != j], dim=0) for j in range(n)])
            x = blk(x, pos, kv)
        offset = self.feedback_layer(self.feedback_norm(inputs[-1]))
        out: Memory = []
        last = len(self.blocks_dec) - 1
        for i, blk in enumerate(self.blocks_dec):
            tok = blk.norm_y(inputs[i] + offset if i < last else inputs[i]).reshape(n * N, -1)
            out.append(tok if mem is None else torch.cat([mem[i], tok], dim=0))
        return out

    @torch.no_grad()
    def prepare_memory(self, mem: Memory) -> list:
        """Project every layer's memory to cross-attention keys/values once, for many renders (2x memory)."""
        return [blk.cross_attn.project_kv(m[None]) for blk, m in zip(self.blocks_dec, mem)]

    @torch.no_grad()
    def render(self, x_enc: Tensor, pos: Tensor, mem: list, true_shape: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Decode images against a fixed memory -> (raw pointmap [B, H, W, 7], last features [B, N, C]).

        mem: the `Memory` token list, or its `prepare_memory` form.
        """
        x = self.feat_embed_enc_to_dec(x_enc) + self.image2_embed
        for i, blk in enumerate(self.blocks_dec):
            m = mem[i] if isinstance(mem[i], tuple) else mem[i][None]
            x = blk(x, pos, m)
        feats = self.norm_dec(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            raw = self.head_dec(feats.float(), true_shape)
        return raw, feats
