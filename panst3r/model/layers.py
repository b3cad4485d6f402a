"""Transformer building blocks shared by the MUSt3R encoder/decoder, the v2 input mixer and LoftUp.

Parameter names follow the official checkpoints (`attn.qkv`, `cross_attn.projq`, `mlp.fc1`, ...) so a
state dict loads without renaming. Attention goes through `F.scaled_dot_product_attention` (default
scale 1/sqrt(head_dim)), as the official code does without xFormers.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RoPE2D", "Mlp", "SelfAttention", "CrossAttention", "Block", "CrossBlock", "grid_positions"]


def grid_positions(h: int, w: int, device=None) -> Tensor:
    """Integer (row, col) of each patch in row-major order: [h*w, 2] int64."""
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    return torch.stack([rows, cols], dim=-1)


class RoPE2D:
    """2D rotary embedding: first half of each head rotated by the row, second half by the column.

    Within each half (size d) the "rotate-half" convention is used: pairs are (i, i + d/2), with angular
    frequency F0 / base^(2k/d) for k < d/2. Stateless (no buffers), so it adds nothing to the state dict.
    """

    def __init__(self, base: float = 100.0, f0: float = 1.0):
        self.base = base
        self.f0 = f0

    def _cos_sin(self, d: int, n: int, device, dtype) -> tuple[Tensor, Tensor]:
        inv_freq = self.f0 / (self.base ** (torch.arange(0, d, 2, device=device).float() / d))  # [d/2]
        ang = torch.arange(n, device=device, dtype=inv_freq.dtype)[:, None] * inv_freq[None]  # [n, d/2]
        ang = torch.cat([ang, ang], dim=-1).to(dtype)  # [n, d]
        return ang.cos(), ang.sin()

    @staticmethod
    def _rotate(x: Tensor, pos: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        # x: [B, heads, N, d]; pos: [B, N] int
        c = cos[pos][:, None]  # [B, 1, N, d]
        s = sin[pos][:, None]
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * c + rot * s

    def __call__(self, x: Tensor, pos: Tensor) -> Tensor:
        """x: [B, heads, N, D]; pos: [B, N, 2] (row, col) integers."""
        d = x.shape[-1] // 2
        cos, sin = self._cos_sin(d, int(pos.max()) + 1, x.device, x.dtype)
        y_part, x_part = x[..., :d], x[..., d:]
        return torch.cat([self._rotate(y_part, pos[..., 0], cos, sin),
                          self._rotate(x_part, pos[..., 1], cos, sin)], dim=-1)


class Mlp(nn.Module):
    """fc1 -> GELU (exact) -> fc2."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: Optional[int] = None,
                 act: Callable[[], nn.Module] = nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = act()
        self.fc2 = nn.Linear(hidden_dim, out_dim or in_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    """Fused qkv (channel layout [3, heads, head_dim]) with optional RoPE on q and k."""

    def __init__(self, dim: int, num_heads: int, rope: Optional[RoPE2D] = None, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: Tensor, pos: Optional[Tensor] = None) -> Tensor:
        B, N, C = x.shape  # x: [B, N, C]
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, heads, N, hd]
        if self.rope is not None:
            q = self.rope(q, pos)
            k = self.rope(k, pos)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class CrossAttention(nn.Module):
    """Queries from x, keys/values from a separate token set; no positional encoding on either side."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim, bias=qkv_bias)
        self.projk = nn.Linear(dim, dim, bias=qkv_bias)
        self.projv = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def project_kv(self, mem: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of a token set mem [B, M, C] -> 2 x [B, heads, M, hd] (reusable across queries)."""
        B, M, C = mem.shape
        h = self.num_heads
        k = self.projk(mem).reshape(B, M, h, C // h).transpose(1, 2)
        v = self.projv(mem).reshape(B, M, h, C // h).transpose(1, 2)
        return k, v

    def forward(self, x: Tensor, mem: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        """x [B, N, C]; mem: tokens [B, M, C] or their `project_kv` (batch 1 broadcasts over B)."""
        B, N, C = x.shape
        h = self.num_heads
        q = self.projq(x).reshape(B, N, h, C // h).transpose(1, 2)
        k, v = mem if isinstance(mem, tuple) else self.project_kv(mem)
        if k.shape[0] != B:
            k, v = k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-norm ViT block: x += attn(norm1(x)); x += mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6,
                 rope: Optional[RoPE2D] = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, num_heads, rope=rope)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, pos: Optional[Tensor] = None) -> Tensor:
        x = x + self.attn(self.norm1(x), pos)
        return x + self.mlp(self.norm2(x))


class CrossBlock(nn.Module):
    """Cross-attention-only block (LoftUp): x += CA(norm2(x), norm_y(y)); x += mlp(norm3(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 1.0, eps: float = 1e-5,
                 qkv_bias: bool = False):
        super().__init__()
        self.cross_attn = CrossAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.norm_y = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        x = x + self.cross_attn(self.norm2(x), self.norm_y(y))
        return x + self.mlp(self.norm3(x))
