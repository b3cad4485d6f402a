"""Cameras for scenes that come without them, and how far estimated cameras are from the true ones.

* `sfm_cameras`: structure from motion with pycolmap (SIFT, matching, incremental mapping) on the CPU.
* `simulated_pointmap_cameras`: SIMULATED MUSt3R-like pointmaps derived from a synthetic scene's depth and poses
  (first view's frame, unknown global scale, per-view pose error, depth noise), turned into cameras by the same
  recovery as real PanSt3R output (`panst3r.cameras`: Weiszfeld focal + Procrustes pose).
* `umeyama` / `pose_errors`: Sim(3) alignment of estimated camera centres to the scene's (Umeyama 1991) and the
  scores written to metrics.json as `pose_eval`:
  ate = RMSE of |s R x_i + t - y_i| over registered train cameras (scene units); ate_rel = ate / max_i |y_i - mean(y)|;
  rot_err_deg = median angle of (R R_est,i)^T R_gt,i; num_registered = train cameras with an estimate.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common.io import InputError, atomic_dir, read_json_if_present, write_json
from .scene import CAMERA_MODELS, Frame, Scene, camera_from_params, reconstruction_points

__all__ = ["Estimate", "sfm_cameras", "simulated_pointmap_cameras", "panst3r_pointmap_cameras", "umeyama", "pose_errors", "apply_estimate"]


@dataclass
class Estimate:
    """Estimated cameras for some frames of a scene, in the estimate's own world frame."""

    frames: dict[str, Frame]  # registered frames with estimated K / distortion / c2w
    points: tuple[np.ndarray, np.ndarray] | None  # (xyz [N, 3], rgb [N, 3] in [0, 1]) in the same frame
    source: str  # "colmap" | "pointmaps (SIMULATED)" | "pointmaps"
    unregistered: list[str]
    wall_s: float


# ------------------------------------------------------------------------------------------------
# Sim(3) alignment and scores
# ------------------------------------------------------------------------------------------------


def umeyama(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(s, R, t) minimising Σ |s R x_i + t - y_i|² for x, y [N, 3] (closed form, reflection excluded)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 2 or x.shape[1] != 3 or len(x) < 3:
        raise ValueError(f"umeyama needs two [N >= 3, 3] point sets, got {x.shape} and {y.shape}")
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    cov = yc.T @ xc / len(x)  # [3, 3]
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    var_x = (xc ** 2).sum() / len(x)
    s = float(np.trace(np.diag(D) @ S) / max(var_x, 1e-300))
    t = my - s * R @ mx
    return s, R, t


def pose_errors(est: dict[str, np.ndarray], gt: dict[str, np.ndarray]) -> tuple[dict, tuple[float, np.ndarray, np.ndarray]]:
    """pose_eval scores of estimated c2w [4, 4] against the true ones over their common stems, and the Sim(3)."""
    common = [s for s in gt if s in est]
    if len(common) < 3:
        raise InputError(f"only {len(common)} train cameras were estimated; at least 3 are needed to align them "
                         "to the scene's poses")
    x = np.stack([est[s][:3, 3] for s in common])
    y = np.stack([gt[s][:3, 3] for s in common])
    s, R, t = umeyama(x, y)
    resid = np.linalg.norm((s * (R @ x.T)).T + t - y, axis=1)
    ate = float(np.sqrt(np.mean(resid ** 2)))
    extent = float(np.max(np.linalg.norm(y - y.mean(0), axis=1)))
    angles = []
    for st in common:
        d = (R @ est[st][:3, :3]).T @ gt[st][:3, :3]
        angles.append(np.degrees(np.arccos(np.clip((np.trace(d) - 1.0) / 2.0, -1.0, 1.0))))
    scores = {"ate": ate, "ate_rel": ate / max(extent, 1e-12), "rot_err_deg": float(np.median(angles)),
              "rot_err_max_deg": float(np.max(angles)), "num_registered": len(common), "num_train": len(gt)}
    return scores, (s, R, t)


def to_estimate_frame(c2w_gt: np.ndarray, sim: tuple[float, np.ndarray, np.ndarray]) -> np.ndarray:
    """A true camera-to-world mapped into the estimate's frame by the inverse similarity (positions scaled)."""
    s, R, t = sim
    out = np.eye(4)
    out[:3, :3] = R.T @ c2w_gt[:3, :3]
    out[:3, 3] = R.T @ (c2w_gt[:3, 3] - t) / s
    return out


# ------------------------------------------------------------------------------------------------
# structure from motion (pycolmap)
# ------------------------------------------------------------------------------------------------


def _stage_image(src: Path, dest_stem: Path) -> None:
    """The image as SfM must see it: a link, or an upright copy when EXIF rotates it (COLMAP ignores EXIF, the
    rest of the pipeline applies it)."""
    from PIL import Image, ImageOps

    with Image.open(src) as im:
        if im.format == "JPEG" and im.getexif().get(0x0112, 1) != 1:
            ImageOps.exif_transpose(im).save(dest_stem.with_suffix(".jpg"), quality=95)
            return
    dest_stem.with_suffix(src.suffix.lower()).symlink_to(src)


def sfm_cameras(scene: Scene, cache: Path, *, max_image_size: int = 1024, progress: bool = True) -> Estimate:
    """pycolmap SfM on every image of the scene, cached in `cache` by the images' content."""
    import pycolmap

    stems = list(scene.frames)
    done = read_json_if_present(cache / "sfm.json")
    if done is None:
        with atomic_dir(cache, "structure from motion") as tmp:
            images = tmp / "images"
            images.mkdir()
            for s in stems:
                _stage_image(Path(scene.frames[s].image).resolve(), images / s)
            t0 = time.perf_counter()
            pycolmap.logging.minloglevel = 1  # warnings and errors only: our own lines say what runs
            print(f"structure from motion (pycolmap) on {len(stems)} images …", flush=True)
            db = tmp / "database.db"
            extraction = pycolmap.FeatureExtractionOptions()
            extraction.max_image_size = int(max_image_size)
            extraction.num_threads = 2
            # affine-adapted, domain-size-pooled SIFT: on this project's test captures it halved the rotation error
            extraction.sift.estimate_affine_shape = True
            extraction.sift.domain_size_pooling = True
            pycolmap.extract_features(db, images, camera_mode=pycolmap.CameraMode.SINGLE, extraction_options=extraction,
                                      device=pycolmap.Device.cpu)
            if len(stems) <= 120:
                pycolmap.match_exhaustive(db, device=pycolmap.Device.cpu)
            else:  # exhaustive matching grows as n²: neighbours in capture order for long videos
                pycolmap.match_sequential(db, device=pycolmap.Device.cpu)
            (tmp / "sparse").mkdir()
            mapping = pycolmap.IncrementalPipelineOptions()
            mapping.random_seed = 0
            recs = pycolmap.incremental_mapping(db, images, tmp / "sparse", options=mapping)
            wall = time.perf_counter() - t0
            best = max(recs.values(), key=lambda r: r.num_reg_images(), default=None)
            table = {}
            if best is not None:
                best.write(str(tmp / "sparse"))
                for im in best.images.values():
                    if hasattr(im, "has_pose") and not im.has_pose:
                        continue
                    cam = best.cameras[im.camera_id]
                    w2c = np.eye(4)
                    w2c[:3] = np.asarray(im.cam_from_world().matrix(), np.float64)
                    table[Path(im.name).stem] = {"model": cam.model.name, "params": np.asarray(cam.params, float).tolist(),
                                                 "width": int(cam.width), "height": int(cam.height),
                                                 "c2w": np.linalg.inv(w2c).tolist()}
                xyz, rgb = reconstruction_points(best)
                np.savez(tmp / "points.npz", xyz=xyz, rgb=rgb)
            for sub in ("images", "database.db"):
                p = tmp / sub
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
            write_json(tmp / "sfm.json", {"frames": table, "wall_s": round(wall, 2), "num_images": len(stems)})
        done = read_json_if_present(cache / "sfm.json")
    frames = {}
    for stem, c in done["frames"].items():
        if stem not in scene.frames:
            continue
        K, model, dist = camera_from_params(c["model"], dict(zip(CAMERA_MODELS[c["model"]], c["params"])), cache)
        frames[stem] = dataclasses.replace(scene.frames[stem], K=K, camera_model=model, distortion=dist,
                                           c2w=np.asarray(c["c2w"], np.float64), width=c["width"], height=c["height"])
    pts = np.load(cache / "points.npz") if (cache / "points.npz").is_file() else None
    points = (pts["xyz"], pts["rgb"]) if pts is not None and len(pts["xyz"]) else None
    return Estimate(frames, points, "colmap", [s for s in stems if s not in frames], float(done["wall_s"]))


# ------------------------------------------------------------------------------------------------
# SIMULATED pointmaps (synthetic scenes)
# ------------------------------------------------------------------------------------------------


def _small_rotation(rng: np.random.Generator, sigma_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.radians(rng.normal() * sigma_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def simulated_pointmap_cameras(scene: Scene, *, pose_error_deg: float = 0.5, pose_error_rel: float = 0.005,
                               depth_noise: float = 0.01, seed: int = 0, stride: int = 4) -> Estimate:
    """SIMULATED MUSt3R-like pointmaps from depth/<stem>.npy and the scene's poses, turned into cameras.

    Each view's local pointmap is its depth back-projected (multiplicative depth noise); its global pointmap is
    that local map placed by a perturbed pose (rotation error ~ N(0, pose_error_deg), translation error ~
    pose_error_rel × the camera extent), in the first view's frame, times an unknown global scale. Cameras come
    back through `panst3r.cameras` (focal by Weiszfeld with a centred principal point, pose by Procrustes), as
    for a real PanSt3R pass."""
    from panst3r.cameras import estimate_focal, intrinsics, rigid_procrustes

    t0 = time.perf_counter()
    stems = list(scene.frames)
    missing = [s for s in stems if scene.frames[s].depth is None]
    if missing:
        raise InputError(f"{scene.root}: SIMULATED pointmaps need depth/<stem>.npy for every frame ({missing[0]!r} has "
                         "none: only synthetic scenes have it); for real images use --scene.poses colmap or "
                         "--segment.kind panst3r")
    rng = np.random.default_rng([int(seed), 31])
    centres = np.stack([scene.frames[s].c2w[:3, 3] for s in stems])
    extent = float(np.max(np.linalg.norm(centres - centres.mean(0), axis=1))) or 1.0
    world_from_first = np.linalg.inv(scene.frames[stems[0]].c2w)
    gscale = float(rng.uniform(0.5, 2.0))  # MUSt3R's frame has no metric scale
    frames, xyzs, rgbs = {}, [], []
    for s in stems:
        f = scene.frames[s]
        depth = scene.load_depth(s)[::stride, ::stride].astype(np.float64)  # [h, w]
        h, w = depth.shape
        depth = depth * (1.0 + depth_noise * rng.normal(size=depth.shape))
        K = np.asarray(f.K, np.float64)
        jj, ii = np.meshgrid((np.arange(w) + 0.5) * stride, (np.arange(h) + 0.5) * stride)
        # [h, w, 3] in the network's units: local and global pointmaps share the unknown scale
        local = gscale * np.stack([(jj - K[0, 2]) / K[0, 0] * depth, (ii - K[1, 2]) / K[1, 1] * depth, depth], -1)
        noisy = np.array(f.c2w, np.float64)
        noisy[:3, :3] = noisy[:3, :3] @ _small_rotation(rng, pose_error_deg)
        noisy[:3, 3] += rng.normal(size=3) * pose_error_rel * extent
        cam_to_first = world_from_first @ noisy
        glob = local.reshape(-1, 3) @ cam_to_first[:3, :3].T + gscale * cam_to_first[:3, 3]  # [P, 3]
        ok = np.isfinite(depth).reshape(-1) & (depth.reshape(-1) > 0)
        focal = estimate_focal(local) * stride  # pointmap at 1/stride resolution: pixels scale back up
        Kest = intrinsics(focal, (f.height, f.width))
        c2w = rigid_procrustes(local.reshape(-1, 3)[ok], glob[ok])
        frames[s] = dataclasses.replace(f, K=Kest, c2w=c2w, camera_model="PINHOLE", distortion=(), depth=None)
        pick = rng.choice(np.flatnonzero(ok), size=min(2000, int(ok.sum())), replace=False)
        rgb = scene.load_rgb(s)[::stride, ::stride].reshape(-1, 3)
        xyzs.append(glob[pick])
        rgbs.append(rgb[pick])
    points = (np.concatenate(xyzs).astype(np.float32), np.concatenate(rgbs).astype(np.float32))
    return Estimate(frames, points, "pointmaps (SIMULATED)", [], time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------
# PanSt3R pointmaps (a real segmenter pass)
# ------------------------------------------------------------------------------------------------


def panst3r_pointmap_cameras(scene: Scene, segmenter_cfg, device: str, cache: Path, *, max_points: int = 200_000
                             ) -> Estimate:
    """Cameras from one multi-view PanSt3R pass over every image (its MUSt3R pointmaps): intrinsics by Weiszfeld,
    poses by Procrustes (`panst3r.cameras`), mapped from the network's centre crop back to each image; the
    confident global points initialise the Gaussians. The pass is cached in `cache`."""
    from panst3r.segment import load_segmenter

    t0 = time.perf_counter()
    stems = list(scene.frames)
    out = cache / "panst3r"
    if read_json_if_present(out / "cameras.json") is None:
        net = load_segmenter(segmenter_cfg, device, panlift_ids=True)
        net.segment([scene.frames[s].image for s in stems], out, progress=True, write_pointmaps=True)
    cams = read_json_if_present(out / "cameras.json")
    frames = {}
    for s in stems:
        f = scene.frames[s]
        c = cams.get(Path(f.image).stem)
        if c is None:
            continue
        x0, y0, _cw, _ch = c["crop_xywh"]
        scale = float(c["scale_to_original"])
        K = np.asarray(c["K"], np.float64)
        K_orig = np.array([[scale * K[0, 0], 0, scale * K[0, 2] + x0], [0, scale * K[1, 1], scale * K[1, 2] + y0],
                           [0, 0, 1]])  # continuous coordinates: the crop's offset and scale map exactly
        frames[s] = dataclasses.replace(f, K=K_orig, c2w=np.asarray(c["c2w"], np.float64), camera_model="PINHOLE",
                                        distortion=(), depth=None)
    pm = np.load(out / "pointmaps.npz")
    pts, conf = pm["pts3d"].reshape(-1, 3), pm["conf"].reshape(-1)
    ok = np.isfinite(pts).all(1) & (conf > np.quantile(conf, 0.5))
    pick = np.random.default_rng(0).choice(np.flatnonzero(ok), size=min(max_points, int(ok.sum())), replace=False)
    points = (pts[pick].astype(np.float32), np.full((len(pick), 3), 0.5, np.float32)) if len(pick) else None
    return Estimate(frames, points, "pointmaps (PanSt3R)", [s for s in stems if s not in frames],
                    time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------
# the scene with estimated cameras
# ------------------------------------------------------------------------------------------------


def apply_estimate(scene: Scene, est: Estimate, min_fraction: float = 0.5) -> tuple[Scene, dict | None, list[str]]:
    """The scene with estimated cameras; test views at the true poses mapped into the estimate's frame.

    Returns (scene, pose_eval or None when the scene had no poses of its own, notes). Unregistered images are
    listed in the notes and left out of the split, never dropped silently."""
    n = len(scene.frames)
    if len(est.frames) < max(3, int(np.ceil(min_fraction * n))):
        raise InputError(f"{scene.root}: {est.source} registered only {len(est.frames)} of {n} images; try photos "
                         "with more overlap and texture (every part of the room seen from several places), or "
                         "--scene.poses pointmaps")
    notes = [f"cameras from {est.source}: {len(est.frames)} of {n} images registered in {est.wall_s:.1f} s"]
    if est.unregistered:
        notes.append(f"{len(est.unregistered)} images not registered, left out: {', '.join(est.unregistered[:10])}"
                     + (" …" if len(est.unregistered) > 10 else ""))
    frames = dict(est.frames)
    pose_eval = None
    if scene.posed:
        gt = {s: scene.frames[s].c2w for s in scene.train}
        pose_eval, sim = pose_errors({s: f.c2w for s, f in est.frames.items()}, gt)
        ref = next(iter(est.frames.values()))
        for s in scene.test:  # rendered at the true pose: the estimate's frame is only a gauge choice
            base = est.frames.get(s) or dataclasses.replace(scene.frames[s], K=ref.K, camera_model=ref.camera_model,
                                                           distortion=ref.distortion, width=ref.width,
                                                           height=ref.height)
            frames[s] = dataclasses.replace(base, c2w=to_estimate_frame(scene.frames[s].c2w, sim), depth=None)
    order = [s for s in scene.frames if s in frames]
    frames = {s: dataclasses.replace(frames[s], depth=None) for s in order}  # true depth is not the estimate's
    train = [s for s in scene.train if s in frames]
    test = [s for s in scene.test if s in frames]
    out = dataclasses.replace(scene, frames=frames, train=train, test=test, posed=True, points=None,
                              meta={**scene.meta, "points3d": est.points} if est.points is not None else scene.meta)
    return out, pose_eval, notes
