"""Time chromflow.render for 1e5, 1e6, 1e7 localizations; prints a Markdown table.

Localizations are uniform over a 20 um x 20 um field (1000 x 1000 pixels of 20 nm). The Gaussian
method is timed with a fixed sigma (20 nm) and with per-localization uncertainties drawn from a
gamma distribution (mean 23 nm, 3-80 nm: many sigma bins, the harder case).

Usage: python benchmarks/render_speed.py [--quick] [--repeats N]
(--quick: up to 1e6 localizations.)
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import pandas as pd

from chromflow.render import render


def _time(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only up to 1e6 localizations")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    sizes = [10**5, 10**6] if args.quick else [10**5, 10**6, 10**7]
    rng = np.random.default_rng(args.seed)
    print(f"render speed on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"20 um field, 20 nm pixels (1000 x 1000); best of {args.repeats}\n")
    print("| localizations | histogram (s) | gaussian, sigma 20 nm (s) | gaussian, own uncertainty (s) |")
    print("|---:|---:|---:|---:|")
    for n in sizes:
        locs = pd.DataFrame({"x": rng.uniform(0, 20_000, n), "y": rng.uniform(0, 20_000, n),
                             "uncertainty": rng.gamma(4.0, 5.0, n) + 3.0})
        fov = (0.0, 0.0, 20_000.0, 20_000.0)
        t_hist = _time(lambda: render(locs, 20.0, "histogram", fov=fov), args.repeats)
        t_fixed = _time(lambda: render(locs, 20.0, "gaussian", sigma=20.0, fov=fov), args.repeats)
        t_unc = _time(lambda: render(locs, 20.0, "gaussian", fov=fov), args.repeats)
        print(f"| {n:.0e} | {t_hist:.2f} | {t_fixed:.2f} | {t_unc:.2f} |")


if __name__ == "__main__":
    main()
