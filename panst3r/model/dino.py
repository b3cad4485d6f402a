"""DINOv2 branch: `transformers.Dinov2Model` built from a config (never downloaded), weights from the checkpoint.

The image is resized so that the 14-pixel DINO patch grid equals the 16-pixel MUSt3R grid; HF interpolates
the 37x37 position table to that grid itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DinoEncoder", "dinov2_config"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def dinov2_config(hidden_size: int = 1024, num_layers: int = 24, num_heads: int = 16, patch_size: int = 14,
                  image_size: int = 518):
    """Config equal to facebook/dinov2-large for the defaults (eps 1e-6, LayerScale, no SwiGLU, no registers)."""
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                        mlp_ratio=4, hidden_act="gelu", patch_size=patch_size, image_size=image_size,
                        layer_norm_eps=1e-6, qkv_bias=True, layerscale_value=1.0, use_swiglu_ffn=False,
                        drop_path_rate=0.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        attn_implementation="sdpa")


class DinoEncoder(nn.Module):
    def __init__(self, hidden_size: int = 1024, num_layers: int = 24, num_heads: int = 16, patch_size: int = 14,
                 image_size: int = 518, grid_patch: int = 16):
        super().__init__()
        from transformers import Dinov2Model

        self.dim = hidden_size
        self.grid_patch = grid_patch
        self.dino_patch = patch_size
        self.dinov2 = Dinov2Model(dinov2_config(hidden_size, num_layers, num_heads, patch_size, image_size))

    def forward(self, img: Tensor) -> Tensor:
        """img [B, 3, H, W] in [-1, 1] -> tokens [B, (H/16)*(W/16), dim] (CLS dropped), row-major."""
        B, _, H, W = img.shape
        size = (H // self.grid_patch * self.dino_patch, W // self.grid_patch * self.dino_patch)
        mean = torch.tensor(IMAGENET_MEAN, device=img.device, dtype=img.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=img.device, dtype=img.dtype).view(1, 3, 1, 1)
        x = (img * 0.5 + 0.5 - mean) / std  # no buffers: nothing extra in the state dict or on `meta`
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.dinov2(pixel_values=x).last_hidden_state[:, 1:]
