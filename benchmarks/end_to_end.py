"""End to end on simulated nuclei with a known rate map: localization file -> rate map.

For each seed and localization count, a nucleus is simulated (smooth random lambda and total
chromatin, steady state of the chromatin model, two-channel localizations with blinking,
precision and background), written as a two-channel CSV, and run through the same pipeline as
``chromflow run`` (render -> segment -> fields -> infer_rates -> outputs). Prints a Markdown table
of the Pearson correlation of the recovered rate with the truth inside the nucleus and the wall
time of each stage, and writes CSV to benchmarks/results/.

Usage::

    python benchmarks/end_to_end.py                       # 1e6 localizations, seeds 0-1, pinn + direct
    python benchmarks/end_to_end.py --quick               # one seed, 3e5 localizations
    python benchmarks/end_to_end.py --device cuda --counts 3e5 1e6 3e6
    python benchmarks/end_to_end.py --methods pinn --uncertainty off   # without the uncertainty refits
    python benchmarks/end_to_end.py --no-merge-blinks     # every localization rendered, blinks not merged
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import chromflow as cf
from chromflow.cli import rate_correlation
from chromflow.pipeline import PipelineSettings, run_file


def one_case(seed, count, method, device, grid, workdir, iterations=None, uncertainty=None, merge_blinks=True):
    sim = cf.simulate.simulate_nucleus(grid=grid, seed=seed, n_localizations=int(count))
    path = Path(workdir) / f"nucleus_s{seed}_n{int(count)}.csv"
    if not path.exists():
        cf.write_localizations(sim.localizations, path, format="csv")
    truth = cf.Image(np.where(sim.mask, sim.rate, np.nan), pixel_size=sim.spacing_nm, origin=sim.origin)
    settings = PipelineSettings.from_dict({
        "render": {"pixel_size": 50.0, "merge_blinks": merge_blinks},
        "fields": {"grid": 128, "euchromatin_channel": 1},
        "inference": {"method": method, "device": device, "seed": seed, "iterations": iterations,
                      **({} if uncertainty is None else {"uncertainty": uncertainty})},
    })
    out = Path(workdir) / f"out_{method}_s{seed}_n{int(count)}"
    start = time.perf_counter()
    row = run_file(path, out, settings)
    wall = time.perf_counter() - start
    result = cf.RateMapResult.load(next(out.glob("*_result.*")))
    corr, n = rate_correlation(result, truth)
    return {"seed": seed, "localizations": int(count), "method": method, "device": row.get("device", device),
            "uncertainty": "default (on)" if uncertainty is None else str(uncertainty),
            "blinks": "merged" if merge_blinks else "not merged", "molecules": row.get("n_molecules"),
            "corr": corr, "cells": n, "wall_s": wall,
            **{k: v for k, v in row.items() if str(k).startswith("time_")}}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--counts", type=float, nargs="+", default=[1e6])
    parser.add_argument("--methods", nargs="+", default=["pinn", "direct"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--grid", type=int, default=128, help="simulation grid (cells per side)")
    parser.add_argument("--iterations", type=int, default=None, help="PINN iterations (default: infer_rates')")
    parser.add_argument("--uncertainty", choices=("default", "off"), default="default",
                        help="the pipeline's default (on: fission and bootstrap refits) or off")
    parser.add_argument("--no-merge-blinks", action="store_true",
                        help="render every localization (render.merge_blinks = false); default: merged")
    parser.add_argument("--out", default=None)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.quick:
        args.seeds, args.counts = args.seeds[:1], [3e5]
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            for count in args.counts:
                for method in args.methods:
                    unc = {"default": None, "off": False}[args.uncertainty]
                    row = one_case(seed, count, method, args.device, args.grid, workdir, args.iterations, unc,
                                   merge_blinks=not args.no_merge_blinks)
                    print(f"[end_to_end] {row}", flush=True)
                    rows.append(row)
    table = pd.DataFrame(rows)
    cols = ["seed", "localizations", "method", "device", "uncertainty", "blinks", "corr", "wall_s"] + \
        [c for c in table.columns if c.startswith("time_")]
    print("\n## End to end: localization file -> rate map (128x128 fields)\n")
    print(table[cols].to_markdown(index=False, floatfmt=".3g") if _has_tabulate() else table[cols].to_string(index=False))
    out = Path(args.out or Path(__file__).parent / "results" / f"end_to_end_{time.strftime('%Y%m%d_%H%M%S')}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    print(f"\nCSV: {out}")


def _has_tabulate():
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()
