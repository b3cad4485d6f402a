"""The PanSt3R segmenter's settings: one dataclass shared by `python -m pipeline segment` and the pipeline's
segment stage (which extends it with where masks come from), so both read the same defaults.

Torch-free on purpose: `--help` renders these fields without loading the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

__all__ = ["SegmenterConfig", "SegmentArgs"]


@dataclass
class SegmenterConfig:
    """PanSt3R as a multi-view panoptic segmenter: checkpoint, class vocabulary, keyframes, mask merge."""

    checkpoint: Optional[Path] = None
    """PanSt3R checkpoint (.pth) of the v1 or v2 model."""
    vocabulary: str = "panlift"
    """Class vocabulary: "panlift" (the 21 PanLift classes, ids as in pipeline.common.classes), a text file (one
    class name a line), or a .pt of class names + embeddings written by panst3r.text.save_embeddings."""
    text_embeddings: Optional[Path] = None
    """Class text embeddings: an .npy/.npz/.pt file [C, 768] in vocabulary order, or a local SigLIP
    (google/siglip-base-patch16-224) folder to encode the names with. Default: the embeddings stored in a .pt
    vocabulary, else SigLIP from the local Hugging Face cache (nothing is downloaded). Checkpoints do not store
    them."""
    keyframes: Optional[int] = None
    """Number of keyframes of the multi-view pass; None (or 0): all views up to 50, as the official demo."""
    keyframe_method: Literal["linspace", "fps"] = "linspace"
    """linspace (official) or fps (farthest-point sampling on encoder descriptors)."""
    merge: Literal["standard_v2", "standard_v1", "qubo"] = "standard_v2"
    """Mask merge: standard_v2 (the official default), standard_v1, or qubo (the paper's QUBO selection, seeded
    annealer). The shipped PanLift benchmark configs set qubo."""
    seed: int = 0
    """Seed of the QUBO annealer and of a non-default FPS start."""
    size: Optional[int] = None
    """Network image size (long side); None: the size the checkpoint was trained at (512 for the released ones)."""


@dataclass(kw_only=True)
class SegmentArgs(SegmenterConfig):
    """`python -m pipeline segment`: PanSt3R on one folder of images, in one multi-view pass."""

    images: Path
    """Folder of the images to segment jointly (png/jpg; sorted by name; one multi-view pass)."""
    out: Path
    """Output folder (instance/, semantics/, confidence/, preview/, segments.json, cameras.json, ...)."""
    device: str = "cpu"
    """Torch device for the network ("cpu", "cuda", "cuda:1")."""
    resize_to_original: bool = True
    """Write label maps at each original image size (nearest); else at network resolution."""
    progress: bool = True
    """Show progress bars."""
