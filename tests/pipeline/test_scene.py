import json

import numpy as np
import pytest
from PIL import Image

from pipeline.common.io import InputError
from pipeline.scene import load_scene


def _panlift(root, stems=("0", "5", "10"), w=8, h=6):
    for d in ("color", "pose", "intrinsic", "rs_semantics", "rs_instance", "depth", "m2f_semantics", "junk_folder"):
        (root / d).mkdir(parents=True, exist_ok=True)
    K = np.array([[20.0, 0, 3.5, 0], [0, 21.0, 2.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.savetxt(root / "intrinsic/intrinsic_color.txt", K)
    for i, s in enumerate(stems):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(root / f"color/{s}.jpg")
        c2w = np.eye(4)
        c2w[:3, 3] = [i, 0, 0]
        np.savetxt(root / f"pose/{s}.txt", c2w)
        Image.fromarray(np.full((h, w), 5, np.uint8)).save(root / f"rs_semantics/{s}.png")
        Image.fromarray(np.full((h, w), 2, np.uint16)).save(root / f"rs_instance/{s}.png")
        np.save(root / f"depth/{s}.npy", np.full((h, w), 1.5, np.float32))
    (root / "splits.json").write_text(json.dumps({"train": list(stems[1:]), "test": [stems[0]]}))
    (root / "notes.txt").write_text("unrelated file")
    return root


def test_panlift_reader_conventions(tmp_path):
    sc = load_scene(_panlift(tmp_path / "s"))
    assert sc.format == "panlift"
    assert list(sc.frames) == ["0", "5", "10"]  # numeric order, string stems
    assert sc.train == ["5", "10"] and sc.test == ["0"]
    f = sc.frame("5")
    # PanLift puts pixel centres at integer coordinates; we store +0.5 (gsplat convention)
    assert f.K[0, 2] == pytest.approx(4.0) and f.K[1, 2] == pytest.approx(3.0)
    assert f.K[0, 0] == 20.0 and f.K[1, 1] == 21.0
    assert f.c2w[0, 3] == 1.0 and (f.width, f.height) == (8, 6)
    assert sc.load_rgb("10").shape == (6, 8, 3) and sc.load_rgb("10").dtype == np.float32
    assert (sc.load_semantics("0") == 5).all() and (sc.load_instance("0") == 2).all()
    assert sc.load_depth("0").dtype == np.float32 and sc.has_gt


def test_panlift_depth_and_labels_optional(tmp_path):
    root = _panlift(tmp_path / "s")
    (root / "depth/5.npy").unlink()
    (root / "rs_semantics/0.png").unlink()
    sc = load_scene(root)
    assert sc.frame("5").depth is None and sc.load_depth("5") is None
    assert sc.frame("0").semantics is None and not sc.has_gt


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda r: __import__("shutil").rmtree(r / "pose"), "missing pose folder"),
        (lambda r: (r / "pose/5.txt").unlink(), "3 images but 2 poses"),
        (lambda r: np.savetxt(r / "pose/5.txt", np.zeros((4, 4))), "not an invertible rigid transform"),
        (lambda r: np.savetxt(r / "pose/5.txt", np.full((4, 4), np.nan)), "NaN"),
        (lambda r: (r / "color/5.jpg").write_bytes(b"not a jpeg"), None),
        (lambda r: (r / "splits.json").write_text(json.dumps({"train": ["5", "99"], "test": ["0"]})), "do not exist: ['99']"),
        (lambda r: (r / "splits.json").unlink(), "missing splits.json"),
        (lambda r: np.savetxt(r / "intrinsic/intrinsic_color.txt", np.zeros((4, 4))), "positive focal"),
    ],
)
def test_panlift_bad_input_one_line(tmp_path, breakage, message):
    root = _panlift(tmp_path / "s")
    breakage(root)
    with pytest.raises(InputError) as ei:
        sc = load_scene(root)
        sc.load_rgb("5")  # the corrupt image is detected on read
    msg = str(ei.value)
    assert "\n" not in msg and str(root) in msg
    if message:
        assert message in msg
    else:
        assert "cannot read image" in msg


def test_auto_detect_and_not_a_scene(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_scene(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a scene folder"):
        load_scene(tmp_path / "empty")
    with pytest.raises(InputError, match="unknown scene format"):
        load_scene(tmp_path / "empty", format="blender")
    with pytest.raises(InputError, match="no COLMAP model"):
        load_scene(tmp_path / "empty", format="colmap")


def _nerfstudio(root, frames_extra=None, top=None):
    (root / "images").mkdir(parents=True)
    frames = []
    for i in range(5):
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / f"images/frame_{i:05d}.png")
        T = np.eye(4)
        T[:3, 3] = [0, 0, i]
        fr = {"file_path": f"images/frame_{i:05d}.png", "transform_matrix": T.tolist()}
        fr.update(frames_extra or {})
        frames.append(fr)
    data = {"fl_x": 10.0, "fl_y": 11.0, "cx": 4.0, "cy": 3.0, "w": 8, "h": 6, "camera_model": "OPENCV",
            "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": frames}
    data.update(top or {})
    (root / "transforms.json").write_text(json.dumps(data))
    return root


def test_nerfstudio_reader_opengl_to_opencv(tmp_path):
    sc = load_scene(_nerfstudio(tmp_path / "ns"))
    assert sc.format == "nerfstudio" and len(sc.frames) == 5
    f = sc.frame("frame_00002")
    # OpenGL camera looks down -z with y up; OpenCV looks down +z with y down
    assert np.allclose(f.c2w[:3, :3], np.diag([1.0, -1.0, -1.0])) and np.allclose(f.c2w[:3, 3], [0, 0, 2])
    assert np.allclose(f.K, [[10, 0, 4], [0, 11, 3], [0, 0, 1]])  # cx, cy already continuous coordinates
    assert sc.test == ["frame_00000"] and len(sc.train) == 4  # every 5th frame by default


def test_nerfstudio_per_frame_intrinsics(tmp_path):
    sc = load_scene(_nerfstudio(tmp_path / "ns", frames_extra={"fl_x": 30.0, "fl_y": 31.0}))
    assert sc.frame("frame_00000").K[0, 0] == 30.0 and sc.frame("frame_00000").K[1, 1] == 31.0


def test_nerfstudio_distortion_rides_on_the_frame(tmp_path):
    """Distorted captures are taken as they are: the model and OpenCV-ordered coefficients stay on the frame
    (pipeline.capture undistorts them); all-zero coefficients mean a pinhole; instant-ngp has no camera_model."""
    s = load_scene(_nerfstudio(tmp_path / "a", top={"k1": 0.1, "p2": 0.002}))
    f = next(iter(s.frames.values()))
    assert f.camera_model == "OPENCV" and f.distortion == (0.1, 0.0, 0.0, 0.002)
    s = load_scene(_nerfstudio(tmp_path / "b", top={"camera_model": "OPENCV_FISHEYE", "k1": 0.05, "k4": 0.01}))
    assert next(iter(s.frames.values())).distortion == (0.05, 0.0, 0.0, 0.01)
    assert next(iter(load_scene(_nerfstudio(tmp_path / "c")).frames.values())).camera_model == "PINHOLE"
    s = load_scene(_nerfstudio(tmp_path / "d", top={"camera_model": None, "k1": -0.2}))
    assert next(iter(s.frames.values())).camera_model == "OPENCV"


@pytest.mark.parametrize(
    "top, message",
    [({"camera_model": "EQUIRECTANGULAR"}, "camera_model 'EQUIRECTANGULAR' is not supported"),
     ({"w": 9}, "image is 8x6 but transforms.json says w=9")],
)
def test_nerfstudio_rejects(tmp_path, top, message):
    with pytest.raises(InputError, match=message):
        load_scene(_nerfstudio(tmp_path / "ns", top=top))
