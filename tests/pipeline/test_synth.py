"""Synthetic scenes: exact geometry in PanLift's camera convention, consistent labels, simulated-segmenter
noise at the configured rates, determinism, point cloud on surfaces, and refusal to overwrite foreign data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from plyfile import PlyData
from scipy import ndimage

from pipeline.common.classes import PANLIFT_CLASSES, THING_IDS
from pipeline.common.io import InputError, read_png
from pipeline.synth import (PRESETS, SIMULATED_CONSISTENT_DIR, build_world, camera_path, generate, intrinsics,
                            make_config, render_view, synth_command)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "tiny", make_config("tiny", seed=0))


@pytest.fixture(scope="module")
def tiny_clean(tmp_path_factory) -> Path:
    cfg = make_config("tiny", seed=0, sim_drop_rate=0.0, sim_confuse_rate=0.0, sim_boundary_px=0.0, sim_split_rate=0.0,
                      sim_merge_rate=0.0)
    return generate(tmp_path_factory.mktemp("synth") / "clean", cfg)


def _stems(root: Path) -> list[str]:
    return sorted((p.stem for p in (root / "color").glob("*.jpg")), key=int)


def _K(root: Path) -> np.ndarray:
    return np.loadtxt(root / "intrinsic" / "intrinsic_color.txt")[:3, :3]


def _pose(root: Path, stem: str) -> np.ndarray:
    return np.loadtxt(root / "pose" / f"{stem}.txt")


def _backproject(K, c2w, depth):
    """World points [H, W, 3] of every pixel centre (PanLift: integer pixel centres)."""
    H, W = depth.shape
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    pc = np.stack([(u - K[0, 2]) / K[0, 0] * depth, (v - K[1, 2]) / K[1, 1] * depth, depth], -1)
    return pc @ c2w[:3, :3].T + c2w[:3, 3]


def _project(K, c2w, X):
    w2c = np.linalg.inv(c2w)
    pc = X @ w2c[:3, :3].T + w2c[:3, 3]
    z = pc[..., 2]
    u = K[0, 0] * pc[..., 0] / z + K[0, 2]
    v = K[1, 1] * pc[..., 1] / z + K[1, 2]
    return u, v, z


def _world_to_local(obj: dict, X: np.ndarray) -> np.ndarray:
    c, s = math.cos(obj["yaw"]), math.sin(obj["yaw"])
    q = X - np.asarray(obj["center"])
    return np.stack([c * q[..., 0] + s * q[..., 1], -s * q[..., 0] + c * q[..., 1], q[..., 2]], -1)


def _inside(obj: dict, X: np.ndarray, grow: float) -> np.ndarray:
    """Points within the object's solid, grown by `grow` metres."""
    q = _world_to_local(obj, X)
    if obj["shape"] == "box":
        return np.all(np.abs(q) <= np.asarray(obj["half"]) + grow, axis=-1)
    if obj["shape"] == "sphere":
        return np.linalg.norm(q, axis=-1) <= obj["radius"] + grow
    return (np.hypot(q[..., 0], q[..., 1]) <= obj["radius"] + grow) & (np.abs(q[..., 2]) <= obj["half_height"] + grow)


# ---------------------------------------------------------------------------------------------------------------
# layout and camera convention
# ---------------------------------------------------------------------------------------------------------------

def test_layout_and_split(tiny):
    stems = _stems(tiny)
    assert stems == [str(i) for i in range(PRESETS["tiny"]["num_frames"])]
    for sub, ext in (("pose", "txt"), ("rs_semantics", "png"), ("rs_instance", "png"), ("depth", "npy"),
                     ("m2f_semantics", "png"), ("m2f_instance", "png"),
                     (f"{SIMULATED_CONSISTENT_DIR}/semantics", "png"), (f"{SIMULATED_CONSISTENT_DIR}/instance", "png")):
        assert sorted((p.stem for p in (tiny / sub).glob(f"*.{ext}")), key=int) == stems, sub
    splits = json.loads((tiny / "splits.json").read_text())
    assert splits["test"] == [s for i, s in enumerate(stems) if i % 5 == 0]
    assert splits["train"] == [s for i, s in enumerate(stems) if i % 5 != 0]
    with Image.open(tiny / "color" / "0.jpg") as im:
        assert im.format == "JPEG" and im.size == (96, 72)
    assert read_png(tiny / "rs_semantics" / "0.png").dtype == np.uint8
    assert read_png(tiny / "rs_instance" / "0.png").dtype == np.uint16
    assert read_png(tiny / "m2f_semantics" / "0.png").dtype == np.uint16
    assert np.load(tiny / "depth" / "0.npy").dtype == np.float32
    K = _K(tiny)
    assert K[0, 2] == pytest.approx(47.5) and K[1, 2] == pytest.approx(35.5)
    hfov = 2 * math.degrees(math.atan(48 / K[0, 0]))
    assert hfov == pytest.approx(75.0, abs=1e-6)  # the default hfov_deg: fx = 48 / tan(37.5°) for W = 96
    meta = json.loads((tiny / "scene_meta.json").read_text())
    assert meta["generator"] == "pipeline.synth" and meta["preset"] == "tiny" and meta["seed"] == 0
    assert "SIMULATED" in meta["simulated_segmenter"]["note"]
    assert json.loads((tiny / SIMULATED_CONSISTENT_DIR / "manifest.json").read_text())["kind"] == "simulated"


def test_poses_are_opencv_c2w_inside_room(tiny):
    meta = json.loads((tiny / "scene_meta.json").read_text())
    Lx, Ly, Lz = meta["room_size_m"]
    for s in _stems(tiny):
        c2w = _pose(tiny, s)
        R = c2w[:3, :3]
        assert np.allclose(R.T @ R, np.eye(3), atol=1e-8) and np.linalg.det(R) == pytest.approx(1.0)
        eye = c2w[:3, 3]
        assert abs(eye[0]) < Lx / 2 and abs(eye[1]) < Ly / 2 and 1.4 <= eye[2] <= 1.7
        assert R[2, 0] == pytest.approx(0.0, abs=1e-9)  # camera x axis horizontal (no roll)
        assert R[2, 1] < 0  # camera y (down) points down in the z-up world


def test_floor_depth_matches_analytic_ray_with_integer_pixel_centres(tiny):
    """Every floor pixel's depth equals where the ray ((u-cx)/fx, (v-cy)/fy, 1) meets z = 0: pins the convention."""
    K = _K(tiny)
    meta = json.loads((tiny / "scene_meta.json").read_text())
    Lz = meta["room_size_m"][2]
    checked = 0
    for s in _stems(tiny)[::4]:
        c2w = _pose(tiny, s)
        depth = np.load(tiny / "depth" / f"{s}.npy").astype(np.float64)
        sem = read_png(tiny / "rs_semantics" / f"{s}.png")
        H, W = depth.shape
        v, u = np.mgrid[0:H, 0:W].astype(np.float64)
        d = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1) @ c2w[:3, :3].T
        for cls, plane in ((2, 0.0), (13, Lz)):
            m = sem == cls
            t = (plane - c2w[2, 3]) / d[..., 2]
            if m.any():
                np.testing.assert_allclose(depth[m], t[m], rtol=1e-5, atol=1e-5)
                checked += int(m.sum())
        # a half-pixel shift of the convention would move the floor depth by far more than 1e-5
        t_shift = (0.0 - c2w[2, 3]) / (np.stack([(u + 0.5 - K[0, 2]) / K[0, 0], (v + 0.5 - K[1, 2]) / K[1, 1],
                                                  np.ones_like(u)], -1) @ c2w[:3, :3].T)[..., 2]
        assert np.median(np.abs(t_shift[sem == 2] - depth[sem == 2])) > 1e-3
    assert checked > 1000


@pytest.mark.parametrize("pair", [(0, 1), (1, 3), (4, 7), (10, 12), (20, 23)])
def test_depth_reprojection_between_frames(tiny, pair):
    """Back-project frame i, project into j, back-project with j's depth, project into i: < 0.5 px median."""
    i, j = (str(p) for p in pair)
    K = _K(tiny)
    ci, cj = _pose(tiny, i), _pose(tiny, j)
    di = np.load(tiny / "depth" / f"{i}.npy").astype(np.float64)
    dj = np.load(tiny / "depth" / f"{j}.npy").astype(np.float64)
    H, W = di.shape
    X = _backproject(K, ci, di)
    u, v, z = _project(K, cj, X)
    ok = (u >= 0) & (u <= W - 1) & (v >= 0) & (v <= H - 1) & (z > 0.05)
    zj = ndimage.map_coordinates(dj, [v[ok], u[ok]], order=1)
    zmin = ndimage.minimum_filter(dj, size=2)[np.floor(v[ok]).astype(int), np.floor(u[ok]).astype(int)]
    zmax = ndimage.maximum_filter(dj, size=3, origin=-1)[np.floor(v[ok]).astype(int), np.floor(u[ok]).astype(int)]
    visible = (np.abs(zj - z[ok]) < 0.02 * z[ok]) & (zmax - zmin < 0.05 * zj)  # not occluded, not at an edge
    assert visible.sum() > 0.2 * H * W
    uj, vj = u[ok][visible], v[ok][visible]
    pc = np.stack([(uj - K[0, 2]) / K[0, 0] * zj[visible], (vj - K[1, 2]) / K[1, 1] * zj[visible], zj[visible]], -1)
    Xb = pc @ cj[:3, :3].T + cj[:3, 3]
    ub, vb, _ = _project(K, ci, Xb)
    vv, uu = np.mgrid[0:H, 0:W]
    err = np.hypot(ub - uu[ok][visible], vb - vv[ok][visible])
    assert np.median(err) < 0.5
    assert np.median(err) < 0.05  # exact geometry: only bilinear depth interpolation error remains


# ---------------------------------------------------------------------------------------------------------------
# world and GT labels
# ---------------------------------------------------------------------------------------------------------------

def test_world_objects_rest_and_do_not_interpenetrate():
    for seed in range(4):
        cfg = make_config("tiny", seed=seed)
        world = build_world(cfg)
        objs = world["objects"]
        lo, hi = cfg.num_objects
        assert lo <= len(objs) <= hi
        assert sum(o["cls"] in (3, 7) for o in objs) >= 2
        rng = np.random.default_rng(seed)
        Lx, Ly, Lz = world["room"]
        for a in objs:
            # sample the solid of a (shrunk a little) and check no other object contains those points
            q = rng.uniform(-1, 1, size=(4000, 3))
            if a["shape"] == "box":
                loc = q * (np.asarray(a["half"]) - 0.01)
            elif a["shape"] == "sphere":
                loc = q[np.linalg.norm(q, axis=1) <= 1] * (a["radius"] - 0.01)
            else:
                q = q[np.hypot(q[:, 0], q[:, 1]) <= 1]
                loc = q * [a["radius"] - 0.01, a["radius"] - 0.01, a["half_height"] - 0.01]
            c, s = math.cos(a["yaw"]), math.sin(a["yaw"])
            X = np.stack([c * loc[:, 0] - s * loc[:, 1], s * loc[:, 0] + c * loc[:, 1], loc[:, 2]], 1) + a["center"]
            assert np.all(np.abs(X[:, 0]) < Lx / 2) and np.all(np.abs(X[:, 1]) < Ly / 2) and np.all(X[:, 2] > 0)
            for b in objs:
                if b is not a:
                    assert not _inside(b, X, grow=-0.005).any(), (seed, a["cls"], b["cls"])
            # resting: bottom on the floor or on the top of its support
            bottom = a["center"][2] - (a["half"][2] if a["shape"] == "box" else a.get("half_height", a["radius"]))
            if a["support"] is None:
                assert bottom == pytest.approx(0.0, abs=1e-9)
            else:
                sup = objs[a["support"]]
                top = sup["center"][2] + (sup["half"][2] if sup["shape"] == "box" else sup["half_height"])
                assert bottom == pytest.approx(top, abs=1e-9)


def test_gt_labels_match_object_list(tiny):
    meta = json.loads((tiny / "scene_meta.json").read_text())
    objs = meta["objects"]
    things = {o["instance_id"]: o for o in objs if o["is_thing"]}
    assert sorted(things) == list(range(1, len(things) + 1))
    allowed = {0, 1, 2, 13} | {o["class_id"] for o in objs}
    K = _K(tiny)
    seen = set()
    for s in _stems(tiny):
        sem = read_png(tiny / "rs_semantics" / f"{s}.png")
        inst = read_png(tiny / "rs_instance" / f"{s}.png")
        assert set(np.unique(sem).tolist()) <= allowed
        thing_px = np.isin(sem, list(THING_IDS))
        assert np.all(inst[thing_px] > 0) and np.all(inst[~thing_px] == 0)
        X = _backproject(K, _pose(tiny, s), np.load(tiny / "depth" / f"{s}.npy").astype(np.float64))
        for k in np.unique(inst[inst > 0]).tolist():
            m = inst == k
            obj = things[k]
            assert np.all(sem[m] == obj["class_id"])
            # every pixel of instance k lies on the surface of the object listed with id k
            assert _inside(obj, X[m], grow=1e-3).all(), (s, k)
            seen.add(k)
    assert len(seen) >= max(1, len(things) - 1)  # the loop sees (nearly) every thing


# ---------------------------------------------------------------------------------------------------------------
# simulated segmenter
# ---------------------------------------------------------------------------------------------------------------

def _gt_segments(root: Path) -> tuple[dict, list[np.ndarray]]:
    """Ground-truth consistent segment maps, re-rendered from the generator for the scene's config."""
    meta = json.loads((root / "scene_meta.json").read_text())
    cfg = make_config(meta["preset"], **{k: (tuple(v) if isinstance(v, list) else v)
                                         for k, v in meta["config"].items() if k != "preset"})
    world = build_world(cfg)
    K = intrinsics(cfg)
    seg_of = [o["segment_id"] for o in world["objects"]]
    ri = world["room_ids"]
    lut = np.array(seg_of + [ri["wall"]] * 4 + [ri["floor"], ri["ceiling"]])
    maps = [lut[render_view(world, K, c2w, cfg.width, cfg.height)["surface"]] for c2w in camera_path(cfg, world)]
    return meta, maps


def test_simulated_without_noise_equals_gt(tiny_clean):
    root = tiny_clean
    meta, gt = _gt_segments(root)
    segs = {int(k): v for k, v in json.loads((root / SIMULATED_CONSISTENT_DIR / "segments.json").read_text()).items()}
    for k, v in segs.items():
        assert PANLIFT_CLASSES[v["class_id"]] == v["class_name"]
    stuff_objects = {o["segment_id"] for o in meta["objects"] if not o["is_thing"]}
    assert len(stuff_objects) >= 2 and len(set(meta["room_segment_ids"].values())) == 3
    for s in _stems(root):
        i = int(s)
        sem_gt = read_png(root / "rs_semantics" / f"{s}.png")
        inst_gt = read_png(root / "rs_instance" / f"{s}.png")
        sem = read_png(root / SIMULATED_CONSISTENT_DIR / "semantics" / f"{s}.png")
        ids = read_png(root / SIMULATED_CONSISTENT_DIR / "instance" / f"{s}.png")
        assert ids.dtype == np.uint16
        np.testing.assert_array_equal(sem, sem_gt)
        np.testing.assert_array_equal(ids, gt[i])
        assert np.all(ids[sem_gt > 0] > 0)  # every segment, stuff included, has an id
        thing = inst_gt > 0
        np.testing.assert_array_equal(ids[thing], inst_gt[thing])
        for k in np.unique(ids).tolist():
            assert np.all(sem_gt[ids == k] == segs[k]["class_id"])
        # m2f form: same labels, stuff 0, thing ids one per (frame, segment)
        np.testing.assert_array_equal(read_png(root / "m2f_semantics" / f"{s}.png"), sem_gt)
        m2f = read_png(root / "m2f_instance" / f"{s}.png")
        assert np.all(m2f[~thing] == 0) and np.all(m2f[thing] > 0)
        assert len(np.unique(m2f[thing])) == len(np.unique(inst_gt[thing]))


def test_simulated_noise_rates_match_config(tiny):
    meta, gt = _gt_segments(tiny)
    cfg = meta["config"]
    objs = {o["segment_id"]: o for o in meta["objects"]}
    n = dropped = confused = 0
    for s in _stems(tiny):
        g = gt[int(s)]
        ids = read_png(tiny / SIMULATED_CONSISTENT_DIR / "instance" / f"{s}.png")
        sem = read_png(tiny / SIMULATED_CONSISTENT_DIR / "semantics" / f"{s}.png")
        for k in np.unique(g).tolist():
            m = g == k
            if k not in objs or m.sum() < 40:
                continue
            n += 1
            if np.mean(ids[m] == k) < 0.3:
                dropped += 1
            elif np.bincount(sem[m & (ids == k)]).argmax() != objs[k]["class_id"]:
                confused += 1
        # boundary noise: changed pixels of kept segments sit within the jitter band around GT boundaries
        changed = (ids != g) & (ids > 0) & np.isin(ids, np.unique(g))
        edge = np.zeros_like(g, dtype=bool)
        edge[:, 1:] |= g[:, 1:] != g[:, :-1]
        edge[1:, :] |= g[1:, :] != g[:-1, :]
        dist = ndimage.distance_transform_edt(~edge)
        kept = np.isin(g, [k for k in np.unique(ids) if k > 0])
        assert np.all(dist[changed & kept & (ids != 0)] <= cfg["sim_boundary_px"] + 2)
    assert n > 80
    drop_rate, conf_rate = dropped / n, confused / max(n - dropped, 1)
    assert 0.03 <= drop_rate <= 0.2, drop_rate
    assert 0.03 <= conf_rate <= 0.2, conf_rate
    # boundary jitter changes a visible fraction of pixels but not most of them
    total = sum(np.mean(read_png(tiny / SIMULATED_CONSISTENT_DIR / "instance" / f"{s}.png") != gt[int(s)])
                for s in _stems(tiny)) / len(gt)
    assert 0.01 < total < 0.3


def test_m2f_ids_are_per_frame_not_consistent(tiny):
    seen: dict[int, str] = {}
    for s in _stems(tiny):
        m2f = read_png(tiny / "m2f_instance" / f"{s}.png")
        sem = read_png(tiny / "m2f_semantics" / f"{s}.png")
        assert np.all(m2f[~np.isin(sem, list(THING_IDS))] == 0)
        for k in np.unique(m2f[m2f > 0]).tolist():
            assert k not in seen, f"m2f id {k} reused in frames {seen[k]} and {s}"
            seen[k] = s
    assert len(seen) > 10


# ---------------------------------------------------------------------------------------------------------------
# determinism, point cloud, refusal, reader
# ---------------------------------------------------------------------------------------------------------------

def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_determinism_by_seed(tiny, tmp_path):
    again = generate(tmp_path / "again", make_config("tiny", seed=0))
    a, b = _all_files(tiny), _all_files(again)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    other = generate(tmp_path / "other", make_config("tiny", seed=1))
    c = _all_files(other)
    assert json.loads(c["scene_meta.json"])["objects"] != json.loads(a["scene_meta.json"])["objects"]
    assert c["color/3.jpg"] != a["color/3.jpg"] and c["depth/3.npy"] != a["depth/3.npy"]


def test_point_cloud_lies_on_surfaces(tiny):
    v = PlyData.read(str(tiny / "points3d.ply"))["vertex"]
    names = [p.name for p in v.properties]
    assert names == ["x", "y", "z", "red", "green", "blue"]
    assert v["red"].dtype == np.uint8
    X = np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float64)
    assert len(X) == PRESETS["tiny"]["num_points"]
    rgb = np.stack([v["red"], v["green"], v["blue"]], 1)
    assert rgb.std(axis=0).min() > 10  # coloured, not constant
    K = _K(tiny)
    on, front, total = 0, 0, 0
    for s in _stems(tiny)[1::3]:
        c2w = _pose(tiny, s)
        depth = np.load(tiny / "depth" / f"{s}.npy").astype(np.float64)
        H, W = depth.shape
        u, vv, z = _project(K, c2w, X)
        ui, vi = np.rint(u).astype(int), np.rint(vv).astype(int)
        ok = (ui >= 0) & (ui < W) & (vi >= 0) & (vi < H) & (z > 0.05)
        d = depth[vi[ok], ui[ok]]
        total += int(ok.sum())
        on += int(np.sum(np.abs(z[ok] - d) < 0.02 + 0.01 * d))
        front += int(np.sum(z[ok] < d - (0.05 + 0.02 * d)))  # floating in free space before a surface
    assert total > 1000
    assert on / total > 0.35  # the rest are occluded in that view
    assert front / total < 0.03


def test_refuses_foreign_folder_and_replaces_previous_scene(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(InputError, match=r"mine: exists and is not a synthetic scene .*choose a new or empty folder"):
        synth_command(foreign, preset="tiny", num_frames=2)
    assert (foreign / "notes.txt").read_text() == "precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    synth_command(empty, preset="tiny", num_frames=3)
    assert "written to" in capsys.readouterr().out
    synth_command(empty, preset="tiny", num_frames=2, seed=3)  # a previous synthetic scene is replaced
    assert len(list((empty / "color").glob("*.jpg"))) == 2
    # a bad preset name or field can only come from code (the CLI offers tiny/demo): API errors, not InputError
    with pytest.raises(ValueError, match=r"unknown synthetic preset 'huge'; choose one of \['demo', 'hard', 'tiny'\]"):
        synth_command(tmp_path / "x", preset="huge")
    with pytest.raises(TypeError, match=r"unknown SynthConfig field\(s\) \['frames'\]"):
        synth_command(tmp_path / "x", preset="tiny", frames=3)
    assert not (tmp_path / "x").exists()


def test_loads_through_scene_reader(tiny):
    from pipeline.scene import load_scene

    scene = load_scene(tiny)
    assert scene.format == "panlift" and len(scene.frames) == 24
    f = scene.frame("3")
    np.testing.assert_allclose(f.K[:2, 2], _K(tiny)[:2, 2] + 0.5)
    assert scene.test == [str(i) for i in range(0, 24, 5)] and scene.points is not None
    assert scene.load_depth("3").shape == (72, 96)


def test_synth_subcommand(tmp_path, capsys, monkeypatch):
    """`python -m pipeline synth DIR --preset tiny --seed 2` reaches the generator with that preset and seed."""
    from pipeline import synth as synth_mod
    from pipeline.cli import main

    monkeypatch.setitem(synth_mod.PRESETS, "tiny", {**PRESETS["tiny"], "num_frames": 2})  # keep it fast
    assert main(["synth", str(tmp_path / "scene"), "--preset", "tiny", "--seed", "2"]) == 0
    meta = json.loads((tmp_path / "scene" / "scene_meta.json").read_text())
    assert (meta["preset"], meta["seed"], meta["config"]["num_frames"]) == ("tiny", 2, 2)
    assert "synthetic scene 'tiny' (seed 2" in capsys.readouterr().out
