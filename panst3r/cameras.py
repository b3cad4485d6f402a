"""Cameras from PanSt3R pointmaps: focal by Weiszfeld, pose by weighted rigid Procrustes.

PanSt3R predicts, per view, a pointmap in its own camera frame (`pts3d_local`) and one in the reference
view's frame (`pts3d`). As in the official demo:
* the focal length comes from `pts3d_local` with the principal point fixed at the image centre, by
  iteratively re-weighted least squares on the pixel reprojection distance (Weiszfeld, 10 iterations,
  closed-form L2 start), in the integer-pixel convention the official code uses (pixel (i, j) at x=j, y=i,
  principal point (W/2, H/2));
* camera-to-world is the rigid transform (no scale) best mapping `pts3d_local` onto `pts3d`, each point
  weighted by conf − 1.
`recover_cameras` returns K in this project's pixel-centre-at-+0.5 convention (cx = W/2 + 0.5), and c2w
in OpenCV axes, float64 — the `pipeline.scene.Frame` conventions.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

__all__ = ["estimate_focal", "rigid_procrustes", "recover_cameras", "intrinsics"]


def _np64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def estimate_focal(pts3d_local, conf=None, pp: Optional[tuple[float, float]] = None, *, iters: int = 10) -> float:
    """Focal length (pixels) of a local pointmap [H, W, 3], principal point `pp` = (W/2, H/2) by default.

    Minimises Σ_p c_p·|u_p − f·(x_p/z_p, y_p/z_p)| over f by Weiszfeld (u_p = pixel − pp, integer pixel
    coordinates); c_p = conf when given, else 1 (the official call uses no weights). Points with z <= 0 or
    non-finite values are ignored.
    """
    pts = _np64(pts3d_local)
    if pts.ndim != 3 or pts.shape[-1] != 3:
        raise ValueError(f"pts3d_local must be [H, W, 3], got {pts.shape}")
    h, w = pts.shape[:2]
    cx, cy = (w / 2.0, h / 2.0) if pp is None else (float(pp[0]), float(pp[1]))
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    u = np.stack([xx - cx, yy - cy], -1).reshape(-1, 2)  # [P, 2]
    z = pts[..., 2].reshape(-1)
    valid = np.isfinite(pts).all(-1).reshape(-1) & (z > 0)
    c = np.ones_like(z) if conf is None else _np64(conf).reshape(-1)
    valid &= np.isfinite(c) & (c > 0)
    if not valid.any():
        raise ValueError("no valid point (z > 0) to estimate the focal length from")
    xy = pts[..., :2].reshape(-1, 2)[valid] / z[valid, None]  # [P', 2]
    u, c = u[valid], c[valid]
    dot_xu = (xy * u).sum(-1)
    dot_xx = (xy * xy).sum(-1)
    f = float((c * dot_xu).sum() / (c * dot_xx).sum())  # closed-form L2 start
    for _ in range(iters):
        dist = np.linalg.norm(u - f * xy, axis=-1)
        wgt = c / np.maximum(dist, 1e-8)
        f = float((wgt * dot_xu).sum() / (wgt * dot_xx).sum())
    return f


def rigid_procrustes(src, dst, weights=None) -> np.ndarray:
    """Weighted rigid transform (rotation + translation, no scale) T [4, 4] minimising Σ w·|R·src + t − dst|².

    src, dst: [N, 3]; weights: [N] (>= 0; None = uniform). Kabsch with a reflection guard.
    """
    s, d = _np64(src).reshape(-1, 3), _np64(dst).reshape(-1, 3)
    if s.shape != d.shape:
        raise ValueError(f"src {s.shape} and dst {d.shape} differ")
    wt = np.ones(len(s)) if weights is None else np.clip(_np64(weights).reshape(-1), 0.0, None)
    ok = np.isfinite(s).all(1) & np.isfinite(d).all(1) & np.isfinite(wt)
    s, d, wt = s[ok], d[ok], wt[ok]
    if wt.sum() <= 0:
        raise ValueError("rigid_procrustes needs a positive total weight")
    wn = wt / wt.sum()
    ms, md = wn @ s, wn @ d  # weighted centroids [3]
    cov = (s - ms).T @ ((d - md) * wn[:, None])  # [3, 3]  Σ w (s - ms)(d - md)^T
    U, _, Vt = np.linalg.svd(cov)
    sign = np.sign(np.linalg.det(Vt.T @ U.T)) or 1.0
    R = Vt.T @ np.diag([1.0, 1.0, sign]) @ U.T
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = md - R @ ms
    return T


def intrinsics(focal: float, hw: tuple[int, int]) -> np.ndarray:
    """K [3, 3] for a centred principal point, in the pixel-centre-at-+0.5 convention (cx = W/2 + 0.5)."""
    h, w = hw
    return np.array([[focal, 0.0, w / 2.0 + 0.5], [0.0, focal, h / 2.0 + 0.5], [0.0, 0.0, 1.0]])


def recover_cameras(out) -> tuple[np.ndarray, np.ndarray]:
    """(Ks [V, 3, 3], c2w [V, 4, 4]) float64 from a `PanSt3ROutput` (world = keyframes[0]'s camera)."""
    pts3d, local, conf = _np64(out.pts3d), _np64(out.pts3d_local), _np64(out.conf)
    v, h, w = conf.shape
    Ks = np.zeros((v, 3, 3))
    c2w = np.zeros((v, 4, 4))
    for i in range(v):
        Ks[i] = intrinsics(estimate_focal(local[i]), (h, w))
        c2w[i] = rigid_procrustes(local[i].reshape(-1, 3), pts3d[i].reshape(-1, 3), conf[i].reshape(-1) - 1.0)
    return Ks, c2w
