"""LUDVIG uplifting: per-Gaussian weighted average of multi-view 2D labels (the one place it lives).

For K labels and Gaussians i, the uplifted distribution is

    f_i[k] = Σ_(n,u) w_i(n,u)·[l_n(u) = k]  /  Σ_(n,u) w_i(n,u)·[l_n(u) votes]

where w_i(n,u) = α_i(u)·T_i(u) is exactly the alpha-blending weight the rasteriser uses at pixel u of
training view n. The render is linear in the per-Gaussian features and α, T do not depend on them, so
the gradient of ⟨render(features), target⟩ w.r.t. zero features is Σ_u target(u)·w_i(u): with a
one-hot target the gradient *is* the numerator. One backward pass per view and channel block gives
exact sums with whatever backend `splat.render` uses (torch reference or gsplat): method "grad".
On the torch backend, method "direct" (the default there) replays the backend's own forward blocks
and scatters each w_i(u) into cell (i, l(u)): one forward-cost pass per view whatever K is (bench/uplift.py
compares both with a forward render). Tests pin both to a per-pixel loop.

Choices (documented because they change numbers):
* Pixels whose label is `ignore_label` (default 0 = void/unlabelled) cast no vote and are not counted in
  the denominator either: a Gaussian seen half by void pixels and half by instance 7 gets f[7] = 1.
  So the denominator is the row sum of the numerator and needs no extra channel.
* A Gaussian that no voting pixel sees (den = 0) is *unlabelled*: label −1, confidence 0 and an all-zero
  row, never a silent uniform distribution.
* Arbitrary ids (up to 65535 and beyond) are mapped to dense channels first (`label_ids[k]` = original
  id of channel k, ascending). Each view only renders the channels present in it, in blocks of at most
  `chunk_channels`, so passes per view = ceil(#labels in the view / chunk_channels) regardless of K.
* Top-k mode (`topk`): channels are processed in blocks of `chunk_channels`; each block's sums are
  exact (all views are accumulated before pruning), and the running per-Gaussian top-k is merged with
  each block's. The union of per-block top-k sets contains the global top-k, so the result equals the
  top-k of the dense result exactly (up to ties and float32 summation order). `den` is exact too.
  Memory: N·(2k + chunk_channels) floats instead of N·K. Cost: every view is rendered once per block
  that it has labels in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from pipeline.common.io import InputError, atomic_path
from pipeline.common.labels import majority_class
from pipeline.common.progress import progress_bar

__all__ = ["UpliftResult", "uplift", "relabel", "dense_map", "instance_classes", "gaussian_geometry", "METHODS"]

METHODS = ("auto", "direct", "grad")


# ------------------------------------------------------------------------------------------------
# result
# ------------------------------------------------------------------------------------------------


@dataclass
class UpliftResult:
    """Uplifted label distributions of N Gaussians over K labels (dense or top-k)."""

    label_ids: np.ndarray  # [K] int64 ascending, dense channel k -> original label id
    den: np.ndarray  # [N] float32, Σ α·T over all voting pixels of all views
    label: np.ndarray  # [N] int64, original id of the argmax channel; -1 = unlabelled (den = 0)
    confidence: np.ndarray  # [N] float32, max normalised weight; 0 for unlabelled
    weights: np.ndarray | None = None  # [N, K] float32 normalised (rows sum to 1, or 0 if unlabelled); None in top-k mode
    topk_ids: np.ndarray | None = None  # [N, k] int64 original ids, best first; -1 = empty slot
    topk_weights: np.ndarray | None = None  # [N, k] float32 normalised by the full den; 0 in empty slots
    ignore_label: int | None = 0
    num_views: int = 0

    @property
    def num_gaussians(self) -> int:
        return int(self.den.shape[0])

    @property
    def num_labels(self) -> int:
        return int(self.label_ids.shape[0])

    @property
    def labelled(self) -> np.ndarray:  # [N] bool
        return self.label >= 0

    def channel_block(self, lo: int, hi: int) -> Tensor:
        """Normalised weights of dense channels [lo, hi) as a float32 tensor [N, hi-lo] (dense or top-k)."""
        if self.weights is not None:
            return torch.from_numpy(np.ascontiguousarray(self.weights[:, lo:hi]))
        out = torch.zeros(self.num_gaussians, hi - lo, dtype=torch.float32)
        ids = self.topk_ids
        ok = ids >= 0
        ch = np.full(ids.shape, -1, dtype=np.int64)
        ch[ok] = np.searchsorted(self.label_ids, ids[ok])
        sel = ok & (ch >= lo) & (ch < hi)
        rows, cols = np.nonzero(sel)
        out[torch.from_numpy(rows), torch.from_numpy(ch[rows, cols] - lo)] = torch.from_numpy(self.topk_weights[rows, cols])
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write an .npz atomically (a killed run never leaves a truncated file under the final name)."""
        arrays = {"label_ids": self.label_ids, "den": self.den, "label": self.label, "confidence": self.confidence,
                  "ignore_label": np.array(-1 if self.ignore_label is None else self.ignore_label, dtype=np.int64),
                  "has_ignore": np.array(self.ignore_label is not None), "num_views": np.array(self.num_views)}
        for key in ("weights", "topk_ids", "topk_weights"):
            if getattr(self, key) is not None:
                arrays[key] = getattr(self, key)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:  # a file object keeps numpy from appending a second ".npz"
                np.savez_compressed(fh, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "UpliftResult":
        path = Path(path)
        try:
            z = np.load(path)
        except FileNotFoundError:
            raise InputError(f"{path}: uplift result not found; run the uplift stage first") from None
        except Exception as e:
            raise InputError(f"{path}: not a readable uplift .npz ({e}); re-run the uplift stage") from None
        with z:
            need = ("label_ids", "den", "label", "confidence")
            missing = [k for k in need if k not in z.files]
            if missing:
                raise InputError(f"{path}: not an uplift result (missing {missing}); re-run the uplift stage")
            get = lambda k: z[k] if k in z.files else None  # noqa: E731
            return cls(label_ids=z["label_ids"], den=z["den"], label=z["label"], confidence=z["confidence"],
                       weights=get("weights"), topk_ids=get("topk_ids"), topk_weights=get("topk_weights"),
                       ignore_label=int(z["ignore_label"]) if bool(z["has_ignore"]) else None,
                       num_views=int(z["num_views"]))


# ------------------------------------------------------------------------------------------------
# label ids -> dense channels
# ------------------------------------------------------------------------------------------------


def relabel(label_maps: Sequence[np.ndarray], ignore_label: int | None = 0,
            num_labels: int | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Map arbitrary label ids to dense channels 0..K-1.

    Returns (label_ids [K] int64 ascending, dense maps [H, W] int32 with -1 where the pixel does not vote).
    With `num_labels`, the channels are the ids 0..num_labels-1 (minus `ignore_label`) whether present or
    not, so the layout is fixed across scenes; an id >= num_labels is an error.
    """
    ids = _label_ids(label_maps, ignore_label, num_labels)
    return ids, [dense_map(m, ids) for m in label_maps]


def _label_ids(label_maps: Sequence[np.ndarray], ignore_label: int | None = 0,
               num_labels: int | None = None) -> np.ndarray:
    """[K] ascending original ids that get a channel (validates the maps; see `relabel`)."""
    maps = [np.asarray(m) for m in label_maps]
    for i, m in enumerate(maps):
        if m.ndim != 2 or not (np.issubdtype(m.dtype, np.integer) or m.dtype == bool):
            raise TypeError(f"label map {i}: needs an [H, W] integer array, got {m.dtype} {m.shape}")
        if m.size and m.min() < 0:
            raise ValueError(f"label map {i}: negative label id {int(m.min())}; use ignore_label for pixels that must not vote")
    if num_labels is not None:
        ids = np.arange(int(num_labels), dtype=np.int64)
        big = [(i, int(m.max())) for i, m in enumerate(maps) if m.size and m.max() >= num_labels]
        if big:
            raise ValueError(f"label map {big[0][0]}: id {big[0][1]} >= num_labels={num_labels}; raise num_labels or leave it unset")
    else:
        ids = np.unique(np.concatenate([np.unique(m).astype(np.int64) for m in maps])) if maps else np.zeros(0, np.int64)
    if ignore_label is not None:
        ids = ids[ids != ignore_label]
    return ids


def dense_map(label_map: np.ndarray, label_ids: np.ndarray) -> np.ndarray:
    """[H, W] original ids -> dense channels (int32), -1 where the id is not a channel (ignored / unknown)."""
    m64 = np.asarray(label_map).astype(np.int64)
    d = np.searchsorted(label_ids, m64).astype(np.int32)
    vote = d < len(label_ids)
    vote[vote] = label_ids[d[vote]] == m64[vote]
    d[~vote] = -1
    return d


# ------------------------------------------------------------------------------------------------
# instance -> class
# ------------------------------------------------------------------------------------------------


def instance_classes(label_maps: Sequence[np.ndarray], class_maps: Sequence[np.ndarray] | None = None,
                     segments: Mapping | None = None, weights: Sequence[np.ndarray] | None = None,
                     *, ignore_label: int | None = 0) -> dict[int, int]:
    """Class of every instance id in `label_maps` (ignore_label excluded).

    * `segments` (segments.json: id -> class, or id -> {"class_id": c, ...}) wins: the segmenter gives one
      class per instance; stuff regions are instances like any other.
    * Ids it does not list take the majority of `class_maps` over their pixels, weighted by `weights`
      (per-pixel [H, W], e.g. segmenter confidence): `pipeline.common.labels.majority_class`. Class 0 (void)
      only wins for an instance that has no other class at all, so a labelled instance never scores as void;
      ties go to the lowest class id.
    An id with neither source raises InputError.
    """
    out: dict[int, int] = {}
    if segments is not None:
        for k, v in segments.items():
            c = v.get("class_id") if isinstance(v, Mapping) else v
            if c is None:
                raise InputError(f"segments entry {k!r} has no class_id")
            out[int(k)] = int(c)
    ids_seen: set[int] = set()
    for m in label_maps:
        ids_seen.update(np.unique(np.asarray(m)).astype(np.int64).tolist())
    if ignore_label is not None:
        ids_seen.discard(int(ignore_label))
    todo = sorted(i for i in ids_seen if i not in out)
    result = {i: out[i] for i in sorted(ids_seen) if i in out}
    if not todo:
        return result
    if class_maps is None:
        raise InputError(f"instances {todo[:5]} have no class in segments.json and no class maps were given; "
                         "give every instance a class in segments.json")
    if len(class_maps) != len(label_maps) or (weights is not None and len(weights) != len(label_maps)):
        raise ValueError(f"{len(label_maps)} label maps but {len(class_maps)} class maps"
                         + ("" if weights is None else f" and {len(weights)} weight maps") + "; give one per view")
    for v, (lm, cm) in enumerate(zip(label_maps, class_maps)):
        if np.shape(lm) != np.shape(cm):
            raise ValueError(f"view {v}: label map {np.shape(lm)} and class map {np.shape(cm)} differ in shape")
    voted = majority_class(label_maps, class_maps, weights, ignore_id=ignore_label)
    for i in todo:
        result[i] = voted.get(i, 0)
    return dict(sorted(result.items()))


# ------------------------------------------------------------------------------------------------
# uplifting
# ------------------------------------------------------------------------------------------------


def gaussian_geometry(gaussians) -> dict[str, Tensor]:
    """Detached float tensors of a Gaussian set (ParameterDict or mapping), so the backward pass only
    computes feature gradients."""
    try:
        items = gaussians.items()
    except AttributeError:
        raise TypeError("gaussians must be a mapping (e.g. torch.nn.ParameterDict) with means, quats, scales, opacities") from None
    g = {k: (v.detach() if isinstance(v, Tensor) else torch.as_tensor(v)) for k, v in items}
    missing = [k for k in ("means", "quats", "scales", "opacities") if k not in g]
    if missing:
        raise ValueError(f"gaussians lack {missing}; pass a splat.gaussians ParameterDict (means, quats, scales, opacities, ...)")
    return g


def _num_cameras(cameras) -> int:
    return int(cameras.viewmats.shape[0])


def _view_block_sums(render_fn, geom: dict, cam, local: np.ndarray, width: int, backend: str) -> Tensor:
    """Σ_u w_i(u)·onehot(local(u)) for one view: the gradient of ⟨render(f), onehot⟩ at f = 0.

    local: [H, W] int64, channel in [0, width) or `width` for pixels that do not vote.
    Returns [N, width] float32.
    """
    n = geom["means"].shape[0]
    feats = torch.zeros(n, width, dtype=torch.float32, device=geom["means"].device, requires_grad=True)
    with torch.enable_grad():
        out = render_fn(geom, cam, feats, backend=backend, render_depth=False)
        target = torch.nn.functional.one_hot(torch.from_numpy(local).to(feats.device), width + 1)[..., :width]
        target = target.to(out.features.dtype)[None]  # [1, H, W, width]
        (grad,) = torch.autograd.grad(out.features, feats, grad_outputs=target)
    return grad  # [N, width]


def _direct_sums(geom: dict, cam, lab: np.ndarray, n_cols: int, acc: Tensor, *, eps2d: float = 0.3,
                 near_plane: float = 0.01, far_plane: float = 1e10) -> None:
    """acc[i, lab(u)] += w_i(u) for one view: project as the torch backend does, then let it replay its own
    tile blocks (`splat.rasterize_torch.label_weight_sums`), so w = α·T with the same thresholds."""
    from splat import rasterize_torch as rt

    means = geom["means"]
    dev, dt = means.device, means.dtype
    opac = torch.sigmoid(geom["opacities"])
    W_, H_ = int(cam.width), int(cam.height)
    m2d, con, dep, radii = rt.project(means, geom["quats"], torch.exp(geom["scales"]), opac,
                                      cam.viewmats.to(dev, dt), cam.Ks.to(dev, dt), W_, H_, eps2d=eps2d,
                                      near_plane=near_plane, far_plane=far_plane)
    rt.label_weight_sums(m2d[0], con[0], opac, radii[0], dep[0], torch.from_numpy(lab).to(dev), n_cols, acc)


def _use_direct(method: str, backend: str, device: torch.device) -> bool:
    if method not in METHODS:
        raise ValueError(f"unknown uplift method {method!r}; use one of {METHODS}")
    torch_backend = backend == "torch" or (backend == "auto" and device.type != "cuda")
    if method == "direct":
        if not torch_backend:
            raise ValueError("method='direct' needs the torch backend of splat.render; use method='grad' with gsplat")
        return True
    return method == "auto" and torch_backend


def _accumulate(render_fn, geom, cameras, label_maps: Sequence[np.ndarray], label_ids: np.ndarray, lo: int, hi: int,
                chunk: int, backend: str, bar, direct: bool) -> Tensor:
    """Exact numerator sums of channels [lo, hi) over all views: [N, hi-lo] float32.

    direct: one forward replay per view scattering w into (Gaussian, label) cells, any number of labels.
    grad: each view renders only the channels it contains, in blocks of <= chunk channels, and takes the
    gradient of <render, onehot>. Dense channel maps are made per view on the fly (no second copy of all
    label maps is held).
    """
    n = geom["means"].shape[0]
    dev = geom["means"].device
    width = hi - lo
    if direct:
        acc = torch.zeros(n + 1, max(width, 1), dtype=torch.float32, device=dev)
        for v, lm in enumerate(label_maps):
            dm = dense_map(lm, label_ids)
            inside = (dm >= lo) & (dm < hi)
            if inside.any():
                _direct_sums(geom, cameras[v], np.where(inside, dm - lo, width).astype(np.int64), width, acc)
            bar.update(1)
        return acc[:n, :width]  # contiguous (leading rows; width >= 1 whenever there are labels)
    acc = torch.zeros(n, width, dtype=torch.float32, device=dev)
    lut = np.empty(width + 1, dtype=np.int64)
    for v, lm in enumerate(label_maps):
        dm = dense_map(lm, label_ids)
        inside = (dm >= lo) & (dm < hi)
        present = np.unique(dm[inside]) if inside.any() else np.zeros(0, np.int64)
        for b in range(0, len(present), chunk):
            chans = present[b:b + chunk].astype(np.int64)  # [B] global channels of this block
            lut[:] = len(chans)
            lut[chans - lo] = np.arange(len(chans))
            local = np.where(inside, lut[np.clip(dm - lo, 0, width)], len(chans))  # [H, W]
            grad = _view_block_sums(render_fn, geom, cameras[v], local, len(chans), backend)
            acc[:, torch.from_numpy(chans - lo).to(dev)] += grad.float()
        bar.update(1)
    return acc


def uplift(gaussians, cameras, label_maps: Sequence[np.ndarray], *, num_labels: int | None = None,
           ignore_label: int | None = 0, chunk_channels: int = 64, topk: int | None = None,
           backend: str = "auto", method: str = "auto", progress: bool = True) -> UpliftResult:
    """LUDVIG-uplift per-view label maps (ids consistent across views) onto the Gaussians.

    gaussians: mapping with means [N,3], quats [N,4], scales [N,3] (log), opacities [N] (logit), ...
    cameras: splat.render.Cameras with C views; label_maps: C arrays [H, W] int of the cameras' size.
    topk: keep only the top-k labels per Gaussian (memory N·k instead of N·K); None = dense.
    method: "direct" replays the torch backend's blocks and scatters w into (Gaussian, label) cells (one
    forward-cost pass per view for any number of labels); "grad" takes the backward pass of `render`
    (any backend, gsplat included); "auto" = direct on the torch backend, grad otherwise.
    """
    from splat.render import render as render_fn

    geom = gaussian_geometry(gaussians)
    n = int(geom["means"].shape[0])
    n_cam = _num_cameras(cameras)
    if len(label_maps) != n_cam:
        raise ValueError(f"{len(label_maps)} label maps for {n_cam} cameras; give one label map per training camera")
    for i, m in enumerate(label_maps):
        if tuple(np.shape(m)) != (int(cameras.height), int(cameras.width)):
            raise ValueError(f"label map {i} is {np.shape(m)} but the cameras render {cameras.height}x{cameras.width} "
                             "(H x W); resize the labels with nearest-neighbour or scale the cameras to match")
    if chunk_channels < 1:
        raise ValueError(f"chunk_channels must be >= 1, got {chunk_channels}")
    if topk is not None and topk < 1:
        raise ValueError(f"topk must be >= 1 or None, got {topk}")
    direct = _use_direct(method, backend, geom["means"].device)
    label_ids = _label_ids(label_maps, ignore_label, num_labels)
    k_all = len(label_ids)
    sparse = topk is not None and topk < k_all

    if not sparse:
        with progress_bar(n_cam, f"uplift {k_all} labels", unit="view", enabled=progress) as bar:
            num = _accumulate(render_fn, geom, cameras, label_maps, label_ids, 0, k_all, chunk_channels, backend, bar, direct).cpu()  # [N, K]
        den = num.sum(1)  # [N]
        has = den > 0
        num.div_(torch.where(has, den, torch.ones_like(den))[:, None])  # in place: no second N x K buffer
        if k_all:
            conf, arg = num.max(1)
        else:
            conf, arg = torch.zeros(n), torch.zeros(n, dtype=torch.long)
        label = np.where(has.numpy(), label_ids[arg.numpy()] if k_all else -1, -1).astype(np.int64)
        return UpliftResult(label_ids=label_ids, den=den.numpy().astype(np.float32), label=label,
                            confidence=torch.where(has, conf, torch.zeros_like(conf)).numpy().astype(np.float32),
                            weights=num.numpy(), ignore_label=ignore_label, num_views=n_cam)

    # top-k: block over channels (outer), views (inner); merge exact block sums into a running top-k
    blocks = [(lo, min(lo + chunk_channels, k_all)) for lo in range(0, k_all, chunk_channels)]
    best_w = torch.zeros(n, topk, dtype=torch.float32)  # [N, k] unnormalised sums
    best_c = torch.full((n, topk), -1, dtype=torch.long)  # [N, k] dense channels
    den = torch.zeros(n, dtype=torch.float32)
    with progress_bar(n_cam * len(blocks), f"uplift {k_all} labels (top-{topk})", unit="view", enabled=progress) as bar:
        for lo, hi in blocks:
            acc = _accumulate(render_fn, geom, cameras, label_maps, label_ids, lo, hi, chunk_channels, backend, bar, direct).cpu()  # [N, B]
            den += acc.sum(1)
            kk = min(topk, hi - lo)
            w, c = acc.topk(kk, dim=1)
            cand_w = torch.cat([best_w, w], 1)
            cand_c = torch.cat([best_c, c + lo], 1)
            best_w, pos = cand_w.topk(topk, dim=1)
            best_c = cand_c.gather(1, pos)
    has = den > 0
    empty = best_w <= 0
    norm = torch.where(has[:, None], best_w / den.clamp_min(1e-30)[:, None], torch.zeros_like(best_w))
    norm[empty] = 0
    ids = torch.from_numpy(label_ids)[best_c.clamp_min(0)]
    ids[empty] = -1
    label = torch.where(has, ids[:, 0], torch.full_like(ids[:, 0], -1))
    return UpliftResult(label_ids=label_ids, den=den.numpy(), label=label.numpy().astype(np.int64),
                        confidence=norm[:, 0].numpy().astype(np.float32), topk_ids=ids.numpy().astype(np.int64),
                        topk_weights=norm.numpy().astype(np.float32), ignore_label=ignore_label, num_views=n_cam)
