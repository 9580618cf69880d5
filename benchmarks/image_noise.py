"""The noise of rendered images, read from the whole image against what two halves show.

``chromflow.inverse.noise.noise_correlation`` reads, from the data alone, how the counting noise
of nearby grid cells is correlated and how much of its variance the 3x3 high-pass of the noise
model misses (``variance_factor``). On images the halves of the localizations are not
available to the pipeline, so data fission relies entirely on that reading. This script checks
it where the halves *are* known: a held-out nucleus of ``benchmarks/_heldout.py`` (independent
simulator and labelling, two channels) is rendered twice per pixel size as averaged shifted
histograms (``_heldout.render_ash``, ThunderSTORM's rendering): from all localizations and
from alternate blocks of 100 frames (half A). Both go through ``chromflow run``'s pipeline
(read, segment, fields on one grid and mask). ``A - X`` is then noise only, with the whole
image's noise variance and correlations for independent halves.

Per channel it prints the correlations of ``A - X`` at lags 1 and 2 (along the axes, a 9-cell
local mean removed first) and its variance over the high-pass reading (the halves' factor),
beside what ``noise_correlation`` reads from the whole image (``rho``, ``rho2``,
``variance_factor``, ``saturated``).

    python benchmarks/image_noise.py                       # 1e6 localizations, tuning seed 100
    python benchmarks/image_noise.py --runs 128:20 128:40  # grid:pixel_nm pairs

Takes ~10 s per run after the first rendering (cached beside the held-out file).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _heldout as H  # noqa: E402
import accuracy as A  # noqa: E402

from chromflow import pipeline as pl  # noqa: E402
from chromflow.inverse.noise import _lag_correlation, estimate_noise, local_level, noise_correlation  # noqa: E402

#: (grid, pixel nm): 10 / 20 / 40 nm pixels on the standard ~52 nm cells ("std") and 20 nm
#: pixels on 192 cells (~35 nm), the settings of ``invariance.py --tiff`` that differ in noise
RUNS = [("std", 10.0), ("std", 20.0), ("std", 40.0), ("192", 20.0)]
HALF_BLOCK = 100


def images(sim, path, table, pixel_nm):
    """Whole and half-A ASH TIFFs of both channels (cached beside the localization file)."""
    shape = tuple(int(np.ceil(s * sim.spacing_nm / pixel_nm)) for s in sim.phi_h.shape)
    half = table[(table["frame"] // HALF_BLOCK) % 2 == 0]
    out = {}
    for tag, rows in (("whole", table), ("halfA", half)):
        files = [path.with_name(f"{path.stem}_{tag}_ash{pixel_nm:g}nm_ch{c}.tif") for c in (0, 1)]
        for channel, target in enumerate(files):
            if not target.is_file():
                H.write_imagej_tiff(H.render_ash(rows, channel, shape, pixel_nm), target, pixel_nm)
        out[tag] = files
    return out


def lag_correlations(d, region, lags=(1, 2)):
    """Correlation of ``d`` between cells ``lag`` apart along y and x (both axes pooled), as
    ``noise_correlation`` measures it on the high-pass output."""
    energy = float(np.mean(d[region] ** 2))
    return [_lag_correlation(d, region, lag, energy)[0] for lag in lags]


def measure(sim, path, grid, pixel_nm):
    table = pd.read_csv(path)
    files = images(sim, path, table, pixel_nm)
    loaded = {}
    for tag in ("whole", "halfA"):
        s = A.e2e_settings(sim)
        if grid != "std":
            s.fields.grid = int(grid)
        s.fields.euchromatin, s.fields.euchromatin_channel = files[tag][1], None
        s.validate()
        loaded[tag] = (pl.load_input(files[tag][0], s), s)
    (whole, s), (part, _) = loaded["whole"], loaded["halfA"]
    mask = pl.segment(whole.density, s)
    fields = pl.compute_fields(whole.density, mask, s, whole.euchromatin, (part.density, part.euchromatin))
    if fields.half is None:
        raise SystemExit(f"{path}: the half image gave no fields ({fields.settings.get('half')})")
    region = fields.mask & ~fields.edge
    rows = []
    for name, x, a in zip(("phi_h", "phi_e"), (fields.phi_h, fields.phi_e), fields.half):
        # A - X = (A - B) / 2: noise only; a 9-cell local mean takes out any slow offset
        d = np.where(fields.mask, a - x, 0.0)
        d = d - ndimage.uniform_filter(d, 9)
        read = estimate_noise(x, region).variance(local_level(x, region))
        nc = noise_correlation(x, region)
        rows.append({"channel": name, "lags": lag_correlations(d, region),
                     "halves_factor": float(np.mean(d[region] ** 2) / np.mean(read[region])),
                     "rho": nc.rho, "rho2": nc.rho2, "factor": nc.variance_factor, "saturated": nc.saturated})
    return fields.spacing, fields.phi_h.shape[0], rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", default="smooth", choices=("smooth", "domain"))
    parser.add_argument("--count", default="1e6", choices=sorted(A.COUNTS))
    parser.add_argument("--seed", type=int, default=100, help="held-out seed (default: tuning seed 100)")
    parser.add_argument("--runs", nargs="+", default=None, help="grid:pixel_nm pairs (grid 'std': ~52 nm cells)")
    parser.add_argument("--cache", default=None, help="held-out data cache (see accuracy.py)")
    args = parser.parse_args(argv)
    if args.cache:
        A.CACHE = Path(args.cache)
    A.CACHE.mkdir(parents=True, exist_ok=True)
    runs = RUNS if args.runs is None else [(g, float(p)) for g, p in (r.split(":") for r in args.runs)]
    sim, path = A.localization_file(args.rate, A.COUNTS[args.count], args.seed)
    print(f"held-out {args.rate} nucleus, {args.count} localizations, seed {args.seed}; halves: alternate blocks "
          f"of {HALF_BLOCK} frames\n")
    print("| grid | pixel (nm) | cell (nm) | channel | halves: lag 1 / lag 2 | read: rho / rho2 | "
          "factor read | factor halves | saturated |\n|---|---|---|---|---|---|---|---|---|")
    for grid, pixel in runs:
        spacing, n, rows = measure(sim, path, grid, pixel)
        for r in rows:
            print(f"| {n} | {pixel:g} | {spacing:.1f} | {r['channel']} | {r['lags'][0]:.2f} / {r['lags'][1]:.2f} | "
                  f"{r['rho']:.2f} / {r['rho2']:.2f} | {r['factor']:.2f} | {r['halves_factor']:.2f} | "
                  f"{'yes' if r['saturated'] else 'no'} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
