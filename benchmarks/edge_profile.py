"""Where the rate map's error sits: bias and correlation by distance from the nucleus outline.

For one field-level case of the held-out simulator (:mod:`_heldout`, the cases of
``accuracy.py``), prints the mean of ``map - truth`` in bands of distance from the mask outline
(in cells) and the correlation on all cells and on the cells deeper than ``--interior`` cells,
for:

* the PINN map (``infer_rates`` defaults plus ``--set`` options; ``--clean`` gives it the
  noise-free fields);
* the oracle direct inversion and the oracle smoothed ratio (both tuned on the truth);
* the 5-point finite-difference closed form ``(phi_h - lap(mu_d) / 2) / phi_e`` of the **true**
  noise-free fields (l^2 term included): what the 50 nm cells themselves say about lambda;
* the true transport ``T / phi_e = (phi_h - lambda phi_e) / phi_e``, i.e. how far the plain ratio
  is from lambda because of transport;
* (noisy fields) the noise-weighted misfit to the data per cell, by band, of the PINN's fitted
  fields and of the true fields: whether the data prefer the truth where the map is biased.

This is the measurement behind docs/inference.md, "What limits the maps now". A transport
boundary layer at the no-flux envelope gives the nucleus geometry a bias near its outline that
the tissue geometry (a cut-out region) does not have.

Usage::

    python benchmarks/edge_profile.py --case field-nucleus-smooth-50nm --seed 100
    python benchmarks/edge_profile.py --case field-tissue-smooth-50nm --seed 100 --clean
    python benchmarks/edge_profile.py --case field-nucleus-smooth-50nm --seed 100 --set iterations=3000
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
from chromflow import evaluate as ev  # noqa: E402
from chromflow.physics.chromatin import ChromatinModel, bulk_potential  # noqa: E402

BANDS = ((0, 3), (3, 6), (6, 10), (10, 14), (14, None))


def finite_difference_rate(phi_h, phi_e, spacing_um: float, model: ChromatinModel = ChromatinModel()):
    """``(phi_h - lap(mu_d) / 2) / phi_e`` with 5-point Laplacians (edge cells: NaN)."""
    def lap(a):
        out = np.full_like(a, np.nan)
        out[1:-1, 1:-1] = (a[2:, 1:-1] + a[:-2, 1:-1] + a[1:-1, 2:] + a[1:-1, :-2] - 4 * a[1:-1, 1:-1]) / spacing_um ** 2
        return out

    mu = -phi_e + bulk_potential(phi_h, model.phi_max) - model.length_um ** 2 * lap(phi_h - phi_e)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (phi_h - 0.5 * lap(mu)) / np.where(phi_e > 1e-6, phi_e, np.nan)


def _band(depth, lo, hi):
    """Cells of one band of :data:`BANDS`: deeper than ``lo``, at most ``hi`` (None: no bound)."""
    return (depth > lo) & ((depth <= hi) if hi is not None else True)


def misfit_by_band(fields, data, sd, mask):
    """Mean noise-weighted misfit per cell, ``sum_c ((fields_c - data_c) / sd_c)^2``, per band of
    :data:`BANDS`: about the number of channels where ``fields`` are the truth of ``data``.

    Parameters
    ----------
    fields, data : sequences of (ny, nx) arrays, one per channel
    sd : sequence of float
        Each channel's noise sd.
    mask : (ny, nx) bool array
    """
    depth = ndimage.distance_transform_edt(mask)
    chi2 = sum(((np.asarray(f, float) - np.asarray(d, float)) / s) ** 2 for f, d, s in zip(fields, data, sd))
    out = []
    for lo, hi in BANDS:
        sel = mask & np.isfinite(chi2) & _band(depth, lo, hi)
        out.append(float(chi2[sel].mean()) if sel.any() else float("nan"))
    return out


def profile(values, truth, mask, interior_cells: float):
    """(corr on all cells, corr deeper than ``interior_cells``, mean difference per band)."""
    depth = ndimage.distance_transform_edt(mask)
    ok = mask & np.isfinite(values) & np.isfinite(truth)
    deep = ok & (depth > interior_cells)
    bias = []
    for lo, hi in BANDS:
        sel = ok & _band(depth, lo, hi)
        bias.append(float(np.mean(values[sel] - truth[sel])) if sel.any() else float("nan"))
    corr = ev.rate_correlation(np.where(ok, values, np.nan), truth)
    corr_deep = ev.rate_correlation(np.where(deep, values, np.nan), truth) if deep.sum() > 2 else float("nan")
    return corr, corr_deep, bias


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="field-nucleus-smooth-50nm", help="a field case of accuracy.py")
    p.add_argument("--seed", type=int, default=100, help="default: a tuning seed")
    p.add_argument("--clean", action="store_true", help="give the PINN the noise-free fields")
    p.add_argument("--interior", type=float, default=10.0, help="cells from the outline for the deep correlation")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="infer_rates option (repeatable)")
    p.add_argument("--no-pinn", dest="pinn", action="store_false", help="baselines and truth only (seconds)")
    p.add_argument("--cache", default=os.environ.get("CHROMFLOW_HELDOUT_CACHE"))
    args = p.parse_args(argv)
    if args.cache:
        A.CACHE = Path(args.cache)
    kind, geometry, rate, cell = args.case.split("-")
    if kind != "field":
        raise SystemExit("edge_profile.py takes field cases (field-<geometry>-<rate>-<cell>nm)")
    cell_nm = float(cell[:-2])
    sim, fields, truth = A.field_data(geometry, rate, cell_nm, args.seed)
    phi_h, phi_e, _, mask, _, _ = sim.cell_fields(cell_nm)
    spacing_um = cell_nm / 1000.0
    rows = []
    if args.pinn:
        given = fields
        if args.clean:
            given = cf.ChromatinFields(np.where(mask, phi_h, 0.0), np.where(mask, phi_e, 0.0), mask,
                                       spacing=fields.spacing, origin=fields.origin, source=fields.source)
        options = A._pairs(args.set)
        start = time.perf_counter()
        result = cf.infer_rates(given, seed=args.seed, **options)
        label = f"PINN {'noise-free' if args.clean else 'noisy'} fields {options or ''}".strip()
        rows.append((f"{label} ({time.perf_counter() - start:.0f} s)", result.rate))
        fitted = (result.phi_h, result.phi_e)
    rows.append(("oracle direct", ev.best_direct(fields, truth).rate))
    rows.append(("oracle ratio", ev.best_smoothed_ratio(fields.phi_h, fields.phi_e, fields.mask, truth).rate))
    rows.append(("oracle smooth potential", ev.best_potential(fields, truth).rate))
    rows.append(("FD closed form, true fields", finite_difference_rate(phi_h, phi_e, spacing_um)))
    with np.errstate(divide="ignore", invalid="ignore"):
        transport = np.where(mask, (phi_h - truth * phi_e) / phi_e, np.nan)

    print(f"## {args.case}, seed {args.seed}: mean(map - truth) by distance from the outline (cells)\n")
    bands = [f"{lo}-{hi}" if hi is not None else f"> {lo}" for lo, hi in BANDS]
    print(f"| map | corr, all | corr, > {args.interior:g} cells | " + " | ".join(bands) + " |")
    print("|---|---:|---:|" + "---:|" * len(bands))
    for name, values in rows:
        corr, deep, bias = profile(values, truth, mask, args.interior)
        print(f"| {name} | {corr:.4f} | {deep:.4f} | " + " | ".join(f"{b:+.3f}" for b in bias) + " |")
    _, _, t_bands = profile(transport, np.zeros_like(truth), mask, args.interior)
    print("| true T / phi_e (ratio minus lambda) | | | " + " | ".join(f"{b:+.3f}" for b in t_bands) + " |")
    if args.pinn and not args.clean:
        # the field cases' noise is known: sd = level x the true field's nuclear sd (accuracy.field_data)
        level = float(fields.settings["noise"])
        sd = [level * float(phi_h[mask].std()), level * float(phi_e[mask].std())]
        data = (fields.phi_h, fields.phi_e)
        print("\n## noise-weighted misfit to the data per cell (2 channels; the truth's is ~2), by band\n")
        print("| fields | " + " | ".join(bands) + " |")
        print("|---|" + "---:|" * len(bands))
        for name, f in (("PINN's fitted fields", fitted), ("true fields", (phi_h, phi_e))):
            print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in misfit_by_band(f, data, sd, mask)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
