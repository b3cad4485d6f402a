"""Per-view pose refinement: the SE(3) exponential against scipy, and a training run that pulls a perturbed
camera back towards its true pose."""

import dataclasses

import numpy as np
import torch

from splat.poses import corrected_viewmats, se3_exp


def test_se3_exp_matches_scipy_rotation_and_keeps_identity():
    from scipy.spatial.transform import Rotation

    xi = torch.tensor([[0.3, -0.2, 0.5, 1.0, 2.0, -0.5], [1e-9, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]],
                      dtype=torch.float64)
    T = se3_exp(xi)
    np.testing.assert_allclose(T[0, :3, :3].numpy(), Rotation.from_rotvec([0.3, -0.2, 0.5]).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(T[0, :3, 3].numpy(), [1.0, 2.0, -0.5])
    np.testing.assert_allclose(T[2].numpy(), np.eye(4))
    vm = torch.linalg.inv(torch.tensor(np.eye(4))[None].expand(3, 4, 4) @ T)  # viewmats of c2w = exp(ξ)
    # corrected_viewmats(viewmat, ξ) = viewmat of c2w · exp(ξ); with c2w = I that is exp(ξ)⁻¹
    np.testing.assert_allclose(corrected_viewmats(torch.eye(4, dtype=torch.float64)[None].expand(3, 4, 4), xi).numpy(),
                               vm.numpy(), atol=1e-12)
    # gradients exist at ξ = 0 (where training starts)
    z = torch.zeros(1, 6, dtype=torch.float64, requires_grad=True)
    se3_exp(z)[0, :3, :].sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_pose_opt_pulls_a_perturbed_camera_towards_the_truth(tmp_path):
    """Train on the tiny scene with one view's pose shifted by 2 % of the camera extent: with pose_opt the
    refined pose ends closer to the true one than the given (shifted) one."""
    from pipeline.scene import load_scene
    from pipeline.synth import generate, make_config
    from splat.config import PRESETS
    from splat.train import train

    torch.set_num_threads(1)
    scene = load_scene(generate(tmp_path / "tiny", make_config("tiny", seed=0)))
    stem = scene.train[3]
    true = scene.frames[stem].c2w.copy()
    centres = np.stack([f.c2w[:3, 3] for f in scene.train_frames])
    shift = 0.02 * float(np.max(np.linalg.norm(centres - centres.mean(0), axis=1)))
    moved = true.copy()
    moved[:3, 3] += [shift, 0, 0]
    frames = dict(scene.frames)
    frames[stem] = dataclasses.replace(frames[stem], c2w=moved)
    scene = dataclasses.replace(scene, frames=frames)
    cfg = dataclasses.replace(PRESETS["tiny"], iterations=150, pose_opt=True, pose_opt_lr=1e-3)
    res = train(scene, cfg, progress=False, out_dir=tmp_path / "run")
    got = res.refined_c2w[stem]
    assert np.linalg.norm(got[:3, 3] - true[:3, 3]) < 0.8 * shift
    assert (tmp_path / "run" / "cameras_refined.json").is_file()
    off = train(scene, dataclasses.replace(cfg, pose_opt=False), progress=False)
    assert off.refined_c2w is None
