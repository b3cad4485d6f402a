"""Feature fusion: [MUSt3R encoder | MUSt3R decoder last layer (after norm_dec) | DINOv2] along channels."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["fuse_features"]


def fuse_features(x_enc: Tensor, y_dec: Tensor, x_dino: Tensor) -> Tensor:
    """[B, N, 1024] + [B, N, 768] + [B, N, 1024] -> [B, N, 2816] (this order matters for the weights)."""
    return torch.cat([x_enc, y_dec, x_dino], dim=-1)
