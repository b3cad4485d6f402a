"""Pure-PyTorch reference rasteriser with gsplat 1.5.3 "classic" numerics, fast enough to train on a CPU.

Why it exists: gsplat's `rasterize_to_pixels` needs CUDA. This backend reproduces its contract (same
projection, same per-pixel compositing rules, same `meta` for the densification strategies) in plain
PyTorch, so every stage, test and the demo run on a CPU-only machine.

Numerics (gsplat 1.5.3 `ProjectionEWA3DGSFused.cu` / `RasterizeToPixels3DGSFwd.cu`, written from the paper
and those rules, not copied):
* EWA projection: Σ2d = J W Σ Wᵀ Jᵀ with the Jacobian evaluated at a mean clamped to 1.3× the field of view,
  then the low-pass dilation Σ2d + eps2d·I; conic = Σ2d⁻¹.
* Culling: z < near or z > far, det ≤ 0, opacity < 1/255, zero radius, bounding box off-screen.
  Radius = ceil(extend·sqrt(Σ2d_ii)) with the opacity-aware extend = min(3.33, sqrt(2·ln(255·o))).
* Pixel (row i, col j) has its centre at (j + 0.5, i + 0.5). α = min(0.999, o·exp(-½ dᵀΣ2d⁻¹d)) (gsplat 1.5.3
  clamps at 0.999); α < 1/255 is skipped; a pixel stops before the Gaussian that would bring T to ≤ 1e-4.
  Front-to-back in depth order (ties by index).

Design (why it is fast on a CPU): Gaussians are binned into 8×8-pixel tiles by their 3σ-box; each tile's
list is depth sorted; tiles are processed together, `K` list entries at a time (a [tiles, 64, K] block),
carrying each pixel's transmittance between blocks and dropping tiles whose pixels are all finished.
Every Gaussian outside its box has α < 1/255, so the binning changes no pixel. The backward pass is
hand-written (`_Composite`): it walks the same blocks front to back and gets the "everything behind me"
sums from the forward totals (Σ_{j>i} = Σ_all − Σ_{j<=i}); the forward keeps each block's weights for it
(≈12 bytes per evaluated pixel-Gaussian pair, up to `_SAVE_BYTES`, beyond which blocks are recomputed).
Colours are composited with a per-tile bmm, so any channel count costs one matmul per block. Per-op costs
on a CPU drove the layout: K innermost (broadcasts over a small inner dim are slow), exp2 instead of exp,
bmm(colourᵀ, w) rather than bmm(wᵀ, colour) for small D, no masked_fill.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "ALPHA_MAX", "ALPHA_MIN", "T_STOP", "TILE", "project", "composite", "composite_reference", "rasterize",
    "label_weight_sums",
]

ALPHA_MAX = 0.999  # gsplat 1.5.3 kernel clamp
ALPHA_MIN = 1.0 / 255.0  # gsplat ALPHA_THRESHOLD
T_STOP = 1e-4  # a pixel is done when the next T would be <= this
EXTEND = 3.33  # gsplat's 3σ-ish box, tightened by opacity
TILE = 8  # tile side in pixels (numerics do not depend on it)
_BLOCK = 2048  # target tile-entries per block (tiles · K): the block tensors [tiles, 64, K] stay in cache
_GROUP = 1024  # tiles processed together (longest lists first); all of a 256×192 image
_KMIN, _KMAX = 16, 256


# ---------------------------------------------------------------------------------------------------------
# projection
# ---------------------------------------------------------------------------------------------------------
def _quat_scale_matrix(quats: Tensor, scales: Tensor) -> Tensor:
    """R(q)·diag(s): [N, 3, 3], so that Σ = M Mᵀ."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    R = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(-1, 3, 3)
    return R * scales[:, None, :]


def project(means: Tensor,  # [N, 3]
            quats: Tensor,  # [N, 4] (unnormalised)
            scales: Tensor,  # [N, 3] (activated)
            opacities: Tensor,  # [N] (activated)
            viewmats: Tensor,  # [C, 4, 4]
            Ks: Tensor,  # [C, 3, 3]
            width: int, height: int, *, eps2d: float = 0.3, near_plane: float = 0.01,
            far_plane: float = 1e10) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EWA projection as gsplat's fused projection (unpacked): differentiable means2d, conics, depths.

    Returns means2d [C, N, 2], conics [C, N, 3] (Σ2d⁻¹ as a, b, c with σ = ½a dx² + b dx dy + ½c dy²),
    depths [C, N], radii [C, N, 2] int32 (0 = culled).
    """
    W = viewmats[:, :3, :3]  # [C, 3, 3]
    t = viewmats[:, :3, 3]  # [C, 3]
    pc = torch.einsum("cij,nj->cni", W, means) + t[:, None, :]  # [C, N, 3]
    x, y, z = pc.unbind(-1)  # [C, N]
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lim_xp, lim_xn = (width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_yp, lim_yn = (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    rz = 1.0 / z
    tx = z * torch.minimum(torch.maximum(x * rz, -lim_xn), lim_xp)
    ty = z * torch.minimum(torch.maximum(y * rz, -lim_yn), lim_yp)
    # J = [[fx/z, 0, -fx tx/z²], [0, fy/z, -fy ty/z²]]; rows of J·W: [C, N, 3] each
    j00, j02 = fx * rz, -fx * tx * rz * rz
    j11, j12 = fy * rz, -fy * ty * rz * rz
    JW0 = j00[..., None] * W[:, None, 0, :] + j02[..., None] * W[:, None, 2, :]  # [C, N, 3]
    JW1 = j11[..., None] * W[:, None, 1, :] + j12[..., None] * W[:, None, 2, :]
    M = _quat_scale_matrix(quats, scales)  # [N, 3, 3]
    T0 = (JW0[..., :, None] * M[None]).sum(-2)  # [C, N, 3] = (J W M) row 0
    T1 = (JW1[..., :, None] * M[None]).sum(-2)
    c00 = (T0 * T0).sum(-1) + eps2d
    c01 = (T0 * T1).sum(-1)
    c11 = (T1 * T1).sum(-1) + eps2d
    det = c00 * c11 - c01 * c01
    inv_det = 1.0 / det.clamp_min(1e-10)
    conics = torch.stack([c11 * inv_det, -c01 * inv_det, c00 * inv_det], -1)  # [C, N, 3]
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], -1)  # [C, N, 2]

    with torch.no_grad():
        o = opacities.detach()[None].expand_as(z)  # [C, N]
        extend = torch.sqrt(2.0 * torch.log(o.clamp_min(ALPHA_MIN) / ALPHA_MIN)).clamp_max(EXTEND)
        rx = torch.ceil(extend * c00.detach().clamp_min(0).sqrt())
        ry = torch.ceil(extend * c11.detach().clamp_min(0).sqrt())
        m2 = means2d.detach()
        ok = ((z.detach() >= near_plane) & (z.detach() <= far_plane) & (det.detach() > 0) & (o >= ALPHA_MIN)
              & ((rx > 0) | (ry > 0))
              & (m2[..., 0] + rx > 0) & (m2[..., 0] - rx < width) & (m2[..., 1] + ry > 0) & (m2[..., 1] - ry < height))
        radii = (torch.stack([rx, ry], -1) * ok[..., None]).to(torch.int32)  # [C, N, 2]
    return means2d, conics, z, radii


# ---------------------------------------------------------------------------------------------------------
# binning
# ---------------------------------------------------------------------------------------------------------
@dataclass
class _Plan:
    """Depth-sorted tile lists of one camera, laid out for block processing."""

    ids: Tensor  # [n_tiles, L] int64 Gaussian index per list slot (N = padding)
    counts: Tensor  # [n_tiles] list lengths, descending
    tiles: Tensor  # [n_tiles] tile index (ty·TW + tx) of each row
    x0: Tensor  # [n_tiles] left pixel of each tile
    y0: Tensor  # [n_tiles] top pixel
    tw: int
    th: int
    n: int  # number of Gaussians (padding index)


def _bin(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int) -> _Plan:
    """Tile lists of the visible Gaussians of one camera; means2d [N, 2], radii [N, 2], depths [N]."""
    n = means2d.shape[0]
    dev = means2d.device
    tw, th = (width + TILE - 1) // TILE, (height + TILE - 1) // TILE
    vis = torch.nonzero((radii > 0).all(-1)).squeeze(1)  # [V]
    vis = vis[torch.argsort(depths[vis], stable=True)]  # depth order, ties by index
    m = means2d[vis].double()
    r = radii[vis].double()
    # pixels whose centre lies in the box (one pixel of slack on each side)
    lo = torch.floor(m - r - 0.5).long()
    hi = torch.ceil(m + r - 0.5).long()
    tx0 = lo[:, 0].clamp(0, width - 1) // TILE
    tx1 = hi[:, 0].clamp(0, width - 1) // TILE
    ty0 = lo[:, 1].clamp(0, height - 1) // TILE
    ty1 = hi[:, 1].clamp(0, height - 1) // TILE
    nx = (tx1 - tx0 + 1) * (hi[:, 0] >= 0) * (lo[:, 0] <= width - 1)
    ny = (ty1 - ty0 + 1) * (hi[:, 1] >= 0) * (lo[:, 1] <= height - 1)
    cnt = nx * ny  # [V] tiles per Gaussian
    rank = torch.repeat_interleave(torch.arange(len(vis), device=dev), cnt)  # [E] depth rank of each entry
    start = torch.cumsum(cnt, 0) - cnt
    k = torch.arange(len(rank), device=dev) - start[rank]
    nxr = nx[rank].clamp_min(1)
    tile = (ty0[rank] + k // nxr) * tw + tx0[rank] + k % nxr  # [E]
    key, _ = torch.sort(tile * max(len(vis), 1) + rank)  # by tile, then depth
    tile_s = key // max(len(vis), 1)
    gid = vis[key % max(len(vis), 1)]  # [E] Gaussian index
    per_tile = torch.bincount(tile_s, minlength=tw * th)  # [TW·TH]
    order = torch.argsort(per_tile, descending=True, stable=True)
    counts = per_tile[order]
    n_t = int((counts > 0).sum())
    order, counts = order[:n_t], counts[:n_t]
    row_of = torch.empty(tw * th, dtype=torch.long, device=dev)
    row_of[order] = torch.arange(n_t, device=dev)
    L = int(counts[0]) if n_t else 0
    tile_start = torch.cumsum(per_tile, 0) - per_tile
    pos = torch.arange(len(tile_s), device=dev) - tile_start[tile_s]
    ids = torch.full((n_t, L), n, dtype=torch.long, device=dev)
    ids[row_of[tile_s], pos] = gid
    return _Plan(ids=ids, counts=counts, tiles=order, x0=(order % tw) * TILE, y0=(order // tw) * TILE,
                 tw=tw, th=th, n=n)


# ---------------------------------------------------------------------------------------------------------
# compositing
# ---------------------------------------------------------------------------------------------------------
_LOG2E = 1.0 / math.log(2.0)  # α is evaluated with exp2 (cheaper than exp on CPU)


def _offsets(tab: Tensor, ids: Tensor, x0: Tensor, y0: Tensor, pix: Tensor):
    """Per-entry parameters and mean-minus-pixel-centre offsets along the tile's columns and rows.

    tab [N+1, 6] (mx, my, a, b, c, log o), ids [n, K] -> (a, b, c, log o) each [n, K], dx, dy [n, TILE, K].
    """
    g = tab[ids]  # [n, K, 6]
    mx, my, a, b, c, lo = g.unbind(-1)  # [n, K]
    dx = mx[:, None, :] - (x0[:, None, None] + pix[None, :, None])  # [n, TILE, K] (pix: the +0.5 centres)
    dy = my[:, None, :] - (y0[:, None, None] + pix[None, :, None])
    return a, b, c, lo, dx, dy


def _block(tab: Tensor, ids: Tensor, x0: Tensor, y0: Tensor, pix: Tensor, T_run: Tensor, a_min: float):
    """One block of list entries at the 64 pixels of their tiles, pixel-major ([n, P, K], K innermost).

    Returns α [n, P, K] (clamped to ALPHA_MAX, 0 below ALPHA_MIN), T after each entry T_in [n, P, K] and the
    blending weights w = α·T_before [n, P, K], zero from the entry that would end the pixel on (T ≤ T_STOP).
    T_run [n, P] is the transmittance entering the block, 0 for finished pixels.
    """
    a, b, c, lo, dx, dy = _offsets(tab, ids, x0, y0, pix)
    n, K = ids.shape
    na = (-0.5 * _LOG2E * a)[:, None, :] * dx * dx  # [n, TILE(c), K]
    nb = (_LOG2E * lo)[:, None, :] - (0.5 * _LOG2E * c)[:, None, :] * dy * dy  # [n, TILE(r), K]
    nbdy = (-_LOG2E * b)[:, None, :] * dy
    # log2 α before clamping, [n, r, c, K]: -(½a dx² + b dx dy + ½c dy²)/ln 2 + log2 o
    l2 = torch.addcmul(nb[:, :, None, :] + na[:, None, :, :], nbdy[:, :, None, :], dx[:, None, :, :])
    alpha = l2.view(n, TILE * TILE, K).exp2_().clamp_max_(ALPHA_MAX)  # [n, P, K]
    alpha = torch.nn.functional.threshold_(alpha, a_min, 0.0)  # keeps α >= ALPHA_MIN
    om = 1.0 - alpha
    om[:, :, 0] *= T_run
    T_in = torch.cumprod(om, dim=-1)  # [n, P, K] T after each entry
    w = torch.empty_like(T_in)  # α·T_before = T_before − T_after
    torch.sub(T_run, T_in[:, :, 0], out=w[:, :, 0])
    torch.sub(T_in[:, :, :-1], T_in[:, :, 1:], out=w[:, :, 1:])
    w.mul_(T_in > T_STOP)  # the pixel ends before the entry that takes T to <= 1e-4
    return alpha, T_in, w


def _grad_weights(alpha: Tensor, T_in: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """What the backward needs of a block: w with clamped α zeroed (no gradient through the clamp) and
    T_in floored at T_STOP (the divisor of α/(1−α) = w/T_in; it only matters where w > 0)."""
    if bool(alpha.max() >= ALPHA_MAX):
        wl = w * (alpha < ALPHA_MAX)
    else:
        wl = w
    return wl, T_in.clamp_min(T_STOP)


def _a_min(dtype: torch.dtype) -> float:
    """Largest value below ALPHA_MIN in `dtype`, so that `threshold(x > a_min)` keeps exactly α >= 1/255."""
    t = torch.tensor(ALPHA_MIN, dtype=dtype)
    return float(torch.nextafter(t, torch.zeros_like(t)))


def _to_tiles(img: Tensor, plan: _Plan) -> Tensor:
    """[H, W, D] -> [TW·TH, D, P] in tile order, channel-major (zero padded at the border)."""
    H, W, D = img.shape
    pad = img.new_zeros(plan.th * TILE, plan.tw * TILE, D)
    pad[:H, :W] = img
    return pad.reshape(plan.th, TILE, plan.tw, TILE, D).permute(0, 2, 4, 1, 3).reshape(-1, D, TILE * TILE)


def _from_tiles(t: Tensor, plan: _Plan, H: int, W: int) -> Tensor:
    """[TW·TH, D, P] -> [H, W, D]."""
    D = t.shape[1]
    return t.reshape(plan.th, plan.tw, D, TILE, TILE).permute(0, 3, 1, 4, 2).reshape(
        plan.th * TILE, plan.tw * TILE, D)[:H, :W]


_SAVE_BYTES = 512 << 20  # keep the forward's per-block tensors for the backward up to this size, else replay


def _forward(tab: Tensor, cols: Tensor, plan: _Plan, record: bool):
    """Composite all tiles. tab [N+1, 6], cols [N+1, D] -> acc [n_t, D, P], block log for the backward.

    The log holds (rows, start, stop, T_run entering, saved (w, w_live, T_floor) or None) per block.
    """
    n_t = plan.ids.shape[0]
    P = TILE * TILE
    dev, dt = tab.device, tab.dtype
    pix = torch.arange(TILE, device=dev, dtype=dt) + 0.5
    a_min = _a_min(dt)
    acc = torch.zeros(n_t, cols.shape[1], P, device=dev, dtype=dt)  # channel-major: small-D bmm is fast
    T_run = torch.ones(n_t, P, device=dev, dtype=dt)
    log = []
    saved_bytes = 0
    L = plan.ids.shape[1]
    for g0 in range(0, n_t, _GROUP):
        # tiles are sorted by list length, so a group's lists are of similar length
        rows = torch.arange(g0, min(g0 + _GROUP, n_t), device=dev)
        s = 0
        while s < L and len(rows):
            K = max(_KMIN, min(_KMAX, _BLOCK // len(rows)))
            e = min(s + K, L)
            ids = plan.ids[rows, s:e]  # [n, K]
            Tr = T_run[rows]  # [n, P]
            alpha, T_in, w = _block(tab, ids, plan.x0[rows], plan.y0[rows], pix, Tr, a_min)
            acc.index_add_(0, rows, torch.bmm(cols[ids].transpose(1, 2), w.transpose(1, 2)))  # [n, D, P]
            last = T_in[:, :, -1]  # [n, P]
            T_run[rows] = last.masked_fill(last <= T_STOP, 0.0)
            if record:
                keep = None
                if saved_bytes < _SAVE_BYTES:
                    keep = (w,) + _grad_weights(alpha, T_in, w)
                    saved_bytes += w.numel() * 3 * w.element_size()
                log.append((rows, s, e, Tr, keep))
            s = e
            # drop tiles whose list ended or whose pixels are all finished
            alive = (plan.counts[rows] > s) & (T_run[rows] > 0).any(1)
            rows = rows[alive]
    return acc, log


class _Composite(torch.autograd.Function):
    """Front-to-back compositing of one camera with a hand-written backward over the same blocks.

    The last colour channel must be all ones: its composite is the alpha, and it carries the gradient of
    everything that depends on the final transmittance (alpha, background), so no special case is needed.
    """

    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, plan: _Plan, width: int, height: int):
        # means2d [N, 2], conics [N, 3], opacities [N], colors [N, D] -> composite [H, W, D] (no background)
        tab, cols = _tables(means2d, conics, opacities, colors)
        acc, log = _forward(tab, cols, plan, record=any(ctx.needs_input_grad[:4]))
        full = acc.new_zeros(plan.tw * plan.th, acc.shape[1], TILE * TILE)
        full[plan.tiles] = acc
        ctx.plan, ctx.log = plan, log
        ctx.save_for_backward(tab, cols, acc, opacities)
        return _from_tiles(full, plan, height, width).contiguous()

    @staticmethod
    def backward(ctx, g_img):
        tab, cols, acc, opac = ctx.saved_tensors
        plan = ctx.plan
        n_t, D, P = acc.shape
        dev, dt = tab.device, tab.dtype
        gC = _to_tiles(g_img, plan)[plan.tiles]  # [n_t, D, P]
        S_pre = (acc * gC).sum(1).neg_()  # [n_t, P] running −Σ_{j<=i} w f, starting at −Σ_all
        pix = torch.arange(TILE, device=dev, dtype=dt) + 0.5
        a_min = _a_min(dt)
        g_tab = torch.zeros_like(tab)
        g_cols = torch.zeros_like(cols)
        for rows, s, e, Tr, saved in ctx.log:
            ids = plan.ids[rows, s:e]  # [n, K]
            n, K = ids.shape
            if saved is None:
                alpha, T_in, w = _block(tab, ids, plan.x0[rows], plan.y0[rows], pix, Tr, a_min)
                wl, Tc = _grad_weights(alpha, T_in, w)
            else:
                w, wl, Tc = saved  # [n, P, K] each
            a, b, cc, _, dx, dy = _offsets(tab, ids, plan.x0[rows], plan.y0[rows], pix)
            gc = gC[rows]  # [n, D, P]
            f = torch.bmm(gc.transpose(1, 2), cols[ids].transpose(1, 2))  # [n, P, K] colour · output grad
            wf = w * f
            rest = torch.cumsum(wf, -1).add_(S_pre[rows][:, :, None]).neg_()  # Σ_{j>i} w f
            S_pre[rows] = -rest[:, :, -1]
            # dL/d(log o − σ) = α·dL/dα = w·f − α/(1−α)·Σ_{j>i} w f, and α/(1−α) = w/T_in
            G = (wl * (f - rest / Tc)).view(n, TILE, TILE, K)  # [n, r, c, K]
            Gc = G.sum(1)  # [n, TILE(c), K]
            Gr = G.sum(2)  # [n, TILE(r), K]
            s_dx = (Gc * dx).sum(1)  # [n, K] Σ G dx
            s_dy = (Gr * dy).sum(1)
            s_dxx = (Gc * dx * dx).sum(1)
            s_dyy = (Gr * dy * dy).sum(1)
            s_dxy = ((G * dx[:, None]).sum(2) * dy).sum(1)
            g_all = Gc.sum(1)
            upd = torch.stack([-(a * s_dx + b * s_dy), -(cc * s_dy + b * s_dx),
                               -0.5 * s_dxx, -s_dxy, -0.5 * s_dyy, g_all], -1)  # [n, K, 6]
            flat = ids.reshape(-1)
            g_tab.index_add_(0, flat, upd.reshape(-1, 6))
            g_cols.index_add_(0, flat, torch.bmm(gc, w).transpose(1, 2).reshape(-1, D))  # [n, K, D]
        N = opac.shape[0]
        g_op = g_tab[:N, 5] / opac.clamp_min(1e-30)
        return g_tab[:N, 0:2], g_tab[:N, 2:5], g_op, g_cols[:N], None, None, None


def _tables(means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor) -> tuple[Tensor, Tensor]:
    """Per-Gaussian tables with a trailing padding row (α = 0): [N+1, 6] and [N+1, D]."""
    tab = torch.cat([means2d, conics, torch.log(opacities.clamp_min(1e-30))[:, None]], 1)
    pad = tab.new_zeros(1, 6)
    pad[0, 5] = -float("inf")
    tab = torch.cat([tab, pad], 0)
    cols = torch.cat([colors, colors.new_zeros(1, colors.shape[1])], 0)
    return tab, cols


def composite(means2d: Tensor,  # [N, 2]
              conics: Tensor,  # [N, 3]
              opacities: Tensor,  # [N] activated
              colors: Tensor,  # [N, D]
              radii: Tensor,  # [N, 2] int (0 = culled)
              depths: Tensor,  # [N] (sort key)
              width: int, height: int,
              background: Tensor | None = None  # [D]
              ) -> tuple[Tensor, Tensor]:
    """One camera's image [H, W, D] and alpha [H, W, 1]; differentiable in means2d, conics, opacities,
    colors and background."""
    plan = _bin(means2d.detach(), radii, depths.detach(), width, height)
    ones = colors.new_ones(colors.shape[0], 1)
    out = _Composite.apply(means2d, conics, opacities, torch.cat([colors, ones], 1), plan, width, height)
    img, alpha = out[..., :-1], out[..., -1:]  # [H, W, D], [H, W, 1]
    if background is not None:
        img = img + (1.0 - alpha) * background.to(img.dtype)
    return img, alpha


def composite_reference(means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor, radii: Tensor,
                        depths: Tensor, width: int, height: int, background: Tensor | None = None
                        ) -> tuple[Tensor, Tensor]:
    """Plain per-pixel walk over all visible Gaussians (no tiles, plain autograd): the check for `composite`.

    Same arguments and results as `composite`; O(H·W·N) time and memory, for tests on tiny scenes.
    """
    ys, xs = torch.meshgrid(torch.arange(height, dtype=means2d.dtype, device=means2d.device) + 0.5,
                            torch.arange(width, dtype=means2d.dtype, device=means2d.device) + 0.5, indexing="ij")
    T = torch.ones(height * width, dtype=means2d.dtype, device=means2d.device)  # [HW]
    live = torch.ones_like(T, dtype=torch.bool)
    out = colors.new_zeros(height * width, colors.shape[1])
    vis = torch.nonzero((radii > 0).all(-1)).squeeze(1)
    for i in vis[torch.argsort(depths[vis].detach(), stable=True)].tolist():
        dx, dy = means2d[i, 0] - xs.reshape(-1), means2d[i, 1] - ys.reshape(-1)
        sigma = 0.5 * conics[i, 0] * dx * dx + conics[i, 1] * dx * dy + 0.5 * conics[i, 2] * dy * dy
        alpha = torch.clamp_max(opacities[i] * torch.exp(-sigma), ALPHA_MAX)
        use = live & (alpha >= ALPHA_MIN) & (sigma >= 0)
        T_next = T * (1.0 - alpha)
        stop = use & (T_next <= T_STOP)
        live = live & ~stop
        use = use & ~stop
        out = out + torch.where(use[:, None], (alpha * T)[:, None] * colors[i], 0.0)
        T = torch.where(use, T_next, T)
    if background is not None:
        out = out + T[:, None] * background
    return out.reshape(height, width, -1), (1.0 - T).reshape(height, width, 1)


def rasterize(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
              viewmats: Tensor, Ks: Tensor, width: int, height: int, *, background: Tensor | None = None,
              eps2d: float = 0.3, near_plane: float = 0.01, far_plane: float = 1e10,
              render_depth: bool = True) -> tuple[Tensor, Tensor, Tensor | None, dict]:
    """All cameras: features [C, H, W, D], alpha [C, H, W, 1], expected depth [C, H, W, 1] or None, meta.

    scales and opacities are activated; colors [N, D] or [C, N, D]; background [D] or [C, D].
    """
    C = viewmats.shape[0]
    means2d, conics, depths, radii = project(means, quats, scales, opacities, viewmats, Ks, width, height,
                                             eps2d=eps2d, near_plane=near_plane, far_plane=far_plane)
    D = colors.shape[-1]
    feats, alphas = [], []
    for c in range(C):
        col = colors[c] if colors.dim() == 3 else colors  # [N, D]
        if render_depth:
            col = torch.cat([col, depths[c][:, None].to(col.dtype)], 1)
        bg = None
        if background is not None:
            bg = background[c] if background.dim() == 2 else background
            if render_depth:
                bg = torch.cat([bg.to(col.dtype), bg.new_zeros(1, dtype=col.dtype)])
        img, alpha = composite(means2d[c], conics[c], opacities, col, radii[c], depths[c], width, height, bg)
        feats.append(img)
        alphas.append(alpha)
    out = torch.stack(feats)  # [C, H, W, D(+1)]
    alpha = torch.stack(alphas)  # [C, H, W, 1]
    depth = None
    if render_depth:
        depth = out[..., D:] / alpha.clamp_min(1e-10)
        out = out[..., :D]
    meta = {
        "batch_ids": None, "camera_ids": None, "gaussian_ids": None,
        "radii": radii, "means2d": means2d, "depths": depths, "conics": conics,
        "opacities": opacities[None].expand(C, -1),
        "tile_width": (width + TILE - 1) // TILE, "tile_height": (height + TILE - 1) // TILE,
        "tile_size": TILE, "width": width, "height": height, "n_batches": 1, "n_cameras": C,
    }
    return out, alpha, depth, meta


def label_weight_sums(means2d: Tensor,  # [N, 2]
                      conics: Tensor,  # [N, 3]
                      opacities: Tensor,  # [N]
                      radii: Tensor,  # [N, 2]
                      depths: Tensor,  # [N]
                      labels: Tensor,  # [H, W] int64 in [0, num_labels); num_labels = does not vote
                      num_labels: int,
                      out: Tensor,  # [N+1, num_labels] float32, accumulated into
                      ) -> None:
    """out[i, labels(u)] += w_i(u) = α·T of Gaussian i at pixel u, for one camera (forward only, no autograd).

    The LUDVIG numerator without the gradient route: the same binning, blocks and thresholds as `composite`,
    so the weights are exactly the ones the render blends with. Row N of `out` collects padding entries and
    non-voting pixels (discard it); tiles without a voting pixel are skipped. Cost does not grow with
    num_labels: each block reduces its tile's pixels to per-label sums with one small bmm, then scatters
    those few cells instead of every pixel.
    """
    n = means2d.shape[0]
    dev, dt = means2d.device, means2d.dtype
    H, W = labels.shape
    plan = _bin(means2d, radii, depths, W, H)
    if plan.ids.shape[0] == 0:
        return
    tab, _ = _tables(means2d, conics, opacities, opacities.new_zeros(n, 1))
    pad = torch.full((plan.th * TILE, plan.tw * TILE), num_labels, dtype=torch.long, device=dev)
    pad[:H, :W] = labels
    lab_t = pad.reshape(plan.th, TILE, plan.tw, TILE).permute(0, 2, 1, 3).reshape(-1, TILE * TILE)[plan.tiles]
    srt, order = lab_t.sort(1)  # [n_t, P]
    new = torch.ones_like(srt, dtype=torch.bool)
    new[:, 1:] = srt[:, 1:] != srt[:, :-1]
    rank = new.long().cumsum(1) - 1  # slot of each sorted pixel
    S = int(rank[:, -1].max()) + 1 if rank.numel() else 1
    slot = torch.empty_like(rank).scatter_(1, order, rank)  # [n_t, P] slot of each pixel
    table = torch.full((lab_t.shape[0], S), num_labels, dtype=torch.long, device=dev).scatter_(1, rank, srt)
    onehot = torch.nn.functional.one_hot(slot, S).to(dt)  # [n_t, P, S]
    rows = torch.nonzero((lab_t < num_labels).any(1)).squeeze(1)  # only tiles with a voting pixel
    pix = torch.arange(TILE, device=dev, dtype=dt) + 0.5
    a_min = _a_min(dt)
    T_run = torch.ones(plan.ids.shape[0], TILE * TILE, device=dev, dtype=dt)
    flat_out = out.view(-1)
    L = plan.ids.shape[1]
    s = 0
    while s < L and len(rows):
        k = max(_KMIN, min(_KMAX, _BLOCK // len(rows)))
        e = min(s + k, L)
        ids = plan.ids[rows, s:e]  # [r, k] Gaussian index (n = padding)
        _, T_in, w = _block(tab, ids, plan.x0[rows], plan.y0[rows], pix, T_run[rows], a_min)  # [r, P, k]
        hist = torch.bmm(w.transpose(1, 2), onehot[rows])  # [r, k, S] per-label sums over the tile's pixels
        tb = table[rows][:, None, :]  # [r, 1, S]
        flat = torch.where(tb < num_labels, ids[:, :, None] * num_labels + tb, n * num_labels)  # [r, k, S]
        flat_out.index_add_(0, flat.reshape(-1), hist.reshape(-1).to(out.dtype))
        last = T_in[:, :, -1]
        T_run[rows] = last.masked_fill(last <= T_STOP, 0.0)
        s = e
        rows = rows[(plan.counts[rows] > s) & (T_run[rows] > 0).any(1)]
