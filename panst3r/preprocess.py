"""Image preprocessing for PanSt3R "512" models, as the official loader does it.

1. RGB in [0, 1], then (x - 0.5) / 0.5 -> [-1, 1], at the original resolution.
2. If the size is one of the allowed 512 sizes, nothing else happens. Otherwise the nearest allowed aspect
   ratio is chosen, the image is centre-cropped to it (crop_H = int(W / r) or crop_W = int(H * r)) and
   resized with antialiased bilinear interpolation (`F.interpolate(antialias=True)`, what torchvision's
   tensor `Resize` runs). No padding.

Portrait images (H > W): the official path is inconsistent for them (several wrappers assume portrait
inputs are stored transposed), and the networks were trained on landscape images only. Our
choice (``portrait="rotate"``, the default) is to rotate a portrait image 90 degrees clockwise to landscape,
run everything in landscape, and let the caller rotate per-pixel outputs back with `to_original_orientation`
(`ImageInfo.rotated` says when). ``portrait="native"`` keeps the transposed allowed sizes (e.g. 384x512
W x H) instead, which is closer to the official demo's behaviour but outside what the models were trained on.

All views of one `PanSt3R.infer` call share one size: `load_images` fixes the target size from the first
image (after rotation) and crops/resizes the others to it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ImageInfo", "UnreadableImage", "ALLOWED_SIZES_512", "allowed_sizes", "target_size", "preprocess", "load_image",
           "load_images", "to_original_orientation"]

# (W, H) landscape sizes of the 512 models: 4:3, 32:21, 16:9, 2:1, 16:5
ALLOWED_SIZES_512: tuple[tuple[int, int], ...] = ((512, 384), (512, 336), (512, 288), (512, 256), (512, 160))


@dataclass(frozen=True)
class ImageInfo:
    orig_size: tuple[int, int]  # (W, H) of the file
    rotated: bool  # rotated 90 deg clockwise to landscape before cropping
    crop_box: tuple[int, int, int, int]  # (left, top, right, bottom) in the (rotated) original pixels
    true_shape: tuple[int, int]  # (H, W) given to the network
    path: Optional[str] = None


def allowed_sizes(size: int = 512, patch: int = 16) -> tuple[tuple[int, int], ...]:
    """(W, H) landscape sizes for a model trained at long side `size`: the 512 table scaled by size/512 and
    rounded to multiples of `patch` (identity for the released 512 models; small sizes serve tiny test models)."""
    if size == 512:
        return ALLOWED_SIZES_512
    return tuple((max(patch, round(w * size / 512 / patch) * patch), max(patch, round(h * size / 512 / patch) * patch))
                 for w, h in ALLOWED_SIZES_512)


def target_size(w: int, h: int, allowed: Sequence[tuple[int, int]] = ALLOWED_SIZES_512) -> tuple[int, int]:
    """(W, H) of the allowed size with the nearest aspect ratio (portrait: transposed sizes)."""
    portrait = h > w
    sizes = [(b, a) for a, b in allowed] if portrait else list(allowed)
    if (w, h) in sizes:
        return w, h
    r = w / h
    return min(sizes, key=lambda s: abs(s[0] / s[1] - r))


def _center_crop_box(w: int, h: int, ratio: float) -> tuple[int, int, int, int]:
    if w / h > ratio:
        cw, ch = int(h * ratio), h
    else:
        cw, ch = w, int(w / ratio)
    left, top = int(round((w - cw) / 2.0)), int(round((h - ch) / 2.0))
    return left, top, left + cw, top + ch


def preprocess(rgb: np.ndarray | Tensor, *, size: Optional[tuple[int, int]] = None, portrait: str = "rotate",
               allowed: Sequence[tuple[int, int]] = ALLOWED_SIZES_512,
               path: Optional[str] = None) -> tuple[Tensor, ImageInfo]:
    """One image -> ([3, H, W] float32 in [-1, 1], ImageInfo).

    rgb: [H, W, 3] uint8 (or float in [0, 1]); size: force a (W, H) target (else the nearest of `allowed`).
    """
    if portrait not in ("rotate", "native"):
        raise ValueError(f"portrait must be 'rotate' or 'native', got {portrait!r}")
    x = torch.as_tensor(np.asarray(rgb))
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"expected an [H, W, 3] RGB image, got shape {tuple(x.shape)}")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    x = (x.permute(2, 0, 1) - 0.5) / 0.5  # [3, H, W] in [-1, 1], before any crop or resize
    oh, ow = x.shape[-2:]
    rotated = portrait == "rotate" and oh > ow
    if rotated:
        x = torch.rot90(x, k=-1, dims=(1, 2))  # clockwise: [3, W0, H0]
    h, w = x.shape[-2:]
    tw, th = size if size is not None else target_size(w, h, allowed)
    if (w, h) == (tw, th):
        box = (0, 0, w, h)
    else:
        box = _center_crop_box(w, h, tw / th)
        x = x[:, box[1]:box[3], box[0]:box[2]]
        if tuple(x.shape[-2:]) != (th, tw):
            x = F.interpolate(x[None], size=(th, tw), mode="bilinear", align_corners=False, antialias=True)[0]
    return x.contiguous(), ImageInfo((int(ow), int(oh)), rotated, box, (int(th), int(tw)), path)


class UnreadableImage(ValueError):
    """An image file PIL cannot decode (the message names the file)."""


def load_image(path: str | os.PathLike, **kw) -> tuple[Tensor, ImageInfo]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = np.array(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise UnreadableImage(f"{path}: cannot read image ({e}); remove it or re-export it as PNG/JPEG") from None
    return preprocess(rgb, path=str(path), **kw)


def load_images(paths: Sequence[str | os.PathLike], *, portrait: str = "rotate",
                allowed: Sequence[tuple[int, int]] = ALLOWED_SIZES_512) -> tuple[Tensor, list[ImageInfo]]:
    """Several views -> ([V, 3, H, W], infos), all at the size chosen for the first image."""
    if not paths:
        raise ValueError("no images given")
    first, info0 = load_image(paths[0], portrait=portrait, allowed=allowed)
    size = (info0.true_shape[1], info0.true_shape[0])
    imgs, infos = [first], [info0]
    for p in paths[1:]:
        x, info = load_image(p, portrait=portrait, size=size)
        imgs.append(x)
        infos.append(info)
    return torch.stack(imgs), infos


def to_original_orientation(x: Tensor | np.ndarray, info: ImageInfo, channels_last: bool = False):
    """Undo the portrait rotation of a per-pixel map ([..., H, W] or [..., H, W, C] with channels_last)."""
    if not info.rotated:
        return x
    dims = (-3, -2) if channels_last else (-2, -1)
    if isinstance(x, np.ndarray):
        return np.rot90(x, k=1, axes=dims).copy()
    return torch.rot90(x, k=1, dims=dims)
