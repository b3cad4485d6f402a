import socket
import threading
import urllib.request

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from pipeline.common.io import InputError
from pipeline.viewer import colors_for, covariances, load_splats, training_camera, view_command, visible_mask


def _write_ply(path, n=5, labels=True):
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    dt = [(k, "f4") for k in names] + ([("instance_id", "i4"), ("class_id", "i4")] if labels else [])
    arr = np.zeros(n, dtype=dt)
    arr["x"] = np.arange(n)
    arr["rot_0"] = 1.0
    arr["scale_0"] = np.log(2.0)
    arr["f_dc_0"] = 1.0
    if labels:
        arr["instance_id"] = [3, 3, 7, -1, 7]
        arr["class_id"] = [5, 5, 1, 0, 1]
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(path))


def test_load_and_colour_modes(tmp_path):
    _write_ply(tmp_path / "l.ply")
    d = load_splats(tmp_path / "l.ply")
    assert d.means[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert np.allclose(d.rgb[:, 0], 0.5 + 0.28209479177387814) and np.allclose(d.rgb[:, 1], 0.5)
    inst = colors_for(d, "instance")
    assert np.allclose(inst[0], inst[1]) and np.allclose(inst[2], inst[4]) and not np.allclose(inst[0], inst[2])
    assert np.allclose(inst[3], 0.5)  # unlabelled -> grey
    cls = colors_for(d, "class")
    assert np.allclose(cls[2], cls[4]) and not np.allclose(cls[0], cls[2])
    cov = covariances(d)
    assert np.allclose(cov[0], np.diag([4.0, 1.0, 1.0]))  # identity rotation, scale (2, 1, 1)
    assert visible_mask(d, {7}).tolist() == [True, True, False, True, False]
    assert visible_mask(d, set()).all()


def test_unlabelled_ply_and_errors(tmp_path):
    _write_ply(tmp_path / "u.ply", labels=False)
    d = load_splats(tmp_path / "u.ply")
    with pytest.raises(InputError, match="carry no labels"):
        colors_for(d, "instance")
    with pytest.raises(InputError, match="not found"):
        load_splats(tmp_path / "none.ply")
    (tmp_path / "bad.ply").write_text("hello")
    with pytest.raises(InputError, match="bad.ply: cannot read as a PLY"):
        load_splats(tmp_path / "bad.ply")


def test_server_serves_page(tmp_path):
    (tmp_path / "uplift").mkdir()
    _write_ply(tmp_path / "uplift" / "labelled.ply")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = threading.Thread(target=view_command, args=(tmp_path, port, "127.0.0.1", 6.0), daemon=True)
    t.start()
    body = b""
    for _ in range(40):
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
            break
        except OSError:
            threading.Event().wait(0.2)
    t.join(timeout=15)
    if not body:
        pytest.skip("viser server did not come up on loopback")
    assert b"<html" in body.lower()


def _run_with_scene(tmp_path):
    import yaml

    from pipeline.synth import generate, make_config

    scene = generate(tmp_path / "scene", make_config("tiny", 0))
    run = tmp_path / "run"
    (run / "uplift").mkdir(parents=True)
    _write_ply(run / "uplift" / "labelled.ply")
    (run / "config.yaml").write_text(yaml.safe_dump({"scene": {"path": str(scene), "format": "auto"}}))
    return run, scene


def test_viewer_starts_at_the_first_training_camera(tmp_path):
    import json

    run, scene = _run_with_scene(tmp_path)
    first = json.loads((scene / "splits.json").read_text())["train"][0]
    c2w = np.loadtxt(scene / "pose" / f"{first}.txt")  # PanLift pose files: camera-to-world, OpenCV axes
    K = np.loadtxt(scene / "intrinsic" / "intrinsic_color.txt")
    cam = training_camera(run)
    assert cam["frame"] == first
    np.testing.assert_allclose(cam["position"], c2w[:3, 3])
    np.testing.assert_allclose(cam["look_at"] - cam["position"], c2w[:3, 2])  # along the camera's optical axis
    np.testing.assert_allclose(cam["up"], -c2w[:3, 1])
    from PIL import Image

    h = Image.open(next((scene / "color").glob(f"{first}.*"))).height
    assert cam["fov"] == pytest.approx(2 * np.arctan(h / (2 * K[1, 1])))
    # inside the room: the synthetic scene's GT points surround the start position on every axis
    from plyfile import PlyData

    v = PlyData.read(str(scene / "points3d.ply"))["vertex"]
    pts = np.stack([v["x"], v["y"], v["z"]], 1)
    assert np.all(pts.min(0) < cam["position"]) and np.all(cam["position"] < pts.max(0))
    (run / "config.yaml").unlink()
    with pytest.raises(InputError, match="config.yaml: not found"):
        training_camera(run)


def test_viewer_prints_the_port_it_bound(tmp_path, capsys):
    """With the asked port taken, viser moves on; the printed URL and ssh hint name the port really served."""
    import re

    run, _ = _run_with_scene(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        t = threading.Thread(target=view_command, args=(run, port, "127.0.0.1", 8.0), daemon=True)
        t.start()
        line = ""
        for _ in range(100):
            m = re.search(r"viewer running at http://127.0.0.1:(\d+) .*", capsys.readouterr().out)
            if m:
                line = m.group(0)
                break
            threading.Event().wait(0.1)
        assert line, "the viewer printed no URL"
        bound = int(re.search(r":(\d+)", line).group(1))
        assert bound != port and f"(port {port} was taken)" in line
        assert f"ssh -L {bound}:localhost:{bound} HOST" in line and f"open http://localhost:{bound}" in line
        assert "starting at training camera" in line
        body = urllib.request.urlopen(f"http://127.0.0.1:{bound}/", timeout=5).read()
        assert b"<html" in body.lower()
    t.join(timeout=15)
