import socket
import threading
import urllib.request

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from pipeline.common.io import InputError
from pipeline.viewer import colors_for, covariances, load_splats, view_command, visible_mask


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
    with pytest.raises(InputError, match="cannot read as a PLY"):
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
