"""QUBO mask selection for PanSt3R's "qubo" merge: weights from soft masks and a seeded, fast annealer.

The official merge picks a subset of the 200 query masks by minimising xᵀQx + λ·mean(x) with its own
simulated annealing: 10000 single-bit-flip proposals per restart, geometric temperature
T0=0.5 → T_end=1e-4, 20 restarts, best state seen wins. It recomputes the full O(N²) energy for every
proposal in a Python loop and draws from the unseeded global RNG.

Here the same algorithm is
* seeded: every random number comes from one `np.random.Generator(seed)`, drawn up front;
* incremental: a local field g = S·x (S = (Q+Qᵀ)/2) is kept per restart, so a proposal costs O(1) and an
  accepted flip O(N) (ΔE = d·(2·g_k + λ/N) + Q_kk with d = ±1);
* batched: all restarts advance together as an [R, N] batch (numpy), or in a compiled loop (numba, when
  installed) that consumes the very same random streams, so both backends give identical results.
`solve_reference` is the straightforward official-style loop (full energy per proposal, sequential restarts),
kept as the reference the fast path is tested and benchmarked against.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

import numpy as np
import torch

__all__ = [
    "DEFAULT_SCHEDULE",
    "build_qubo",
    "energy",
    "solve",
    "solve_reference",
    "anneal_streams",
    "has_numba",
]

# The official annealer's schedule.
DEFAULT_SCHEDULE = {"num_iters": 10000, "num_redo": 20, "t0": 0.5, "t_end": 1e-4}


# ------------------------------------------------------------------------------------------------
# QUBO weights
# ------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------
# energy and annealing
# ------------------------------------------------------------------------------------------------


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


def anneal_streams(n: int, seed: int = 0, *, num_iters: int = 10000, num_redo: int = 20, t0: float = 0.5,
                   t_end: float = 1e-4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All random numbers one annealing run consumes, from one seeded Generator.

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


def _anneal_numpy(S: np.ndarray, diag: np.ndarray, lam_n: float, init: np.ndarray, flips: np.ndarray,
                  thr: np.ndarray, e0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All restarts as one [R, N] batch; returns (best states [R, N] int8, their tracked energies [R])."""
    x = init.copy()  # [R, N] int8
    g = x.astype(np.float64) @ S  # [R, N] local field S·x (S symmetric)
    e = e0.copy()  # [R]
    best_x, best_e = x.copy(), e.copy()
    rows = np.arange(x.shape[0])
    for t in range(flips.shape[0]):
        k = flips[t]  # [R]
        d = 1.0 - 2.0 * x[rows, k]  # +1 turns the bit on, -1 off
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
            best_x[better] = x[better]
    return best_x, best_e


_NUMBA_KERNEL = None


def has_numba() -> bool:
    """True when the compiled annealing loop is available (numba installed)."""
    return _numba_kernel() is not None


def _numba_kernel():
    global _NUMBA_KERNEL
    if _NUMBA_KERNEL is None:
        try:
            import numba
        except Exception:
            _NUMBA_KERNEL = False
            return None

        @numba.njit(cache=True, nogil=True)
        def kernel(S, diag, lam_n, init, flips, thr, e0):  # same arithmetic as _anneal_numpy, one restart at a time
            R, N = init.shape
            best_x = init.copy()
            best_e = e0.copy()
            x = np.empty(N, np.int8)
            g = np.empty(N, np.float64)
            for r in range(R):
                for i in range(N):
                    x[i] = init[r, i]
                for j in range(N):
                    s = 0.0
                    for i in range(N):
                        if x[i]:
                            s += S[i, j]
                    g[j] = s
                e = e0[r]
                for t in range(flips.shape[0]):
                    k = flips[t, r]
                    d = 1.0 - 2.0 * x[k]
                    delta = d * (2.0 * g[k] + lam_n) + diag[k]
                    if delta < thr[t, r]:
                        x[k] ^= 1
                        for j in range(N):
                            g[j] += d * S[k, j]
                        e += delta
                        if e < best_e[r]:
                            best_e[r] = e
                            for i in range(N):
                                best_x[r, i] = x[i]
            return best_x, best_e

        _NUMBA_KERNEL = kernel
    return _NUMBA_KERNEL or None


def solve(Q: np.ndarray, lambda_reg: float = 1e-3, seed: int = 0, *, backend: str = "auto",
          return_energy: bool = False, **schedule) -> np.ndarray | tuple[np.ndarray, float]:
    """Minimise xᵀQx + λ·mean(x) over x ∈ {0,1}^N by seeded simulated annealing; returns x as bool [N].

    schedule: num_iters (10000), num_redo (20), t0 (0.5), t_end (1e-4) — the official values by default.
    backend: "numba" (compiled loop), "numpy" (restarts batched as [R, N]) or "auto" (numba when installed).
    Both backends consume the same random streams and give the same answer for a seed.
    The best state seen in each restart is kept; the one with the lowest exact energy across restarts wins
    (ties -> lowest restart index).
    """
    unknown = set(schedule) - set(DEFAULT_SCHEDULE)
    if unknown:
        raise TypeError(f"unknown schedule arguments {sorted(unknown)}; use {sorted(DEFAULT_SCHEDULE)}")
    sch = {**DEFAULT_SCHEDULE, **schedule}
    Q = np.asarray(Q, dtype=np.float64)
    if Q.ndim != 2 or Q.shape[0] != Q.shape[1]:
        raise ValueError(f"Q must be square [N, N], got {Q.shape}")
    n = Q.shape[0]
    if n == 0:
        x0 = np.zeros(0, dtype=bool)
        return (x0, 0.0) if return_energy else x0
    S = np.ascontiguousarray((Q + Q.T) / 2.0)
    diag = np.ascontiguousarray(np.diag(Q).copy())
    lam_n = float(lambda_reg) / n
    init, flips, thr = anneal_streams(n, seed, **sch)
    e0 = np.asarray(energy(Q, init, lambda_reg), dtype=np.float64).reshape(-1)
    if backend == "auto":
        backend = "numba" if has_numba() else "numpy"
    if backend == "numba":
        kernel = _numba_kernel()
        if kernel is None:
            raise RuntimeError("backend='numba' needs the numba package (pip install numba)")
        best_x, _ = kernel(S, diag, lam_n, init, flips, thr, e0)
    elif backend == "numpy":
        best_x, _ = _anneal_numpy(S, diag, lam_n, init, flips, thr, e0)
    else:
        raise ValueError(f"unknown backend {backend!r}; use auto, numba or numpy")
    exact = np.asarray(energy(Q, best_x, lambda_reg)).reshape(-1)  # tracked energies drift by rounding only
    r = int(np.argmin(exact))
    x = best_x[r].astype(bool)
    return (x, float(exact[r])) if return_energy else x


def solve_reference(Q: np.ndarray, lambda_reg: float = 1e-3, seed: int = 0, *,
                    streams: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None,
                    return_energy: bool = False, **schedule) -> np.ndarray | tuple[np.ndarray, float]:
    """The official annealer, straightforwardly: full xᵀQx recomputation per proposal, restarts in sequence.

    Without `streams` it draws like the official code (one index per proposal, a uniform only when Δ >= 0)
    from its own seeded Generator. With `streams` (from `anneal_streams`) it replays exactly the proposals
    and acceptance thresholds `solve` uses, so the two can be compared state for state.
    """
    sch = {**DEFAULT_SCHEDULE, **schedule}
    Q = np.asarray(Q, dtype=np.float64)
    n = Q.shape[0]
    num_iters, redo = sch["num_iters"], sch["num_redo"]
    temps = _schedule(num_iters, sch["t0"], sch["t_end"])
    rng = np.random.default_rng(seed)
    best_all, best_all_e = None, math.inf
    for r in range(redo):
        x = (streams[0][r] if streams is not None else rng.integers(0, 2, n)).astype(np.int64)
        e = energy(Q, x, lambda_reg)
        best_x, best_e = x.copy(), e
        for t in range(num_iters):
            k = int(streams[1][t, r]) if streams is not None else int(rng.integers(n))
            new_x = x.copy()
            new_x[k] = 1 - new_x[k]
            new_e = energy(Q, new_x, lambda_reg)
            delta = new_e - e
            if streams is not None:
                accept = delta < streams[2][t, r]
            else:
                accept = delta < 0 or rng.random() < math.exp(-delta / temps[t])
            if accept:
                x, e = new_x, new_e
                if e < best_e:
                    best_x, best_e = x.copy(), e
        if best_e < best_all_e:
            best_all, best_all_e = best_x, best_e
    x = best_all.astype(bool)
    return (x, float(best_all_e)) if return_energy else x
