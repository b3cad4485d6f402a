"""Uplifting 2D panoptic labels onto 3D Gaussians (LUDVIG), rendering them at novel poses, labelled export.

Entry points: `uplift` (ludvig.py: the weighted average), `render_panoptic` / `write_predictions`
(render.py), `export_labelled` / `load_labelled` (export.py).
"""

from .export import BBOX_PERCENTILES, LabelledGaussians, export_labelled, legend_for, load_labelled
from .ludvig import METHODS, UpliftResult, dense_map, gaussian_geometry, instance_classes, relabel, uplift
from .render import FALLBACKS, render_panoptic, write_predictions

__all__ = [
    "uplift", "UpliftResult", "METHODS", "relabel", "dense_map", "instance_classes", "gaussian_geometry",
    "render_panoptic", "write_predictions", "FALLBACKS",
    "export_labelled", "load_labelled", "legend_for", "LabelledGaussians", "BBOX_PERCENTILES",
]
