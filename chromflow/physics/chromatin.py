"""The chromatin phase-separation + epigenetic-reaction model (Kant et al., Nat. Commun. 2024).

Volume fractions: heterochromatin ``phi_h``, euchromatin ``phi_e``, nucleoplasm
``phi_w = 1 - phi_h - phi_e``; order parameter ``phi_d = phi_h - phi_e``.

Chemical potential::

    mu_d = -phi_e + F(phi_h) - l^2 lap(phi_d),   F(p) = p (phi_max - p)(phi_max - 2 p)

Dynamics (time in units of the inverse acetylation rate)::

    d phi_d / dt = lap(mu_d) + 2 (lambda phi_e - phi_h)

with ``lambda = Gamma_me / Gamma_ac`` the epigenetic rate ratio. Lengths are in micrometres
(the model's natural unit: ``l = 0.03`` um). Fixed cells are steady states, so inference uses
``R = lap(mu_d) + 2 (lambda phi_e - phi_h) = 0``. Expanding the Laplacian of the nonlinear
term by the chain rule keeps every derivative on the fields themselves::

    lap F(h) = F'(h) lap h + F''(h) |grad h|^2

so the residual needs, for each of ``h`` and ``e``: value, gradient, Laplacian and biharmonic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ["ChromatinModel", "FieldDerivatives", "bulk_potential", "chemical_potential_laplacian",
           "steady_state_residual", "rate_from_fields"]


@dataclass(frozen=True)
class ChromatinModel:
    """Parameters of the chromatin model.

    Parameters
    ----------
    phi_max : float
        Maximal heterochromatin packing fraction in the bulk free energy (dimensionless).
    length_um : float
        Interface width ``l`` in micrometres.

    Examples
    --------
    >>> ChromatinModel().length_um
    0.03
    """

    phi_max: float = 0.7
    length_um: float = 0.03


class FieldDerivatives(NamedTuple):
    """A field and the derivatives the steady-state residual needs (lengths in um).

    ``value``, ``dy``, ``dx``, ``lap`` (Laplacian) and ``bilap`` (biharmonic), each an array or
    tensor of the same shape.
    """

    value: Any
    dy: Any
    dx: Any
    lap: Any
    bilap: Any


def bulk_potential(phi_h, phi_max: float = 0.7, derivative: int = 0):
    """The bulk term ``F(phi_h) = phi_h (phi_max - phi_h)(phi_max - 2 phi_h)`` or its derivatives.

    Parameters
    ----------
    phi_h : array or tensor
        Heterochromatin volume fraction.
    phi_max : float
        Packing limit.
    derivative : {0, 1, 2}
        Which derivative of ``F`` with respect to ``phi_h``.

    Examples
    --------
    >>> round(float(bulk_potential(0.35, 0.7)), 12)  # F vanishes at phi_max / 2
    0.0
    """
    p, m = phi_h, phi_max
    if derivative == 0:
        return p * (m - p) * (m - 2 * p)
    if derivative == 1:  # m^2 - 6 m p + 6 p^2
        return m * m - 6 * m * p + 6 * p * p
    if derivative == 2:
        return -6 * m + 12 * p
    raise ValueError(f"derivative must be 0, 1 or 2, got {derivative}")


def chemical_potential_laplacian(h: FieldDerivatives, e: FieldDerivatives, model: ChromatinModel = ChromatinModel()):
    """``lap(mu_d)`` from the derivatives of ``phi_h`` (``h``) and ``phi_e`` (``e``), lengths in um."""
    grad_h2 = h.dy * h.dy + h.dx * h.dx
    lap_bulk = bulk_potential(h.value, model.phi_max, 1) * h.lap + bulk_potential(h.value, model.phi_max, 2) * grad_h2
    return -e.lap + lap_bulk - model.length_um ** 2 * (h.bilap - e.bilap)


def steady_state_residual(h: FieldDerivatives, e: FieldDerivatives, rate, model: ChromatinModel = ChromatinModel()):
    """Steady-state residual ``lap(mu_d) + 2 (rate phi_e - phi_h)`` (per unit time).

    Examples
    --------
    Uniform fields are steady exactly when ``rate = phi_h / phi_e``:

    >>> import numpy as np
    >>> z = np.zeros(3)
    >>> h = FieldDerivatives(np.full(3, 0.3), z, z, z, z)
    >>> e = FieldDerivatives(np.full(3, 0.2), z, z, z, z)
    >>> np.allclose(steady_state_residual(h, e, 1.5), 0)
    True
    """
    return chemical_potential_laplacian(h, e, model) + 2 * (rate * e.value - h.value)


def rate_from_fields(h: FieldDerivatives, e: FieldDerivatives, model: ChromatinModel = ChromatinModel()):
    """Closed-form rate ``lambda = (phi_h - lap(mu_d) / 2) / phi_e`` that zeroes the residual.

    Undefined where ``phi_e`` is 0: the caller masks those points.
    """
    return (h.value - 0.5 * chemical_potential_laplacian(h, e, model)) / e.value
