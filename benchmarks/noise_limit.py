"""Where an end-to-end map loses its accuracy: the counting noise, the transport, or both.

For end-to-end cases of ``accuracy.py`` (a simulated nucleus of the held-out simulator, labelled,
written as a ThunderSTORM file and read by the pipeline), prints per nucleus the correlation with
the true lambda of estimators that are each given something the data do not have:

* ``ratio`` / ``direct`` / ``potential``: the oracle smoothed ratio, the oracle best-radius
  direct inversion and the oracle smooth-potential closed form on the data (as ``accuracy.py``;
  widths and radius tuned on the truth);
* ``noise-free ratio`` / ``noise-free potential``: the same two oracles on the *noise-free*
  fields on the same grid (the simulator's 10 nm fields averaged over each grid cell): what the
  transport alone costs each of them, with no counting noise;
* ``truth + data error``: the true lambda plus the data ratio's error (``phi_h / phi_e`` of the
  data minus that of the noise-free fields, scaled to the same mean), smoothed by the best
  Gaussian: what the counting noise (with blinking, background, blur, normalisation) would cost
  if the ratio *were* lambda, i.e. with no transport to undo;
* ``linear, ratio`` / ``linear, 2 channels``: the best linear, shift-invariant, isotropic filter
  of the data, fitted on the truth by least squares. Its transfer function is any piecewise
  linear function of ``|k|`` on :data:`KNOTS` (a combination of hat functions), applied to the
  ratio linearised around broad means of the channels (so that it is linear in the noise), or
  one such filter per channel. The fit is **cross-fitted**, so that it is no in-sample number:
  the nucleus is cut into :data:`FOLDS` blocks of columns, each block is predicted by the
  filter fitted on the others, and the correlation is taken over all predictions. For a Gaussian random rate observed linearly
  under Gaussian noise, the posterior mean is such a filter. The simulator's ``log lambda`` is a
  Gaussian random field with sd 0.4, so its rate is nearly Gaussian. These columns therefore
  estimate what *any* estimator could reach on these data, as far as the rate is near-Gaussian,
  the model near-linear and the filter stationary (the cells fit ~11 numbers, 22 for two
  channels, so the estimate itself scatters by a hundredth or two). ``linear, ratio, in-sample`` (and ``linear, 2
  channels, in-sample``) fit and score the filter on all cells: optimistic where the
  cross-fitted one is pessimistic, so the two bracket the best such filter;
* ``map`` (with ``--map``): the default ``infer_rates`` map.

Nothing is tuned here: every column is an oracle or a measurement, so reported seeds may be run.

This is the measurement behind docs/inference.md, "Where the domain-scale accuracy goes".

Usage::

    python benchmarks/noise_limit.py --cases e2e-domain-2e6 --seeds 100 101 102 103 104
    python benchmarks/noise_limit.py --cases e2e-domain-2e6 e2e-smooth-1e6 --seeds 0 1 2 --map
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy as A  # noqa: E402

import chromflow as cf  # noqa: E402
from chromflow import Image  # noqa: E402
from chromflow import evaluate as ev  # noqa: E402
from chromflow.inverse import _edge_band  # noqa: E402
from chromflow.inverse.direct import continue_nearest  # noqa: E402

#: knots (rad / um) of the hat functions in |k| whose combination is the oracle linear filter:
#: 0.3 um domains sit near 10 rad / um; 50 nm cells end at 63 (89 on the diagonal)
KNOTS = (0.0, 3.0, 6.0, 9.0, 12.0, 16.0, 20.0, 25.0, 32.0, 45.0, 70.0)
#: cells of reflected padding around the grid before the FFT
PAD = 32
#: width (grid cells) of the broad means the channels are linearised around
BROAD_CELLS = 8.0
#: blocks of columns of the cross-fit: each is predicted by the filter fitted on the others
#: (2 blocks fit on half the nucleus and scatter most: on 180 nm cells one nucleus read 0.63
#: with 2 against 0.79 with 8)
FOLDS = 8
#: candidate widths (grid cells) of the Gaussian of "truth + data error"
GAUSS_CELLS = (0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0)


def noise_free_fields(sim, fields):
    """The simulator's fields averaged over each grid cell of ``fields`` (linear interpolation of
    a box filter of one cell's width), NaN outside the simulated box."""
    size = max(1, int(round(fields.spacing / sim.spacing_nm)))
    h = sim.spacing_nm
    out = []
    for a in (sim.phi_h, sim.phi_e):
        box = ndimage.uniform_filter(a, size=size, mode="nearest")
        out.append(ev.truth_on_grid(Image(box, pixel_size=h, origin=(h / 2, h / 2)), fields.phi_h.shape,
                                    fields.spacing, fields.origin))
    return out


def masked_smooth(values, region, sigma):
    """Normalised Gaussian smoothing of ``values`` over ``region`` (``sigma`` in cells; 0: none),
    read everywhere: unlike ``chromflow.fields._masked_smooth`` it also continues the smoothed
    values into the cells outside ``region`` (the edge band, which the scores include)."""
    if sigma == 0:
        return np.asarray(values, dtype=float)
    num = ndimage.gaussian_filter(np.where(region, values, 0.0), sigma, mode="constant")
    den = ndimage.gaussian_filter(region.astype(float), sigma, mode="constant")
    return num / np.maximum(den, 1e-12)


def best_gaussian(values, region, truth, cells):
    """``(corr, sigma)`` of the masked Gaussian of ``values`` that correlates best with the truth."""
    return max((ev.rate_correlation(masked_smooth(values, region, s), truth, cells), s) for s in GAUSS_CELLS)


def wavenumbers(shape, spacing_um):
    """``|k|`` (rad / um) of the FFT of a grid of ``shape`` padded by :data:`PAD` on each side."""
    ny, nx = (n + 2 * PAD for n in shape)
    ky = 2 * np.pi * np.fft.fftfreq(ny, spacing_um)
    kx = 2 * np.pi * np.fft.fftfreq(nx, spacing_um)
    return np.hypot(ky[:, None], kx[None, :])


def radial_bands(k):
    """Hat functions of ``|k|`` on :data:`KNOTS` (the last one flat to the end): any isotropic
    filter whose transfer function is piecewise linear on the knots is a combination of them."""
    out = []
    for j, kj in enumerate(KNOTS):
        b = np.zeros_like(k)
        if j > 0:
            lo = KNOTS[j - 1]
            b = np.where((k >= lo) & (k <= kj), (k - lo) / (kj - lo), b)
        if j + 1 < len(KNOTS):
            hi = KNOTS[j + 1]
            b = np.where((k >= kj) & (k <= hi), (hi - k) / (hi - kj), b)
        else:
            b = np.where(k >= kj, 1.0, b)
        out.append(b)
    return out


def filtered(values, region, bands):
    """``values`` continued from ``region`` to the grid (nearest cell), padded by reflection,
    and filtered by each band: one regressor per band."""
    full = np.fft.fft2(np.pad(continue_nearest(values, region), PAD, mode="reflect"))
    return [np.real(np.fft.ifft2(full * b))[PAD:-PAD, PAD:-PAD] for b in bands]


def in_sample_linear(regressors, truth, cells):
    """Correlation with the truth of the least-squares combination of ``regressors`` fitted on
    all of ``cells`` (optimistic: the fit sees the cells it is scored on)."""
    X = np.stack([r[cells] for r in regressors] + [np.ones(cells.sum())], axis=1)
    w, *_ = np.linalg.lstsq(X, truth[cells], rcond=None)
    return float(np.corrcoef(X @ w, truth[cells])[0, 1])


def cross_fitted_linear(regressors, truth, cells, folds: int = FOLDS):
    """Correlation with the truth of a least-squares combination of ``regressors``, cross-fitted:
    ``cells`` are cut into ``folds`` blocks of columns with equal numbers of cells, and each
    block is predicted by the combination fitted on the others."""
    cols = np.nonzero(cells)[1]
    edges = np.quantile(cols, np.linspace(0, 1, folds + 1)[1:-1])
    block = np.broadcast_to(np.digitize(np.arange(cells.shape[1]), edges)[None, :], cells.shape)
    pred = np.full(truth.shape, np.nan)
    for j in range(folds):
        use = cells & (block == j)
        fit = cells & (block != j)
        X = np.stack([r[fit] for r in regressors] + [np.ones(fit.sum())], axis=1)
        w, *_ = np.linalg.lstsq(X, truth[fit], rcond=None)
        pred[use] = np.stack([r[use] for r in regressors] + [np.ones(use.sum())], axis=1) @ w
    return ev.rate_correlation(pred, truth, cells)


def limits(case, seed, run_map=False):
    """One row: the columns of the module docstring for one end-to-end nucleus."""
    sim, path, settings = A.e2e_case_input(case, seed)
    settings.inference.seed = seed
    _, fields = A.e2e_fields(path, settings)
    truth = ev.truth_on_grid(sim.truth_image(), fields.phi_h.shape, fields.spacing, fields.origin)
    true_h, true_e = noise_free_fields(sim, fields)
    mask = np.asarray(fields.mask)
    cells = mask & np.isfinite(truth) & np.isfinite(true_h) & np.isfinite(true_e)
    band, _ = _edge_band(fields, mask, float(fields.spacing), "auto", None)
    data = mask & ~band
    row = {"case": case, "seed": seed, "cell_nm": round(fields.spacing, 1), "n_cells": int(cells.sum())}

    row["ratio"] = ev.best_smoothed_ratio(fields.phi_h, fields.phi_e, mask, truth, cells=cells).corr
    row["direct"] = ev.best_direct(fields, truth, cells=cells).corr
    row["potential"] = ev.best_potential(fields, truth, cells=cells).corr
    clean = cf.ChromatinFields(np.where(mask, np.nan_to_num(true_h), 0.0), np.where(mask, np.nan_to_num(true_e), 0.0),
                               mask, spacing=fields.spacing, origin=fields.origin, edge=fields.edge)
    row["nf_ratio"] = ev.best_smoothed_ratio(clean.phi_h, clean.phi_e, mask, truth, cells=cells).corr
    row["nf_potential"] = ev.best_potential(clean, truth, cells=cells).corr

    with np.errstate(divide="ignore", invalid="ignore"):
        data_ratio = fields.phi_h / fields.phi_e
        true_ratio = true_h / true_e
    scale = np.median(true_ratio[cells] / data_ratio[cells])
    error = scale * data_ratio - true_ratio
    row["error_sd"] = float(np.std(error[cells]))
    row["truth_sd"] = float(np.std(truth[cells]))
    row["truth_plus_error"], sigma = best_gaussian(np.where(cells, truth + error, 0.0), data & cells, truth, cells)
    row["truth_plus_error_sigma"] = sigma

    # linearise around broad means so that every regressor is linear in the data's noise
    broad_h = ndimage.gaussian_filter(continue_nearest(fields.phi_h, data), BROAD_CELLS)
    broad_e = ndimage.gaussian_filter(continue_nearest(fields.phi_e, data), BROAD_CELLS)
    dev_h = (fields.phi_h - broad_h) / broad_e
    dev_e = -(fields.phi_e - broad_e) * broad_h / broad_e ** 2
    level = broad_h / broad_e
    k = wavenumbers(mask.shape, fields.spacing / 1000.0)
    bands = radial_bands(k)
    ratio_regressors = filtered(level + dev_h + dev_e, data, bands)
    row["linear_ratio"] = cross_fitted_linear(ratio_regressors, truth, cells)
    row["linear_ratio_in"] = in_sample_linear(ratio_regressors, truth, cells)
    both_regressors = filtered(level + dev_h, data, bands) + filtered(dev_e, data, bands)
    row["linear_both"] = cross_fitted_linear(both_regressors, truth, cells)
    row["linear_both_in"] = in_sample_linear(both_regressors, truth, cells)
    if run_map:
        start = time.perf_counter()
        result = cf.infer_rates(fields, seed=seed)
        row["map"] = ev.rate_correlation(result.rate, truth, cells)
        row["map_s"] = time.perf_counter() - start
    return row


COLUMNS = [("ratio", "oracle ratio"), ("direct", "oracle direct"), ("potential", "oracle potential"), ("map", "map"),
           ("nf_ratio", "noise-free: ratio"), ("nf_potential", "noise-free: potential"),
           ("truth_plus_error", "truth + data error"), ("linear_ratio", "linear, ratio"),
           ("linear_ratio_in", "linear, ratio, in-sample"),
           ("linear_both", "linear, 2 channels"), ("linear_both_in", "linear, 2 channels, in-sample")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["e2e-domain-2e6"], help="end-to-end cases of accuracy.py")
    p.add_argument("--seeds", nargs="+", type=int, default=[100, 101, 102], help="default: tuning seeds")
    p.add_argument("--map", action="store_true", help="also run the default infer_rates map (~1 min a nucleus)")
    p.add_argument("--e2e-cell-nm", type=float, default=A.E2E_CELL_NM,
                   help=f"grid cell size, nm (default {A.E2E_CELL_NM:.0f}, as accuracy.py)")
    p.add_argument("--cache", default=os.environ.get("CHROMFLOW_HELDOUT_CACHE"))
    args = p.parse_args(argv)
    if args.cache:
        A.CACHE = Path(args.cache)
    A.E2E_CELL_NM = float(args.e2e_cell_nm)
    for case in args.cases:
        if not case.startswith("e2e-") or case.endswith(("-tiff", "-returning")):
            raise SystemExit(f"noise_limit.py takes plain end-to-end cases (e2e-<rate>-<count>), got {case}")
    cols = [(k, name) for k, name in COLUMNS if args.map or k != "map"]
    print("| case | seed | cell nm | data error sd / truth sd | " + " | ".join(name for _, name in cols) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(cols))
    for case in args.cases:
        for seed in args.seeds:
            row = limits(case, seed, args.map)
            print(f"| {case} | {seed} | {row['cell_nm']:g} | {row['error_sd']:.3f} / {row['truth_sd']:.3f} | "
                  + " | ".join(f"{row[k]:.3f}" for k, _ in cols) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
