"""3DGS training with PanSt3R's panoptic-colour regulariser (PanSt3R §3.3).

A second set of per-Gaussian colours (`pan`) is rendered with the same geometry as the RGB and supervised by
instance-colour maps (each consistent instance id painted with its `pipeline.common.labels.palette` colour):

    L = L_rgb + λ·L_pan,   L_rgb = (1 − λ_ssim)·L1 + λ_ssim·(1 − SSIM),   L_pan = L1 on non-void pixels

Both are composited in ONE rasterisation pass (features = [SH colour | pan], 6 channels), so L_pan's gradient
reaches the geometry (means, scales, opacities, quats) as well as `pan`: instance boundaries shape the splat.

Densification uses gsplat's own strategies (DefaultStrategy / MCMCStrategy) on the single ParameterDict of
`splat.gaussians`, so every attribute, `pan` included, is split/duplicated/pruned together. On CPU, the two
CUDA kernels MCMCStrategy calls are swapped for PyTorch equivalents (`_cpu_mcmc_ops`).

Checkpoints (`ckpt.pt`) hold everything the next step depends on (parameters, Adam states, strategy state,
step, the view-order RNG and torch's RNG, history, config), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from pipeline.common.io import InputError, atomic_path, write_json

from .config import PRESETS, TrainConfig
from .gaussians import PARAM_NAMES, SH_C0, init_gaussians, points_for_scene
from .render import Cameras, render

__all__ = ["TrainConfig", "TrainResult", "PRESETS", "train", "evaluate_psnr", "scene_scale", "load_checkpoint",
           "CHECKPOINT_VERSION"]

CHECKPOINT_VERSION = 1


@dataclass
class TrainResult:
    gaussians: torch.nn.ParameterDict
    history: list[dict]  # {step, loss, l_rgb, l_pan, psnr, num_gaussians, time}
    test_psnr: float | None  # mean over test views (None without test views)
    test_psnr_per_view: dict[str, float]
    wall_time: float  # seconds of this call
    steps: int
    num_gaussians: int
    init_source: str  # where the initial points came from (ply / depth / pointmap / random / checkpoint)
    resumed_from: int | None = None  # step of the checkpoint this call continued from


# -------------------------------------------------------------------------------------------------------------
# data
# -------------------------------------------------------------------------------------------------------------


def scene_scale(frames: Sequence) -> float:
    """1.1 × the largest distance of a camera centre from their mean (gsplat's scene scale); ≥ 1e-2."""
    c = np.stack([np.asarray(f.c2w, np.float64)[:3, 3] for f in frames])
    return max(float(np.linalg.norm(c - c.mean(0), axis=1).max()) * 1.1, 1e-2)


def _resize(img: np.ndarray, w: int, h: int, nearest: bool = False) -> np.ndarray:
    if img.shape[1] == w and img.shape[0] == h:
        return img
    from PIL import Image

    if nearest:
        return np.asarray(Image.fromarray(img.astype(np.int32)).resize((w, h), Image.NEAREST)).astype(img.dtype)
    chans = [np.asarray(Image.fromarray(img[..., c].astype(np.float32), mode="F").resize((w, h), Image.BOX))
             for c in range(img.shape[-1])]
    return np.stack(chans, -1).astype(np.float32)


def _load_rgb(scene, stems: Sequence[str], cams: Cameras) -> Tensor:
    """[V, H, W, 3] float32 images at the cameras' resolution (box-filtered)."""
    return torch.from_numpy(np.stack([_resize(scene.load_rgb(s), cams.width, cams.height) for s in stems]))


def _instance_targets(maps: Mapping[str, np.ndarray], stems: Sequence[str], w: int, h: int) -> tuple[Tensor, Tensor]:
    """Instance maps -> palette colours [V, H, W, 3] and non-void mask [V, H, W, 1] at the training size."""
    from pipeline.common.labels import palette

    missing = [s for s in stems if s not in maps]
    if missing:
        raise InputError(f"instance maps missing for train frames {missing[:5]} ({len(missing)} in all); "
                         "give one [H, W] id map per train frame")
    ids = np.stack([_resize(np.asarray(maps[s], np.int64), w, h, nearest=True) for s in stems])  # [V, H, W]
    uniq, inv = np.unique(ids, return_inverse=True)
    cols = palette(uniq)[inv.reshape(ids.shape)]  # [V, H, W, 3]
    return torch.from_numpy(cols.astype(np.float32)), torch.from_numpy(ids > 0)[..., None]


# -------------------------------------------------------------------------------------------------------------
# parameters, optimisers, strategy
# -------------------------------------------------------------------------------------------------------------


def _lrs(cfg: TrainConfig, sscale: float) -> dict[str, float]:
    return {"means": cfg.lr_means * sscale, "quats": cfg.lr_quats, "scales": cfg.lr_scales,
            "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN, "pan": cfg.lr_pan}


def _make_optimizers(params: torch.nn.ParameterDict, cfg: TrainConfig, sscale: float) -> dict[str, torch.optim.Adam]:
    """One Adam per attribute (gsplat's strategies need exactly one param group per parameter)."""
    B = cfg.batch_size
    lrs = _lrs(cfg, sscale)
    return {k: torch.optim.Adam([{"params": params[k], "lr": lrs[k] * math.sqrt(B), "name": k}],
                                eps=1e-15 / math.sqrt(B), betas=(1 - B * (1 - 0.9), 1 - B * (1 - 0.999)))
            for k in params}


def _means_lr(cfg: TrainConfig, sscale: float, step: int) -> float:
    """Exponential decay from lr_means to lr_means_final over the run (× scene scale × sqrt(batch))."""
    t = min(step / max(cfg.iterations, 1), 1.0)
    lr = cfg.lr_means * (cfg.lr_means_final / cfg.lr_means) ** t
    return lr * sscale * math.sqrt(cfg.batch_size)


def _make_strategy(cfg: TrainConfig):
    from gsplat.strategy import DefaultStrategy, MCMCStrategy

    if cfg.strategy == "mcmc":
        return MCMCStrategy(cap_max=cfg.max_gaussians or 1_000_000, noise_lr=cfg.mcmc_noise_lr,
                            refine_start_iter=cfg.refine_start, refine_stop_iter=cfg.refine_stop,
                            refine_every=cfg.refine_every, min_opacity=cfg.prune_opacity)
    if cfg.strategy != "default":
        raise InputError(f"unknown strategy {cfg.strategy!r}; use default or mcmc")
    return DefaultStrategy(prune_opa=cfg.prune_opacity, grow_grad2d=cfg.grow_grad2d, grow_scale3d=cfg.grow_scale3d,
                           prune_scale3d=cfg.prune_scale3d, refine_start_iter=cfg.refine_start,
                           refine_stop_iter=cfg.refine_stop, reset_every=cfg.reset_every,
                           refine_every=cfg.refine_every)


def _mcmc_relocation_torch(opacities: Tensor, scales: Tensor, ratios: Tensor, binoms: Tensor):
    """3DGS-MCMC (Kheradmand et al. 2024, Eq. 9) in PyTorch: a Gaussian cloned into n copies gets
    o' = 1 − (1 − o)^(1/n) and s' = o / (Σ_{i=1..n} Σ_{k=0..i−1} C(i−1, k)(−1)^k o'^(k+1)/√(k+1)) · s."""
    n_max = binoms.shape[0]
    n = ratios.clamp(1, n_max).long()  # [N]
    new_o = 1.0 - torch.pow(1.0 - opacities, 1.0 / n.to(opacities.dtype))  # [N]
    i = torch.arange(1, n_max + 1, device=opacities.device)  # [I]
    k = torch.arange(n_max, device=opacities.device)  # [K]
    sign = torch.where(k % 2 == 0, 1.0, -1.0).to(opacities.dtype)
    coef = binoms[(i - 1)[:, None].clamp(max=n_max - 1), k[None, :]].to(opacities.dtype)  # [I, K] C(i-1, k)
    coef = coef * (k[None, :] <= (i - 1)[:, None]) * sign / torch.sqrt(k + 1.0).to(opacities.dtype)
    powers = new_o[:, None] ** (k + 1).to(opacities.dtype)[None, :]  # [N, K]
    per_i = powers @ coef.T  # [N, I]
    denom = (per_i * (i[None, :] <= n[:, None])).sum(1)  # [N]
    new_s = (opacities / denom)[:, None] * scales
    return new_o, new_s


@contextlib.contextmanager
def _cpu_mcmc_ops(device: torch.device):
    """gsplat 1.5.3's MCMC ops call two CUDA kernels; on CPU use PyTorch equivalents for the duration."""
    if device.type == "cuda":
        yield
        return
    import gsplat.strategy.ops as ops
    from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci

    saved = ops.compute_relocation, ops.quat_scale_to_covar_preci
    ops.compute_relocation = _mcmc_relocation_torch
    ops.quat_scale_to_covar_preci = _quat_scale_to_covar_preci
    try:
        yield
    finally:
        ops.compute_relocation, ops.quat_scale_to_covar_preci = saved


def _reset_opacities(params, optimizers, state, value: float) -> None:
    """3DGS' periodic opacity reset. gsplat 1.5.3's DefaultStrategy means to do it but never does: its test
    `step % reset_every == 0 & step > 0` parses as `step % reset_every == (0 & step) > 0`, always False."""
    from gsplat.strategy.ops import reset_opa

    reset_opa(params=params, optimizers=optimizers, state=state, value=value)


@torch.no_grad()
def _cap_gaussians(params, optimizers, state, cap: int) -> int:
    """Prune the lowest-opacity Gaussians beyond `cap` (DefaultStrategy has no cap of its own)."""
    from gsplat.strategy.ops import remove

    n = len(params["means"])
    if cap <= 0 or n <= cap:
        return 0
    order = torch.argsort(params["opacities"].detach(), stable=True)
    mask = torch.zeros(n, dtype=torch.bool, device=params["means"].device)
    mask[order[: n - cap]] = True
    remove(params=params, optimizers=optimizers, state=state, mask=mask)
    return n - cap


# -------------------------------------------------------------------------------------------------------------
# rendering + loss
# -------------------------------------------------------------------------------------------------------------


def _sh_rgb(params: Mapping[str, Tensor], viewmats: Tensor, degree: int) -> Tensor:
    """View-dependent colour [C, N, 3] from the first `degree` SH bands (+0.5, clamped at 0, as gsplat)."""
    C = viewmats.shape[0]
    if degree == 0:
        rgb = params["sh0"][:, 0] * SH_C0 + 0.5  # [N, 3]
        return torch.clamp_min(rgb, 0.0)[None].expand(C, -1, -1)
    from gsplat.cuda._torch_impl import _spherical_harmonics

    nb = (degree + 1) ** 2
    coeffs = torch.cat([params["sh0"], params["shN"][:, : nb - 1]], 1)  # [N, nb, 3]
    campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
    dirs = params["means"][None] - campos[:, None]  # [C, N, 3]
    return torch.clamp_min(_spherical_harmonics(degree, dirs, coeffs[None].expand(C, -1, -1, -1)) + 0.5, 0.0)


def _render_views(params, cams: Cameras, degree: int, background: Tensor, with_pan: bool, backend: str):
    """One pass: features [C, H, W, 3 (+3 pan)], meta. Same geometry for RGB and panoptic colours."""
    viewmats = cams.viewmats.to(params["means"].device)
    colors = _sh_rgb(params, viewmats, degree)  # [C, N, 3]
    bg = background
    if with_pan:
        pan = params["pan"][None].expand(colors.shape[0], -1, -1)  # [C, N, 3]
        colors = torch.cat([colors, pan], -1)  # [C, N, 6]
        bg = torch.cat([background, background.new_zeros(3)])  # panoptic background = black = void
    out = render(params, cams, colors, background=bg, backend=backend, render_depth=False)
    return out.features, out.meta


def _rgb_loss(pred: Tensor, gt: Tensor, ssim_lambda: float) -> tuple[Tensor, Tensor]:
    """(1 − λ)·L1 + λ·(1 − SSIM) on [C, H, W, 3] images; also returns the MSE (for PSNR)."""
    from pytorch_msssim import ssim

    l1 = (pred - gt).abs().mean()
    if ssim_lambda > 0:
        s = ssim(pred.permute(0, 3, 1, 2), gt.permute(0, 3, 1, 2), data_range=1.0, size_average=True)
        loss = (1 - ssim_lambda) * l1 + ssim_lambda * (1 - s)
    else:
        loss = l1
    mse = ((pred.detach().clamp(0, 1) - gt) ** 2).mean()
    return loss, mse


def _pan_loss(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """L1 between rendered and target instance colours over non-void pixels only (mean per valid value)."""
    w = valid.to(pred.dtype)  # [C, H, W, 1]
    return ((pred - target).abs() * w).sum() / (w.sum() * pred.shape[-1]).clamp_min(1.0)


@torch.no_grad()
def evaluate_psnr(gaussians: Mapping[str, Tensor], scene, stems: Sequence[str], scale: float = 1.0, *,
                  background: Sequence[float] = (0.0, 0.0, 0.0), sh_degree: int | None = None,
                  backend: str = "auto") -> tuple[float | None, dict[str, float]]:
    """PSNR = −10·log10(MSE) over all pixels and channels (render clamped to [0, 1]) per view, and their mean
    (None without views). Views are rendered one at a time so memory stays flat."""
    stems = list(stems)
    if not stems:
        return None, {}
    dev = gaussians["means"].device
    K = gaussians["shN"].shape[1] if gaussians.get("shN") is not None else 0
    deg = int(math.isqrt(K + 1)) - 1 if sh_degree is None else int(sh_degree)
    bg = torch.tensor(list(background), dtype=torch.float32, device=dev)
    out: dict[str, float] = {}
    for s in stems:
        cam = Cameras.from_frames([scene.frame(s)], scale=scale).to(dev)
        gt = _load_rgb(scene, [s], cam).to(dev)
        img, _ = _render_views(gaussians, cam, deg, bg, False, backend)
        mse = float(((img.clamp(0, 1) - gt) ** 2).mean())
        out[s] = -10.0 * math.log10(max(mse, 1e-12))
    return float(np.mean(list(out.values()))), out


# -------------------------------------------------------------------------------------------------------------
# checkpoints
# -------------------------------------------------------------------------------------------------------------


def _config_dict(cfg: TrainConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["background"] = list(d["background"])
    return d


def _run_key(cfg: TrainConfig, stems: Sequence[str], with_pan: bool) -> dict:
    """What a checkpoint must match to be resumed (device and logging cadence do not change the maths)."""
    d = _config_dict(cfg)
    for k in ("device", "eval_every", "checkpoint_every", "threads", "log_every"):
        d.pop(k)
    return {"config": d, "train": list(stems), "pan": bool(with_pan)}


def _save_checkpoint(path: Path, *, step, params, optimizers, strategy_state, rng, order, history, key, sscale,
                     init_source):
    state = {
        "version": CHECKPOINT_VERSION,
        "step": int(step),
        "params": {k: v.detach().cpu() for k, v in params.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "strategy_state": {k: (v.cpu() if isinstance(v, Tensor) else v) for k, v in strategy_state.items()},
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "np_rng": rng.bit_generator.state,
        "order": list(order),  # the rest of the current epoch's view order
        "history": history,
        "key": key,
        "scene_scale": float(sscale),
        "init_source": init_source,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict:
    """Read ckpt.pt (tensors on CPU); a one-line InputError when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{path}: corrupt or unreadable checkpoint ({type(e).__name__}); "
                         "delete it to retrain") from None
    if not isinstance(ck, dict) or ck.get("version") != CHECKPOINT_VERSION:
        raise InputError(f"{path}: not a splat.train checkpoint of version {CHECKPOINT_VERSION}; delete it to retrain")
    return ck


# -------------------------------------------------------------------------------------------------------------
# training
# -------------------------------------------------------------------------------------------------------------


def _progress_bar(total: int, initial: int, enabled: bool):
    import sys

    from tqdm.auto import tqdm

    # In a log file (no terminal) one line every 30 s says enough; per-step redraws would flood it.
    tty = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=not enabled, desc="splat", dynamic_ncols=True, leave=False,
                mininterval=0.1 if tty else 30.0)


def train(scene, cfg: TrainConfig | None = None, *, instance_maps: Mapping[str, np.ndarray] | None = None,
          out_dir: str | Path | None = None, resume: bool | None = True, progress: bool = True,
          device: str | torch.device | None = None, init_points: tuple[np.ndarray, np.ndarray | None] | None = None,
          kill_hook: Callable[[], None] | None = None) -> TrainResult:
    """Fit Gaussians to `scene`'s train views; with `instance_maps` ({stem: [H, W] int ids, 0 = void}) also the
    panoptic colours (λ·L1). With `out_dir`: ckpt.pt (every checkpoint_every steps and at the end),
    gaussians.ply and history.json. `resume` (None = True) continues from a matching ckpt.pt in out_dir.
    `init_points` = (xyz [N, 3], rgb [N, 3] | None) overrides `points_for_scene`. `kill_hook` is called once,
    halfway, right after a checkpoint (tests use it to die mid-run)."""
    cfg = cfg or TrainConfig()
    saved_threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(scene, cfg, instance_maps, out_dir, resume, progress, device, init_points, kill_hook)
    finally:
        torch.set_num_threads(saved_threads)


def _train(scene, cfg: TrainConfig, instance_maps, out_dir, resume, progress, device, init_points,
           kill_hook) -> TrainResult:
    t_start = time.perf_counter()
    dev = torch.device(device if device is not None else cfg.device)
    if cfg.iterations < 0 or cfg.batch_size < 1 or cfg.scale <= 0:
        raise InputError(f"invalid TrainConfig: iterations={cfg.iterations}, batch_size={cfg.batch_size}, "
                         f"scale={cfg.scale}; use iterations >= 0, batch_size >= 1, scale > 0")
    stems = list(scene.train)
    if not stems:
        raise InputError(f"{scene.root}: no train frames; list some under \"train\" in splits.json")
    with_pan = instance_maps is not None
    out_dir = Path(out_dir) if out_dir is not None else None
    ckpt_path = out_dir / "ckpt.pt" if out_dir is not None else None
    key = _run_key(cfg, stems, with_pan)

    # -- data, preloaded at the training resolution --------------------------------------------------------
    frames = scene.train_frames
    cams_all = Cameras.from_frames(frames, scale=cfg.scale)
    gt_rgb = _load_rgb(scene, stems, cams_all).to(dev)  # [V, H, W, 3]
    pan_t = pan_valid = None
    if with_pan:
        pan_t, pan_valid = _instance_targets(instance_maps, stems, cams_all.width, cams_all.height)
        pan_t, pan_valid = pan_t.to(dev), pan_valid.to(dev)  # [V, H, W, 3], [V, H, W, 1]
    cams_all = cams_all.to(dev)
    sscale = scene_scale(frames)
    background = torch.tensor(list(cfg.background), dtype=torch.float32, device=dev)
    if len(background) != 3:
        raise InputError(f"TrainConfig.background must have 3 values, got {cfg.background}")

    # -- state: fresh or from a checkpoint ----------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    strategy = _make_strategy(cfg)
    history: list[dict] = []
    start, resumed_from, ck = 0, None, None
    if (resume is None or resume) and ckpt_path is not None and ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path)
        if ck["key"] != key:
            ck = None  # another config, split or label set: train from scratch
    if ck is not None:
        params = torch.nn.ParameterDict({k: torch.nn.Parameter(ck["params"][k].to(dev)) for k in PARAM_NAMES})
        optimizers = _make_optimizers(params, cfg, sscale)
        for k, o in optimizers.items():
            o.load_state_dict(ck["optimizers"][k])
        sstate = {k: (v.to(dev) if isinstance(v, Tensor) else v) for k, v in ck["strategy_state"].items()}
        torch.set_rng_state(ck["torch_rng"])
        if ck["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
        rng.bit_generator.state = ck["np_rng"]
        history = list(ck["history"])
        start = resumed_from = int(ck["step"])
        init_source = ck["init_source"]
    else:
        if init_points is not None:
            xyz, rgb = init_points
            init_source = "given"
        else:
            xyz, rgb, init_source = points_for_scene(scene, cfg.init_points, cfg.seed)
        params = init_gaussians(xyz, rgb, sh_degree=cfg.sh_degree, init_opacity=cfg.init_opacity,
                                init_scale=cfg.init_scale, seed=cfg.seed).to(dev)
        optimizers = _make_optimizers(params, cfg, sscale)
        sstate = strategy.initialize_state(scene_scale=sscale) if cfg.strategy == "default" \
            else strategy.initialize_state()
    strategy.check_sanity(params, optimizers)

    # -- loop ---------------------------------------------------------------------------------------------
    V, B = len(stems), cfg.batch_size
    order: list[int] = []
    if ck is not None:
        order = list(ck.get("order", []))
    kill_at = cfg.iterations // 2 if kill_hook is not None else -1
    bar = _progress_bar(cfg.iterations, start, progress)
    last_psnr = float("nan")
    t_loop = time.perf_counter()
    time_offset = history[-1]["time"] if history else 0.0
    step = start
    with _cpu_mcmc_ops(dev) if cfg.strategy == "mcmc" else contextlib.nullcontext():
        for step in range(start, cfg.iterations):
            # view order: a fresh permutation per epoch, from a generator saved in checkpoints
            idx = []
            for _ in range(B):
                if not order:
                    order = rng.permutation(V).tolist()
                idx.append(order.pop())
            lr_m = _means_lr(cfg, sscale, step)
            optimizers["means"].param_groups[0]["lr"] = lr_m
            degree = min(step // max(cfg.sh_degree_interval, 1), cfg.sh_degree)
            cams = cams_all[idx]
            feats, meta = _render_views(params, cams, degree, background, with_pan, cfg.backend)
            strategy.step_pre_backward(params, optimizers, sstate, step, meta)
            l_rgb, mse = _rgb_loss(feats[..., :3], gt_rgb[idx], cfg.ssim_lambda)
            loss = l_rgb
            l_pan = torch.zeros((), device=dev)
            if with_pan:
                l_pan = _pan_loss(feats[..., 3:6], pan_t[idx], pan_valid[idx])
                loss = loss + cfg.lambda_pan * l_pan
            if cfg.strategy == "mcmc":
                loss = loss + cfg.mcmc_opacity_reg * torch.sigmoid(params["opacities"]).mean() \
                    + cfg.mcmc_scale_reg * torch.exp(params["scales"]).mean()
            loss.backward()
            for o in optimizers.values():
                o.step()
                o.zero_grad(set_to_none=True)
            if cfg.strategy == "mcmc":
                strategy.step_post_backward(params, optimizers, sstate, step, meta, lr=lr_m)
            else:
                strategy.step_post_backward(params, optimizers, sstate, step, meta, packed=False)
                if 0 < step < cfg.refine_stop and step % cfg.reset_every == 0:
                    _reset_opacities(params, optimizers, sstate, cfg.prune_opacity * 2.0)
                if cfg.max_gaussians > 0 and step % cfg.refine_every == 0:
                    _cap_gaussians(params, optimizers, sstate, cfg.max_gaussians)

            done = step + 1
            last_psnr = -10.0 * math.log10(max(float(mse), 1e-12))
            n_g = len(params["means"])
            if done % max(cfg.log_every, 1) == 0 or done == cfg.iterations:
                entry = {"step": done, "loss": float(loss.detach()), "l_rgb": float(l_rgb.detach()),
                         "l_pan": float(l_pan.detach()), "psnr": last_psnr, "num_gaussians": n_g,
                         "time": time_offset + time.perf_counter() - t_loop}
                if cfg.eval_every > 0 and done % cfg.eval_every == 0 and done != cfg.iterations and scene.test:
                    entry["test_psnr"] = evaluate_psnr(params, scene, scene.test, cfg.eval_scale,
                                                       background=cfg.background, sh_degree=degree,
                                                       backend=cfg.backend)[0]
                history.append(entry)
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", psnr=f"{last_psnr:.2f}", n=n_g, refresh=False)
            save_now = cfg.checkpoint_every > 0 and done % cfg.checkpoint_every == 0 and done != cfg.iterations
            if ckpt_path is not None and (save_now or done == kill_at):
                _save_checkpoint(ckpt_path, step=done, params=params, optimizers=optimizers, strategy_state=sstate,
                                 rng=rng, order=order, history=history, key=key, sscale=sscale,
                                 init_source=init_source)
            if done == kill_at:
                kill_hook()
    bar.close()

    # -- outputs ------------------------------------------------------------------------------------------
    final_degree = min(max(cfg.iterations - 1, 0) // max(cfg.sh_degree_interval, 1), cfg.sh_degree)
    mean_psnr, per_view = evaluate_psnr(params, scene, scene.test, cfg.eval_scale, background=cfg.background,
                                        sh_degree=final_degree, backend=cfg.backend)
    if out_dir is not None:
        from .ply import save_ply

        _save_checkpoint(ckpt_path, step=cfg.iterations, params=params, optimizers=optimizers, strategy_state=sstate,
                         rng=rng, order=order, history=history, key=key, sscale=sscale, init_source=init_source)
        save_ply(out_dir / "gaussians.ply", _exported(params, final_degree))
        write_json(out_dir / "history.json", history)
        write_json(out_dir / "train_summary.json", {
            "steps": cfg.iterations, "num_gaussians": len(params["means"]), "test_psnr": mean_psnr,
            "test_psnr_per_view": per_view, "init_source": init_source, "scene_scale": sscale,
            "sh_degree": final_degree, "panoptic_regulariser": with_pan, "resumed_from": resumed_from})
    return TrainResult(gaussians=params, history=history, test_psnr=mean_psnr, test_psnr_per_view=per_view,
                       wall_time=time.perf_counter() - t_start, steps=cfg.iterations,
                       num_gaussians=len(params["means"]), init_source=init_source, resumed_from=resumed_from)


def _exported(params: Mapping[str, Tensor], degree: int) -> dict[str, Tensor]:
    """The Gaussians as rendered at the end: SH bands above the active degree (never trained) are dropped, so
    renderers that use all stored bands show what the trainer optimised."""
    out = {k: v.detach().cpu() for k, v in params.items()}
    out["shN"] = out["shN"][:, : (degree + 1) ** 2 - 1]
    return out

