"""The one rasterisation interface: `render(gaussians, cameras, features=None, ...)`.

Two backends behind one contract: gsplat's CUDA `rasterization` (classic mode, unpacked) when the tensors
are on a GPU, and the pure-PyTorch reference in `splat.rasterize_torch` everywhere else. Both return the
same `RenderOutput`, including a `meta` dict that gsplat's DefaultStrategy / MCMCStrategy accept unchanged.

Gaussians come in their stored (pre-activation) form: log scales, logit opacities, unnormalised quats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from pipeline.common.protocols import PosedFrame

from . import rasterize_torch
from .gaussians import sh_to_rgb

__all__ = ["Cameras", "RenderOutput", "render", "sh_colours", "BACKENDS"]

BACKENDS = ("auto", "gsplat", "torch")


@dataclass
class Cameras:
    """A batch of pinhole cameras sharing one image size."""

    viewmats: Tensor  # [C, 4, 4] world-to-camera, OpenCV axes (x right, y down, z forward)
    Ks: Tensor  # [C, 3, 3] intrinsics, pixel centres at +0.5 (gsplat convention)
    width: int
    height: int

    def __post_init__(self):
        if self.viewmats.dim() == 2:
            self.viewmats = self.viewmats[None]
        if self.Ks.dim() == 2:
            self.Ks = self.Ks[None]
        if self.viewmats.shape[1:] != (4, 4) or self.Ks.shape[1:] != (3, 3) or len(self.viewmats) != len(self.Ks):
            raise ValueError(f"Cameras need viewmats [C, 4, 4] and Ks [C, 3, 3]; got {tuple(self.viewmats.shape)} "
                             f"and {tuple(self.Ks.shape)}")
        self.width, self.height = int(self.width), int(self.height)

    def __len__(self) -> int:
        return int(self.viewmats.shape[0])

    def __getitem__(self, idx) -> "Cameras":
        """int, slice or index list -> a subset (always batched)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        elif not isinstance(idx, slice):
            idx = torch.as_tensor(idx, dtype=torch.long, device=self.viewmats.device)
        return Cameras(self.viewmats[idx], self.Ks[idx], self.width, self.height)

    def to(self, device) -> "Cameras":
        return Cameras(self.viewmats.to(device), self.Ks.to(device), self.width, self.height)

    def scaled(self, factor: float) -> "Cameras":
        """Resize the images by `factor`: sizes rounded, K scaled by the exact per-axis ratio.

        With pixel centres at +0.5, image coordinates scale linearly with the image, so K' = diag(sx, sy, 1)·K.
        """
        w, h = max(1, round(self.width * factor)), max(1, round(self.height * factor))
        S = torch.diag(torch.tensor([w / self.width, h / self.height, 1.0], dtype=self.Ks.dtype,
                                    device=self.Ks.device))
        return Cameras(self.viewmats, S @ self.Ks, w, h)

    @classmethod
    def from_frames(cls, frames: Sequence[PosedFrame], scale: float = 1.0) -> "Cameras":
        """Cameras of posed frames (K with +0.5 centres, OpenCV c2w); float32, optionally rescaled."""
        frames = list(frames)
        if not frames:
            raise ValueError("Cameras.from_frames needs at least one frame")
        sizes = sorted({(int(f.width), int(f.height)) for f in frames})
        if len(sizes) > 1:
            raise ValueError(f"frames have different image sizes {sizes}; render each size separately "
                             "(Cameras holds one width x height)")
        w2c = np.stack([np.linalg.inv(np.asarray(f.c2w, np.float64)) for f in frames])
        Ks = np.stack([np.asarray(f.K, np.float64) for f in frames])
        cams = cls(torch.tensor(w2c, dtype=torch.float32), torch.tensor(Ks, dtype=torch.float32), *sizes[0])
        return cams if scale == 1.0 else cams.scaled(scale)


@dataclass
class RenderOutput:
    features: Tensor  # [C, H, W, D] composited features
    alpha: Tensor  # [C, H, W, 1]
    depth: Tensor | None  # [C, H, W, 1] expected depth (Σ w·z / alpha, 0 where nothing was hit)
    meta: dict  # gsplat 1.5.3 rasterization meta (unpacked): means2d, radii, depths, width, height, n_cameras, ...


def sh_colours(g: Mapping[str, Tensor], viewmats: Tensor, sh_degree: int | None = None) -> Tensor:
    """View-dependent RGB [C, N, 3] from the first `sh_degree` SH bands (all stored bands when None), as gsplat
    does (+0.5, clamp_min 0). Degree 0 is the view-independent `sh_to_rgb(sh0)`. viewmats [C, 4, 4]."""
    coeffs = _sh_coeffs(g)  # [N, K, 3]
    deg = _sh_degree(coeffs, sh_degree)
    C = viewmats.shape[0]
    if deg == 0:
        return torch.clamp_min(sh_to_rgb(g["sh0"][:, 0]), 0.0)[None].expand(C, -1, -1)  # [C, N, 3]
    from gsplat.cuda._torch_impl import _spherical_harmonics

    coeffs = coeffs[:, : (deg + 1) ** 2]  # [N, (deg + 1)², 3]
    campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
    dirs = g["means"][None] - campos[:, None]  # [C, N, 3]
    sh = _spherical_harmonics(deg, dirs, coeffs[None].expand(C, -1, -1, -1))  # [C, N, 3]
    return torch.clamp_min(sh + 0.5, 0.0)


def _sh_coeffs(g: Mapping[str, Tensor]) -> Tensor:
    if "sh0" not in g:
        raise ValueError("render without features needs gaussians['sh0'] [N, 1, 3] (and optionally 'shN')")
    shN = g.get("shN")
    return g["sh0"] if shN is None or shN.shape[1] == 0 else torch.cat([g["sh0"], shN], 1)


def _sh_degree(coeffs: Tensor, sh_degree: int | None) -> int:
    avail = int(math.isqrt(coeffs.shape[1])) - 1
    deg = avail if sh_degree is None else int(sh_degree)
    if deg > avail or deg < 0:
        raise ValueError(f"sh_degree {deg} needs {(deg + 1) ** 2} SH coefficients; the Gaussians have {coeffs.shape[1]}")
    return deg


def render(gaussians: Mapping[str, Tensor], cameras: Cameras, features: Tensor | None = None, *,
           sh_degree: int | None = None, backend: str = "auto", background: Tensor | None = None,
           near_plane: float = 0.01, far_plane: float = 1e10, eps2d: float = 0.3,
           render_depth: bool = True) -> RenderOutput:
    """Rasterise Gaussians (means [N,3], quats [N,4], log scales [N,3], logit opacities [N], sh0/shN) into
    `cameras`. `features` [N, D] or [C, N, D] are composited as they are; None renders RGB from SH."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")
    means = gaussians["means"]
    dev = means.device
    if backend == "auto":
        backend = "gsplat" if dev.type == "cuda" else "torch"
    C = len(cameras)
    viewmats = cameras.viewmats.to(dev, means.dtype)
    Ks = cameras.Ks.to(dev, means.dtype)
    quats, scales = gaussians["quats"], torch.exp(gaussians["scales"])
    opac = torch.sigmoid(gaussians["opacities"])
    N = means.shape[0]
    if features is not None and (features.dim() not in (2, 3) or features.shape[-2] != N
                                 or (features.dim() == 3 and features.shape[0] != C)):
        raise ValueError(f"features must be [N, D] or [C, N, D] with N = {N}, C = {C}; got {tuple(features.shape)}")
    if background is not None:
        background = background.to(dev)

    if backend == "gsplat":
        if dev.type != "cuda":
            raise ValueError("backend 'gsplat' rasterises on CUDA only; move the Gaussians to a GPU or use backend='torch'")
        return _render_gsplat(means, quats, scales, opac, gaussians, features, viewmats, Ks, cameras, sh_degree,
                              background, near_plane, far_plane, eps2d, render_depth)

    colors = features if features is not None else sh_colours(gaussians, viewmats, sh_degree)
    feats, alpha, depth, meta = rasterize_torch.rasterize(
        means, quats, scales, opac, colors, viewmats, Ks, cameras.width, cameras.height, background=background,
        eps2d=eps2d, near_plane=near_plane, far_plane=far_plane, render_depth=render_depth)
    return RenderOutput(feats, alpha, depth, meta)


def _render_gsplat(means, quats, scales, opac, gaussians, features, viewmats, Ks, cameras, sh_degree, background,
                   near_plane, far_plane, eps2d, render_depth) -> RenderOutput:
    """gsplat 1.5.3 classic, unpacked (so meta matches the torch backend: [C, N, ...])."""
    from gsplat import rasterization

    C = viewmats.shape[0]
    if features is None:
        colors = _sh_coeffs(gaussians)
        deg = _sh_degree(colors, sh_degree)
    else:
        colors, deg = features, None
    bgs = None
    if background is not None:
        bgs = background.expand(C, -1) if background.dim() == 1 else background
    out, alpha, meta = rasterization(
        means, quats, scales, opac, colors, viewmats, Ks, cameras.width, cameras.height,
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, sh_degree=deg, packed=False,
        backgrounds=bgs, render_mode="RGB+ED" if render_depth else "RGB", rasterize_mode="classic")
    depth = None
    if render_depth:
        out, depth = out[..., :-1], out[..., -1:]
    return RenderOutput(out, alpha, depth, meta)
