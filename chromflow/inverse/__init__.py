"""Epigenetic reaction-rate maps from chromatin fields: :func:`infer_rates`.

Three methods share one steady-state residual (:mod:`chromflow.physics.chromatin`)::

    R = lap(mu_d) + 2 (lambda phi_e - phi_h) = 0

* ``"pinn"`` (default): the mollified physics-informed network. A coordinate network (or free
  grid values, ``backbone="grid"``) outputs ``(g_h, g_e, g_lambda)`` on the grid padded by the
  kernel half-width; a :class:`~chromflow.mollifier.MollifierLayer` (``boundary="valid"``)
  turns ``g_h, g_e`` into smooth fields with their derivatives; ``lambda = softplus(g_lambda)``.
  Noise-weighted data term, residual on the whole nucleus, stopping chosen on held-out cells
  (:mod:`chromflow.inverse.fit`).
* ``"direct"``: closed form ``lambda = (phi_h - lap(mu_d) / 2) / phi_e`` on mollified data, with
  an edge-safe treatment (:mod:`chromflow.inverse.direct`). Fast; the baseline.
* ``"autodiff"``: the PINN with exact derivatives of the network by forward Taylor mode
  (:mod:`chromflow.autodiff`, no mollification): the baseline of the Mollifier-Layers paper in
  its fastest exact form.

Every method (:func:`infer_rates`):

1. takes the partial-volume *edge band* of the nucleus from the fields (``fields.edge``, made by
   :func:`chromflow.chromatin_fields` from the density's edge profile) and gives it no weight in
   the data term;
2. estimates the noise of each channel from the data (:mod:`chromflow.inverse.noise`);
3. fits, then (``uncertainty=True``, the default) refits one of two independent halves of the
   data: the fields of one half of the localizations (``fields.half``, made by the pipeline
   from alternate blocks of frames) or, without them, a pseudo-half made by *data fission*.
   The correlation of the two half maps is the quality score ``split_half_r``, their spread
   the noise part of the ``uncertainty`` map;
4. flags what should not be trusted (negative or absurd rates, little euchromatin,
   irreproducible maps) in ``result.diagnostics["flags"]``.

Numerics: derivatives in grid units (one cell = 1), converted to micrometres by powers of the
cell size inside the residual; fits in float64 by default.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import time
from typing import Any

import numpy as np
import torch

from .._progress import CancelToken, ProgressCallback, check_cancel, report
from ..errors import GridError, InputError
from ..evaluate import cross_validated_ratio, domain_scale_reproducibility, rate_correlation, smoothed_ratio
from ..physics.chromatin import ChromatinModel, steady_state_residual
from ..training import resolve_device
from .boundary import boundary_layer_correction
from .direct import direct_rates, footprint_inside
from .noise import (MAX_VARIANCE_FACTOR, MIN_HALF_INDEPENDENCE, estimate_noise, fission, half_independence, local_level,
                    noise_correlation)
from .._json import jsonable as _jsonable
from .result import RateMapResult, edge_bias_zone

__all__ = ["infer_rates", "RateMapResult", "METHODS", "DEFAULTS", "direct_rates", "edge_band_cells",
           "closed_form_weight", "network_size", "noise_share", "ratio_weight"]

METHODS = ("pinn", "direct", "autodiff")

_COMMON = {"uncertainty": True, "edge": "auto", "held_out": 0.1}
_NETWORK = {"iterations": 1000, "lr": 2e-2, "residual_weight": 1.0, "width": "auto", "depth": "auto", "blocks": 2,
            "fourier_scale": 1.0, "ensemble": 1, "log_every": 25, "dtype": "float32", "check_every": 10,
            "patience": 30, "boundary_layer": True, "effort": "auto", "ratio_weight": "auto"}
#: Default settings per method (``infer_rates`` keyword options override them). The single
#: source of the defaults: the pipeline, the CLI and napari read them from here.
DEFAULTS: dict[str, dict[str, Any]] = {
    "direct": {"radius": "auto", "kernel": "bump", **_COMMON},
    "pinn": {"radius": 3.0, "kernel": "bump", **_NETWORK, **_COMMON},
    "autodiff": {**_NETWORK, **_COMMON},
}

#: ``radius="auto"`` of the direct method: the kernel spans about the reaction-diffusion length
#: (the scale on which transport shapes the fields), within these bounds in cells
AUTO_RADIUS_NM = 400.0
AUTO_RADIUS_CELLS = (3.0, 12.0)
#: the smoothing bias of a map exceeds the one its bootstrap refit shows (the refit's truth, the
#: fitted map, is smoother than the real one) by about this factor, per method. ``direct``:
#: calibrated for 90 % coverage on the tuning seeds 100-105 of ``chromflow.simulate`` (64x64,
#: 50 nm cells, lambda varying on 0.25-1 um, 3 % noise). The networks: the value for the cells
#: deeper than the edge-bias zone, chosen together with :data:`MODEL_ERROR_FLOOR` by
#: ``benchmarks/calibrate_uncertainty.py --zones-from`` on 12 tuning cases of the independent
#: simulator (seeds 100-101; docs/inference.md, "Uncertainty"), for the maps of this release;
#: the zone has its own (:data:`EDGE_BIAS_INFLATION`). The network's bias hides from its own
#: bootstrap far more than the kernel's: a smooth fitted map is easy to refit.
BIAS_INFLATION = {"direct": 0.6, "pinn": 6.0, "autodiff": 6.0}
#: the networks' error also has a part that follows the noise but that the fission refit (white
#: Gaussian noise drawn from the fitted noise model) does not show: rendered counting noise is
#: over-dispersed (blinking) and correlated between neighbouring cells. With the fission part
#: alone, the nominal 90 % intervals covered 34-48 % of the cells on rendered end-to-end tuning
#: cases. The uncertainty adds ``floor^2 x`` the noise part: ``0.5`` for the deep cells with
#: ``BIAS_INFLATION = 6`` (10 of the 12 tuning cases in 0.80-0.95 on those cells), and
#: :data:`EDGE_MODEL_ERROR_FLOOR` in the edge-bias zone. ``autodiff`` takes the values of
#: ``pinn`` (not calibrated on its own).
MODEL_ERROR_FLOOR = {"direct": 0.0, "pinn": 0.5, "autodiff": 0.5}
#: the same two factors for the cells of the edge-bias zone (within
#: :data:`~chromflow.inverse.result.EDGE_BIAS_DEPTH_UM` of the outline), where the networks' maps
#: carry a bias the bootstrap refit hardly shows (docs/inference.md, "What limits the maps now").
#: One pair for all cells, ``(8, 1.5)``, covered the deep cells too generously and the edge
#: cells too little: on the reported seeds 7 of 15 maps in 0.80-0.95 on the interior cells
#: (>= 250 nm inside), mean 0.945. Each pair, deep ``(6, 0.5)`` and edge zone ``(12, 1.5)``,
#: was chosen on its own cells of the 12 tuning cases (``benchmarks/calibrate_uncertainty.py
#: --zones-from``; most cases in 0.80-0.95, then the smallest worst distance from 0.875):
#: 10 of 12 in range on all and on interior cells (one pair: 10 and 8). ``direct`` keeps one
#: pair.
EDGE_BIAS_INFLATION = {"direct": 0.6, "pinn": 12.0, "autodiff": 12.0}
EDGE_MODEL_ERROR_FLOOR = {"direct": 0.0, "pinn": 1.5, "autodiff": 1.5}
#: ``width="auto"``, ``depth="auto"``: the MLP's size from the noise share of the data
#: (:func:`noise_share`, the larger of the two channels'). Below ``LOW_NOISE_SHARE`` the
#: network's capacity limits the map (domain-scale detail), above it a larger network fits noise
#: the held-out stopping cannot see. Chosen on the held-out simulator's tuning seeds 100-101
#: (docs/inference.md, "Network size"): 64 x 4 won at shares 0.03-0.33 (fields, domain-scale
#: 0.919 -> 0.936 and 0.916 -> 0.939 with the closed-form mixing), and lost or tied on
#: rendered data at 0.53-0.67 (3e5 localizations: 0.828 -> 0.791). Those shares were the
#: high-pass reading; counting the noise neighbouring cells share (since 0.4), rendered data
#: read 0.67-0.98 (mean of the channels) and fields 0.03, so every decision stands.
LOW_NOISE_SHARE = 0.4
NETWORK_SIZE = {"low noise": (48, 4), "default": (32, 3)}
#: ``effort="auto"`` (networks): noisy counting data whose halves agree on the ratio at the
#: domain scale (:func:`chromflow.evaluate.domain_scale_reproducibility` at least
#: ``DOMAIN_SCALE_AGREEMENT``, the worse channel's noise share at least :data:`LOW_NOISE_SHARE`,
#: the noise described by the model) get the larger budget and ensemble ``DOMAIN_SCALE_EFFORT``:
#: domain-scale detail takes the network more steps and averaging than the default gives, and
#: the halves tell whether the counts hold any. Grids of cells wider than
#: :data:`chromflow.evaluate.DOMAIN_BAND_MAX_CELL_UM` (150 nm) resolve no domains and give no
#: reading: standard effort. Chosen on the held-out simulator's rendered
#: tuning nuclei (seeds 100-104; docs/inference.md, "Effort"). Fields with little noise read
#: ~1 but run their whole budget already (there 2000 steps bought nothing, session 11).
DOMAIN_SCALE_AGREEMENT = 0.3
DOMAIN_SCALE_EFFORT = {"iterations": 2000, "ensemble": 3}
EFFORTS = ("auto", "standard", "domain")
#: a map whose two halves correlate less than this is flagged as dominated by noise
LOW_REPRODUCIBILITY = 0.5
#: mean noise share of the two channels (:func:`noise_share`, the whole noise) from which a map is
#: flagged as made from sparse data. Chosen on the held-out simulator's rendered tuning cases
#: (seeds 100-104, 50 nm cells), tables and images alike: 1e5 and 3e5 localizations per nucleus
#: read 0.889-0.983 as tables and 0.858-0.981 as images, and there the network beat the oracle
#: smoothed ratio on 3 of 12 nuclei (smooth rate 1 of 9, domain-scale 2 of 3); 1e6 and
#: domain-scale 2e6 read 0.700-0.827 and 0.672-0.803, and there the network was ahead on all 10
#: (docs/inference.md). The line is the middle of the gap, 0.827-0.858. Since 0.8 (the ratio
#: mixed in) the map beats the oracle ratio on 8 of 13 such tables (smooth 1e5 / 3e5 seeds
#: 100-104, domain-scale 3e5 seeds 100-102) and loses by up to 0.019 on the others.
SPARSE_NOISE_SHARE = 0.84
#: the line of 0.3 and earlier, on the high-pass reading of the noise alone
#: (``diagnostics["noise"][channel]["share_read"]``), kept beside it: a map is flagged when
#: either is crossed. Set on the same tables (sparse 0.705-0.766, the rest 0.58-0.69), it
#: decides nothing there that the line above does not. It matters where cells share little
#: noise, so that both shares read alike: on coarser grids (100-150 nm cells the held-out tables
#: read a neighbour correlation of 0) the whole share of a sparse nucleus falls under 0.84 sooner
#: than the data stop being sparse. The demo's sample (45,000 localizations, 186 nm cells: 0.79,
#: the map 0.78 against the smoothed ratio's 0.90) is flagged by this line only.
SPARSE_NOISE_SHARE_READ = 0.7
#: rates outside this range are flagged as absurd (lambda = Gamma_me / Gamma_ac)
PLAUSIBLE_RATE = (1e-2, 1e2)
#: ``ratio_weight="auto"`` (networks): the share of the smoothed ratio ``result.ratio`` (at the
#: width its halves chose) mixed into the map, ``rate + w (ratio - rate)``, from the larger noise
#: share of the channels: 0 up to the first share, rising linearly to ``RATIO_WEIGHT`` at the
#: second. On noisy rendered data the network's map and the ratio err differently: the map
#: carries the counting noise that undoing the transport amplifies and what the model lacks
#: (render blur, partial volume), the ratio the transport it leaves in; their mix beats both.
#: On low-noise fields the ratio only adds the transport error. Chosen on the held-out
#: simulator's tuning seeds 100-102, 39 nuclei (fields at 3-40 % noise, rendered tables of
#: 1e5-2e6 localizations, images, returning dyes; docs/inference.md, "Mixing in the smoothed
#: ratio"): +0.006 on average, no nucleus lower by more than 0.0002; the surface is flat (weights
#: 0.4-0.6 and ramps from 0.1-0.4 to 0.6-1.0 all gained 0.006-0.008).
RATIO_WEIGHT = 0.4
RATIO_WEIGHT_SHARES = (0.2, 0.6)
#: a map that correlates less than this with the smoothed ratio phi_h / phi_e (``result.ratio``)
#: is flagged: to leading order lambda *is* that ratio (the transport term corrects it), so a map
#: that runs against it is set by the model's transport, not by the marks (seen on the real E. coli
#: dSTORM file, -0.38: not chromatin; held-out nuclei read 0.81-0.97). Below 0 rather than at it:
#: a map of pure noise reads ~0 and has its own flag (low reproducibility)
MIN_RATIO_AGREEMENT = -0.2
#: euchromatin below this share of the chromatin inside the nucleus makes lambda meaningless
MIN_EUCHROMATIN_SHARE = 0.02




def _unpack(fields):
    """(phi_h, phi_e, mask, spacing_nm, origin, source) from a ChromatinFields-like object."""
    try:
        phi_h = np.asarray(fields.phi_h, dtype=np.float64)
        phi_e = np.asarray(fields.phi_e, dtype=np.float64)
        mask = np.asarray(fields.mask, dtype=bool)
        spacing = float(fields.spacing)
    except AttributeError as exc:
        raise InputError(f"fields must have phi_h, phi_e, mask and spacing (a ChromatinFields): {exc}") from None
    source = getattr(fields, "source", None)
    origin = tuple(float(o) for o in getattr(fields, "origin", (0.0, 0.0)))
    if phi_h.ndim != 2 or phi_h.shape != phi_e.shape or mask.shape != phi_h.shape:
        raise InputError(f"phi_h {phi_h.shape}, phi_e {phi_e.shape} and mask {mask.shape} must be equal 2D shapes",
                         source)
    if not np.isfinite(spacing) or spacing <= 0:
        raise InputError(f"grid spacing must be a positive number of nm, got {spacing}", source)
    if not mask.any():
        raise GridError("the nucleus mask is empty", source)
    for name, arr in (("phi_h", phi_h), ("phi_e", phi_e)):
        if not np.all(np.isfinite(arr[mask])):
            raise InputError(f"{name} has NaN or infinite values inside the nucleus mask", source)
    return phi_h, phi_e, mask, spacing, origin, source


def _check_mask_fits(mask, halo: int, source, method: str):
    # the fitted fields need a neighbourhood of the kernel's size inside the nucleus: demand at
    # least one pixel whose whole kernel footprint lies inside the mask
    inner = footprint_inside(mask, halo)
    if not inner.any():
        raise GridError(f"nucleus mask ({int(mask.sum())} pixels) is too small for a mollifier kernel of "
                        f"half-width {halo} cells ({method}); use a finer grid or a smaller radius", source)
    return inner




def edge_band_cells(mask, width_nm: float, spacing_nm: float) -> np.ndarray:
    """Cells of ``mask`` whose centre lies within ``width_nm`` of the mask's outline.

    Parameters
    ----------
    mask : (ny, nx) bool ndarray
    width_nm : float
        Band width in nm (0 gives an empty band).
    spacing_nm : float
        Cell size in nm.

    Returns
    -------
    (ny, nx) bool ndarray

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((9, 9), bool); m[1:8, 1:8] = True
    >>> int(edge_band_cells(m, 50.0, 50.0).sum())   # the outer ring of the 7x7 square
    24
    """
    mask = np.asarray(mask, bool)
    if not width_nm > 0:
        return np.zeros(mask.shape, bool)
    # distance from a cell centre to the outline: the distance to the nearest outside centre
    # minus half a cell
    from ..fields import distance_to_outline

    return mask & (distance_to_outline(mask) * spacing_nm < width_nm)


def _edge_band(fields, mask, spacing, edge, source):
    if isinstance(edge, str):
        if edge != "auto":
            raise ValueError(f"edge must be 'auto', a width in nm, or an array; got {edge!r}")
        band = getattr(fields, "edge", None)
        if band is None:
            # fields made elsewhere: measure the band on the total chromatin of the grid itself
            from ..fields import MIN_EDGE_BAND_NM, partial_volume_width

            total = np.asarray(fields.phi_h, dtype=np.float64) + np.asarray(fields.phi_e, dtype=np.float64)
            width = max(partial_volume_width(np.where(mask, total, 0.0), mask, spacing), MIN_EDGE_BAND_NM)
            return edge_band_cells(mask, width, spacing), f"{width:g} nm (total chromatin profile of the fields)"
        band = np.asarray(band, bool)
        if band.shape != mask.shape:
            raise InputError(f"fields.edge {band.shape} differs from the mask {mask.shape}", source)
        return band & mask, "from the fields (density edge profile)"
    if np.ndim(edge) == 0:
        width = float(edge)
        if not np.isfinite(width) or width < 0:
            raise ValueError(f"edge width must be >= 0 nm, got {edge!r}")
        return edge_band_cells(mask, width, spacing), f"{width:g} nm (given)"
    band = np.asarray(edge, bool)
    if band.shape != mask.shape:
        raise InputError(f"edge array {band.shape} differs from the mask {mask.shape}", source)
    return band & mask, "given as an array"


def _uncertainty_mode(value):
    if value is True or value == "full":
        return "full"
    if value is False or value is None or value == "none":
        return "none"
    if value == "noise":
        return "noise"
    raise ValueError(f"uncertainty must be True/'full', 'noise' or False/'none', got {value!r}")


def _auto_radius(spacing_nm, interior) -> float:
    """Kernel radius (cells) spanning ~AUTO_RADIUS_NM, shrunk until a kernel fits in the nucleus."""
    from ..mollifier.kernels import halo as kernel_halo

    lo, hi = AUTO_RADIUS_CELLS
    r = float(np.clip(round(AUTO_RADIUS_NM / spacing_nm), lo, hi))
    while r > lo:
        h = kernel_halo(r)
        if footprint_inside(interior, h).any():
            break
        r -= 1.0
    return r


def _check_euchromatin(phi_h, phi_e, interior, source):
    h, e = phi_h[interior], phi_e[interior]
    total = float(np.sum(np.clip(h, 0, None)) + np.sum(np.clip(e, 0, None)))
    share = float(np.sum(np.clip(e, 0, None))) / total if total > 0 else 0.0
    if share < MIN_EUCHROMATIN_SHARE:
        raise InputError(f"almost no euchromatin inside the nucleus ({100 * share:.2g} % of the chromatin; "
                         f"lambda = Gamma_me / Gamma_ac needs phi_e > 0): check the euchromatin channel "
                         f"(FieldSettings.euchromatin / euchromatin_channel)", source)
    if float(np.sum(np.clip(h, 0, None))) <= 0:
        raise InputError("no heterochromatin inside the nucleus (phi_h is 0 everywhere): check the channels",
                         source)


def _noise(phi_h, phi_e, interior, fields):
    """Per-cell variances of the data, their description, a variance function and the noise's
    correlation between neighbouring cells (None when the variances were given) per channel."""
    models, variances, laws, correlations = [], [], [], []
    for name, phi in (("h", phi_h), ("e", phi_e)):
        given = getattr(fields, f"variance_{name}", None)
        if given is not None:
            given = np.asarray(given, dtype=np.float64)
            models.append({"source": "given by the fields"})
            variances.append(given)
            laws.append(lambda values, given=given: given)
            correlations.append(None)
            continue
        nm = estimate_noise(phi, interior)
        corr = noise_correlation(phi, interior)
        models.append({**nm.as_dict(), "source": "estimated from the data (3x3 high-pass)",
                       "correlation": corr.rho, "correlation2": corr.rho2, "variance_factor": corr.variance_factor,
                       "correlation_saturated": corr.saturated})
        # the variance of a cell follows its expected level, not its own noisy value
        variances.append(nm.variance(local_level(phi, interior)))
        laws.append(nm.variance)
        correlations.append(corr)
    # a floor keeps the weights finite where a channel is ~0; 1e-3 of the mean variance
    out = []
    for v, phi, info, corr in zip(variances, (phi_h, phi_e), models, correlations):
        mean = float(np.mean(v[interior])) if interior.any() else 1.0
        out.append(np.maximum(v, 1e-3 * mean + 1e-30))
        # the share counts the whole noise, also the part neighbouring cells share (which the
        # high-pass reading misses), so that it reads the same for a table and for an image
        # rendered from it (docs/inference.md, "Noise that neighbouring cells share")
        factor = corr.variance_factor if corr is not None else 1.0
        info["share"] = noise_share(phi, out[-1] * factor, interior)
        info["share_read"] = noise_share(phi, out[-1], interior)
    return out, models, laws, correlations


def noise_share(phi, variance, interior) -> float:
    """Noise over signal of one channel: the RMS noise over the spread of the data, interior cells.

    ``infer_rates`` passes the whole noise variance: the high-pass reading times the
    ``variance_factor`` of :func:`~chromflow.inverse.noise.noise_correlation` (the part
    neighbouring cells share). Measured so: 0.03 for fields with "3 %" noise (3 % of the
    spread); 0.67-0.98 (mean of the channels) for fields rendered from 1e5-2e6 localizations on 50 nm
    cells (counting noise), tables and images of the same localizations alike. Reported per
    channel in ``result.diagnostics["noise"][channel]["share"]``, and on the high-pass reading
    alone in ``["share_read"]`` (the scale of 0.3 and earlier).
    """
    if not interior.any():
        return float("nan")
    spread = float(np.std(phi[interior]))
    return float(np.sqrt(np.mean(variance[interior])) / max(spread, 1e-30))


#: the data term never trusts a cell more than noise of this share of the field's spread: with
#: noise-free or smoothed fields the estimated variance tends to 0 and the data term would drown
#: the physics (measured: correlation 0.68 instead of 0.9 on noise-free fields)
MIN_NOISE_SHARE = 0.02


#: ``fields.settings["split"]`` of fields whose ``phi_h / phi_e`` were assumed from one channel's
#: density (:func:`chromflow.fields.chromatin_fields` without ``euchromatin``), not measured
ASSUMED_SPLITS = ("density", "uniform")


def _effort(choice: str, agreement: float, noise_models, split=None) -> tuple[bool, str]:
    """Whether a network inference takes :data:`DOMAIN_SCALE_EFFORT`, and why (``effort``)."""
    if choice == "standard":
        return False, "standard (effort='standard')"
    if choice == "domain":
        return True, "domain scale (effort='domain')"
    if split in ASSUMED_SPLITS:
        # one channel: the ratio is a function of the total density, so the halves' agreement
        # reads the density's structure, not the marks'; the rule was tuned on two channels
        return False, f"auto: standard, one channel (phi_h / phi_e from the {split} rule; the effort is chosen on two)"
    shown = f"halves agree {agreement:.2f} on the ratio at the domain scale"
    if any(_correlation_saturated(m) for m in noise_models):
        # noise the model under-reads is partly shared by data-fission halves: they agree too well
        return False, f"auto: standard, noise correlated beyond the noise model ({shown}, not trusted)"
    worst = _worst_share(_sizing_shares(noise_models))
    if not np.isfinite(worst) or worst < LOW_NOISE_SHARE:
        return False, f"auto: standard, noise share {worst:.2f} < {LOW_NOISE_SHARE} (the fit runs its budget)"
    if not np.isfinite(agreement):
        # cells wider than the band (DOMAIN_BAND_MAX_CELL_UM), or too few cells deep inside
        return False, "auto: standard, no domain-scale reading (cells too wide or too few deep inside)"
    if agreement >= DOMAIN_SCALE_AGREEMENT:
        return True, f"auto: domain scale, {shown} (>= {DOMAIN_SCALE_AGREEMENT})"
    return False, f"auto: standard, {shown} (< {DOMAIN_SCALE_AGREEMENT})"


def ratio_weight(share: float, maximum: float = RATIO_WEIGHT, shares: tuple = RATIO_WEIGHT_SHARES) -> float:
    """Share of the smoothed ratio mixed into a network's map for data of this noise share.

    0 up to ``shares[0]``, rising linearly to ``maximum`` at ``shares[1]`` and staying there;
    ``maximum`` for a NaN share (noise the model could not describe, as in images smoothed after
    rendering: not low-noise). The defaults are the package's rule (:data:`RATIO_WEIGHT`,
    :data:`RATIO_WEIGHT_SHARES`); ``benchmarks/ratio_weight.py`` scores other ramps with them.

    Parameters
    ----------
    share : float
        The larger noise share of the two channels (:func:`noise_share`: 0 without noise, 1 when
        all of the cell-to-cell spread is noise).
    maximum : float
        The weight from the end of the ramp on.
    shares : (float, float)
        Noise shares where the ramp starts and ends.

    Returns
    -------
    float
        The weight ``w`` of ``rate + w (ratio - rate)``, in ``[0, maximum]``.

    Examples
    --------
    >>> [round(ratio_weight(s), 3) for s in (0.03, 0.4, 0.9, float("nan"))]
    [0.0, 0.2, 0.4, 0.4]
    """
    share = float(share)
    if not np.isfinite(share):
        return float(maximum)
    lo, hi = shares
    return float(maximum * np.clip((share - lo) / (hi - lo), 0.0, 1.0))


def _mix_in_ratio(rate, ratio, weight: float):
    """``rate + weight (ratio - rate)`` where the smoothed ratio is a plausible rate; elsewhere
    ``rate`` (a sparse half's ratio can be huge where its smoothed ``phi_e`` is near 0)."""
    lo, hi = PLAUSIBLE_RATE
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(ratio) & (ratio >= lo) & (ratio <= hi)
    return np.where(ok, rate + weight * (np.where(ok, ratio, 0.0) - rate), rate)


def _worst_share(shares) -> float:
    """The larger noise share of the channels (NaN if any is NaN: treated as not low-noise)."""
    return float(np.max(np.asarray(list(shares), dtype=float)))


def _sizing_shares(noise_models) -> list:
    """The channels' noise shares for the low-noise decisions (network size, boundary layer):
    NaN, never low-noise, for a channel whose noise correlation the model could not describe.
    Its noise is correlated further than two cells (an image smoothed after rendering, pixels
    much coarser than the grid), so even the corrected variance is a lower bound: measured on a
    held-out image of 40 nm pixels on 52 nm cells with 0.4's neighbour-only model (capped), the
    share read 0.33-0.40, the 48 x 4 network made a map of 0.51 and the default one 0.88
    (oracle smoothed ratio 0.92)."""
    return [np.nan if _correlation_saturated(m) else m.get("share", np.nan) for m in noise_models]


def _correlation_saturated(noise_model) -> bool:
    """Whether a channel's noise correlation was beyond the model
    (:attr:`~chromflow.inverse.noise.NoiseCorrelation.saturated`)."""
    return bool(noise_model.get("correlation_saturated", False))


def network_size(shares, backbone: str = "mlp") -> tuple[int, int, str]:
    """``(width, depth, reason)`` of the network for ``width="auto"``, ``depth="auto"``.

    Parameters
    ----------
    shares : sequence of float
        Noise share of each channel (:func:`noise_share`).
    backbone : str
        Only the ``"mlp"`` is sized by the noise; other backbones get the default size.

    Examples
    --------
    >>> network_size([0.03, 0.03])[:2]
    (48, 4)
    >>> network_size([0.3, 0.6])[:2]
    (32, 3)
    """
    worst = _worst_share(shares)     # NaN (no interior): the default size
    if backbone == "mlp" and np.isfinite(worst) and worst < LOW_NOISE_SHARE:
        return (*NETWORK_SIZE["low noise"], f"auto: noise share {worst:.2f} < {LOW_NOISE_SHARE}")
    return (*NETWORK_SIZE["default"], f"auto: noise share {worst:.2f}" if backbone == "mlp" else "auto")


def _data_weights(data, variances, interior):
    """Inverse variances per cell and channel (0 outside ``interior``), floored by MIN_NOISE_SHARE."""
    out = []
    for phi, var in zip(data, variances):
        floor = (MIN_NOISE_SHARE * float(np.std(phi[interior]))) ** 2 if interior.any() else 0.0
        out.append(np.where(interior, 1.0 / np.maximum(var, max(floor, 1e-30)), 0.0))
    return np.stack(out)


def _corr(a, b, cells):
    x, y = a[cells], b[cells]
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(x[ok], y[ok])[0, 1])


def _ring_mean(values, mask, radius):
    """Local mean of ``values`` over a kernel radius, within rings of equal distance to the outline.

    The error of a map grows steeply towards the nucleus edge; averaging across rings would carry
    the edge's error into the interior (measured: noise over-estimated 1.6x inside).
    """
    from ..fields import _masked_smooth, distance_to_outline

    dist = distance_to_outline(mask) + 0.5      # the outermost cells are at 1
    out = np.zeros(mask.shape)
    vals = np.where(mask, np.nan_to_num(values, nan=0.0), 0.0)
    for lo, hi in zip(_RING_EDGES[:-1], _RING_EDGES[1:]):
        ring = mask & (dist > lo) & (dist <= hi)
        if ring.any():
            out[ring] = _masked_smooth(vals, ring, max(radius, 2.0))[ring]
    return out


def _fission_uncertainty(rate, plus, mask, interior, radius):
    """Noise part of the uncertainty (variance) and the split-half score from one fission refit.

    ``plus`` is the map fitted to ``X + Z``; to first order in the noise the map of the other
    half ``X - Z`` is ``2 rate - plus`` (the fitting procedure is smooth in the data), so one
    refit gives both: ``var(rate) = E[(plus - rate)^2]`` (``Z`` has the variance of the noise;
    the per-cell square, one chi^2_1 draw, is averaged by :func:`_ring_mean`) and the
    split-half correlation of ``plus`` and ``2 rate - plus``.
    """
    split_r = _corr(plus, 2.0 * rate - plus, interior)
    return _ring_mean((plus - rate) ** 2, mask, radius), split_r


def closed_form_weight(rate, closed, plus_rate, plus_closed, cells) -> float:
    """Weight ``k`` of the closed-form map in ``rate + k (closed - rate)``, from one fission refit.

    A network fit gives two readings of ``lambda``: its rate channel ``rate`` and the rate its
    fitted fields imply, ``closed = (u_h - lap(mu_d) / 2) / u_e = rate - R / (2 u_e)``. The
    rate channel is the smoother (a coordinate network's spectral bias holds it back on
    domain-scale detail); the closed form follows the fields, which carry that detail but
    also their noise. With ``r = lambda + b + n_r`` and ``c = lambda + n_c``, the ``k`` that
    minimises the mean squared error is::

        k = (b^2 + var(n_r) - cov(n_r, n_c)) / (b^2 + var(n_c - n_r))

    The noise terms come from the fission refit (``plus_rate - rate`` and ``plus_closed -
    closed`` are draws of ``n_r`` and ``n_c``), and ``b^2`` is the mean squared difference of
    the two maps beyond its noise part. Averages run over ``cells``; ``k`` is clipped to
    ``[0, 1]``.

    Parameters
    ----------
    rate, closed : ndarray (ny, nx)
        The fit's rate channel and closed-form rate.
    plus_rate, plus_closed : ndarray (ny, nx)
        The same from the fission refit at the same step.
    cells : ndarray (ny, nx) bool
        Cells to average over (the nucleus).

    Returns
    -------
    float
        ``k`` in [0, 1]; 0 when there are too few finite cells.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> truth = rng.standard_normal((40, 40))
    >>> smooth = 0.5 * truth                       # a biased, noise-free rate channel
    >>> closed = truth + 0.01 * rng.standard_normal((40, 40))
    >>> plus_closed = closed + 0.01 * rng.standard_normal((40, 40))
    >>> cells = np.ones((40, 40), bool)
    >>> round(closed_form_weight(smooth, closed, smooth, plus_closed, cells), 2)
    1.0
    """
    diff = closed - rate
    n_r, n_c = plus_rate - rate, plus_closed - closed
    ok = cells & np.isfinite(diff) & np.isfinite(n_r) & np.isfinite(n_c)
    if ok.sum() < 10:
        return 0.0
    var_d = float(np.mean((n_c - n_r)[ok] ** 2))
    bias2 = max(float(np.mean(diff[ok] ** 2)) - var_d, 0.0)
    num = bias2 + float(np.mean(n_r[ok] ** 2)) - float(np.mean((n_r * n_c)[ok]))
    den = bias2 + var_d
    return float(np.clip(num / den, 0.0, 1.0)) if den > 0 else 0.0


def _half_data(fields, phi_h, phi_e, mask, interior, variances, correlations, seed):
    """The data of the split-half refit, where it came from, and how independent the halves were.

    With ``fields.half`` (fields of one half of the localizations, split by blocks of frames),
    the half itself: ``A = X + (A - B) / 2`` is ``X`` plus the real counting noise, with its
    over-dispersion and its correlation between neighbouring cells. If the halves share noise
    (molecules seen in both, :func:`~chromflow.inverse.noise.half_independence` below
    :data:`~chromflow.inverse.noise.MIN_HALF_INDEPENDENCE`), the difference only holds the part
    they do not share, and the map would look more reproducible and more certain than it is:
    the difference is scaled up to the whole noise, ``A' = X + (A - X) / sqrt(s)``, per channel.
    Otherwise data fission: ``X + Z``, ``Z`` Gaussian noise drawn from the noise model with the
    correlation between neighbouring cells that the data show
    (:func:`~chromflow.inverse.noise.noise_correlation`: rendering and resampling make
    neighbours share noise, and ``X + Z`` and ``X - Z`` are independent only if ``Z`` shares it
    too). Without it they share the correlated part, like halves that share molecules.

    Returns ``(halves, source, info)``; ``info`` holds ``independence`` (``s`` per channel) and
    ``scale`` (the factor applied to each channel's difference, 1 for none) for localization
    halves, and is empty for fission (the correlation it used is in the noise diagnostics).
    """
    half = getattr(fields, "half", None)
    if half is not None:
        hp, ep = (np.where(mask, np.asarray(a, dtype=np.float64), 0.0) for a in half)
        if hp.shape == phi_h.shape and np.isfinite(hp[mask]).all() and np.isfinite(ep[mask]).all():
            out, shares, scales = [], [], []
            for whole, part in ((phi_h, hp), (phi_e, ep)):
                s = half_independence(whole, part, interior)
                scale = 1.0 / np.sqrt(s) if np.isfinite(s) and 0 < s < MIN_HALF_INDEPENDENCE else 1.0
                out.append(np.where(mask, whole + scale * (part - whole), 0.0) if scale != 1.0 else part)
                shares.append(float(s))
                scales.append(float(scale))
            source = "localization halves"
            if max(scales) > 1.0:
                source += (f" (they share noise, molecules seen in both: difference scaled x{scales[0]:.2f} / "
                           f"x{scales[1]:.2f} for phi_h / phi_e)")
            return tuple(out), source, {"independence": shares, "scale": scales}
    if any(c is None for c in correlations):
        # variances given with the fields: their noise is what they say, correlation unknown
        (hp, ep), _ = fission([phi_h, phi_e], variances, seed)
        return (hp, ep), "data fission (white noise of the given variances)", {}
    (hp, ep), _ = fission([phi_h, phi_e], variances, seed, correlations)
    rho = [c.rho for c in correlations]
    source = (f"data fission (noise from the noise model, correlated {rho[0]:.2f} / {rho[1]:.2f} between "
              "neighbouring cells for phi_h / phi_e, and as the data show between cells two apart)")
    return (hp, ep), source, {}


def _bootstrap_data(rate, fit_h, fit_e, mask, spacing_um, model, noise_laws, seed):
    """Data simulated from the fitted map: the steady state of ``rate`` with the fitted total
    chromatin, plus noise drawn from the noise model (a parametric bootstrap)."""
    from ..simulate.chromatin import chromatin_steady_state

    fill = float(np.nanmedian(rate[mask]))
    lam = np.where(mask, np.clip(np.nan_to_num(rate, nan=fill), 1e-2, 1e2), 1.0)
    total = np.where(mask, np.clip(np.nan_to_num(fit_h + fit_e, nan=0.5), 1e-3, 0.95), 0.5)
    h, e = chromatin_steady_state(lam, total, mask, spacing_um=spacing_um, model=model, max_steps=200)
    rng = np.random.default_rng(seed)
    out = []
    for clean, law in zip((h, e), noise_laws):
        var = np.clip(np.asarray(law(clean), dtype=np.float64), 0.0, None)
        out.append(np.where(mask, clean + np.sqrt(var) * rng.standard_normal(mask.shape), 0.0))
    return lam, out


def _total_uncertainty(rate, noise_var, boot_rate, boot_truth, mask, interior, radius, inflation, floor=0.0,
                       mix_shift=0.0):
    """Noise and bias parts of the uncertainty from the bootstrap refit (see docs/inference.md).

    The refit's error ``boot_rate - boot_truth`` holds the noise and the smoothing bias *for a
    truth as smooth as the fitted map*; a real map is rougher, so its bias is larger. The
    bias part is the bootstrap's excess over the noise, scaled by :data:`BIAS_INFLATION`
    (calibrated on tuning seeds of ``chromflow.simulate``, checked on the independent simulator
    of ``benchmarks/_heldout.py``), plus ``floor**2`` times the noise part
    (:data:`MODEL_ERROR_FLOOR`): error that follows the noise but that fission does not show.
    ``inflation`` and ``floor`` may be per-cell arrays (the edge-bias zone has its own,
    :data:`EDGE_BIAS_INFLATION` and :data:`EDGE_MODEL_ERROR_FLOOR`). ``mix_shift``: how far the
    smoothed-ratio mix moved each cell from the network's own map (:func:`uncertainty_variance`).
    """
    excess = bootstrap_excess(noise_var, boot_rate, boot_truth, mask, radius)
    x, y = boot_truth[interior], boot_rate[interior]
    ok = np.isfinite(x) & np.isfinite(y)
    slope = float(np.cov(x[ok], y[ok])[0, 1] / np.var(x[ok], ddof=1)) if ok.sum() > 2 and np.var(x[ok]) > 0 else 1.0
    total = uncertainty_variance(noise_var, excess, inflation, floor, mix_shift)
    bias2 = total - noise_var
    share = float(np.nanmean(bias2[interior]) / max(float(np.nanmean(total[interior])), 1e-300))
    return np.sqrt(total), slope, share


def _share_of_variance(part, unc, cells) -> float:
    """Mean of ``part`` over the mean of ``unc**2`` on ``cells`` (NaN-safe)."""
    total = float(np.nanmean(unc[cells] ** 2)) if cells.any() else float("nan")
    return float(np.nanmean(part[cells]) / total) if np.isfinite(total) and total > 0 else float("nan")


def bootstrap_excess(noise_var, boot_rate, boot_truth, mask, radius):
    """The bootstrap refit's squared error beyond the noise part, averaged within rings."""
    err2 = _ring_mean((boot_rate - boot_truth) ** 2, mask, radius)
    return np.clip(err2 - noise_var, 0.0, None)


def uncertainty_variance(noise_var, excess, inflation, floor=0.0, mix_shift=0.0):
    """The error model: ``(1 + floor^2) noise_var + inflation^2 excess + mix_shift^2`` (variance
    per cell; every argument a number or a per-cell array).

    ``inflation`` and ``floor`` were calibrated for the network's own map. ``mix_shift`` is how
    far the smoothed-ratio mix (``ratio_weight``) moved each cell from it, ``w (ratio - map)``:
    a known displacement of the interval's centre, added in quadrature (since 0.9).

    Examples
    --------
    >>> float(uncertainty_variance(1.0, 0.5, 2.0, 0.5, mix_shift=0.5))
    3.5
    """
    return (1.0 + floor ** 2) * noise_var + inflation ** 2 * excess + np.square(mix_shift)


#: distances (cells) from the outline that bound the rings of :func:`_fission_uncertainty`
_RING_EDGES = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 11.0, 15.0, 20.0, np.inf)


def _flags(rate, mask, interior, split_r, edge, shares=(), ratio_r=float("nan"), shares_read=(), saturated=()):
    flags = []
    lam = rate[mask]
    lam = lam[np.isfinite(lam)]
    if lam.size and (lam <= 0).any():
        flags.append(f"negative or zero lambda in {100 * np.mean(lam <= 0):.1f} % of the nucleus "
                     "(the data do not fit the model there)")
    lo, hi = PLAUSIBLE_RATE
    absurd = (lam > 0) & ((lam < lo) | (lam > hi))
    if lam.size and absurd.any():
        flags.append(f"implausible lambda (outside {lo:g}-{hi:g}) in {100 * np.mean(absurd):.1f} % of the nucleus")
    if np.isfinite(split_r) and split_r < LOW_REPRODUCIBILITY:
        flags.append(f"low reproducibility: the maps of two halves of the data correlate {split_r:.2f} "
                     f"(< {LOW_REPRODUCIBILITY}): the map is dominated by noise")
    if edge.sum() > 0.5 * mask.sum():
        flags.append(f"{100 * edge.sum() / mask.sum():.0f} % of the nucleus is edge band: little data to fit")
    if np.isfinite(ratio_r) and ratio_r < MIN_RATIO_AGREEMENT:
        flags.append(f"the map runs against phi_h/phi_e (correlation {ratio_r:.2f} with the smoothed ratio): lambda "
                     "is set by the model's transport term, not by the marks (are the data a nucleus with both "
                     "marks?)")
    share = float(np.mean(shares)) if len(shares) else float("nan")
    read = float(np.mean(shares_read)) if len(shares_read) else float("nan")
    why = None
    if np.isfinite(share) and share >= SPARSE_NOISE_SHARE:
        why = f"{share:.2f} of the fields' spread (>= {SPARSE_NOISE_SHARE})"
    elif np.isfinite(read) and read >= SPARSE_NOISE_SHARE_READ:
        why = (f"{share:.2f} of the fields' spread ({read:.2f} on the high-pass reading alone, "
               f">= {SPARSE_NOISE_SHARE_READ})")
    if why is not None:
        flags.append(f"sparse data: the cell-to-cell counting scatter is {why}: at this noise the map beat a "
                     "smoothed phi_h/phi_e tuned on the truth on 8 of 13 benchmark nuclei and lost by up to 0.02 "
                     "on the others, read it beside the smoothed "
                     "phi_h/phi_e that needs no physics (result.ratio, the file <stem>_ratio.tif, docs/inference.md)")
    if any(saturated):
        flags.append("correlated noise: the noise is correlated further than two grid cells (beyond what the "
                     f"noise model describes, or a variance factor over {MAX_VARIANCE_FACTOR:g}), as when pixels "
                     "are much coarser than the grid or an image was smoothed after rendering. It is under-read, "
                     "so the uncertainty and the quality score may be optimistic. Use grid cells wider than the "
                     "image's pixels (a coarser grid), the raw rendering, or the localization table "
                     "(docs/inference.md, 'Noise that neighbouring cells share')")
    return flags


def infer_rates(fields, method: str = "pinn", device="auto", seed: int = 0, iterations: int | None = None,
                radius: float | None = None, backbone: str = "mlp", optimizer: str = "adam",
                ensemble: int | None = None, uncertainty: bool | None = None, progress: ProgressCallback = None,
                cancel: CancelToken = None, model: ChromatinModel = ChromatinModel(), **options) -> RateMapResult:
    """Infer the epigenetic rate map ``lambda(y, x) = Gamma_me / Gamma_ac`` from chromatin fields.

    Parameters
    ----------
    fields : ChromatinFields
        ``phi_h``, ``phi_e`` (volume fractions on a ``(ny, nx)`` grid), ``mask`` (nucleus),
        ``spacing`` (nm per cell), ``origin`` (nm), ``source``; optional ``edge`` (bool, the
        partial-volume band, see :func:`chromflow.chromatin_fields`), ``variance_h``,
        ``variance_e`` (per-cell noise variances; estimated from the data when absent) and
        ``half`` (``(phi_h, phi_e)`` of one half of the localizations, for the split-half refit).
    method : {"pinn", "direct", "autodiff"}
        Mollified physics-informed network (default), closed form on mollified data
        derivatives, or the network with autograd derivatives (the paper's baseline).
    device : {"auto", "cpu", "cuda"} or torch.device
        ``"auto"`` takes CUDA when available. The direct method always runs on CPU.
    seed : int
        Seed of every random step (network start, held-out cells, data fission).
    iterations : int, optional
        Most optimiser steps per fit (default ``DEFAULTS[method]["iterations"]``, 1000, or 2000
        with the larger ``effort``); the fit
        usually stops earlier, at the step chosen from the split-half refit's misfit to the other
        half (or, without the uncertainty, on held-out cells).
    radius : float or "auto", optional
        Mollifier support radius in grid cells. Default 3 for the networks (their own
        smoothness regularises); ``"auto"`` for direct: about 400 nm (the reaction-diffusion
        length) in cells, within 3-12 and small enough for the nucleus.
    backbone : {"mlp", "fourier", "piratenet", "grid"}
        Coordinate network, or ``"grid"``: free values per cell (no network).
    optimizer : {"adam", "soap"}
    ensemble : int, optional
        Number of fits with different seeds averaged into ``rate`` (default 1, or 3 with the
        larger ``effort``; the others are read at the first one's step). The split-half
        refit shares its start with the first; the mixing weight, ``split_half_r`` and the noise
        part of the uncertainty come from that pair (one fit's noise: an upper bound).
    uncertainty : bool, optional
        Refit a half of the data (``fields.half``, else a data-fission draw) and a parametric
        bootstrap for the ``uncertainty`` map and the ``split_half_r`` quality score (default
        True; about twice the time of a fit on 2 cores: ~15 s for a rendered 128^2 nucleus).
    progress, cancel
        The chromflow progress/cancel protocol.
    model : ChromatinModel
        Model parameters (``phi_max``, interface length in um).
    **options
        ``edge`` (``"auto"``: ``fields.edge``, or when the fields have none, the band measured
        on their total chromatin like :func:`chromflow.fields.partial_volume_width`, at least
        ``chromflow.fields.MIN_EDGE_BAND_NM``; a width in nm; 0; or a bool array), ``held_out``
        (share of cells held out for stopping, default 0.1), ``check_every``, ``patience``
        (stopping: checks without improvement), ``lr``, ``residual_weight``, ``width``,
        ``depth``, ``blocks``, ``fourier_scale``, ``kernel``, ``log_every``, ``dtype``
        (``"float64"`` or ``"float32"``), ``boundary_layer`` (networks; default True: correct
        the map near the outline for the envelope's transport layer where the data show it,
        :func:`chromflow.inverse.boundary.boundary_layer_correction`), ``effort`` (networks;
        ``"auto"``: :data:`DOMAIN_SCALE_EFFORT`, 2000 steps and an ensemble of 3, for noisy data
        whose halves agree on the ratio at the domain scale,
        :func:`chromflow.evaluate.domain_scale_reproducibility` >= :data:`DOMAIN_SCALE_AGREEMENT`,
        which needs cells of at most 150 nm and two measured channels (fields split from one
        channel's density keep the standard effort); ``"standard"``; ``"domain"``; ``iterations`` and ``ensemble`` given here stay),
        ``ratio_weight`` (networks; ``"auto"``, the default: :func:`ratio_weight` of the
        noise share, 0 on low-noise fields and 0.4 on rendered counting data; or a number in
        [0, 1]: the share ``w`` of the smoothed ratio ``ratio`` mixed into the map, ``rate + w
        (ratio - rate)``, with the same share in the split-half refit and the bootstrap, so the
        quality score and the uncertainty are the mixed map's; cells where the ratio is not
        finite or outside :data:`PLAUSIBLE_RATE` keep the network's value; docs/inference.md,
        "Mixing in the smoothed ratio"). Reported in
        ``diagnostics["training"]["ratio_weight"]``).

    Returns
    -------
    RateMapResult
        ``diagnostics`` holds the noise model, the stopping point, ``split_half_r``, flags and
        (networks) ``boundary_layer``: whether the edge correction was applied, its weight and
        ring profile.

    Raises
    ------
    ValueError
        Unknown method, device, backbone, optimizer or option.
    GridError
        Mask too small for the kernel, or all of it edge band.
    InputError
        Bad fields; no euchromatin inside the nucleus.
    CancelledError
        ``cancel`` was set.

    Examples
    --------
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> m = np.zeros((32, 32), bool); m[4:28, 4:28] = True
    >>> f = SimpleNamespace(phi_h=np.full((32, 32), 0.3), phi_e=np.full((32, 32), 0.2), mask=m,
    ...                     spacing=50.0, origin=(0.0, 0.0), source=None)
    >>> r = infer_rates(f, method="direct", radius=3, uncertainty=False)
    >>> round(float(np.nanmedian(r.rate)), 9)  # uniform fields: lambda = phi_h / phi_e
    1.5
    """
    start = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    dev = resolve_device(device)
    phi_h, phi_e, mask, spacing, origin, source = _unpack(fields)
    spacing_um = spacing / 1000.0
    opts = dict(DEFAULTS[method])
    known = set(opts) | {"radius", "kernel"}
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for method {method!r}; known: {sorted(known)}")
    opts.update(options)
    if radius is not None:
        opts["radius"] = float(radius)
    opts.setdefault("radius", DEFAULTS["pinn"]["radius"])
    opts.setdefault("kernel", DEFAULTS["pinn"]["kernel"])
    if iterations is not None:
        opts["iterations"] = int(iterations)
    if ensemble is not None:
        opts["ensemble"] = int(ensemble)
    if method != "direct" and opts["effort"] not in EFFORTS:
        raise ValueError(f"effort must be one of {list(EFFORTS)}, got {opts['effort']!r}")
    if uncertainty is not None:
        opts["uncertainty"] = uncertainty
    opts["uncertainty"] = _uncertainty_mode(opts["uncertainty"])
    opts.update(backbone=str(backbone).lower(), optimizer=str(optimizer).lower())
    from ..models import BACKBONES
    from ..training import OPTIMIZERS

    if opts["backbone"] not in set(BACKBONES) | {"grid"}:
        raise ValueError(f"backbone must be one of {sorted(set(BACKBONES) | {'grid'})}, got {backbone!r}")
    if opts["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
    if "ratio_weight" in opts and opts["ratio_weight"] != "auto" and not 0 <= float(opts["ratio_weight"]) <= 1:
        raise ValueError(f"ratio_weight must be 'auto' or a number in [0, 1], got {opts['ratio_weight']!r}")
    if not 0 <= float(opts["held_out"]) < 0.5:
        raise ValueError(f"held_out must be in [0, 0.5), got {opts['held_out']}")
    from ..mollifier.kernels import halo as kernel_halo

    edge, edge_source = _edge_band(fields, mask, spacing, opts.pop("edge"), source)
    interior = mask & ~edge
    if not interior.any():
        raise GridError(f"all {int(mask.sum())} cells of the nucleus are in the edge band: no data to fit "
                        "(a nucleus too small for the grid, or an edge band set too wide)", source)
    if opts["radius"] == "auto":
        opts["radius"] = _auto_radius(spacing, interior)
    opts["radius"] = float(opts["radius"])
    halo = kernel_halo(opts["radius"])
    settings = {"method": method, "seed": int(seed), "device": str(dev), **opts,
                "edge": edge_source, "model": {"phi_max": model.phi_max, "length_um": model.length_um},
                "spacing_nm": spacing}
    if method != "autodiff":
        # a sanity bound for tiny nuclei: the kernel must fit somewhere in the nucleus (the fits
        # themselves need no footprint inside: the network continues the fields, direct the mask)
        _check_mask_fits(mask, halo, source, method)
    elif interior.sum() < 4:
        raise GridError(f"nucleus interior of {int(interior.sum())} cells is too small to fit", source)
    _check_euchromatin(phi_h, phi_e, interior, source)
    check_cancel(cancel, "rate inference")
    variances, noise_models, noise_laws, correlations = _noise(phi_h, phi_e, interior, fields)
    diagnostics = {"noise": {"phi_h": noise_models[0], "phi_e": noise_models[1]}, "edge_cells": int(edge.sum())}
    if method != "direct" and "auto" in (opts["width"], opts["depth"]):
        width, depth, why = network_size(_sizing_shares(noise_models), opts["backbone"])
        if any(_correlation_saturated(m) for m in noise_models) and opts["backbone"] == "mlp":
            why += " (noise correlated further than two cells: not treated as low-noise)"
        opts["width"] = width if opts["width"] == "auto" else int(opts["width"])
        opts["depth"] = depth if opts["depth"] == "auto" else int(opts["depth"])
        settings.update(width=opts["width"], depth=opts["depth"], network_size=why)
    split = (getattr(fields, "settings", None) or {}).get("split")
    if split is not None:
        # how phi_h / phi_e were obtained: measured (two channels) or assumed (density rule)
        diagnostics["split"] = str(split)
    out = (lambda a: np.where(mask, a, np.nan))
    half = None                # the data of the split-half refit
    single = None              # the one fit the split-half refit is compared with (None: the map)
    network_rate = None        # a network's own map, before the smoothed ratio is mixed in
    # two halves of the data: the split-half refit (with uncertainty) and, always, the width of
    # the baseline without physics, the smoothed ratio (``result.ratio``)
    halves, halves_source, halves_info = _half_data(fields, phi_h, phi_e, mask, interior, variances, correlations,
                                                    seed + 10_000)
    if halves_info:
        diagnostics["halves"] = halves_info     # where they came from: diagnostics["ratio"]["halves"]
    if opts["uncertainty"] != "none":
        half, diagnostics["split_half"] = halves, halves_source
    ratio = cross_validated_ratio(phi_h, phi_e, mask, *halves)
    diagnostics["ratio"] = {"sigma_cells": ratio.sigma_cells, "sigma_half_cells": ratio.sigma_half_cells,
                            "halves": halves_source}
    if method != "direct":
        agreement = domain_scale_reproducibility(phi_h, phi_e, mask, *halves, spacing_um)
        larger, why = _effort(opts.pop("effort"), agreement, noise_models, split)
        for key, value in DOMAIN_SCALE_EFFORT.items():
            # what the caller set explicitly stays
            if larger and {"iterations": iterations, "ensemble": ensemble}[key] is None:
                opts[key] = value
        diagnostics["effort"] = {"domain_scale_agreement": agreement, "larger": larger, "reason": why,
                                 "iterations": int(opts["iterations"]), "ensemble": int(opts["ensemble"])}
        settings.update(iterations=opts["iterations"], ensemble=opts["ensemble"], effort=why)

    if method == "direct":
        fit = _direct(phi_h, phi_e, mask, interior, spacing_um, opts, model)
        plus = None if half is None else _direct(*half, mask, interior, spacing_um, opts, model)["rate"]
        steps = 2 if opts["uncertainty"] == "full" else 1
        report(progress, 1, steps, "direct rate estimate")
        rate, res, hf, ef, training = fit["rate"], fit["residual"], fit["phi_h"], fit["phi_e"], {}
        history, device_used = {}, "cpu"
    else:
        rate, closed, res, hf, ef, history, training, plus, first = _network_fits(
            method, phi_h, phi_e, variances, mask, interior, spacing_um, opts, model, seed, dev, progress, cancel,
            half)
        weight = 0.0
        if plus is not None:
            # the rate channel and the closed form of the fitted fields, mixed by their
            # expected error (needs the split-half refit; without it the rate channel). The
            # refit is compared with the fit that shares its start (the first of an ensemble):
            # the other members differ from it by their own start, which is not noise of the data
            weight = closed_form_weight(first[0], first[1], plus[0], plus[1], mask)
            mixed = rate + weight * (closed - rate)
            res = res + 2.0 * (mixed - rate) * ef     # the residual of the reported map
            rate, plus = mixed, plus[0] + weight * (plus[1] - plus[0])
            single = first[0] + weight * (first[1] - first[0])
        training["closed_form_weight"] = weight
        worst_share = _worst_share(_sizing_shares(noise_models))
        # the network's own map, before the smoothed ratio is mixed in: the flag "runs against
        # phi_h/phi_e" asks whether the physics disagrees with the ratio, which the mixing would hide
        network_rate = rate
        w_ratio = ratio_weight(worst_share) if opts["ratio_weight"] == "auto" else float(opts["ratio_weight"])
        if w_ratio > 0:
            rate = _mix_in_ratio(rate, ratio.rate, w_ratio)
            res = res + 2.0 * (rate - network_rate) * ef      # the residual of the reported map
            if plus is not None:
                # the split-half refit's map gets the ratio of the same half at the same width
                plus_ratio = smoothed_ratio(half[0], half[1], mask, ratio.sigma_cells)
                plus, single = _mix_in_ratio(plus, plus_ratio, w_ratio), _mix_in_ratio(single, ratio.rate, w_ratio)
        training["ratio_weight"] = w_ratio
        diagnostics["ratio"]["network_map_r"] = rate_correlation(network_rate, ratio.rate, mask)
        if opts["boundary_layer"] and not worst_share < LOW_NOISE_SHARE:
            # rendered counting data: their near-outline transport is dominated by what the
            # model lacks (render blur, correlated counting noise), which the ring profile's
            # noise estimate does not see (measured: domain-scale, 3e6 localizations, -0.12)
            diagnostics["boundary_layer"] = {
                "applied": False, "weight": 0.0,
                "reason": f"noise share {worst_share:.2f} not below {LOW_NOISE_SHARE}: too noisy to read the layer"}
        elif opts["boundary_layer"]:
            # the envelope's transport layer, which the network's fields are too smooth to carry
            # (module chromflow.inverse.boundary); zero unless the data show it above their noise
            shift, diagnostics["boundary_layer"] = boundary_layer_correction(
                phi_h, phi_e, hf, ef, mask, interior, spacing, float(opts["radius"]), opts["kernel"], model)
            # applied to the map at the end: the quality score and the uncertainty's noise and
            # bootstrap parts are those of the fit (a shift common to both halves would raise
            # their correlation without making the map any more reproducible)
        device_used = str(dev)
    unc = np.full(mask.shape, np.nan)
    split_r = float("nan")
    if plus is not None:
        # networks: the member that shares the refit's start (with one fit, the map itself); the
        # noise part is then that of one fit, an upper bound for an ensemble's mean
        noise_var, split_r = _fission_uncertainty(rate if single is None else single, plus, mask, interior,
                                                  float(opts["radius"]))
        diagnostics["split_half_r"] = split_r
        unc = np.where(mask, np.sqrt(noise_var), np.nan)
    if plus is not None and opts["uncertainty"] == "full":
        check_cancel(cancel, "rate inference: uncertainty")
        truth, (bh, be) = _bootstrap_data(rate, hf, ef, mask, spacing_um, model, noise_laws, seed + 20_000)
        if method == "direct":
            boot = _direct(bh, be, mask, interior, spacing_um, opts, model)["rate"]
            report(progress, 2, 2, "uncertainty: bootstrap refit")
        else:
            boot_rate, boot_closed = _refit(method, np.stack([bh, be]), variances, mask, interior, spacing_um, opts,
                                            model, seed, dev, training, progress, cancel)
            boot = boot_rate + training["closed_form_weight"] * (boot_closed - boot_rate)
            if training["ratio_weight"] > 0:
                boot_ratio = smoothed_ratio(bh, be, mask, ratio.sigma_cells)
                boot = _mix_in_ratio(boot, boot_ratio, training["ratio_weight"])
        # the error model's two factors differ between the deep cells and the edge-bias zone
        zone = edge_bias_zone(mask, spacing)
        # the zone's larger factors cover the envelope layer's bias; the boundary-layer
        # correction takes out the share ``weight`` of it, and that share of the zone's cells
        # gets the deep cells' error model
        taken = float(diagnostics.get("boundary_layer", {}).get("weight", 0.0))     # networks only
        edge_inflation = (1.0 - taken) * EDGE_BIAS_INFLATION[method] + taken * BIAS_INFLATION[method]
        edge_floor = (1.0 - taken) * EDGE_MODEL_ERROR_FLOOR[method] + taken * MODEL_ERROR_FLOOR[method]
        inflation = np.where(zone, edge_inflation, BIAS_INFLATION[method])
        floor = np.where(zone, edge_floor, MODEL_ERROR_FLOOR[method])
        # the error model was built for the network's own map; the ratio mix moved each cell by
        # a known amount, added in quadrature (docs/inference.md, "The ratio mix in the uncertainty")
        mix_shift = np.zeros(mask.shape) if network_rate is None else np.nan_to_num(rate - network_rate)
        unc, slope, bias_share = _total_uncertainty(rate, noise_var, boot, truth, mask, interior,
                                                    float(opts["radius"]), inflation, floor, mix_shift)
        diagnostics["uncertainty"] = {"bootstrap_slope": slope, "bias_share_of_variance": bias_share,
                                      "ratio_mix_share_of_variance": _share_of_variance(mix_shift ** 2, unc, interior),
                                      "bias_inflation": BIAS_INFLATION[method],
                                      "model_error_floor": MODEL_ERROR_FLOOR[method],
                                      "edge_bias_inflation": edge_inflation,
                                      "edge_model_error_floor": edge_floor,
                                      "edge_zone_cells": int(zone.sum())}
    if diagnostics.get("boundary_layer", {}).get("applied"):
        rate = rate - shift
        res = res - 2.0 * shift * ef          # the residual of the reported map
    diagnostics["training"] = training
    # networks recorded their own map's agreement before the mix; direct's map is its own
    ratio_r = diagnostics["ratio"].get("network_map_r")
    if ratio_r is None:
        ratio_r = rate_correlation(rate, ratio.rate, mask)
    diagnostics["flags"] = _flags(rate, mask, interior, split_r, edge,
                                  [m["share"] for m in noise_models if np.isfinite(m.get("share", np.nan))],
                                  ratio_r,
                                  [m["share_read"] for m in noise_models if np.isfinite(m.get("share_read", np.nan))],
                                  [_correlation_saturated(m) for m in noise_models])
    settings["training"] = training
    return RateMapResult(rate=out(rate), uncertainty=out(unc), residual=out(res), phi_h=out(hf), phi_e=out(ef),
                         ratio=out(ratio.rate), mask=mask, edge=edge, spacing=spacing, origin=origin, loss_history=history,
                         settings=_jsonable(settings), timing=time.perf_counter() - start, device=device_used,
                         method=method, source=source, diagnostics=_jsonable(diagnostics))


@contextlib.contextmanager
def _parallel_threads(device, fits: int):
    """Share the CPU's torch threads between ``fits`` fits running at the same time."""
    if device.type != "cpu" or fits < 2:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, before // fits))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _direct(phi_h, phi_e, mask, interior, spacing_um, opts, model):
    lam, (h, e), _ = direct_rates(phi_h, phi_e, interior, spacing_um, opts["radius"], opts["kernel"], model,
                                  out_mask=mask)
    with np.errstate(invalid="ignore"):
        res = steady_state_residual(h, e, np.nan_to_num(lam), model)
    return {"rate": lam, "residual": res, "phi_h": h.value, "phi_e": e.value}


def _held_out_cells(interior, opts, seed):
    """The random share ``held_out`` of the interior cells kept out of the data term (seeded)."""
    rng = np.random.default_rng(seed)
    return interior & (rng.random(interior.shape) < float(opts["held_out"]))


def _refit(method, data, variances, mask, interior, spacing_um, opts, model, seed, dev, training, progress, cancel):
    """The network procedure again on other data: same start, weights, cells and number of steps."""
    from .fit import fit_fields

    dtype = {"float64": torch.float64, "float32": torch.float32}[str(opts["dtype"])]
    held = _held_out_cells(interior, opts, seed)
    weights = _data_weights(data, variances, interior)
    out = fit_fields(method, data, weights, interior & ~held, np.zeros_like(held), mask=mask, spacing_um=spacing_um,
                     opts=opts, model=model, seed=seed, device=dev, dtype=dtype, cancel=cancel, progress=progress,
                     progress_span=_bootstrap_span(opts), iterations=int(training["best_iteration"]) + 1,
                     message=f"{method} uncertainty: bootstrap refit")
    bar = _bootstrap_span(opts)[2]
    report(progress, bar, bar, f"{method} uncertainty: bootstrap refit")
    return out.rate, out.closed


def _bar_total(opts):
    """Steps of one progress bar for a network inference: the fits, then the bootstrap refit."""
    iters = int(opts["iterations"])
    return (max(int(opts["ensemble"]), 1) + (1 if opts["uncertainty"] == "full" else 0)) * iters


def _bootstrap_span(opts):
    iters = int(opts["iterations"])
    return (_bar_total(opts) - iters, iters, _bar_total(opts))


def _more_members(method, data, weights, fit_cells, held, seed, step, n_members, iters, bar, common):
    """Ensemble members ``2..n`` (seeds ``seed + 1, ...``), each read at the first member's step.

    The step is the one the data chose for the first fit (the split-half refit's misfit to the
    other half, else its held-out cells), so every member is stopped by the same honest check,
    and none needs its own. They run two at a time (a core each on the CPU); on each member's
    own schedule, so that it is the first fit's procedure from another start.
    """
    from .fit import StopSignal, fit_fields

    at = StopSignal()
    at.set(step)
    dev = common["device"]
    pairs = [list(range(k, min(k + 2, n_members))) for k in range(1, n_members, 2)]
    out = []
    for pair in pairs:
        def one(k, lead):
            # one progress bar per pair (the callbacks need not be thread-safe): the first member
            # reports over both members' share of the bar
            span = (pair[0] * iters, len(pair) * iters, bar) if lead else (0, 1, 1)
            return fit_fields(method, data, weights, fit_cells, held, seed=seed + k, progress_span=span,
                              message=f"{method} fits {pair[0] + 1}-{pair[-1] + 1}/{n_members}", stop_event=at,
                              follow=True, **{**common, "progress": common["progress"] if lead else None})

        with _parallel_threads(dev, len(pair)):
            if len(pair) == 1:
                out.append(one(pair[0], True))
                continue
            with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
                futures = [pool.submit(one, k, i == 0) for i, k in enumerate(pair)]
                out += [f.result() for f in futures]
    return out


def _network_fits(method, phi_h, phi_e, variances, mask, interior, spacing_um, opts, model, seed, dev,
                  progress, cancel, half=None):
    from .fit import StopSignal, fit_fields

    dtype = {"float64": torch.float64, "float32": torch.float32}.get(str(opts["dtype"]))
    if dtype is None:
        raise ValueError(f"dtype must be 'float64' or 'float32', got {opts['dtype']!r}")
    held = _held_out_cells(interior, opts, seed)
    fit_cells = interior & ~held
    data = np.stack([phi_h, phi_e])
    weights = _data_weights(data, variances, interior)
    n_members = max(int(opts["ensemble"]), 1)
    iters = int(opts["iterations"])
    bar = _bar_total(opts)
    common = dict(mask=mask, spacing_um=spacing_um, opts=opts, model=model, device=dev, dtype=dtype,
                  progress=progress, cancel=cancel)
    # the split-half refit (:func:`_half_data`) is the same procedure on the half: same start
    # (seed), weights and cells, so that the two differ only through the data. It runs beside
    # the first fit (a second core, or the GPU's idle time) and leads: its misfit to the other
    # half (2 X - half), whose noise is independent of the half's, chooses the step of both, an
    # honest check even where the noise of neighbouring cells correlates (held-out cells of the
    # same data are not)
    companion = half is not None
    stop = StopSignal()
    members, plus = [], None
    with _parallel_threads(dev, 2 if companion else 1):
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            side = None
            if companion:
                def lead():
                    try:
                        return fit_fields(method, np.stack(half), weights, fit_cells, np.zeros_like(held), seed=seed,
                                          keep_checkpoints=True, stop_event=stop, follow=False,
                                          validate=np.stack([2.0 * phi_h - half[0], 2.0 * phi_e - half[1]]),
                                          message=f"{method} fit (split half)", **{**common, "progress": None})
                    finally:
                        stop.abandon()                # failed or cancelled: let the main fit end

                side = pool.submit(lead)
            try:
                members.append(fit_fields(method, data, weights, fit_cells, held, seed=seed,
                                          progress_span=(0, iters, bar), message=f"{method} fit 1/{n_members}",
                                          stop_event=stop, follow=companion, **common))
            finally:
                stop.abandon()                 # failed or cancelled: let the companion end
            if side is not None:
                fitted = side.result()
    first = members[0]
    if n_members > 1:
        members += _more_members(method, data, weights, fit_cells, held, seed, first.best_iteration, n_members,
                                 iters, bar, common)
    rate = np.mean([m.rate for m in members], axis=0)
    closed = np.mean([m.closed for m in members], axis=0)
    if companion:
        # the companion read at the main fit's step; if it stopped before, its last state
        at = first.best_iteration if first.best_iteration in fitted.checkpoints else max(fitted.checkpoints)
        plus = fitted.checkpoint_maps(at)
    report(progress, n_members * iters, bar, f"{method} fits done")
    res = first.residual
    if n_members > 1:
        res = res + 2 * (rate - first.rate) * first.phi_e
    training = {"iterations_run": first.iterations_run, "best_iteration": first.best_iteration,
                "stop_reason": first.stop_reason, "held_out_cells": int(held.sum()),
                "held_out_misfit": first.held_out_misfit,
                "final_data_misfit": first.losses["data"][-1] if first.losses["data"] else float("nan")}
    if n_members > 1:
        # every member read at the first one's step (:func:`_more_members`)
        training["members_iterations_run"] = [int(m.iterations_run) for m in members]
    if companion:
        # the step came from the split-half refit's misfit to the other half
        training.update(stop_reason=f"split half: {fitted.stop_reason}", stopping="misfit to the other half",
                        other_half_misfit=fitted.held_out_misfit)
    else:
        training["stopping"] = "held-out cells"
    return rate, closed, res, first.phi_h, first.phi_e, first.losses, training, plus, (first.rate, first.closed)
