"""splat: Gaussians, rasterisation backends (`render`), training and PLY I/O.

Entry points: `splat.render.render` (rasterisation) and `splat.train.train` (fitting); the configuration lives in
the torch-free `splat/config.py`. Names below are imported on first use, so `import splat.config` does not load
torch; the functions `render` and `train` are reached through their modules, whose names they share.
"""

from __future__ import annotations

import importlib

# name -> the submodule that defines it
_HOME = {"Cameras": "render", "RenderOutput": "render", "init_gaussians": "gaussians",
         "points_for_scene": "gaussians", "random_points": "gaussians", "load_ply": "ply", "save_ply": "ply",
         "PRESETS": "config", "TrainConfig": "config", "TrainResult": "train", "evaluate_psnr": "train"}
__all__ = ["Cameras", "RenderOutput", "init_gaussians", "points_for_scene", "random_points", "load_ply", "save_ply",
           "PRESETS", "TrainConfig", "TrainResult", "evaluate_psnr"]


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'splat' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
