"""splat.render: the torch backend against closed forms, a plain per-pixel reference, finite differences,
gsplat's densification strategy and (with CUDA) gsplat's own rasteriser."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from splat import rasterize_torch as rt
from splat.agreement import random_scene
from splat.render import Cameras, render

ALPHA_MIN = 1.0 / 255.0


def _cams(w=16, h=12, f=20.0, cx=None, cy=None, n=1, dtype=torch.float64, shift=0.0):
    """n cameras at the origin looking down +z (the i-th moved by i·shift along x)."""
    K = torch.tensor([[f, 0, w / 2 if cx is None else cx], [0, f, h / 2 if cy is None else cy], [0, 0, 1]], dtype=dtype)
    vm = torch.eye(4, dtype=dtype).repeat(n, 1, 1)
    vm[:, 0, 3] = -shift * torch.arange(n, dtype=dtype)
    return Cameras(vm, K.repeat(n, 1, 1), w, h)


def _gauss(means, scales, opac, quats=None, dtype=torch.float64, colors=None):
    """Stored-form Gaussians from plain numbers: scales in metres, opacities in (0, 1)."""
    means = torch.as_tensor(means, dtype=dtype).reshape(-1, 3)
    n = len(means)
    s = torch.as_tensor(scales, dtype=dtype).expand(n, 3) if np.ndim(scales) < 2 else torch.as_tensor(scales, dtype=dtype)
    o = torch.as_tensor(opac, dtype=dtype).expand(n)
    q = torch.tensor([[1.0, 0, 0, 0]], dtype=dtype).repeat(n, 1) if quats is None else torch.as_tensor(quats, dtype=dtype)
    g = {"means": means.clone(), "quats": q.clone(), "scales": torch.log(s).clone(),
         "opacities": torch.logit(o).clone(), "sh0": torch.zeros(n, 1, 3, dtype=dtype),
         "shN": torch.zeros(n, 0, 3, dtype=dtype)}
    if colors is not None:
        g["sh0"] = ((torch.as_tensor(colors, dtype=dtype) - 0.5) / 0.28209479177387814)[:, None, :]
    return g


def _random_scene(n, seed, dtype=torch.float64, spread=0.6, size=(0.05, 0.2), opac=(0.2, 0.95)):
    """splat.agreement's random scene (the GPU check uses the same one), with this file's defaults."""
    return {k: v.to(dtype) for k, v in random_scene(n, seed, spread=spread, size=size, opac=opac).items()}


# ---------------------------------------------------------------------------------------------------------
# closed forms
# ---------------------------------------------------------------------------------------------------------
def test_single_gaussian_footprint_matches_closed_form():
    # isotropic s = 0.1 at z = 2 seen with f = 20: J Σ Jᵀ = (f s / z)² I = I, plus eps2d 0.3 -> v = 1.3.
    # mean projects to (cx, cy) = (8, 6), a pixel corner; pixel (row i, col j) is centred at (j + .5, i + .5).
    g = _gauss([0.0, 0.0, 2.0], 0.1, 0.8)
    out = render(g, _cams(), torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64))
    a = out.alpha[0, ..., 0]
    v = 1.3
    assert a[6, 8].item() == pytest.approx(0.8 * math.exp(-0.5 * (0.25 + 0.25) / v), abs=1e-12)
    assert a[5, 7].item() == pytest.approx(0.8 * math.exp(-0.5 * 0.5 / v), abs=1e-12)
    assert a[6, 10].item() == pytest.approx(0.8 * math.exp(-0.5 * (2.5 ** 2 + 0.25) / v), abs=1e-12)
    assert a[9, 8].item() == pytest.approx(0.8 * math.exp(-0.5 * (0.25 + 3.5 ** 2) / v), abs=1e-12)  # 0.0065 > 1/255
    assert a[10, 8].item() == 0.0  # 0.8·exp(-20.5/2.6) = 3.0e-4 < 1/255: skipped
    torch.testing.assert_close(out.features[0], out.alpha[0] * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    # expected depth is z wherever the Gaussian is seen, 0 elsewhere
    seen = a > 0
    assert torch.allclose(out.depth[0, ..., 0][seen], torch.tensor(2.0, dtype=torch.float64))
    assert (out.depth[0, ..., 0][~seen] == 0).all()
    # opacity-aware radius: extend = sqrt(2 ln(255·0.8)) = 3.2613; ceil(3.2613·sqrt(1.3)) = ceil(3.7185) = 4
    assert out.meta["radii"][0, 0].tolist() == [4, 4]
    assert out.meta["means2d"][0, 0].tolist() == pytest.approx([8.0, 6.0])


def test_alpha_clamp_and_skip_threshold():
    # mean exactly on the centre of pixel (6, 8): α there is the opacity itself
    cams = _cams(cx=8.5, cy=6.5)
    feat = torch.ones(1, 1, dtype=torch.float64)
    a = render(_gauss([0.0, 0.0, 2.0], 0.1, 0.9999), cams, feat).alpha[0, 6, 8, 0].item()
    assert a == pytest.approx(0.999, abs=1e-12)  # gsplat 1.5.3 clamps α at 0.999 (its kernels, not 0.99)
    # α just above / just below 1/255 at the centre pixel
    above = render(_gauss([0.0, 0.0, 2.0], 0.1, ALPHA_MIN * 1.001), cams, feat).alpha[0, ..., 0]
    below = render(_gauss([0.0, 0.0, 2.0], 0.1, ALPHA_MIN * 0.999), cams, feat).alpha[0, ..., 0]
    assert above[6, 8].item() == pytest.approx(ALPHA_MIN * 1.001, rel=1e-9)
    assert (below == 0).all()


def test_transmittance_stop_excludes_the_saturating_gaussian():
    cams = _cams(cx=8.5, cy=6.5)
    red, green, blue = [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]
    feats = torch.tensor([red, green, blue], dtype=torch.float64)
    # three stacked α = 0.98: T = 0.02, 4e-4, then 8e-6 <= 1e-4 -> the third is never blended
    g = _gauss([[0, 0, 2.0], [0, 0, 2.5], [0, 0, 3.0]], 0.1, 0.98)
    out = render(g, cams, feats)
    px = out.features[0, 6, 8]
    assert px.tolist() == pytest.approx([0.98, 0.02 * 0.98, 0.0], abs=1e-12)
    assert out.alpha[0, 6, 8, 0].item() == pytest.approx(1 - 0.02 * 0.02, abs=1e-12)
    # two stacked α = 0.995: T = 0.005, then 2.5e-5 -> only the first counts
    g2 = _gauss([[0, 0, 2.0], [0, 0, 2.5]], 0.1, 0.995)
    feats2 = feats[:2].clone().requires_grad_(True)
    out2 = render(g2, cams, feats2)
    assert out2.features[0, 6, 8].tolist() == pytest.approx([0.995, 0.0, 0.0], abs=1e-12)
    assert out2.alpha[0, 6, 8, 0].item() == pytest.approx(0.995, abs=1e-12)
    (grad,) = torch.autograd.grad(out2.features[0, 6, 8, 1], feats2)
    assert grad[1].abs().sum() == 0  # the excluded Gaussian gets no gradient at that pixel


def test_depth_order_not_index_order():
    cams = _cams(cx=8.5, cy=6.5)
    feats = torch.tensor([[0, 0, 1.0], [1.0, 0, 0]], dtype=torch.float64)  # index 0 blue (far), 1 red (near)
    g = _gauss([[0, 0, 3.0], [0, 0, 2.0]], [[0.15] * 3, [0.1] * 3], 0.6)
    out = render(g, cams, feats)
    px = out.features[0, 6, 8]
    assert px.tolist() == pytest.approx([0.6, 0.0, 0.4 * 0.6], abs=1e-12)
    assert out.depth[0, 6, 8, 0].item() == pytest.approx((0.6 * 2.0 + 0.24 * 3.0) / 0.84, abs=1e-12)
    g["means"][:, 2] = torch.tensor([2.0, 3.0], dtype=torch.float64)  # swap the depths
    assert render(g, cams, feats).features[0, 6, 8].tolist() == pytest.approx([0.24, 0.0, 0.6], abs=1e-12)


def test_near_plane_culls():
    g = _gauss([[0, 0, 0.005], [0, 0, 2.0]], 0.1, 0.8)
    out = render(g, _cams(), torch.ones(2, 1, dtype=torch.float64), near_plane=0.01)
    assert out.meta["radii"][0, 0].tolist() == [0, 0] and out.meta["radii"][0, 1].tolist() == [4, 4]
    only = render(_gauss([0, 0, 2.0], 0.1, 0.8), _cams(), torch.ones(1, 1, dtype=torch.float64))
    torch.testing.assert_close(out.alpha, only.alpha)


# ---------------------------------------------------------------------------------------------------------
# against the per-pixel reference, gradients
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("save", [True, False])
def test_tiled_composite_matches_per_pixel_reference(monkeypatch, save):
    # many small blocks and groups so that carries across blocks/tiles and tile dropping are exercised;
    # opaque, stacked Gaussians so that the T stop and the α clamp happen
    monkeypatch.setattr(rt, "_BLOCK", 24)
    monkeypatch.setattr(rt, "_KMIN", 3)
    monkeypatch.setattr(rt, "_GROUP", 5)
    if not save:
        monkeypatch.setattr(rt, "_SAVE_BYTES", 0)  # replay the blocks in the backward
    g = _random_scene(80, seed=3, opac=(0.5, 0.9999))
    W, H = 29, 21
    cams = _cams(W, H, f=25.0)
    m2d, con, dep, rad = rt.project(g["means"], g["quats"], g["scales"].exp(), torch.sigmoid(g["opacities"]),
                                    cams.viewmats, cams.Ks, W, H)
    args = [m2d[0].detach().requires_grad_(True), con[0].detach().requires_grad_(True),
            torch.sigmoid(g["opacities"]).requires_grad_(True),
            torch.rand(80, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)]
    bg = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64, requires_grad=True)
    img, alpha = rt.composite(*args, rad[0], dep[0], W, H, bg)
    ref_img, ref_alpha = rt.composite_reference(*args, rad[0], dep[0], W, H, bg)
    assert ref_alpha.max() > 1 - 1e-3  # the stop rule is reached somewhere
    torch.testing.assert_close(img, ref_img, atol=1e-12, rtol=0)
    torch.testing.assert_close(alpha, ref_alpha, atol=1e-12, rtol=0)
    wi = torch.randn_like(img)
    wa = torch.randn_like(alpha)
    ours = torch.autograd.grad((img * wi).sum() + (alpha * wa).sum(), args + [bg])
    refs = torch.autograd.grad((ref_img * wi).sum() + (ref_alpha * wa).sum(), args + [bg])
    for a, b in zip(ours, refs):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_label_weight_sums_equal_per_gaussian_weight_images(monkeypatch):
    # colours = identity: channel i of the per-pixel reference image is exactly w_i(u) = α·T; summing it over
    # the pixels of each label must give label_weight_sums (small blocks: carries across blocks exercised)
    monkeypatch.setattr(rt, "_BLOCK", 24)
    monkeypatch.setattr(rt, "_KMIN", 3)
    n, W, H, K = 60, 27, 19, 5
    g = _random_scene(n, seed=7, opac=(0.5, 0.9999))
    cams = _cams(W, H, f=25.0)
    opac = torch.sigmoid(g["opacities"])
    m2d, con, dep, rad = rt.project(g["means"], g["quats"], g["scales"].exp(), opac, cams.viewmats, cams.Ks, W, H)
    w_img, _ = rt.composite_reference(m2d[0], con[0], opac, torch.eye(n, dtype=torch.float64), rad[0], dep[0], W, H)
    labels = torch.randint(0, K + 1, (H, W), generator=torch.Generator().manual_seed(1))  # K = does not vote
    labels[:6] = 2  # a tile row with a single label
    expect = torch.stack([(w_img * (labels == k)[..., None]).sum((0, 1)) for k in range(K)], 1)  # [N, K]
    out = torch.zeros(n + 1, K, dtype=torch.float64)
    rt.label_weight_sums(m2d[0], con[0], opac, rad[0], dep[0], labels, K, out)
    assert expect.sum() > 1.0
    torch.testing.assert_close(out[:n], expect, atol=1e-12, rtol=0)


def test_gradcheck_all_parameters():
    g = _random_scene(5, seed=11, spread=0.3, size=(0.08, 0.15))
    cams = _cams(12, 10, f=14.0, n=2, shift=0.05)
    feats = torch.rand(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    bg = torch.tensor([0.3, 0.7], dtype=torch.float64)

    def fn(means, quats, scales, opacities, features, background):
        gs = {"means": means, "quats": quats, "scales": scales, "opacities": opacities}
        out = render(gs, cams, features, background=background)
        return out.features, out.alpha, out.depth

    inputs = tuple(t.clone().requires_grad_(True) for t in
                   (g["means"], g["quats"], g["scales"], g["opacities"], feats, bg))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_gradcheck_sh_colours():
    g = _random_scene(3, seed=5, spread=0.2, size=(0.08, 0.15))
    cams = _cams(7, 5, f=8.0)

    def fn(means, sh0, shN):
        gs = dict(g, means=means, sh0=sh0, shN=shN)
        return render(gs, cams, sh_degree=1, render_depth=False).features

    inputs = tuple(g[k].clone().requires_grad_(True) for k in ("means", "sh0", "shN"))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)  # full Jacobian (small image)


def test_channels_are_independent():
    g = _random_scene(60, seed=2, dtype=torch.float32)
    cams = _cams(24, 18, f=20.0, n=2, dtype=torch.float32, shift=0.1)
    f7 = torch.rand(60, 7, generator=torch.Generator().manual_seed(4))
    bg = torch.linspace(0, 1, 7)
    full = render(g, cams, f7, background=bg).features
    parts = [render(g, cams, f7[:, a:b], background=bg[a:b]).features for a, b in ((0, 1), (1, 4), (4, 7))]
    torch.testing.assert_close(full, torch.cat(parts, -1), atol=1e-6, rtol=1e-6)
    # per-camera features [C, N, D] = rendering each camera with its own [N, D]
    fc = torch.rand(2, 60, 3, generator=torch.Generator().manual_seed(5))
    both = render(g, cams, fc).features
    for c in range(2):
        torch.testing.assert_close(both[c], render(g, cams[c], fc[c]).features[0], atol=1e-6, rtol=1e-6)
    # many channels (as the uplift renders them)
    wide = torch.rand(60, 200, generator=torch.Generator().manual_seed(6))
    out = render(g, cams[0], wide, render_depth=False).features
    torch.testing.assert_close(out[..., 37:40], render(g, cams[0], wide[:, 37:40], render_depth=False).features)


def test_sh_degree_zero_is_constant_colour():
    g = _random_scene(30, seed=7)
    g["shN"] = torch.zeros(30, 0, 3, dtype=torch.float64)
    cams = _cams(20, 14)
    rgb = torch.clamp_min(g["sh0"][:, 0] * 0.28209479177387814 + 0.5, 0.0)
    torch.testing.assert_close(render(g, cams).features, render(g, cams, rgb).features)


# ---------------------------------------------------------------------------------------------------------
# meta and the densification strategy
# ---------------------------------------------------------------------------------------------------------
def test_meta_drives_gsplat_default_strategy():
    from gsplat.strategy import DefaultStrategy

    g = _random_scene(200, seed=8, dtype=torch.float32, size=(0.02, 0.1))
    params = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in g.items()})
    opts = {k: torch.optim.Adam([v], lr=1e-3) for k, v in params.items()}
    cams = _cams(40, 30, f=35.0, n=2, dtype=torch.float32, shift=0.1)
    strategy = DefaultStrategy(refine_start_iter=0, refine_every=2, grow_grad2d=1e-5, verbose=False)
    strategy.check_sanity(params, opts)
    state = strategy.initialize_state()
    out = render(params, cams, sh_degree=1)
    meta = out.meta
    assert meta["means2d"].shape == (2, 200, 2) and meta["radii"].shape == (2, 200, 2)
    assert meta["radii"].dtype == torch.int32 and meta["depths"].shape == (2, 200)
    assert meta["gaussian_ids"] is None and meta["n_cameras"] == 2
    assert (meta["width"], meta["height"]) == (40, 30)
    strategy.step_pre_backward(params, opts, state, 0, meta)
    out.features.square().mean().backward()
    strategy.step_post_backward(params, opts, state, 0, meta)
    visible = (meta["radii"] > 0).all(-1)  # [C, N]
    torch.testing.assert_close(state["count"], visible.sum(0).float())
    assert (state["grad2d"][visible.any(0)] > 0).any() and (state["grad2d"][~visible.any(0)] == 0).all()
    # a refinement step (step 2) grows the model from these statistics
    for step in (1, 2):
        out = render(params, cams, sh_degree=1)
        strategy.step_pre_backward(params, opts, state, step, out.meta)
        out.features.square().mean().backward()
        strategy.step_post_backward(params, opts, state, step, out.meta)
    assert len(params["means"]) > 200


def test_backend_choice():
    g = _gauss([0, 0, 2.0], 0.1, 0.8)
    with pytest.raises(ValueError, match="CUDA only"):
        render(g, _cams(), backend="gsplat")
    with pytest.raises(ValueError, match="unknown backend"):
        render(g, _cams(), backend="vulkan")


# ---------------------------------------------------------------------------------------------------------
# Cameras
# ---------------------------------------------------------------------------------------------------------
def _frame(stem, c2w, w=64, h=48, f=50.0):
    from pipeline.scene import Frame

    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])
    return Frame(stem=stem, image=None, K=K, c2w=np.asarray(c2w, float), width=w, height=h)


def test_cameras_from_frames_and_scaled():
    c2w = np.eye(4)
    c2w[:3, 3] = [1.0, -2.0, 0.5]
    R = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    c2w2 = np.eye(4)
    c2w2[:3, :3] = R
    cams = Cameras.from_frames([_frame("a", c2w), _frame("b", c2w2)])
    assert len(cams) == 2 and (cams.width, cams.height) == (64, 48)
    assert cams.viewmats.dtype == torch.float32
    np.testing.assert_allclose(cams.viewmats[0].numpy(), np.linalg.inv(c2w), atol=1e-6)
    np.testing.assert_allclose(cams.viewmats[1, :3, :3].numpy(), R.T, atol=1e-6)
    # scaling keeps the image edges on the edges: with +0.5 centres x' = x·w'/w exactly
    half = cams.scaled(0.5)
    assert (half.width, half.height) == (32, 24)
    np.testing.assert_allclose(half.Ks[0].numpy(), np.diag([0.5, 0.5, 1.0]) @ cams.Ks[0].numpy(), atol=1e-6)
    odd = Cameras.from_frames([_frame("c", c2w, w=65, h=49)], scale=0.5)
    assert (odd.width, odd.height) == (32, 24)  # round(32.5) = 32 (banker's), round(24.5) = 24
    np.testing.assert_allclose(odd.Ks[0, 0].numpy(), [50.0 * 32 / 65, 0, 32.5 * 32 / 65], rtol=1e-6)
    # subsets
    assert len(cams[1]) == 1 and torch.equal(cams[1].viewmats[0], cams.viewmats[1])
    assert torch.equal(cams[[1, 0]].viewmats, cams.viewmats.flip(0))
    assert len(cams[0:2]) == 2 and len(cams.to("cpu")) == 2
    with pytest.raises(ValueError, match="different image sizes"):
        Cameras.from_frames([_frame("a", c2w), _frame("b", c2w, w=32, h=24)])


def test_scaled_camera_renders_the_downsampled_image():
    # a large smooth Gaussian: the half-size render equals the 2x2-averaged full render up to smoothing
    g = _gauss([0.1, -0.05, 2.0], 0.3, 0.7)
    cams = _cams(32, 24, f=30.0, dtype=torch.float64)
    full = render(g, cams, torch.ones(1, 1, dtype=torch.float64), eps2d=0.0).alpha[0, ..., 0]
    half = render(g, cams.scaled(0.5), torch.ones(1, 1, dtype=torch.float64), eps2d=0.0).alpha[0, ..., 0]
    pooled = full.reshape(12, 2, 16, 2).mean((1, 3))
    assert (half - pooled).abs().max() < 0.01
    assert half.argmax() == pooled.argmax()


# ---------------------------------------------------------------------------------------------------------
# gsplat CUDA agreement
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("channels", [1, 3, 5, 32, 200])
def test_torch_backend_matches_gsplat_cuda(channels):
    # the same comparison bench/gpu_check.py runs: every output and gradient within splat.agreement.TOLERANCE
    from splat.agreement import TOLERANCE, Setting, compare_settings, random_scene, row_cameras

    g = random_scene(3000, seed=9)
    gen = torch.Generator().manual_seed(channels)
    feats, bg = torch.rand(3000, channels, generator=gen), torch.rand(channels, generator=gen)
    errs = compare_settings(g, row_cameras(96, 72, 80.0, 3), feats, bg, Setting("torch", "cuda", torch.float32),
                            Setting("gsplat", "cuda", torch.float32))
    assert errs["radii"] == 0.0
    bad = {k: v for k, v in errs.items() if not v <= TOLERANCE}
    assert not bad, bad
