"""The noise of chromatin fields, estimated from the data, and data fission into two halves.

Noise model
-----------
Fields made from localization counts are Poisson-like: the variance of a cell grows with its
value (times an over-dispersion from blinking); fields from images carry a part proportional
to the value's square as well. :func:`estimate_noise` fits, per channel,

    var(phi) = a * phi + b * phi^2          (a, b >= 0)

to the squared output of a 3x3 high-pass filter (the product of two 1D second differences,
blind to planes and to the slow variation of the fields), over cells whose 3x3 neighbourhood is
inside the fitted region. It needs no knowledge of how the fields were made, so TIFF inputs,
localization tables and simulated fields are treated alike. It assumes the noise is
independent between grid cells: fields smoothed before inference (``FieldSettings.smoothing``)
have correlated noise and their variance is under-estimated.

Data fission
------------
With ``Z ~ N(0, var)`` drawn independently of the data ``X = truth + noise``, the two
pseudo-data sets ``X + Z`` and ``X - Z`` have independent noises (for Gaussian noise exactly;
their covariance is ``var - var = 0``), each of twice the variance: they behave like two
independent halves of the localizations. Fitting both gives a quality score (how well the
map reproduces between halves) and the noise part of the uncertainty without re-reading the
localizations (Leiner, Duan, Wasserman & Ramdas, "Data fission", JASA 2023).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize

__all__ = ["NoiseModel", "estimate_noise", "fission", "local_level"]

# the high-pass filter and the sum of its squared weights (variance gain for white noise)
_HIGH_PASS = np.outer([1.0, -2.0, 1.0], [1.0, -2.0, 1.0])
_GAIN = float((_HIGH_PASS ** 2).sum())


@dataclass
class NoiseModel:
    """``var(phi) = a * phi + b * phi^2`` for one channel, with what it was estimated from.

    Attributes
    ----------
    a : float
        Poisson-like coefficient (volume-fraction units).
    b : float
        Coefficient of the squared value (relative noise ``sqrt(b)``).
    n_cells : int
        Cells used for the estimate.
    """

    a: float
    b: float
    n_cells: int

    def variance(self, phi) -> np.ndarray:
        """Per-cell variance for field values ``phi`` (clipped at 0)."""
        p = np.clip(np.asarray(phi, dtype=np.float64), 0.0, None)
        return self.a * p + self.b * p * p

    def as_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "n_cells": self.n_cells}


def estimate_noise(field, region, smooth=None) -> NoiseModel:
    """Fit the noise model of one field from its own high-frequency content.

    Parameters
    ----------
    field : (ny, nx) ndarray
        One channel (``phi_h`` or ``phi_e``).
    region : (ny, nx) bool ndarray
        Cells with trustworthy data (the nucleus without its edge band).
    smooth : (ny, nx) ndarray, optional
        The noise-free level the variance depends on; default a 5x5 mean of ``field``.

    Returns
    -------
    NoiseModel

    Raises
    ------
    ValueError
        Fewer than 20 cells have their 3x3 neighbourhood inside ``region``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> truth = np.full((80, 80), 0.3)
    >>> noisy = truth + np.sqrt(0.01 * truth) * rng.standard_normal(truth.shape)
    >>> nm = estimate_noise(noisy, np.ones((80, 80), bool))
    >>> bool(abs(nm.variance(0.3) / 0.003 - 1) < 0.1)
    True
    """
    f = np.asarray(field, dtype=np.float64)
    region = np.asarray(region, bool)
    usable = ndimage.binary_erosion(region, structure=np.ones((3, 3), bool))
    n = int(usable.sum())
    if n < 20:
        raise ValueError(f"only {n} cells have their 3x3 neighbourhood inside the nucleus: too few to "
                         "estimate the noise")
    r2 = ndimage.correlate(np.where(region, f, 0.0), _HIGH_PASS, mode="constant")[usable] ** 2 / _GAIN
    if smooth is None:
        smooth = local_level(f, region)
    p = np.clip(np.asarray(smooth, dtype=np.float64)[usable], 0.0, None)
    design = np.stack([p, p * p], axis=1)
    # non-negative least squares on the squared residuals; scale columns for conditioning
    col = np.maximum(design.std(axis=0), 1e-12)
    coef, _ = optimize.nnls(design / col, r2)
    a, b = (coef / col).tolist()
    if a == 0.0 and b == 0.0:      # constant or perfectly smooth data: keep a tiny floor
        b = max(float(np.mean(r2)) / max(float(np.mean(p * p)), 1e-12), 1e-12)
    return NoiseModel(float(a), float(b), n)


def local_level(field, region, size: int = 5) -> np.ndarray:
    """The noise-free level a cell's variance depends on: the mean over a ``size`` x ``size``
    window of the ``region``'s cells (a single cell's count is too noisy: a cell that happens
    to hold no localization would get zero variance and an infinite weight)."""
    region = np.asarray(region, bool)
    num = ndimage.uniform_filter(np.where(region, np.asarray(field, dtype=np.float64), 0.0), size, mode="constant")
    den = ndimage.uniform_filter(region.astype(np.float64), size, mode="constant")
    return num / np.maximum(den, 1e-12)


def fission(fields, variances, seed: int = 0):
    """Split noisy fields into two independent pseudo-halves ``X + Z`` and ``X - Z``.

    Parameters
    ----------
    fields : sequence of ndarray
        Noisy fields ``X`` (e.g. ``[phi_h, phi_e]``).
    variances : sequence of ndarray
        Per-cell noise variance of each field.
    seed : int
        Seed of ``Z``.

    Returns
    -------
    plus, minus : list of ndarray
        The two pseudo-data sets, each with twice the noise variance of ``X``.

    Examples
    --------
    >>> import numpy as np
    >>> a, b = fission([np.ones(4)], [np.full(4, 0.01)], seed=1)
    >>> np.allclose((a[0] + b[0]) / 2, 1.0)
    True
    """
    rng = np.random.default_rng(seed)
    plus, minus = [], []
    for x, v in zip(fields, variances):
        z = np.sqrt(np.clip(v, 0.0, None)) * rng.standard_normal(np.shape(x))
        plus.append(x + z)
        minus.append(x - z)
    return plus, minus
