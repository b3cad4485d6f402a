"""splat: Gaussians, rasterisation backends (`render`), training and PLY I/O.

Entry module for rasterisation: `splat/render.py`.
"""

from .render import Cameras, RenderOutput, render

__all__ = ["Cameras", "RenderOutput", "render"]

# --- trainer exports (splat.gaussians / splat.train / splat.ply) go below this line; owned by the trainer ---
