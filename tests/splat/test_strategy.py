"""splat.strategy on its own: the Gaussian cap, the opacity reset gsplat 1.5.3 skips, the MCMC relocation formula
and the strategy factory. Hand-built parameters and a hand-built rasteriser `meta`; no rendering."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from pipeline.common.io import InputError
from splat.config import TrainConfig
from splat.gaussians import PARAM_NAMES, init_gaussians
from splat.strategy import CappedDefaultStrategy, CPUMCMCStrategy, make_strategy, mcmc_relocation_torch
from splat.train import _make_optimizers


def _gaussians(n: int, seed: int = 0):
    """n Gaussians with one Adam step taken, so every optimiser has non-zero moments."""
    g = init_gaussians(np.random.default_rng(seed).random((n, 3)), None, sh_degree=1, seed=seed)
    opt = _make_optimizers(g, TrainConfig(), 1.0)
    gen = torch.Generator().manual_seed(seed)
    for k, p in g.items():
        p.grad = torch.randn(p.shape, generator=gen)
        opt[k].step()
        opt[k].zero_grad(set_to_none=True)
    return g, opt


def _meta(n: int, grad: float = 1.0) -> dict:
    """What the rasteriser hands the strategy for one 8x8 camera that sees all n Gaussians."""
    means2d = torch.zeros(1, n, 2, requires_grad=True)
    means2d.grad = torch.full((1, n, 2), grad)
    return {"means2d": means2d, "width": 8, "height": 8, "n_cameras": 1, "radii": torch.ones(1, n, 2),
            "gaussian_ids": None}


def _assert_aligned(g, opt, state):
    n = len(g["means"])
    for k in PARAM_NAMES:
        assert g[k].shape[0] == n, (k, g[k].shape)
        for v in opt[k].state[g[k]].values():
            if torch.is_tensor(v) and v.dim() > 0:
                assert v.shape == g[k].shape, (k, v.shape)
    for k, v in state.items():
        if torch.is_tensor(v):
            assert len(v) == n, k


# ---------------------------------------------------------------------------------------------------------
# the cap
# ---------------------------------------------------------------------------------------------------------


def test_cap_prunes_lowest_opacity():
    g, opt = _gaussians(20)
    with torch.no_grad():
        g["opacities"].copy_(torch.arange(20.0))
    state = {"grad2d": torch.arange(20.0), "count": torch.ones(20)}
    assert CappedDefaultStrategy(cap_max=15).cap(g, opt, state) == 5
    assert torch.equal(g["opacities"].detach(), torch.arange(5.0, 20.0))
    assert torch.equal(state["grad2d"], torch.arange(5.0, 20.0))
    _assert_aligned(g, opt, state)
    assert CappedDefaultStrategy(cap_max=15).cap(g, opt, state) == 0  # at the cap: nothing to do
    assert CappedDefaultStrategy(cap_max=0).cap(g, opt, state) == 0  # 0 = no cap


@pytest.mark.parametrize("cap", [0, 27])
def test_cap_is_honoured_after_growth(cap):
    """Every Gaussian has a high gradient: a refine step clones/splits all 20 (-> 40); the cap then holds 27."""
    torch.manual_seed(0)  # the split offsets
    g, opt = _gaussians(20)
    strategy = CappedDefaultStrategy(refine_start_iter=0, refine_every=5, grow_grad2d=1e-3, cap_max=cap)
    state = strategy.initialize_state(scene_scale=1.0)
    strategy.step_post_backward(g, opt, state, 5, _meta(20))
    assert len(g["means"]) == (cap or 40)
    _assert_aligned(g, opt, state)
    strategy.step_post_backward(g, opt, state, 6, _meta(len(g["means"])))  # not a refine step: no change
    assert len(g["means"]) == (cap or 40)


# ---------------------------------------------------------------------------------------------------------
# the opacity reset (3DGS: every reset_every steps while densifying, to 2 × prune_opa)
# ---------------------------------------------------------------------------------------------------------


def test_opacity_reset_clamps_and_zeroes_its_adam_moments():
    g, opt = _gaussians(6)
    with torch.no_grad():
        g["opacities"].copy_(torch.logit(torch.tensor([0.001, 0.005, 0.0099, 0.02, 0.5, 0.99])))
    before = {k: v.detach().clone() for k, v in g.items()}
    moments = {k: opt[k].state[g[k]]["exp_avg"].clone() for k in PARAM_NAMES}
    # no densification in this window (refine_start_iter 1000), so only the reset can change anything
    strategy = CappedDefaultStrategy(refine_start_iter=1000, refine_stop_iter=100, reset_every=10, prune_opa=0.005)
    state = strategy.initialize_state()

    def post(step):
        strategy.step_post_backward(g, opt, state, step, _meta(6))

    for step in (0, 9, 11):  # not a reset step (step 0 never resets)
        post(step)
    assert torch.equal(g["opacities"].detach(), before["opacities"])
    post(10)
    expected = torch.minimum(before["opacities"], torch.logit(torch.tensor(0.01)))  # hand-computed: ≤ 2 × 0.005
    assert torch.equal(g["opacities"].detach(), expected)
    assert torch.sigmoid(g["opacities"].detach())[:3].tolist() == pytest.approx([0.001, 0.005, 0.0099], rel=1e-4)
    assert torch.sigmoid(g["opacities"].detach())[3:].tolist() == pytest.approx([0.01] * 3, rel=1e-5)
    assert not opt["opacities"].state[g["opacities"]]["exp_avg"].any()
    assert not opt["opacities"].state[g["opacities"]]["exp_avg_sq"].any()
    for k in set(PARAM_NAMES) - {"opacities"}:  # everything else untouched
        assert torch.equal(g[k].detach(), before[k]), k
        assert torch.equal(opt[k].state[g[k]]["exp_avg"], moments[k]), k
    with torch.no_grad():
        g["opacities"].fill_(3.0)
    post(100)  # a multiple of reset_every, but densification has stopped (refine_stop_iter): no reset
    assert torch.all(g["opacities"].detach() == 3.0)
    post(90)  # the last reset while densifying
    assert torch.equal(g["opacities"].detach(), torch.full((6,), float(torch.logit(torch.tensor(0.01)))))


def test_gsplat_default_strategy_alone_never_resets():
    """Why CappedDefaultStrategy resets: gsplat 1.5.3's own test of the reset step is always False. If this starts
    failing, gsplat resets by itself and the extra reset in CappedDefaultStrategy is redundant (and harmless)."""
    from gsplat.strategy import DefaultStrategy

    g, opt = _gaussians(4)
    with torch.no_grad():
        g["opacities"].fill_(3.0)
    plain = DefaultStrategy(refine_start_iter=1000, refine_stop_iter=100, reset_every=10)
    plain.step_post_backward(g, opt, plain.initialize_state(), 10, _meta(4))
    assert torch.all(g["opacities"].detach() == 3.0)


# ---------------------------------------------------------------------------------------------------------
# MCMC and the factory
# ---------------------------------------------------------------------------------------------------------


def test_mcmc_relocation_matches_hand_computed():
    from gsplat.strategy import MCMCStrategy

    binoms = MCMCStrategy().initialize_state()["binoms"]
    o = torch.tensor([0.3, 0.3, 0.8])
    s = torch.tensor([[1.0, 2.0, 3.0]] * 3)
    n = torch.tensor([1, 2, 3])
    new_o, new_s = mcmc_relocation_torch(o, s, n, binoms)
    # n = 1: unchanged
    assert new_o[0] == pytest.approx(0.3) and torch.allclose(new_s[0], s[0])
    # n = 2: o' = 1 - sqrt(1 - o); denominator = o' + (o' - o'^2/sqrt 2)
    op = 1 - math.sqrt(0.7)
    assert new_o[1] == pytest.approx(op, rel=1e-6)
    assert torch.allclose(new_s[1], s[1] * 0.3 / (2 * op - op ** 2 / math.sqrt(2)), rtol=1e-5)
    # n = 3: 1 + (1 - x/√2) + (1 - 2x/√2 + x²/√3) terms, each times x = o'
    x = 1 - 0.2 ** (1 / 3)
    den = x + (x - x * x / math.sqrt(2)) + (x - 2 * x * x / math.sqrt(2) + x ** 3 / math.sqrt(3))
    assert torch.allclose(new_s[2], s[2] * 0.8 / den, rtol=1e-5)


def test_mcmc_regulariser_is_l1_on_opacities_and_scales():
    g, _ = _gaussians(5)
    with torch.no_grad():
        g["opacities"].fill_(0.0)  # sigmoid 0.5
        g["scales"].fill_(math.log(2.0))  # exp 2
    reg = CPUMCMCStrategy(opacity_reg=0.1, scale_reg=0.01).regularised(torch.tensor(1.0), g)
    assert float(reg.detach()) == pytest.approx(1.0 + 0.1 * 0.5 + 0.01 * 2.0)
    assert CappedDefaultStrategy().regularised(torch.tensor(1.0), g) == 1.0


def test_make_strategy_maps_the_config():
    cfg = dataclasses.replace(TrainConfig(), refine_start=7, refine_stop=70, refine_every=3, reset_every=30,
                              prune_opacity=0.02, max_gaussians=123)
    default, state = make_strategy(cfg, 2.5)
    assert isinstance(default, CappedDefaultStrategy) and state["scene_scale"] == 2.5
    assert (default.refine_start_iter, default.refine_stop_iter, default.refine_every, default.reset_every,
            default.prune_opa, default.cap_max) == (7, 70, 3, 30, 0.02, 123)
    mcmc, mstate = make_strategy(dataclasses.replace(cfg, strategy="mcmc", max_gaussians=0), 2.5)
    assert isinstance(mcmc, CPUMCMCStrategy) and mcmc.cap_max == 1_000_000 and "binoms" in mstate
    assert mcmc.min_opacity == 0.02 and mcmc.opacity_reg == cfg.mcmc_opacity_reg
    with pytest.raises(InputError, match="unknown strategy 'nope'; use default or mcmc"):
        make_strategy(dataclasses.replace(cfg, strategy="nope"), 1.0)
