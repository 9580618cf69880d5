"""Classical domain analysis: speed and memory on an anchor-size nucleus, accuracy on known clouds.

Speed: a synthetic nucleus of the anchor's size (about 1.8 million localizations, 15.8 um across,
domains of 68 nm radius, a 200 nm LAD band) is written as a ThunderSTORM CSV and analysed end
to end (read + analyze_domains + the three outputs), as ``chromflow domains FILE --out DIR``
does. Each configuration runs in a fresh subprocess so that its peak resident memory
(``ru_maxrss``, which includes qhull's and scikit-learn's native allocations) is its own.

Accuracy: ``simulate_domains`` clouds with domain radius 60, 100 and 150 nm (spacing 6 R), a
80 nm band, over several seeds; the detected domains are matched to the true discs (centre
within R) and the radius R, spacing d, lam and LAD thickness are compared with the truth.

Usage: python benchmarks/domains.py [--quick] [--seeds N] [--threads N]
(--quick: skip the 1.8M-localization run and use 2 seeds.)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def _anchor_cloud(path, seed=0):
    from chromflow.io import write_localizations
    from chromflow.simulate import simulate_domains

    # 1.8M localizations over a 15.8 um nucleus; thinned by 4 (the default) the densities are
    # those of the known-answer clouds (background 0.0014, domains 6x denser per nm^2)
    sim = simulate_domains(nucleus_radius=7920.0, domain_radius=68.0, spacing=408.0, band_thickness=200.0,
                           background_density=0.0056, domain_density=0.028, centre=(9000.0, 9000.0), seed=seed)
    write_localizations(sim.localizations, path)
    return sim


def _one(path, out_dir, downsample):
    """Run in a subprocess: analyse one file end to end; print a JSON line."""
    import resource

    from chromflow.domains import analyze_domains_file

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dom = analyze_domains_file(path, out_dir, downsample=downsample)
    total = time.perf_counter() - t0
    s = dom.summary
    print(json.dumps({"total_s": total, "analysis_s": s["time_s"], "n": s["n_localizations"],
                      "n_analysed": s["n_analysed"], "n_domains": s["n_domains"], "n_lads": s["n_lads"],
                      "diameter": s["mean_domain_diameter_nm"], "lad": s["lad_thickness_nm"],
                      "nucleus": s["nucleus_diameter_nm"], "median_lam": s["median_lam"],
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "cpu_s": sum(resource.getrusage(resource.RUSAGE_SELF)[:2])}))


def speed(threads):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "anchor_nucleus.csv"
        t0 = time.perf_counter()
        sim = _anchor_cloud(src)
        print(f"made {len(sim.localizations):,} localizations ({len(sim.centres)} domains, R 68 nm, "
              f"d {np.median(sim.spacing):.0f} nm, LAD {sim.lad_thickness:.0f} nm) in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads))
        rows = []
        for downsample in (4, 1):
            cmd = [sys.executable, __file__, "--one", str(src), str(Path(tmp) / "out"), str(downsample)]
            if threads:
                cmd = ["taskset", "-c", ",".join(str(i) for i in range(threads))] + cmd
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            rows.append((downsample, json.loads(out.stdout.strip().splitlines()[-1])))
    print(f"\n### Speed and memory: one anchor-size nucleus, end to end ({threads} cores)\n")
    print("| downsample | localizations | analysed | total s | analysis s | CPU s (all threads) | peak RSS MB | domains | "
          "mean diameter nm (true 136) | LAD nm (true %.0f) | nucleus nm (true 15840) |" % sim.lad_thickness)
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for downsample, r in rows:
        print(f"| {downsample} | {r['n']:,} | {r['n_analysed']:,} | {r['total_s']:.1f} | {r['analysis_s']:.1f} | "
              f"{r['cpu_s']:.1f} | "
              f"{r['peak_mb']:.0f} | {r['n_domains']} | {r['diameter']:.1f} | {r['lad']:.0f} | {r['nucleus']:.0f} |")


def accuracy(seeds):
    from scipy.spatial import cKDTree

    from chromflow.domains import analyze_domains
    from chromflow.simulate import simulate_domains

    print(f"\n### Accuracy on known clouds ({seeds} seeds per radius; spacing 6 R; 80 nm band)\n")
    print("| R nm | found / true | R: median err | R: worst | d: median err | d: worst | lam: median err | "
          "lam: worst | LAD thickness err (mean, worst) | s per cloud |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for radius in (60.0, 100.0, 150.0):
        found = true = 0
        er, ed, el, elad, times = [], [], [], [], []
        for seed in range(seeds):
            sim = simulate_domains(domain_radius=radius, spacing=6 * radius, seed=seed)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dom = analyze_domains(sim.localizations, downsample=1)
            times.append(time.perf_counter() - t0)
            rows = dom.interior
            dist, j = cKDTree(np.c_[rows["y"], rows["x"]]).query(sim.centres)
            ok = dist < radius
            found += int(ok.sum())
            true += len(sim.centres)
            m = rows.iloc[j[ok]]
            er.extend(m["radius_nm"].to_numpy() / radius - 1)
            ed.extend(m["spacing_nm"].to_numpy() / sim.spacing[ok] - 1)
            el.extend(m["lam"].to_numpy() / sim.lam[ok] - 1)
            elad.append(dom.summary["lad_thickness_nm"] / sim.lad_thickness - 1)
        er, ed, el, elad = (np.asarray(v) for v in (er, ed, el, elad))

        def pct(v, f):
            return f"{100 * f(v):+.1f} %"
        worst = lambda v: v[np.argmax(np.abs(v))]  # noqa: E731
        print(f"| {radius:.0f} | {found} / {true} | {pct(er, np.median)} | {pct(er, worst)} | {pct(ed, np.median)} | "
              f"{pct(ed, worst)} | {pct(el, np.median)} | {pct(el, worst)} | {pct(elad, np.mean)}, {pct(elad, worst)} | "
              f"{np.mean(times):.1f} |")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--one":
        _one(argv[1], argv[2], int(argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="no 1.8M run; 2 seeds")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="cores for the speed run (taskset)")
    parser.add_argument("--speed-only", action="store_true")
    args = parser.parse_args(argv)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible; "
          f"load average {os.getloadavg()[0]:.1f} (other jobs share the cores: wall times grow with it)")
    if not args.quick:
        speed(args.threads)
    if not args.speed_only:
        accuracy(2 if args.quick else args.seeds)


if __name__ == "__main__":
    main()
