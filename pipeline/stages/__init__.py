"""The pipeline's stages, in order. Each is a `pipeline.cache.Stage`: what its result depends on and how to
compute it; `pipeline.cache.run_stage` decides whether it runs. One module a stage (render lives with uplift)."""

from __future__ import annotations

from ..cache import Stage
from .evaluate import evaluate_inputs, evaluate_run, rts_inputs, rts_run, rts_skip_reason
from .segment import segment_inputs, segment_run, validate_segment_inputs
from .shared import legend_classes, resolve_device, segmenter_can_segment_images
from .splat import splat_inputs, splat_run
from .uplift import render_inputs, render_run, uplift_inputs, uplift_run

__all__ = ["STAGE_ORDER", "STAGES", "legend_classes", "resolve_device", "rts_skip_reason",
           "segmenter_can_segment_images", "validate_segment_inputs"]

STAGES: dict[str, Stage] = {
    "segment": Stage("segment", segment_inputs, segment_run),
    "splat": Stage("splat", splat_inputs, splat_run),
    "uplift": Stage("uplift", uplift_inputs, uplift_run),
    "render": Stage("render", render_inputs, render_run),
    "evaluate": Stage("evaluate", evaluate_inputs, evaluate_run),
    "render_then_segment": Stage("render_then_segment", rts_inputs, rts_run),
}
STAGE_ORDER = tuple(STAGES)
