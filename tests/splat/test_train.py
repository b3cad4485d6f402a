"""splat.train / splat.gaussians / splat.ply on the tiny synthetic scene: learning, the panoptic regulariser's
gradients, determinism, resume after a SIGKILL, densification through the trainer, the scene protocol and the 3DGS
PLY layout. The strategies on their own: test_strategy.py."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.common.io import InputError
from pipeline.common.labels import gt_panoptic_ids
from pipeline.common.protocols import PosedFrame, SplatScene
from splat.gaussians import PARAM_NAMES, init_gaussians, knn_scales, points_for_scene, read_points_ply
from splat.ply import load_ply, save_ply, standard_field_names
from splat.checkpoint import config_dict, load_checkpoint
from splat.train import PRESETS, TrainConfig, _instance_targets, _pan_loss, _render_views, evaluate_psnr, train
from splat.render import Cameras


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: bit-reproducible and no OpenMP stalls on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    from pipeline.scene import load_scene
    from pipeline.synth import generate, make_config

    root = generate(tmp_path_factory.mktemp("splat_scene") / "tiny", make_config("tiny", seed=0))
    scene = load_scene(root)
    maps = {s: gt_panoptic_ids(scene.load_semantics(s), scene.load_instance(s))[0] for s in scene.train}
    return scene, maps


def _cfg(**kw) -> TrainConfig:
    """The tiny preset, single-threaded (bit-reproducible), no densification unless asked."""
    base = dict(iterations=30, refine_start=10_000, refine_stop=10_000, init_points=1500, log_every=1)
    return dataclasses.replace(PRESETS["tiny"], **{**base, **kw})


def _params(g) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in g.items()}


# ---------------------------------------------------------------------------------------------------------
# learning
# ---------------------------------------------------------------------------------------------------------


def test_loss_falls_and_psnr_rises(tiny):
    scene, maps = tiny
    cfg = _cfg(iterations=60)
    xyz, rgb, src = points_for_scene(scene, cfg.init_points, cfg.seed)
    assert src == "ply"
    g0 = init_gaussians(xyz, rgb, sh_degree=cfg.sh_degree, seed=cfg.seed)
    psnr0, _ = evaluate_psnr(g0, scene, scene.test)
    res = train(scene, cfg, instance_maps=maps, progress=False)
    h = res.history
    assert [e["step"] for e in h] == list(range(1, 61))
    first = np.mean([e["loss"] for e in h[:10]])
    last = np.mean([e["loss"] for e in h[-10:]])
    assert last < 0.8 * first, (first, last)
    assert np.mean([e["l_pan"] for e in h[-10:]]) < np.mean([e["l_pan"] for e in h[:10]])
    assert np.mean([e["psnr"] for e in h[-10:]]) > np.mean([e["psnr"] for e in h[:10]]) + 1.0
    assert res.test_psnr > psnr0 + 1.0, (psnr0, res.test_psnr)
    assert set(res.test_psnr_per_view) == set(scene.test)
    assert res.test_psnr == pytest.approx(np.mean(list(res.test_psnr_per_view.values())))
    for e in h:
        assert set(e) >= {"step", "loss", "l_rgb", "l_pan", "psnr", "num_gaussians", "time"}
        assert e["loss"] == pytest.approx(e["l_rgb"] + cfg.lambda_pan * e["l_pan"], rel=1e-5)


def test_evaluate_psnr_is_mse_over_all_pixels(tiny):
    scene, _ = tiny
    g = init_gaussians(*points_for_scene(scene, 800, 0)[:2], sh_degree=0)
    with torch.no_grad():
        g["opacities"].fill_(-30.0)  # invisible: the render is the black background
    mean, per = evaluate_psnr(g, scene, scene.test[:2])
    for s in scene.test[:2]:
        mse = float(np.mean(scene.load_rgb(s).astype(np.float64) ** 2))
        assert per[s] == pytest.approx(-10 * math.log10(mse), abs=1e-4)
    assert mean == pytest.approx(np.mean(list(per.values())))


# ---------------------------------------------------------------------------------------------------------
# panoptic regulariser
# ---------------------------------------------------------------------------------------------------------


def _pan_grads(scene, maps, void_all: bool = False):
    stems = scene.train[:2]
    cams = Cameras.from_frames([scene.frame(s) for s in stems])
    g = init_gaussians(*points_for_scene(scene, 1500, 0)[:2], sh_degree=0)
    with torch.no_grad():
        g["pan"].uniform_(0, 1, generator=torch.Generator().manual_seed(1))
    use = {s: (np.zeros_like(maps[s]) if void_all else maps[s]) for s in stems}
    target, valid = _instance_targets(use, stems, cams.width, cams.height)
    feats, _ = _render_views(g, cams, 0, torch.zeros(3), True, "auto")
    loss = _pan_loss(feats[..., 3:], target, valid)
    loss.backward()
    return loss, g


def test_panoptic_loss_reaches_geometry_and_pan_colours(tiny):
    scene, maps = tiny
    loss, g = _pan_grads(scene, maps)
    assert loss > 0
    for k in ("means", "scales", "opacities", "quats", "pan"):
        assert g[k].grad is not None and g[k].grad.abs().sum() > 0, k
    assert g["sh0"].grad is None or not g["sh0"].grad.any()  # the RGB colours play no part in L_pan


def test_void_pixels_do_not_contribute(tiny):
    scene, maps = tiny
    loss, g = _pan_grads(scene, maps, void_all=True)
    assert float(loss.detach()) == 0.0
    assert all(g[k].grad is None or g[k].grad.abs().sum() == 0 for k in ("means", "pan", "opacities"))
    # hand-computed masked L1: only the valid pixel counts, averaged over its 3 channels
    pred = torch.tensor([[[[0.2, 0.4, 0.6], [1.0, 1.0, 1.0]]]])  # [1, 1, 2, 3]
    tgt = torch.tensor([[[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]])
    valid = torch.tensor([[[[True], [False]]]])
    assert float(_pan_loss(pred, tgt, valid)) == pytest.approx(0.4)


def test_no_instance_maps_no_panoptic_term(tiny):
    scene, maps = tiny
    without = train(scene, _cfg(iterations=5), progress=False)
    assert all(e["l_pan"] == 0.0 for e in without.history)
    assert torch.all(without.gaussians["pan"] == 0.5)  # never optimised
    assert all(e["loss"] == e["l_rgb"] for e in without.history)
    with_maps = train(scene, _cfg(iterations=5), instance_maps=maps, progress=False)
    assert not torch.all(with_maps.gaussians["pan"] == 0.5)
    assert all(e["l_pan"] > 0 for e in with_maps.history)


def test_missing_instance_map_is_an_input_error(tiny):
    scene, maps = tiny
    partial = dict(list(maps.items())[1:])
    with pytest.raises(ValueError, match="instance maps missing"):
        train(scene, _cfg(iterations=1), instance_maps=partial, progress=False)


# ---------------------------------------------------------------------------------------------------------
# determinism, checkpoints
# ---------------------------------------------------------------------------------------------------------

_DENSIFY = dict(refine_start=10, refine_stop=35, refine_every=10, grow_grad2d=2e-5)


def test_two_runs_are_identical(tiny):
    scene, maps = tiny
    a = train(scene, _cfg(**_DENSIFY), instance_maps=maps, progress=False)
    b = train(scene, _cfg(**_DENSIFY), instance_maps=maps, progress=False)
    assert a.num_gaussians != 1500  # densification (and its random split offsets) took part
    for k in PARAM_NAMES:
        assert torch.equal(a.gaussians[k], b.gaussians[k]), k
    c = train(scene, _cfg(seed=1, **_DENSIFY), instance_maps=maps, progress=False)
    assert not torch.equal(a.gaussians["means"][:100], c.gaussians["means"][:100])


# the killed run: a separate process, trained exactly as in-process, SIGKILLed from outside
_CHILD = """
import json, sys
from pipeline.common.labels import gt_panoptic_ids
from pipeline.scene import load_scene
from splat.train import TrainConfig, train
scene = load_scene(sys.argv[1])
maps = {s: gt_panoptic_ids(scene.load_semantics(s), scene.load_instance(s))[0] for s in scene.train}
train(scene, TrainConfig(**json.loads(sys.argv[2])), instance_maps=maps, out_dir=sys.argv[3], progress=False)
"""


def _train_and_sigkill(scene, cfg: TrainConfig, out: Path) -> int:
    """Train in a subprocess, SIGKILL it as soon as its first checkpoint exists; the checkpoint's step."""
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(scene.root), json.dumps(config_dict(cfg)), str(out)],
                            cwd=Path(__file__).resolve().parents[2], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while not (out / "ckpt.pt").is_file():
            if proc.poll() is not None:
                pytest.fail(f"the training process ended before its first checkpoint: {proc.stderr.read()[-2000:]}")
            if time.time() > deadline:
                pytest.fail("no checkpoint within 300 s")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return int(load_checkpoint(out / "ckpt.pt")["step"])


def test_resume_after_sigkill_equals_uninterrupted(tiny, tmp_path):
    scene, maps = tiny
    cfg = _cfg(iterations=40, checkpoint_every=5, **_DENSIFY)
    ref = train(scene, cfg, instance_maps=maps, out_dir=tmp_path / "ref", progress=False)
    killed_at = _train_and_sigkill(scene, cfg, tmp_path / "run")
    assert 0 < killed_at < 40 and killed_at % 5 == 0
    assert not (tmp_path / "run" / "gaussians.ply").exists()  # it died mid-run
    res = train(scene, cfg, instance_maps=maps, out_dir=tmp_path / "run", progress=False)
    assert res.resumed_from == killed_at
    for k in PARAM_NAMES:
        assert torch.equal(ref.gaussians[k], res.gaussians[k]), k
    assert [e["loss"] for e in res.history] == [e["loss"] for e in ref.history]
    assert res.test_psnr == ref.test_psnr
    # a finished run resumes at its end: nothing is retrained
    again = train(scene, cfg, instance_maps=maps, out_dir=tmp_path / "run", progress=False)
    assert again.resumed_from == 40 and torch.equal(again.gaussians["means"], ref.gaussians["means"])
    # another config does not pick the checkpoint up
    other = train(scene, dataclasses.replace(cfg, iterations=3), instance_maps=maps, out_dir=tmp_path / "run",
                  progress=False)
    assert other.resumed_from is None
    for name in ("gaussians.ply", "history.json", "ckpt.pt"):
        assert (tmp_path / "ref" / name).is_file()


def test_corrupt_checkpoint_is_an_input_error(tiny, tmp_path):
    scene, maps = tiny
    (tmp_path / "ckpt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="ckpt.pt: corrupt or unreadable checkpoint"):
        train(scene, _cfg(iterations=2), instance_maps=maps, out_dir=tmp_path, progress=False)


# ---------------------------------------------------------------------------------------------------------
# densification
# ---------------------------------------------------------------------------------------------------------


def _check_aligned(g):
    n = len(g["means"])
    for k in PARAM_NAMES:
        assert g[k].shape[0] == n, (k, g[k].shape)


def test_default_strategy_grows_and_keeps_attributes_aligned(tiny):
    scene, maps = tiny
    res = train(scene, _cfg(iterations=21, refine_start=5, refine_stop=30, refine_every=5, grow_grad2d=1e-6),
                instance_maps=maps, progress=False)
    ns = [e["num_gaussians"] for e in res.history]
    assert ns[0] == 1500 and ns[-1] > 1500
    _check_aligned(res.gaussians)
    assert res.gaussians["pan"].shape == (res.num_gaussians, 3)


def test_opacity_reset_happens(tiny):
    """gsplat 1.5.3's DefaultStrategy never resets opacities; the trainer does, at reset_every while densifying."""
    scene, maps = tiny
    reset = train(scene, _cfg(iterations=11, reset_every=10, refine_stop=100), instance_maps=maps, progress=False)
    assert float(torch.sigmoid(reset.gaussians["opacities"].detach()).max()) <= 0.01 + 1e-6  # reset after the last step
    plain = train(scene, _cfg(iterations=11), instance_maps=maps, progress=False)
    assert float(torch.sigmoid(plain.gaussians["opacities"].detach()).max()) > 0.05


def test_mcmc_strategy_on_cpu(tiny):
    scene, maps = tiny
    res = train(scene, _cfg(iterations=12, strategy="mcmc", refine_start=4, refine_stop=30, refine_every=5,
                            max_gaussians=1600), instance_maps=maps, progress=False)
    ns = [e["num_gaussians"] for e in res.history]
    assert ns[0] == 1500 and ns[-1] == 1600  # +5 % at step 5 (1575), then capped at step 10
    _check_aligned(res.gaussians)


# ---------------------------------------------------------------------------------------------------------
# what train reads from a scene: the SplatScene protocol, nothing else
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Frame:
    stem: str
    K: np.ndarray
    c2w: np.ndarray
    width: int
    height: int
    depth: Path | None


class _MinimalScene:
    """Exactly the members SplatScene declares, over arrays held in memory (no pipeline.scene behind it)."""

    def __init__(self, scene):
        self.root = Path("in-memory")
        self.train, self.test, self.points = list(scene.train), list(scene.test), scene.points
        self._frames = {s: _Frame(s, f.K, f.c2w, f.width, f.height, f.depth) for s, f in scene.frames.items()}
        self._rgb = {s: scene.load_rgb(s) for s in scene.frames}
        self._depth = {s: scene.load_depth(s) for s in scene.frames}

    @property
    def train_frames(self):
        return [self._frames[s] for s in self.train]

    def frame(self, stem):
        return self._frames[stem]

    def load_rgb(self, stem):
        return self._rgb[stem]

    def load_depth(self, stem):
        return self._depth[stem]


def test_train_needs_only_the_scene_protocol(tiny):
    scene, maps = tiny
    scene = dataclasses.replace(scene, points=None)  # initial points from depth: every protocol member is read
    mini = _MinimalScene(scene)
    assert isinstance(scene, SplatScene) and isinstance(mini, SplatScene) and not isinstance(maps, SplatScene)
    assert all(isinstance(f, PosedFrame) for f in scene.frames.values())
    cfg = _cfg(iterations=4)
    a = train(scene, cfg, instance_maps=maps, progress=False)
    b = train(mini, cfg, instance_maps=maps, progress=False)
    assert a.init_source == b.init_source == "depth"
    for k in PARAM_NAMES:
        assert torch.equal(a.gaussians[k], b.gaussians[k]), k
    assert a.test_psnr == b.test_psnr


def test_train_leaves_the_thread_count_to_its_caller(tiny):
    """Threads are set once per run by the pipeline (torch_threads); the trainer never changes them."""
    scene, maps = tiny
    assert torch.get_num_threads() == 1  # the module fixture
    no_test = dataclasses.replace(scene, test=[])
    res = train(no_test, _cfg(iterations=0), instance_maps=maps, progress=False)
    assert res.steps == 0 and res.test_psnr is None and torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="instance maps missing"):
        train(no_test, _cfg(iterations=0), instance_maps={}, progress=False)
    assert torch.get_num_threads() == 1


# ---------------------------------------------------------------------------------------------------------
# initialisation
# ---------------------------------------------------------------------------------------------------------


def test_init_gaussians_shapes_and_knn_scale():
    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3], [10, 10, 10]], np.float64)
    g = init_gaussians(pts, np.full((5, 3), 0.25), sh_degree=2, init_opacity=0.2, init_scale=0.5)
    assert g["shN"].shape == (5, 8, 3) and g["sh0"].shape == (5, 1, 3) and g["pan"].shape == (5, 3)
    assert torch.allclose(torch.sigmoid(g["opacities"]), torch.full((5,), 0.2))
    assert torch.allclose(g["sh0"] * 0.28209479177387814 + 0.5, torch.full((5, 1, 3), 0.25), atol=1e-6)
    # point 0's three nearest neighbours are at 1, 2 and 3
    assert math.exp(float(g["scales"][0, 0].detach())) == pytest.approx(0.5 * 2.0, rel=1e-6)
    assert knn_scales(pts)[0] == pytest.approx(2.0)
    again = init_gaussians(pts, None, seed=3)
    assert torch.equal(again["quats"], init_gaussians(pts, None, seed=3)["quats"])


def test_points_for_scene_sources(tiny):
    scene, _ = tiny
    xyz, rgb, src = points_for_scene(scene, 300, 0)
    assert src == "ply" and xyz.shape == (300, 3) and rgb.shape == (300, 3)
    ply_xyz, _ = read_points_ply(scene.points)
    no_ply = dataclasses.replace(scene, points=None)
    dxyz, drgb, dsrc = points_for_scene(no_ply, 2000, 0)
    assert dsrc == "depth" and dxyz.shape == (2000, 3) and (drgb >= 0).all() and (drgb <= 1).all()
    # back-projected depth lies on the same surfaces as the scene's point cloud (+0.5 pixel centres)
    from scipy.spatial import cKDTree

    d_depth = cKDTree(ply_xyz).query(dxyz)[0]
    bare = dataclasses.replace(no_ply, frames={s: dataclasses.replace(f, depth=None) for s, f in scene.frames.items()})
    rxyz, rrgb, rsrc = points_for_scene(bare, 2000, 0)
    assert rsrc == "random" and rrgb is None
    d_rand = cKDTree(ply_xyz).query(rxyz)[0]
    assert np.median(d_depth) < 0.25 * np.median(d_rand)
    pm = np.random.default_rng(0).random((4, 5, 3)).astype(np.float32)
    pm[0, 0] = np.nan
    pxyz, _, psrc = points_for_scene(bare, 100, 0, pointmap=pm)
    assert psrc == "pointmap" and pxyz.shape == (19, 3)


# ---------------------------------------------------------------------------------------------------------
# PLY
# ---------------------------------------------------------------------------------------------------------

_3DGS_DEG3 = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
              + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def test_ply_round_trip_and_header(tmp_path):
    from plyfile import PlyData

    rng = np.random.default_rng(0)
    g = init_gaussians(rng.random((40, 3)), rng.random((40, 3)), sh_degree=3)
    with torch.no_grad():
        g["shN"].normal_(generator=torch.Generator().manual_seed(0))
        g["pan"].uniform_(0, 1, generator=torch.Generator().manual_seed(1))
    extra = {"instance_id": np.arange(40, dtype=np.int64), "class_id": np.full(40, 7, np.uint8),
             "label_confidence": rng.random(40).astype(np.float32), "probs": rng.random((40, 2)).astype(np.float32)}
    path = save_ply(tmp_path / "g.ply", g, extra=extra)
    names = list(PlyData.read(str(path))["vertex"].data.dtype.names)
    assert names[: len(_3DGS_DEG3)] == _3DGS_DEG3 == standard_field_names(15)
    assert names[len(_3DGS_DEG3):] == ["pan_0", "pan_1", "pan_2", "instance_id", "class_id", "label_confidence",
                                       "probs_0", "probs_1"]
    h, ex = load_ply(path)
    assert set(h) == set(PARAM_NAMES)
    for k in PARAM_NAMES:
        assert torch.equal(g[k].detach(), h[k]), k
    assert set(ex) == set(extra)
    for k, v in extra.items():
        assert np.array_equal(ex[k], v), k
    # f_rest is channel-major (3DGS): f_rest_{c*K + k} = shN[:, k, c]
    v = PlyData.read(str(path))["vertex"]
    assert np.array_equal(v["f_rest_16"], g["shN"][:, 1, 1].detach().numpy())  # c = 1, k = 1, K = 15
    assert not list(tmp_path.glob(".*tmp*"))  # atomic: no temporary left behind


def test_ply_without_pan_and_degree_zero(tmp_path):
    g = dict(init_gaussians(np.random.default_rng(0).random((5, 3)), None, sh_degree=0))
    g.pop("pan")
    h, ex = load_ply(save_ply(tmp_path / "g.ply", g))
    assert "pan" not in h and ex == {} and h["shN"].shape == (5, 0, 3)


def test_ply_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_ply(tmp_path / "nope.ply")
    from plyfile import PlyData, PlyElement

    pts = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1")])
    PlyData([PlyElement.describe(pts, "vertex")]).write(str(tmp_path / "pc.ply"))
    with pytest.raises(InputError) as e:
        load_ply(tmp_path / "pc.ply")
    assert "not a 3DGS Gaussian PLY" in str(e.value) and "f_dc_0" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "junk.ply").write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot read"):
        load_ply(tmp_path / "junk.ply")
