"""Accuracy of a rate map against a known truth, beside baselines computed on the same cells.

A rate map is only worth its physics when it beats what needs none. Every accuracy figure of
chromflow is therefore reported next to *oracle-tuned* baselines (see DESIGN.md, "When the
physics matters"):

* the **smoothed ratio** ``S_sigma[phi_h] / S_sigma[phi_e]`` (the local reaction balance, transport
  ignored; :func:`smoothed_ratio`), with the smoothing width ``sigma`` picked from a grid of
  values by its correlation with the truth (:func:`best_smoothed_ratio`);
* the **direct inversion** ``chromflow.infer_rates(fields, method="direct", radius=r)`` (closed
  form on mollified data derivatives), with the radius ``r`` picked the same way
  (:func:`best_direct`);
* since 0.7.1, the **closed form with a smooth chemical potential**
  (:func:`chromflow.inverse.direct.smooth_potential_rates`: the transport from the data's
  potential smoothed in nm, not from 4th derivatives of the fields), with its width picked the
  same way (:func:`best_potential`): the strongest closed form measured.

All are tuned *on the truth* (an oracle no real user has), so a method that beats them beats
any setting of them. All metrics of one comparison are computed on the same cells
(:func:`compare`).

Metrics are plain functions on arrays: :func:`rate_correlation` (Pearson), :func:`rmse`,
:func:`coverage` (share of cells whose nominal interval covers the truth). Grids: every array of
one call is on the same ``(ny, nx)`` grid; a truth given as an :class:`~chromflow.Image` on
another grid is resampled first (:func:`truth_on_grid`).

Examples
--------
>>> import numpy as np
>>> truth = np.linspace(1.0, 2.0, 100).reshape(10, 10)
>>> round(rate_correlation(3 * truth + 1, truth), 12)      # affine maps correlate perfectly
1.0
>>> round(rmse(truth + 0.1, truth), 12)
0.1
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage, special

from .errors import GridError, InputError

__all__ = ["rate_correlation", "rmse", "coverage", "smoothed_ratio", "best_smoothed_ratio", "best_direct",
           "baselines", "compare", "truth_on_grid", "Baseline", "DEFAULT_SIGMAS", "DEFAULT_RADII",
           "cross_validated_ratio", "CrossValidatedRatio", "HALF_TO_FULL_WIDTH", "domain_scale_reproducibility",
           "DOMAIN_BAND_UM", "DOMAIN_BAND_MAX_CELL_UM", "best_potential", "DEFAULT_POTENTIAL_WIDTHS_NM"]

#: Smoothing widths (grid cells) tried by :func:`best_smoothed_ratio`; 0 is the plain ratio.
DEFAULT_SIGMAS = (0.0, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
#: Mollifier radii (grid cells) tried by :func:`best_direct`.
DEFAULT_RADII = (1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0)
#: Gaussian widths of the chemical potential (nm) tried by :func:`best_potential`.
DEFAULT_POTENTIAL_WIDTHS_NM = (75.0, 100.0, 150.0, 200.0, 250.0, 300.0, 400.0, 500.0, 600.0, 800.0, 1000.0, 1200.0)
#: A baseline candidate must be finite on at least this share of the compared cells to be scored.
MIN_FINITE_SHARE = 0.99
#: :func:`cross_validated_ratio` chooses the width on halves of the data, which carry twice the
#: noise variance of the whole; the width that minimises the mean squared error of a kernel
#: smoother of second order in 2D scales as ``variance ** (1 / 6)``, so the whole data take the
#: halves' width times ``2 ** (-1 / 6)`` (0.89)
HALF_TO_FULL_WIDTH = 2.0 ** (-1.0 / 6.0)


class _BaselineTuple(NamedTuple):
    rate: np.ndarray
    value: float
    corr: float


class Baseline(_BaselineTuple):
    """An oracle-tuned baseline map: unpacks as ``rate, value, corr``.

    Attributes
    ----------
    rate : ndarray
        The map at the chosen value (NaN outside the mask).
    value : float
        The chosen knob: smoothing width or mollifier radius, in grid cells.
    corr : float
        Its Pearson correlation with the truth on the compared cells.
    scores : dict
        Knob value -> correlation for every candidate tried (NaN: not usable).

    Examples
    --------
    >>> import numpy as np
    >>> b = Baseline(np.zeros((2, 2)), 3.0, 0.9, {3.0: 0.9})
    >>> rate, value, corr = b
    >>> value, b.scores
    (3.0, {3.0: 0.9})
    """

    def __new__(cls, rate, value, corr, scores=None):
        self = super().__new__(cls, rate, value, corr)
        self.scores = dict(scores or {})
        return self


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _arr(x, what):
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise InputError(f"{what} must be a 2D (y, x) array, got shape {a.shape}")
    return a


def _cells(shape, *arrays, mask=None):
    """Cells finite in every array and inside ``mask``."""
    use = np.ones(shape, dtype=bool)
    for a in arrays:
        if a.shape != shape:
            raise InputError(f"array shapes differ: {a.shape} vs {shape}")
        use &= np.isfinite(a)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != shape:
            raise InputError(f"mask shape {m.shape} differs from the maps' {shape}")
        use &= m
    return use


def _pearson(a, b):
    if a.size < 3:
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else float("nan")


def _is_result(obj) -> bool:
    return all(hasattr(obj, k) for k in ("rate", "mask", "spacing", "origin"))


def truth_on_grid(truth, shape, spacing: float, origin=(0.0, 0.0)) -> np.ndarray:
    """A true map given on its own grid, linearly interpolated at the centres of another grid.

    Parameters
    ----------
    truth : Image or ndarray
        An :class:`~chromflow.Image` (pixel size and origin in nm; NaN outside the true nucleus)
        is resampled; a plain array must already have ``shape`` and is returned as float.
    shape : (ny, nx)
        Target grid.
    spacing : float
        Target cell size, nm.
    origin : (float, float)
        Target position (nm) of the centre of cell ``(0, 0)``.

    Returns
    -------
    ndarray
        ``shape``; NaN where the target cell centre falls outside the truth's grid or on a NaN.

    Examples
    --------
    >>> import numpy as np
    >>> from chromflow import Image
    >>> t = Image(np.arange(16.0).reshape(4, 4), pixel_size=10.0)
    >>> truth_on_grid(t, (2, 2), spacing=20.0, origin=(5.0, 5.0)).tolist()   # 2x2 block centres
    [[2.5, 4.5], [10.5, 12.5]]
    """
    shape = tuple(int(s) for s in shape)
    if not hasattr(truth, "pixel_size"):
        t = _arr(truth, "truth")
        if t.shape != shape:
            raise InputError(f"truth of shape {t.shape} is not on the {shape} grid; pass a chromflow.Image "
                             "with pixel size and origin to resample it")
        return t
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    y_nm = origin[0] + yy * float(spacing)
    x_nm = origin[1] + xx * float(spacing)
    coords = [(y_nm - truth.origin[0]) / truth.pixel_size, (x_nm - truth.origin[1]) / truth.pixel_size]
    return ndimage.map_coordinates(np.asarray(truth.data, dtype=np.float64), coords, order=1, mode="constant",
                                   cval=np.nan)


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------
def rate_correlation(rate, truth, mask=None):
    """Pearson correlation of a rate map with the true one, on the cells finite in both.

    Parameters
    ----------
    rate : (ny, nx) ndarray or RateMapResult
        Recovered map (NaN where undefined). A result object (``rate``, ``mask``, ``spacing``,
        ``origin``) selects the older calling convention, see Returns.
    truth : (ny, nx) ndarray or Image
        True map on the same grid; with a result object, an :class:`~chromflow.Image` on any
        grid, resampled with :func:`truth_on_grid` (the truth NaN outside the true nucleus).
    mask : (ny, nx) bool ndarray, optional
        Further restricts the compared cells (with a result object, ANDed with its mask).

    Returns
    -------
    float or (float, int)
        The correlation (NaN with fewer than 3 cells or a constant map). Called with a result
        object: ``(correlation, number of cells compared)``, the contract of the former
        ``chromflow.cli.rate_correlation``.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.arange(12.0).reshape(3, 4)
    >>> r = 2 * t - 1
    >>> r[0, 0] = np.nan                      # left out, not an error
    >>> round(rate_correlation(r, t), 12)
    1.0
    >>> round(rate_correlation(-t, t, mask=t > 3), 12)
    -1.0
    """
    if _is_result(rate):
        result = rate
        values = _arr(result.rate, "rate")
        true = truth_on_grid(truth, values.shape, result.spacing, result.origin)
        m = np.asarray(result.mask, dtype=bool) if mask is None else (np.asarray(result.mask, bool) & mask)
        use = _cells(values.shape, values, true, mask=m)
        return _pearson(values[use], true[use]), int(use.sum())
    values = _arr(rate, "rate")
    true = _arr(truth, "truth")
    use = _cells(values.shape, values, true, mask=mask)
    return _pearson(values[use], true[use])


def rmse(rate, truth, mask=None) -> float:
    """Root-mean-square difference of a rate map from the truth on cells finite in both.

    Parameters
    ----------
    rate, truth : (ny, nx) ndarray
        Same grid.
    mask : (ny, nx) bool ndarray, optional
        Restricts the compared cells.

    Returns
    -------
    float
        In the units of the rate (dimensionless for ``lambda``); NaN when no cell is compared.

    Examples
    --------
    >>> import numpy as np
    >>> round(rmse(np.array([[1.0, 2.0], [3.0, np.nan]]), np.array([[1.0, 2.0], [5.0, 0.0]])), 12)
    1.154700538379
    """
    values, true = _arr(rate, "rate"), _arr(truth, "truth")
    use = _cells(values.shape, values, true, mask=mask)
    if not use.any():
        return float("nan")
    return float(np.sqrt(np.mean((values[use] - true[use]) ** 2)))


def coverage(rate, uncertainty, truth, level: float = 0.9, mask=None, details: bool = False):
    """Share of cells whose nominal interval ``rate +- z * uncertainty`` contains the truth.

    ``z = Phi^-1((1 + level) / 2)`` is the two-sided Gaussian quantile (1.645 for 90 %), so a
    calibrated standard deviation covers about ``level`` of the cells. Cells are those where
    ``rate`` and ``truth`` are finite (and inside ``mask``); a NaN (or negative) uncertainty there
    counts as *not covered* and is counted in ``n_missing``: an absent error bar is no error bar.

    Parameters
    ----------
    rate, uncertainty, truth : (ny, nx) ndarray
        Estimate, its standard deviation, truth; same grid.
    level : float
        Nominal coverage in (0, 1).
    mask : (ny, nx) bool ndarray, optional
        Restricts the cells (e.g. interior cells).
    details : bool
        Return a dict instead of the share.

    Returns
    -------
    float or dict
        The covered share (NaN without cells); with ``details``: ``coverage``, ``level``, ``z``,
        ``n_cells``, ``n_covered``, ``n_missing`` (cells without a usable uncertainty).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> truth = np.ones((200, 200))
    >>> sd = np.full_like(truth, 0.1)
    >>> est = truth + sd * rng.standard_normal(truth.shape)    # exactly calibrated errors
    >>> round(coverage(est, sd, truth, level=0.9), 2)
    0.9
    >>> coverage(est, np.full_like(sd, np.nan), truth, details=True)["n_missing"]
    40000
    """
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1), got {level}")
    values, true = _arr(rate, "rate"), _arr(truth, "truth")
    sd = _arr(uncertainty, "uncertainty")
    if sd.shape != values.shape:
        raise InputError(f"uncertainty shape {sd.shape} differs from the rate's {values.shape}")
    use = _cells(values.shape, values, true, mask=mask)
    z = float(special.ndtri(0.5 * (1.0 + level)))
    s = sd[use]
    usable = np.isfinite(s) & (s >= 0)
    covered = usable & (np.abs(values[use] - true[use]) <= z * np.where(usable, s, 0.0))
    n = int(use.sum())
    share = float(covered.sum() / n) if n else float("nan")
    if not details:
        return share
    return {"coverage": share, "level": float(level), "z": z, "n_cells": n, "n_covered": int(covered.sum()),
            "n_missing": int(n - usable.sum())}


# ----------------------------------------------------------------------------------------------
# baselines
# ----------------------------------------------------------------------------------------------
def _masked_gaussian(values, mask, sigma):
    if sigma <= 0:
        return np.where(mask, values, np.nan)
    m = mask.astype(np.float64)
    num = ndimage.gaussian_filter(np.where(mask, values, 0.0), sigma, mode="constant", cval=0.0, truncate=4.0)
    den = ndimage.gaussian_filter(m, sigma, mode="constant", cval=0.0, truncate=4.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mask & (den > 1e-12), num / den, np.nan)


def smoothed_ratio(phi_h, phi_e, mask, sigma_cells: float = 0.0) -> np.ndarray:
    """The local reaction balance ``S[phi_h] / S[phi_e]`` with mask-normalised Gaussian smoothing.

    Definition: with ``m`` the mask (1 inside, 0 outside; beyond the array counts as outside) and
    ``G`` a Gaussian of standard deviation ``sigma_cells`` (truncated at 4 sigma),
    ``S[f] = G * (m f) / G * m`` on the mask: a weighted mean of ``f`` over nucleus cells only, so
    the outside (zero density) does not dilute the edge. The map is ``S[phi_h] / S[phi_e]`` on
    the mask, NaN outside and where ``S[phi_e] <= 0``. ``sigma_cells = 0`` is the plain ratio.

    At steady state ``lambda = (phi_h - lap(mu_d) / 2) / phi_e``: this map drops the transport
    term, which is right where ``lambda`` varies slowly.

    Parameters
    ----------
    phi_h, phi_e : (ny, nx) ndarray
        Heterochromatin and euchromatin volume fractions.
    mask : (ny, nx) bool ndarray
        Nucleus.
    sigma_cells : float
        Smoothing width in grid cells (>= 0).

    Returns
    -------
    (ny, nx) ndarray

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((20, 20), bool); m[3:17, 2:18] = True
    >>> r = smoothed_ratio(np.full((20, 20), 0.3), np.full((20, 20), 0.2), m, sigma_cells=3.0)
    >>> bool(np.allclose(r[m], 1.5)), bool(np.isnan(r[0, 0]))     # exact, up to the edge
    (True, True)
    """
    h, e = _arr(phi_h, "phi_h"), _arr(phi_e, "phi_e")
    m = np.asarray(mask, dtype=bool)
    if not (h.shape == e.shape == m.shape):
        raise InputError(f"phi_h {h.shape}, phi_e {e.shape} and mask {m.shape} must have one shape")
    if not sigma_cells >= 0:
        raise InputError(f"sigma_cells must be >= 0, got {sigma_cells}")
    sh = _masked_gaussian(h, m, float(sigma_cells))
    se = _masked_gaussian(e, m, float(sigma_cells))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m & (se > 0), sh / se, np.nan)


def _pick(candidates, truth, cells):
    """Best candidate by correlation on ``cells``; candidates finite on < 99 % of them are skipped.

    Without any scorable candidate the baseline is all NaN with ``corr`` NaN.
    """
    scores, best = {}, None
    n = int(cells.sum())
    for value, rate in candidates:
        if rate is None:
            scores[value] = float("nan")
            continue
        ok = cells & np.isfinite(rate)
        if n == 0 or ok.sum() < MIN_FINITE_SHARE * n:
            scores[value] = float("nan")
            continue
        c = _pearson(rate[ok], truth[ok])
        scores[value] = c
        if np.isfinite(c) and (best is None or c > best[2]):
            best = (rate, value, c)
    if best is None:  # e.g. a constant map, or no kernel fits: reported as NaN, not an error
        return Baseline(np.full(truth.shape, np.nan), float("nan"), float("nan"), scores)
    return Baseline(best[0], float(best[1]), float(best[2]), scores)


def _compared_cells(mask, truth, extra=None):
    cells = np.asarray(mask, dtype=bool) & np.isfinite(truth)
    if extra is not None:
        cells &= np.asarray(extra, dtype=bool)
    return cells


def best_smoothed_ratio(phi_h, phi_e, mask, truth, sigmas=DEFAULT_SIGMAS, cells=None) -> Baseline:
    """The :func:`smoothed_ratio` whose width correlates best with the truth (an oracle).

    Parameters
    ----------
    phi_h, phi_e : (ny, nx) ndarray
        Volume fractions.
    mask : (ny, nx) bool ndarray
        Nucleus (the smoothing's support).
    truth : (ny, nx) ndarray
        True rate on the same grid (NaN where unknown).
    sigmas : sequence of float
        Smoothing widths to try, grid cells.
    cells : (ny, nx) bool ndarray, optional
        Cells scored (default: mask cells with a finite truth).

    Returns
    -------
    Baseline
        ``rate``, ``value`` (the chosen sigma, cells), ``corr``, ``scores``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> m = np.ones((32, 32), bool)
    >>> truth = 1 + 0.5 * np.sin(np.arange(32) / 5.0)[None, :] * np.ones((32, 1))
    >>> h = 0.2 * truth * (1 + 0.1 * rng.standard_normal((32, 32)))   # noisy ratio data
    >>> b = best_smoothed_ratio(h, np.full((32, 32), 0.2), m, truth)
    >>> b.value > 0 and b.corr > b.scores[0.0]                       # smoothing helps on noise
    True
    """
    truth = _arr(truth, "truth")
    m = np.asarray(mask, dtype=bool)
    cells = _compared_cells(m, truth, cells)
    candidates = ((float(s), smoothed_ratio(phi_h, phi_e, m, s)) for s in sigmas)
    return _pick(candidates, truth, cells)


class CrossValidatedRatio(NamedTuple):
    """The smoothed ratio at a width chosen without the truth (:func:`cross_validated_ratio`).

    Attributes
    ----------
    rate : ndarray
        ``S[phi_h] / S[phi_e]`` of the whole data at ``sigma_cells`` (NaN outside the mask).
    sigma_cells : float
        Smoothing width applied to the whole data, grid cells.
    sigma_half_cells : float
        The width the halves chose.
    scores : dict
        Width -> the halves' agreement at that width (see :func:`cross_validated_ratio`).
    """

    rate: np.ndarray
    sigma_cells: float
    sigma_half_cells: float
    scores: dict


def _with_half(phi_h, phi_e, mask, half_h, half_e):
    """``(phi_h, phi_e, half_h, half_e, mask)`` as arrays of one shape (InputError otherwise)."""
    h, e = _arr(phi_h, "phi_h"), _arr(phi_e, "phi_e")
    ha, ea = _arr(half_h, "half_h"), _arr(half_e, "half_e")
    m = np.asarray(mask, dtype=bool)
    if not (h.shape == e.shape == ha.shape == ea.shape == m.shape):
        raise InputError("phi_h, phi_e, their half and the mask must have one shape, got "
                         f"{h.shape}, {e.shape}, {ha.shape}, {ea.shape}, {m.shape}")
    return h, e, ha, ea, m


def cross_validated_ratio(phi_h, phi_e, mask, half_h, half_e, sigmas=DEFAULT_SIGMAS) -> CrossValidatedRatio:
    """The smoothed ratio ``S[phi_h] / S[phi_e]`` at a width chosen from two halves of the data.

    The baseline a user can compute without the truth: what the map shows without the physics.
    One half ``A = (half_h, half_e)`` is given; the other is ``B = 2 X - A`` (``X`` the whole
    data), so ``A`` and ``B`` carry independent noise when ``A`` is one half of the localizations
    (or data fission, ``X + Z`` with ``Z`` drawn from the noise model). For each width ``s`` the
    score is the correlation between ``log`` of the smoothed ratio of one half and ``log`` of the
    *plain* ratio of the other, averaged over both directions (on counts so sparse that the
    plain ratio of a half is not positive on 99 % of the nucleus, the least smoothing that is,
    and no width below it). The other half's noise is
    independent, so it lowers every width's correlation by the same factor: the best width is the
    one whose map of one half correlates best with the other half's expected ratio (the
    logarithm tames the plain ratio's heavy tail where ``phi_e`` is small). The whole data,
    with half the noise variance, take that width times :data:`HALF_TO_FULL_WIDTH`.

    The halves must carry independent noise. Halves of the frames share molecules whose dye
    switches on again much later (dSTORM dyes can, and blink merging only links nearby frames);
    such shared counts make the halves agree at small widths, so the choice smooths too little.
    Measured on a synthetic case with 10 % of the counts shared: 0.89-0.94 against the oracle's
    0.95-0.96 (tests/test_evaluate.py).

    It estimates the *ratio*, not ``lambda``: where transport matters (``lambda`` varying on
    0.3-0.5 um) the two differ, and the oracle of :func:`best_smoothed_ratio` also smooths that
    difference away. Measured on the held-out simulator's reported nuclei (seeds 0-2, 50 nm
    cells; docs/inference.md, "Measured accuracy"): on the 12 rendered ones (1e5-2e6
    localizations) within 0.005 of the oracle-tuned width's correlation with the true
    ``lambda``; on fields with 3 % noise 0.02-0.04 under it.

    Parameters
    ----------
    phi_h, phi_e : (ny, nx) ndarray
        The whole data.
    mask : (ny, nx) bool ndarray
        Nucleus.
    half_h, half_e : (ny, nx) ndarray
        One half of the data on the same grid and scale as the whole.
    sigmas : sequence of float
        Candidate widths for the halves, grid cells.

    Returns
    -------
    CrossValidatedRatio
        ``rate``, ``sigma_cells``, ``sigma_half_cells``, ``scores``.

    Examples
    --------
    A ratio varying over ~6 cells under strong independent noise: the halves choose to smooth.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> m = np.ones((64, 64), bool)
    >>> lam = 1.5 + 0.5 * np.sin(np.arange(64) / 6.0)[None, :] * np.cos(np.arange(64) / 7.0)[:, None]
    >>> e = np.full((64, 64), 0.2)
    >>> draw = (lambda: (0.2 * lam * (1 + 0.3 * rng.standard_normal(m.shape)),
    ...                  e * (1 + 0.3 * rng.standard_normal(m.shape))))
    >>> (ha, ea), (hb, eb) = draw(), draw()
    >>> cv = cross_validated_ratio((ha + hb) / 2, (ea + eb) / 2, m, ha, ea)
    >>> cv.sigma_half_cells > 0
    True
    """
    h, e, ha, ea, m = _with_half(phi_h, phi_e, mask, half_h, half_e)
    hb, eb = 2.0 * h - ha, 2.0 * e - ea
    # the target: each half's plain ratio, or, where counts are so sparse that a half's cells are
    # often empty (a ratio <= 0 or undefined), its ratio at the least smoothing that is positive
    # on MIN_FINITE_SHARE of the nucleus (the 45,000-localization sample nucleus on 93 nm cells:
    # 1 cell; the plain ratio there is positive on only 58 % of one half's cells)
    target = None
    for s in sorted(float(x) for x in sigmas):
        plain = [smoothed_ratio(hb, eb, m, s), smoothed_ratio(ha, ea, m, s)]
        if all(np.mean(np.isfinite(r[m]) & (r[m] > 0)) >= MIN_FINITE_SHARE for r in plain):
            target = s
            break
    if target is None:
        return CrossValidatedRatio(np.full(m.shape, np.nan), float("nan"), float("nan"), {})
    scores = {}
    for s in sigmas:
        if float(s) < target:
            continue
        smooth = [smoothed_ratio(ha, ea, m, float(s)), smoothed_ratio(hb, eb, m, float(s))]
        both = []
        for a, b in zip(smooth, plain):
            ok = m & np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
            both.append(_pearson(np.log(a[ok]), np.log(b[ok])) if ok.sum() >= 10 else float("nan"))
        scores[float(s)] = float(np.mean(both))
    finite = {s: v for s, v in scores.items() if np.isfinite(v)}
    if not finite:
        return CrossValidatedRatio(np.full(m.shape, np.nan), float("nan"), float("nan"), scores)
    best = max(finite, key=finite.get)
    sigma = best * HALF_TO_FULL_WIDTH
    return CrossValidatedRatio(smoothed_ratio(h, e, m, sigma), float(sigma), float(best), scores)


#: the band of :func:`domain_scale_reproducibility`, um: each half's ratio is smoothed by the
#: first width (the cell-to-cell noise at 50 nm cells), and what a Gaussian of the third keeps
#: (the nucleus-wide trend) is taken from what one of the second keeps: structure of ~75-300 nm,
#: that of heterochromatin domains. Until 0.6 the band was 1, 1.5 and 6 grid cells, which is
#: this at 50 nm cells and read larger structure on coarser grids
DOMAIN_BAND_UM = (0.05, 0.075, 0.3)
#: cells wider than this (um) cannot show the band (its outer width would span fewer than two
#: cells): :func:`domain_scale_reproducibility` gives no reading (NaN)
DOMAIN_BAND_MAX_CELL_UM = 0.15


def domain_scale_reproducibility(phi_h, phi_e, mask, half_h, half_e, spacing_um: float,
                                 depth_um: float = 0.2) -> float:
    """How well two halves of the data agree on the ratio ``phi_h / phi_e`` at the domain scale.

    A quality measure without ground truth, like the split-half correlation of the map (and
    Fourier ring correlation in SMLM), but read from the data before any fit: ``~0`` when the
    counts do not resolve structure at the scale of heterochromatin domains, ``~1`` when both
    halves show the same. One half ``A = (half_h, half_e)`` is given, the other is
    ``B = 2 X - A``. Each half's ratio :func:`smoothed_ratio` at ``DOMAIN_BAND_UM[0]`` is
    band-passed (mask-normalised Gaussians of ``DOMAIN_BAND_UM[1]`` minus ``DOMAIN_BAND_UM[2]``,
    ~75-300 nm), and the two are correlated on the cells deeper than ``depth_um`` inside the mask
    (the outline's own step would agree in both halves). Grids of cells wider than
    ``DOMAIN_BAND_MAX_CELL_UM`` (150 nm) cannot resolve the band: NaN.

    Measured on the held-out simulator's rendered tuning nuclei (~50 nm cells, localization
    halves): lambda varying on the domain scale, 2e6 localizations 0.32-0.58, 3e6 0.58-0.65,
    1e6 0.25-0.36; smooth lambda 1e6 0.09-0.19, 2e6-3e6 0.25-0.36 (the total chromatin has
    domain-scale structure whatever the rate's scale); 3e5 0.04-0.19. Fields with 3 % noise
    read 0.99-1.

    Parameters
    ----------
    phi_h, phi_e : (ny, nx) ndarray
        The whole data.
    mask : (ny, nx) bool ndarray
        Nucleus.
    half_h, half_e : (ny, nx) ndarray
        One half of the data on the same grid and scale as the whole.
    spacing_um : float
        Grid cell size, um.
    depth_um : float
        Cells this close to the outside are left out, um.

    Returns
    -------
    float
        Pearson correlation of the two band-passed ratios; NaN with fewer than 10 usable cells or
        cells wider than ``DOMAIN_BAND_MAX_CELL_UM``.

    Examples
    --------
    Halves that share a pattern of ~200 nm blobs (50 nm cells) under independent noise agree;
    pure noise does not, and the same data on 200 nm cells give no reading.

    >>> import numpy as np
    >>> from scipy import ndimage
    >>> rng = np.random.default_rng(1)
    >>> m = np.ones((80, 80), bool)
    >>> blobs = ndimage.gaussian_filter(rng.standard_normal(m.shape), 2.0)
    >>> h = 0.3 * (1 + 2 * blobs); e = np.full(m.shape, 0.2)
    >>> noisy = (lambda f: f * (1 + 0.1 * rng.standard_normal(m.shape)))
    >>> ha, ea, hb, eb = noisy(h), noisy(e), noisy(h), noisy(e)
    >>> domain_scale_reproducibility((ha + hb) / 2, (ea + eb) / 2, m, ha, ea, 0.05) > 0.5
    True
    >>> bool(np.isnan(domain_scale_reproducibility((ha + hb) / 2, (ea + eb) / 2, m, ha, ea, 0.2)))
    True
    >>> flat = (lambda f: noisy(np.full(m.shape, f)))
    >>> ha, ea, hb, eb = flat(0.3), flat(0.2), flat(0.3), flat(0.2)
    >>> abs(domain_scale_reproducibility((ha + hb) / 2, (ea + eb) / 2, m, ha, ea, 0.05)) < 0.1
    True
    """
    h, e, ha, ea, m = _with_half(phi_h, phi_e, mask, half_h, half_e)
    spacing_um = float(spacing_um)
    if not (np.isfinite(spacing_um) and spacing_um > 0):
        raise ValueError(f"spacing_um must be a positive cell size in um, got {spacing_um}")
    if spacing_um > DOMAIN_BAND_MAX_CELL_UM:
        return float("nan")
    first, fine, coarse = (width / spacing_um for width in DOMAIN_BAND_UM)
    deep = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1] > float(depth_um) / spacing_um
    bands = []
    for a_h, a_e in ((ha, ea), (2.0 * h - ha, 2.0 * e - ea)):
        r = smoothed_ratio(a_h, a_e, m, first)
        ok = m & np.isfinite(r)
        bands.append(_masked_gaussian(r, ok, fine) - _masked_gaussian(r, ok, coarse))
    use = deep & np.isfinite(bands[0]) & np.isfinite(bands[1])
    if use.sum() < 10:
        return float("nan")
    return _pearson(bands[0][use], bands[1][use])


def _direct_map(fields, radius, infer_options):
    from .inverse import infer_rates

    try:
        return np.asarray(infer_rates(fields, method="direct", radius=float(radius), **infer_options).rate,
                          dtype=np.float64)
    except (GridError, InputError):
        return None  # the kernel does not fit this mask, or phi_e <= 0 somewhere: not a candidate


def best_direct(fields, truth, radii=DEFAULT_RADII, cells=None, **infer_options) -> Baseline:
    """The direct inversion ``infer_rates(fields, method="direct", radius=r)`` at its best radius.

    Parameters
    ----------
    fields : ChromatinFields
        Or any object with ``phi_h``, ``phi_e``, ``mask``, ``spacing``, ``origin``, ``source``.
    truth : (ny, nx) ndarray
        True rate on the fields' grid (NaN where unknown).
    radii : sequence of float
        Mollifier radii to try, grid cells. Radii whose kernel does not fit the mask, or at
        which the map is not finite on the compared cells, are skipped (score NaN).
    cells : (ny, nx) bool ndarray, optional
        Cells scored (default: mask cells with a finite truth).
    **infer_options
        Passed on to :func:`chromflow.infer_rates`.

    Returns
    -------
    Baseline
        ``rate``, ``value`` (the chosen radius, cells), ``corr``, ``scores``.

    Examples
    --------
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> m = np.zeros((40, 40), bool); m[5:35, 5:35] = True
    >>> x = np.arange(40.0)[None, :] * np.ones((40, 1))
    >>> f = SimpleNamespace(phi_h=0.2 + 0.001 * x, phi_e=np.full((40, 40), 0.2), mask=m, spacing=50.0,
    ...                     origin=(0.0, 0.0), source=None)
    >>> # linear fields: lambda = ratio; an exact mask, so no partial-volume edge band (edge=0)
    >>> b = best_direct(f, 1 + 0.005 * x, radii=(2.0, 3.0), edge=0)
    >>> round(b.corr, 6)
    1.0
    """
    truth = _arr(truth, "truth")
    cells = _compared_cells(fields.mask, truth, cells)
    candidates = ((float(r), _direct_map(fields, r, infer_options)) for r in radii)
    return _pick(candidates, truth, cells)


def best_potential(fields, truth, widths_nm=DEFAULT_POTENTIAL_WIDTHS_NM, cells=None, edge="auto") -> Baseline:
    """The closed form with a smooth chemical potential at its best width (an oracle).

    :func:`chromflow.inverse.direct.smooth_potential_rates` on the fields' cells without their
    edge band (the band :func:`chromflow.infer_rates` leaves out of its data term, ``edge`` as
    there), reported on the whole mask, at the potential's width that correlates best with the
    truth. A third baseline beside :func:`best_smoothed_ratio` and :func:`best_direct`: it keeps
    the transport term but takes it from the smooth potential instead of 4th derivatives of
    the fields, so it is the strongest closed form measured (docs/inference.md, "A closed form
    with a smooth potential").

    Parameters
    ----------
    fields : ChromatinFields
        Or any object with ``phi_h``, ``phi_e``, ``mask``, ``spacing`` (nm).
    truth : (ny, nx) ndarray
        True rate on the fields' grid (NaN where unknown).
    widths_nm : sequence of float
        Gaussian widths of the potential to try, nm (``phi_h`` is smoothed by a quarter of it).
    cells : (ny, nx) bool ndarray, optional
        Cells scored (default: mask cells with a finite truth).
    edge : "auto", float or bool ndarray
        The edge band, as ``infer_rates(edge=...)``.

    Returns
    -------
    Baseline
        ``rate``, ``value`` (the chosen width, nm), ``corr``, ``scores``.

    Examples
    --------
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> m = np.zeros((40, 40), bool); m[5:35, 5:35] = True
    >>> truth = 1.5 + 0.01 * np.arange(40.0)[None, :] * np.ones((40, 1))
    >>> f = SimpleNamespace(phi_h=0.2 * truth, phi_e=np.full((40, 40), 0.2), mask=m, spacing=50.0)
    >>> b = best_potential(f, truth, widths_nm=(200.0, 400.0), edge=0)
    >>> b.corr > 0.99
    True
    """
    from .inverse import _edge_band
    from .inverse.direct import smooth_potential_rates

    truth = _arr(truth, "truth")
    mask = np.asarray(fields.mask, dtype=bool)
    band, _ = _edge_band(fields, mask, float(fields.spacing), edge, getattr(fields, "source", None))
    data = mask & ~band
    cells = _compared_cells(mask, truth, cells)
    if not data.any():
        return _pick([], truth, cells)
    spacing_um = float(fields.spacing) / 1000.0
    candidates = ((float(w), smooth_potential_rates(fields.phi_h, fields.phi_e, data, spacing_um, float(w) / 1000.0,
                                                    out_mask=mask)) for w in widths_nm)
    return _pick(candidates, truth, cells)


def baselines(fields, truth, mask=None, sigmas=DEFAULT_SIGMAS, radii=DEFAULT_RADII) -> dict:
    """The oracle-tuned baselines on the same cells: smoothed ratio, direct, smooth potential.

    Parameters
    ----------
    fields : ChromatinFields
        The data (``phi_h``, ``phi_e``, ``mask``, ``spacing``, ``origin``).
    truth : (ny, nx) ndarray or Image
        True rate: on the fields' grid, or an :class:`~chromflow.Image` resampled onto it.
    mask : (ny, nx) bool ndarray, optional
        Restricts the scored cells (default: the fields' mask where the truth is finite).
    sigmas, radii : sequence of float
        Candidate smoothing widths and mollifier radii (grid cells).

    Returns
    -------
    dict
        ``{"ratio": Baseline, "direct": Baseline, "potential": Baseline}`` (the last from
        :func:`best_potential` with its default widths).

    Examples
    --------
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> m = np.zeros((40, 40), bool); m[5:35, 5:35] = True
    >>> truth = 1.5 + 0.01 * np.arange(40.0)[None, :] * np.ones((40, 1))
    >>> f = SimpleNamespace(phi_h=0.2 * truth, phi_e=np.full((40, 40), 0.2), mask=m,
    ...                     spacing=50.0, origin=(0.0, 0.0), source=None)
    >>> b = baselines(f, truth, radii=(2.0,))
    >>> sorted(b), round(b["ratio"].corr, 6), round(b["direct"].corr, 2)   # direct: 100 nm edge band
    (['direct', 'potential', 'ratio'], 1.0, 1.0)
    """
    shape = np.shape(fields.phi_h)
    true = truth_on_grid(truth, shape, fields.spacing, fields.origin)
    return {"ratio": best_smoothed_ratio(fields.phi_h, fields.phi_e, fields.mask, true, sigmas, cells=mask),
            "direct": best_direct(fields, true, radii, cells=mask),
            "potential": best_potential(fields, true, cells=mask)}


def compare(result_or_rate, truth, fields, mask=None, level: float = 0.9, sigmas=DEFAULT_SIGMAS,
            radii=DEFAULT_RADII) -> dict:
    """One table row: a method's accuracy beside the oracle-tuned baselines, on the same cells.

    The compared cells are the fields' mask (and the result's, and ``mask`` when given) where the
    truth and the method's map are finite. The baselines are tuned and scored on exactly those
    cells.

    Parameters
    ----------
    result_or_rate : RateMapResult or (ny, nx) ndarray
        The method's output on the fields' grid. A result contributes its ``uncertainty``.
    truth : (ny, nx) ndarray or Image
        True rate on the fields' grid, or an :class:`~chromflow.Image` (resampled onto it).
    fields : ChromatinFields
        The data the method was given (the baselines use the same).
    mask : (ny, nx) bool ndarray, optional
        Restricts the compared cells (e.g. interior cells).
    level : float
        Nominal level of the coverage interval.
    sigmas, radii : sequence of float
        Candidates of the ratio and direct baselines (grid cells); the potential's are
        :data:`DEFAULT_POTENTIAL_WIDTHS_NM`.

    Returns
    -------
    dict
        ``corr``, ``rmse``, ``coverage`` (of the ``level`` interval; NaN only for a bare array,
        which carries no uncertainty; a result whose uncertainty is NaN scores 0 there),
        ``coverage_missing`` (cells without a usable uncertainty), ``n_cells``, ``ratio_corr``,
        ``ratio_rmse``, ``ratio_sigma`` (cells), ``direct_corr``, ``direct_rmse``,
        ``direct_radius`` (cells), ``potential_corr``, ``potential_rmse``, ``potential_width_nm``
        (:func:`best_potential`), ``beats_ratio``, ``beats_direct``, ``beats_potential``.

    Examples
    --------
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> m = np.zeros((40, 40), bool); m[5:35, 5:35] = True
    >>> truth = 1.5 + 0.01 * np.arange(40.0)[None, :] * np.ones((40, 1))
    >>> f = SimpleNamespace(phi_h=0.2 * truth, phi_e=np.full((40, 40), 0.2), mask=m, spacing=50.0,
    ...                     origin=(0.0, 0.0), source=None)
    >>> row = compare(np.where(m, truth, np.nan), truth, f, radii=(2.0,))
    >>> round(row["corr"], 6), round(row["ratio_corr"], 6), row["n_cells"]
    (1.0, 1.0, 900)
    """
    shape = np.shape(fields.phi_h)
    true = truth_on_grid(truth, shape, fields.spacing, fields.origin)
    if _is_result(result_or_rate):
        rate = _arr(result_or_rate.rate, "rate")
        unc = getattr(result_or_rate, "uncertainty", None)
        res_mask = np.asarray(result_or_rate.mask, dtype=bool)
    else:
        rate, unc, res_mask = _arr(result_or_rate, "rate"), None, None
    if rate.shape != shape:
        raise InputError(f"rate map of shape {rate.shape} is not on the fields' {shape} grid")
    cells = _cells(shape, rate, true, mask=np.asarray(fields.mask, dtype=bool))
    if res_mask is not None:
        cells &= res_mask
    if mask is not None:
        cells &= np.asarray(mask, dtype=bool)
    if cells.sum() < 3:
        raise InputError(f"only {int(cells.sum())} cells to compare (mask, truth and rate overlap too little)")
    row: dict[str, Any] = {"n_cells": int(cells.sum()),
                           "corr": rate_correlation(rate, true, cells),
                           "rmse": rmse(rate, true, cells)}
    cov = {"coverage": float("nan"), "n_missing": int(cells.sum())}
    if unc is not None:  # an all-NaN uncertainty map covers nothing: coverage 0, not "not applicable"
        cov = coverage(rate, unc, true, level=level, mask=cells, details=True)
    row["coverage"] = cov["coverage"]
    row["coverage_missing"] = cov["n_missing"]
    base = baselines(fields, true, cells, sigmas, radii)
    for name, key in (("ratio", "ratio_sigma"), ("direct", "direct_radius"), ("potential", "potential_width_nm")):
        b = base[name]
        row[f"{name}_corr"] = b.corr
        row[f"{name}_rmse"] = rmse(b.rate, true, cells)
        row[key] = b.value
        row[f"beats_{name}"] = bool(row["corr"] > b.corr)
    return row
