"""MUSt3R pointmap head (linear + pixel-shuffle unpatchify) and its NORM_EXP post-processing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PointmapHead", "norm_exp", "postprocess_pointmap"]


class PointmapHead(nn.Module):
    """Linear dim -> 7*p*p per token, then pixel-shuffle by p: channels pts3d(3), pts3d_local(3), conf(1)."""

    def __init__(self, dim: int, patch_size: int, out_channels: int = 7):
        super().__init__()
        self.patch_size = patch_size
        self.out_channels = out_channels
        self.proj = nn.Linear(dim, out_channels * patch_size ** 2)

    def forward(self, feats: Tensor, true_shape: tuple[int, int]) -> Tensor:
        B, N, _ = feats.shape  # feats: [B, N, dim]
        p = self.patch_size
        h, w = true_shape[0] // p, true_shape[1] // p
        x = self.proj(feats).transpose(1, 2).reshape(B, -1, h, w)  # [B, 7*p*p, h, w]
        return F.pixel_shuffle(x, p).permute(0, 2, 3, 1)  # [B, H, W, 7]


def norm_exp(p: Tensor) -> Tensor:
    """p / |p| * expm1(|p|) over the last axis."""
    d = p.norm(dim=-1, keepdim=True)
    return p / d.clip(min=1e-8) * torch.expm1(d)


def postprocess_pointmap(raw: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """raw [..., 7] -> pts3d [..., 3] (reference frame), pts3d_local [..., 3] (camera frame), conf [...]."""
    return norm_exp(raw[..., 0:3]), norm_exp(raw[..., 3:6]), 1 + torch.exp(raw[..., 6])
