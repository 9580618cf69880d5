"""The second-order benchmark of the mollifier paper: steady heat conduction with a variable conductivity.

Model (on a 2D domain, ``(y, x)``)::

    0 = lambda(y, x) lap u(y, x) + m(y, x)

``u`` is observed (with noise), the source ``m`` is known, and the coefficient ``lambda`` is the
unknown to recover. (This is the form used by the paper: ``lambda`` multiplies the Laplacian,
there is no ``grad lambda . grad u`` term.) The functions only do the algebra on ``lap u``, so
autodiff, mollifier and finite-difference Laplacians share one formula; they work on numpy
arrays and torch tensors. Lengths are in the units of the caller's Laplacian.
"""
from __future__ import annotations

__all__ = ["steady_heat_residual", "heat_rate"]


def steady_heat_residual(lap_u, rate, source):
    """Residual ``rate * lap_u + source`` of ``0 = lambda lap u + m``.

    Parameters
    ----------
    lap_u : array or tensor
        Laplacian of the temperature field ``u`` (per length squared).
    rate : array, tensor or float
        The coefficient ``lambda``, broadcastable to ``lap_u``.
    source : array, tensor or float
        The known source ``m``, broadcastable to ``lap_u``.

    Examples
    --------
    ``u = -(x^2 + y^2) / 4`` has ``lap u = -1``, steady with ``lambda = 2`` under ``m = 2``:

    >>> import numpy as np
    >>> np.allclose(steady_heat_residual(np.full((2, 2), -1.0), 2.0, 2.0), 0)
    True
    """
    return rate * lap_u + source


def heat_rate(lap_u, source):
    """Closed-form coefficient ``lambda = -m / lap u`` that zeroes :func:`steady_heat_residual`.

    Undefined where ``lap u`` is 0: choose a source that keeps ``lap u`` away from 0, or mask.

    Examples
    --------
    >>> import numpy as np
    >>> float(heat_rate(np.float64(-1.0), 2.0))
    2.0
    """
    return -source / lap_u
