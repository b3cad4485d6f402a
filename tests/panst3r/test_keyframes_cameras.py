"""Keyframe selection (official linspace, FPS on descriptors) and cameras from pointmaps (exact recovery)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from panst3r.cameras import estimate_focal, intrinsics, recover_cameras, rigid_procrustes
from panst3r.keyframes import farthest_point_sampling, image_descriptors, order_keyframes, select_keyframes


def test_linspace_matches_official_numpy_call():
    assert select_keyframes(3, 2) == [0, 2]
    assert select_keyframes(3, 3) == [0, 1, 2]
    assert select_keyframes(10, 4) == [0, 3, 6, 9]
    assert select_keyframes(7, 1) == [0, 6]  # the demo raises K to at least 2
    assert select_keyframes(1, 5) == [0]
    assert select_keyframes(60, None) == [int(i) for i in np.linspace(0, 59, 50, dtype=int)]
    assert select_keyframes(5, 99) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="unknown keyframe method"):
        select_keyframes(3, 2, method="random")
    with pytest.raises(ValueError, match="needs descriptors"):
        select_keyframes(3, 2, method="fps")


def test_fps_picks_the_distinct_views_and_orders_them_greedily():
    # views 0-2 nearly identical, 3-4 another place, 5 a third place
    base = np.eye(3)
    desc = np.stack([base[0], base[0] + 0.01, base[0] + 0.02, base[1], base[1] + 0.01, base[2] + 0.3 * base[0] + 0.2 * base[1]])
    kf = select_keyframes(6, 3, method="fps", descriptors=desc)
    assert sorted(kf) == [0, 3, 5]  # start 0, then farthest (3, orthogonal), then 5
    # ordering: 5 has the largest summed similarity (it leans towards 0 and 3), then 0 (closest to 5), then 3
    d = desc / np.linalg.norm(desc, axis=1, keepdims=True)
    sim = d @ d.T
    sums = {i: sum(sim[i, j] for j in (0, 3, 5) if j != i) for i in (0, 3, 5)}
    first = max(sums, key=sums.get)
    assert kf[0] == first == 5 and kf == [5, 0, 3]
    # deterministic, and the seed moves the start
    assert select_keyframes(6, 3, method="fps", descriptors=desc) == kf
    # seed 3 draws start view 4 (in the 3-4 cluster); farthest from it is 0 (cos 0.01), then 5 (min distance
    # 1 - 0.3/1.063 to view 0 beats views 1-3); ordered by summed similarity as above
    assert int(np.random.default_rng(3).integers(6)) == 4
    assert select_keyframes(6, 3, method="fps", descriptors=desc, seed=3) == [5, 0, 4]
    assert [farthest_point_sampling(1 - sim, 1, s) for s in range(6)] == [[s] for s in range(6)]


def test_order_keyframes_by_hand():
    sim = np.array([[1.0, 0.9, 0.1, 0.2], [0.9, 1.0, 0.3, 0.1], [0.1, 0.3, 1.0, 0.8], [0.2, 0.1, 0.8, 1.0]])
    # summed similarity: 1.2, 1.3, 1.2, 1.1 -> start at 1; most similar to {1}: 0 (0.9); to {1,0}: 2 (0.3); then 3
    assert order_keyframes(sim, [0, 1, 2, 3]) == [1, 0, 2, 3]


def test_image_descriptors_are_unit_mean_tokens():
    tok = torch.tensor([[[1.0, 0.0], [3.0, 0.0]], [[0.0, 2.0], [0.0, 2.0]]])
    np.testing.assert_allclose(image_descriptors(tok), [[1.0, 0.0], [0.0, 1.0]])


def _rot(rng):
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _pointmap(f, h, w, rng):
    """Local pointmap of a pinhole camera in the official integer-pixel convention, pp = (W/2, H/2)."""
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    z = 2.0 + np.sin(xx / 7.0) + 0.5 * np.cos(yy / 5.0) + rng.uniform(0, 0.2, (h, w))
    return np.stack([(xx - w / 2) / f * z, (yy - h / 2) / f * z, z], -1)


def test_focal_exact_on_a_noise_free_pointmap_and_robust_to_outliers():
    rng = np.random.default_rng(0)
    pm = _pointmap(312.5, 24, 32, rng)
    assert estimate_focal(pm) == pytest.approx(312.5, rel=1e-6)
    assert estimate_focal(torch.from_numpy(pm).float()) == pytest.approx(312.5, rel=1e-4)
    bad = pm.copy()
    bad[:3, :3, :2] *= 5.0  # a few wild points: Weiszfeld (L1-like) barely moves, least squares would
    assert estimate_focal(bad) == pytest.approx(312.5, rel=1e-3)
    # a conf of 0 removes the outliers completely
    conf = np.ones((24, 32))
    conf[:3, :3] = 0
    assert estimate_focal(bad, conf=conf) == pytest.approx(312.5, rel=1e-6)


def test_rigid_procrustes_exact_and_weighted():
    rng = np.random.default_rng(1)
    R, t = _rot(rng), rng.normal(size=3)
    src = rng.normal(size=(50, 3))
    dst = src @ R.T + t
    T = rigid_procrustes(src, dst)
    np.testing.assert_allclose(T[:3, :3], R, atol=1e-10)
    np.testing.assert_allclose(T[:3, 3], t, atol=1e-10)
    assert np.linalg.det(T[:3, :3]) == pytest.approx(1.0)
    # zero-weight outliers are ignored
    dst2 = dst.copy()
    dst2[:10] += 10.0
    wts = np.ones(50)
    wts[:10] = 0.0
    np.testing.assert_allclose(rigid_procrustes(src, dst2, wts), T, atol=1e-10)
    # a mirrored target still gives a proper rotation
    assert np.linalg.det(rigid_procrustes(src, src * np.array([1, 1, -1]))[:3, :3]) == pytest.approx(1.0)


def test_recover_cameras_from_synthetic_panst3r_output():
    rng = np.random.default_rng(2)
    h, w, foc = 24, 32, [280.0, 301.0, 333.0]
    c2w = [np.eye(4)] + [np.eye(4) for _ in range(2)]
    for T in c2w[1:]:
        T[:3, :3], T[:3, 3] = _rot(rng), rng.normal(size=3)
    local = np.stack([_pointmap(f, h, w, rng) for f in foc])
    world = np.stack([lp @ T[:3, :3].T + T[:3, 3] for lp, T in zip(local, c2w)])
    conf = 1.0 + rng.uniform(0.5, 3.0, (3, h, w))
    out = SimpleNamespace(pts3d=torch.from_numpy(world), pts3d_local=torch.from_numpy(local),
                          conf=torch.from_numpy(conf))
    Ks, poses = recover_cameras(out)
    assert Ks.shape == (3, 3, 3) and poses.shape == (3, 4, 4) and poses.dtype == np.float64
    for i in range(3):
        np.testing.assert_allclose(Ks[i], intrinsics(foc[i], (h, w)), rtol=1e-4)
        assert Ks[i][0, 2] == w / 2 + 0.5 and Ks[i][1, 2] == h / 2 + 0.5  # project convention (+0.5)
        np.testing.assert_allclose(poses[i], c2w[i], atol=1e-4)
