"""What `splat` reads from a scene, declared: `PosedFrame` and `SplatScene`.

`pipeline.scene.Scene` / `Frame` satisfy them, and so does any object with these members (an in-memory capture,
a test double), so `splat` depends on this contract rather than on the scene readers. Members are read-only
properties so that frozen dataclasses conform.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

__all__ = ["PosedFrame", "SplatScene"]


@runtime_checkable
class PosedFrame(Protocol):
    """One calibrated, posed image."""

    @property
    def stem(self) -> str: ...  # the frame's name (also the key of its image, labels and depth)

    @property
    def K(self) -> np.ndarray: ...  # [3, 3] intrinsics, pixel centres at +0.5

    @property
    def c2w(self) -> np.ndarray: ...  # [4, 4] camera-to-world, OpenCV axes (x right, y down, z forward)

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def depth(self) -> Path | None: ...  # z-depth file (used for the initial points), or None


@runtime_checkable
class SplatScene(Protocol):
    """The frames `splat.train` fits and evaluates, their pixels and an optional initial point cloud."""

    @property
    def root(self) -> Path: ...  # named in error messages

    @property
    def train(self) -> Sequence[str]: ...  # stems of the training views

    @property
    def test(self) -> Sequence[str]: ...  # stems of the held-out views (may be empty)

    @property
    def train_frames(self) -> Sequence[PosedFrame]: ...  # the frames of `train`, in that order

    @property
    def points(self) -> Path | None: ...  # PLY point cloud for the initial Gaussians, or None

    def frame(self, stem: str) -> PosedFrame: ...

    def load_rgb(self, stem: str) -> np.ndarray: ...  # [H, W, 3] float32 in [0, 1]

    def load_depth(self, stem: str) -> np.ndarray | None: ...  # [H, W] float32 z-depth in metres, or None
