"""LUDVIG uplifting, panoptic rendering and labelled export, checked against an explicit per-pixel loop."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pipeline.common.io import InputError
from splat.render import Cameras
from uplift import UpliftResult, export_labelled, instance_classes, load_labelled, relabel, render_panoptic, uplift, write_predictions

# gsplat 1.5.3 compositing rules (RasterizeToPixels3DGSFwd.cu): α = min(0.999, o·G), skip α < 1/255, stop before
# the Gaussian that would bring T to <= 1e-4. The brute force below restates them on its own.
ALPHA_MIN, ALPHA_MAX, T_MIN = 1.0 / 255.0, 0.999, 1e-4
W, H = 16, 12


# ------------------------------------------------------------------------------------------------
# a tiny scene and the brute-force reference
# ------------------------------------------------------------------------------------------------


def _look_at_w2c(eye, target):
    """OpenCV w2c looking from eye to target (y down)."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, -1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])  # rows: camera axes in world
    w2c = np.eye(4)
    w2c[:3, :3] = R
    w2c[:3, 3] = -R @ eye
    return w2c


def _cameras(eyes, w=W, h=H, f=14.0):
    vm = np.stack([_look_at_w2c(e, [0.0, 0.0, 3.0]) for e in eyes])
    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], float)
    return Cameras(viewmats=torch.tensor(vm, dtype=torch.float32),
                   Ks=torch.tensor(np.repeat(K[None], len(eyes), 0), dtype=torch.float32), width=w, height=h)


def _gaussians(n=36, seed=0):
    """Gaussians in front of the cameras (around z = 3), some stacked along one ray so that T < 1e-4 stops."""
    rng = np.random.default_rng(seed)
    means = np.c_[rng.uniform(-0.9, 0.9, n), rng.uniform(-0.7, 0.7, n), rng.uniform(2.5, 3.8, n)]
    means[:4] = [[0.05, 0.02, 2.6], [0.05, 0.02, 2.9], [0.05, 0.02, 3.2], [0.05, 0.02, 3.5]]  # one stacked column
    quats = rng.normal(size=(n, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    scales = np.log(rng.uniform(0.06, 0.25, (n, 3)))
    scales[:4] = math.log(0.3)
    opac = rng.uniform(0.2, 0.97, n)
    opac[:4] = 0.985
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return {"means": t(means), "quats": t(quats), "scales": t(scales),
            "opacities": t(np.log(opac / (1 - opac))), "sh0": torch.zeros(n, 1, 3), "shN": torch.zeros(n, 0, 3)}


def _brute_weights(g, cams, eps2d=0.3, near=0.01):
    """[C, N, H, W] float64 α·T per (view, Gaussian, pixel) from an explicit per-pixel loop (gsplat rules),
    and the number of pixels where the T < 1e-4 rule stopped the walk."""
    means = g["means"].double().numpy()
    q = g["quats"].double().numpy()
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    s = np.exp(g["scales"].double().numpy())
    o = 1.0 / (1.0 + np.exp(-g["opacities"].double().numpy()))
    w_, x_, y_, z_ = q.T
    R = np.stack([1 - 2 * (y_ * y_ + z_ * z_), 2 * (x_ * y_ - w_ * z_), 2 * (x_ * z_ + w_ * y_),
                  2 * (x_ * y_ + w_ * z_), 1 - 2 * (x_ * x_ + z_ * z_), 2 * (y_ * z_ - w_ * x_),
                  2 * (x_ * z_ - w_ * y_), 2 * (y_ * z_ + w_ * x_), 1 - 2 * (x_ * x_ + y_ * y_)], -1).reshape(-1, 3, 3)
    M = R * s[:, None, :]
    cov = M @ M.transpose(0, 2, 1)
    C, N = cams.viewmats.shape[0], len(means)
    out = np.zeros((C, N, cams.height, cams.width))
    stops = 0
    for c in range(C):
        vm = cams.viewmats[c].double().numpy()
        K = cams.Ks[c].double().numpy()
        pc = means @ vm[:3, :3].T + vm[:3, 3]
        covc = vm[:3, :3] @ cov @ vm[:3, :3].T
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        mean2, conic = [], []
        for i in range(N):
            x, y, z = pc[i]
            J = np.array([[fx / z, 0, -fx * x / z**2], [0, fy / z, -fy * y / z**2]])
            c2 = J @ covc[i] @ J.T + eps2d * np.eye(2)
            mean2.append((fx * x / z + cx, fy * y / z + cy))
            conic.append(np.linalg.inv(c2))
        order = np.argsort(pc[:, 2], kind="stable")
        for py in range(cams.height):
            for px in range(cams.width):
                T = 1.0
                for i in order:
                    if pc[i, 2] <= near:
                        continue
                    d = np.array([px + 0.5, py + 0.5]) - mean2[i]
                    power = -0.5 * d @ conic[i] @ d
                    a = min(ALPHA_MAX, o[i] * math.exp(power))
                    if a < ALPHA_MIN:
                        continue
                    t_next = T * (1 - a)
                    if t_next <= T_MIN:
                        stops += 1
                        break
                    out[c, i, py, px] = a * T
                    T = t_next
    return out, stops


@pytest.fixture(scope="module")
def scene():
    g = _gaussians()
    cams = _cameras([[0.0, 0.0, 0.0], [0.6, -0.2, 0.3], [-0.5, 0.3, 0.2]])
    rng = np.random.default_rng(1)
    labels = [rng.choice([0, 3, 7, 65535], size=(H, W), p=[0.2, 0.3, 0.3, 0.2]) for _ in range(3)]
    wts, stops = _brute_weights(g, cams)
    assert stops > 5, "the tiny scene must exercise the transmittance stop"
    return g, cams, labels, wts


def _expected(wts, labels, ids, ignore=0):
    """Brute-force numerator [N, K] and denominator [N]."""
    num = np.stack([sum((wts[c] * (labels[c] == k)).sum((1, 2)) for c in range(len(labels))) for k in ids], 1)
    den = sum((wts[c] * (labels[c] != ignore if ignore is not None else 1)).sum((1, 2)) for c in range(len(labels)))
    return num, den


# ------------------------------------------------------------------------------------------------
# uplift
# ------------------------------------------------------------------------------------------------


def test_brute_force_reference_exercises_all_rules(scene):
    from splat import rasterize_torch as rt

    assert (rt.ALPHA_MIN, rt.ALPHA_MAX, rt.T_STOP) == (ALPHA_MIN, ALPHA_MAX, T_MIN), "the rasteriser's rules changed"
    g, cams, labels, wts = scene
    # the stacked column saturates the centre pixel: the Gaussians behind the front two are cut off there
    assert wts[0, 0, 6, 8] > 0.9 and wts[0, 2, 6, 8] == 0 and wts[0, 3, 6, 8] == 0
    assert (wts > 0).sum() > 200 and ((wts > 0) & (wts < 0.01)).any()


@pytest.mark.parametrize("method", ["direct", "grad"])
def test_uplift_matches_per_pixel_loop(scene, method):
    g, cams, labels, wts = scene
    res = uplift(g, cams, labels, chunk_channels=2, method=method, progress=False)
    assert res.label_ids.tolist() == [3, 7, 65535]
    num, den = _expected(wts, labels, [3, 7, 65535])
    np.testing.assert_allclose(res.den, den, rtol=1e-5, atol=1e-6)
    exp_w = np.divide(num, den[:, None], out=np.zeros_like(num), where=den[:, None] > 0)
    np.testing.assert_allclose(res.weights, exp_w, atol=1e-5)
    lab = den > 0
    assert np.array_equal(res.label[lab], np.array([3, 7, 65535])[exp_w[lab].argmax(1)])
    np.testing.assert_allclose(res.confidence[lab], exp_w[lab].max(1), atol=1e-5)


def test_ignore_label_none_counts_every_pixel(scene):
    g, cams, labels, wts = scene
    res = uplift(g, cams, labels, ignore_label=None, progress=False)
    assert res.label_ids.tolist() == [0, 3, 7, 65535]
    num, den = _expected(wts, labels, [0, 3, 7, 65535], ignore=None)
    np.testing.assert_allclose(res.den, den, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.weights * res.den[:, None], num, rtol=1e-5, atol=1e-6)
    # ignoring label 7 instead: its pixels vote for nothing and leave the denominator
    res7 = uplift(g, cams, labels, ignore_label=7, progress=False)
    num7, den7 = _expected(wts, labels, [0, 3, 65535], ignore=7)
    assert res7.label_ids.tolist() == [0, 3, 65535]
    np.testing.assert_allclose(res7.den, den7, rtol=1e-5, atol=1e-6)


def test_unlabelled_gaussians_are_explicit(scene):
    g, cams, labels, wts = scene
    g2 = {k: v.clone() for k, v in g.items()}
    g2["means"][5] = torch.tensor([0.0, 0.0, -5.0])  # behind every camera
    only_void = [np.zeros_like(l) for l in labels]
    only_void[0][:, :] = 3
    only_void[0][:, W // 2:] = 0  # right half of view 0 votes for nothing
    res = uplift(g2, cams, only_void, progress=False)
    assert res.label[5] == -1 and res.confidence[5] == 0 and res.den[5] == 0 and not res.weights[5].any()
    wts0 = wts[0][:, :, : W // 2].sum((1, 2))
    unseen = (wts0 == 0) & (np.arange(len(wts0)) != 5)
    assert unseen.any(), "test scene should have Gaussians only the ignored half sees"
    assert (res.label[unseen] == -1).all() and not res.weights[unseen].any()
    seen = wts0 > 1e-6
    assert (res.label[seen] == 3).all() and np.allclose(res.weights[seen, 0], 1.0)


@pytest.mark.parametrize("method", ["direct", "grad"])
def test_topk_equals_dense_topk(scene, method):
    g, cams, labels, _ = scene
    rng = np.random.default_rng(3)
    many = [rng.integers(0, 40, size=(H, W)) * 101 for _ in range(3)]  # ~39 labels with large, sparse ids
    dense = uplift(g, cams, many, chunk_channels=7, method="direct", progress=False)
    sparse = uplift(g, cams, many, chunk_channels=7, topk=3, method=method, progress=False)
    assert sparse.weights is None and sparse.topk_ids.shape == (len(dense.den), 3)
    np.testing.assert_allclose(sparse.den, dense.den, rtol=1e-5, atol=1e-6)
    order = np.argsort(-dense.weights, axis=1, kind="stable")[:, :3]
    top_w = np.take_along_axis(dense.weights, order, 1)
    np.testing.assert_allclose(sparse.topk_weights, top_w, atol=1e-5)
    filled = top_w > 1e-6
    assert np.array_equal(sparse.topk_ids[filled], dense.label_ids[order][filled])
    assert (sparse.topk_ids[~filled] == -1).all()
    assert np.array_equal(sparse.label, dense.label)
    # channel_block rebuilds the sparse distribution in dense layout
    blk = sparse.channel_block(0, dense.num_labels).numpy()
    np.testing.assert_allclose(np.sort(blk, 1)[:, ::-1][:, :3], top_w, atol=1e-5)


def test_relabel_large_ids_and_num_labels():
    a = np.array([[0, 65535], [40000, 5]])
    ids, dense = relabel([a, np.array([[5, 5], [0, 0]])], ignore_label=0)
    assert ids.tolist() == [5, 40000, 65535]
    assert dense[0].tolist() == [[-1, 2], [1, 0]] and dense[1].tolist() == [[0, 0], [-1, -1]]
    ids, dense = relabel([np.array([[1, 3]])], ignore_label=0, num_labels=5)
    assert ids.tolist() == [1, 2, 3, 4] and dense[0].tolist() == [[0, 2]]
    with pytest.raises(ValueError, match="num_labels"):
        relabel([np.array([[9]])], num_labels=5)
    with pytest.raises(ValueError, match="negative"):
        relabel([np.array([[-1]])])


def test_uplift_rejects_mismatched_label_maps(scene):
    g, cams, labels, _ = scene
    with pytest.raises(ValueError, match="unknown uplift method"):
        uplift(g, cams, labels, method="magic", progress=False)
    with pytest.raises(ValueError, match="torch backend"):
        uplift(g, cams, labels, method="direct", backend="gsplat", progress=False)
    with pytest.raises(ValueError, match="one label map per"):
        uplift(g, cams, labels[:2], progress=False)
    with pytest.raises(ValueError, match="resize the labels"):
        uplift(g, cams, [l[:, :-1] for l in labels], progress=False)


def test_result_save_load_round_trip(tmp_path, scene):
    g, cams, labels, _ = scene
    for topk in (None, 2):
        res = uplift(g, cams, labels, topk=topk, progress=False)
        res.save(tmp_path / "u.npz")
        back = UpliftResult.load(tmp_path / "u.npz")
        for k in ("label_ids", "den", "label", "confidence", "weights", "topk_ids", "topk_weights"):
            a, b = getattr(res, k), getattr(back, k)
            assert (a is None and b is None) or np.array_equal(a, b), k
        assert back.ignore_label == 0 and back.num_views == 3
    assert [p.name for p in tmp_path.iterdir()] == ["u.npz"]
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(InputError, match="bad.npz"):
        UpliftResult.load(tmp_path / "bad.npz")


# ------------------------------------------------------------------------------------------------
# instance -> class
# ------------------------------------------------------------------------------------------------


def test_instance_classes_segments_and_weighted_majority():
    lm = [np.array([[1, 1, 2], [2, 0, 3]]), np.array([[1, 2, 2], [3, 3, 0]])]
    cm = [np.array([[5, 5, 4], [6, 9, 0]]), np.array([[4, 6, 6], [0, 0, 9]])]
    # 1: 5,5,4 -> 5; 2: 4,6,6,6 -> 6; 3: only class 0 pixels plus nothing else -> 0
    assert instance_classes(lm, cm) == {1: 5, 2: 6, 3: 0}
    lm2 = [np.array([[3, 3, 3, 3]])]
    assert instance_classes(lm2, [np.array([[0, 0, 0, 7]])]) == {3: 7}  # void never beats a real class
    w = [np.array([[1.0, 1.0, 0.1]]), ]
    assert instance_classes([np.array([[4, 4, 4]])], [np.array([[2, 2, 8]])], weights=w) == {4: 2}
    assert instance_classes([np.array([[4, 4, 4]])], [np.array([[2, 2, 8]])],
                            weights=[np.array([[0.1, 0.1, 1.0]])]) == {4: 8}
    seg = {"1": {"class_id": 12, "class_name": "curtain"}, "2": 3}
    assert instance_classes(lm, cm, segments=seg) == {1: 12, 2: 3, 3: 0}
    with pytest.raises(InputError, match="no class"):
        instance_classes(lm, segments=seg)


# ------------------------------------------------------------------------------------------------
# rendering
# ------------------------------------------------------------------------------------------------


def _two_objects():
    """Two opaque blobs (left, right) seen by one camera; everything else empty."""
    n = 2
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    # at f = 20, z = 3 the blobs sit at u = 16 -+ 6.7 px with sigma = 2.3 px; the image corners stay empty
    g = {"means": t([[-1.0, 0.0, 3.0], [1.0, 0.0, 3.0]]), "quats": t([[1, 0, 0, 0]] * n),
         "scales": t(np.log([[0.35, 0.35, 0.35]] * n)), "opacities": t([4.0, 4.0]),
         "sh0": torch.zeros(n, 1, 3), "shN": torch.zeros(n, 0, 3)}
    cams = _cameras([[0.0, 0.0, 0.0]], w=32, h=16, f=20.0)
    return g, cams


def test_render_panoptic_two_objects_and_fallback():
    g, cams = _two_objects()
    lab = np.zeros((16, 32), np.int64)
    lab[:, :16] = 300  # left half: instance 300 (a chair), right half: 60002 (floor, stuff)
    lab[:, 16:] = 60002
    res = uplift(g, cams, [lab], progress=False)
    assert res.label.tolist() == [300, 60002]
    inst, sem, conf = render_panoptic(g, res, cams, {300: 5, 60002: 2}, fallback="void")
    row = inst[0, 8]
    assert row[8] == 300 and row[24] == 60002 and sem[0, 8, 8] == 5 and sem[0, 8, 24] == 2
    assert row[0] == 0 and sem[0, 8, 0] == 0 and conf[0, 8, 0] == 0  # empty corner: void
    assert conf[0, 8, 8] == pytest.approx(res.confidence[0], rel=1e-5)  # only Gaussian 0 reaches u = 8
    inst_n, sem_n, _ = render_panoptic(g, res, cams, {300: 5, 60002: 2})  # nearest (default)
    assert (inst_n > 0).all() and (sem_n > 0).all()
    assert inst_n[0, 8, 0] == 300 and inst_n[0, 8, 31] == 60002
    assert np.array_equal(inst_n[inst > 0], inst[inst > 0])
    with pytest.raises(ValueError, match="no class"):
        render_panoptic(g, res, cams, {300: 5})
    with pytest.raises(ValueError, match="fallback"):
        render_panoptic(g, res, cams, {300: 5, 60002: 2}, fallback="zero")


def test_render_panoptic_topk_equals_dense():
    g, cams = _two_objects()
    lab = np.zeros((16, 32), np.int64)
    lab[:, :12], lab[:, 12:20], lab[:, 20:] = 1, 2, 3
    dense = uplift(g, cams, [lab], progress=False)
    sparse = uplift(g, cams, [lab], topk=2, chunk_channels=1, progress=False)
    i1, s1, c1 = render_panoptic(g, dense, cams, {1: 4, 2: 5, 3: 6})
    i2, s2, c2 = render_panoptic(g, sparse, cams, {1: 4, 2: 5, 3: 6}, chunk_channels=2)
    assert np.array_equal(i1, i2) and np.array_equal(s1, s2)


def test_write_predictions_layout(tmp_path):
    inst = np.array([[[300, 60002], [0, 70000]]])
    sem = np.array([[[5, 2], [0, 3]]])
    write_predictions(tmp_path, ["7"], inst, sem, rgb=np.full((1, 2, 2, 3), 0.5))
    from pipeline.common.io import read_png

    ps = read_png(tmp_path / "pred_semantics" / "7.png")
    pi = read_png(tmp_path / "pred_surrogateid" / "7.png")
    assert ps.dtype == np.uint8 and ps.tolist() == [[5, 2], [0, 3]]
    assert pi.dtype == np.uint16 and pi.tolist() == [[300, 0], [0, 0]]  # stuff pixels carry instance 0
    assert (tmp_path / "vis" / "7.jpg").is_file() and read_png(tmp_path / "rgb" / "7.png").shape == (2, 2, 3)
    with pytest.raises(InputError, match="uint16"):
        write_predictions(tmp_path, ["8"], np.array([[[70000]]]), np.array([[[5]]]))


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------


def test_export_round_trip_and_legend(tmp_path, scene):
    g, cams, labels, _ = scene
    res = uplift(g, cams, labels, progress=False)
    id_to_class = {3: 5, 7: 2, 65535: 4}
    names = ("void", "wall", "floor", "cabinet", "bed", "chair")
    legend = export_labelled(tmp_path / "labelled.ply", g, res, id_to_class, names,
                             per_instance_dir=tmp_path / "inst", topk=2)
    back = load_labelled(tmp_path / "labelled.ply")
    assert np.array_equal(back.instance_id, res.label)
    exp_cls = np.array([id_to_class.get(int(i), -1) for i in res.label])
    assert np.array_equal(back.class_id, exp_cls)
    np.testing.assert_allclose(back.confidence, res.confidence, atol=1e-7)
    np.testing.assert_allclose(back.means, g["means"].numpy(), atol=1e-6)
    assert back.topk_ids.shape == (len(res.label), 2)
    np.testing.assert_allclose(back.topk_weights[:, 0], res.confidence, atol=1e-6)
    # standard 3DGS fields come first, so plain splat viewers read the file
    from plyfile import PlyData

    names_ply = PlyData.read(str(tmp_path / "labelled.ply"))["vertex"].data.dtype.names
    assert names_ply[:3] == ("x", "y", "z") and names_ply.index("instance_id") > names_ply.index("rot_3")
    on_disk = json.loads((tmp_path / "legend.json").read_text())
    assert on_disk == json.loads(json.dumps(legend))
    for i in (3, 7, 65535):
        entry = on_disk["instances"][str(i)]
        mask = res.label == i
        assert entry["class_id"] == id_to_class[i] and entry["class_name"] == names[id_to_class[i]]
        assert entry["num_gaussians"] == int(mask.sum())
        if mask.any():
            pts = g["means"].numpy()[mask]
            lo, hi = np.array(entry["bbox_min"]), np.array(entry["bbox_max"])
            assert (lo <= pts.max(0) + 1e-6).all() and (hi >= pts.min(0) - 1e-6).all() and (lo <= hi).all()
            one = load_labelled(tmp_path / "inst" / f"instance_{i}.ply")
            assert len(one.means) == mask.sum() and (one.instance_id == i).all()
        assert len(entry["color"]) == 3
    assert on_disk["num_unlabelled"] == int((res.label < 0).sum())
