"""Captures as users have them: camera models, undistortion, COLMAP text models, EXIF, downscaling, Sim(3) scores.

References are independent of the code under test: OpenCV's own projectPoints for the undistortion maps, a
hand-written COLMAP text model for the reader, a known similarity for Umeyama.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from pipeline.capture import prepare_scene, undistort_maps  # noqa: E402
from pipeline.common.io import InputError, read_png, write_png  # noqa: E402
from pipeline.poses import pose_errors, umeyama  # noqa: E402
from pipeline.scene import Frame, load_scene  # noqa: E402

REPO = Path(__file__).absolute().parents[2]


def _frame(model: str, dist: tuple, w: int = 64, h: int = 48) -> Frame:
    K = np.array([[50.0, 0, 31.7], [0, 52.0, 24.4], [0, 0, 1]])
    return Frame(stem="a", image=Path("a.png"), K=K, c2w=np.eye(4), width=w, height=h, camera_model=model,
                 distortion=dist)


@pytest.mark.parametrize("model,dist", [("OPENCV", (0.12, -0.05, 0.002, -0.001)),
                                        ("FULL_OPENCV", (0.1, -0.03, 0.001, 0.001, 0.01, 0.02, -0.01, 0.005)),
                                        ("OPENCV_FISHEYE", (0.05, -0.02, 0.01, -0.004))])
def test_undistort_maps_agree_with_opencv_projection(model, dist):
    """Output pixel (i, j) of the undistorted image (centre at +0.5 in K_new) must sample the captured image where
    OpenCV projects that pixel's ray (OpenCV's K has integer pixel centres)."""
    f = _frame(model, dist)
    mx, my, K_new = undistort_maps(f)
    ii, jj = np.mgrid[4:44:7, 4:60:9]
    rays = np.linalg.solve(K_new, np.stack([jj + 0.5, ii + 0.5, np.ones_like(jj, dtype=float)]).reshape(3, -1)).T
    K_cv = f.K - np.array([[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]])
    if model == "OPENCV_FISHEYE":
        uv, _ = cv2.fisheye.projectPoints(rays[:, None, :], np.zeros(3), np.zeros(3), K_cv, np.array(dist))
    else:
        uv, _ = cv2.projectPoints(rays, np.zeros(3), np.zeros(3), K_cv, np.array(dist))
    uv = uv.reshape(-1, 2)
    np.testing.assert_allclose(mx[ii, jj].reshape(-1), uv[:, 0], atol=2e-3)
    np.testing.assert_allclose(my[ii, jj].reshape(-1), uv[:, 1], atol=2e-3)


def _tiny_scene(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cap") / "tiny"
    p = subprocess.run([sys.executable, "-m", "pipeline", "synth", str(root), "--preset", "tiny"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return _tiny_scene(tmp_path_factory)


def _distort(img: np.ndarray, K: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Simulate a lens: the captured (distorted) image of a pinhole image `img` taken with K."""
    h, w = img.shape[:2]
    K_cv = K - np.array([[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]])
    pts = np.stack(np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)), -1).reshape(-1, 1, 2)
    und = cv2.undistortPoints(pts, K_cv, dist, P=K_cv).reshape(h, w, 2).astype(np.float32)
    return cv2.remap(img, und[..., 0], und[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def test_distorted_transforms_json_is_undistorted_once_and_cached(tiny, tmp_path):
    """A nerfstudio capture with OPENCV distortion: the prepared images match the pinhole originals."""
    pan = load_scene(tiny)
    dist = np.array([0.08, -0.04, 0.001, -0.0005])
    cap = tmp_path / "capture"
    (cap / "images").mkdir(parents=True)
    frames = []
    f0 = next(iter(pan.frames.values()))
    for s, f in pan.frames.items():
        img = (read_png(f.image)[..., :3]).astype(np.uint8)
        write_png(cap / "images" / f"{s}.png", _distort(img, f.K, dist))
        frames.append({"file_path": f"images/{s}.png", "transform_matrix": (f.c2w @ np.diag([1, -1, -1, 1])).tolist()})
    K = f0.K
    (cap / "transforms.json").write_text(json.dumps({
        "camera_model": "OPENCV", "fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "w": f0.width,
        "h": f0.height, "k1": dist[0], "k2": dist[1], "p1": dist[2], "p2": dist[3], "frames": frames}))
    scene = load_scene(cap)
    assert next(iter(scene.frames.values())).camera_model == "OPENCV"
    prepared, info = prepare_scene(scene, cache_root=tmp_path / "run" / ".cache")
    assert info["undistorted"] == len(scene.frames) and "undistorted" in info["notes"][0]
    g = next(iter(prepared.frames.values()))
    assert g.camera_model == "PINHOLE" and g.distortion == () and Path(g.image).parent.parent == Path(info["cache"])
    # undistorted image vs the pinhole original, warped into K_new: inner region, away from resampling borders
    orig = read_png(f0.image)[..., :3].astype(np.float32)
    H = g.K @ np.linalg.inv(f0.K)  # pure intrinsics change between two pinhole cameras
    expect = cv2.warpPerspective(orig, H, (g.width, g.height), flags=cv2.INTER_LINEAR)
    got = read_png(g.image)[..., :3].astype(np.float32)
    inner = (slice(8, -8), slice(8, -8))
    err = np.abs(got[inner] - expect[inner]).mean()
    assert err < 6.0, err  # two bilinear resamplings of a textured 96x72 image
    mtime = Path(g.image).stat().st_mtime_ns
    prepare_scene(scene, cache_root=tmp_path / "run" / ".cache")  # second call: cache reused, nothing rewritten
    assert Path(g.image).stat().st_mtime_ns == mtime


def test_downscale_scales_K_exactly_and_masks_follow(tiny, tmp_path):
    scene = load_scene(tiny)
    prepared, info = prepare_scene(scene, downscale=2, cache_root=tmp_path / ".cache")
    for s, f in scene.frames.items():
        g = prepared.frames[s]
        assert (g.width, g.height) == (f.width // 2, f.height // 2)
        np.testing.assert_allclose(g.K, np.diag([0.5, 0.5, 1.0]) @ f.K, rtol=0, atol=1e-12)
        assert read_png(g.image).shape[:2] == (g.height, g.width)
        assert read_png(g.semantics).shape == (g.height, g.width)
    assert (Path(info["cache"]) / "splits.json").is_file() and prepared.meta["gt_root"] == info["cache"]


def test_exif_orientation_gives_a_portrait_image(tmp_path):
    from PIL import Image

    from pipeline.scene import read_images

    arr = np.zeros((30, 40, 3), np.uint8)  # stored landscape, 40 wide
    arr[:, :10] = 255
    for i in range(3):
        im = Image.fromarray(arr)
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90° clockwise when shown
        im.save(tmp_path / f"{i}.jpg", exif=exif, quality=95)
    scene = read_images(tmp_path)
    f = scene.frames["0"]
    assert (f.width, f.height) == (30, 40)
    img = read_png(f.image)
    assert img.shape[:2] == (40, 30) and img[:10].mean() > 200  # the white band is now at the top


def _qvec(R: np.ndarray) -> np.ndarray:
    """Rotation matrix -> COLMAP quaternion (w, x, y, z), written independently of pycolmap."""
    w = np.sqrt(max(0.0, 1 + R[0, 0] + R[1, 1] + R[2, 2])) / 2
    x = np.copysign(np.sqrt(max(0.0, 1 + R[0, 0] - R[1, 1] - R[2, 2])) / 2, R[2, 1] - R[1, 2])
    y = np.copysign(np.sqrt(max(0.0, 1 - R[0, 0] + R[1, 1] - R[2, 2])) / 2, R[0, 2] - R[2, 0])
    z = np.copysign(np.sqrt(max(0.0, 1 - R[0, 0] - R[1, 1] + R[2, 2])) / 2, R[1, 0] - R[0, 1])
    return np.array([w, x, y, z])


def test_colmap_text_model_reads_like_the_panlift_scene(tiny, tmp_path):
    pan = load_scene(tiny)
    root = tmp_path / "colmap"
    shutil.copytree(tiny / "color", root / "images")
    sparse = root / "sparse" / "0"
    sparse.mkdir(parents=True)
    f0 = next(iter(pan.frames.values()))
    K = f0.K  # ours and COLMAP's: pixel centres at +0.5
    (sparse / "cameras.txt").write_text(
        f"1 OPENCV {f0.width} {f0.height} {K[0, 0]} {K[1, 1]} {K[0, 2]} {K[1, 2]} 0.01 -0.002 0.0001 0.0002\n")
    lines = []
    for i, (s, f) in enumerate(pan.frames.items(), 1):
        w2c = np.linalg.inv(f.c2w)
        q, t = _qvec(w2c[:3, :3]), w2c[:3, 3]
        num = lambda v: ' '.join(f'{x:.17g}' for x in v)  # noqa: E731
        lines += [f"{i} {num(q)} {num(t)} 1 {Path(f.image).name}", ""]
    (sparse / "images.txt").write_text("\n".join(lines) + "\n")
    (sparse / "points3D.txt").write_text("1 0.5 0.25 1.0 200 100 50 0.3\n")
    scene = load_scene(root, test_every=8)
    assert scene.format == "colmap" and sorted(scene.frames) == sorted(pan.frames)
    for s, f in pan.frames.items():
        g = scene.frames[s]
        np.testing.assert_allclose(g.c2w, f.c2w, atol=1e-5)  # PanLift poses are 6-digit text, not quite orthonormal
        np.testing.assert_allclose(g.K, f.K, atol=1e-9)
        assert g.camera_model == "OPENCV" and g.distortion == pytest.approx((0.01, -0.002, 0.0001, 0.0002))
    stems = list(scene.frames)
    assert scene.test == stems[::8] and len(scene.train) == len(stems) - len(scene.test)
    xyz, rgb = scene.meta["points3d"]
    np.testing.assert_allclose(xyz, [[0.5, 0.25, 1.0]], atol=1e-6)
    np.testing.assert_allclose(rgb, [[200 / 255, 100 / 255, 50 / 255]], atol=1e-6)


def test_umeyama_recovers_a_known_similarity_and_scores_are_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 3))
    a = 0.7
    R = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    s, t = 2.5, np.array([1.0, -2.0, 0.5])
    y = (s * (R @ x.T)).T + t
    s2, R2, t2 = umeyama(x, y)
    assert s2 == pytest.approx(s) and np.allclose(R2, R) and np.allclose(t2, t)
    est, gt = {}, {}
    for i in range(10):
        c = np.eye(4)
        c[:3, 3] = x[i]
        est[str(i)] = c
        g = np.eye(4)
        g[:3, :3] = R
        g[:3, 3] = y[i]
        gt[str(i)] = g
    scores, _ = pose_errors(est, gt)
    assert scores["ate"] < 1e-9 and scores["rot_err_deg"] < 1e-6 and scores["num_registered"] == 10
    # a 1-unit error on one of ten cameras: ate = sqrt(1/10) exactly (the alignment absorbs part of it, so <=)
    gt["3"] = gt["3"].copy()
    gt["3"][:3, 3] += [0, 0, 1.0]
    assert pose_errors(est, gt)[0]["ate"] <= np.sqrt(0.1) + 1e-9


def test_bad_captures_are_one_line(tmp_path):
    from pipeline.scene import read_images

    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: no images"):
        read_images(tmp_path / "empty")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_png(mixed / "a.png", np.zeros((10, 20, 3), np.uint8))
    write_png(mixed / "b.png", np.zeros((12, 20, 3), np.uint8))
    with pytest.raises(InputError, match=r"b.png: image is 20x12 but a.png is 20x10"):
        read_images(mixed)
    bad = tmp_path / "corrupt"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(InputError, match=r"x.jpg: cannot read image"):
        read_images(bad)
    ns = tmp_path / "ns"
    ns.mkdir()
    write_png(ns / "a.png", np.zeros((10, 20, 3), np.uint8))
    (ns / "transforms.json").write_text(json.dumps({"camera_model": "EQUIRECTANGULAR", "fl_x": 10, "w": 20, "h": 10,
                                                    "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}]}))
    with pytest.raises(InputError, match="camera_model 'EQUIRECTANGULAR' is not supported"):
        load_scene(ns)
    with pytest.raises(InputError, match="a bare image folder has no camera poses; pass --scene.poses colmap"):
        prepare_scene(read_images(ns), cache_root=tmp_path / ".cache")
    assert not (tmp_path / ".cache").exists()
