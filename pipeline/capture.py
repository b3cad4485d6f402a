"""Captures as users have them: cameras estimated when missing, lens distortion removed, images downscaled.

`prepare_scene` runs once before the stages and returns a scene every stage can use as it is: pinhole cameras,
images (and depth, GT maps) at the working resolution in a cache folder under the run directory, keyed by
content so a second run reuses it. Undistortion is OpenCV's (`cv2.initUndistortRectifyMap` + `cv2.remap`;
`cv2.fisheye` for OPENCV_FISHEYE): bilinear for images, nearest for label maps and depth. `labels_to_frame`
applies the same resampling to masks a user brings at the capture's own resolution.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .cache import digest
from .common.io import InputError, atomic_dir, read_json_if_present, read_png, write_json, write_png
from .scene import Frame, Scene

__all__ = ["prepare_scene", "check_poses", "labels_to_frame", "undistort_maps", "scaled_K"]

# OpenCV's pinhole convention puts pixel centres at integers, ours (gsplat's, COLMAP's) at +0.5
_HALF = np.array([[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]])


def undistort_maps(frame: Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(map_x, map_y [H, W] float32, K_new [3, 3]) that resample `frame`'s image to a pinhole camera of the same
    size; K_new keeps every output pixel inside the captured image (no black border)."""
    import cv2

    w, h = frame.width, frame.height
    K = np.asarray(frame.K, np.float64) - _HALF
    D = np.asarray(frame.distortion, np.float64)
    if frame.camera_model == "OPENCV_FISHEYE":
        K_new = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(K, D, (w, h), np.eye(3), balance=0.0)
        mx, my = cv2.fisheye.initUndistortRectifyMap(K, D, np.eye(3), K_new, (w, h), cv2.CV_32FC1)
    else:
        K_new, _roi = cv2.getOptimalNewCameraMatrix(K, D, (w, h), 0.0, (w, h))
        mx, my = cv2.initUndistortRectifyMap(K, D, None, K_new, (w, h), cv2.CV_32FC1)
    return mx, my, np.asarray(K_new, np.float64) + _HALF


def scaled_K(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """K for an image resized by (sx, sy): exact in the pixel-centre-at-+0.5 convention."""
    return np.diag([sx, sy, 1.0]) @ np.asarray(K, np.float64)


def _target_size(frame: Frame, downscale: int) -> tuple[int, int]:
    return max(1, int(round(frame.width / downscale))), max(1, int(round(frame.height / downscale)))


def _resample(arr: np.ndarray, frame: Frame, downscale: int, nearest: bool) -> np.ndarray:
    """Undistort (when the frame has distortion) and resize one image/label/depth array of the captured frame."""
    import cv2

    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    out = arr
    if frame.distortion:
        mx, my, _ = undistort_maps(frame)
        out = cv2.remap(out, mx, my, interp, borderMode=cv2.BORDER_REPLICATE)
    w, h = _target_size(frame, downscale)
    if (out.shape[1], out.shape[0]) != (w, h):
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)
    return out


def labels_to_frame(arr: np.ndarray, frame: Frame) -> np.ndarray:
    """A label map of `frame`'s capture (any same-aspect size) in `frame`'s prepared geometry (nearest)."""
    import cv2

    orig = frame.original
    if orig is None or arr.shape[:2] == (frame.height, frame.width):
        return arr
    if arr.shape[:2] != (orig.height, orig.width):
        arr = cv2.resize(arr, (orig.width, orig.height), interpolation=cv2.INTER_NEAREST)
    downscale = orig.width / frame.width
    out = _resample(arr, orig, 1, nearest=True)
    if downscale != 1:
        out = cv2.resize(out, (frame.width, frame.height), interpolation=cv2.INTER_NEAREST)
    return out


def _needs_work(frame: Frame, downscale: int) -> bool:
    return bool(frame.distortion) or downscale != 1


def _prepare_frames(scene: Scene, downscale: int, cache_root: Path) -> tuple[Scene, dict]:
    work = [f for f in scene.frames.values() if _needs_work(f, downscale)]
    if not work:
        return scene, {}
    key = digest({"downscale": downscale, "frames": [
        [f.stem, str(Path(f.image).resolve()), Path(f.image).stat().st_size, Path(f.image).stat().st_mtime_ns,
         np.round(f.K, 9).tolist(), f.camera_model, list(f.distortion), f.width, f.height,
         *[None if p is None else [str(p), Path(p).stat().st_mtime_ns] for p in (f.semantics, f.instance, f.depth)]]
        for f in work]})[:16]
    cache = cache_root / f"capture-{key}"
    if read_json_if_present(cache / "done.json") is None:
        from .common.progress import progress_bar

        with atomic_dir(cache, "capture cache") as tmp, progress_bar(len(work), "prepare images", unit="img") as bar:
            for f in work:
                rgb = read_png(f.image)
                write_png(tmp / "images" / f"{f.stem}.png", _resample(rgb, f, downscale, nearest=False))
                for name, path in (("rs_semantics", f.semantics), ("rs_instance", f.instance)):  # PanLift's names
                    if path is not None:
                        write_png(tmp / name / f"{f.stem}.png", _resample(read_png(path), f, downscale, nearest=True))
                if f.depth is not None:
                    (tmp / "depth").mkdir(exist_ok=True)
                    np.save(tmp / "depth" / f"{f.stem}.npy", _resample(scene.load_depth(f.stem), f, downscale, True))
                bar.update(1)
            write_json(tmp / "splits.json", {"train": scene.train, "test": scene.test})  # the evaluator reads it
            write_json(tmp / "done.json", {"frames": len(work), "downscale": downscale})
    frames = dict(scene.frames)
    models = sorted({f.camera_model for f in work if f.distortion})
    for f in work:
        K = undistort_maps(f)[2] if f.distortion else np.asarray(f.K, np.float64)
        w, h = _target_size(f, downscale)
        opt = {name: (cache / f"rs_{name}" / f"{f.stem}.png") if getattr(f, name) is not None else None
               for name in ("semantics", "instance")}
        frames[f.stem] = dataclasses.replace(
            f, image=cache / "images" / f"{f.stem}.png", K=scaled_K(K, w / f.width, h / f.height), width=w, height=h,
            camera_model="PINHOLE", distortion=(), original=f.original or f,
            depth=(cache / "depth" / f"{f.stem}.npy") if f.depth is not None else None, **opt)
    info = {"cache": str(cache), "prepared_images": len(work), "downscale": downscale,
            "undistorted": sum(1 for f in work if f.distortion), "camera_models": models}
    meta = dict(scene.meta)
    if any(f.semantics is not None for f in work):
        meta["gt_root"] = str(cache)  # GT maps in the prepared geometry, PanLift names: what evaluation reads
    return dataclasses.replace(scene, frames=frames, meta=meta), info


def _write_points(scene: Scene, cache_root: Path) -> Scene:
    """Points that came with the cameras (COLMAP points3D, SfM, pointmaps) as a PLY the initialiser reads."""
    pts = scene.meta.get("points3d")
    if pts is None or scene.points is not None:
        return scene
    from plyfile import PlyData, PlyElement

    xyz, rgb = np.asarray(pts[0], np.float32), np.asarray(pts[1], np.float32)
    path = cache_root / f"points-{digest([xyz.tobytes().hex()[:4096], len(xyz), float(xyz.sum())])[:16]}.ply"
    if not path.is_file():
        v = np.empty(len(xyz), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
        for i, c in enumerate("xyz"):
            v[c] = xyz[:, i]
        for i, c in enumerate(("red", "green", "blue")):
            v[c] = np.clip(rgb[:, i] * 255 + 0.5, 0, 255).astype(np.uint8)
        from .common.io import atomic_path

        with atomic_path(path) as tmp:
            PlyData([PlyElement.describe(v, "vertex")]).write(str(tmp))
    meta = {k: v for k, v in scene.meta.items() if k != "points3d"}
    return dataclasses.replace(scene, points=path, meta=meta)


def check_poses(scene: Scene, poses: str, segment_kind: str, downscale: int) -> None:
    """The cheap reasons `prepare_scene` would refuse, checked before the run folder is touched."""
    if downscale < 1:
        raise InputError(f"scene.downscale must be a whole number >= 1, got {downscale}")
    if poses == "file" and not scene.posed:
        raise InputError(f"{scene.root}: a bare image folder has no camera poses; pass --scene.poses colmap "
                         "(structure from motion) or --scene.poses pointmaps")
    if poses == "pointmaps" and segment_kind not in ("simulated", "panst3r"):
        raise InputError(f"scene.poses pointmaps takes cameras from the segmenter's pointmaps; the "
                         f"{segment_kind} segmenter has none: use --segment.kind panst3r (a checkpoint), "
                         "simulated (synthetic scenes) or --scene.poses colmap")


def prepare_scene(scene: Scene, *, poses: str = "file", downscale: int = 1, segment_kind: str = "simulated",
                  cache_root: Path, pose_error_deg: float = 0.5, depth_noise: float = 0.01,
                  sfm_max_image_size: int = 1024, segmenter=None, device: str = "cpu") -> tuple[Scene, dict]:
    """The scene ready for the stages, and what was done to it (notes, cache folder, pose_eval).

    `segmenter` (a `panst3r.config.SegmenterConfig`) is what `poses="pointmaps"` runs when the segmenter is
    PanSt3R; with the simulated segmenter the pointmaps are SIMULATED from the scene's depth."""
    from .poses import apply_estimate, panst3r_pointmap_cameras, sfm_cameras, simulated_pointmap_cameras

    check_poses(scene, poses, segment_kind, downscale)
    info: dict = {"poses": poses, "notes": []}
    if poses != "file":
        if poses == "colmap":
            est = sfm_cameras(scene, cache_root / f"sfm-{_images_key(scene)}", max_image_size=sfm_max_image_size)
        elif poses == "pointmaps" and segment_kind == "panst3r" and segmenter is not None:
            est = panst3r_pointmap_cameras(scene, segmenter, device, cache_root / f"pointmaps-{_images_key(scene)}")
        elif poses == "pointmaps":
            if segment_kind != "simulated":
                raise InputError(f"scene.poses pointmaps takes cameras from the segmenter's pointmaps; the "
                                 f"{segment_kind} segmenter has none: use --segment.kind panst3r (a checkpoint), "
                                 "simulated (synthetic scenes) or --scene.poses colmap")
            est = simulated_pointmap_cameras(scene, pose_error_deg=pose_error_deg, pose_error_rel=0.01 * pose_error_deg,
                                             depth_noise=depth_noise)
        else:
            raise InputError(f"unknown scene.poses {poses!r}; use file, colmap or pointmaps")
        scene, pose_eval, notes = apply_estimate(scene, est)
        info["notes"] += notes
        info["source"] = est.source
        info["unregistered"] = est.unregistered
        if pose_eval is not None:
            info["pose_eval"] = pose_eval
    scene = _write_points(scene, cache_root)
    scene, prep = _prepare_frames(scene, downscale, cache_root)
    if prep:
        info.update(prep)
        what = []
        if prep["undistorted"]:
            what.append(f"undistorted {prep['undistorted']} images ({', '.join(prep['camera_models'])})")
        if downscale != 1:
            what.append(f"downscaled by {downscale}")
        info["notes"].append(f"{' and '.join(what)} into {prep['cache']}")
    return scene, info


def _images_key(scene: Scene) -> str:
    return digest([[s, Path(f.image).stat().st_size, Path(f.image).stat().st_mtime_ns] for s, f in scene.frames.items()])[:16]
