"""QUBO solver and weights: brute-force optima, exact energies, local minima, determinism, numba == numpy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from panst3r import qubo

needs_numba = pytest.mark.skipif(not qubo.has_numba(), reason="numba not installed: only the numpy mirror exists")


def _mask_qubo(n, seed, views=2, hw=(12, 16)):
    """QUBO of random soft masks: blobs (some duplicated, some merged), built by build_qubo."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(max(2, n // 3), *hw, generator=g)
    base = torch.nn.functional.avg_pool2d(base[None], 5, 1, 2)[0]  # smooth blobs
    pick = torch.randint(0, base.shape[0], (n,), generator=g)
    out = []
    for _v in range(views):
        logit = 12 * (base[pick] - base.mean()) + 0.7 * torch.randn(n, *hw, generator=g)
        out.append(torch.sigmoid(logit))
    return qubo.build_qubo(out)


def _random_qubo(n, seed):
    """Mask-selection-like QUBO: negative diagonal (areas), non-negative overlaps off the diagonal."""
    rng = np.random.default_rng(seed)
    a = rng.random(n) * 0.3
    o = np.triu(rng.random((n, n)) * 0.05 * (rng.random((n, n)) < 0.4), 1)
    Q = o + o.T
    np.fill_diagonal(Q, -a)
    return Q


def _energy_loops(Q, x, lam):
    """E(x) = Σ_ij Q_ij x_i x_j + λ·mean(x), with plain Python loops."""
    n = len(x)
    e = sum(Q[i][j] for i in range(n) for j in range(n) if x[i] and x[j])
    return e + lam * sum(bool(v) for v in x) / n


def _brute_force(Q, lam):
    n = Q.shape[0]
    xs = np.array(list(itertools.product((0, 1), repeat=n)), dtype=np.int8)  # [2^n, n]
    e = qubo.energy(Q, xs, lam)
    return xs[int(np.argmin(e))].astype(bool), float(e.min())


def test_energy_formula_by_hand():
    Q = np.array([[-1.0, 0.5], [0.5, -2.0]])
    assert qubo.energy(Q, np.array([1, 1]), 0.1) == pytest.approx(-1 - 2 + 1.0 + 0.1)
    assert qubo.energy(Q, np.array([0, 1]), 0.1) == pytest.approx(-2 + 0.05)
    np.testing.assert_allclose(qubo.energy(Q, np.array([[0, 0], [1, 0]]), 0.1), [0.0, -1 + 0.05])


@pytest.mark.parametrize("make,n,seed", [(_random_qubo, 12, 0), (_random_qubo, 16, 1), (_mask_qubo, 14, 2),
                                         (_mask_qubo, 16, 3), (_mask_qubo, 16, 4)])
def test_solve_finds_the_brute_force_optimum(make, n, seed):
    Q = make(n, seed)
    x_bf, e_bf = _brute_force(Q, 1e-3)
    x, e = qubo.solve(Q, 1e-3, seed=seed, return_energy=True)
    assert x.dtype == bool and x.shape == (n,)
    assert e == pytest.approx(e_bf, abs=1e-12)
    np.testing.assert_array_equal(x, x_bf)


def test_returned_energy_is_the_energy_of_the_returned_state():
    Q = _mask_qubo(40, 5)
    x, e = qubo.solve(Q, 2e-3, seed=3, return_energy=True)
    assert e == pytest.approx(_energy_loops(Q.tolist(), x.tolist(), 2e-3), abs=1e-12)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=needs_numba)])
def test_result_is_a_local_minimum_for_flips_and_swaps(backend):
    Q = _mask_qubo(60, 6)
    x = qubo.solve(Q, 1e-3, seed=0, backend=backend, num_starts=20, num_redo=2, num_iters=2000)
    e = qubo.energy(Q, x, 1e-3)
    for k in range(60):
        y = x.copy()
        y[k] = ~y[k]
        assert qubo.energy(Q, y, 1e-3) >= e - 1e-12, f"flipping {k} lowers the energy"
    for i, j in itertools.product(np.flatnonzero(x), np.flatnonzero(~x)):
        y = x.copy()
        y[i], y[j] = False, True
        assert qubo.energy(Q, y, 1e-3) >= e - 1e-12, f"swapping {i} out and {j} in lowers the energy"


def test_descend_reaches_a_local_minimum_and_never_goes_up():
    Q = _random_qubo(30, 8)
    rng = np.random.default_rng(0)
    for _ in range(5):
        x0 = rng.integers(0, 2, 30).astype(bool)
        x = qubo.descend(Q, x0, 1e-3)
        assert qubo.energy(Q, x, 1e-3) <= qubo.energy(Q, x0, 1e-3) + 1e-15
        flips = [qubo.energy(Q, np.where(np.arange(30) == k, ~x, x), 1e-3) for k in range(30)]
        assert min(flips) >= qubo.energy(Q, x, 1e-3) - 1e-12


def test_lambda_breaks_ties_toward_fewer_masks():
    """Two identical masks: selecting both gains nothing over one, λ makes one strictly better."""
    Q = np.array([[-0.4, 0.4], [0.4, -0.4]])
    x, e = qubo.solve(Q, 1e-3, seed=0, return_energy=True)
    assert x.tolist() == [True, False] and e == pytest.approx(-0.4 + 1e-3 / 2)


def test_empty_masks_select_nothing():
    """Masks whose area is below λ/N lower nothing: the empty selection (E = 0) is optimal."""
    Q = np.full((5, 5), 1e-7)
    np.fill_diagonal(Q, -1e-7)
    x, e = qubo.solve(Q, 1e-3, seed=0, return_energy=True)
    assert not x.any() and e == 0.0


def test_deterministic_for_a_seed_and_seed_matters():
    Q = _mask_qubo(60, 11)
    a = qubo.solve(Q, seed=5, num_starts=30, num_redo=2, num_iters=2000)
    b = qubo.solve(Q, seed=5, num_starts=30, num_redo=2, num_iters=2000)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(qubo.search_streams(10, 5)[0], qubo.search_streams(10, 6)[0])
    assert not np.array_equal(qubo.anneal_streams(60, 5, num_iters=50)[1], qubo.anneal_streams(60, 6, num_iters=50)[1])
    # the global numpy RNG is neither used nor disturbed
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    qubo.solve(Q, seed=5, num_starts=5, num_redo=1, num_iters=200)
    assert np.random.random() == before


def test_streams_follow_the_official_schedule_and_greedy_mix():
    init, flips, thr = qubo.anneal_streams(7, 0, num_iters=10000, num_redo=20)
    assert init.shape == (20, 7) and set(np.unique(init)) <= {0, 1}
    assert flips.shape == (10000, 20) and flips.min() >= 0 and flips.max() == 6
    temps = qubo._schedule(10000, 0.5, 1e-4)
    assert temps[0] == 0.5 and temps[-1] == pytest.approx(1e-4 / 0.999148, rel=1e-4)
    assert temps[1] / temps[0] == pytest.approx(0.999148, abs=1e-6)
    assert np.all(thr >= 0)
    u, alpha, rcl = qubo.search_streams(11, 0)
    assert u.shape == (11, 64) and (alpha[0], rcl[0]) == (1.0, 1)  # start 0: plain greedy
    assert list(zip(alpha[1:], rcl[1:]))[:9] == qubo._GREEDY_MIX and (alpha[10], rcl[10]) == qubo._GREEDY_MIX[0]


def _prepared(Q, lam=1e-3):
    _Q, S, diag, lam_n, tol = qubo._prepare(Q, lam)
    return S, diag, lam_n, tol


@needs_numba
def test_numba_kernels_and_numpy_mirror_agree_state_for_state():
    Q = _mask_qubo(80, 3)
    S, diag, lam_n, tol = _prepared(Q)
    u, alpha, rcl = qubo.search_streams(40, 9)
    x_nb, e_nb = qubo._grasp_nb(S, diag, lam_n, u, alpha, rcl, tol)
    x_np, e_np = qubo._grasp_np(S, diag, lam_n, u, alpha, rcl, tol)
    np.testing.assert_array_equal(x_nb, x_np)
    assert e_nb == e_np
    streams = qubo.anneal_streams(80, 9, num_iters=3000, num_redo=5)
    np.testing.assert_array_equal(qubo._anneal_nb(S, diag, lam_n, *streams, tol),
                                  qubo._anneal_np(S, diag, lam_n, *streams, tol))
    moved, Qr = 0, _random_qubo(80, 3)  # dense: flip/swap minima that insertions can still improve
    Sr, diag_r, lam_r, tol_r = _prepared(Qr)
    for start in np.random.default_rng(0).integers(0, 2, (6, 80)):
        x0 = qubo.descend(Qr, start, backend="numpy").astype(np.int8)
        x_nb, x_np = x0.copy(), x0.copy()
        qubo._insert_nb(Sr, diag_r, lam_r, x_nb, tol_r, 3)
        qubo._insert_np(Sr, diag_r, lam_r, x_np, tol_r, 3)
        np.testing.assert_array_equal(x_nb, x_np)
        moved += qubo.energy(Qr, x_nb, 1e-3) < qubo.energy(Qr, x0, 1e-3) - 1e-12
    assert moved > 0  # the forced insertions improved at least one local minimum
    a = qubo.solve(Q, seed=4, backend="numba", num_starts=25, num_redo=3, num_iters=3000, return_energy=True)
    b = qubo.solve(Q, seed=4, backend="numpy", num_starts=25, num_redo=3, num_iters=3000, return_energy=True)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=needs_numba)])
def test_annealing_restarts_equal_the_plain_official_loop_then_descent(backend):
    """Each restart: the best state seen by the official Metropolis loop (full xᵀQx per proposal), then descent."""
    Q = _random_qubo(25, 4)
    Qa = np.triu(Q) * 2 - np.diag(np.diag(Q))  # non-symmetric, same quadratic form
    init, flips, thr = qubo.anneal_streams(25, 2, num_iters=1500, num_redo=4)
    S, diag, lam_n, tol = _prepared(Qa)
    got = (qubo._anneal_nb if backend == "numba" else qubo._anneal_np)(S, diag, lam_n, init, flips, thr, tol)
    for r in range(4):
        x = init[r].astype(np.int64)
        e = qubo.energy(Q, x, 1e-3)
        best_x, best_e = x.copy(), e
        for t in range(1500):
            y = x.copy()
            y[flips[t, r]] ^= 1
            ey = qubo.energy(Q, y, 1e-3)
            if ey - e < thr[t, r]:
                x, e = y, ey
                if e < best_e:
                    best_x, best_e = x.copy(), e
        np.testing.assert_array_equal(got[r].astype(bool), qubo.descend(Q, best_x, 1e-3, backend="numpy"))


def test_solve_rejects_bad_arguments():
    with pytest.raises(TypeError, match="unknown solver options"):
        qubo.solve(np.eye(3), num_itres=5)
    with pytest.raises(ValueError, match="square"):
        qubo.solve(np.ones((2, 3)))
    with pytest.raises(ValueError, match="nothing would be searched"):
        qubo.solve(np.eye(3), num_starts=0, num_redo=0)
    with pytest.raises(ValueError, match="unknown backend"):
        qubo.solve(np.eye(3), backend="cuda")
    assert qubo.solve(np.zeros((0, 0))).shape == (0,)


def _twice(v):
    return 2.0 * v


@needs_numba
def test_jit_caches_under_tmp_when_package_and_home_are_read_only(monkeypatch, tmp_path):
    """No writable __pycache__ nor user cache (simulated: only the NUMBA_CACHE_DIR locator, unset): temp dir."""
    import numba.core.config as cfg

    monkeypatch.setattr(cfg, "CACHE_LOCATOR_CLASSES", "UserProvidedCacheLocator")
    monkeypatch.setattr(cfg, "CACHE_DIR", "")
    monkeypatch.setattr(qubo.tempfile, "gettempdir", lambda: str(tmp_path))
    fn = qubo._jit(_twice)
    assert fn(1.5) == 3.0
    assert cfg.CACHE_DIR.startswith(str(tmp_path)) and any(p.suffix == ".nbi" for p in tmp_path.rglob("*"))


@needs_numba
def test_jit_without_any_cache_location_warns_once_and_compiles(monkeypatch):
    import numba.core.config as cfg

    monkeypatch.setattr(cfg, "CACHE_LOCATOR_CLASSES", "IPythonCacheLocator")  # never applies to a .py file
    monkeypatch.setattr(cfg, "CACHE_DIR", "")
    monkeypatch.setattr(qubo, "_UNCACHED_WARNED", False)
    with pytest.warns(RuntimeWarning, match="no writable cache directory"):
        fn = qubo._jit(_twice)
    assert fn(1.5) == 3.0 and fn._cache.__class__.__name__ == "NullCache" and cfg.CACHE_DIR == ""


def test_build_qubo_by_hand_and_streamed_blocks():
    # two views of 2x2 pixels, three masks
    v0 = torch.tensor([[[1.0, 0.5], [0.0, 0.0]], [[0.5, 0.5], [0.0, 0.25]], [[0.0, 0.0], [0.0, 0.0]]])
    v1 = torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [0.5, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])
    Q = qubo.build_qubo([v0, v1], penalty=1.0)
    norm = 4 * 2  # H·W · V
    area = np.array([3.5, 1.75, 1.0]) / norm
    o01 = (0.5 + 0.5 + 0.5) / norm
    o02 = 1.0 / norm
    o12 = 0.0
    want = np.array([[-area[0], o01, o02], [o01, -area[1], o12], [o02, o12, -area[2]]])
    np.testing.assert_allclose(Q, want, atol=1e-15)
    # penalty scales the overlap by (1+penalty)/2; cutoff zeroes small overlaps; padded size normalises
    Qp = qubo.build_qubo([v0, v1], penalty=3.0, cutoff=0.08, pad_hw=(2, 4))
    np.testing.assert_allclose(np.diag(Qp), -area / 2)
    assert Qp[0, 1] == pytest.approx(2 * o01 / 2) and Qp[0, 2] == 0.0  # normalised o02 = 1/16 <= cutoff < o01 = 1.5/16
    # bounded-memory blocks give the same sums as one big minimum
    g = torch.Generator().manual_seed(0)
    m = torch.rand(37, 300, generator=g)
    out = torch.zeros(37, 37, dtype=torch.float64)
    qubo._pairwise_min_sum(m, out, rows=8, pix=64)  # several row and pixel blocks
    want = torch.minimum(m[:, None].double(), m[None].double()).sum(-1)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-5)
    assert math.isclose(float(want[0, 0]), float(m[0].double().sum()), rel_tol=1e-12)
