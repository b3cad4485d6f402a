"""Architecture hyper-parameters of a PanSt3R network (v1: PixelShuffle upscaler, v2: input mixer + LoftUp)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["PanSt3RConfig", "full_config", "tiny_config"]


@dataclass(frozen=True)
class PanSt3RConfig:
    variant: str = "v1"
    """"v1" (PixelShuffle upscaler) or "v2" (input mixer + LoftUp upscaler)."""
    patch_size: int = 16
    """MUSt3R patch size; token grids are (H/16, W/16)."""
    enc_dim: int = 1024
    """MUSt3R encoder width."""
    enc_depth: int = 24
    """MUSt3R encoder blocks."""
    enc_heads: int = 16
    """MUSt3R encoder attention heads."""
    dec_dim: int = 768
    """MUSt3R decoder width."""
    dec_depth: int = 12
    """MUSt3R decoder blocks (= memory layers)."""
    dec_heads: int = 12
    """MUSt3R decoder attention heads."""
    dino_dim: int = 1024
    """DINOv2 width."""
    dino_depth: int = 24
    """DINOv2 layers."""
    dino_heads: int = 16
    """DINOv2 attention heads."""
    dino_patch: int = 14
    """DINOv2 patch size."""
    dino_image_size: int = 518
    """DINOv2 pre-training image size (sets the position table: (518/14)^2 + 1 = 1370 entries)."""
    hidden_dim: int = 768
    """Mask-transformer width (= fpn width = v2 mixer width)."""
    num_queries: int = 200
    """Panoptic queries."""
    mt_heads: int = 8
    """Mask-transformer attention heads."""
    mt_layers: int = 6
    """Mask-transformer layers."""
    ff_dim: int = 2048
    """Mask-transformer FFN width."""
    mask_dim: int = 256
    """Mask-feature channels at H/2 (v1: last PixelShuffle stage; v2: LoftUp width)."""
    text_dim: int = 768
    """Text-embedding width the class head projects onto (SigLIP-base: 768)."""
    fp_dims: tuple[int, int, int, int] = (768, 512, 384, 256)
    """v1 upscaler channels at strides 16, 8, 4, 2 (first = hidden_dim, last = mask_dim)."""
    upscale_hidden_factor: int = 4
    """v1 upscaler MLP expansion."""
    mixer_heads: int = 12
    """v2 input-mixer heads."""
    mixer_layers: int = 3
    """v2 input-mixer blocks."""
    mixer_ff_mult: int = 4
    """v2 input-mixer MLP expansion."""
    loftup_heads: int = 4
    """v2 LoftUp cross-attention heads."""
    loftup_layers: int = 2
    """v2 LoftUp cross-attention blocks."""
    loftup_freqs: int = 20
    """v2 LoftUp Fourier frequencies of the guidance image."""
    loftup_lr_freqs: int = 5
    """v2 LoftUp Fourier frequencies of the low-resolution grid."""

    @property
    def fused_dim(self) -> int:
        return self.enc_dim + self.dec_dim + self.dino_dim

    def check(self) -> "PanSt3RConfig":
        if self.variant not in ("v1", "v2"):
            raise ValueError(f"variant must be 'v1' or 'v2', got {self.variant!r}")
        if self.variant == "v1" and (self.fp_dims[0] != self.hidden_dim or self.fp_dims[-1] != self.mask_dim):
            raise ValueError("v1 needs fp_dims[0] == hidden_dim and fp_dims[-1] == mask_dim")
        rope = [("enc", self.enc_dim, self.enc_heads), ("dec", self.dec_dim, self.dec_heads)]
        if self.variant == "v2":
            rope.append(("mixer", self.hidden_dim, self.mixer_heads))
        for name, dim, heads in rope:
            if dim % heads or (dim // heads) % 4:
                raise ValueError(f"{name}: RoPE needs head_dim = dim/heads divisible by 4 ({dim}/{heads})")
        return self


def full_config(variant: str = "v1") -> PanSt3RConfig:
    """The released 512 models: ~879M (v1) / ~806M (v2) parameters."""
    return PanSt3RConfig(variant=variant, mask_dim=256 if variant == "v1" else 384).check()


def tiny_config(variant: str = "v1") -> PanSt3RConfig:
    """A few-hundred-thousand-parameter network with the same structure, for fast end-to-end tests."""
    common = dict(variant=variant, enc_dim=32, enc_depth=2, enc_heads=2, dec_dim=32, dec_depth=2, dec_heads=2,
                  dino_dim=32, dino_depth=1, dino_heads=2, dino_image_size=56, hidden_dim=32, num_queries=8,
                  mt_heads=2, mt_layers=2, ff_dim=64, mask_dim=16, text_dim=16)
    if variant == "v1":  # fields of the other variant keep their defaults, so a saved config reads back equal
        return PanSt3RConfig(**common, fp_dims=(32, 16, 16, 16), upscale_hidden_factor=2).check()
    return PanSt3RConfig(**common, mixer_heads=2, mixer_layers=1, mixer_ff_mult=2, loftup_heads=2, loftup_layers=1,
                         loftup_freqs=4, loftup_lr_freqs=2).check()


def replace(cfg: PanSt3RConfig, **kw) -> PanSt3RConfig:
    return dataclasses.replace(cfg, **kw).check()
