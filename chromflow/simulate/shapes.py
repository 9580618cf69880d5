"""Nucleus masks and smooth random fields with known statistics (grid units: cells)."""
from __future__ import annotations

import numpy as np

from ..errors import InputError

__all__ = ["nucleus_mask", "smooth_random_field", "random_rate_map", "random_total"]


def _shape2(shape):
    shape = tuple(int(s) for s in np.atleast_1d(shape))
    if len(shape) == 1:
        shape = shape * 2
    if len(shape) != 2 or min(shape) < 1:
        raise InputError(f"shape must be (ny, nx) with positive sizes, got {shape}")
    return shape


def nucleus_mask(shape, radius_y, radius_x, center=None, angle: float = 0.0, roughness: float = 0.05,
                 seed: int = 0) -> np.ndarray:
    """An elliptical nucleus with a smooth random outline.

    The outline in polar angle ``t`` (in the ellipse's own frame) is ``r(t) = 1 + roughness * s(t)``
    times the ellipse, with ``s`` a random sum of low Fourier modes (2 to 7, amplitudes decaying as
    ``1/k``) scaled to unit maximum, so ``roughness`` is the largest relative bump.

    Parameters
    ----------
    shape : (ny, nx)
        Grid size in cells.
    radius_y, radius_x : float
        Semi-axes in cells (before rotation).
    center : (cy, cx), optional
        Centre in cells (default: the grid centre).
    angle : float
        Rotation of the ellipse, radians, counter-clockwise from the x axis.
    roughness : float
        Largest relative deviation of the outline from the ellipse (0 = exact ellipse).
    seed : int
        Seed of the outline's random modes.

    Returns
    -------
    (ny, nx) bool ndarray

    Examples
    --------
    >>> m = nucleus_mask((64, 64), 20, 25, roughness=0.0)
    >>> bool(abs(m.sum() / (3.14159 * 20 * 25) - 1) < 0.03)
    True
    """
    ny, nx = _shape2(shape)
    if radius_y <= 0 or radius_x <= 0:
        raise InputError(f"radii must be > 0 cells, got {radius_y}, {radius_x}")
    cy, cx = ((ny - 1) / 2, (nx - 1) / 2) if center is None else (float(center[0]), float(center[1]))
    y, x = np.mgrid[:ny, :nx].astype(np.float64)
    dy, dx = y - cy, x - cx
    # rotate into the ellipse frame (image y points down: rotate with -angle to keep CCW on screen)
    ca, sa = np.cos(angle), np.sin(angle)
    u = ca * dx - sa * dy
    v = sa * dx + ca * dy
    rho = np.hypot(u / radius_x, v / radius_y)
    theta = np.arctan2(v / radius_y, u / radius_x)
    rng = np.random.default_rng(seed)
    ks = np.arange(2, 8)
    amp = rng.standard_normal(ks.size) / ks
    phase = rng.uniform(0, 2 * np.pi, ks.size)
    probe = np.linspace(0, 2 * np.pi, 721)
    wiggle = lambda t: np.sum(amp[:, None] * np.cos(ks[:, None] * np.ravel(t)[None, :] + phase[:, None]), axis=0)
    scale = np.abs(wiggle(probe)).max()
    outline = 1.0 + roughness * wiggle(theta).reshape(theta.shape) / scale
    return rho <= outline


def smooth_random_field(shape, length: float, seed: int = 0) -> np.ndarray:
    """A smooth Gaussian random field with zero mean and unit variance (sample statistics).

    White noise filtered by a Gaussian of standard deviation ``length`` cells (periodic, by FFT),
    then shifted and scaled to sample mean 0 and sample standard deviation 1.

    Parameters
    ----------
    shape : (ny, nx)
        Grid size in cells.
    length : float
        Correlation length in cells (standard deviation of the smoothing Gaussian).
    seed : int
        Random seed.

    Returns
    -------
    (ny, nx) float64 ndarray

    Examples
    --------
    >>> g = smooth_random_field((64, 64), 6.0, seed=1)
    >>> abs(round(float(g.mean()), 12)), round(float(g.std()), 12)
    (0.0, 1.0)
    """
    ny, nx = _shape2(shape)
    if not length > 0:
        raise InputError(f"length must be > 0 cells, got {length}")
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((ny, nx))
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.rfftfreq(nx)[None, :]
    transfer = np.exp(-2 * (np.pi * length) ** 2 * (ky ** 2 + kx ** 2))
    g = np.fft.irfft2(np.fft.rfft2(noise) * transfer, s=(ny, nx))
    g -= g.mean()
    sd = g.std()
    if sd == 0:
        raise InputError(f"grid {shape} too small for a random field of length {length}")
    return g / sd


def random_rate_map(shape, mean: float = 1.0, amplitude: float = 0.5, length_cells: float | None = None,
                    seed: int = 0) -> np.ndarray:
    """A smooth, positive random rate map ``lambda = mean * exp(amplitude * g - amplitude^2 / 2)``.

    ``g`` is :func:`smooth_random_field`; the log-normal form keeps ``lambda > 0`` everywhere and
    makes ``mean`` its expected value (the sample mean is close to it on a large grid).

    Parameters
    ----------
    shape : (ny, nx)
        Grid size in cells.
    mean : float
        Expected value of ``lambda``.
    amplitude : float
        Standard deviation of ``log(lambda)``.
    length_cells : float, optional
        Correlation length in cells (default ``min(shape) / 10``).
    seed : int
        Random seed.

    Returns
    -------
    (ny, nx) float64 ndarray, all > 0

    Examples
    --------
    >>> lam = random_rate_map((64, 64), seed=2)
    >>> bool(lam.min() > 0)
    True
    """
    shape = _shape2(shape)
    if not mean > 0:
        raise InputError(f"mean rate must be > 0, got {mean}")
    length = min(shape) / 10 if length_cells is None else length_cells
    g = smooth_random_field(shape, length, seed)
    return mean * np.exp(amplitude * g - 0.5 * amplitude ** 2)


def random_total(shape, mean: float = 0.5, amplitude: float = 0.08, length_cells: float | None = None,
                 seed: int = 0, low: float = 0.05, high: float = 0.95) -> np.ndarray:
    """A smooth total-chromatin map ``phi_t = mean + amplitude * g`` clipped to ``[low, high]``.

    Parameters
    ----------
    shape : (ny, nx)
        Grid size in cells.
    mean : float
        Mean volume fraction of chromatin.
    amplitude : float
        Standard deviation of ``phi_t`` before clipping.
    length_cells : float, optional
        Correlation length in cells (default ``min(shape) / 8``).
    seed : int
        Random seed (use a different one from the rate map's for independent fields).
    low, high : float
        Clipping bounds (volume fractions).

    Returns
    -------
    (ny, nx) float64 ndarray

    Examples
    --------
    >>> t = random_total((64, 64), seed=3)
    >>> bool(0.05 <= t.min() and t.max() <= 0.95)
    True
    """
    shape = _shape2(shape)
    length = min(shape) / 8 if length_cells is None else length_cells
    return np.clip(mean + amplitude * smooth_random_field(shape, length, seed), low, high)
