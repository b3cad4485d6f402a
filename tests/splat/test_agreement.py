"""splat.agreement: the backend comparison the CUDA test and bench/gpu_check.py share, checked on CPU."""

from __future__ import annotations

import pytest
import torch

from splat.agreement import TOLERANCE, Setting, compare_settings, random_scene, relative_error, row_cameras


def test_relative_error_hand_numbers():
    assert relative_error(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.0])) == 5.0  # zero reference: absolute
    assert relative_error(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])) == 1.0
    assert relative_error(torch.tensor([6.0, 8.0]), torch.tensor([3.0, 4.0])) == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        relative_error(torch.zeros(2), torch.zeros(3))


@pytest.mark.parametrize("channels", [1, 3, None])  # None: RGB from SH (the SH gradients are compared too)
def test_float32_torch_backend_agrees_with_float64(channels):
    g = random_scene(400, seed=3)
    gen = torch.Generator().manual_seed(1)
    feats = None if channels is None else torch.rand(400, channels, generator=gen, dtype=torch.float64)
    bg = torch.rand(3 if channels is None else channels, generator=gen, dtype=torch.float64)
    errs = compare_settings(g, row_cameras(40, 30, 34.0, 2), feats, bg, Setting("torch", "cpu", torch.float32),
                            Setting("torch", "cpu", torch.float64))
    expect = {"features", "alpha", "depth", "radii", "grad_means", "grad_quats", "grad_scales", "grad_opacities",
              "grad_sh0", "grad_shN"} | ({"grad_input_features"} if channels else set())
    assert set(errs) == expect
    assert errs["radii"] == 0.0
    assert all(0.0 < errs[k] < TOLERANCE for k in ("features", "alpha", "depth", "grad_means", "grad_opacities")), errs
    assert max(errs.values()) < TOLERANCE, errs
    if channels:  # features given: SH is not used, its gradient is zero in both
        assert errs["grad_sh0"] == 0.0


def test_a_different_scene_is_detected():
    # the comparison must be able to fail: a camera moved by 1 px between the settings is far outside the tolerance
    g = random_scene(400, seed=3)
    cams = row_cameras(40, 30, 34.0, 1)
    from splat.agreement import render_with_grads

    a = render_with_grads(g, cams, None, None, Setting("torch", "cpu", torch.float64))
    cams.Ks[:, 0, 2] += 1.0
    b = render_with_grads(g, cams, None, None, Setting("torch", "cpu", torch.float64))
    assert relative_error(a["alpha"], b["alpha"]) > 100 * TOLERANCE
