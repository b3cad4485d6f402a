"""MUSt3R image encoder: ViT-L/16 with 2D RoPE (base 100) and no absolute position embedding."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import Block, RoPE2D, grid_positions

__all__ = ["MUSt3REncoder"]


class PatchEmbed(nn.Module):
    """Conv patchify of the image as given (no landscape transposition); positions are (row, col)."""

    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, img: Tensor) -> tuple[Tensor, Tensor]:
        B, _, H, W = img.shape  # img: [B, 3, H, W]
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {p}")
        x = self.proj(img).flatten(2).transpose(1, 2)  # [B, N, dim]
        pos = grid_positions(H // p, W // p, img.device)[None].expand(B, -1, -1)  # [B, N, 2]
        return x, pos


class MUSt3REncoder(nn.Module):
    """Pre-norm ViT (LayerNorm eps 1e-6) -> `norm_enc`. Always runs in float32."""

    def __init__(self, patch_size: int = 16, dim: int = 1024, depth: int = 24, num_heads: int = 16,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.patch_size = patch_size
        self.dim = dim
        rope = RoPE2D(100.0)
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.blocks_enc = nn.ModuleList([Block(dim, num_heads, mlp_ratio, eps=1e-6, rope=rope) for _ in range(depth)])
        self.norm_enc = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, img: Tensor) -> tuple[Tensor, Tensor]:
        """img [B, 3, H, W] in [-1, 1] -> tokens [B, N, dim], positions [B, N, 2] (row, col)."""
        with torch.autocast(device_type=img.device.type, enabled=False):
            x, pos = self.patch_embed(img.float())
            for blk in self.blocks_enc:
                x = blk(x, pos)
            return self.norm_enc(x), pos
