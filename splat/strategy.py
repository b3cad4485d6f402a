"""Densification strategies: gsplat's two, completed where gsplat 1.5.3 leaves a gap, behind one call pattern.

    strategy, state = make_strategy(cfg, scene_scale)
    strategy.step_pre_backward(params, optimizers, state, step, meta)
    loss = strategy.regularised(loss, params)
    loss.backward(); optimisers step
    strategy.step_post_backward(params, optimizers, state, step, meta, lr=means_lr)

`CappedDefaultStrategy` is 3DGS' clone/split/prune (gsplat's `DefaultStrategy`) plus the periodic opacity reset
that gsplat 1.5.3 skips and a cap on the number of Gaussians. `CPUMCMCStrategy` is 3DGS-MCMC (gsplat's
`MCMCStrategy`) plus its opacity/scale regulariser and PyTorch stand-ins for the two CUDA kernels it calls, so
it also runs on CPU. Both act on the one `ParameterDict` of `splat.gaussians` and its per-attribute Adams, so
every attribute (`pan` included) is cloned, split, relocated and pruned together. Their running state is gsplat's
plain dict (`grad2d`, `count`, `scene_scale` / `binoms`), which checkpoints store as it is.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from gsplat.strategy import DefaultStrategy, MCMCStrategy
from torch import Tensor

from pipeline.common.io import InputError

from .config import TrainConfig

__all__ = ["CappedDefaultStrategy", "CPUMCMCStrategy", "make_strategy", "mcmc_relocation_torch"]

Params = torch.nn.ParameterDict  # every per-Gaussian attribute, [N, ...] each
Optimizers = dict[str, torch.optim.Optimizer]  # one single-group Adam per attribute


@dataclass
class CappedDefaultStrategy(DefaultStrategy):
    """gsplat's DefaultStrategy with the opacity reset done and an optional cap on the Gaussian count.

    gsplat 1.5.3 means to reset opacities every `reset_every` steps but never does: its test
    `step % reset_every == 0 & step > 0` parses as `step % reset_every == (0 & step) > 0`, always False. Here the
    reset (to 2 × prune_opa, while densifying) follows gsplat's step; should a later gsplat reset too, the second
    reset changes nothing (it clamps to the same value and zeroes the same Adam moments).
    """

    cap_max: int = 0
    """After every refine step, prune the lowest-opacity Gaussians beyond this many (0 = no cap)."""

    def step_post_backward(self, params: Params, optimizers: Optimizers, state: dict[str, Any], step: int,
                           info: dict[str, Any], packed: bool = False, lr: float | None = None) -> None:
        """gsplat's clone/split/prune, then the opacity reset, then the cap. `lr` is unused (MCMC's signature)."""
        super().step_post_backward(params, optimizers, state, step, info, packed=packed)
        if 0 < step < self.refine_stop_iter and step % self.reset_every == 0:
            self.reset_opacities(params, optimizers, state)
        if self.cap_max > 0 and step % self.refine_every == 0:
            self.cap(params, optimizers, state)

    def regularised(self, loss: Tensor, params: Params) -> Tensor:
        """3DGS adds no regulariser."""
        return loss

    @torch.no_grad()
    def reset_opacities(self, params: Params, optimizers: Optimizers, state: dict[str, Any]) -> None:
        """Clamp every opacity to at most 2 × prune_opa and zero its Adam moments (3DGS' periodic reset)."""
        from gsplat.strategy.ops import reset_opa

        reset_opa(params=params, optimizers=optimizers, state=state, value=self.prune_opa * 2.0)

    @torch.no_grad()
    def cap(self, params: Params, optimizers: Optimizers, state: dict[str, Any]) -> int:
        """Prune the lowest-opacity Gaussians beyond `cap_max` (ties: the lower index goes first); returns how
        many were removed."""
        from gsplat.strategy.ops import remove

        n = len(params["means"])
        if self.cap_max <= 0 or n <= self.cap_max:
            return 0
        order = torch.argsort(params["opacities"].detach(), stable=True)  # [N] ascending opacity
        mask = torch.zeros(n, dtype=torch.bool, device=params["means"].device)  # [N] True = remove
        mask[order[: n - self.cap_max]] = True
        remove(params=params, optimizers=optimizers, state=state, mask=mask)
        return n - self.cap_max


@dataclass
class CPUMCMCStrategy(MCMCStrategy):
    """gsplat's MCMCStrategy with the 3DGS-MCMC regulariser (L1 on opacities and scales) and, off the GPU,
    PyTorch stand-ins for the two CUDA kernels its relocation and noise call."""

    opacity_reg: float = 0.01
    """Weight of mean(sigmoid(opacities)) added to the loss."""
    scale_reg: float = 0.01
    """Weight of mean(exp(scales)) added to the loss."""

    def step_post_backward(self, params: Params, optimizers: Optimizers, state: dict[str, Any], step: int,
                           info: dict[str, Any], lr: float, packed: bool = False) -> None:
        """Relocate dead Gaussians, add new ones up to cap_max, perturb positions with noise scaled by `lr`."""
        with _cpu_mcmc_ops(params["means"].device):
            super().step_post_backward(params, optimizers, state, step, info, lr=lr)

    def regularised(self, loss: Tensor, params: Params) -> Tensor:
        return loss + self.opacity_reg * torch.sigmoid(params["opacities"]).mean() \
            + self.scale_reg * torch.exp(params["scales"]).mean()


def make_strategy(cfg: TrainConfig, scene_scale: float) -> tuple[CappedDefaultStrategy | CPUMCMCStrategy,
                                                                 dict[str, Any]]:
    """The strategy `cfg.strategy` names and its initial running state."""
    if cfg.strategy == "mcmc":
        mcmc = CPUMCMCStrategy(cap_max=cfg.max_gaussians or 1_000_000, noise_lr=cfg.mcmc_noise_lr,
                               refine_start_iter=cfg.refine_start, refine_stop_iter=cfg.refine_stop,
                               refine_every=cfg.refine_every, min_opacity=cfg.prune_opacity,
                               opacity_reg=cfg.mcmc_opacity_reg, scale_reg=cfg.mcmc_scale_reg)
        return mcmc, mcmc.initialize_state()
    if cfg.strategy != "default":
        raise InputError(f"unknown strategy {cfg.strategy!r}; use default or mcmc")
    default = CappedDefaultStrategy(prune_opa=cfg.prune_opacity, grow_grad2d=cfg.grow_grad2d,
                                    grow_scale3d=cfg.grow_scale3d, prune_scale3d=cfg.prune_scale3d,
                                    refine_start_iter=cfg.refine_start, refine_stop_iter=cfg.refine_stop,
                                    reset_every=cfg.reset_every, refine_every=cfg.refine_every,
                                    cap_max=cfg.max_gaussians)
    return default, default.initialize_state(scene_scale=scene_scale)


def mcmc_relocation_torch(opacities: Tensor, scales: Tensor, ratios: Tensor, binoms: Tensor) -> tuple[Tensor, Tensor]:
    """3DGS-MCMC (Kheradmand et al. 2024, Eq. 9) in PyTorch: a Gaussian cloned into n copies gets
    o' = 1 − (1 − o)^(1/n) and s' = o / (Σ_{i=1..n} Σ_{k=0..i−1} C(i−1, k)(−1)^k o'^(k+1)/√(k+1)) · s.
    opacities [N], scales [N, 3], ratios [N] (n), binoms [n_max, n_max] -> (o' [N], s' [N, 3])."""
    n_max = binoms.shape[0]
    n = ratios.clamp(1, n_max).long()  # [N]
    new_o = 1.0 - torch.pow(1.0 - opacities, 1.0 / n.to(opacities.dtype))  # [N]
    i = torch.arange(1, n_max + 1, device=opacities.device)  # [I]
    k = torch.arange(n_max, device=opacities.device)  # [K]
    sign = torch.where(k % 2 == 0, 1.0, -1.0).to(opacities.dtype)  # [K]
    coef = binoms[(i - 1)[:, None].clamp(max=n_max - 1), k[None, :]].to(opacities.dtype)  # [I, K] C(i-1, k)
    coef = coef * (k[None, :] <= (i - 1)[:, None]) * sign / torch.sqrt(k + 1.0).to(opacities.dtype)
    powers = new_o[:, None] ** (k + 1).to(opacities.dtype)[None, :]  # [N, K]
    per_i = powers @ coef.T  # [N, I]
    denom = (per_i * (i[None, :] <= n[:, None])).sum(1)  # [N]
    new_s = (opacities / denom)[:, None] * scales  # [N, 3]
    return new_o, new_s


@contextlib.contextmanager
def _cpu_mcmc_ops(device: torch.device) -> Iterator[None]:
    """gsplat 1.5.3's MCMC ops call two CUDA kernels; on CPU use PyTorch equivalents for the duration."""
    if device.type == "cuda":
        yield
        return
    import gsplat.strategy.ops as ops
    from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci

    saved = ops.compute_relocation, ops.quat_scale_to_covar_preci
    ops.compute_relocation = mcmc_relocation_torch
    ops.quat_scale_to_covar_preci = _quat_scale_to_covar_preci
    try:
        yield
    finally:
        ops.compute_relocation, ops.quat_scale_to_covar_preci = saved
