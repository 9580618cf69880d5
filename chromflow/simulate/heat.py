"""Forward problem of benchmark 2: steady heat ``0 = lambda(x, y) lap u + m(x, y)``, Dirichlet."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ..errors import InputError

__all__ = ["steady_heat", "add_noise"]


def steady_heat(rate, source, spacing: float = 1.0):
    """Solve ``lambda lap u + m = 0`` on a rectangle with ``u = 0`` on its boundary.

    Node-centred grid: ``rate`` and ``source`` are sampled on all ``(ny, nx)`` nodes, the outer
    ring of nodes is the boundary (``u = 0`` there), the interior uses the 5-point Laplacian
    (second order). One sparse LU solve.

    Parameters
    ----------
    rate : (ny, nx) ndarray
        Conductivity-like coefficient ``lambda``, > 0 on interior nodes.
    source : (ny, nx) ndarray
        Source ``m``.
    spacing : float
        Node spacing (same unit as the coordinates of the problem).

    Returns
    -------
    (ny, nx) ndarray
        ``u``, zero on the boundary ring.

    Examples
    --------
    >>> import numpy as np
    >>> n = 33; s = np.linspace(0, 1, n); y, x = np.meshgrid(s, s, indexing="ij")
    >>> u = steady_heat(np.ones((n, n)), 2 * np.pi**2 * np.sin(np.pi * x) * np.sin(np.pi * y), 1 / (n - 1))
    >>> bool(np.abs(u - np.sin(np.pi * x) * np.sin(np.pi * y)).max() < 2e-3)
    True
    """
    rate = np.asarray(rate, dtype=np.float64)
    source = np.asarray(source, dtype=np.float64)
    if rate.ndim != 2 or rate.shape != source.shape:
        raise InputError(f"rate and source must be 2D arrays of one shape, got {rate.shape} and {source.shape}")
    ny, nx = rate.shape
    if ny < 3 or nx < 3:
        raise InputError(f"grid {rate.shape} has no interior node")
    inner_rate = rate[1:-1, 1:-1]
    if not np.all(np.isfinite(inner_rate)) or np.any(inner_rate <= 0) or not np.all(np.isfinite(source[1:-1, 1:-1])):
        raise InputError("rate must be finite and > 0, and source finite, on interior nodes")
    my, mx = ny - 2, nx - 2

    def second_difference(m):
        return sp.diags([np.ones(m - 1), -2 * np.ones(m), np.ones(m - 1)], [-1, 0, 1])

    lap = (sp.kron(second_difference(my), sp.identity(mx)) + sp.kron(sp.identity(my), second_difference(mx)))
    lap = lap / float(spacing) ** 2
    rhs = -(source[1:-1, 1:-1] / inner_rate).ravel()
    u = np.zeros((ny, nx))
    u[1:-1, 1:-1] = spla.spsolve(lap.tocsc(), rhs).reshape(my, mx)
    return u


def add_noise(field, level: float, seed: int = 0):
    """Add Gaussian noise with standard deviation ``level * std(field)``.

    The noise level is relative to the field's own spread: ``level=0.05`` is "5 % noise". NaN
    entries stay NaN and are ignored when computing the standard deviation.

    Parameters
    ----------
    field : ndarray
        Clean data.
    level : float
        Noise standard deviation as a fraction of ``nanstd(field)``.
    seed : int
        Random seed.

    Returns
    -------
    ndarray
        ``field + noise`` (float64), same shape.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.linspace(0, 1, 10000)
    >>> round(float(np.std(add_noise(x, 0.1, seed=0) - x) / np.std(x)), 1)
    0.1
    """
    field = np.asarray(field, dtype=np.float64)
    if not level >= 0:
        raise InputError(f"noise level must be >= 0, got {level}")
    sd = float(np.nanstd(field)) if field.size else 0.0
    rng = np.random.default_rng(seed)
    return field + level * sd * rng.standard_normal(field.shape)
