"""What a single H2B channel can and cannot recover: the density split rule vs two channels vs domains.

Nuclei come from :func:`chromflow.simulate.simulate_nucleus` (known ``lambda``, ``phi_h``,
``phi_e``). A single-channel H2B image is simulated with a labelling model that is *not* the
one the density split rule of :func:`chromflow.chromatin_fields` assumes:

* ``uniform``: H2B labels all chromatin equally, density ~ ``phi_h + phi_e`` (the merged
  channels of the simulation);
* ``compact``: heterochromatin carries twice the nucleosomes per area, density ~
  ``2 phi_h + phi_e`` (re-sampled with :func:`chromflow.simulate.sample_localizations`).

For each, the rate map is inferred from the density rule (``split="density"``) and compared
with the truth (Pearson over grid cells), next to the two-channel answer (``phi_h`` and
``phi_e`` measured) as the reference. The rule's ``phi_h`` is compared with the true ``phi_h``.
The classical domain analysis runs on the same single-channel localizations; its domain ``lam``
is ranked (Spearman) against the true ``lambda`` averaged over each domain.

Usage: python benchmarks/single_channel.py [--seeds N] [--method direct|pinn] [--grid N]
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np


def _correlate_fields(fields, truth_field, sim):
    """Pearson of a field on the inference grid with a truth field of the simulation grid."""
    from scipy import ndimage

    ny, nx = np.shape(fields.phi_h)
    yy, xx = np.mgrid[:ny, :nx]
    coords = [(fields.origin[0] + yy * fields.spacing - sim.origin[0]) / sim.spacing_nm,
              (fields.origin[1] + xx * fields.spacing - sim.origin[1]) / sim.spacing_nm]
    t = ndimage.map_coordinates(np.where(sim.mask, truth_field, np.nan), coords, order=1, cval=np.nan)
    v = np.asarray(fields.phi_h, dtype=float)
    use = np.asarray(fields.mask, bool) & np.isfinite(v) & np.isfinite(t)
    return float(np.corrcoef(v[use], t[use])[0, 1])


def _domain_truth(dom, sim):
    """Spearman of domain lam with the true lambda averaged over the domain's disc."""
    from scipy.stats import spearmanr

    rows = dom.interior[np.isfinite(dom.interior["lam"])]
    truth = []
    ny, nx = sim.rate.shape
    yy, xx = np.mgrid[:ny, :nx]
    cy = sim.origin[0] + yy * sim.spacing_nm
    cx = sim.origin[1] + xx * sim.spacing_nm
    for _, r in rows.iterrows():
        near = (cy - r["y"]) ** 2 + (cx - r["x"]) ** 2 <= max(r["radius_nm"], sim.spacing_nm) ** 2
        truth.append(np.nanmean(np.where(sim.mask & near, sim.rate, np.nan)) if (sim.mask & near).any() else np.nan)
    truth = np.asarray(truth)
    ok = np.isfinite(truth)
    if ok.sum() < 3:
        return float("nan"), int(ok.sum())
    return float(spearmanr(rows["lam"].to_numpy()[ok], truth[ok])[0]), int(ok.sum())


def main(argv=None):
    import chromflow as cf
    from chromflow.cli import rate_correlation
    from chromflow.simulate import sample_localizations, simulate_nucleus

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--method", default="direct")
    parser.add_argument("--grid", type=int, default=64)
    parser.add_argument("--n", type=int, default=300_000, help="localizations per nucleus")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    print(f"method {args.method}, grid {args.grid}, {args.n:,} localizations, seeds 0..{args.seeds - 1}\n")
    print("| seed | labelling | r(lambda) single channel | r(lambda) two channels | r(phi_h rule, true phi_h) | "
          "domains | Spearman(domain lam, true lambda) |")
    print("|---|---|---|---|---|---|---|")
    results = {}
    for seed in range(args.seeds):
        sim = simulate_nucleus(grid=128, nucleus_um=10.0, n_localizations=args.n, seed=seed)
        truth = cf.Image(np.where(sim.mask, sim.rate, np.nan), pixel_size=sim.spacing_nm, origin=sim.origin)
        two = sim.localizations
        image_h = cf.render(two[two["channel"] == 0], pixel_size=50.0)
        fov = (image_h.origin[0] - 25, image_h.origin[1] - 25, image_h.origin[0] + 25 + (image_h.shape[0] - 1) * 50,
               image_h.origin[1] + 25 + (image_h.shape[1] - 1) * 50)
        all_image = cf.render(two, pixel_size=50.0, fov=fov)
        mask = cf.segment_nucleus(all_image)
        eu = cf.render(two[two["channel"] == 1], pixel_size=50.0, fov=fov)
        het = cf.render(two[two["channel"] == 0], pixel_size=50.0, fov=fov)
        ref = cf.infer_rates(cf.chromatin_fields(het, mask, grid=args.grid, euchromatin=eu), method=args.method,
                             seed=seed, device="cpu")
        r_two, _ = rate_correlation(ref, truth)
        models = {
            "uniform": two.drop(columns=["channel"]),
            "compact": sample_localizations(np.where(sim.mask, 2 * sim.phi_h + sim.phi_e, 0.0), sim.spacing_nm,
                                            args.n, seed=seed + 100, origin=sim.origin),
        }
        for name, locs in models.items():
            image = cf.render(locs, pixel_size=50.0, fov=fov)
            fields = cf.chromatin_fields(image, mask, grid=args.grid)      # the density split rule
            res = cf.infer_rates(fields, method=args.method, seed=seed, device="cpu")
            r_one, _ = rate_correlation(res, truth)
            r_phi = _correlate_fields(fields, sim.phi_h, sim)
            dom = cf.analyze_domains(locs, downsample=1)
            rho, n_dom = _domain_truth(dom, sim)
            results.setdefault(name, []).append((r_one, r_two, r_phi, rho))
            print(f"| {seed} | {name} | {r_one:.3f} | {r_two:.3f} | {r_phi:.3f} | {n_dom} | {rho:.3f} |", flush=True)
    print("\nmeans over seeds:")
    for name, rows in results.items():
        m = np.nanmean(np.asarray(rows), axis=0)
        print(f"  {name}: r single {m[0]:.3f}, r two channels {m[1]:.3f}, r(phi_h) {m[2]:.3f}, "
              f"Spearman domains {m[3]:.3f}")


if __name__ == "__main__":
    main()
