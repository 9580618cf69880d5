"""Forward problem of benchmark 1: the linear Langevin-type equation ``u_t = u + lambda(t)``."""
from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp

from ..errors import InputError

__all__ = ["langevin_solution", "langevin_sine_solution", "sine_rate"]


def sine_rate(a: float = 1.0, b: float = 0.5, omega: float = 2 * np.pi):
    """The rate ``lambda(t) = a + b sin(omega t)`` as a function (vectorised).

    Examples
    --------
    >>> float(sine_rate(1.0, 2.0, 0.0)(3.0))
    1.0
    """
    return lambda t: a + b * np.sin(omega * np.asarray(t, dtype=np.float64))


def langevin_sine_solution(t, a: float = 1.0, b: float = 0.5, omega: float = 2 * np.pi, u0: float = 0.0):
    """Closed-form solution of ``u' = u + a + b sin(omega t)``, ``u(0) = u0``.

    From ``u(t) = e^t (u0 + int_0^t e^{-s} lambda(s) ds)``::

        u = e^t u0 + a (e^t - 1) + b (omega e^t - sin(omega t) - omega cos(omega t)) / (1 + omega^2)

    Parameters
    ----------
    t : array_like
        Times (units of the equation's rate).
    a, b, omega : float
        Rate ``lambda(t) = a + b sin(omega t)``.
    u0 : float
        Initial value.

    Returns
    -------
    ndarray
        ``u(t)``, float64.

    Examples
    --------
    >>> float(langevin_sine_solution(0.0, u0=2.0))
    2.0
    """
    t = np.asarray(t, dtype=np.float64)
    et = np.exp(t)
    return et * u0 + a * (et - 1) + b * (omega * et - np.sin(omega * t) - omega * np.cos(omega * t)) / (1 + omega ** 2)


def langevin_solution(t, rate, u0: float = 0.0, rtol: float = 1e-12, atol: float = 1e-12):
    """Solve ``u' = u + lambda(t)``, ``u(t[0]) = u0`` at the times ``t``.

    Parameters
    ----------
    t : (n,) array_like
        Increasing times; the initial value is given at ``t[0]``.
    rate : callable or (n,) array_like
        ``lambda(t)``: a function of time (integrated adaptively, DOP853), or samples at ``t``
        (then ``lambda`` is taken piecewise linear between samples and the solution is exact for
        that interpolant).
    u0 : float
        Initial value.
    rtol, atol : float
        Tolerances of the adaptive integrator (callable ``rate`` only).

    Returns
    -------
    (n,) ndarray
        ``u`` at ``t``.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.linspace(0, 1, 5)
    >>> np.allclose(langevin_solution(t, 1.0 + 0 * t), np.exp(t) - 1)
    True
    """
    t = np.asarray(t, dtype=np.float64)
    if t.ndim != 1 or t.size < 1 or np.any(np.diff(t) <= 0):
        raise InputError("t must be a 1D array of increasing times")
    if callable(rate):
        if t.size == 1:
            return np.array([float(u0)])
        sol = solve_ivp(lambda s, u: u + rate(s), (t[0], t[-1]), [float(u0)], method="DOP853", t_eval=t,
                        rtol=rtol, atol=atol)
        return sol.y[0]
    lam = np.asarray(rate, dtype=np.float64)
    if lam.shape != t.shape:
        raise InputError(f"rate samples shape {lam.shape} differs from t shape {t.shape}")
    # exact step for lambda linear on [t0, t1]: with h = t1 - t0, s = slope,
    # u1 = e^h u0 + lam0 (e^h - 1) + s (e^h - 1 - h)
    u = np.empty_like(t)
    u[0] = u0
    h = np.diff(t)
    eh = np.exp(h)
    slope = np.diff(lam) / h
    em1 = np.expm1(h)
    for k in range(h.size):
        u[k + 1] = eh[k] * u[k] + lam[k] * em1[k] + slope[k] * (em1[k] - h[k])
    return u
