"""One-dimensional mollifier kernels and their analytic derivatives, sampled on a grid.

Every kernel here is a 1D profile ``eta(s)`` on the reference support ``|s| < 1``; a kernel of
radius ``delta`` is ``eta_delta(x) = eta(x / delta) / (Z delta)`` with ``Z`` the integral of
``eta``. Multi-dimensional kernels are tensor products of these profiles (see
:mod:`chromflow.mollifier.layer`), so a mixed derivative ``d^a/dy^a d^b/dx^b`` is the outer
product of the 1D kernels of orders ``a`` and ``b``.

Profiles
--------
``"bump"``
    ``exp(-1 / (1 - s^2))``: C-infinity with compact support (the standard mollifier).
``"polynomial"``
    ``(1 - s^2)^p`` with ``p = 8``: C^(p-1), so its 4th derivative is still continuous.
``"gaussian"``
    ``exp(-s^2 / (2 sigma^2))`` with ``sigma = 1/4``, truncated at ``|s| = 1`` (4 sigma): smooth
    inside, a jump of 3e-4 of the peak at the edge.

Discretisation
--------------
``"analytic"`` samples the closed-form derivative ``eta^(k)`` at the grid points. It is accurate
only when the support holds many samples (the bump's 4th derivative needs ~150 samples across
its support before its moments are right to 1e-6). ``"difference"`` samples the normalised
kernel of order 0 and applies compact central differences to it (``[1, -2, 1]`` per pair of
orders, ``[1, 0, -1]/2`` for an odd remainder): its discrete moments are exact at any
resolution, so the kernel of order ``k`` maps ``x^k / k!`` to exactly 1 and lower powers to 0.
``"auto"`` uses ``"analytic"`` where the sampled analytic kernel's moments are right to
:data:`ANALYTIC_MOMENT_TOLERANCE` and ``"difference"`` otherwise. In practice that means
differences for the bump at every radius below ~80 cells (orders 1-2) and always for orders
3-4; the polynomial kernel switches to analytic sampling from ~15-40 cells.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numpy.polynomial import Polynomial
from numpy.polynomial import hermite_e
from scipy import integrate

from ..errors import GridError, InputError

__all__ = [
    "KERNELS",
    "DISCRETIZATIONS",
    "MAX_ORDER",
    "MIN_RADIUS_CELLS",
    "ANALYTIC_MOMENT_TOLERANCE",
    "profile",
    "profile_derivative",
    "halo",
    "kernel_1d",
    "kernel_moments",
]

KERNELS = ("bump", "polynomial", "gaussian")
DISCRETIZATIONS = ("auto", "analytic", "difference")
MAX_ORDER = 4
#: Below this radius (in grid cells) the kernel is too coarse to resolve: GridError.
MIN_RADIUS_CELLS = 2.0
POLYNOMIAL_POWER = 8
GAUSSIAN_SIGMA = 0.25

#: ``discretization="auto"`` keeps the analytic samples of a derivative kernel only when all
#: its moments (see :func:`kernel_moments`) are right to this tolerance; otherwise it differences
#: the sampled order-0 kernel, whose moments are exact.
ANALYTIC_MOMENT_TOLERANCE = 1e-8


# ---------------------------------------------------------------------------------------------
# closed-form profiles


@lru_cache(maxsize=None)
def _bump_numerators(max_order: int) -> tuple:
    """Polynomials p_k with d^k/ds^k exp(-1/q) = p_k(s) q(s)^(-2k) exp(-1/q), q = 1 - s^2.

    Differentiating p_k q^(-2k) e gives q^(-2k-2) e [p_k' q^2 + 4 k s q p_k - 2 s p_k]
    (using q' = -2 s and (-1/q)' = -2 s / q^2), hence the recursion below.
    """
    s = Polynomial([0.0, 1.0])
    q = Polynomial([1.0, 0.0, -1.0])
    polys = [Polynomial([1.0])]
    for k in range(max_order):
        p = polys[-1]
        polys.append(p.deriv() * q * q + 4 * k * s * q * p - 2 * s * p)
    return tuple(polys)


def profile_derivative(name: str, order: int, s) -> np.ndarray:
    """The ``order``-th derivative of the unnormalised 1D profile ``name`` at ``s``.

    Parameters
    ----------
    name : {"bump", "polynomial", "gaussian"}
        Kernel profile.
    order : int
        Derivative order, 0..4 (any order for "bump" and "polynomial").
    s : array_like
        Reference coordinate (support ``|s| < 1``); zero outside.

    Returns
    -------
    ndarray of float64

    Examples
    --------
    >>> bool(profile_derivative("bump", 0, 0.0) == np.exp(-1.0))
    True
    >>> float(profile_derivative("polynomial", 2, 0.0))  # d2/ds2 (1-s^2)^8 at 0 = -16
    -16.0
    """
    _check_kernel(name)
    s = np.asarray(s, dtype=np.float64)
    out = np.zeros_like(s)
    inside = np.abs(s) < 1.0
    si = s[inside]
    if name == "bump":
        q = 1.0 - si * si
        p = _bump_numerators(order)[order]
        out[inside] = p(si) * q ** (-2 * order) * np.exp(-1.0 / q)
    elif name == "polynomial":
        poly = Polynomial([1.0, 0.0, -1.0]) ** POLYNOMIAL_POWER
        out[inside] = poly.deriv(order)(si) if order else poly(si)
    else:  # gaussian: d^k exp(-t^2/2) = (-1)^k He_k(t) exp(-t^2/2), t = s / sigma
        t = si / GAUSSIAN_SIGMA
        coef = np.zeros(order + 1)
        coef[order] = 1.0
        out[inside] = (-1.0 / GAUSSIAN_SIGMA) ** order * hermite_e.hermeval(t, coef) * np.exp(-0.5 * t * t)
    return out


def profile(name: str, s) -> np.ndarray:
    """The unnormalised 1D profile ``name`` at ``s`` (zero for ``|s| >= 1``)."""
    return profile_derivative(name, 0, s)


@lru_cache(maxsize=None)
def profile_integral(name: str) -> float:
    """Integral of the profile over its support (the normalisation constant ``Z``)."""
    _check_kernel(name)
    value, _ = integrate.quad(lambda s: float(profile(name, s)), -1.0, 1.0, epsabs=1e-14, epsrel=1e-13)
    return value


# ---------------------------------------------------------------------------------------------
# sampled kernels


def _check_kernel(name: str) -> None:
    if name not in KERNELS:
        raise InputError(f"unknown mollifier kernel {name!r}; choose one of {', '.join(KERNELS)}")


def _check_order(order: int) -> None:
    if not isinstance(order, (int, np.integer)) or isinstance(order, bool) or not 0 <= order <= MAX_ORDER:
        raise InputError(f"derivative order must be an integer 0..{MAX_ORDER} per axis, got {order!r}")


def _check_radius(radius_cells: float) -> None:
    if not np.isfinite(radius_cells) or radius_cells < MIN_RADIUS_CELLS:
        raise GridError(
            f"mollifier radius of {radius_cells:g} grid cells is too coarse to resolve the kernel; "
            f"use at least {MIN_RADIUS_CELLS:g} cells (a finer grid or a larger radius)"
        )


def halo(radius_cells: float) -> int:
    """Half-width in cells of every sampled kernel of this radius (orders 0..4).

    All kernels of one radius share this half-width (zero-padded where shorter) so that every
    derivative order has the same "valid" output shape: ``n - 2 * halo(radius)`` per axis.

    Examples
    --------
    >>> halo(5.0), halo(5.5)
    (6, 7)
    """
    _check_radius(radius_cells)
    # samples with |j| < radius are inside the support; differences add up to 2 cells per side
    inner = int(math.ceil(radius_cells)) - 1
    return inner + (MAX_ORDER + 1) // 2


def _difference_stencil(order: int) -> np.ndarray:
    """Compact central difference of the given order, exact on the leading power."""
    stencil = np.array([1.0])
    for _ in range(order // 2):
        stencil = np.convolve(stencil, [1.0, -2.0, 1.0])
    if order % 2:
        stencil = np.convolve(stencil, [0.5, 0.0, -0.5])
    return stencil


def _moment_error(kern: np.ndarray, order: int) -> float:
    target = np.zeros(order + 1)
    target[order] = 1.0
    return float(np.max(np.abs(kernel_moments(kern, order) - target)))


@lru_cache(maxsize=256)
def _kernel_1d_cached(name: str, order: int, radius_cells: float, discretization: str) -> np.ndarray:
    width = halo(radius_cells)
    j = np.arange(-width, width + 1, dtype=np.float64)
    s = j / radius_cells
    base = profile(name, s)
    norm = base.sum()  # discrete normalisation: the order-0 kernel sums to exactly 1
    if discretization not in DISCRETIZATIONS:
        raise InputError(f"unknown discretization {discretization!r}; choose one of {', '.join(DISCRETIZATIONS)}")
    if order == 0:
        kern = base / norm
    else:
        kern = None
        if discretization in ("analytic", "auto"):
            kern = profile_derivative(name, order, s) / (norm * radius_cells**order)
            if discretization == "auto" and _moment_error(kern, order) > ANALYTIC_MOMENT_TOLERANCE:
                kern = None
        if kern is None:
            kern = np.convolve(base / norm, _difference_stencil(order), mode="same")
    kern.setflags(write=False)
    return kern


def kernel_1d(order: int, radius: float, spacing: float = 1.0, kernel: str = "bump",
              discretization: str = "auto") -> np.ndarray:
    """Sampled 1D kernel of the ``order``-th derivative of the mollifier, as a convolution kernel.

    The result ``K`` (length ``2 * halo + 1``, centre at index ``halo``) acts as
    ``(d^k u)(x_i) = sum_j K[j] g(x_{i - j + halo})``, i.e. a true convolution (flip it for
    cross-correlation routines such as :func:`torch.nn.functional.conv1d`).

    Parameters
    ----------
    order : int
        Derivative order 0..4.
    radius : float
        Kernel support radius ``delta`` in the units of ``spacing`` (grid cells when
        ``spacing`` is 1). Must be at least 2 grid cells.
    spacing : float
        Grid spacing (e.g. nm per cell). Derivatives come out per unit of ``spacing``:
        the kernel is scaled by ``spacing**-order``.
    kernel : {"bump", "polynomial", "gaussian"}
        Profile.
    discretization : {"auto", "analytic", "difference"}
        How the derivative kernel is sampled (see the module docstring).

    Returns
    -------
    ndarray of float64, shape (2 * halo(radius / spacing) + 1,)

    Examples
    --------
    Exact moments: the order-2 kernel maps x^2/2 to 1 and 1, x to 0.

    >>> k2 = kernel_1d(2, radius=4.0)
    >>> m = kernel_moments(k2)
    >>> np.allclose(m[:3], [0.0, 0.0, 1.0])
    True
    """
    _check_kernel(kernel)
    _check_order(order)
    spacing = float(spacing)
    if not spacing > 0:
        raise InputError(f"grid spacing must be positive, got {spacing!r}")
    radius_cells = float(radius) / spacing
    _check_radius(radius_cells)
    kern = _kernel_1d_cached(kernel, int(order), radius_cells, discretization)
    return kern / spacing**order if order else kern.copy()


def kernel_moments(kern: np.ndarray, max_power: int = MAX_ORDER) -> np.ndarray:
    """Responses of a centred convolution kernel to ``x^p / p!`` at ``x = 0``, p = 0..max_power.

    For the kernel of derivative order ``k`` the exact answer is 1 at ``p = k`` and 0 below.

    Examples
    --------
    >>> kernel_moments(np.array([0.5, 0.0, -0.5]), 2)  # central first difference
    array([0., 1., 0.])
    """
    kern = np.asarray(kern, dtype=np.float64)
    width = (kern.size - 1) // 2
    j = np.arange(-width, width + 1, dtype=np.float64)
    # (K * f)(0) = sum_j K[j] f(-j)
    return np.array([np.sum(kern * (-j) ** p) / math.factorial(p) for p in range(max_power + 1)])
