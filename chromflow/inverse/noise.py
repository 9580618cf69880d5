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
localization tables and simulated fields are treated alike. It reads the variance right when
the noise is independent between grid cells. Rendering (each localization spread over a few
pixels) and resampling pixels onto cells make neighbouring cells share noise, which the
high-pass cancels: it then under-reads the variance (measured on the held-out simulator's
50 nm cells: 1.4-1.6x for tables rendered by chromflow, 2.8-2.9x for images rendered as
averaged shifted histograms; fields smoothed before inference, ``FieldSettings.smoothing``,
more still). :func:`noise_correlation` measures that correlation from the same high-pass
output and the factor the variance is missing. The data term's weights and the uncertainty's
factors were calibrated on the high-pass reading and keep it; the noise share and data fission
use the whole noise, the measured correlation included.

Halves that share noise
-----------------------
Two halves of the frames are independent only if no molecule is seen in both. Dyes that switch
on again anywhere in the acquisition (dSTORM) or docking sites visited again and again
(DNA-PAINT) are seen in both, and the halves then share the part of the noise that comes from
where the molecules are. :func:`half_independence` measures it from the data: the
high-frequency energy of a half's difference from the whole, ``A - X = (A - B) / 2``, over
that of ``X`` itself. For independent halves the two are the same noise (~1: measured
0.84-1.04 at the grid scale on the held-out simulator's consecutive blinks); a molecule that
returns in the other half adds to ``X`` but cancels in ``A - B`` (measured 0.15-0.17 with five
runs of blinks per molecule, 0.04 with twenty).

Data fission
------------
With ``Z ~ N(0, Sigma)`` drawn independently of the data ``X = truth + noise``, ``Sigma`` the
noise's covariance, the two pseudo-data sets ``X + Z`` and ``X - Z`` have independent noises
(for Gaussian noise exactly; their covariance is ``Sigma - Sigma = 0``), each of twice the
variance: they behave like two independent halves of the localizations. ``Sigma`` must hold
the correlation between cells too: white ``Z`` on noise that neighbours share leaves the
shared part in both halves, which then agree too well once smoothed. Fitting both gives a quality score (how well the
map reproduces between halves) and the noise part of the uncertainty without re-reading the
localizations (Leiner, Duan, Wasserman & Ramdas, "Data fission", JASA 2023).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize

__all__ = ["NoiseCorrelation", "NoiseModel", "estimate_noise", "fission", "half_independence", "local_level",
           "noise_correlation"]

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
    squares, usable = _high_pass_squares(f, region)
    n = int(usable.sum())
    if n < 20:
        raise ValueError(f"only {n} cells have their 3x3 neighbourhood inside the nucleus: too few to "
                         "estimate the noise")
    r2 = squares / _GAIN
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


@dataclass
class NoiseCorrelation:
    """How the noise of one field is correlated between nearby cells.

    The model: cells one apart (along y or x) share a correlation ``rho`` of their noise, cells
    two apart ``rho2``, cells further apart along an axis none, and the correlation is separable
    (diagonal neighbours ``rho^2``). That is what rendering (each localization spread over a few
    pixels) and area-weighted resampling of pixels onto grid cells make. Measured from two
    independent halves of the held-out simulator's localizations (50 nm cells): neighbours
    0.15 (tables rendered by chromflow) and 0.28-0.29 (images rendered as averaged shifted
    histograms of 20 nm pixels), cells two apart -0.05 to 0.02; images of 40 nm pixels on the
    same cells 0.59-0.60 and 0.04-0.05, diagonal neighbours 0.34 (``rho^2``: 0.35).

    Attributes
    ----------
    rho : float
        The correlation of the noise of two neighbouring cells (0: independent cells).
    variance_factor : float
        The per-cell noise variance over what the 3x3 high-pass of :func:`estimate_noise`
        reads, ``(6 / (6 - 8 rho + 2 rho2))^2`` (>= 1). The high-pass subtracts neighbours, so it
        cancels the part of the noise they share.
    lag_ratio : float
        What was measured: the high-pass output's correlation between neighbours, averaged
        over the two axes (-2/3 for independent cells).
    standard_error : float
        Its standard error (from the scatter of the products of neighbours).
    n_cells : int
        Cells used for the estimate.
    rho2 : float
        The correlation of the noise of two cells two apart along an axis.
    lag_ratio2 : float
        The high-pass output's correlation between cells two apart (1/6 for independent cells).
    saturated : bool
        The data did not fit the model: the noise is correlated further than two cells (the
        solution was no valid correlation, or its variance factor exceeded
        :data:`MAX_VARIANCE_FACTOR`). ``rho``, ``rho2`` and ``variance_factor`` are then
        shrunk to the model's limit, and the factor is a lower bound.
    """

    rho: float
    variance_factor: float
    lag_ratio: float
    standard_error: float
    n_cells: int
    rho2: float = 0.0
    lag_ratio2: float = float("nan")
    saturated: bool = False

    def spectrum(self, n: int) -> np.ndarray:
        """The noise's power spectrum along an axis of ``n`` cells, at ``numpy.fft.fftfreq(n)``:
        ``1 + 2 rho cos(w) + 2 rho2 cos(2 w)`` (mean 1: unit variance), clipped at 0."""
        return np.clip(_spectrum(self.rho, self.rho2, 2.0 * np.pi * np.fft.fftfreq(int(n))), 0.0, None)


#: the largest variance factor :func:`noise_correlation` reports. The model reads the factor to
#: within 10 % of what independent halves show up to ~24 (images of 40 nm pixels on 52 nm cells,
#: where the high-pass sees 1/24 of the noise); beyond, the noise is mostly smooth at the grid
#: scale and the 3x3 high-pass reads too little of it to tell
MAX_VARIANCE_FACTOR = 30.0
#: the measured correlations count only when the neighbours' departs from independent cells' by
#: more than this many standard errors (white noise on a 64 x 64 nucleus scatters by ~1 standard error,
#: which would otherwise read as neighbour correlations up to 0.08)
CORRELATION_SIGNIFICANCE = 2.0
# the high-pass output's correlation between neighbours for independent cells, -4/6 (the second
# difference's autocorrelation is 6, -4, 1 at lags 0, 1, 2; two apart it is 1/6)
_WHITE_LAG_RATIO = -4.0 / 6.0


def noise_correlation(field, region) -> NoiseCorrelation:
    """Measure how the noise of a field is correlated between nearby cells.

    The 3x3 high-pass of :func:`estimate_noise` is blind to smooth structure, so its output is
    the noise filtered by it. For independent cells, that output correlates ``-4/6`` between
    neighbours and ``1/6`` between cells two apart (fixed properties of the filter); noise that
    nearby cells share changes both. The two correlations measured on the data (both axes
    together) are matched to the model of :class:`NoiseCorrelation` (two linear equations in
    ``rho`` and ``rho2``), which gives the noise's own correlations and how much of its variance
    the high-pass misses. The noise counts as correlated only when the neighbours' correlation
    departs from ``-4/6`` by more than :data:`CORRELATION_SIGNIFICANCE` standard errors (any blur
    that makes cells two apart share noise makes neighbours share more).

    Measured on the held-out simulator's rendered nuclei (``benchmarks/accuracy.py``'s cases),
    against what two independent halves of the same localizations show
    (``benchmarks/halves_independence.py``), variance factor read / halves: images rendered as
    averaged shifted histograms of 10, 20 and 40 nm pixels on 52 nm cells 1.45-1.59 / 1.47-1.51,
    2.81-2.86 / 2.71-2.75 and 23.7-23.8 / 21.4-21.8; 20 nm pixels on 35 nm cells 8.4-8.5 /
    7.6-7.9; tables rendered by chromflow ~1.5 / 1.4-1.6; fields with independent noise
    1.00-1.05.

    Parameters
    ----------
    field : (ny, nx) ndarray
        One channel.
    region : (ny, nx) bool ndarray
        Cells with trustworthy data (the nucleus without its edge band).

    Returns
    -------
    NoiseCorrelation

    Raises
    ------
    ValueError
        Fewer than 20 cells have their 3x3 neighbourhood inside ``region``.

    Examples
    --------
    Noise whose neighbours correlate 0.3 and cells two apart 0.1 (white noise shaped by the
    model's spectrum; the high-pass reads ``(3.8 / 6)^2`` of its variance, a factor of 2.49
    missing):

    >>> import numpy as np
    >>> model = NoiseCorrelation(0.3, 1.0, 0.0, 0.0, 0, rho2=0.1)
    >>> amp = np.sqrt(model.spectrum(200))
    >>> w = np.random.default_rng(0).standard_normal((200, 200))
    >>> noise = np.real(np.fft.ifft2(np.fft.fft2(w) * amp[:, None] * amp[None, :]))
    >>> nc = noise_correlation(0.3 + 0.01 * noise, np.ones((200, 200), bool))
    >>> round(nc.rho, 1), round(nc.rho2, 1), abs(nc.variance_factor - 2.49) < 0.15
    (0.3, 0.1, True)
    >>> round(noise_correlation(0.3 + 0.01 * w, np.ones((200, 200), bool)).variance_factor, 2)
    1.0
    """
    f = np.asarray(field, dtype=np.float64)
    region = np.asarray(region, bool)
    out, usable = _high_pass(f, region)
    n = int(usable.sum())
    if n < 20:
        raise ValueError(f"only {n} cells have their 3x3 neighbourhood inside the nucleus: too few to "
                         "measure the noise's correlation")
    energy = float(np.mean(out[usable] ** 2))
    (q1, se1), (q2, _) = (_lag_correlation(out, usable, lag, energy) for lag in (1, 2))
    # the test is on the neighbours alone: a blur that makes cells two apart share noise makes
    # neighbours share more, and a second test would double the false alarms on white noise
    # (on coarse cells, structure the high-pass lets through moves q2 first: the bundled
    # sample's 186 nm cells read rho2 = -0.04 with an insignificant q1)
    significant = np.isfinite(q1) and np.isfinite(q2) and q1 - _WHITE_LAG_RATIO > CORRELATION_SIGNIFICANCE * se1
    none = NoiseCorrelation(0.0, 1.0, q1, se1, n, 0.0, q2, False)
    if not significant:
        return none
    # per axis the second difference [1, -2, 1] of noise correlated (1, rho, rho2) at lags
    # (0, 1, 2) has variance 6 - 8 rho + 2 rho2 and covariances 7 rho - 4 - 4 rho2 (lag 1) and
    # 1 - 4 rho + 6 rho2 (lag 2); q1 and q2 are the covariances over the variance
    system = np.array([[7.0 + 8.0 * q1, -4.0 - 2.0 * q1], [-4.0 + 8.0 * q2, 6.0 - 2.0 * q2]])
    try:
        rho, rho2 = np.linalg.solve(system, [6.0 * q1 + 4.0, 6.0 * q2 - 1.0])
    except np.linalg.LinAlgError:
        rho, rho2 = np.nan, np.nan
    if not (np.isfinite(rho) and np.isfinite(rho2)):
        return NoiseCorrelation(0.0, 1.0, q1, se1, n, 0.0, q2, True)
    if 6.0 - 8.0 * rho + 2.0 * rho2 >= 6.0:
        return none                      # less variance missing than for independent cells: none
    saturated = False
    for _ in range(200):
        # a valid correlation (non-negative spectrum) with a factor under the cap, else shrink
        # both towards independence: the factor then is a lower bound
        low = 6.0 - 8.0 * rho + 2.0 * rho2
        valid = low > 0 and _min_spectrum(rho, rho2) >= 0.0 and (6.0 / low) ** 2 <= MAX_VARIANCE_FACTOR
        if valid:
            break
        saturated = True
        rho, rho2 = 0.98 * rho, 0.98 * rho2
    factor = (6.0 / (6.0 - 8.0 * rho + 2.0 * rho2)) ** 2
    return NoiseCorrelation(float(rho), float(factor), q1, se1, n, float(rho2), q2, saturated)


def _lag_correlation(out, usable, lag, energy):
    """The high-pass output's correlation between cells ``lag`` apart (both axes) and its
    standard error."""
    products = []
    for axis in (0, 1):
        a = np.moveaxis(out, axis, 0)
        u = np.moveaxis(usable, axis, 0)
        pair = u[:-lag] & u[lag:]
        products.append(a[:-lag][pair] * a[lag:][pair])
    products = np.concatenate(products)
    if energy <= 0 or products.size < 2:
        return float("nan"), float("nan")
    return (float(np.mean(products)) / energy,
            float(np.std(products)) / energy / np.sqrt(products.size))


def _spectrum(rho, rho2, w):
    """The power spectrum ``1 + 2 rho cos(w) + 2 rho2 cos(2 w)`` of noise correlated ``rho`` and
    ``rho2`` at lags 1 and 2, at angular frequencies ``w``."""
    return 1.0 + 2.0 * rho * np.cos(w) + 2.0 * rho2 * np.cos(2.0 * w)


def _min_spectrum(rho, rho2) -> float:
    """The minimum of :func:`_spectrum` over frequencies (0 to pi)."""
    return float(np.min(_spectrum(rho, rho2, np.linspace(0.0, np.pi, 721))))


def fission(fields, variances, seed: int = 0, correlations=None):
    """Split noisy fields into two independent pseudo-halves ``X + Z`` and ``X - Z``.

    ``X + Z`` and ``X - Z`` have independent noises when ``Z`` has the covariance of the noise
    of ``X``, the variance *and* the correlation between cells. Without ``correlations`` the
    cells' noise is taken as independent; with them, ``Z`` is white noise filtered along every
    axis so that neighbours correlate as measured (:class:`NoiseCorrelation`) and ``variances`` (the high-pass
    reading of :func:`estimate_noise`) are multiplied by its ``variance_factor``.

    Parameters
    ----------
    fields : sequence of ndarray
        Noisy fields ``X`` (e.g. ``[phi_h, phi_e]``).
    variances : sequence of ndarray
        Per-cell noise variance of each field (as :func:`estimate_noise` reads it).
    seed : int
        Seed of ``Z``.
    correlations : sequence of NoiseCorrelation or None, optional
        One per field (:func:`noise_correlation`); None for independent cells.

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
    correlations = [None] * len(fields) if correlations is None else list(correlations)
    if len(correlations) != len(fields):
        raise ValueError(f"{len(correlations)} noise correlations for {len(fields)} fields")
    plus, minus = [], []
    for x, v, corr in zip(fields, variances, correlations):
        w = rng.standard_normal(np.shape(x))
        v = np.clip(np.asarray(v, dtype=np.float64), 0.0, None)
        if corr is not None and (corr.rho != 0 or corr.rho2 != 0):
            # shaped in Fourier space: the amplitude is the square root of the model's spectrum
            # along each axis (separable), so Z has unit variance and the model's correlations
            spectrum = np.fft.fftn(w)
            for axis, n in enumerate(w.shape):
                shape = [1] * w.ndim
                shape[axis] = n
                spectrum = spectrum * np.sqrt(corr.spectrum(n)).reshape(shape)
            w = np.real(np.fft.ifftn(spectrum))
            v = v * corr.variance_factor
        z = np.sqrt(v) * w
        plus.append(x + z)
        minus.append(x - z)
    return plus, minus


#: halves whose difference carries less than this share of the whole's high-frequency energy
#: share noise (:func:`half_independence`); independent halves read 0.79-1.00 on the held-out
#: simulator's 20 standard end-to-end nuclei (1e5-2e6 localizations, seeds 0-2 and 100-101),
#: halves with dyes that return five times 0.15-0.18
MIN_HALF_INDEPENDENCE = 0.6


def half_independence(field, half, region) -> float:
    """How much of the field's noise a half's difference from it carries (~1: independent halves).

    The ratio ``r = hp(half - field) / hp(field)``, with ``hp`` the mean squared output of the
    3x3 high-pass filter of :func:`estimate_noise` over ``region``. With ``X = (A + B) / 2`` and
    independent halves ``A``, ``B``, the noise of ``A - X = (A - B) / 2`` has the variance and
    the spatial correlation of the noise of ``X``, so ``r`` is about 1. Noise that both halves
    share (a molecule seen in both) is in ``X`` but not in ``A - B``: ``r`` falls towards 0.

    Real structure that the grid resolves lowers ``r`` too, since both halves hold it. Shared
    counting noise lowers it by the same factor at every cell size, structure more the coarser
    the cells: ``r`` is also taken on cells binned 2 x 2 (``r2``), and the part of ``1 / r``
    that grows on binning is discounted, as structure whose high-pass energy relative to the
    noise grows 4 x (the noise's variance falls 4 x on binning; smooth structure's energy does
    not fall): ``1 / s = max(1, (4 / r - 1 / r2) / 3)``. Measured on the held-out simulator:
    ``r``, ``r2`` 0.84-1.09 for independent halves, 0.13-0.16 at every scale with five runs of
    blinks per molecule; on the real E. coli dSTORM file, ``phi_h`` reads ``r`` 0.64 and ``r2``
    0.22 on 68 nm cells (structure: ``s`` 1).

    Parameters
    ----------
    field : (ny, nx) ndarray
        The whole data ``X`` of one channel.
    half : (ny, nx) ndarray
        The same channel from one half of the data, on the scale of ``field``.
    region : (ny, nx) bool ndarray
        Cells to compare (the nucleus without its edge band).

    Returns
    -------
    float
        ``s`` in (0, 1]; NaN when fewer than 20 cells (or 2 x 2 blocks of cells) have their
        3x3 neighbourhood inside ``region``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> truth = np.full((120, 120), 0.4)
    >>> a = truth + 0.02 * rng.standard_normal(truth.shape)
    >>> b = truth + 0.02 * rng.standard_normal(truth.shape)
    >>> region = np.ones(truth.shape, bool)
    >>> half_independence((a + b) / 2, a, region) > 0.85         # independent halves: ~1
    True
    >>> shared = 0.02 * rng.standard_normal(truth.shape)           # the same noise in both
    >>> a2, b2 = a + shared, b + shared                         # 2/3 of the noise of X shared
    >>> round(half_independence((a2 + b2) / 2, a2, region), 1)
    0.3
    """
    region = np.asarray(region, bool)
    x = np.asarray(field, dtype=np.float64)
    d = np.asarray(half, dtype=np.float64) - x
    r = _high_pass_ratio(d, x, region)
    if not np.isfinite(r):
        return float("nan")
    (db, xb), inside = _bin2([d, x], region)
    r2 = _high_pass_ratio(db, xb, inside)
    if not (np.isfinite(r2) and r2 > 0) or r <= 0:
        return float("nan")         # too few cells to tell shared noise from structure
    return float(1.0 / max(1.0, (4.0 / r - 1.0 / r2) / 3.0))


def _high_pass(field, region):
    """Output of the 3x3 high-pass filter (the field is 0 outside ``region``) and the cells
    whose 3x3 neighbourhood is inside ``region``, where it holds only data."""
    usable = ndimage.binary_erosion(region, structure=np.ones((3, 3), bool))
    return ndimage.correlate(np.where(region, field, 0.0), _HIGH_PASS, mode="constant"), usable


def _high_pass_squares(field, region):
    """Squared output of the 3x3 high-pass filter on the cells whose 3x3 neighbourhood is inside
    ``region``, and those cells."""
    out, usable = _high_pass(field, region)
    return out[usable] ** 2, usable


def _high_pass_ratio(d, x, region) -> float:
    """Mean squared high-pass output of ``d`` over that of ``x`` (cells whose 3x3 neighbourhood
    is inside ``region``); NaN for fewer than 20 such cells."""
    dd, usable = _high_pass_squares(d, region)
    if usable.sum() < 20:
        return float("nan")
    ex = float(np.mean(_high_pass_squares(x, region)[0]))
    return float(np.mean(dd)) / ex if ex > 0 else float("nan")


def _bin2(arrays, region):
    """Means over 2 x 2 blocks of cells, and the blocks whose four cells are all in ``region``."""
    ny, nx = (region.shape[0] // 2) * 2, (region.shape[1] // 2) * 2
    blocks = (lambda a: a[:ny, :nx].reshape(ny // 2, 2, nx // 2, 2).mean(axis=(1, 3)))
    inside = blocks(region.astype(np.float64)) == 1.0
    return [np.where(inside, blocks(np.where(region, a, 0.0)), 0.0) for a in arrays], inside
