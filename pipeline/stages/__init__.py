"""The pipeline's stages, in order. Each is a `pipeline.cache.Stage`: what its result depends on (input digests,
config sections minus the fields that cannot change it) and how to compute it; `pipeline.cache.run_stage`
decides whether it runs. One module a stage (render lives with uplift, render-then-segment with evaluate)."""

from __future__ import annotations

from ..cache import Stage
from .evaluate import evaluate_inputs, evaluate_run, rts_inputs, rts_run, rts_skip_reason
from .segment import segment_inputs, segment_run, validate_segment_inputs
from .shared import legend_classes, resolve_device, segmenter_can_segment_images
from .splat import SPLAT_CACHE_EXCLUDE, splat_inputs, splat_run
from .uplift import render_inputs, render_run, uplift_inputs, uplift_run

__all__ = ["STAGE_ORDER", "STAGES", "CONTENT_HASHED_PATHS", "legend_classes", "resolve_device", "rts_skip_reason",
           "segmenter_can_segment_images", "validate_segment_inputs"]

# Config paths whose content the stages' `inputs` already hash (scene digests, mask digest, checkpoint digest):
# left out of the config hash, so a moved scene or checkpoint folder keeps every stage cached.
CONTENT_HASHED_PATHS = ("scene.path", "segment.path", "segment.checkpoint")

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("segment", segment_inputs, segment_run, sections=("scene", "segment"), exclude=CONTENT_HASHED_PATHS),
    Stage("splat", splat_inputs, splat_run, sections=("scene", "splat", "device"),
          exclude=("scene.path",) + SPLAT_CACHE_EXCLUDE),
    Stage("uplift", uplift_inputs, uplift_run, sections=("uplift", "device")),
    # label rendering uses uplift.fallback / min_weight / chunk
    Stage("render", render_inputs, render_run, sections=("render", "uplift", "device")),
    Stage("evaluate", evaluate_inputs, evaluate_run, sections=("evaluate",)),
    Stage("render_then_segment", rts_inputs, rts_run, sections=("render_then_segment", "segment", "device"),
          exclude=CONTENT_HASHED_PATHS),
)}
STAGE_ORDER: tuple[str, ...] = tuple(STAGES)
"""Stage names in run order: the one list `--from`, metrics timings and the tests use."""
