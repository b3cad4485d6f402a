"""3DGS training with PanSt3R's panoptic-colour regulariser (PanSt3R §3.3).

A second set of per-Gaussian colours (`pan`) is rendered with the same geometry as the RGB and supervised by
instance-colour maps (each consistent instance id painted with its `pipeline.common.labels.palette` colour):

    L = L_rgb + λ·L_pan,   L_rgb = (1 − λ_ssim)·L1 + λ_ssim·(1 − SSIM),   L_pan = L1 on non-void pixels

Both are composited in ONE rasterisation pass (features = [SH colour | pan], 6 channels), so L_pan's gradient
reaches the geometry (means, scales, opacities, quats) as well as `pan`: instance boundaries shape the splat.

The loop is gsplat's: one ParameterDict holding every per-Gaussian attribute (`splat.gaussians`), one Adam per
attribute, and a densification strategy (`splat.strategy`) called before and after each backward pass.
`train` = targets (`_prepare_targets`) → state (`_init_or_resume`) → steps (`_step`, `_after_step`) → outputs
(`_finish`). Checkpoints (`splat.checkpoint`) make a resumed run equal an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from pipeline.common.io import InputError, write_json
from pipeline.common.labels import palette, resize_nearest
from pipeline.common.progress import progress_bar
from pipeline.common.protocols import PosedFrame, SplatScene

from .checkpoint import CHECKPOINT_VERSION, load_checkpoint, run_key, save_checkpoint
from .config import PRESETS, TrainConfig
from .gaussians import PARAM_NAMES, init_gaussians, points_for_scene
from .render import Cameras, render, sh_colours
from .poses import PoseCorrection, corrected_viewmats
from .strategy import CappedDefaultStrategy, CPUMCMCStrategy, make_strategy

__all__ = ["TrainConfig", "TrainResult", "PRESETS", "train", "evaluate_psnr", "scene_scale", "load_checkpoint",
           "CHECKPOINT_VERSION"]


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
    refined_c2w: dict[str, np.ndarray] | None = None  # with cfg.pose_opt: each train view's refined pose [4, 4]


def train(scene: SplatScene, cfg: TrainConfig | None = None, *, instance_maps: Mapping[str, np.ndarray] | None = None,
          out_dir: str | Path | None = None, resume: bool | None = True, progress: bool = True,
          device: str | torch.device | None = None,
          init_points: tuple[np.ndarray, np.ndarray | None] | None = None) -> TrainResult:
    """Fit Gaussians to `scene`'s train views; with `instance_maps` ({stem: [H, W] int ids, 0 = void}) also the
    panoptic colours (λ·L1). With `out_dir`: ckpt.pt (every checkpoint_every steps and at the end),
    gaussians.ply and history.json. `resume` (None = True) continues from a matching ckpt.pt in out_dir.
    `init_points` = (xyz [N, 3], rgb [N, 3] | None) overrides `points_for_scene`. `device` defaults to the CPU;
    torch's thread count is the caller's to set (the pipeline sets it once per run, `torch_threads`)."""
    cfg = cfg or TrainConfig()
    return _train(scene, cfg, instance_maps, out_dir, resume, progress, device, init_points)


def _train(scene: SplatScene, cfg: TrainConfig, instance_maps, out_dir, resume, progress, device,
           init_points) -> TrainResult:
    t_start = time.perf_counter()
    dev = torch.device(device if device is not None else "cpu")
    if cfg.iterations < 0 or cfg.batch_size < 1 or cfg.scale <= 0:
        raise InputError(f"invalid TrainConfig: iterations={cfg.iterations}, batch_size={cfg.batch_size}, "
                         f"scale={cfg.scale}; use iterations >= 0, batch_size >= 1, scale > 0")
    if not list(scene.train):
        raise InputError(f"{scene.root}: no train frames; list some under \"train\" in splits.json")
    ckpt_path = Path(out_dir) / "ckpt.pt" if out_dir is not None else None
    data = _prepare_targets(scene, cfg, instance_maps, dev)
    run = _init_or_resume(scene, cfg, data, ckpt_path if resume is None or resume else None, init_points, dev)
    t_loop = time.perf_counter()
    time_offset = run.history[-1]["time"] if run.history else 0.0
    with progress_bar(cfg.iterations, "splat", unit="step", enabled=progress, initial=run.step,
                      log_every_s=30.0) as bar:
        for step in range(run.step, cfg.iterations):
            stats = _step(run, data, cfg, step)
            _after_step(run, stats, data, scene, cfg, time_offset + time.perf_counter() - t_loop, ckpt_path)
            bar.update(1)
            bar.set_postfix(loss=f"{stats.loss:.4f}", psnr=f"{stats.psnr:.2f}", n=len(run.params["means"]),
                            refresh=False)
    return _finish(run, data, scene, cfg, out_dir, time.perf_counter() - t_start)


# -------------------------------------------------------------------------------------------------------------
# targets: the training views, preloaded at the training resolution
# -------------------------------------------------------------------------------------------------------------


@dataclass
class _Targets:
    stems: list[str]  # the V training views
    cams: Cameras  # V cameras at the training resolution H × W
    rgb: Tensor  # [V, H, W, 3] images in [0, 1]
    pan: Tensor | None  # [V, H, W, 3] palette colours of the instance ids (None: no panoptic term)
    pan_valid: Tensor | None  # [V, H, W, 1] bool, non-void pixels
    background: Tensor  # [3] RGB behind the Gaussians
    scene_scale: float
    key: dict  # what a checkpoint must match to be resumed


def scene_scale(frames: Sequence[PosedFrame]) -> float:
    """1.1 × the largest distance of a camera centre from their mean (gsplat's scene scale); ≥ 1e-2."""
    c = np.stack([np.asarray(f.c2w, np.float64)[:3, 3] for f in frames])  # [V, 3]
    return max(float(np.linalg.norm(c - c.mean(0), axis=1).max()) * 1.1, 1e-2)


def _resize_rgb(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """[H, W, C] float image box-filtered to [h, w, C] float32 (unchanged when already that size)."""
    if img.shape[1] == w and img.shape[0] == h:
        return img
    from PIL import Image

    chans = [np.asarray(Image.fromarray(img[..., c].astype(np.float32), mode="F").resize((w, h), Image.BOX))
             for c in range(img.shape[-1])]
    return np.stack(chans, -1).astype(np.float32)


def _load_rgb(scene: SplatScene, stems: Sequence[str], cams: Cameras) -> Tensor:
    """[V, H, W, 3] float32 images at the cameras' resolution (box-filtered)."""
    return torch.from_numpy(np.stack([_resize_rgb(scene.load_rgb(s), cams.width, cams.height) for s in stems]))


def _instance_targets(maps: Mapping[str, np.ndarray], stems: Sequence[str], w: int, h: int) -> tuple[Tensor, Tensor]:
    """Instance maps -> palette colours [V, H, W, 3] and non-void mask [V, H, W, 1] at the training size."""
    missing = [s for s in stems if s not in maps]
    if missing:
        raise ValueError(f"instance maps missing for train frames {missing[:5]} ({len(missing)} in all); "
                         "give one [H, W] id map per train frame")
    ids = np.stack([resize_nearest(np.asarray(maps[s], np.int64), (h, w)) for s in stems])  # [V, H, W]
    uniq, inv = np.unique(ids, return_inverse=True)
    cols = palette(uniq)[inv.reshape(ids.shape)]  # [V, H, W, 3]
    return torch.from_numpy(cols.astype(np.float32)), torch.from_numpy(ids > 0)[..., None]


def _prepare_targets(scene: SplatScene, cfg: TrainConfig, instance_maps: Mapping[str, np.ndarray] | None,
                     dev: torch.device) -> _Targets:
    stems = list(scene.train)
    frames = list(scene.train_frames)
    cams = Cameras.from_frames(frames, scale=cfg.scale)
    rgb = _load_rgb(scene, stems, cams).to(dev)  # [V, H, W, 3]
    pan = pan_valid = None
    if instance_maps is not None:
        pan, pan_valid = _instance_targets(instance_maps, stems, cams.width, cams.height)
        pan, pan_valid = pan.to(dev), pan_valid.to(dev)  # [V, H, W, 3], [V, H, W, 1]
    background = torch.tensor(list(cfg.background), dtype=torch.float32, device=dev)  # [3]
    if len(background) != 3:
        raise InputError(f"TrainConfig.background must have 3 values, got {cfg.background}")
    return _Targets(stems, cams.to(dev), rgb, pan, pan_valid, background, scene_scale(frames),
                    run_key(cfg, stems, instance_maps is not None))


# -------------------------------------------------------------------------------------------------------------
# state: fresh or from a checkpoint
# -------------------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """Everything the next step depends on (what a checkpoint stores)."""

    params: torch.nn.ParameterDict  # every per-Gaussian attribute, [N, ...] each (splat.gaussians)
    optimizers: dict[str, torch.optim.Adam]  # one per attribute
    strategy: CappedDefaultStrategy | CPUMCMCStrategy
    strategy_state: dict[str, Any]
    rng: np.random.Generator  # the view order's generator
    order: list[int]  # the rest of the current epoch's view order (popped from the end)
    history: list[dict]
    step: int  # steps done
    init_source: str
    resumed_from: int | None
    pose: PoseCorrection | None = None  # with cfg.pose_opt: the per-view SE(3) corrections


def _make_optimizers(params: torch.nn.ParameterDict, cfg: TrainConfig, sscale: float) -> dict[str, torch.optim.Adam]:
    """One Adam per attribute (gsplat's strategies need exactly one param group per parameter); learning rates
    × sqrt(batch_size) and betas/eps adjusted for the batch as gsplat does."""
    B = cfg.batch_size
    lrs = {"means": cfg.lr_means * sscale, "quats": cfg.lr_quats, "scales": cfg.lr_scales,
           "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN, "pan": cfg.lr_pan}
    return {k: torch.optim.Adam([{"params": params[k], "lr": lrs[k] * math.sqrt(B), "name": k}],
                                eps=1e-15 / math.sqrt(B), betas=(1 - B * (1 - 0.9), 1 - B * (1 - 0.999)))
            for k in params}


def _means_lr(cfg: TrainConfig, sscale: float, step: int) -> float:
    """Exponential decay from lr_means to lr_means_final over the run (× scene scale × sqrt(batch))."""
    t = min(step / max(cfg.iterations, 1), 1.0)
    lr = cfg.lr_means * (cfg.lr_means_final / cfg.lr_means) ** t
    return lr * sscale * math.sqrt(cfg.batch_size)


def _init_or_resume(scene: SplatScene, cfg: TrainConfig, data: _Targets, ckpt_path: Path | None,
                    init_points: tuple[np.ndarray, np.ndarray | None] | None, dev: torch.device) -> _Run:
    """Resume from `ckpt_path` when it holds a checkpoint of this run (same key); else fresh Gaussians."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    strategy, sstate = make_strategy(cfg, data.scene_scale)
    ck = load_checkpoint(ckpt_path) if ckpt_path is not None and ckpt_path.is_file() else None
    if ck is not None and ck["key"] != data.key:
        ck = None  # another config, split or label set: train from scratch
    if ck is None:
        if init_points is not None:
            (xyz, rgb), source = init_points, "given"
        else:
            xyz, rgb, source = points_for_scene(scene, cfg.init_points, cfg.seed)
        params = init_gaussians(xyz, rgb, sh_degree=cfg.sh_degree, init_opacity=cfg.init_opacity,
                                init_scale=cfg.init_scale, seed=cfg.seed).to(dev)
        run = _Run(params, _make_optimizers(params, cfg, data.scene_scale), strategy, sstate, rng, [], [], 0,
                   source, None)
    else:
        params = torch.nn.ParameterDict({k: torch.nn.Parameter(ck["params"][k].to(dev)) for k in PARAM_NAMES})
        optimizers = _make_optimizers(params, cfg, data.scene_scale)
        for k, o in optimizers.items():
            o.load_state_dict(ck["optimizers"][k])
        sstate = {k: (v.to(dev) if isinstance(v, Tensor) else v) for k, v in ck["strategy_state"].items()}
        torch.set_rng_state(ck["torch_rng"])
        if ck["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
        rng.bit_generator.state = ck["np_rng"]
        run = _Run(params, optimizers, strategy, sstate, rng, list(ck.get("order", [])), list(ck["history"]),
                   int(ck["step"]), ck["init_source"], int(ck["step"]))
    strategy.check_sanity(run.params, run.optimizers)
    if cfg.pose_opt:
        run.pose = PoseCorrection.create(len(data.stems), cfg.pose_opt_lr, cfg.pose_opt_reg, cfg.batch_size, dev)
        if ck is not None and ck.get("pose") is not None:
            run.pose.load(ck["pose"])
    return run


def _save(run: _Run, data: _Targets, path: Path, step: int) -> None:
    save_checkpoint(path, step=step, params=run.params, optimizers=run.optimizers,
                    strategy_state=run.strategy_state, rng=run.rng, order=run.order, history=run.history,
                    key=data.key, sscale=data.scene_scale, init_source=run.init_source,
                    pose=run.pose.state() if run.pose is not None else None)


# -------------------------------------------------------------------------------------------------------------
# one step
# -------------------------------------------------------------------------------------------------------------


@dataclass
class _StepStats:
    loss: float
    l_rgb: float
    l_pan: float
    psnr: float  # of this step's training views (render clamped to [0, 1])
    degree: int  # active SH degree


def _next_views(run: _Run, num_views: int, batch: int) -> list[int]:
    """`batch` view indices: a fresh permutation per epoch, drawn from the checkpointed generator."""
    idx = []
    for _ in range(batch):
        if not run.order:
            run.order = run.rng.permutation(num_views).tolist()
        idx.append(run.order.pop())
    return idx


def _sh_degree(cfg: TrainConfig, step: int) -> int:
    """Active SH degree at `step`: one more band every sh_degree_interval steps, up to sh_degree."""
    return min(step // max(cfg.sh_degree_interval, 1), cfg.sh_degree)


def _step(run: _Run, data: _Targets, cfg: TrainConfig, step: int) -> _StepStats:
    """Render a batch of training views, take one Adam step on L, let the strategy densify."""
    params, optimizers, strategy = run.params, run.optimizers, run.strategy
    idx = _next_views(run, len(data.stems), cfg.batch_size)
    lr_m = _means_lr(cfg, data.scene_scale, step)
    optimizers["means"].param_groups[0]["lr"] = lr_m
    degree = _sh_degree(cfg, step)
    with_pan = data.pan is not None
    # feats [B, H, W, 3 (+3 pan)]
    cams = data.cams[idx]
    if run.pose is not None:  # c2w · exp(ξ) for this batch's views
        cams = Cameras(corrected_viewmats(cams.viewmats, run.pose.xi[idx]), cams.Ks, cams.width, cams.height)
    feats, meta = _render_views(params, cams, degree, data.background, with_pan, cfg.backend)
    strategy.step_pre_backward(params, optimizers, run.strategy_state, step, meta)
    l_rgb, mse = _rgb_loss(feats[..., :3], data.rgb[idx], cfg.ssim_lambda)  # scalars
    loss = l_rgb
    l_pan = torch.zeros((), device=l_rgb.device)
    if with_pan:
        l_pan = _pan_loss(feats[..., 3:6], data.pan[idx], data.pan_valid[idx])
        loss = loss + cfg.lambda_pan * l_pan
    loss = strategy.regularised(loss, params)
    loss.backward()
    for o in optimizers.values():
        o.step()
        o.zero_grad(set_to_none=True)
    if run.pose is not None:
        run.pose.step()
    strategy.step_post_backward(params, optimizers, run.strategy_state, step, meta, lr=lr_m)
    return _StepStats(float(loss.detach()), float(l_rgb.detach()), float(l_pan.detach()),
                      -10.0 * math.log10(max(float(mse), 1e-12)), degree)


def _after_step(run: _Run, stats: _StepStats, data: _Targets, scene: SplatScene, cfg: TrainConfig, elapsed: float,
                ckpt_path: Path | None) -> None:
    """Count the step; every log_every steps a history entry (with test PSNR every eval_every); checkpoint."""
    run.step += 1
    done = run.step
    if done % max(cfg.log_every, 1) == 0 or done == cfg.iterations:
        entry = {"step": done, "loss": stats.loss, "l_rgb": stats.l_rgb, "l_pan": stats.l_pan, "psnr": stats.psnr,
                 "num_gaussians": len(run.params["means"]), "time": elapsed}
        if cfg.eval_every > 0 and done % cfg.eval_every == 0 and done != cfg.iterations and scene.test:
            entry["test_psnr"] = evaluate_psnr(run.params, scene, scene.test, cfg.eval_scale,
                                               background=cfg.background, sh_degree=stats.degree,
                                               backend=cfg.backend)[0]
        run.history.append(entry)
    if ckpt_path is not None and cfg.checkpoint_every > 0 and done % cfg.checkpoint_every == 0 \
            and done != cfg.iterations:
        _save(run, data, ckpt_path, done)


# -------------------------------------------------------------------------------------------------------------
# outputs
# -------------------------------------------------------------------------------------------------------------


def _finish(run: _Run, data: _Targets, scene: SplatScene, cfg: TrainConfig, out_dir: str | Path | None,
            elapsed: float) -> TrainResult:
    """Test-view PSNR; with out_dir the final checkpoint, gaussians.ply, history.json and train_summary.json."""
    final_degree = _sh_degree(cfg, max(cfg.iterations - 1, 0))
    mean_psnr, per_view = evaluate_psnr(run.params, scene, scene.test, cfg.eval_scale, background=cfg.background,
                                        sh_degree=final_degree, backend=cfg.backend)
    n = len(run.params["means"])
    refined = None
    if run.pose is not None:
        c2w = run.pose.refined_c2w(data.cams.viewmats).double().cpu().numpy()  # [V, 4, 4]
        refined = {s: c2w[i] for i, s in enumerate(data.stems)}
    if out_dir is not None:
        from .ply import save_ply

        out_dir = Path(out_dir)
        _save(run, data, out_dir / "ckpt.pt", cfg.iterations)
        save_ply(out_dir / "gaussians.ply", _exported(run.params, final_degree))
        write_json(out_dir / "history.json", run.history)
        write_json(out_dir / "train_summary.json", {
            "steps": cfg.iterations, "num_gaussians": n, "test_psnr": mean_psnr, "test_psnr_per_view": per_view,
            "init_source": run.init_source, "scene_scale": data.scene_scale, "sh_degree": final_degree,
            "panoptic_regulariser": data.pan is not None, "resumed_from": run.resumed_from})
        if refined is not None:
            write_json(out_dir / "cameras_refined.json", {s: m.tolist() for s, m in refined.items()})
    return TrainResult(gaussians=run.params, history=run.history, test_psnr=mean_psnr, test_psnr_per_view=per_view,
                       wall_time=elapsed, steps=cfg.iterations, num_gaussians=n, init_source=run.init_source,
                       resumed_from=run.resumed_from, refined_c2w=refined)


def _exported(params: Mapping[str, Tensor], degree: int) -> dict[str, Tensor]:
    """The Gaussians as rendered at the end: SH bands above the active degree (never trained) are dropped, so
    renderers that use all stored bands show what the trainer optimised."""
    out = {k: v.detach().cpu() for k, v in params.items()}
    out["shN"] = out["shN"][:, : (degree + 1) ** 2 - 1]  # [N, (degree + 1)² − 1, 3]
    return out


# -------------------------------------------------------------------------------------------------------------
# rendering + loss
# -------------------------------------------------------------------------------------------------------------


def _render_views(params, cams: Cameras, degree: int, background: Tensor, with_pan: bool, backend: str):
    """One pass: features [C, H, W, 3 (+3 pan)], meta. Same geometry for RGB and panoptic colours."""
    viewmats = cams.viewmats.to(params["means"].device)
    colors = sh_colours(params, viewmats, degree)  # [C, N, 3]
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
def evaluate_psnr(gaussians: Mapping[str, Tensor], scene: SplatScene, stems: Sequence[str], scale: float = 1.0, *,
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
