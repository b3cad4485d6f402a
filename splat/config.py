"""`TrainConfig` (the trainer's settings, one field per knob) and its named `PRESETS`.

Kept free of torch so `python -m pipeline --help` can render the fields without loading the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["TrainConfig", "PRESETS"]


@dataclass
class TrainConfig:
    """3D Gaussian splatting with the panoptic-colour regulariser (defaults: gsplat simple_trainer's)."""

    iterations: int = 30_000
    """Optimisation steps (each renders `batch_size` training views)."""
    batch_size: int = 1
    """Training views rendered per step; learning rates are scaled by sqrt(batch_size) as gsplat does."""
    scale: float = 1.0
    """Training resolution as a fraction of the images' (frames are preloaded at this size)."""
    eval_scale: float = 1.0
    """Resolution of the test-view PSNR (evaluation during and after training), as a fraction of the images'."""
    sh_degree: int = 3
    """Largest spherical-harmonics degree of the view-dependent colour."""
    sh_degree_interval: int = 1000
    """Raise the active SH degree by one every this many steps (0, 1, ... up to sh_degree)."""
    lr_means: float = 1.6e-4
    """Initial position learning rate, multiplied by the scene scale (camera-centre radius × 1.1)."""
    lr_means_final: float = 1.6e-6
    """Final position learning rate (× scene scale); it decays exponentially from lr_means over the run."""
    lr_quats: float = 1e-3
    """Learning rate of the rotations."""
    lr_scales: float = 5e-3
    """Learning rate of the log scales."""
    lr_opacities: float = 5e-2
    """Learning rate of the opacity logits."""
    lr_sh0: float = 2.5e-3
    """Learning rate of the DC SH coefficient."""
    lr_shN: float = 2.5e-3 / 20
    """Learning rate of the higher SH bands."""
    lr_pan: float = 5e-3
    """Learning rate of the panoptic colours."""
    ssim_lambda: float = 0.2
    """Weight of (1 − SSIM) in L_rgb; L1 gets 1 − ssim_lambda (the paper: 0.8·L1 + 0.2·(1 − SSIM))."""
    lambda_pan: float = 1.0
    """Weight λ of the panoptic-colour L1 (only used when instance maps are given)."""
    strategy: Literal["default", "mcmc"] = "default"
    """Densification: gsplat's DefaultStrategy (3DGS clone/split/prune) or MCMCStrategy (relocate/add)."""
    refine_start: int = 500
    """First step at which the strategy densifies."""
    refine_stop: int = 15_000
    """Step after which the strategy stops densifying."""
    refine_every: int = 100
    """Densify every this many steps."""
    reset_every: int = 3000
    """default: opacity-reset period (to 2 × prune_opacity, while densifying; big-Gaussian pruning starts after
    the first). Done by splat.strategy.CappedDefaultStrategy: gsplat 1.5.3's DefaultStrategy never resets."""
    grow_grad2d: float = 2e-4
    """default: image-plane gradient threshold for clone/split."""
    grow_scale3d: float = 0.01
    """default: Gaussians smaller than this (× scene scale) are cloned, larger ones split."""
    prune_opacity: float = 0.005
    """Opacity below which Gaussians are pruned (default) or relocated (mcmc)."""
    prune_scale3d: float = 0.1
    """default: Gaussians larger than this (× scene scale) are pruned after the first opacity reset."""
    max_gaussians: int = 0
    """Cap on the number of Gaussians (mcmc: its cap_max; default: after each refine the lowest-opacity extras
    are pruned); 0 = no cap (default) / 1,000,000 (mcmc)."""
    mcmc_noise_lr: float = 5e5
    """mcmc: scale of the position noise (× the position learning rate)."""
    mcmc_opacity_reg: float = 0.01
    """mcmc: L1 weight on opacities."""
    mcmc_scale_reg: float = 0.01
    """mcmc: L1 weight on scales."""
    init_points: int = 100_000
    """At most this many initial points (scene PLY > back-projected depth > random in the camera bounds)."""
    init_opacity: float = 0.1
    """Initial opacity of every Gaussian."""
    init_scale: float = 1.0
    """Initial size = this × mean distance to the 3 nearest initial points."""
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """RGB background behind the Gaussians (the panoptic image's background is always black = void)."""
    seed: int = 0
    """Seeds the initial Gaussians, the view order and the strategy's randomness."""
    eval_every: int = 0
    """Evaluate test-view PSNR every this many steps (0 = only at the end)."""
    log_every: int = 10
    """Append a history entry every this many steps."""
    checkpoint_every: int = 1000
    """Write ckpt.pt every this many steps (when out_dir is given; 0 = only at the end)."""
    pose_opt: bool = False
    """Refine each train camera's pose while training (a learnable SE(3) correction per view, splat.poses): for
    estimated cameras (scene.poses colmap / pointmaps). The refined poses go to cameras_refined.json and the
    uplift uses them."""
    pose_opt_lr: float = 1e-4
    """Learning rate of the pose corrections (× sqrt(batch_size))."""
    pose_opt_reg: float = 1e-6
    """Weight decay of the pose corrections (pulls them towards the given poses)."""
    backend: Literal["auto", "gsplat", "torch"] = "auto"
    """Rasteriser backend: auto = gsplat on CUDA, the PyTorch reference on CPU."""


# Presets are data: a full TrainConfig each, one name each. "paper": 3DGS' 30k-iteration schedule that PanSt3R
# uses (meant for a GPU). "demo": the CPU schedule of `make demo` (its figures: bench/train_demo.py and the
# README's measured table). "demo_fast": the same at half resolution. "tiny": pipeline smoke tests.
PRESETS: dict[str, TrainConfig] = {
    "demo": TrainConfig(iterations=800, scale=1.0, sh_degree=1, sh_degree_interval=400, lr_means_final=1.6e-5,
                        refine_start=200, refine_stop=600, refine_every=100, reset_every=100_000, max_gaussians=30_000,
                        init_points=20_000, checkpoint_every=200, log_every=10),
    "demo_fast": TrainConfig(iterations=300, scale=0.5, sh_degree=0, sh_degree_interval=1000, lr_means_final=1.6e-5,
                             refine_start=100, refine_stop=250, refine_every=50, reset_every=100_000,
                             max_gaussians=15_000, init_points=10_000, checkpoint_every=100, log_every=10),
    "paper": TrainConfig(),
    "tiny": TrainConfig(iterations=60, scale=1.0, sh_degree=0, lr_means_final=1.6e-5, refine_start=20, refine_stop=50,
                        refine_every=10, reset_every=100_000, max_gaussians=4000, init_points=2000, checkpoint_every=20,
                        log_every=5),
}
