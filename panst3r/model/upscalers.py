"""Mask-feature upscalers. Both return (fpn [B, C, h, w] at stride 16, mask features [B, mask_dim, H/2, W/2]).

v1 `PixelShuffleUpscaler`: MLP stages with x2 pixel shuffles 16 -> 8 -> 4 -> 2.
v2 `LoftUpUpscaler`: per-pixel guidance queries at H/2 (Fourier features of the image + convs) cross-attend
to the low-resolution tokens (LoftUp, Huang et al. 2025).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import CrossBlock, Mlp

__all__ = ["PixelShuffleUpscaler", "LoftUpUpscaler", "FourierFeatures", "min_max_scale"]


def _to_map(x: Tensor, h: int, w: int) -> Tensor:
    """Tokens [B, h*w, C] (row-major) -> map [B, C, h, w]."""
    return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)


def _to_tokens(x: Tensor) -> Tensor:
    """Map [B, C, h, w] -> tokens [B, h*w, C]."""
    return x.flatten(2).transpose(1, 2)


class PixelShuffleUpscaler(nn.Module):
    def __init__(self, input_dim: int = 2816, fp_dim: Sequence[int] = (768, 512, 384, 256), hidden_factor: int = 4):
        super().__init__()
        f = hidden_factor
        self.proj_16 = Mlp(input_dim, input_dim * f, fp_dim[0])
        self.proj_8 = Mlp(input_dim, input_dim * f, fp_dim[1] * 4)
        self.proj_4 = Mlp(fp_dim[1], fp_dim[1] * f, fp_dim[2] * 4)
        self.proj_2 = Mlp(fp_dim[2], fp_dim[2] * f, fp_dim[3] * 4)
        self.mask_dim = fp_dim[3]

    def forward(self, x: Tensor, hw: tuple[int, int], img: Tensor) -> tuple[Tensor, Tensor]:
        # x: [B, N, input_dim]; hw: token grid (h, w); img unused (same signature as LoftUp)
        h, w = hw
        fpn = _to_map(self.proj_16(x), h, w)  # [B, fp0, h, w]
        y = F.pixel_shuffle(_to_map(self.proj_8(x), h, w), 2)  # [B, fp1, 2h, 2w]
        y = F.pixel_shuffle(_to_map(self.proj_4(_to_tokens(y)), 2 * h, 2 * w), 2)  # [B, fp2, 4h, 4w]
        y = F.pixel_shuffle(_to_map(self.proj_2(_to_tokens(y)), 4 * h, 4 * w), 2)  # [B, fp3, 8h, 8w]
        return fpn, y


def min_max_scale(x: Tensor) -> Tensor:
    """Per-channel min/max over the batch and all pixels -> [-0.5, 0.5] (so batch-dependent: call per image)."""
    c = x.shape[1]
    flat = x.transpose(0, 1).reshape(c, -1)
    lo = flat.min(dim=-1).values.view(1, c, 1, 1)
    scale = flat.max(dim=-1).values.view(1, c, 1, 1) - lo
    return (x - lo) / scale.clamp_min(1e-4) - 0.5


class FourierFeatures(nn.Module):
    """sin/cos of (grid row, grid col[, colour]) times exp(linspace(-2, 10, n_freqs)), with learned phase biases.

    Channels are frequency-major: index f * dims + d. `biases` is [2, dims, n_freqs] but is *reshaped*
    (not transposed) to [n_freqs, dims] when added, as in the checkpoints. Output: [sin, cos(, colour)].
    """

    def __init__(self, color_feats: bool, n_freqs: int):
        super().__init__()
        self.color_feats = color_feats
        self.n_freqs = n_freqs
        self.dims = 5 if color_feats else 2
        self.biases = nn.Parameter(torch.zeros(2, self.dims, n_freqs))

    @property
    def out_channels(self) -> int:
        return 2 * self.dims * self.n_freqs + (3 if self.color_feats else 0)

    def forward(self, x: Tensor) -> Tensor:
        B, _, h, w = x.shape  # x: [B, C, h, w] (only its size is used without colour features)
        gy = torch.linspace(-1, 1, h, device=x.device)
        gx = torch.linspace(-1, 1, w, device=x.device)
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij"))[None].expand(B, 2, h, w)
        feats = torch.cat([grid, x], dim=1) if self.color_feats else grid  # [B, dims, h, w]
        freqs = torch.exp(torch.linspace(-2, 10, self.n_freqs, device=x.device)).view(1, self.n_freqs, 1, 1, 1)
        feats = feats[:, None] * freqs  # [B, n_freqs, dims, h, w]
        b = self.biases.reshape(2, self.n_freqs, self.dims)
        s = torch.sin(feats + b[0].view(1, self.n_freqs, self.dims, 1, 1)).reshape(B, -1, h, w)
        c = torch.cos(feats + b[1].view(1, self.n_freqs, self.dims, 1, 1)).reshape(B, -1, h, w)
        return torch.cat([s, c, x], dim=1) if self.color_feats else torch.cat([s, c], dim=1)


class _MinMax(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return min_max_scale(x)


class LoftUpUpscaler(nn.Module):
    def __init__(self, input_dim: int = 768, dim: int = 384, output_stride: int = 2, num_heads: int = 4,
                 num_layers: int = 2, n_freqs: int = 20, lr_freqs: int = 5, groups: int = 8):
        super().__init__()
        self.output_stride = output_stride
        self.mask_dim = dim
        self.patch_embed = nn.Conv2d(input_dim, input_dim, 1)
        self.lr_pe = FourierFeatures(color_feats=False, n_freqs=lr_freqs)
        self.lr_input_proj = nn.Sequential(nn.Linear(input_dim + self.lr_pe.out_channels, dim), nn.LayerNorm(dim))
        self.fourier_feat = nn.Sequential(_MinMax(), FourierFeatures(color_feats=True, n_freqs=n_freqs))
        cin = self.fourier_feat[1].out_channels
        self.first_conv = nn.Sequential(
            nn.GroupNorm(1, cin), nn.Conv2d(cin, dim, 3, padding=1), nn.GroupNorm(groups, dim), nn.ReLU(),
            nn.Conv2d(dim, dim, 3, padding=1), nn.GroupNorm(groups, dim), nn.ReLU())
        self.ca_transformer_blocks = nn.ModuleList([CrossBlock(dim, num_heads, mlp_ratio=1.0) for _ in range(num_layers)])
        self.ca_transformer_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, hw: tuple[int, int], img: Tensor) -> tuple[Tensor, Tensor]:
        # x: [B, N, input_dim]; img: [B, 3, H, W] in [-1, 1]. MinMax scaling is per image (as batch size 1).
        h, w = hw
        lr = _to_map(x, h, w)  # [B, C, h, w]
        fpn = self.patch_embed(lr)
        kv = self.lr_input_proj(_to_tokens(torch.cat([lr, self.lr_pe(lr)], dim=1)))  # [B, h*w, dim]
        guide = F.interpolate(img, scale_factor=1.0 / self.output_stride, mode="bilinear", align_corners=False)
        outs = []
        for b in range(img.shape[0]):
            q = self.first_conv(self.fourier_feat(guide[b:b + 1]))  # [1, dim, H/2, W/2]
            hh, ww = q.shape[-2:]
            q = _to_tokens(q)
            for blk in self.ca_transformer_blocks:
                q = blk(q, kv[b:b + 1])
            outs.append(_to_map(self.ca_transformer_norm(q), hh, ww))
        return fpn, torch.cat(outs, dim=0)
