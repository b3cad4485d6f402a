"""Synthetic benchmark scenes: our stand-in for ScanNet / Replica / Hypersim, which cannot be downloaded here.

`generate(out_dir, cfg)` builds a procedural room (walls, floor, ceiling, 6-12 textured furniture primitives),
ray-casts it analytically from a smooth camera loop and writes it **in the Panoptic Lifting layout**, so the
same reader (`pipeline.scene.load_scene`) serves real and synthetic data:

    color/<f>.jpg  pose/<f>.txt  intrinsic/intrinsic_color.txt  rs_semantics/<f>.png  rs_instance/<f>.png
    depth/<f>.npy  splits.json  points3d.ply  scene_meta.json
    panoptic_consistent/{semantics,instance}/<f>.png, segments.json, manifest.json   (SIMULATED segmenter)
    m2f_semantics/<f>.png  m2f_instance/<f>.png                                      (SIMULATED segmenter)

Geometry is exact (analytic ray-primitive intersections, depth is the z-depth of the pixel-centre ray), the
camera follows PanLift's convention (c2w with OpenCV axes, K with pixel centres at integer coordinates), and
textures are smooth solid textures under view-independent Lambertian shading so that a Gaussian-splatting
optimiser can learn them.

The *simulated* segmenter outputs are GT corrupted by boundary jitter, dropped instances and per-frame class
confusions at rates set in `SynthConfig`; they stand in for PanSt3R (multi-view consistent ids) and for
Mask2Former (PanLift's per-frame `m2f_*` ids) when no real segmenter output is available.
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image
from scipy import ndimage

from .common.classes import PANLIFT_CLASSES, is_thing
from .common.io import InputError, atomic_dir
from .common.progress import progress_bar

__all__ = [
    "SynthConfig",
    "PRESETS",
    "GENERATOR",
    "GENERATOR_VERSION",
    "SIMULATED_CONSISTENT_DIR",
    "generate",
    "synth_command",
    "make_config",
    "build_world",
    "render_view",
    "camera_path",
    "intrinsics",
]

GENERATOR = "pipeline.synth"
GENERATOR_VERSION = "1.0"
SIMULATED_CONSISTENT_DIR = "panoptic_consistent"

_EPS = 1e-4
_WALL, _FLOOR, _CABINET, _BED, _CHAIR, _SOFA, _TABLE, _CEILING = 1, 2, 3, 4, 5, 6, 7, 13
_FRIDGE, _TV, _TOILET, _SINK, _BAG = 14, 15, 17, 18, 20
# Which classes a simulated confusion may swap to: same thing/stuff kind, plausible look-alikes.
_CONFUSE_THING = (_BED, _CHAIR, _SOFA, _FRIDGE, _TV, _TOILET, _SINK, _BAG)
_CONFUSE_STUFF = (_CABINET, _TABLE, 10, 11)  # cabinet, table, counter, shelves


@dataclass(frozen=True)
class SynthConfig:
    """Everything that decides a synthetic scene; same config + seed -> byte-identical files."""

    preset: str = "custom"
    """Name recorded in scene_meta.json (`tiny`, `demo` or `custom`)."""
    seed: int = 0
    """Seed for the layout, textures, camera phase and the simulated segmenter noise."""
    num_frames: int = 80
    """Number of frames on the camera loop; stems are "0", "1", ... ."""
    width: int = 256
    """Image width in pixels."""
    height: int = 192
    """Image height in pixels."""
    hfov_deg: float = 75.0
    """Horizontal field of view; fx = fy, cx = (W-1)/2, cy = (H-1)/2 (PanLift integer pixel centres)."""
    num_objects: tuple[int, int] = (6, 12)
    """Inclusive range for the number of furniture objects (at least 2 of them stuff: table/cabinet)."""
    test_every: int = 5
    """Test split = frames 0, test_every, 2*test_every, ... (PanLift's ScanNet rule)."""
    camera_height: float = 1.55
    """Mean camera height in metres; it oscillates by +-0.12 m along the loop."""
    loop_fraction: float = 0.55
    """Camera loop radii as a fraction of the room's half extents."""
    num_points: int = 4000
    """Points in points3d.ply (back-projected from train depths, with their colours)."""
    point_jitter_m: float = 0.002
    """Std of the Gaussian jitter added to the point cloud, metres."""
    jpeg_quality: int = 95
    """JPEG quality of color/<f>.jpg."""
    sim_drop_rate: float = 0.1
    """SIMULATED segmenter: probability that an object's segment is missing in a frame."""
    sim_drop_to_void: float = 0.5
    """SIMULATED segmenter: fraction of dropped segments that become void (the rest merge into a neighbour)."""
    sim_confuse_rate: float = 0.1
    """SIMULATED segmenter: probability that an object's class is swapped (this frame only)."""
    sim_boundary_px: float = 2.0
    """SIMULATED segmenter: max displacement of segment boundaries, pixels (smooth random warp)."""


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(preset="tiny", num_frames=24, width=96, height=72, num_points=2000),
    # seed 5: 11 objects, 8 of them things, three televisions among them, so the demo shows instances of one
    # class kept apart (seed 0 draws only 3 things)
    "demo": dict(preset="demo", seed=5, num_frames=80, width=256, height=192, num_points=5000),
}


def make_config(preset: str = "demo", seed: Optional[int] = None, **overrides: Any) -> SynthConfig:
    """A preset's config with the seed (None: the preset's own) and any field overrides applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; choose one of {sorted(PRESETS)}")
    names = {f.name for f in dataclasses.fields(SynthConfig)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise TypeError(f"unknown SynthConfig field(s) {bad}; valid fields: {sorted(names)}")
    return SynthConfig(**{**PRESETS[preset], **({} if seed is None else {"seed": int(seed)}), **overrides})


# --------------------------------------------------------------------------------------------------------------
# World: room + objects
# --------------------------------------------------------------------------------------------------------------

# class -> (shape, full size): box (dx, dy, dz); cylinder (radius, height); sphere (radius,)
_TEMPLATES: dict[int, list[tuple[str, tuple[float, ...]]]] = {
    _CHAIR: [("box", (0.5, 0.5, 0.9)), ("cylinder", (0.26, 0.85))],
    _SOFA: [("box", (1.8, 0.85, 0.8))],
    _BED: [("box", (1.9, 1.4, 0.55))],
    _TV: [("box", (1.0, 0.3, 1.2))],  # floor-standing (on a stand); a supported TV is a thin box
    _FRIDGE: [("box", (0.75, 0.7, 1.8))],
    _TOILET: [("cylinder", (0.22, 0.45))],
    _SINK: [("cylinder", (0.25, 0.85))],
    _BAG: [("sphere", (0.22,))],
    _TABLE: [("box", (1.3, 0.8, 0.75)), ("cylinder", (0.5, 0.75))],
    _CABINET: [("box", (0.9, 0.5, 0.95))],
}
# Objects that may stand on a support (table, cabinet, bed, sofa), with their size when they do.
_ON_SUPPORT: dict[int, tuple[str, tuple[float, ...]]] = {
    _TV: ("box", (0.8, 0.1, 0.5)),
    _SINK: ("cylinder", (0.22, 0.18)),
    _BAG: ("sphere", (0.16,)),
}
_SUPPORTS = (_TABLE, _CABINET, _BED, _SOFA)
_THING_WEIGHTS = {_CHAIR: 3, _SOFA: 1, _BED: 1, _TV: 2, _FRIDGE: 1, _TOILET: 1, _SINK: 1, _BAG: 2}
_LOW_TOP = 1.05  # objects lower than this may sit under the camera loop


def _hsv(h: float, s: float, v: float) -> list[float]:
    return [float(c) for c in colorsys.hsv_to_rgb(h % 1.0, s, v)]


def _box_checks_phase(rng: np.random.Generator, half: np.ndarray, period: float) -> list[float]:
    """Checker phases that keep every box face well inside a cell row (full contrast on all faces)."""
    phases = []
    for h in half:
        for _ in range(100):
            ph = float(rng.uniform(0, 2 * np.pi))
            if min(abs(math.sin(math.pi * h / period + ph)), abs(math.sin(-math.pi * h / period + ph))) > 0.6:
                break
        phases.append(ph)
    return phases


def _texture(rng: np.random.Generator, k: int, hue0: float, shape: str, half: np.ndarray) -> dict:
    """A distinct, smooth solid texture: two colours blended by stripes / checks / gradient / noise."""
    hue = hue0 + 0.618034 * k
    a = _hsv(hue, rng.uniform(0.45, 0.8), rng.uniform(0.6, 0.9))
    b = _hsv(hue + rng.uniform(0.06, 0.16) * rng.choice([-1, 1]), rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.55))
    kinds = ["stripes", "gradient", "noise"] + (["checks"] if shape == "box" else [])
    kind = str(kinds[k % len(kinds)]) if rng.random() < 0.7 else str(rng.choice(kinds))
    d = rng.normal(size=3)
    d /= np.linalg.norm(d)
    tex: dict[str, Any] = {"kind": kind, "color_a": a, "color_b": b}
    if kind == "stripes":
        tex.update(direction=d.tolist(), period=float(rng.uniform(0.18, 0.4)), phase=float(rng.uniform(0, 6.3)))
    elif kind == "checks":
        p = float(rng.uniform(0.2, 0.35))
        tex.update(period=p, phases=_box_checks_phase(rng, half, p))
    elif kind == "gradient":
        # tilted so that no face (a box top, say) sees a constant; a gentle wave keeps small faces informative
        gd = d * np.array([1.0, 1.0, 0.5]) + np.sign(d) * 0.3
        gd /= np.linalg.norm(gd)
        w = rng.normal(size=3)
        w *= rng.uniform(1 / 0.6, 1 / 0.35) / np.linalg.norm(w)
        tex.update(direction=gd.tolist(), extent=float(max(2 * float(np.abs(gd) @ half), 0.2)),
                   wave=w.tolist(), wave_phase=float(rng.uniform(0, 6.3)))
    else:
        waves = rng.normal(size=(4, 3))
        waves /= np.linalg.norm(waves, axis=1, keepdims=True)
        waves *= rng.uniform(1 / 0.6, 1 / 0.22, size=(4, 1))
        tex.update(waves=waves.tolist(), phases=rng.uniform(0, 6.3, size=4).tolist())
    return tex


def _footprint(obj: dict) -> tuple[np.ndarray, np.ndarray, float]:
    """2D oriented rectangle (centre, half extents, yaw) covering the object (circles -> squares)."""
    c = np.asarray(obj["center"][:2], dtype=np.float64)
    if obj["shape"] == "box":
        return c, np.asarray(obj["half"][:2], dtype=np.float64), float(obj["yaw"])
    r = float(obj["radius"])
    return c, np.array([r, r]), float(obj["yaw"])


def _rect_corners(c: np.ndarray, h: np.ndarray, yaw: float) -> np.ndarray:
    cs, sn = math.cos(yaw), math.sin(yaw)
    ax = np.array([[cs, sn], [-sn, cs]])  # rows: local x, local y axes in world
    sx = np.array([1, 1, -1, -1])[:, None]
    sy = np.array([1, -1, -1, 1])[:, None]
    return c + sx * h[0] * ax[0] + sy * h[1] * ax[1]


def _rects_overlap(a: tuple, b: tuple, margin: float) -> bool:
    """Separating-axis test for two oriented rectangles, each grown by `margin`."""
    (ca, ha, ya), (cb, hb, yb) = a, b
    ha, hb = ha + margin, hb + margin
    pa, pb = _rect_corners(ca, ha, ya), _rect_corners(cb, hb, yb)
    for yaw in (ya, yb):
        for axis in (np.array([math.cos(yaw), math.sin(yaw)]), np.array([-math.sin(yaw), math.cos(yaw)])):
            A, B = pa @ axis, pb @ axis
            if A.max() < B.min() or B.max() < A.min():
                return False
    return True


def _dist_to_rect(pts: np.ndarray, rect: tuple) -> np.ndarray:
    c, h, yaw = rect
    cs, sn = math.cos(yaw), math.sin(yaw)
    q = pts - c
    lx = np.abs(q[:, 0] * cs + q[:, 1] * sn) - h[0]
    ly = np.abs(-q[:, 0] * sn + q[:, 1] * cs) - h[1]
    return np.hypot(np.maximum(lx, 0), np.maximum(ly, 0)) + np.minimum(np.maximum(lx, ly), 0)


def _make_object(cls: int, shape: str, size: tuple[float, ...], scale: float, xy, yaw: float, z0: float) -> dict:
    s = [v * scale for v in size]
    if shape == "box":
        half = [s[0] / 2, s[1] / 2, s[2] / 2]
        return dict(cls=cls, shape="box", center=[xy[0], xy[1], z0 + half[2]], yaw=yaw, half=half)
    if shape == "cylinder":
        return dict(cls=cls, shape="cylinder", center=[xy[0], xy[1], z0 + s[1] / 2], yaw=yaw,
                    radius=s[0], half_height=s[1] / 2)
    return dict(cls=cls, shape="sphere", center=[xy[0], xy[1], z0 + s[0]], yaw=yaw, radius=s[0])


def _top(obj: dict) -> float:
    c = obj["center"][2]
    return c + (obj["half"][2] if obj["shape"] == "box" else obj.get("half_height", obj.get("radius")))


def _half_extents(obj: dict) -> np.ndarray:
    if obj["shape"] == "box":
        return np.asarray(obj["half"], dtype=np.float64)
    r = obj["radius"]
    return np.array([r, r, obj.get("half_height", r)])


def build_world(cfg: SynthConfig) -> dict:
    """Room, objects (with ids, classes, textures) and light, all drawn from `cfg.seed`.

    Objects stand on the floor or on top of a table/cabinet/bed/sofa; footprints of floor objects never
    overlap (oriented-rectangle test), stacked objects fit inside their support's top, so nothing
    interpenetrates. Tall objects keep clear of the camera loop; low ones may pass under it.
    """
    rng = np.random.default_rng([int(cfg.seed), 11])
    room = np.array([rng.uniform(5.0, 6.0), rng.uniform(4.3, 5.0), rng.uniform(2.6, 2.9)])
    hx, hy = room[0] / 2, room[1] / 2
    loop = np.array([cfg.loop_fraction * hx, cfg.loop_fraction * hy])
    th = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    path2d = np.stack([loop[0] * np.cos(th), loop[1] * np.sin(th)], 1)

    lo, hi = cfg.num_objects
    if lo < 2 or hi < lo:
        raise ValueError(f"num_objects={cfg.num_objects}: need 2 <= min <= max (two stuff objects are always placed)")
    n_target = int(rng.integers(lo, hi + 1))
    classes = [int(rng.choice([_TABLE, _CABINET])), int(rng.choice([_TABLE, _CABINET]))]
    thing_cls, thing_w = zip(*_THING_WEIGHTS.items())
    p = np.asarray(thing_w, dtype=np.float64) / sum(thing_w)
    while len(classes) < n_target:
        if rng.random() < 0.1:
            classes.append(int(rng.choice([_TABLE, _CABINET])))
        else:
            classes.append(int(rng.choice(thing_cls, p=p)))

    objects: list[dict] = []
    used_support: set[int] = set()
    for cls in classes:
        placed = None
        # Things that can stand on something try a free support first (half of the time).
        if cls in _ON_SUPPORT and rng.random() < 0.6:
            cands = [i for i, o in enumerate(objects) if o["cls"] in _SUPPORTS and i not in used_support
                     and o["support"] is None]
            if cls == _TV:
                cands = [i for i in cands if objects[i]["cls"] in (_TABLE, _CABINET)]
            if cands:
                si = int(rng.choice(cands))
                sup = objects[si]
                shape, size = _ON_SUPPORT[cls]
                sh = _half_extents(sup)
                limit = (sh[0] if sup["shape"] != "box" else min(sh[0], sh[1])) - 0.03
                need = math.hypot(size[0], size[1]) / 2 if shape == "box" else size[0]
                if sup["shape"] == "box" and shape == "box":
                    scale = min(1.0, (sh[0] - 0.03) / (size[0] / 2), (sh[1] - 0.03) / (size[1] / 2))
                else:
                    scale = min(1.0, limit / need)
                obj = _make_object(cls, shape, size, scale, sup["center"][:2], float(sup["yaw"]), _top(sup))
                tall = _top(obj) > _LOW_TOP
                if scale > 0.4 and (not tall or _dist_to_rect(path2d, _footprint(sup)).min() > 0.5):
                    placed = obj
                    obj["support"] = si
                    used_support.add(si)
        if placed is None:
            shape, size = _TEMPLATES[cls][int(rng.integers(len(_TEMPLATES[cls])))]
            for _ in range(400):
                scale = float(rng.uniform(0.85, 1.15))
                yaw = float(rng.choice([0.0, np.pi / 2])) if rng.random() < 0.5 else float(rng.uniform(0, np.pi))
                obj = _make_object(cls, shape, size, scale, (0.0, 0.0), yaw, 0.0)
                xy = (float(rng.uniform(-hx + 0.05, hx - 0.05)), float(rng.uniform(-hy + 0.05, hy - 0.05)))
                obj["center"][:2] = list(xy)
                fp = _footprint(obj)
                corners = _rect_corners(*fp)
                if np.any(np.abs(corners[:, 0]) > hx - 0.03) or np.any(np.abs(corners[:, 1]) > hy - 0.03):
                    continue
                if any(_rects_overlap(fp, _footprint(o), 0.05) for o in objects if o["support"] is None):
                    continue
                clear = 0.55 if _top(obj) > _LOW_TOP else 0.0
                if clear > 0 and _dist_to_rect(path2d, fp).min() < clear:
                    continue
                obj["support"] = None
                placed = obj
                break
        if placed is not None:
            objects.append(placed)
    if len(objects) < lo:
        raise RuntimeError(f"seed {cfg.seed}: could only place {len(objects)} objects (< {lo}); try another seed")

    hue0 = float(rng.uniform(0, 1))
    next_thing = 1
    for k, o in enumerate(objects):
        o["index"] = k
        o["class_name"] = PANLIFT_CLASSES[o["cls"]]
        o["is_thing"] = is_thing(o["cls"])
        if o["is_thing"]:
            o["instance_id"] = next_thing
            next_thing += 1
        else:
            o["instance_id"] = 0
        o["texture"] = _texture(rng, k, hue0, o["shape"], _half_extents(o))
    # Consistent (simulated-segmenter) segment ids: things keep 1..K, then each stuff object, then wall/floor/ceiling.
    nxt = next_thing
    for o in objects:
        if not o["is_thing"]:
            o["segment_id"] = nxt
            nxt += 1
        else:
            o["segment_id"] = o["instance_id"]
    room_ids = {"wall": nxt, "floor": nxt + 1, "ceiling": nxt + 2}

    wall_hue = float(rng.uniform(0, 1))
    room_tex = {
        "walls": [_hsv(wall_hue + 0.04 * i, 0.12 + 0.05 * i, 0.82) for i in range(4)],
        "wall_stripe_period": float(rng.uniform(0.6, 1.0)),
        "floor_a": _hsv(rng.uniform(0.05, 0.12), 0.45, 0.55),
        "floor_b": _hsv(rng.uniform(0.05, 0.12), 0.35, 0.78),
        "floor_tile": float(rng.uniform(0.5, 0.7)),
        "floor_phase": rng.uniform(0, 6.3, size=2).tolist(),
        "ceiling": _hsv(wall_hue + 0.5, 0.05, 0.92),
    }
    return dict(room=room.tolist(), loop=loop.tolist(), objects=objects, room_ids=room_ids,
                room_texture=room_tex, light=[0.0, 0.0, float(room[2] - 0.25)],
                ambient=0.38, diffuse=0.8, camera_phase=float(rng.uniform(0, 2 * np.pi)),
                camera_wobble=rng.uniform(0, 2 * np.pi, size=3).tolist())


# --------------------------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------------------------

def intrinsics(cfg: SynthConfig) -> np.ndarray:
    """[3, 3] K with PanLift's integer pixel centres: cx = (W-1)/2, cy = (H-1)/2, square pixels."""
    f = (cfg.width / 2.0) / math.tan(math.radians(cfg.hfov_deg) / 2.0)
    return np.array([[f, 0, (cfg.width - 1) / 2.0], [0, f, (cfg.height - 1) / 2.0], [0, 0, 1]], dtype=np.float64)


def _look_at(eye: np.ndarray, fwd: np.ndarray) -> np.ndarray:
    """c2w with OpenCV axes (x right, y down, z forward) in a z-up world."""
    z = fwd / np.linalg.norm(fwd)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def camera_path(cfg: SynthConfig, world: dict) -> list[np.ndarray]:
    """Smooth loop around the room centre at ~1.4-1.7 m, looking inward with yaw/pitch wobble."""
    rx, ry = world["loop"]
    ph = world["camera_phase"]
    w1, w2, w3 = world["camera_wobble"]
    poses = []
    for i in range(cfg.num_frames):
        t = ph + 2 * np.pi * i / cfg.num_frames
        eye = np.array([rx * math.cos(t), ry * math.sin(t), cfg.camera_height + 0.12 * math.sin(3 * t + w1)])
        target = np.array([0.0, 0.0, 0.75])
        d = target - eye
        yaw = math.atan2(d[1], d[0]) + math.radians(28) * math.sin(2 * t + w2)
        horiz = math.hypot(d[0], d[1])
        pitch = math.atan2(d[2], horiz) + math.radians(7) * math.sin(5 * t + w3)
        fwd = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)])
        poses.append(_look_at(eye, fwd))
    return poses


# --------------------------------------------------------------------------------------------------------------
# Ray casting (vectorised; rays live on [S, H, W] grids so per-object screen boxes are array slices)
# --------------------------------------------------------------------------------------------------------------

def _local(obj: dict, o: np.ndarray, d: tuple) -> tuple[np.ndarray, tuple]:
    """Origin and directions in the object's frame (translate to its centre, undo its yaw)."""
    cs, sn = math.cos(obj["yaw"]), math.sin(obj["yaw"])
    q = o - np.asarray(obj["center"])
    ol = np.array([cs * q[0] + sn * q[1], -sn * q[0] + cs * q[1], q[2]])
    dl = (cs * d[0] + sn * d[1], -sn * d[0] + cs * d[1], d[2])
    return ol, dl


def _hit_box(ol: np.ndarray, dl: tuple, half) -> np.ndarray:
    tn = None
    tf = None
    with np.errstate(divide="ignore", invalid="ignore"):
        for a in range(3):
            inv = 1.0 / dl[a]
            t1 = (-half[a] - ol[a]) * inv
            t2 = (half[a] - ol[a]) * inv
            lo_, hi_ = np.minimum(t1, t2), np.maximum(t1, t2)
            tn = lo_ if tn is None else np.maximum(tn, lo_)
            tf = hi_ if tf is None else np.minimum(tf, hi_)
    return np.where((tn <= tf) & (tn > _EPS), tn, np.inf)


def _hit_sphere(ol: np.ndarray, dl: tuple, r: float) -> np.ndarray:
    a = dl[0] * dl[0] + dl[1] * dl[1] + dl[2] * dl[2]
    b = ol[0] * dl[0] + ol[1] * dl[1] + ol[2] * dl[2]
    c = float(ol @ ol) - r * r
    disc = b * b - a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / a
    return np.where((disc >= 0) & (t > _EPS), t, np.inf)


def _hit_cylinder(ol: np.ndarray, dl: tuple, r: float, hh: float) -> np.ndarray:
    """Capped vertical cylinder (axis = local z), origin outside."""
    a = dl[0] * dl[0] + dl[1] * dl[1]
    b = ol[0] * dl[0] + ol[1] * dl[1]
    c = ol[0] ** 2 + ol[1] ** 2 - r * r
    disc = b * b - a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        ts = (-b - np.sqrt(disc)) / a
        zs = ol[2] + ts * dl[2]
        t_side = np.where((disc >= 0) & (ts > _EPS) & (np.abs(zs) <= hh), ts, np.inf)
        cap = hh if ol[2] > 0 else -hh  # the cap facing the camera
        tc = (cap - ol[2]) / dl[2]
        xc, yc = ol[0] + tc * dl[0], ol[1] + tc * dl[1]
        t_cap = np.where((tc > _EPS) & (xc * xc + yc * yc <= r * r), tc, np.inf)
    return np.minimum(t_side, t_cap)


def _hit_object(obj: dict, o: np.ndarray, d: tuple) -> np.ndarray:
    ol, dl = _local(obj, o, d)
    if obj["shape"] == "box":
        return _hit_box(ol, dl, obj["half"])
    if obj["shape"] == "sphere":
        return _hit_sphere(ol, dl, obj["radius"])
    return _hit_cylinder(ol, dl, obj["radius"], obj["half_height"])


def _normal_local(obj: dict, q: np.ndarray) -> np.ndarray:
    """Outward normals [N, 3] in the object frame at local surface points q [N, 3]."""
    if obj["shape"] == "sphere":
        return q / np.linalg.norm(q, axis=1, keepdims=True)
    if obj["shape"] == "box":
        rel = np.abs(q) / np.asarray(obj["half"])
        ax = np.argmax(rel, axis=1)
        n = np.zeros_like(q)
        n[np.arange(len(q)), ax] = np.sign(q[np.arange(len(q)), ax])
        return n
    hh, r = obj["half_height"], obj["radius"]
    radial = np.hypot(q[:, 0], q[:, 1])
    on_cap = (np.abs(np.abs(q[:, 2]) - hh) < 1e-4) | (np.abs(q[:, 2]) / hh > radial / r)
    n = np.where(on_cap[:, None], np.stack([0 * q[:, 0], 0 * q[:, 1], np.sign(q[:, 2])], 1),
                 np.stack([q[:, 0], q[:, 1], 0 * q[:, 2]], 1) / np.maximum(radial, 1e-9)[:, None])
    return n


def _eval_texture(tex: dict, q: np.ndarray) -> np.ndarray:
    """Albedo [N, 3] of a solid texture at local points q [N, 3] (metres)."""
    kind = tex["kind"]
    if kind == "stripes":
        s = 0.5 + 0.5 * np.sin(2 * np.pi * (q @ np.asarray(tex["direction"])) / tex["period"] + tex["phase"])
    elif kind == "checks":
        f = np.ones(len(q))
        for a in range(3):
            f = f * np.tanh(5.0 * np.sin(np.pi * q[:, a] / tex["period"] + tex["phases"][a]))
        s = 0.5 + 0.5 * f
    elif kind == "gradient":
        s = 0.5 + 0.8 * (q @ np.asarray(tex["direction"])) / tex["extent"]
        s = np.clip(s + 0.15 * np.sin(2 * np.pi * (q @ np.asarray(tex["wave"])) + tex["wave_phase"]), 0.0, 1.0)
    else:
        w = np.asarray(tex["waves"])
        s = 0.5 + 0.5 * np.mean(np.sin(2 * np.pi * (q @ w.T) + np.asarray(tex["phases"])), axis=1) * 1.6
        s = np.clip(s, 0, 1)
    a, b = np.asarray(tex["color_a"]), np.asarray(tex["color_b"])
    return a * (1 - s[:, None]) + b * s[:, None]


def _room_albedo(world: dict, surf: int, p: np.ndarray) -> np.ndarray:
    """Room surfaces 0..3 walls (x-, x+, y-, y+), 4 floor, 5 ceiling; smooth, low-frequency patterns."""
    rt = world["room_texture"]
    H = world["room"][2]
    if surf == 4:
        t = rt["floor_tile"]
        ph = rt["floor_phase"]
        f = np.tanh(4 * np.sin(np.pi * p[:, 0] / t + ph[0])) * np.tanh(4 * np.sin(np.pi * p[:, 1] / t + ph[1]))
        s = (0.5 + 0.5 * f)[:, None]
        return np.asarray(rt["floor_a"]) * (1 - s) + np.asarray(rt["floor_b"]) * s
    if surf == 5:
        r = np.hypot(p[:, 0], p[:, 1])
        return np.asarray(rt["ceiling"]) * (0.9 + 0.1 * np.cos(r * 1.2))[:, None]
    base = np.asarray(rt["walls"][surf])
    along = p[:, 1] if surf < 2 else p[:, 0]
    grad = 0.72 + 0.28 * (p[:, 2] / H)
    stripe = 0.9 + 0.1 * np.sin(2 * np.pi * p[:, 2] / rt["wall_stripe_period"] + 0.7 * np.sin(along * 1.3))
    return base * (grad * stripe)[:, None]


_ROOM_NORMALS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64)


def _screen_box(obj: dict, w2c: np.ndarray, K: np.ndarray, W: int, H: int) -> tuple[int, int, int, int] | None:
    """Pixel rectangle (v0, v1, u0, u1) covering the object's bounding box; None = test every ray."""
    h = _half_extents(obj)
    cs, sn = math.cos(obj["yaw"]), math.sin(obj["yaw"])
    R = np.array([[cs, -sn, 0], [sn, cs, 0], [0, 0, 1]])
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]) * h
    pw = corners @ R.T + np.asarray(obj["center"])
    pc = pw @ w2c[:3, :3].T + w2c[:3, 3]
    if np.any(pc[:, 2] < 0.05):
        return None
    uv = pc[:, :2] / pc[:, 2:3] * np.array([K[0, 0], K[1, 1]]) + K[:2, 2]
    u0, u1 = int(math.floor(uv[:, 0].min())) - 1, int(math.ceil(uv[:, 0].max())) + 2
    v0, v1 = int(math.floor(uv[:, 1].min())) - 1, int(math.ceil(uv[:, 1].max())) + 2
    u0, v0 = max(u0, 0), max(v0, 0)
    u1, v1 = min(u1, W), min(v1, H)
    if u0 >= u1 or v0 >= v1:
        return (0, 0, 0, 0)
    return v0, v1, u0, u1


# sub-pixel offsets: sample 0 = pixel centre (labels, depth), 1..4 = 2x2 supersampling (colour)
_OFFSETS = np.array([[0.0, 0.0], [-0.25, -0.25], [0.25, -0.25], [-0.25, 0.25], [0.25, 0.25]])


def render_view(world: dict, K: np.ndarray, c2w: np.ndarray, W: int, H: int) -> dict[str, np.ndarray]:
    """Ray-cast one view.

    Returns rgb [H, W, 3] float (mean of 2x2 supersamples), depth [H, W] float32 (z-depth of the centre ray),
    surface [H, W] int (object index, or n_objects + room surface 0..5), all from PanLift's convention: the
    centre ray of pixel (row v, col u) has d_cam = ((u - cx)/fx, (v - cy)/fy, 1).
    """
    objs = world["objects"]
    n_obj = len(objs)
    uu, vv = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    xs = (uu[None] + _OFFSETS[:, 0, None, None] - K[0, 2]) / K[0, 0]  # [S, H, W]
    ys = (vv[None] + _OFFSETS[:, 1, None, None] - K[1, 2]) / K[1, 1]
    R = c2w[:3, :3]
    o = c2w[:3, 3].copy()
    d = tuple(R[i, 0] * xs + R[i, 1] * ys + R[i, 2] for i in range(3))  # world dirs; t = z-depth

    # room: the ray leaves the axis-aligned room box through exactly one plane
    half = np.array([world["room"][0] / 2, world["room"][1] / 2])
    with np.errstate(divide="ignore", invalid="ignore"):
        tx = np.where(d[0] > 0, (half[0] - o[0]) / d[0], (-half[0] - o[0]) / d[0])
        ty = np.where(d[1] > 0, (half[1] - o[1]) / d[1], (-half[1] - o[1]) / d[1])
        tz = np.where(d[2] > 0, (world["room"][2] - o[2]) / d[2], (0.0 - o[2]) / d[2])
    tx = np.where(np.isfinite(tx) & (tx > 0), tx, np.inf)
    ty = np.where(np.isfinite(ty) & (ty > 0), ty, np.inf)
    tz = np.where(np.isfinite(tz) & (tz > 0), tz, np.inf)
    best_t = np.minimum(np.minimum(tx, ty), tz)
    surf = np.where(tx <= np.minimum(ty, tz), np.where(d[0] > 0, 1, 0),
                    np.where(ty <= tz, np.where(d[1] > 0, 3, 2), np.where(d[2] > 0, 5, 4))) + n_obj

    w2c = np.linalg.inv(c2w)
    for k, obj in enumerate(objs):
        box = _screen_box(obj, w2c, K, W, H)
        sl = (slice(None), slice(None), slice(None)) if box is None else (slice(None), slice(box[0], box[1]), slice(box[2], box[3]))
        if box is not None and (box[1] <= box[0] or box[3] <= box[2]):
            continue
        t = _hit_object(obj, o, (d[0][sl], d[1][sl], d[2][sl]))
        closer = t < best_t[sl]
        best_t[sl] = np.where(closer, t, best_t[sl])
        surf[sl] = np.where(closer, k, surf[sl])

    # shading: Lambertian from one point light + ambient; albedo from solid textures
    P = np.stack([o[i] + best_t * d[i] for i in range(3)], -1)  # [S, H, W, 3]
    col = np.zeros(P.shape, dtype=np.float64)
    light = np.asarray(world["light"])
    for s_id in np.unique(surf):
        m = surf == s_id
        p = P[m]
        if s_id < n_obj:
            obj = objs[s_id]
            cs, sn = math.cos(obj["yaw"]), math.sin(obj["yaw"])
            q = p - np.asarray(obj["center"])
            ql = np.stack([cs * q[:, 0] + sn * q[:, 1], -sn * q[:, 0] + cs * q[:, 1], q[:, 2]], 1)
            nl = _normal_local(obj, ql)
            n = np.stack([cs * nl[:, 0] - sn * nl[:, 1], sn * nl[:, 0] + cs * nl[:, 1], nl[:, 2]], 1)
            alb = _eval_texture(obj["texture"], ql)
        else:
            r_id = int(s_id - n_obj)
            n = np.broadcast_to(_ROOM_NORMALS[r_id], p.shape)
            alb = _room_albedo(world, r_id, p)
        lv = light - p
        dist = np.linalg.norm(lv, axis=1)
        ndotl = np.clip(np.sum(n * lv, axis=1) / np.maximum(dist, 1e-6), 0.0, 1.0)
        shade = world["ambient"] + world["diffuse"] * ndotl / (1.0 + 0.04 * dist * dist)
        col[m] = alb * shade[:, None]
    rgb = np.clip(col[1:].mean(axis=0), 0.0, 1.0)
    return {"rgb": rgb, "depth": best_t[0].astype(np.float32), "surface": surf[0]}


# --------------------------------------------------------------------------------------------------------------
# GT labels and the SIMULATED segmenter
# --------------------------------------------------------------------------------------------------------------

def _surface_tables(world: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per surface index: GT class, GT thing instance id (0 for stuff), consistent segment id."""
    objs = world["objects"]
    ri = world["room_ids"]
    cls = [o["cls"] for o in objs] + [_WALL] * 4 + [_FLOOR, _CEILING]
    inst = [o["instance_id"] for o in objs] + [0] * 6
    seg = [o["segment_id"] for o in objs] + [ri["wall"]] * 4 + [ri["floor"], ri["ceiling"]]
    return np.array(cls), np.array(inst), np.array(seg)


def _segment_classes(world: dict) -> dict[int, int]:
    out = {o["segment_id"]: o["cls"] for o in world["objects"]}
    ri = world["room_ids"]
    out.update({ri["wall"]: _WALL, ri["floor"]: _FLOOR, ri["ceiling"]: _CEILING})
    return dict(sorted(out.items()))


def _smooth_warp(rng: np.random.Generator, H: int, W: int, amp: float) -> tuple[np.ndarray, np.ndarray]:
    """Row/col source indices of a smooth random displacement field with |offset| <= amp pixels."""
    cell = max(4, W // 20)
    gh, gw = H // cell + 2, W // cell + 2
    off = rng.uniform(-1, 1, size=(2, gh, gw))
    dy = ndimage.zoom(off[0], (H / gh, W / gw), order=1, mode="nearest")[:H, :W] * amp
    dx = ndimage.zoom(off[1], (H / gh, W / gw), order=1, mode="nearest")[:H, :W] * amp
    vv, uu = np.mgrid[0:H, 0:W]
    return (np.clip(np.rint(vv + dy), 0, H - 1).astype(np.int64),
            np.clip(np.rint(uu + dx), 0, W - 1).astype(np.int64))


def simulate_segmenter(seg: np.ndarray, seg_class: dict[int, int], object_segments: set[int], cfg: SynthConfig,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """SIMULATED segmenter for one frame: GT segment map -> noisy (segment ids, class ids, events).

    seg: [H, W] consistent GT segment ids (0 = void). Objects (not walls/floor/ceiling) may be dropped
    (-> void, or merged into the neighbour sharing the longest border) or have their class swapped for
    this frame; then all boundaries are jittered by a smooth random warp of at most `sim_boundary_px`.
    """
    out = seg.copy()
    frame_cls = dict(seg_class)
    events = []
    for sid in [int(s) for s in np.unique(seg) if int(s) in object_segments]:
        r_drop, r_void, r_conf, r_pick = rng.random(4)
        if r_drop < cfg.sim_drop_rate:
            mask = out == sid
            if r_void < cfg.sim_drop_to_void:
                out[mask] = 0
                events.append({"segment": sid, "event": "dropped_void"})
            else:
                ring = ndimage.binary_dilation(mask, iterations=1) & ~mask
                nb = out[ring]
                nb = nb[(nb != 0) & (nb != sid)]
                tgt = int(np.bincount(nb).argmax()) if nb.size else 0
                out[mask] = tgt
                events.append({"segment": sid, "event": "dropped_merged", "into": tgt})
        elif r_conf < cfg.sim_confuse_rate:
            true = seg_class[sid]
            pool = [c for c in (_CONFUSE_THING if is_thing(true) else _CONFUSE_STUFF) if c != true]
            new = int(pool[int(r_pick * len(pool)) % len(pool)])
            frame_cls[sid] = new
            events.append({"segment": sid, "event": "confused", "class": new})
    if cfg.sim_boundary_px > 0:
        H, W = seg.shape
        rows, cols = _smooth_warp(rng, H, W, cfg.sim_boundary_px)
        out = out[rows, cols]
    lut = np.zeros(int(max(max(frame_cls), int(out.max()))) + 1, dtype=np.int64)
    for sid, c in frame_cls.items():
        lut[sid] = c
    return out, lut[out], events


# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------

def _save_txt(path: Path, m: np.ndarray) -> None:
    np.savetxt(path, m, fmt="%.10f")


def _save_png(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr).save(path, format="PNG")


def _write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    from plyfile import PlyData, PlyElement

    v = np.empty(len(xyz), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"),
                                  ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    v["x"], v["y"], v["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    v["red"], v["green"], v["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    PlyData([PlyElement.describe(v, "vertex")]).write(str(path))


def _is_synthetic_scene(path: Path) -> bool:
    try:
        meta = json.loads((path / "scene_meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and meta.get("generator") == GENERATOR


def _meta_object(o: dict) -> dict:
    keep = ("index", "cls", "class_name", "is_thing", "instance_id", "segment_id", "shape", "center", "yaw",
            "half", "radius", "half_height", "support", "texture")
    out = {k: o[k] for k in keep if k in o}
    out["class_id"] = out.pop("cls")
    out["id"] = o["instance_id"] if o["is_thing"] else o["segment_id"]
    return out


def generate(out_dir: str | Path, cfg: SynthConfig = SynthConfig(), progress: bool = False) -> Path:
    """Write one synthetic scene (PanLift layout + SIMULATED segmenter outputs) to `out_dir`, atomically.

    A previous synthetic scene at `out_dir` is replaced; any other non-empty folder is refused.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not _is_synthetic_scene(out_dir))):
        raise InputError(f"{out_dir}: exists and is not a synthetic scene (no scene_meta.json from {GENERATOR}); "
                         f"choose a new or empty folder")
    if cfg.num_frames < 1 or cfg.width < 8 or cfg.height < 8:
        raise InputError(f"synthetic config: need num_frames >= 1 and an image of at least 8x8 pixels, got "
                         f"{cfg.num_frames} frames at {cfg.width}x{cfg.height}")
    world = build_world(cfg)
    K = intrinsics(cfg)
    poses = camera_path(cfg, world)
    W, H = cfg.width, cfg.height
    stems = [str(i) for i in range(cfg.num_frames)]
    test = stems[:: cfg.test_every]
    train = [s for s in stems if s not in set(test)]
    s_cls, s_inst, s_seg = _surface_tables(world)
    seg_class = _segment_classes(world)
    object_segments = {o["segment_id"] for o in world["objects"]}
    pts_rng = np.random.default_rng([int(cfg.seed), 23])
    per_frame_pts = int(math.ceil(cfg.num_points / max(len(train), 1)))
    xyz_all, rgb_all = [], []
    m2f_counter = 1
    events_all: dict[str, dict[str, list]] = {}

    with atomic_dir(out_dir, "synthetic scene") as tmp:
        for sub in ("color", "pose", "intrinsic", "rs_semantics", "rs_instance", "depth", "m2f_semantics",
                    "m2f_instance", f"{SIMULATED_CONSISTENT_DIR}/semantics", f"{SIMULATED_CONSISTENT_DIR}/instance"):
            (tmp / sub).mkdir(parents=True)
        K4 = np.eye(4)
        K4[:3, :3] = K
        _save_txt(tmp / "intrinsic" / "intrinsic_color.txt", K4)
        bar = progress_bar(len(stems), f"synthetic scene ({cfg.preset})", unit="view", enabled=progress)
        for i, stem in enumerate(stems):
            c2w = poses[i]
            view = render_view(world, K, c2w, W, H)
            rgb8 = (view["rgb"] * 255.0 + 0.5).astype(np.uint8)
            Image.fromarray(rgb8).save(tmp / "color" / f"{stem}.jpg", format="JPEG", quality=cfg.jpeg_quality)
            _save_txt(tmp / "pose" / f"{stem}.txt", c2w)
            surf = view["surface"]
            _save_png(tmp / "rs_semantics" / f"{stem}.png", s_cls[surf].astype(np.uint8))
            _save_png(tmp / "rs_instance" / f"{stem}.png", s_inst[surf].astype(np.uint16))
            np.save(tmp / "depth" / f"{stem}.npy", view["depth"])
            seg = s_seg[surf]

            # SIMULATED segmenter (a): multi-view consistent ids; (b): per-frame m2f-style ids
            rng_c = np.random.default_rng([int(cfg.seed), 101, i])
            ids_c, cls_c, ev_c = simulate_segmenter(seg, seg_class, object_segments, cfg, rng_c)
            _save_png(tmp / SIMULATED_CONSISTENT_DIR / "semantics" / f"{stem}.png", cls_c.astype(np.uint8))
            _save_png(tmp / SIMULATED_CONSISTENT_DIR / "instance" / f"{stem}.png", ids_c.astype(np.uint16))
            rng_m = np.random.default_rng([int(cfg.seed), 202, i])
            ids_m, cls_m, ev_m = simulate_segmenter(seg, seg_class, object_segments, cfg, rng_m)
            inst_m = np.zeros(ids_m.shape, dtype=np.uint16)
            for sid in np.unique(ids_m):
                m = ids_m == sid
                if sid == 0:
                    continue
                c = int(np.bincount(cls_m[m]).argmax())
                if is_thing(c):
                    if m2f_counter > np.iinfo(np.uint16).max:
                        raise InputError(f"{out_dir}: too many simulated m2f segments for uint16 ids; use fewer frames")
                    inst_m[m] = m2f_counter
                    m2f_counter += 1
            _save_png(tmp / "m2f_semantics" / f"{stem}.png", cls_m.astype(np.uint16))
            _save_png(tmp / "m2f_instance" / f"{stem}.png", inst_m)
            events_all[stem] = {"consistent": ev_c, "m2f": ev_m}

            if stem in train and cfg.num_points > 0:
                idx = pts_rng.choice(H * W, size=min(per_frame_pts, H * W), replace=False)
                v, u = np.divmod(idx, W)
                z = view["depth"][v, u].astype(np.float64)
                pc = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], 1)
                xyz_all.append(pc @ c2w[:3, :3].T + c2w[:3, 3])
                rgb_all.append(rgb8[v, u])
            bar.update(1)
        bar.close()
        xyz = np.concatenate(xyz_all)[: cfg.num_points] if xyz_all else np.zeros((0, 3))
        rgb = np.concatenate(rgb_all)[: cfg.num_points] if rgb_all else np.zeros((0, 3), np.uint8)
        xyz = xyz + pts_rng.normal(scale=cfg.point_jitter_m, size=xyz.shape)
        _write_ply(tmp / "points3d.ply", xyz, rgb)

        (tmp / "splits.json").write_text(json.dumps({"train": train, "test": test}, indent=2) + "\n")
        segs = {str(k): {"class_id": int(v), "class_name": PANLIFT_CLASSES[v]} for k, v in seg_class.items()}
        (tmp / SIMULATED_CONSISTENT_DIR / "segments.json").write_text(json.dumps(segs, indent=2) + "\n")
        sim_note = ("SIMULATED segmenter output: ground truth corrupted by boundary jitter, dropped instances "
                    "and per-frame class confusions; not a real model's prediction")
        (tmp / SIMULATED_CONSISTENT_DIR / "manifest.json").write_text(json.dumps(
            {"kind": "simulated", "note": sim_note, "generator": GENERATOR, "seed": cfg.seed,
             "noise": _noise_settings(cfg)}, indent=2) + "\n")
        meta = {
            "generator": GENERATOR,
            "generator_version": GENERATOR_VERSION,
            "preset": cfg.preset,
            "seed": cfg.seed,
            "config": dataclasses.asdict(cfg),
            "world_up": "+z",
            "room_size_m": world["room"],
            "room_segment_ids": world["room_ids"],
            "light": {"position": world["light"], "ambient": world["ambient"], "diffuse": world["diffuse"]},
            "num_things": int(sum(o["is_thing"] for o in world["objects"])),
            "objects": [_meta_object(o) for o in world["objects"]],
            "simulated_segmenter": {
                "note": sim_note,
                "consistent_dir": SIMULATED_CONSISTENT_DIR,
                "per_frame_dirs": ["m2f_semantics", "m2f_instance"],
                "noise": _noise_settings(cfg),
                "events": events_all,
            },
        }
        (tmp / "scene_meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out_dir


def _noise_settings(cfg: SynthConfig) -> dict:
    return {"drop_rate": cfg.sim_drop_rate, "drop_to_void": cfg.sim_drop_to_void,
            "confuse_rate": cfg.sim_confuse_rate, "boundary_px": cfg.sim_boundary_px}


def synth_command(out_dir: str | Path, preset: str = "demo", seed: Optional[int] = None, **overrides: Any) -> Path:
    """`python -m pipeline synth`: a preset's scene (with SIMULATED segmenter outputs) into OUT_DIR; prints the
    time taken. `overrides` are SynthConfig fields."""
    cfg = make_config(preset, seed, **overrides)
    t0 = time.perf_counter()
    path = generate(out_dir, cfg, progress=True)
    dt = time.perf_counter() - t0
    print(f"synthetic scene '{cfg.preset}' (seed {cfg.seed}, {cfg.num_frames} frames at {cfg.width}x{cfg.height}) "
          f"written to {path} in {dt:.1f} s")
    return path
