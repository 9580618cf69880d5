"""Calibrate the bias factor of the rate-map uncertainty on tuning cases of the held-out simulator.

``result.uncertainty`` is ``sqrt(noise_var + f^2 * excess)`` (docs/inference.md, "Uncertainty"):
``noise_var`` from data fission, ``excess`` the bootstrap refit's error beyond the noise, ``f``
:data:`chromflow.inverse.BIAS_INFLATION`. This script runs ``benchmarks/accuracy.py`` cases
with the default settings, keeps both parts of every map, and prints the coverage of the
nominal 90 % interval on the compared cells for a range of ``f``, so that ``f`` can be chosen
on tuning seeds and checked on reported ones.

Usage::

    python benchmarks/calibrate_uncertainty.py --cases field-nucleus-smooth-50nm field-nucleus-domain-50nm --tuning --seeds 100 101

Any other option is passed to ``accuracy.py`` (``--set``, ``--noise``, ...).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy as A  # noqa: E402

import chromflow.inverse as inv  # noqa: E402

FACTORS = (0.0, 1.0, 2.0, 3.0, 4.5, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0)
Z90 = 1.6448536269514722


def main(argv=None):
    parts = {}
    total = inv._total_uncertainty

    def keep_parts(rate, noise_var, boot_rate, boot_truth, mask, interior, radius, inflation):
        err2 = inv._ring_mean((boot_rate - boot_truth) ** 2, mask, radius)
        if not parts:  # the case's own map comes first; the oracle baselines' runs follow
            parts.update(noise_var=noise_var, excess=np.clip(err2 - noise_var, 0.0, None), inflation=inflation)
        return total(rate, noise_var, boot_rate, boot_truth, mask, interior, radius, inflation)

    row_of = A._row
    lines = []

    def row(case, seed, result, truth, fields, cells, seconds, sim):
        out = row_of(case, seed, result, truth, fields, cells, seconds, sim)
        if parts:
            ok = cells & np.isfinite(result.rate) & np.isfinite(truth)
            err = np.abs(result.rate - truth)[ok]
            cov = []
            for f in FACTORS:
                sd = np.sqrt(parts["noise_var"] + f * f * parts["excess"])[ok]
                cov.append(float(np.mean(err <= Z90 * sd)))
            size = result.settings.get("network_size", "")
            lines.append(f"| {case} | {seed} | {size} | {parts['inflation']:g} | "
                         + " | ".join(f"{c:.3f}" for c in cov) + " |")
            print(lines[-1], flush=True)
            parts.clear()
        return out

    inv._total_uncertainty = keep_parts
    A._row = row
    A.main(argv)
    print("\n## Coverage of the nominal 90 % interval by bias factor f\n")
    print("| case | seed | network | f now | " + " | ".join(f"f={f:g}" for f in FACTORS) + " |")
    print("|---|---|---|---|" + "---|" * len(FACTORS))
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
