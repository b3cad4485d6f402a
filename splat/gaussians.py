"""Gaussian parameters: one `ParameterDict` holding every per-Gaussian attribute, and where to start them.

Why one dict: gsplat's DefaultStrategy / MCMCStrategy duplicate, split, relocate and prune *every* entry of
the dict they are given (and the matching optimiser state), so the panoptic colours `pan` stay aligned with
the geometry through densification only if they live in the same dict.

Stored (pre-activation) form, as `splat.render` expects it:
    means      [N, 3]     world positions
    quats      [N, 4]     unnormalised rotations (w, x, y, z)
    scales     [N, 3]     log standard deviations
    opacities  [N]        logits
    sh0        [N, 1, 3]  DC SH coefficient (colour = SH_C0 · sh0 + 0.5)
    shN        [N, K, 3]  higher SH bands, K = (sh_degree + 1)² − 1
    pan        [N, 3]     panoptic colours, composited as they are (no activation)
"""

from __future__ import annotations

import math
from pathlib import Path
import numpy as np
import torch
from torch import Tensor

from pipeline.common.io import InputError
from pipeline.common.protocols import SplatScene

__all__ = [
    "SH_C0",
    "PARAM_NAMES",
    "rgb_to_sh",
    "sh_to_rgb",
    "num_sh_rest",
    "init_gaussians",
    "knn_scales",
    "points_for_scene",
    "random_points",
    "scene_bounds",
    "read_points_ply",
]

SH_C0 = 0.28209479177387814  # Y_0^0
PARAM_NAMES = ("means", "quats", "scales", "opacities", "sh0", "shN", "pan")


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """Colour in [0, 1] -> DC SH coefficient (the inverse of the renderer's `SH_C0·c + 0.5`)."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh: Tensor) -> Tensor:
    """DC SH coefficient -> colour (`SH_C0·sh + 0.5`, unclamped); tensors or numpy arrays [..., 3]."""
    return sh * SH_C0 + 0.5


def num_sh_rest(sh_degree: int) -> int:
    """Number of non-DC SH coefficients per channel for `sh_degree`."""
    return (int(sh_degree) + 1) ** 2 - 1


def knn_scales(points: np.ndarray, k: int = 3) -> np.ndarray:
    """Mean distance of each point to its `k` nearest neighbours: [N] (3DGS' initial isotropic size)."""
    from scipy.spatial import cKDTree

    pts = np.asarray(points, dtype=np.float64)
    n = len(pts)
    if n < 2:
        return np.full(n, 0.01)
    kk = min(k + 1, n)
    dist, _ = cKDTree(pts).query(pts, k=kk)  # column 0 is the point itself
    d = dist[:, 1:].mean(axis=1)
    # duplicates would give log(0); fall back to a fraction of the median spacing
    floor = max(float(np.median(d)) * 1e-2, 1e-7)
    return np.maximum(d, floor)


def init_gaussians(points: np.ndarray | Tensor, colors: np.ndarray | Tensor | None = None, *, sh_degree: int = 3,
                   init_opacity: float = 0.1, init_scale: float = 1.0, seed: int = 0) -> torch.nn.ParameterDict:
    """Gaussians at `points` [N, 3] with colours [N, 3] in [0, 1] (random if None), isotropic kNN sizes.

    The quaternions (and colours when none are given) are drawn from a generator seeded by `seed`, so the
    same call always gives the same Gaussians without touching the global RNG.
    """
    pts = torch.as_tensor(np.asarray(points, dtype=np.float32))  # [N, 3]
    if pts.dim() != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise ValueError(f"init_gaussians needs points [N, 3] with N > 0; got {tuple(pts.shape)}")
    if not torch.isfinite(pts).all():
        raise ValueError("init_gaussians: points contain NaN or inf")
    n = len(pts)
    gen = torch.Generator().manual_seed(int(seed))
    if colors is None:
        rgb = torch.rand(n, 3, generator=gen)
    else:
        rgb = torch.as_tensor(np.asarray(colors, dtype=np.float32)).reshape(n, 3).clamp(0.0, 1.0)
    dist = torch.as_tensor(knn_scales(pts.numpy()), dtype=torch.float32)  # [N]
    scales = torch.log(dist * float(init_scale))[:, None].repeat(1, 3)  # [N, 3]
    quats = torch.rand(n, 4, generator=gen)  # [N, 4] as gsplat's simple_trainer: random rotations
    opac = torch.logit(torch.full((n,), float(init_opacity)))  # [N]
    sh0 = rgb_to_sh(rgb)[:, None, :]  # [N, 1, 3]
    shN = torch.zeros(n, num_sh_rest(sh_degree), 3)  # [N, K, 3]
    pan = torch.full((n, 3), 0.5)  # [N, 3] grey until the instance maps pull it to a palette colour
    return torch.nn.ParameterDict({
        "means": torch.nn.Parameter(pts.clone()),
        "quats": torch.nn.Parameter(quats),
        "scales": torch.nn.Parameter(scales),
        "opacities": torch.nn.Parameter(opac),
        "sh0": torch.nn.Parameter(sh0),
        "shN": torch.nn.Parameter(shN),
        "pan": torch.nn.Parameter(pan),
    })


# -------------------------------------------------------------------------------------------------------------
# initial points
# -------------------------------------------------------------------------------------------------------------


def read_points_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """xyz [N, 3] float32 and rgb [N, 3] in [0, 1] (or None) of a point-cloud PLY."""
    from plyfile import PlyData

    path = Path(path)
    try:
        v = PlyData.read(str(path))["vertex"]
    except FileNotFoundError:
        raise InputError(f"{path}: point cloud not found") from None
    except Exception as e:
        raise InputError(f"{path}: cannot read the point cloud ({e}); write a PLY with x, y, z vertex fields") from None
    names = v.data.dtype.names or ()
    if not {"x", "y", "z"} <= set(names):
        raise InputError(f"{path}: point cloud has no x, y, z vertex fields (has {', '.join(names)})")
    xyz = np.stack([np.asarray(v[c], dtype=np.float32) for c in "xyz"], 1)
    rgb = None
    for keys in (("red", "green", "blue"), ("r", "g", "b")):
        if set(keys) <= set(names):
            cols = np.stack([np.asarray(v[c]) for c in keys], 1)
            rgb = cols.astype(np.float32) / (255.0 if cols.dtype.kind in "ui" else 1.0)
            break
    ok = np.isfinite(xyz).all(1)
    return xyz[ok], (None if rgb is None else rgb[ok])


def scene_bounds(centres: np.ndarray, extent: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """A box around camera centres [M, 3]: their mean ± `extent` × their radius (gsplat's random init)."""
    c = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    mid = c.mean(0)
    radius = float(np.linalg.norm(c - mid, axis=1).max()) if len(c) > 1 else 0.0
    radius = max(radius, 1.0)  # one camera or a tripod: still a 1 m-scale box
    return mid - extent * radius, mid + extent * radius


def random_points(lo: np.ndarray, hi: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """`n` points uniform in the box [lo, hi]: [n, 3] float32 (the init when nothing better exists)."""
    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    return (lo + rng.random((int(n), 3)) * (hi - lo)).astype(np.float32)


def _subsample(rng: np.random.Generator, xyz: np.ndarray, rgb: np.ndarray | None, n: int):
    if len(xyz) <= n:
        return xyz, rgb
    idx = np.sort(rng.choice(len(xyz), size=n, replace=False))
    return xyz[idx], (None if rgb is None else rgb[idx])


def _backproject_depth(scene: SplatScene, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """Points from the train frames' depth maps (+0.5 pixel centres), coloured by their images."""
    frames = [f for f in scene.train_frames if f.depth is not None]
    if not frames:
        return None
    per = max(1, int(math.ceil(n / len(frames))))
    xyzs, rgbs = [], []
    for f in frames:
        depth = scene.load_depth(f.stem)  # [H, W]
        rgb = scene.load_rgb(f.stem)  # [H, W, 3]
        if depth.shape != rgb.shape[:2]:
            raise InputError(f"{f.depth}: depth is {depth.shape[1]}x{depth.shape[0]} but the image is "
                             f"{rgb.shape[1]}x{rgb.shape[0]}; write depth at the image resolution")
        valid = np.flatnonzero(np.isfinite(depth) & (depth > 0))
        if valid.size == 0:
            continue
        pick = rng.choice(valid, size=min(per, valid.size), replace=False)
        i, j = np.divmod(pick, depth.shape[1])
        z = depth.reshape(-1)[pick].astype(np.float64)
        K = np.asarray(f.K, np.float64)
        x = (j + 0.5 - K[0, 2]) / K[0, 0] * z
        y = (i + 0.5 - K[1, 2]) / K[1, 1] * z
        cam = np.stack([x, y, z, np.ones_like(z)], 1)  # [P, 4]
        xyzs.append((cam @ np.asarray(f.c2w, np.float64).T)[:, :3])
        rgbs.append(rgb.reshape(-1, 3)[pick])
    if not xyzs:
        return None
    return np.concatenate(xyzs).astype(np.float32), np.concatenate(rgbs).astype(np.float32)


def points_for_scene(scene: SplatScene, max_points: int = 100_000, seed: int = 0, *, pointmap: np.ndarray | None = None,
                     pointmap_colors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Initial points for a scene, best source first: its PLY, then back-projected depth of the train
    frames, then a PanSt3R pointmap passed in ([..., 3], non-finite entries ignored), then random points in a
    box around the camera centres. Returns (xyz [N, 3] float32, rgb [N, 3] in [0, 1] or None, source name)."""
    rng = np.random.default_rng(seed)
    n = int(max_points)
    if n <= 0:
        raise ValueError(f"max_points must be positive, got {max_points}")
    if scene.points is not None:
        xyz, rgb = read_points_ply(scene.points)
        if len(xyz):
            xyz, rgb = _subsample(rng, xyz, rgb, n)
            return xyz, rgb, "ply"
    got = _backproject_depth(scene, n, rng)
    if got is not None:
        xyz, rgb = _subsample(rng, *got, n)
        return xyz, rgb, "depth"
    if pointmap is not None:
        pm = np.asarray(pointmap, dtype=np.float32).reshape(-1, 3)
        cols = None if pointmap_colors is None else np.asarray(pointmap_colors, np.float32).reshape(-1, 3)
        ok = np.isfinite(pm).all(1)
        if ok.any():
            xyz, rgb = _subsample(rng, pm[ok], None if cols is None else cols[ok], n)
            return xyz, rgb, "pointmap"
    centres = np.stack([np.asarray(f.c2w, np.float64)[:3, 3] for f in scene.train_frames])
    lo, hi = scene_bounds(centres)
    return random_points(lo, hi, n, seed), None, "random"
