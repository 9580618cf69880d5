"""The first-order benchmark of the mollifier paper: a forced linear (Langevin-type) equation in time.

Model::

    du/dt = u + lambda(t)

``u(t)`` is observed (with noise), ``lambda(t)`` is the unknown forcing to recover. The functions
below only do the algebra on the value and the time derivative of ``u``, so the same formula
serves autodiff (``u_t`` from ``torch.autograd.grad``), the mollifier layer (``u_t`` from a
differentiated kernel) and finite differences. They work on numpy arrays and torch tensors.
Time is in the units of the data (the rate ``1`` in front of ``u`` fixes the time scale).
"""
from __future__ import annotations

__all__ = ["langevin_residual", "langevin_rate"]


def langevin_residual(u, u_t, rate):
    """Residual ``u_t - u - rate`` of ``du/dt = u + lambda(t)``.

    Parameters
    ----------
    u : array or tensor
        The field ``u(t)``.
    u_t : array or tensor
        Its time derivative, same shape (per unit time).
    rate : array, tensor or float
        The forcing ``lambda(t)``, broadcastable to ``u``.

    Returns
    -------
    array or tensor
        Zero wherever the equation holds.

    Examples
    --------
    ``u = exp(t) - 1`` solves the equation with ``lambda = 1``:

    >>> import numpy as np
    >>> t = np.linspace(0, 1, 5)
    >>> np.allclose(langevin_residual(np.exp(t) - 1, np.exp(t), 1.0), 0)
    True
    """
    return u_t - u - rate


def langevin_rate(u, u_t):
    """Closed-form forcing ``lambda = u_t - u`` that zeroes :func:`langevin_residual`.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.linspace(0, 1, 5)
    >>> np.allclose(langevin_rate(np.exp(t) - 1, np.exp(t)), 1)
    True
    """
    return u_t - u
