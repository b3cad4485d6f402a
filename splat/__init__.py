"""splat: Gaussians, rasterisation backends (`render`), training and PLY I/O.

Entry module for rasterisation: `splat/render.py`.
"""

from .render import Cameras, RenderOutput, render

__all__ = ["Cameras", "RenderOutput", "render"]

# --- trainer exports (splat.gaussians / splat.train / splat.ply) go below this line; owned by the trainer ---
from .gaussians import init_gaussians, points_for_scene, random_points  # noqa: E402
from .ply import load_ply, save_ply  # noqa: E402
from .train import PRESETS, TrainConfig, TrainResult, evaluate_psnr, train  # noqa: E402

__all__ += ["init_gaussians", "points_for_scene", "random_points", "load_ply", "save_ply", "PRESETS", "TrainConfig",
            "TrainResult", "evaluate_psnr", "train"]
