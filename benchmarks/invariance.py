"""Grid and pixel invariance of the rate map (issue 9, item 7): one file, several grids and pixel sizes.

The same localization file (a held-out nucleus of ``benchmarks/_heldout.py``: independent
simulator and labelling, two channels, 1e6 localizations) goes through ``chromflow run``'s
pipeline at grids 96 / 128 / 192 (pixel 20 nm) and pixel sizes 10 / 20 / 40 nm (grid 128).
Every map is resampled (linear interpolation in nm) onto the reference run's grid (grid 128,
pixel 20 nm) and compared there: Pearson correlation on the cells where both maps are finite,
plus each run's correlation with the truth, beside the oracle baselines on its own grid, and the
halves' agreement at the domain scale with the effort it chose (``summary()``).

    python benchmarks/invariance.py                      # the five runs (minutes on 2 cores)
    python benchmarks/invariance.py --method direct      # the same for the closed form
    python benchmarks/invariance.py --uncertainty        # keep the (default) uncertainty on
    python benchmarks/invariance.py --tiff --uncertainty # the same localizations as rendered images

With ``--tiff`` the input is not the table but its two channels rendered as averaged shifted
histograms (``_heldout.render_ash``, as ThunderSTORM renders) at each run's pixel size, read as
ImageJ TIFFs: the pixel size then comes from the file, and the halves from data fission, whose
noise must follow the correlation between cells that each pixel size and grid make (the
``rho`` column: ``diagnostics["noise"][...]["correlation"]``, mean of the channels).

Target: every run agrees with the reference at >= 0.95.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import accuracy as A  # noqa: E402

import chromflow as cf  # noqa: E402
from chromflow import evaluate as ev  # noqa: E402
from chromflow import pipeline as pl  # noqa: E402

RUNS = [("grid", 96, 20.0), ("grid", 128, 20.0), ("grid", 192, 20.0),
        ("pixel", 128, 10.0), ("pixel", 128, 40.0)]
REFERENCE = (128, 20.0)


def run_one(path, grid, pixel, method, seed, uncertainty, images=None):
    """One run; ``images``: the two channels' TIFFs to read instead of the table."""
    s = pl.PipelineSettings()
    s.render.pixel_size = pixel
    s.fields.grid = grid
    s.fields.euchromatin_channel = 1
    if images is not None:
        path, s.fields.euchromatin = images
        s.fields.euchromatin_channel = None
    s.inference.seed = seed
    if method:
        s.inference.method = method
    start = time.perf_counter()
    _, fields = A.e2e_fields(path, s)
    result = cf.infer_rates(fields, method=s.inference.method, seed=seed,
                            **({} if uncertainty else {"uncertainty": False}))
    return fields, result, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", default="smooth", choices=("smooth", "domain"))
    parser.add_argument("--count", default="1e6", choices=sorted(A.COUNTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default=None)
    parser.add_argument("--uncertainty", action="store_true", help="keep the uncertainty (slower)")
    parser.add_argument("--cache", default=None, help="held-out data cache (see accuracy.py)")
    parser.add_argument("--tiff", action="store_true", help="start from rendered images (ASH TIFFs) of the file")
    args = parser.parse_args(argv)
    if args.cache:
        A.CACHE = Path(args.cache)
    A.CACHE.mkdir(parents=True, exist_ok=True)
    sim, path = A.localization_file(args.rate, A.COUNTS[args.count], args.seed)
    truth_img = sim.truth_image()
    runs = {}
    for kind, grid, pixel in RUNS:
        images = A.tiff_files(sim, path, pixel) if args.tiff else None
        fields, result, seconds = run_one(path, grid, pixel, args.method, args.seed, args.uncertainty, images)
        truth = ev.truth_on_grid(truth_img, fields.phi_h.shape, fields.spacing, fields.origin)
        cells = fields.mask & np.isfinite(truth)
        row = ev.compare(result, truth, fields, mask=cells)
        runs[(grid, pixel)] = (fields, result, row, seconds)
        print(f"# ran grid {grid} pixel {pixel:g} nm: {seconds:.0f} s, corr {row['corr']:.3f}", flush=True)
    ref_fields, ref_result, _, _ = runs[REFERENCE]
    source = "rendered images (ASH TIFFs) of " if args.tiff else ""
    print(f"\nGrid and pixel invariance, {source}{path.name} ({args.rate} rate, {args.count} localizations, "
          f"seed {args.seed}); method {ref_result.method}, chromflow {cf.__version__}; maps resampled onto the "
          "grid-128 / 20 nm run's cells.\n")
    print("| grid | pixel nm | cell nm | corr with reference | corr with truth | ratio corr | direct corr | "
          "potential corr | rho | agreement | effort | time s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (grid, pixel), (fields, result, row, seconds) in runs.items():
        on_ref = ev.truth_on_grid(result.to_image("rate"), ref_fields.phi_h.shape, ref_fields.spacing,
                                  ref_fields.origin)
        agree = ev.rate_correlation(on_ref, ref_result.rate, ref_fields.mask)
        summary = result.summary()     # the effort follows the halves' agreement at the domain scale (nm)
        rho = np.mean([result.diagnostics["noise"][c].get("correlation", np.nan) for c in ("phi_h", "phi_e")])
        print(f"| {grid} | {pixel:g} | {fields.spacing:.1f} | {agree:.3f} | {row['corr']:.3f} | "
              f"{row['ratio_corr']:.3f} | {row['direct_corr']:.3f} | {row['potential_corr']:.3f} | {rho:.2f} | "
              f"{summary['domain_scale_agreement']:.2f} | {summary['effort']} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
