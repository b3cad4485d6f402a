"""Scenes: the one in-memory description of posed images every stage reads.

`load_scene(path, format="auto")` reads the Panoptic Lifting layout, a nerfstudio / instant-ngp
`transforms.json`, a COLMAP project or a bare folder of images (cameras then come from `pipeline.poses`).
Lens distortion is carried on the frame and removed once before use (`pipeline.capture`).
All cameras come out in one convention, so nothing downstream needs to know where a scene came from:

* `Frame.K` puts pixel centres at +0.5 (gsplat's convention: pixel (row i, col j) is centred at
  (x, y) = (j + 0.5, i + 0.5)). PanLift's K puts them at integer coordinates, so its reader adds 0.5 to
  cx and cy; nerfstudio's `cx`, `cy` are already continuous image coordinates.
* `Frame.c2w` is camera-to-world with OpenCV axes (x right, y down, z forward), float64.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
import numpy as np

from .common.io import InputError, read_document, read_png

__all__ = ["Frame", "Scene", "load_scene", "read_panlift", "read_nerfstudio", "read_colmap", "read_images", "SCENE_FORMATS",
           "CAMERA_MODELS", "camera_from_params", "reconstruction_points", "image_files"]

SCENE_FORMATS = ("auto", "panlift", "nerfstudio", "colmap", "images")
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


@dataclass(frozen=True)
class Frame:
    """One posed image and its optional per-frame annotations."""

    stem: str
    image: Path
    K: np.ndarray  # [3, 3] float64, pixel centres at +0.5
    c2w: np.ndarray  # [4, 4] float64, camera-to-world, OpenCV axes
    width: int
    height: int
    semantics: Path | None = None  # GT class ids (PanLift ids, 0 = void)
    instance: Path | None = None  # GT instance ids (0 = stuff / void)
    depth: Path | None = None  # float32 z-depth in metres (.npy)
    camera_model: str = "PINHOLE"  # COLMAP's name; anything else is undistorted before use (pipeline.capture)
    distortion: tuple[float, ...] = ()  # OpenCV order: k1, k2, p1, p2[, k3..k6]; fisheye: k1..k4
    original: "Frame | None" = None  # the frame as captured, when this one was undistorted or downscaled

    @property
    def w2c(self) -> np.ndarray:  # [4, 4]
        return np.linalg.inv(self.c2w)


@dataclass
class Scene:
    """A set of frames with a train/test split (labels use the PanLift vocabulary of pipeline.common.classes)."""

    root: Path
    format: str
    frames: dict[str, Frame]  # in reading order (sorted by stem)
    train: list[str]
    test: list[str]
    points: Path | None = None  # optional point cloud (PLY) for initialisation
    meta: dict = field(default_factory=dict)
    posed: bool = True  # False for a bare image folder: its cameras must be estimated (scene.poses)

    # -- selection -------------------------------------------------------------------------------
    def frame(self, stem: str) -> Frame:
        try:
            return self.frames[stem]
        except KeyError:
            raise InputError(f"{self.root}: no frame named {stem!r}") from None

    @property
    def train_frames(self) -> list[Frame]:
        return [self.frames[s] for s in self.train]

    @property
    def test_frames(self) -> list[Frame]:
        return [self.frames[s] for s in self.test]

    @property
    def has_gt(self) -> bool:
        return all(f.semantics is not None and f.instance is not None for f in self.frames.values())

    # -- loading pixels ------------------------------------------------------------------------------
    def load_rgb(self, stem: str) -> np.ndarray:
        """[H, W, 3] float32 in [0, 1]."""
        f = self.frame(stem)
        arr = read_png(f.image)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        arr = arr[..., :3]
        if arr.shape[:2] != (f.height, f.width):
            raise InputError(
                f"{f.image}: image is {arr.shape[1]}x{arr.shape[0]} but the scene says {f.width}x{f.height}; "
                "make all images the size the intrinsics describe"
            )
        scale = 65535.0 if arr.dtype == np.uint16 else 255.0
        return arr.astype(np.float32) / scale

    def load_semantics(self, stem: str) -> np.ndarray | None:
        """[h, w] int64 GT class ids at the label files' own resolution, or None."""
        f = self.frame(stem)
        return None if f.semantics is None else read_png(f.semantics).astype(np.int64)

    def load_instance(self, stem: str) -> np.ndarray | None:
        """[h, w] int64 GT instance ids (0 = stuff / void), or None."""
        f = self.frame(stem)
        return None if f.instance is None else read_png(f.instance).astype(np.int64)

    def load_depth(self, stem: str) -> np.ndarray | None:
        """[H, W] float32 z-depth in metres, or None."""
        f = self.frame(stem)
        if f.depth is None:
            return None
        try:
            d = np.load(f.depth)
        except Exception as e:
            raise InputError(f"{f.depth}: cannot read depth ({e}); write float32 .npy z-depth in metres") from None
        return np.asarray(d, dtype=np.float32)


# ------------------------------------------------------------------------------------------------
# validation helpers
# ------------------------------------------------------------------------------------------------


def _check_pose(path: Path, c2w: np.ndarray) -> np.ndarray:
    if c2w.shape != (4, 4):
        raise InputError(f"{path}: pose must be a 4x4 matrix, got shape {c2w.shape}")
    if not np.all(np.isfinite(c2w)):
        raise InputError(f"{path}: pose contains NaN or inf; fix or drop this frame")
    r = c2w[:3, :3]
    det = np.linalg.det(r)
    if abs(det) < 1e-6 or not np.allclose(c2w[3], [0, 0, 0, 1], atol=1e-6):
        raise InputError(f"{path}: pose is not an invertible rigid transform (det R = {det:.3g}); fix or drop this frame")
    return c2w


def _check_K(path: Path, K: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(f"{path}: intrinsics must be finite with positive focal lengths, got fx={K[0, 0]}, fy={K[1, 1]}")
    return K


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            # EXIF orientations 5-8 rotate by 90 degrees: the image as shown (and as read) is h x w
            return (h, w) if im.format == "JPEG" and im.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (w, h)
    except FileNotFoundError:
        raise InputError(f"{path}: image not found") from None
    except Exception as e:
        raise InputError(f"{path}: cannot read image ({e}); re-export it as JPEG/PNG") from None


def _stem_key(stem: str):
    """Sort integer-like stems numerically (PanLift does), others as strings after them."""
    try:
        return (0, int(stem), stem)
    except ValueError:
        return (1, 0, stem)


def _read_matrix(path: Path, what: str) -> np.ndarray:
    try:
        m = np.loadtxt(path, dtype=np.float64)
    except FileNotFoundError:
        raise InputError(f"{path}: {what} file not found") from None
    except Exception as e:
        raise InputError(f"{path}: cannot parse {what} as whitespace-separated numbers ({e})") from None
    return np.atleast_2d(m)


# ------------------------------------------------------------------------------------------------
# PanLift layout
# ------------------------------------------------------------------------------------------------


def read_panlift(root: str | Path) -> Scene:
    """Read a Panoptic Lifting scene folder (color/, pose/, intrinsic/, rs_*, splits.json, depth/)."""
    root = Path(root)
    color = root / "color"
    pose_dir = root / "pose"
    intr = root / "intrinsic" / "intrinsic_color.txt"
    for p, what in ((color, "image folder color/"), (pose_dir, "pose folder pose/")):
        if not p.is_dir():
            raise InputError(f"{p}: missing {what}; a PanLift scene needs color/, pose/, intrinsic/ and splits.json")
    images = {p.stem: p for p in sorted(color.iterdir()) if p.suffix in _IMAGE_EXTS and not p.name.startswith(".")}
    poses = {p.stem: p for p in sorted(pose_dir.iterdir()) if p.suffix == ".txt"}
    if not images:
        raise InputError(f"{color}: no images (.jpg/.png) found")
    if set(images) != set(poses):
        only_img = sorted(set(images) - set(poses), key=_stem_key)
        only_pose = sorted(set(poses) - set(images), key=_stem_key)
        raise InputError(
            f"{root}: {len(images)} images but {len(poses)} poses "
            f"(images without pose: {only_img[:5]}, poses without image: {only_pose[:5]}); every color/<f>.jpg needs pose/<f>.txt"
        )
    K4 = _read_matrix(intr, "intrinsics")
    if K4.shape[0] < 3 or K4.shape[1] < 3:
        raise InputError(f"{intr}: intrinsics must be a 3x3 or 4x4 matrix, got shape {K4.shape}")
    K = _check_K(intr, K4[:3, :3].copy())
    K[0, 2] += 0.5  # PanLift: pixel centres at integer coordinates -> ours at +0.5
    K[1, 2] += 0.5

    stems = sorted(images, key=_stem_key)
    W, H = _image_size(images[stems[0]])
    sem_dir, inst_dir, depth_dir = root / "rs_semantics", root / "rs_instance", root / "depth"
    frames: dict[str, Frame] = {}
    for s in stems:
        c2w = _check_pose(poses[s], _read_matrix(poses[s], "pose"))
        sem = sem_dir / f"{s}.png"
        inst = inst_dir / f"{s}.png"
        dep = depth_dir / f"{s}.npy"
        frames[s] = Frame(
            stem=s,
            image=images[s],
            K=K.copy(),
            c2w=c2w,
            width=W,
            height=H,
            semantics=sem if sem.is_file() else None,
            instance=inst if inst.is_file() else None,
            depth=dep if dep.is_file() else None,
        )
    train, test = _read_splits(root / "splits.json", frames)
    points = root / "points3d.ply"
    meta = {}
    if (root / "scene_meta.json").is_file():
        try:
            meta = json.loads((root / "scene_meta.json").read_text())
        except json.JSONDecodeError:
            meta = {}
    return Scene(root=root, format="panlift", frames=frames, train=train, test=test,
                 points=points if points.is_file() else None, meta=meta)


def _read_splits(path: Path, frames: dict[str, Frame]) -> tuple[list[str], list[str]]:
    splits = read_document(path, "missing splits.json; write {\"train\": [stems], \"test\": [stems]}")
    if not isinstance(splits, dict) or "train" not in splits:
        raise InputError(f"{path}: needs a \"train\" list (and usually \"test\")")
    out = []
    for key in ("train", "test"):
        stems = [str(s) for s in splits.get(key, splits.get("val", []) if key == "test" else [])]
        missing = [s for s in stems if s not in frames]
        if missing:
            raise InputError(f"{path}: split {key!r} names frames that do not exist: {missing[:5]} ({len(missing)} in all)")
        out.append(stems)
    return out[0], out[1]


# ------------------------------------------------------------------------------------------------
# nerfstudio transforms.json
# ------------------------------------------------------------------------------------------------

_OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])

# COLMAP's camera models: their parameters in COLMAP's order. Distortion is carried as OpenCV coefficients
# (k1, k2, p1, p2[, k3, k4, k5, k6]; fisheye k1..k4) and removed once before training (pipeline.capture).
CAMERA_MODELS: dict[str, tuple[str, ...]] = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k1"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
    "OPENCV_FISHEYE": ("fx", "fy", "cx", "cy", "k1", "k2", "k3", "k4"),
    "FULL_OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6"),
}
_OPENCV_ORDER = ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")


def camera_from_params(model: str, params: dict[str, float], path: Path, where: str = "") -> tuple[np.ndarray, str, tuple]:
    """(K [3, 3] with pixel centres at +0.5, model, OpenCV distortion) from named COLMAP-style parameters.

    A model whose coefficients are all zero comes back as PINHOLE, so nothing is resampled for nothing."""
    if model not in CAMERA_MODELS:
        raise InputError(f"{path}: {where}camera model {model!r} is not supported; use one of "
                         f"{', '.join(CAMERA_MODELS)} (or undistort the images to PINHOLE first)")
    p = {k: float(v) for k, v in params.items() if v is not None}
    fx = p.get("fx", p.get("f"))
    fy = p.get("fy", p.get("f", fx))
    K = _check_K(path, np.array([[fx, 0, p["cx"]], [0, fy, p["cy"]], [0, 0, 1]], dtype=np.float64))
    if model == "OPENCV_FISHEYE":
        dist = tuple(p.get(k, 0.0) for k in ("k1", "k2", "k3", "k4"))
    else:
        dist = tuple(p.get(k, 0.0) for k in _OPENCV_ORDER)
        dist = dist[:8] if any(dist[4:]) else dist[:4]
    if not any(abs(d) > 0 for d in dist):
        return K, "PINHOLE", ()
    return K, model, dist


def _ns_intrinsics(src: dict, fallback: dict, path: Path, where: str) -> tuple[np.ndarray, int, int, str, tuple]:
    def get(k):
        return src.get(k, fallback.get(k))

    model = get("camera_model") or "OPENCV"  # instant-ngp writes no model: k1/k2/p1/p2 mean OPENCV
    if model == "SIMPLE_PINHOLE":
        model = "PINHOLE"
    if model not in CAMERA_MODELS:
        raise InputError(f"{path}: {where}camera_model {model!r} is not supported; use PINHOLE, OPENCV, "
                         "OPENCV_FISHEYE, SIMPLE_RADIAL, RADIAL or FULL_OPENCV (or undistort the images first)")
    missing = [k for k in ("fl_x", "w", "h") if get(k) is None]
    if missing:
        raise InputError(f"{path}: {where}missing intrinsics {missing}; give fl_x, fl_y, cx, cy, w, h per frame or at the top level")
    w, h = int(get("w")), int(get("h"))
    fx = float(get("fl_x"))
    fy = float(get("fl_y") if get("fl_y") is not None else fx)
    cx = float(get("cx") if get("cx") is not None else w / 2.0)
    cy = float(get("cy") if get("cy") is not None else h / 2.0)
    coeffs = {k: float(get(k) or 0.0) for k in ("k1", "k2", "k3", "k4", "k5", "k6", "p1", "p2")}
    if model in ("PINHOLE",) and any(coeffs.values()):
        model = "OPENCV" if not (coeffs["k4"] or coeffs["k5"] or coeffs["k6"]) else "FULL_OPENCV"
    if model in ("OPENCV",) and (coeffs["k3"] or coeffs["k4"]):
        model = "FULL_OPENCV"  # nerfstudio's OPENCV may carry k3; OpenCV's 8-coefficient model holds it exactly
    K, model, dist = camera_from_params(model, {"fx": fx, "fy": fy, "cx": cx, "cy": cy, **coeffs}, path, where)
    return K, w, h, model, dist


def read_nerfstudio(root: str | Path) -> Scene:
    """Read a nerfstudio / instant-ngp `transforms.json` (OpenGL camera-to-world; any camera model of CAMERA_MODELS)."""
    root = Path(root)
    path = root / "transforms.json" if root.is_dir() else root
    root = path.parent
    data = read_document(path, "transforms.json not found; pass a nerfstudio scene folder or its transforms.json")
    if not isinstance(data, dict):
        raise InputError(f"{path}: top level must be an object with \"frames\"")
    entries = data.get("frames")
    if not entries:
        raise InputError(f"{path}: no \"frames\" listed")
    frames: dict[str, Frame] = {}
    for i, fr in enumerate(entries):
        where = f"frame {i}: "
        if "file_path" not in fr or "transform_matrix" not in fr:
            raise InputError(f"{path}: {where}needs \"file_path\" and \"transform_matrix\"")
        img = (root / fr["file_path"]).resolve()
        if not img.suffix:
            for ext in _IMAGE_EXTS:
                if img.with_suffix(ext).is_file():
                    img = img.with_suffix(ext)
                    break
        if not img.is_file():
            raise InputError(f"{path}: {where}image {img} not found")
        K, w, h, model, dist = _ns_intrinsics(fr, data, path, where)
        W, H = _image_size(img)
        if (W, H) != (w, h):
            raise InputError(f"{img}: image is {W}x{H} but {path.name} says w={w}, h={h}")
        c2w_gl = np.asarray(fr["transform_matrix"], dtype=np.float64)
        if c2w_gl.shape == (3, 4):
            c2w_gl = np.vstack([c2w_gl, [0, 0, 0, 1]])
        c2w = _check_pose(path, c2w_gl) @ _OPENGL_TO_OPENCV
        stem = Path(fr["file_path"]).stem
        if stem in frames:
            stem = f"{stem}_{i}"
        frames[stem] = Frame(stem=stem, image=img, K=K, c2w=c2w, width=w, height=h, camera_model=model, distortion=dist)
    stems = list(frames)
    split_path = root / "splits.json"
    if split_path.is_file():
        train, test = _read_splits(split_path, frames)
    elif any(k in data for k in ("train_filenames", "test_filenames")):
        by_file = {str(Path(fr["file_path"]).stem): s for fr, s in zip(entries, stems)}
        train = [by_file[Path(p).stem] for p in data.get("train_filenames", []) if Path(p).stem in by_file]
        test = [by_file[Path(p).stem] for p in data.get("test_filenames", []) if Path(p).stem in by_file]
    else:  # PanLift-style default: every 5th frame is a test frame
        test = stems[::5]
        train = [s for s in stems if s not in set(test)]
    ply = data.get("ply_file_path")
    points = (root / ply) if ply and (root / ply).is_file() else None
    return Scene(root=root, format="nerfstudio", frames=frames, train=train, test=test, points=points)


# ------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------
# COLMAP and bare image folders
# ------------------------------------------------------------------------------------------------


def _every_nth_split(stems: list[str], root: Path, frames: dict, test_every: int) -> tuple[list[str], list[str]]:
    """splits.json when the folder has one, else every `test_every`-th image is a test view (3DGS's convention)."""
    if (root / "splits.json").is_file():
        return _read_splits(root / "splits.json", frames)
    if test_every <= 0:
        return list(stems), []
    test = [s for i, s in enumerate(stems) if i % test_every == 0]
    return [s for s in stems if s not in set(test)], test


def colmap_model_dir(root: Path) -> Path | None:
    """The folder holding cameras/images/points3D (.bin or .txt): sparse/0, sparse, or the folder itself."""
    for d in (root / "sparse" / "0", root / "sparse", root):
        if any((d / f"cameras{ext}").is_file() for ext in (".bin", ".txt")):
            return d
    return None


def read_colmap(root: str | Path, test_every: int = 8) -> Scene:
    """Read a COLMAP project (images/ + sparse/0/{cameras,images,points3D}.{bin,txt}) through pycolmap."""
    import pycolmap

    root = Path(root)
    model_dir = colmap_model_dir(root)
    if model_dir is None:
        raise InputError(f"{root}: no COLMAP model (sparse/0/cameras.bin or .txt); point --scene.path at the folder "
                         "holding images/ and sparse/, or use --scene.poses colmap to run structure from motion")
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise InputError(f"{image_dir}: missing; a COLMAP scene needs images/ next to sparse/")
    try:
        rec = pycolmap.Reconstruction(str(model_dir))
    except Exception as e:
        raise InputError(f"{model_dir}: cannot read the COLMAP model ({e}); re-export it with colmap model_converter") from None
    frames = _frames_from_reconstruction(rec, image_dir, model_dir)
    if not frames:
        raise InputError(f"{model_dir}: the COLMAP model registers no image of {image_dir}")
    stems = sorted(frames, key=_stem_key)
    frames = {s: frames[s] for s in stems}
    train, test = _every_nth_split(stems, root, frames, test_every)
    xyz, rgb = reconstruction_points(rec)
    meta = {"points3d": (xyz, rgb)} if len(xyz) else {}
    return Scene(root=root, format="colmap", frames=frames, train=train, test=test, meta=meta)


def _frames_from_reconstruction(rec, image_dir: Path, where: Path) -> dict[str, Frame]:
    """Registered images of a pycolmap Reconstruction as Frames (COLMAP's K already puts pixel centres at +0.5)."""
    frames: dict[str, Frame] = {}
    for im in rec.images.values():
        if hasattr(im, "has_pose") and not im.has_pose:
            continue
        cam = rec.cameras[im.camera_id]
        model = cam.model.name
        names = CAMERA_MODELS.get(model)
        if names is None:
            raise InputError(f"{where}: camera model {model!r} of image {im.name} is not supported; use one of "
                             f"{', '.join(CAMERA_MODELS)} (or undistort with colmap image_undistorter)")
        K, model, dist = camera_from_params(model, dict(zip(names, np.asarray(cam.params, float))), where)
        w2c = np.eye(4)
        w2c[:3] = np.asarray(im.cam_from_world().matrix(), dtype=np.float64)
        img = image_dir / im.name
        if not img.is_file():
            raise InputError(f"{img}: image named in the COLMAP model is missing from {image_dir}")
        stem = Path(im.name).with_suffix("").as_posix().replace("/", "_")
        frames[stem] = Frame(stem=stem, image=img, K=K, c2w=np.linalg.inv(w2c), width=int(cam.width),
                             height=int(cam.height), camera_model=model, distortion=dist)
    return frames


def reconstruction_points(rec) -> tuple[np.ndarray, np.ndarray]:
    """xyz [N, 3] float32 and rgb [N, 3] in [0, 1] of a pycolmap Reconstruction's 3D points."""
    pts = list(rec.points3D.values())
    if not pts:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)
    xyz = np.stack([np.asarray(p.xyz, np.float64) for p in pts]).astype(np.float32)
    rgb = np.stack([np.asarray(p.color, np.float64) for p in pts]).astype(np.float32) / 255.0
    return xyz, rgb


def image_files(folder: Path) -> list[Path]:
    return sorted((p for p in Path(folder).iterdir() if p.suffix in _IMAGE_EXTS and not p.name.startswith(".")),
                  key=lambda p: _stem_key(p.stem))


def read_images(root: str | Path, test_every: int = 8) -> Scene:
    """A bare folder of images (or its images/ subfolder), optionally with splits.json: no cameras yet.

    The frames get a placeholder pinhole camera; `scene.poses colmap|pointmaps` replaces it before any stage."""
    root = Path(root)
    folder = root / "images" if (root / "images").is_dir() else root
    files = image_files(folder)
    if not files:
        raise InputError(f"{folder}: no images (.jpg/.png) found; point --scene.path at a folder of photos")
    sizes = {}
    for p in files:
        sizes.setdefault(_image_size(p), p)
    if len(sizes) > 1:
        (s0, p0), (s1, p1) = list(sizes.items())[:2]
        raise InputError(f"{p1}: image is {s1[0]}x{s1[1]} but {p0.name} is {s0[0]}x{s0[1]}; a bare image folder "
                         "must hold one image size (resize them, or give a COLMAP/transforms.json scene)")
    (W, H), = sizes
    f = 1.2 * max(W, H)  # a typical phone field of view; only a starting value, never used to render
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], dtype=np.float64)
    frames = {p.stem: Frame(stem=p.stem, image=p, K=K.copy(), c2w=np.eye(4), width=W, height=H) for p in files}
    if len(frames) != len(files):
        raise InputError(f"{folder}: two images share a name stem; rename them so each stem is unique")
    stems = list(frames)
    train, test = _every_nth_split(stems, root, frames, test_every)
    return Scene(root=root, format="images", frames=frames, train=train, test=test, posed=False)


# ------------------------------------------------------------------------------------------------


def detect_format(root: Path) -> str:
    if root.is_file() and root.suffix == ".json":
        return "nerfstudio"
    if (root / "transforms.json").is_file():
        return "nerfstudio"
    if (root / "color").is_dir() or (root / "pose").is_dir():
        return "panlift"
    if colmap_model_dir(root) is not None:
        return "colmap"
    if root.is_dir() and (image_files(root) or ((root / "images").is_dir() and image_files(root / "images"))):
        return "images"
    raise InputError(
        f"{root}: not a scene folder (no color/ + pose/ for the PanLift layout, no transforms.json for nerfstudio, "
        "no sparse/ for COLMAP, no images); point --scene.path at one, or generate one with "
        "`python -m pipeline synth DIR`"
    )


def load_scene(path: str | Path, format: str = "auto", test_every: int = 8) -> Scene:
    """Load a scene folder; `format` is one of SCENE_FORMATS ("auto" detects it)."""
    root = Path(path)
    if not root.exists():
        raise InputError(f"{root}: scene path does not exist")
    if format not in SCENE_FORMATS:
        raise InputError(f"unknown scene format {format!r}; use one of {', '.join(SCENE_FORMATS)}")
    fmt = detect_format(root) if format == "auto" else format
    if fmt == "panlift":
        return read_panlift(root)
    if fmt == "nerfstudio":
        return read_nerfstudio(root)
    if fmt == "colmap":
        return read_colmap(root, test_every)
    return read_images(root, test_every)
