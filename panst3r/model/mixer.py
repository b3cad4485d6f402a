"""v2 input mixer: Linear 2816 -> 768, three pre-norm RoPE blocks (LayerNorm eps 1e-5), final LayerNorm."""

from __future__ import annotations

from torch import Tensor, nn

from .layers import Block, RoPE2D

__all__ = ["InputMixer"]


class InputMixer(nn.Module):
    def __init__(self, in_dim: int = 2816, dim: int = 768, num_heads: int = 12, num_layers: int = 3,
                 ff_mult: float = 4.0):
        super().__init__()
        rope = RoPE2D(100.0)
        self.in_proj = nn.Linear(in_dim, dim)
        self.mixer_blk = nn.ModuleList([Block(dim, num_heads, ff_mult, eps=1e-5, rope=rope) for _ in range(num_layers)])
        self.mixer_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        """x [B, N, in_dim] fused tokens of B views (attention within each view); pos [B, N, 2]."""
        x = self.in_proj(x)
        for blk in self.mixer_blk:
            x = blk(x, pos)
        return self.mixer_norm(x)
