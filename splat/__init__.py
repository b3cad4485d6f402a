"""splat: Gaussians, rasterisation backends (`render`), training and PLY I/O.

Entry module for rasterisation: `splat/render.py`. Names are resolved lazily (PEP 562) so `import splat.config`
(the trainer's settings) does not load torch.
"""

from __future__ import annotations

import importlib

__all__ = ["Cameras", "RenderOutput", "render", "init_gaussians", "points_for_scene", "random_points", "load_ply",
           "save_ply", "PRESETS", "TrainConfig", "TrainResult", "evaluate_psnr", "train"]

_LAZY = {
    "Cameras": "splat.render",
    "RenderOutput": "splat.render",
    "render": "splat.render",
    "init_gaussians": "splat.gaussians",
    "points_for_scene": "splat.gaussians",
    "random_points": "splat.gaussians",
    "load_ply": "splat.ply",
    "save_ply": "splat.ply",
    "PRESETS": "splat.config",
    "TrainConfig": "splat.config",
    "TrainResult": "splat.train",
    "evaluate_psnr": "splat.train",
    "train": "splat.train",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'splat' has no attribute {name!r}")
