"""Per-view pose refinement: a learnable SE(3) correction per training camera (off by default).

For cameras that were estimated (structure from motion, pointmaps), small pose errors blur the fit; a correction
ξ_v = (ω, t) per view, optimised with the Gaussians, absorbs them. The refined camera-to-world is c2w · exp(ξ_v)
(rotation by Rodrigues' formula, translation t), so ξ = 0 leaves every camera as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PoseCorrection", "se3_exp", "corrected_viewmats"]


def se3_exp(xi: Tensor) -> Tensor:  # xi [B, 6] (ω, t) -> [B, 4, 4]
    """Rigid transforms [R(ω) | t] with R(ω) from Rodrigues' formula (differentiable at ω = 0)."""
    w, t = xi[:, :3], xi[:, 3:]
    theta2 = (w * w).sum(-1, keepdim=True)  # [B, 1]
    theta = torch.sqrt(theta2 + 1e-24)
    small = theta2 < 1e-8
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)  # sin θ / θ
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / (theta2 + 1e-24))  # (1 − cos θ) / θ²
    zero = torch.zeros_like(w[:, 0])
    Kx = torch.stack([zero, -w[:, 2], w[:, 1], w[:, 2], zero, -w[:, 0], -w[:, 1], w[:, 0], zero], -1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device).expand_as(Kx)
    R = eye + a[..., None] * Kx + b[..., None] * (Kx @ Kx)  # [B, 3, 3]
    T = torch.zeros(xi.shape[0], 4, 4, dtype=xi.dtype, device=xi.device)
    T[:, :3, :3] = R
    T[:, :3, 3] = t
    T[:, 3, 3] = 1.0
    return T


def corrected_viewmats(viewmats: Tensor, xi: Tensor) -> Tensor:  # [B, 4, 4], [B, 6] -> [B, 4, 4]
    """World-to-camera of c2w · exp(ξ): exp(ξ)⁻¹ · viewmat, with the rigid inverse written out."""
    T = se3_exp(xi)
    R, t = T[:, :3, :3], T[:, :3, 3:]
    inv = torch.zeros_like(T)
    inv[:, :3, :3] = R.transpose(1, 2)
    inv[:, :3, 3:] = -R.transpose(1, 2) @ t
    inv[:, 3, 3] = 1.0
    return inv @ viewmats


@dataclass
class PoseCorrection:
    """The corrections of all V training views and their optimiser (explicit state, checkpointed)."""

    xi: torch.nn.Parameter  # [V, 6]
    optimizer: torch.optim.Adam

    @classmethod
    def create(cls, num_views: int, lr: float, weight_decay: float, batch_size: int, device) -> "PoseCorrection":
        xi = torch.nn.Parameter(torch.zeros(num_views, 6, device=device))
        opt = torch.optim.Adam([xi], lr=lr * math.sqrt(batch_size), weight_decay=weight_decay)
        return cls(xi, opt)

    def state(self) -> dict:
        return {"xi": self.xi.detach().cpu(), "optimizer": self.optimizer.state_dict()}

    def load(self, state: dict) -> None:
        with torch.no_grad():
            self.xi.copy_(state["xi"].to(self.xi.device))
        self.optimizer.load_state_dict(state["optimizer"])

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def refined_c2w(self, viewmats: Tensor) -> Tensor:  # [V, 4, 4] -> [V, 4, 4]
        """The refined camera-to-world of every view."""
        with torch.no_grad():
            return torch.linalg.inv(corrected_viewmats(viewmats.to(self.xi.device, self.xi.dtype), self.xi))
