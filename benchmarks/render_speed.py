"""Time chromflow.render for 1e5, 1e6, 1e7 localizations; prints a Markdown table.

Localizations are uniform over a 20 um x 20 um field (1000 x 1000 pixels of 20 nm). The Gaussian
method is timed with a fixed sigma (20 nm) and with per-localization uncertainties drawn from a
gamma distribution (mean 23 nm, 3-80 nm: many sigma bins, the harder case).

``--accuracy`` instead measures how much of a localization's mass each Gaussian algorithm puts in
the wrong pixel, against exact rendering (each localization's pixel-integrated Gaussian, no
binning, no truncation): isolated localizations (one per 10 sigma, so errors cannot cancel) per
fixed sigma and per algorithm, and a dense field (10 localizations per pixel, own uncertainties)
rendered as ``render`` does by default.

Usage: python benchmarks/render_speed.py [--quick] [--repeats N] [--accuracy]
(--quick: up to 1e6 localizations.)
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import time

import numpy as np
import pandas as pd
from scipy.special import ndtr

from chromflow.render import _MAX_CIC_FACTOR, _cic_factor, _render_gaussian, render


def _time(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _exact(py, px, s, ny, nx):
    """Exact render in pixel units: each localization's Gaussian integrated over every pixel."""
    img = np.zeros((ny, nx))
    ey, ex = np.arange(ny + 1.0), np.arange(nx + 1.0)
    for a, b, c in zip(py, px, np.broadcast_to(s, len(py))):
        img += np.outer(np.diff(ndtr((ey - a) / c)), np.diff(ndtr((ex - b) / c)))
    return img


def _isolated(s_max, n, rng):
    """n localizations on a lattice 10 sigma + 4 pixels apart, random sub-pixel positions."""
    spacing = math.ceil(10 * s_max + 4)
    m = math.ceil(math.sqrt(n))
    nodes = spacing * (np.arange(m) + 1)
    yy, xx = np.meshgrid(nodes, nodes, indexing="ij")
    size = (m + 2) * spacing
    return yy.ravel()[:n] + rng.random(n), xx.ravel()[:n] + rng.random(n), size


def accuracy(seed=0):
    rng = np.random.default_rng(seed)
    n = 400
    print("Mass put in the wrong pixel, % of a localization (sum |render - exact| / n), isolated "
          f"localizations ({n} per sigma):\n")
    print("| sigma (pixels) | sub-pixel phases (`convolve`) | cloud-in-cell (`cic`), grid factor f |")
    print("|---:|---:|---:|")
    for s in (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0):
        py, px, size = _isolated(s, n, rng)
        ref = _exact(py, px, s, size, size)
        sig = np.full(n, s)
        err = {p: np.abs(_render_gaussian(py, px, sig, size, size, path=p) - ref).sum() / n * 100
               for p in ("convolve", "cic")}
        f = _cic_factor(s)
        how = f"f = {f}" if f <= _MAX_CIC_FACTOR else f"f = {f} > {_MAX_CIC_FACTOR}: exact direct scatter instead"
        print(f"| {s:g} | {err['convolve']:.1f} | {err['cic']:.1f} ({how}) |")
    print("\nOwn uncertainties, gamma(4, 5) + 3 nm at 20 nm pixels (0.15-4 pixels):\n")
    print("| field (isolated: % per localization; dense: % of the image) | sub-pixel phases | cloud-in-cell | default (`auto`) |")
    print("|---|---:|---:|---:|")
    s = (rng.gamma(4.0, 5.0, 3000) + 3.0) / 20.0
    py, px, size = _isolated(s.max(), len(s), rng)
    ref = _exact(py, px, s, size, size)
    row = [np.abs(_render_gaussian(py, px, s, size, size, path=p) - ref).sum() / len(s) * 100
           for p in ("convolve", "cic", "auto")]
    print(f"| isolated, 3000 (sparse: `auto` takes the exact direct scatter) | {row[0]:.1f} | {row[1]:.1f} | {row[2]:.1f} |")
    side = 64
    s = (rng.gamma(4.0, 5.0, 10 * side * side) + 3.0) / 20.0
    py, px = rng.uniform(0, side, len(s)), rng.uniform(0, side, len(s))
    ref = _exact(py, px, s, side, side)
    inner = (slice(8, -8), slice(8, -8))      # away from the mirrored borders (exact has none)
    row = [np.abs(_render_gaussian(py, px, s, side, side, path=p) - ref)[inner].sum()
           / ref[inner].sum() * 100 for p in ("convolve", "cic", "auto")]
    print(f"| dense, 10 per pixel, {side} x {side} px (inner 48 x 48) | {row[0]:.2f} | {row[1]:.2f} | {row[2]:.2f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only up to 1e6 localizations")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accuracy", action="store_true", help="accuracy against exact rendering instead")
    args = parser.parse_args(argv)
    if args.accuracy:
        accuracy(args.seed)
        return

    sizes = [10**5, 10**6] if args.quick else [10**5, 10**6, 10**7]
    rng = np.random.default_rng(args.seed)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"render speed on {platform.processor() or platform.machine()}, {cores} cores usable, load average "
          f"{load} (1/5/15 min) at start; 20 um field, 20 nm pixels (1000 x 1000); best of {args.repeats}\n")
    print("| localizations | histogram (s) | gaussian, sigma 20 nm (s) | gaussian, own uncertainty (s) |")
    print("|---:|---:|---:|---:|")
    for n in sizes:
        locs = pd.DataFrame({"x": rng.uniform(0, 20_000, n), "y": rng.uniform(0, 20_000, n),
                             "uncertainty": rng.gamma(4.0, 5.0, n) + 3.0})
        fov = (0.0, 0.0, 20_000.0, 20_000.0)
        t_hist = _time(lambda: render(locs, 20.0, "histogram", fov=fov), args.repeats)
        t_fixed = _time(lambda: render(locs, 20.0, "gaussian", sigma=20.0, fov=fov), args.repeats)
        t_unc = _time(lambda: render(locs, 20.0, "gaussian", fov=fov), args.repeats)
        print(f"| {n:.0e} | {t_hist:.2f} | {t_fixed:.2f} | {t_unc:.2f} |", flush=True)
    if hasattr(os, "getloadavg"):
        print(f"\nload average at the end: {' / '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
