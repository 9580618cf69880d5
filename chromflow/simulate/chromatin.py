"""Forward solver of the chromatin model on a masked 2D grid (finite volumes, float64).

This is deliberately a code path separate from the inverse solver: derivatives are finite
differences on the grid, not mollifier kernels or autograd, so inference tested against these
fields is tested against an independent discretisation.

Discretisation
--------------
Unknown: the order parameter ``phi_d`` on the cells of the nucleus mask. Total chromatin
``phi_t = phi_h + phi_e`` is given and does not evolve, so ``phi_h = (phi_t + phi_d) / 2`` and
``phi_e = (phi_t - phi_d) / 2``. The Laplacian ``L`` is the 5-point finite-volume operator
restricted to the mask: a face between a mask cell and an outside cell carries no flux, for
``phi_d`` and for ``mu_d`` alike (no-flux boundary on the mask outline). ``L`` is symmetric and its
columns sum to zero, so ``sum(L v) = 0`` for every ``v``: without the reaction the scheme conserves
the integral of ``phi_d`` to round-off. With ``mu = -phi_e + F(phi_h) - l^2 L phi_d`` the equation
on the mask cells reads::

    d phi_d / dt = G(phi_d) = L mu + (lambda - 1) phi_t - (lambda + 1) phi_d

Time stepping (semi-implicit, stabilised): everything linear in ``phi_d`` (including the 4th
order ``l^2 L L`` term and the reaction) is implicit, the bulk term ``F`` explicit, plus a
stabilising ``S (L phi_d^{n+1} - L phi_d^n)``; the matrix is factorised once per step size.
The steady state is reached by marching with a large step, then polished by Newton's method on
``G = 0`` (sparse Jacobian, systems solved by GMRES preconditioned with the march's LU), which
brings the steady residual down to round-off.

Units: lengths in micrometres (``spacing_um``, ``ChromatinModel.length_um``), time in units of
``1 / Gamma_ac``.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ..errors import InputError
from ..physics.chromatin import ChromatinModel, bulk_potential
from .._progress import check_cancel, report

__all__ = ["chromatin_steady_state", "simulate_chromatin", "chromatin_step", "chromatin_residual",
           "masked_laplacian"]


def _override(model: ChromatinModel, phi_max, length) -> ChromatinModel:
    if phi_max is None and length is None:
        return model
    return ChromatinModel(phi_max=model.phi_max if phi_max is None else float(phi_max),
                          length_um=model.length_um if length is None else float(length))


def masked_laplacian(mask, spacing_um: float = 1.0) -> sp.csr_matrix:
    """Finite-volume 5-point Laplacian on the cells of ``mask`` with no-flux faces to the outside.

    Parameters
    ----------
    mask : (ny, nx) bool ndarray
        Domain cells. Unknowns are ordered as ``np.flatnonzero(mask)``.
    spacing_um : float
        Cell edge length (any length unit; the operator carries ``1 / spacing**2``).

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(n, n)`` with ``n = mask.sum()``; symmetric, every row and column sums to zero.

    Examples
    --------
    >>> import numpy as np
    >>> L = masked_laplacian(np.ones((3, 3), bool))
    >>> np.allclose(L @ np.ones(9), 0)
    True
    """
    mask = np.asarray(mask, dtype=bool)
    ny, nx = mask.shape
    index = -np.ones(mask.shape, dtype=np.int64)
    index[mask] = np.arange(int(mask.sum()))
    rows, cols = [], []
    # one entry per interior face between two mask cells (right and down neighbours)
    for a, b in (((slice(None), slice(0, nx - 1)), (slice(None), slice(1, nx))),
                 ((slice(0, ny - 1), slice(None)), (slice(1, ny), slice(None)))):
        both = mask[a] & mask[b]
        rows.append(index[a][both])
        cols.append(index[b][both])
    i = np.concatenate(rows)
    j = np.concatenate(cols)
    n = int(mask.sum())
    off = sp.coo_matrix((np.ones(2 * i.size), (np.concatenate([i, j]), np.concatenate([j, i]))), shape=(n, n)).tocsr()
    degree = np.asarray(off.sum(axis=1)).ravel()
    return ((off - sp.diags(degree)) / float(spacing_um) ** 2).tocsr()


class _Problem:
    """The discrete problem on the mask cells: operator, coefficients and residual."""

    def __init__(self, rate, total, mask, spacing_um, model):
        rate = np.asarray(rate, dtype=np.float64)
        if rate.ndim != 2:
            raise InputError(f"rate must be a 2D (y, x) array, got shape {rate.shape}")
        if mask is None:
            mask = np.ones(rate.shape, dtype=bool)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != rate.shape:
            raise InputError(f"mask shape {mask.shape} differs from rate shape {rate.shape}")
        if not mask.any():
            raise InputError("mask is empty: no cell to solve on")
        if total is None:
            total = np.full(rate.shape, 0.5)
        total = np.broadcast_to(np.asarray(total, dtype=np.float64), rate.shape)
        lam, tot = rate[mask], total[mask]
        if not np.all(np.isfinite(lam)) or np.any(lam <= 0):
            raise InputError("rate must be finite and > 0 on every mask cell")
        if not np.all(np.isfinite(tot)) or np.any(tot < 0) or np.any(tot > 1):
            raise InputError("total chromatin must be finite and within [0, 1] on every mask cell")
        spacing_um = float(spacing_um)
        if not np.isfinite(spacing_um) or spacing_um <= 0:
            raise InputError(f"spacing_um must be a positive number of micrometres, got {spacing_um}")
        self.mask, self.lam, self.tot, self.model = mask, lam, tot, model
        self.spacing_um = spacing_um
        self.L = masked_laplacian(mask, spacing_um)
        self.n = lam.size
        self.l2 = model.length_um ** 2
        self.identity = sp.identity(self.n, format="csr")
        self.LL = (self.L @ self.L).tocsr()

    def phi_h(self, d):
        return 0.5 * (self.tot + d)

    def mu(self, d):
        # mu_d = -phi_e + F(phi_h) - l^2 lap phi_d
        return -0.5 * (self.tot - d) + bulk_potential(self.phi_h(d), self.model.phi_max) - self.l2 * (self.L @ d)

    def reaction(self, d, on=True):
        # 2 (lambda phi_e - phi_h) = (lambda - 1) phi_t - (lambda + 1) phi_d
        if not on:
            return np.zeros_like(d)
        return (self.lam - 1.0) * self.tot - (self.lam + 1.0) * d

    def rhs(self, d, reaction=True):
        return self.L @ self.mu(d) + self.reaction(d, reaction)

    def roundoff_floor(self, d):
        # The residual cannot be evaluated more accurately than the rounding of its largest terms:
        # |L mu| and |l^2 L L d| carry 1/h^2 and 1/h^4, so on fine grids the floor exceeds 1e-10.
        eps = np.finfo(np.float64).eps
        norm_L = float(abs(self.L).sum(axis=1).max())
        norm_LL = float(abs(self.LL).sum(axis=1).max())
        mu_bulk = np.abs(-0.5 * (self.tot - d) + bulk_potential(self.phi_h(d), self.model.phi_max)).max()
        return 2 * eps * (norm_L * float(mu_bulk) + self.l2 * norm_LL * float(np.abs(d).max()))

    def jacobian(self, d, reaction=True):
        # dG/dd = L diag(1/2 + F'(phi_h)/2) - l^2 L L - diag(lambda + 1)
        c = 0.5 + 0.5 * bulk_potential(self.phi_h(d), self.model.phi_max, derivative=1)
        J = self.L @ sp.diags(c) - self.l2 * self.LL
        if reaction:
            J = J - sp.diags(self.lam + 1.0)
        return J.tocsc()

    def stabilisation(self, d):
        # Splitting c = 1/2 + F'/2 into implicit (1/2 + S) and explicit (F'/2 - S): for large steps
        # the error of a mode shrinks by about |S - F'/2| / (1/2 + S), smallest when S sits in the
        # middle of the range of F'/2 over the phi_h values the run visits. Never below 0.
        h = self.phi_h(d)
        lo, hi = min(float(h.min()), 0.0), max(float(h.max()), float(self.tot.max()))
        half_slope = 0.5 * bulk_potential(np.linspace(lo, hi, 257), self.model.phi_max, 1)
        return max(0.0, 0.5 * float(half_slope.min() + half_slope.max()))

    def step_matrix(self, dt, S, reaction=True):
        # (I/dt) d' - L((1/2 + S) d' - l^2 L d') + (lambda + 1) d'  [reaction implicit]
        A = self.identity / dt - (0.5 + S) * self.L + self.l2 * self.LL
        if reaction:
            A = A + sp.diags(self.lam + 1.0)
        # A is symmetric positive definite (-L and L L are positive semi-definite): a symmetric
        # fill-reducing ordering without pivoting halves the factorisation time and fill
        return spla.splu(A.tocsc(), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                         options={"SymmetricMode": True})

    def step(self, lu, d, dt, S, reaction=True):
        # explicit part: L(F(phi_h) - phi_t/2 - S d) and the phi_t source of the reaction
        explicit = self.L @ (bulk_potential(self.phi_h(d), self.model.phi_max) - 0.5 * self.tot - S * d)
        if reaction:
            explicit = explicit + (self.lam - 1.0) * self.tot
        return lu.solve(d / dt + explicit)

    def initial(self, phi_d0):
        if phi_d0 is None:
            # local reaction equilibrium: phi_h / phi_e = lambda in every cell
            return self.tot * (self.lam - 1.0) / (self.lam + 1.0)
        d0 = np.broadcast_to(np.asarray(phi_d0, dtype=np.float64), self.mask.shape)[self.mask]
        if not np.all(np.isfinite(d0)):
            raise InputError("phi_d0 must be finite on every mask cell")
        return d0.copy()

    def to_fields(self, d):
        phi_h = np.zeros(self.mask.shape)
        phi_e = np.zeros(self.mask.shape)
        phi_h[self.mask] = 0.5 * (self.tot + d)
        phi_e[self.mask] = 0.5 * (self.tot - d)
        return phi_h, phi_e


def chromatin_residual(phi_h, phi_e, rate, mask=None, spacing_um: float = 0.05,
                       model: ChromatinModel = ChromatinModel(), reaction: bool = True):
    """Right-hand side ``d phi_d / dt`` of the discrete model (zero at a steady state).

    Parameters
    ----------
    phi_h, phi_e : (ny, nx) ndarray
        Heterochromatin and euchromatin volume fractions.
    rate : (ny, nx) ndarray
        ``lambda = Gamma_me / Gamma_ac`` (> 0 on the mask).
    mask : (ny, nx) bool ndarray, optional
        Domain (default: the whole box); no-flux faces to the outside.
    spacing_um : float
        Cell size in micrometres.
    model : ChromatinModel
        ``phi_max`` and ``l``.
    reaction : bool
        Include ``2 (lambda phi_e - phi_h)``.

    Returns
    -------
    ndarray
        ``(ny, nx)``, in units of ``Gamma_ac``; 0 outside the mask.

    Examples
    --------
    >>> import numpy as np
    >>> r = chromatin_residual(np.full((4, 4), 0.3), np.full((4, 4), 0.2), np.full((4, 4), 1.5))
    >>> float(np.abs(r).max()) < 1e-12
    True
    """
    phi_h = np.asarray(phi_h, dtype=np.float64)
    phi_e = np.asarray(phi_e, dtype=np.float64)
    prob = _Problem(rate, phi_h + phi_e, mask, spacing_um, model)
    d = (phi_h - phi_e)[prob.mask]
    out = np.zeros(prob.mask.shape)
    out[prob.mask] = prob.rhs(d, reaction)
    return out


def chromatin_step(phi_d, rate, total=None, mask=None, spacing_um: float = 0.05,
                   model: ChromatinModel = ChromatinModel(), dt: float = 0.01, n_steps: int = 1,
                   reaction: bool = True):
    """Advance ``phi_d`` by ``n_steps`` semi-implicit steps of size ``dt``.

    Parameters
    ----------
    phi_d : (ny, nx) ndarray
        Order parameter ``phi_h - phi_e`` now.
    rate, total, mask, spacing_um, model
        As in :func:`chromatin_steady_state`.
    dt : float
        Time step in units of ``1 / Gamma_ac``.
    n_steps : int
        Number of steps.
    reaction : bool
        False switches the reaction off (pure conserved Cahn-Hilliard dynamics).

    Returns
    -------
    ndarray
        ``phi_d`` after ``n_steps * dt`` (0 outside the mask).

    Examples
    --------
    >>> import numpy as np
    >>> d = chromatin_step(np.zeros((8, 8)), np.full((8, 8), 2.0), dt=0.1, n_steps=3)
    >>> bool(d.mean() > 0)   # lambda > 1 makes heterochromatin
    True
    """
    prob = _Problem(rate, total, mask, spacing_um, model)
    d = prob.initial(phi_d)
    S = prob.stabilisation(d)
    lu = prob.step_matrix(dt, S, reaction)
    for _ in range(int(n_steps)):
        d = prob.step(lu, d, dt, S, reaction)
    out = np.zeros(prob.mask.shape)
    out[prob.mask] = d
    return out


def simulate_chromatin(rate, total=None, mask=None, spacing_um: float = 0.05,
                       model: ChromatinModel = ChromatinModel(), phi_d0=None, t_end: float = 1.0,
                       dt: float = 0.01, reaction: bool = True, n_saves: int = 0,
                       return_info: bool = False, progress=None, cancel=None):
    """Time-dependent run of the chromatin model from ``phi_d0`` up to ``t_end``.

    Parameters
    ----------
    rate : (ny, nx) ndarray
        ``lambda(y, x)``, > 0 on the mask (values outside the mask are ignored).
    total : (ny, nx) ndarray or float, optional
        Total chromatin ``phi_t = phi_h + phi_e`` (default 0.5); constant in time.
    mask : (ny, nx) bool ndarray, optional
        Nucleus (default: the whole box); no-flux boundary on its outline.
    spacing_um : float
        Cell size in micrometres.
    model : ChromatinModel
        ``phi_max`` and ``l`` (um).
    phi_d0 : (ny, nx) ndarray or float, optional
        Initial ``phi_h - phi_e`` (default: the local reaction equilibrium).
    t_end, dt : float
        End time and step (units of ``1 / Gamma_ac``); the last step is shortened to land on
        ``t_end``.
    reaction : bool
        False switches the reaction off: then ``sum(phi_d)`` over the mask is conserved.
    n_saves : int
        Number of evenly spaced snapshots of ``phi_d`` kept in ``info["snapshots"]``.
    return_info : bool
        Also return a dict: ``times``, ``integral`` (of ``phi_d`` over the mask, um^2, per step),
        ``snapshots``, ``snapshot_times``, ``steps``.
    progress, cancel
        The chromflow progress/cancel protocol.

    Returns
    -------
    phi_h, phi_e : ndarray
        Fields at ``t_end`` (0 outside the mask); plus ``info`` when asked.

    Examples
    --------
    >>> import numpy as np
    >>> h, e = simulate_chromatin(np.full((8, 8), 3.0), t_end=20.0, dt=0.5)
    >>> round(float(h[0, 0] / e[0, 0]), 6)   # relaxes to phi_h / phi_e = lambda
    3.0
    """
    prob = _Problem(rate, total, mask, spacing_um, model)
    d = prob.initial(phi_d0)
    t_end, dt = float(t_end), float(dt)
    if not (t_end >= 0 and dt > 0):
        raise InputError(f"need t_end >= 0 and dt > 0, got t_end={t_end}, dt={dt}")
    n_full = int(np.floor(t_end / dt + 1e-12))
    last = t_end - n_full * dt
    steps = [dt] * n_full + ([last] if last > 1e-12 * max(dt, 1.0) else [])
    S = prob.stabilisation(d)
    cell_area = prob.spacing_um ** 2
    times, integral = [0.0], [float(d.sum() * cell_area)]
    save_at = set(np.linspace(0, len(steps), n_saves).round().astype(int).tolist()) if n_saves else set()
    snapshots, snapshot_times = [], []
    if 0 in save_at:
        snapshots.append(d.copy()); snapshot_times.append(0.0)
    lu_cache = {}
    t = 0.0
    for k, h in enumerate(steps, start=1):
        check_cancel(cancel, "chromatin simulation")
        if h not in lu_cache:
            lu_cache[h] = prob.step_matrix(h, S, reaction)
        d = prob.step(lu_cache[h], d, h, S, reaction)
        t += h
        times.append(t)
        integral.append(float(d.sum() * cell_area))
        if k in save_at:
            snapshots.append(d.copy()); snapshot_times.append(t)
        report(progress, k, len(steps), "chromatin simulation")
    phi_h, phi_e = prob.to_fields(d)
    if not return_info:
        return phi_h, phi_e
    full = []
    for s in snapshots:
        f = np.zeros(prob.mask.shape)
        f[prob.mask] = s
        full.append(f)
    info = {"times": np.asarray(times), "integral": np.asarray(integral), "steps": len(steps),
            "snapshots": full, "snapshot_times": snapshot_times}
    return phi_h, phi_e, info


def chromatin_steady_state(rate, total=None, mask=None, spacing_um: float = 0.05,
                           model: ChromatinModel = ChromatinModel(), phi_d0=None, tol: float = 1e-10,
                           max_steps: int = 500, dt: float = 10.0, newton: bool = True,
                           max_newton: int = 20, return_info: bool = False, progress=None, cancel=None,
                           phi_max: float | None = None, length: float | None = None):
    """Steady state of the chromatin model for a given rate map ``lambda(y, x)``.

    Solves ``lap mu_d + 2 (lambda phi_e - phi_h) = 0`` with
    ``mu_d = -phi_e + F(phi_h) - l^2 lap phi_d`` on the nucleus mask, no-flux boundaries, total
    chromatin ``phi_h + phi_e`` fixed. Marches the semi-implicit scheme with a large step (one
    sparse LU), then polishes with Newton's method.

    Parameters
    ----------
    rate : (ny, nx) ndarray
        ``lambda = Gamma_me / Gamma_ac``; finite and > 0 on the mask; ignored outside.
    total : (ny, nx) ndarray or float, optional
        Total chromatin ``phi_t`` in [0, 1] on the mask (default 0.5); ignored outside.
    mask : (ny, nx) bool ndarray, optional
        Nucleus domain (default: the whole box).
    spacing_um : float
        Grid cell size in micrometres (default 0.05 um = 50 nm).
    model : ChromatinModel
        ``phi_max`` and interface length ``l`` (um).
    phi_d0 : (ny, nx) ndarray, optional
        Start for ``phi_h - phi_e`` (default: local reaction equilibrium
        ``phi_t (lambda - 1) / (lambda + 1)``).
    tol : float
        Target for the max-norm of the steady residual (units of ``Gamma_ac``).
    max_steps : int
        Most pseudo-time steps of the march.
    dt : float
        Pseudo-time step of the march.
    newton : bool
        Polish with Newton's method (sparse Jacobian) after the march.
    max_newton : int
        Most Newton iterations.
    return_info : bool
        Also return a dict with ``steps``, ``time``, ``newton_steps``, ``residual`` (final max-norm),
        ``history`` (max-norm residual after every step), ``roundoff_floor`` (the accuracy to which
        the residual can be evaluated in float64, grows like ``h^-4``) and ``converged``
        (``residual <= max(tol, roundoff_floor)``).
    progress, cancel
        The chromflow progress/cancel protocol.
    phi_max, length : float, optional
        Shortcuts that override ``model.phi_max`` and ``model.length_um`` (um).

    Returns
    -------
    phi_h, phi_e : ndarray
        Steady fields, ``(ny, nx)``, 0 outside the mask; plus ``info`` when asked.

    Examples
    --------
    Uniform rate and total chromatin give the uniform state ``phi_h / phi_e = lambda``:

    >>> import numpy as np
    >>> h, e = chromatin_steady_state(np.full((16, 16), 1.5), total=0.5)
    >>> round(float(h[3, 3]), 12), round(float(e[3, 3]), 12)
    (0.3, 0.2)
    """
    model = _override(model, phi_max, length)
    prob = _Problem(rate, total, mask, spacing_um, model)
    d = prob.initial(phi_d0)
    history = [float(np.abs(prob.rhs(d)).max())]
    steps, time, lu = 0, 0.0, None
    # the march: the bulk term is explicit, so it is a contraction towards the steady state
    if history[-1] > tol and max_steps > 0:
        S = prob.stabilisation(d)
        lu = prob.step_matrix(dt, S)
        switch = tol if not newton else max(tol, 1e-6)
        while steps < max_steps and history[-1] > switch:
            check_cancel(cancel, "chromatin steady state")
            d = prob.step(lu, d, dt, S)
            steps += 1
            time += dt
            history.append(float(np.abs(prob.rhs(d)).max()))
            if not np.isfinite(history[-1]):
                break
            report(progress, steps, max_steps, "chromatin steady state: march")
    newton_steps = 0
    if newton and history[-1] > tol:
        if lu is None:
            S = prob.stabilisation(d)
            lu = prob.step_matrix(dt, S)
        # the march matrix A is -J up to the small explicit part, so -A^{-1} preconditions the
        # Jacobian well: GMRES needs a few iterations, and no second factorisation is needed
        precondition = spla.LinearOperator((prob.n, prob.n), matvec=lambda v: -lu.solve(np.ravel(v)))
        while newton_steps < max_newton and history[-1] > tol:
            check_cancel(cancel, "chromatin steady state")
            G = prob.rhs(d)
            J = prob.jacobian(d)
            delta, failed = spla.gmres(J, -G, rtol=1e-10, atol=0.0, restart=40, maxiter=20, M=precondition)
            if failed:
                delta = spla.spsolve(J, -G)
            d_new = d + delta
            r_new = float(np.abs(prob.rhs(d_new)).max())
            newton_steps += 1
            if not np.isfinite(r_new) or r_new >= history[-1]:
                break  # round-off floor reached (or no progress): keep the best iterate
            d = d_new
            history.append(r_new)
    phi_h, phi_e = prob.to_fields(d)
    if not return_info:
        return phi_h, phi_e
    floor = prob.roundoff_floor(d)
    info = {"steps": steps, "time": time, "newton_steps": newton_steps, "residual": history[-1],
            "roundoff_floor": floor, "history": np.asarray(history),
            "converged": bool(history[-1] <= max(tol, floor))}
    return phi_h, phi_e, info
