"""QUBO mask selection for PanSt3R's "qubo" merge: weights from soft masks and a seeded, fast solver.

The official merge picks a subset of the 200 query masks by minimising E(x) = xᵀQx + λ·mean(x) with its own
simulated annealing: 20 restarts of 10000 single-bit-flip proposals, geometric temperature
T0=0.5 → T_end=1e-4, best state seen wins. With many overlapping masks that annealer fixes the choice between
two overlapping masks while the temperature is still high; undoing it later means crossing a barrier as
large as a mask's area, so its result depends on luck. The best selections hold few masks, which suits
a constructive search. `solve` runs a portfolio, seeded from one `np.random.SeedSequence`:
* `num_starts` randomised greedy constructions (GRASP: add one of the few masks with the most negative
  energy change), each finished by an exact steepest descent over single flips and swaps (one mask out,
  one in: the move between two overlapping masks);
* `num_redo` restarts of the official annealing schedule, each finished by the same descent;
* from the best of these, up to `insert_passes` passes of forced insertions (add an unselected mask, drop
  the masks it makes costly, refill greedily, descend; keep it when lower).
Every part is a compiled loop (numba, cached on disk, warmed up at import) with a numpy mirror doing the
same floating-point operations in the same order, so both backends return the same state for a seed.
A local field g = S·x (S = (Q+Qᵀ)/2) makes a proposal O(1) and a flip O(N).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Iterable, Optional

import numpy as np
import torch

try:
    import numba as _numba
except ImportError:  # the numpy mirror is used
    _numba = None

__all__ = [
    "OFFICIAL_SCHEDULE",
    "SOLVER_DEFAULTS",
    "build_qubo",
    "energy",
    "solve",
    "descend",
    "anneal_streams",
    "search_streams",
    "has_numba",
    "warm_up",
]

# The official annealer's schedule.
OFFICIAL_SCHEDULE = {"num_iters": 10000, "num_redo": 20, "t0": 0.5, "t_end": 1e-4}
# `solve`'s portfolio: greedy starts, annealing restarts on the official schedule, forced-insertion passes.
SOLVER_DEFAULTS = {"num_starts": 400, "num_redo": 4, "num_iters": 10000, "t0": 0.5, "t_end": 1e-4,
                   "insert_passes": 4}
# Greedy starts cycle through these (alpha, rcl) pairs: candidates are the additions whose energy change is
# <= alpha · (the best change), the rcl best of them; start 0 is the plain greedy (1.0, 1).
_GREEDY_MIX = [(a, r) for r in (3, 8, 30) for a in (0.3, 0.6, 0.85)]
_DRAWS_PER_START = 64  # uniforms per greedy start (reused cyclically past 64 additions)


# ---- QUBO weights ----


def _pairwise_min_sum(m: torch.Tensor, out: torch.Tensor, *, rows: int = 32, pix: int = 32768) -> None:
    """out += Σ_p min(m_i(p), m_j(p)) for all pairs, in bounded memory.

    m: [N, P] float32 soft masks of one view; out: [N, N] float64 (accumulated in place).
    Uses min(a, b) = (a + b − |a − b|)/2, so a pixel block costs one L1 `cdist` (no [N, N, P] temporary);
    only the upper triangle is computed (row blocks against the columns from their first row on) and then
    mirrored. Each pixel block is summed in float32 and accumulated in float64, so the cancellation error
    stays ~1e-3 of a pixel per block.
    """
    n, p = m.shape
    if n == 0 or p == 0:
        return
    acc = torch.zeros(n, n, dtype=torch.float64)
    for p0 in range(0, p, pix):
        c = m[:, p0:p0 + pix].contiguous()  # [N, pc]
        a = c.sum(1)  # [N]
        for i0 in range(0, n, rows):
            i1 = min(n, i0 + rows)
            l1 = torch.cdist(c[None, i0:i1], c[None, i0:], p=1)[0]  # [r, N - i0]
            acc[i0:i1, i0:] += ((a[i0:i1, None] + a[None, i0:] - l1) * 0.5).double()
    acc = torch.triu(acc)
    out += acc + torch.triu(acc, diagonal=1).T


def build_qubo(view_masks: Iterable[torch.Tensor], *, penalty: float = 1.0, cutoff: float = 0.0,
               pad_hw: Optional[tuple[int, int]] = None) -> np.ndarray:
    """QUBO matrix Q [N, N] (float64) of the official `weight_from_masks` from soft masks, one view at a time.

    view_masks: iterable of [N, H, W] probabilities (sigmoid, already upsampled), one per view, so the caller
    can stream views and never hold [N, V, H, W].
    Unary: soft area a_i = Σ_p m_i(p); pairwise: soft intersection o_ij = Σ_p min(m_i, m_j), both summed over
    all views and normalised by H·W (`pad_hw`, the padded size, when given) and by V; normalised overlaps
    <= `cutoff` are zeroed. W_ii = a_i, W_ij = -(1+penalty)/2 · o_ij, and Q = -W.
    """
    acc: Optional[torch.Tensor] = None  # [N, N] float64 Σ min(m_i, m_j); its diagonal is the soft area
    num_views = 0
    hw = None
    for m in view_masks:
        if m.ndim != 3:
            raise ValueError(f"build_qubo expects [N, H, W] masks per view, got {tuple(m.shape)}")
        n = m.shape[0]
        if acc is None:
            acc = torch.zeros(n, n, dtype=torch.float64)
        elif acc.shape[0] != n:
            raise ValueError(f"every view needs the same number of masks ({acc.shape[0]}), got {n}")
        hw = (m.shape[1], m.shape[2]) if hw is None else (max(hw[0], m.shape[1]), max(hw[1], m.shape[2]))
        _pairwise_min_sum(m.reshape(n, -1).float().contiguous(), acc)
        num_views += 1
    if acc is None:
        raise ValueError("build_qubo needs at least one view")
    h, w = pad_hw if pad_hw is not None else hw
    norm = acc.numpy() / float(h * w) / float(num_views)
    area = np.diag(norm).copy()
    overlap = np.where(norm <= cutoff, 0.0, norm)
    weights = -(1.0 + penalty) / 2.0 * overlap
    np.fill_diagonal(weights, area)
    return -weights


def energy(Q: np.ndarray, x: np.ndarray, lambda_reg: float = 1e-3) -> np.ndarray | float:
    """E(x) = xᵀQx + λ·mean(x) for one state [N] or a batch [R, N]."""
    Q = np.asarray(Q, dtype=np.float64)
    xf = np.asarray(x, dtype=np.float64)
    if xf.ndim == 1:
        return float(xf @ Q @ xf + lambda_reg * xf.mean())
    return np.einsum("ri,ij,rj->r", xf, Q, xf) + lambda_reg * xf.mean(-1)


def _schedule(num_iters: int, t0: float, t_end: float) -> np.ndarray:
    """Temperature used at each proposal: T_t = T0·r^t with r = (T_end/T0)^(1/num_iters)."""
    r = (t_end / t0) ** (1.0 / num_iters)
    return t0 * r ** np.arange(num_iters, dtype=np.float64)


def anneal_streams(n: int, seed: int | np.random.SeedSequence = 0, *, num_iters: int = 10000, num_redo: int = 20,
                   t0: float = 0.5, t_end: float = 1e-4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All random numbers the annealing restarts consume, from one seeded Generator.

    Returns init [R, N] int8 random bits, flips [iters, R] int64 proposal indices and
    thr [iters, R] float64 acceptance thresholds −T_t·log(u) (u uniform in [0, 1)); a proposal with energy
    change Δ is accepted iff Δ < thr, i.e. Δ < 0 or u < exp(−Δ/T) — the official Metropolis rule.
    """
    rng = np.random.default_rng(seed)
    init = rng.integers(0, 2, size=(num_redo, n), dtype=np.int8)
    flips = rng.integers(0, n, size=(num_iters, num_redo), dtype=np.int64)
    u = rng.random((num_iters, num_redo))
    temps = _schedule(num_iters, t0, t_end)
    with np.errstate(divide="ignore"):
        thr = -temps[:, None] * np.log(u)  # u == 0 -> +inf (always accept)
    return init, flips, thr


def search_streams(num_starts: int, seed: int | np.random.SeedSequence = 0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random numbers and parameters of the greedy starts: u [S, 64] uniforms, alpha [S], rcl [S] int64."""
    u = np.random.default_rng(seed).random((num_starts, _DRAWS_PER_START))
    mix = [(1.0, 1)] + [_GREEDY_MIX[i % len(_GREEDY_MIX)] for i in range(max(0, num_starts - 1))]
    alpha = np.array([a for a, _ in mix[:num_starts]], dtype=np.float64)
    rcl = np.array([r for _, r in mix[:num_starts]], dtype=np.int64)
    return u, alpha, rcl


# ---- compiled kernels (numba); each has a numpy mirror below doing the same arithmetic in the same order ----


_UNCACHED_WARNED = False  # one warning per process when nothing can be cached


def _jit(func):
    """numba.njit with the on-disk cache (the plain function without numba).

    numba caches next to this file, else in NUMBA_CACHE_DIR or ~/.cache/numba, and refuses cache=True when
    none is writable; then the temporary directory is used, and only if that fails too are the kernels
    compiled in every process (at import, see warm_up).
    """
    global _UNCACHED_WARNED
    if _numba is None:
        return func
    jit = _numba.njit(cache=True, nogil=True)
    try:
        return jit(func)
    except RuntimeError:  # "cannot cache function ...: no locator available for file ..."
        pass
    cfg = _numba.core.config
    if not cfg.CACHE_DIR:
        cfg.CACHE_DIR = os.path.join(tempfile.gettempdir(), f"panst3r-numba-{getattr(os, 'getuid', lambda: 0)()}")
        try:
            return jit(func)
        except RuntimeError:
            cfg.CACHE_DIR = ""
    if not _UNCACHED_WARNED:
        _UNCACHED_WARNED = True
        warnings.warn("numba finds no writable cache directory (set NUMBA_CACHE_DIR): the QUBO kernels are "
                      "compiled in every process", RuntimeWarning)
    return _numba.njit(nogil=True)(func)


@_jit
def _flip_nb(S, x, g, k):  # S [N, N], x [N] int8, g [N] = S·x
    d = 1.0 - 2.0 * x[k]
    x[k] ^= 1
    for j in range(x.shape[0]):
        g[j] += d * S[k, j]


@_jit
def _field_nb(S, x):  # g = S·x, rows summed in ascending index order
    n = x.shape[0]
    g = np.zeros(n)
    for i in range(n):
        if x[i]:
            for j in range(n):
                g[j] += S[i, j]
    return g


@_jit
def _energy_nb(S, lam_n, x):  # exact E from scratch
    g = _field_nb(S, x)
    e = 0.0
    for i in range(x.shape[0]):
        if x[i]:
            e += g[i] + lam_n
    return e


@_jit
def _descend_nb(S, diag, lam_n, x, g, tol):
    """Steepest descent over single flips and swaps until no move lowers E by more than tol (in place)."""
    n = x.shape[0]
    while True:
        best, bk, bl = -tol, -1, -1
        for k in range(n):
            delta = (1.0 - 2.0 * x[k]) * (2.0 * g[k] + lam_n) + diag[k]
            if delta < best:
                best, bk = delta, k
        for k in range(n):
            if x[k]:
                dk = diag[k] - (2.0 * g[k] + lam_n)  # remove k
                for l in range(n):
                    if not x[l]:  # then add l: its field lost S[k, l]
                        delta = dk + ((2.0 * g[l] + lam_n) + diag[l]) - 2.0 * S[k, l]
                        if delta < best:
                            best, bk, bl = delta, k, l
        if bk < 0:
            return
        _flip_nb(S, x, g, bk)
        if bl >= 0:
            _flip_nb(S, x, g, bl)


@_jit
def _construct_nb(S, diag, lam_n, u, alpha, rcl, tol, x, g):
    """Randomised greedy: add one of the rcl best masks with ΔE <= alpha·min ΔE until no addition helps."""
    n = x.shape[0]
    m = np.empty(n)
    cand = np.empty(n, np.int64)
    step = 0
    while True:
        mn = -tol
        for k in range(n):
            m[k] = np.inf if x[k] else (2.0 * g[k] + lam_n) + diag[k]
            if m[k] < mn:
                mn = m[k]
        if not mn < -tol:
            return
        cut = alpha * mn
        cnt = 0
        for k in range(n):
            if m[k] < -tol and m[k] <= cut:
                cand[cnt] = k
                cnt += 1
        order = np.argsort(m[cand[:cnt]], kind="mergesort")
        cnt = min(cnt, rcl)
        _flip_nb(S, x, g, cand[order[int(u[step % u.shape[0]] * cnt)]])
        step += 1


@_jit
def _grasp_nb(S, diag, lam_n, u, alpha, rcl, tol):
    """Greedy starts + descent; returns the best state [N] int8 and its energy (first start wins ties)."""
    n = S.shape[0]
    best_x = np.zeros(n, np.int8)
    best_e = np.inf
    x = np.zeros(n, np.int8)
    g = np.zeros(n)
    for s in range(u.shape[0]):
        x[:] = 0
        g[:] = 0.0
        _construct_nb(S, diag, lam_n, u[s], alpha[s], rcl[s], tol, x, g)
        _descend_nb(S, diag, lam_n, x, g, tol)
        e = _energy_nb(S, lam_n, x)
        if e < best_e:
            best_e = e
            best_x[:] = x
    return best_x, best_e


@_jit
def _insert_nb(S, diag, lam_n, x, tol, max_pass):
    """Forced insertions: for every unselected j, add j, drop what then costs, refill greedily, descend;
    keep the result when it lowers E by more than tol (first improvement, in place)."""
    n = x.shape[0]
    e = _energy_nb(S, lam_n, x)
    y = np.empty(n, np.int8)
    u0 = np.zeros(1)
    for _p in range(max_pass):
        improved = False
        for j in range(n):
            if x[j]:
                continue
            y[:] = x
            g = _field_nb(S, y)
            _flip_nb(S, y, g, j)
            while True:
                best, bk = -tol, -1
                for k in range(n):
                    if y[k] and k != j:
                        delta = diag[k] - (2.0 * g[k] + lam_n)
                        if delta < best:
                            best, bk = delta, k
                if bk < 0:
                    break
                _flip_nb(S, y, g, bk)
            _construct_nb(S, diag, lam_n, u0, 1.0, 1, tol, y, g)
            _descend_nb(S, diag, lam_n, y, g, tol)
            ey = _energy_nb(S, lam_n, y)
            if ey < e - tol:
                x[:] = y
                e = ey
                improved = True
        if not improved:
            return


@_jit
def _anneal_nb(S, diag, lam_n, init, flips, thr, tol):
    """Official-schedule annealing, one restart at a time; the best state seen, then descent. -> [R, N] int8."""
    R, n = init.shape
    out = np.empty((R, n), np.int8)
    x = np.empty(n, np.int8)
    for r in range(R):
        x[:] = init[r]
        g = _field_nb(S, x)
        e, best_e = 0.0, 0.0
        out[r] = x
        for t in range(flips.shape[0]):
            k = flips[t, r]
            delta = (1.0 - 2.0 * x[k]) * (2.0 * g[k] + lam_n) + diag[k]
            if delta < thr[t, r]:
                _flip_nb(S, x, g, k)
                e += delta
                if e < best_e:
                    best_e = e
                    out[r] = x
        x[:] = out[r]
        _descend_nb(S, diag, lam_n, x, _field_nb(S, x), tol)
        out[r] = x
    return out


# ---- numpy mirrors (used without numba; tested against the kernels state for state) ----


def _field_np(S: np.ndarray, x: np.ndarray) -> np.ndarray:
    g = np.zeros(S.shape[0])
    for i in np.flatnonzero(x):
        g += S[i]
    return g


def _energy_np(S: np.ndarray, lam_n: float, x: np.ndarray) -> float:
    g = _field_np(S, x)
    e = 0.0
    for i in np.flatnonzero(x):
        e += g[i] + lam_n
    return e


def _flip_np(S: np.ndarray, x: np.ndarray, g: np.ndarray, k: int) -> None:
    d = 1.0 - 2.0 * x[k]
    x[k] ^= 1
    g += d * S[k]


def _descend_np(S, diag, lam_n, x, g, tol) -> None:
    while True:
        flip = (1.0 - 2.0 * x) * (2.0 * g + lam_n) + diag  # [N]
        bk = int(np.argmin(flip))
        best, bl = flip[bk], -1
        if not best < -tol:
            best, bk = -tol, -1
        on, off = np.flatnonzero(x), np.flatnonzero(x == 0)
        if on.size and off.size:
            dk = diag[on] - (2.0 * g[on] + lam_n)
            dl = (2.0 * g[off] + lam_n) + diag[off]
            sw = dk[:, None] + dl[None, :] - 2.0 * S[np.ix_(on, off)]  # [on, off] swap changes
            j = int(np.argmin(sw))
            if sw.flat[j] < best:
                bk, bl = int(on[j // off.size]), int(off[j % off.size])
        if bk < 0:
            return
        _flip_np(S, x, g, bk)
        if bl >= 0:
            _flip_np(S, x, g, bl)


def _construct_np(S, diag, lam_n, u, alpha, rcl, tol, x, g) -> None:
    step = 0
    while True:
        m = np.where(x != 0, np.inf, (2.0 * g + lam_n) + diag)
        mn = m.min()
        if not mn < -tol:
            return
        cand = np.flatnonzero((m < -tol) & (m <= alpha * mn))
        order = np.argsort(m[cand], kind="stable")
        cnt = min(cand.size, int(rcl))
        _flip_np(S, x, g, int(cand[order[int(u[step % u.shape[0]] * cnt)]]))
        step += 1


def _grasp_np(S, diag, lam_n, u, alpha, rcl, tol) -> tuple[np.ndarray, float]:
    n = S.shape[0]
    best_x, best_e = np.zeros(n, np.int8), np.inf
    for s in range(u.shape[0]):
        x, g = np.zeros(n, np.int8), np.zeros(n)
        _construct_np(S, diag, lam_n, u[s], alpha[s], rcl[s], tol, x, g)
        _descend_np(S, diag, lam_n, x, g, tol)
        e = _energy_np(S, lam_n, x)
        if e < best_e:
            best_x, best_e = x, e
    return best_x, best_e


def _insert_np(S, diag, lam_n, x, tol, max_pass) -> None:
    n = x.shape[0]
    e = _energy_np(S, lam_n, x)
    for _p in range(max_pass):
        improved = False
        for j in range(n):
            if x[j]:
                continue
            y = x.copy()
            g = _field_np(S, y)
            _flip_np(S, y, g, j)
            while True:
                drop = np.where(y != 0, diag - (2.0 * g + lam_n), np.inf)
                drop[j] = np.inf
                k = int(np.argmin(drop))
                if not drop[k] < -tol:
                    break
                _flip_np(S, y, g, k)
            _construct_np(S, diag, lam_n, np.zeros(1), 1.0, 1, tol, y, g)
            _descend_np(S, diag, lam_n, y, g, tol)
            ey = _energy_np(S, lam_n, y)
            if ey < e - tol:
                x[:] = y
                e = ey
                improved = True
        if not improved:
            return


def _anneal_np(S, diag, lam_n, init, flips, thr, tol) -> np.ndarray:
    """All restarts as one [R, N] batch, then descent per restart; same result as _anneal_nb."""
    x = init.copy()  # [R, N] int8
    g = np.stack([_field_np(S, xr) for xr in x])  # [R, N]
    e, best_e = np.zeros(x.shape[0]), np.zeros(x.shape[0])  # energy relative to the start
    out = x.copy()
    rows = np.arange(x.shape[0])
    for t in range(flips.shape[0]):
        k = flips[t]  # [R]
        d = 1.0 - 2.0 * x[rows, k]
        delta = d * (2.0 * g[rows, k] + lam_n) + diag[k]
        acc = delta < thr[t]
        if not acc.any():
            continue
        ra, ka, da = rows[acc], k[acc], d[acc]
        x[ra, ka] ^= 1
        g[ra] += da[:, None] * S[ka]
        e[ra] += delta[acc]
        better = ra[e[ra] < best_e[ra]]
        if better.size:
            best_e[better] = e[better]
            out[better] = x[better]
    for r in range(out.shape[0]):
        _descend_np(S, diag, lam_n, out[r], _field_np(S, out[r]), tol)
    return out


_NUMBA_OK = _numba is not None


def has_numba() -> bool:
    """True when the compiled kernels are available (numba installed and its warm-up compiled them)."""
    return _NUMBA_OK


def _prepare(Q: np.ndarray, lambda_reg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    Q = np.asarray(Q, dtype=np.float64)
    if Q.ndim != 2 or Q.shape[0] != Q.shape[1]:
        raise ValueError(f"Q must be square [N, N], got {Q.shape}")
    n = Q.shape[0]
    S = np.ascontiguousarray((Q + Q.T) / 2.0)  # [N, N] symmetric, same quadratic form
    diag = np.ascontiguousarray(np.diag(Q).copy())  # [N]
    lam_n = float(lambda_reg) / max(n, 1)
    tol = 1e-12 * max(float(np.abs(S).max()) if n else 0.0, abs(lam_n))  # below rounding of the tracked fields
    return Q, S, diag, lam_n, tol


def _backend(backend: str) -> str:
    if backend == "auto":
        return "numba" if has_numba() else "numpy"
    if backend == "numba" and not has_numba():
        raise RuntimeError("backend='numba' needs the numba package (pip install numba)")
    if backend not in ("numba", "numpy"):
        raise ValueError(f"unknown backend {backend!r}; use auto, numba or numpy")
    return backend


def solve(Q: np.ndarray, lambda_reg: float = 1e-3, seed: int = 0, *, backend: str = "auto",
          return_energy: bool = False, **options) -> np.ndarray | tuple[np.ndarray, float]:
    """Minimise xᵀQx + λ·mean(x) over x ∈ {0,1}^N; returns x as bool [N] (and its exact energy).

    options (SOLVER_DEFAULTS): num_starts greedy starts; num_redo annealing restarts with num_iters
    proposals each on the geometric schedule t0 → t_end (the official one); insert_passes passes of forced
    insertions from the best candidate. Every candidate ends with a descent over single flips and swaps; the
    lowest exact energy wins (ties -> greedy first, then restart order).
    backend: "numba", "numpy" or "auto" (numba when installed); both return the same state for a seed.
    """
    unknown = set(options) - set(SOLVER_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown solver options {sorted(unknown)}; use {sorted(SOLVER_DEFAULTS)}")
    opt = {**SOLVER_DEFAULTS, **options}
    Q, S, diag, lam_n, tol = _prepare(Q, lambda_reg)
    n = Q.shape[0]
    if n == 0:
        x0 = np.zeros(0, dtype=bool)
        return (x0, 0.0) if return_energy else x0
    if opt["num_starts"] <= 0 and opt["num_redo"] <= 0:
        raise ValueError("num_starts and num_redo are both 0: nothing would be searched")
    numba_backend = _backend(backend) == "numba"
    grasp_seed, anneal_seed = np.random.SeedSequence(seed).spawn(2)
    cands = []  # [k, N] int8 local minima
    if opt["num_starts"] > 0:
        u, alpha, rcl = search_streams(int(opt["num_starts"]), grasp_seed)
        bx, _ = (_grasp_nb if numba_backend else _grasp_np)(S, diag, lam_n, u, alpha, rcl, tol)
        cands.append(bx[None])
    if opt["num_redo"] > 0:
        init, flips, thr = anneal_streams(n, anneal_seed, num_iters=int(opt["num_iters"]),
                                          num_redo=int(opt["num_redo"]), t0=opt["t0"], t_end=opt["t_end"])
        cands.append((_anneal_nb if numba_backend else _anneal_np)(S, diag, lam_n, init, flips, thr, tol))
    X = np.concatenate(cands)
    exact = np.asarray(energy(Q, X, lambda_reg)).reshape(-1)
    r = int(np.argmin(exact))
    x, e = X[r].copy(), float(exact[r])
    if opt["insert_passes"] > 0:
        (_insert_nb if numba_backend else _insert_np)(S, diag, lam_n, x, tol, int(opt["insert_passes"]))
        e_ins = energy(Q, x, lambda_reg)
        if e_ins <= e:
            e = e_ins
        else:  # rounding of the tracked fields only; keep the better exact energy
            x = X[r].copy()
    return (x.astype(bool), e) if return_energy else x.astype(bool)


def descend(Q: np.ndarray, x: np.ndarray, lambda_reg: float = 1e-3, *, backend: str = "auto") -> np.ndarray:
    """Steepest descent from x over single flips and swaps to a local minimum; returns bool [N]."""
    Q, S, diag, lam_n, tol = _prepare(Q, lambda_reg)
    xs = np.asarray(x).astype(np.int8).copy()
    if xs.shape != (Q.shape[0],):
        raise ValueError(f"x must be [N={Q.shape[0]}], got {xs.shape}")
    if _backend(backend) == "numba":
        _descend_nb(S, diag, lam_n, xs, _field_nb(S, xs), tol)
    else:
        _descend_np(S, diag, lam_n, xs, _field_np(S, xs), tol)
    return xs.astype(bool)


def warm_up() -> None:
    """Compile, or load from numba's on-disk cache, every kernel with the argument types `solve` uses.

    Runs at import, so the first merge of a run costs what the next ones do. If numba fails here (a broken
    install), the numpy mirror is used instead, with a warning.
    """
    global _NUMBA_OK
    if not _NUMBA_OK:
        return
    try:
        Q = np.array([[-1.0, 0.5, 0.0], [0.5, -1.0, 0.25], [0.0, 0.25, -0.5]])
        solve(Q, num_starts=2, num_redo=1, num_iters=8, backend="numba")
        descend(Q, np.array([1, 1, 0]), backend="numba")
    except Exception as err:  # noqa: BLE001 - any numba failure: fall back to the exact numpy mirror
        _NUMBA_OK = False
        warnings.warn(f"numba kernels unavailable ({type(err).__name__}: {err}); using the numpy mirror",
                      RuntimeWarning)


warm_up()
