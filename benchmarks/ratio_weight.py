"""How much of the smoothed ratio to mix into the network's map: the measurement behind
``chromflow.inverse.ratio_weight`` (docs/inference.md, "Mixing in the smoothed ratio").

For each case of ``accuracy.py`` and seed, the default network map ``m`` is computed with
``ratio_weight=0``, next to the smoothed ratio ``q`` at the width the data's halves chose
(``result.ratio``, no truth). The benchmark then prints the correlation with the true lambda of
``m + w (q - m)`` for each ``w`` of ``--weights`` and for the weight the rule gives at the
data's noise share, beside the oracle smoothed ratio. A last table scores a grid of ramp rules
(maximum weight, start and end of the ramp in noise share) by their mean gain and worst loss
over all the nuclei run. This is how the rule was chosen, on the tuning seeds 100-102.

Usage::

    python benchmarks/ratio_weight.py --cases e2e-smooth-1e6 e2e-domain-2e6 --seeds 100 101 102
    python benchmarks/ratio_weight.py --cases field-nucleus-domain-50nm --noise 0.4 --seeds 100 101

Each nucleus takes one default fit (seconds to a minute on 2 cores).
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy as A  # noqa: E402

import chromflow as cf  # noqa: E402
from chromflow import evaluate as ev  # noqa: E402
from chromflow import inverse as inv  # noqa: E402

#: weights scored per nucleus
WEIGHTS = (0.0, 0.15, 0.3, 0.5, 0.7, 1.0)
#: the grid of ramp rules of the last table: (maximum weight, ramp start, ramp end) in noise share
RULE_MAXIMA = (0.3, 0.4, 0.5, 0.6)
RULE_STARTS = (0.1, 0.2, 0.3, 0.4)
RULE_ENDS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def case_fields(case: str, seed: int, noise: float = A.FIELD_NOISE):
    """``(fields, truth)`` of an ``accuracy.py`` case with the default pipeline settings."""
    if case.startswith("field-"):
        _, geometry, rate, cell = case.split("-")
        _, fields, truth = A.field_data(geometry, rate, float(cell[:-2]), seed, noise)
        return fields, truth
    sim, path, settings = A.e2e_case_input(case, seed)
    _, fields = A.e2e_fields(path, settings)
    return fields, ev.truth_on_grid(sim.truth_image(), fields.phi_h.shape, fields.spacing, fields.origin)


def mixed_correlations(rate, ratio, truth, cells, weights=WEIGHTS) -> list:
    """Correlation with ``truth`` on ``cells`` of ``rate + w (ratio - rate)`` for each ``w``, mixed
    as ``infer_rates`` mixes (cells where the ratio is not a plausible rate keep ``rate``)."""
    return [ev.rate_correlation(inv._mix_in_ratio(rate, ratio, w), truth, cells) for w in weights]


def rule_table(rows, maxima=RULE_MAXIMA, starts=RULE_STARTS, ends=RULE_ENDS) -> list:
    """Every ramp rule of the grid scored on ``rows`` (dicts with ``rate``, ``ratio``,
    ``truth``, ``cells``, ``share``): ``(mean gain, worst change, maximum, start, end)`` against
    the network's map, best mean gain first."""
    base = np.array([mixed_correlations(r["rate"], r["ratio"], r["truth"], r["cells"], (0.0,))[0] for r in rows])
    out = []
    for maximum, start, end in itertools.product(maxima, starts, ends):
        if end <= start:
            continue
        got = np.array([mixed_correlations(r["rate"], r["ratio"], r["truth"], r["cells"],
                                           (inv.ratio_weight(r["share"], maximum, (start, end)),))[0]
                        for r in rows])
        out.append((float(np.mean(got - base)), float(np.min(got - base)), maximum, start, end))
    return sorted(out, key=lambda t: -t[0])


def measure(case: str, seed: int, noise: float) -> dict:
    """One nucleus: the network map, the halves' ratio, the truth and the data's noise share."""
    fields, truth = case_fields(case, seed, noise)
    cells = np.asarray(fields.mask) & np.isfinite(truth)
    result = cf.infer_rates(fields, seed=seed, ratio_weight=0.0)
    noise_models = [result.diagnostics["noise"][c] for c in ("phi_h", "phi_e")]
    share = inv._worst_share(inv._sizing_shares(noise_models))
    oracle = ev.best_smoothed_ratio(fields.phi_h, fields.phi_e, fields.mask, truth, cells=cells).corr
    return {"case": case, "seed": seed, "rate": result.rate, "ratio": result.ratio, "truth": truth,
            "cells": cells, "share": share, "oracle_ratio": oracle}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["e2e-smooth-1e6", "e2e-domain-2e6"], help="accuracy.py cases")
    p.add_argument("--seeds", nargs="+", type=int, default=[100, 101, 102], help="default: tuning seeds")
    p.add_argument("--noise", type=float, default=A.FIELD_NOISE, help="field-level noise (default 0.03)")
    p.add_argument("--weights", nargs="+", type=float, default=list(WEIGHTS))
    p.add_argument("--cache", default=os.environ.get("CHROMFLOW_HELDOUT_CACHE"))
    args = p.parse_args(argv)
    if args.cache:
        A.CACHE = Path(args.cache)
    rows = []
    rule = f"rule ({inv.RATIO_WEIGHT:g} from {inv.RATIO_WEIGHT_SHARES[0]:g} to {inv.RATIO_WEIGHT_SHARES[1]:g})"
    print("| case | seed | noise share | w of the rule | " + " | ".join(f"w = {w:g}" for w in args.weights)
          + f" | {rule} | oracle ratio |")
    print("|---|---:|---:|---:|" + "---:|" * (len(args.weights) + 2))
    for case in args.cases:
        for seed in args.seeds:
            row = measure(case, seed, args.noise)
            rows.append(row)
            w = inv.ratio_weight(row["share"])
            corrs = mixed_correlations(row["rate"], row["ratio"], row["truth"], row["cells"],
                                       list(args.weights) + [w])
            print(f"| {case} | {seed} | {row['share']:.2f} | {w:.2f} | " + " | ".join(f"{c:.3f}" for c in corrs)
                  + f" | {row['oracle_ratio']:.3f} |", flush=True)
    print("\n| mean gain | worst change | maximum | ramp start | ramp end |\n|---:|---:|---:|---:|---:|")
    table = rule_table(rows)
    chosen = (inv.RATIO_WEIGHT, *inv.RATIO_WEIGHT_SHARES)
    for gain, worst, maximum, start, end in table[:12] + [t for t in table[12:] if t[2:] == chosen]:
        mark = " (the package's)" if (maximum, start, end) == chosen else ""
        print(f"| {gain:+.4f} | {worst:+.4f} | {maximum:g}{mark} | {start:g} | {end:g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
