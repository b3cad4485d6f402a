"""Backend agreement: render the same Gaussians under two rasteriser settings and measure the relative error of
every output and every gradient. One function shared by the CUDA test (torch backend vs gsplat) and
bench/gpu_check.py, so the check that runs on a GPU is the one the suite runs wherever CUDA exists.

A setting is (backend, device, dtype); the reference is usually gsplat on CUDA, or the float64 torch backend
where there is no GPU.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import torch
from torch import Tensor

from .render import Cameras, render

__all__ = ["Setting", "TOLERANCE", "random_scene", "row_cameras", "render_with_grads", "relative_error",
           "compare_settings"]

TOLERANCE = 1e-4
"""Largest relative error ‖a − b‖ / ‖b‖ accepted between two float32 rasterisers, for any output or gradient."""


class Setting(NamedTuple):
    backend: str  # "torch" | "gsplat"
    device: str  # "cpu" | "cuda"
    dtype: torch.dtype


def random_scene(n: int, seed: int, *, spread: float = 0.6, size: tuple[float, float] = (0.01, 0.08),
                 opac: tuple[float, float] = (0.05, 0.99)) -> dict[str, Tensor]:
    """n stored-form Gaussians (float64, CPU) in a slab 2.5-3.5 m in front of cameras at the origin, SH degree 1."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.float64
    means = (torch.rand(n, 3, generator=gen, dtype=d) - 0.5) * torch.tensor([2 * spread, 1.5 * spread, 1.0], dtype=d)
    means[:, 2] += 3.0
    return {"means": means, "quats": torch.randn(n, 4, generator=gen, dtype=d),
            "scales": torch.log(size[0] + (size[1] - size[0]) * torch.rand(n, 3, generator=gen, dtype=d)),
            "opacities": torch.logit(opac[0] + (opac[1] - opac[0]) * torch.rand(n, generator=gen, dtype=d)),
            "sh0": torch.randn(n, 1, 3, generator=gen, dtype=d) * 0.5,
            "shN": torch.randn(n, 3, 3, generator=gen, dtype=d) * 0.2}


def row_cameras(width: int, height: int, f: float, n: int, shift: float = 0.05) -> Cameras:
    """n float64 cameras at the origin looking down +z, the i-th moved by i·shift along x (centred principal point)."""
    d = torch.float64
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=d)
    vm = torch.eye(4, dtype=d).repeat(n, 1, 1)
    vm[:, 0, 3] = -shift * torch.arange(n, dtype=d)
    return Cameras(vm, K.repeat(n, 1, 1), width, height)


def render_with_grads(gaussians: Mapping[str, Tensor], cameras: Cameras, features: Tensor | None,
                      background: Tensor | None, setting: Setting) -> dict[str, Tensor]:
    """Outputs and the gradients of L = Σ features² + Σ alpha + 0.1·Σ depth w.r.t. every input, as float64 CPU.

    Depth is returned as depth·alpha: expected depth is undefined where alpha is ~0, its product is not.
    """
    dev, dt = torch.device(setting.device), setting.dtype
    params = {k: v.detach().to(dev, dt).requires_grad_(True) for k, v in gaussians.items()}
    feats = None if features is None else features.detach().to(dev, dt).requires_grad_(True)
    bg = None if background is None else background.to(dev, dt)
    cams = Cameras(cameras.viewmats.to(dev, dt), cameras.Ks.to(dev, dt), cameras.width, cameras.height)
    out = render(params, cams, feats, backend=setting.backend, background=bg)
    (out.features.square().sum() + out.alpha.sum() + 0.1 * out.depth.sum()).backward()
    res = {"features": out.features, "alpha": out.alpha, "depth": out.depth * out.alpha,
           "radii": out.meta["radii"].to(torch.float64)}
    inputs = dict(params, **({} if feats is None else {"input_features": feats}))
    res.update({f"grad_{k}": v.grad if v.grad is not None else torch.zeros_like(v) for k, v in inputs.items()})
    return {k: v.detach().to("cpu", torch.float64) for k, v in res.items()}


def relative_error(a: Tensor, b: Tensor) -> float:
    """‖a − b‖ / ‖b‖ (Frobenius); the absolute norm of a − b when b is zero."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    den = float(torch.linalg.vector_norm(b))
    num = float(torch.linalg.vector_norm(a - b))
    return num / den if den > 0 else num


def compare_settings(gaussians: Mapping[str, Tensor], cameras: Cameras, features: Tensor | None,
                     background: Tensor | None, test: Setting, ref: Setting) -> dict[str, float]:
    """Relative error of `test` against `ref` for features, alpha, depth·alpha, radii and every gradient."""
    a = render_with_grads(gaussians, cameras, features, background, test)
    b = render_with_grads(gaussians, cameras, features, background, ref)
    return {k: relative_error(a[k], b[k]) for k in b}
