"""Calibrate the bias factor of the rate-map uncertainty on tuning cases of the held-out simulator.

``result.uncertainty`` is ``sqrt((1 + g^2) noise_var + f^2 excess + shift^2)`` (docs/inference.md,
"Uncertainty"): ``noise_var`` from data fission, ``excess`` the bootstrap refit's error beyond
the noise, ``f`` :data:`chromflow.inverse.BIAS_INFLATION`, ``g``
:data:`chromflow.inverse.MODEL_ERROR_FLOOR`, ``shift`` how far the smoothed-ratio mix moved the
map (since 0.9). The per-case table printed after the run varies
``f`` at ``g = 0``; ``--table-from`` varies both. This script runs ``benchmarks/accuracy.py`` cases
with the default settings, keeps both parts of every map, and prints the coverage of the
nominal 90 % interval on the compared cells for a range of ``f``, so that ``f`` can be chosen
on tuning seeds and checked on reported ones.

Usage::

    python benchmarks/calibrate_uncertainty.py --cases field-nucleus-smooth-50nm field-nucleus-domain-50nm --tuning --seeds 100 101

``--table-from DIR`` prints the coverage of the saved cases under error models with a floor
proportional to the noise part (:func:`error_model_table`). ``--zones-from DIR [--check DIR2]``
chooses ``(f, g)`` separately for the deep cells and the edge-bias zone (:func:`zone_table`) and
prints the coverage on all and on interior cells, also for the cases of ``DIR2``. Any other option is passed to
``accuracy.py`` (``--set``, ``--noise``, ...). With
``--save DIR`` each case's parts, map, truth and compared cells are written to
``DIR/<case>_s<seed>.npz`` for other error models to be tried offline.
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


def _shift(saved):
    """The ratio mix's shift of a saved case: the saved one, else (cases saved before 0.9) the
    one the saved ratio and weight imply (zero where no ratio was saved or mixed in)."""
    if "mix_shift" in saved:
        return saved["mix_shift"]
    if "ratio" not in saved or not saved["ratio_weight"] > 0:
        return np.zeros_like(saved["noise_var"])
    w, rate = float(saved["ratio_weight"]), saved["rate"]
    # rate = net + w (ratio - net), so the shift w (ratio - net) is w / (1 - w) (ratio - rate):
    # the package's mix at that weight, on the cells it mixes (0 elsewhere, and off the map)
    return np.nan_to_num(inv._mix_in_ratio(rate, saved["ratio"], w / (1.0 - w)) - rate)


def error_model_table(directory, factors=FACTORS, floors=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0)):
    """Coverage of saved cases (``--save``) under ``sd^2 = (1 + g^2) noise_var + f^2 excess``.

    ``g`` puts a floor under the error proportional to the noise part (for error the bootstrap
    cannot see); ``g = 0`` is the model without that floor. Prints, for every (f, g), the coverage per case
    and how many cases land in 0.80-0.95, best first.
    """
    cases = {}
    for path in sorted(Path(directory).glob("*.npz")):
        z = np.load(path)
        ok = z["cells"]
        cases[path.stem] = (np.abs(z["rate"] - z["truth"])[ok], z["noise_var"][ok], z["excess"][ok], _shift(z)[ok])
    settings = [(f, g) for f in factors for g in floors]
    covs = [[float(np.mean(err <= Z90 * np.sqrt(inv.uncertainty_variance(nv, ex, f, g, shift))))
             for err, nv, ex, shift in cases.values()] for f, g in settings]
    print("| f | g | in 0.80-0.95 | " + " | ".join(cases) + " |")
    print("|---|---|---|" + "---|" * len(cases))
    for i in _choose(covs)[:15]:
        (f, g), cov = settings[i], covs[i]
        inside = sum(0.80 <= c <= 0.95 for c in cov)
        print(f"| {f:g} | {g:g} | {inside}/{len(cov)} | " + " | ".join(f"{c:.3f}" for c in cov) + " |")


def _choose(coverages):
    """Indices of the settings, best first: the most cases in 0.80-0.95, then the smallest worst
    distance from 0.875 (``coverages``: one list of per-case coverages per setting)."""
    def key(i):
        cov = coverages[i]
        return (-sum(0.80 <= c <= 0.95 for c in cov), max(abs(c - 0.875) for c in cov))
    return sorted(range(len(coverages)), key=key)


def zone_table(directory, check=None, factors=FACTORS, floors=(0.0, 0.5, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0),
               cell_nm=50.0, interior_nm=250.0):
    """Choose ``(f, g)`` separately for the cells deeper than ``EDGE_BIAS_DEPTH_UM`` and for the
    edge-bias zone (:func:`chromflow.inverse.result.edge_bias_zone`) on the saved cases of
    ``directory``; print both choices and the coverage they give on all compared cells and on
    the interior ones (at least ``interior_nm`` inside), for ``directory`` and for ``check``
    (saved reported cases: checked, not chosen on).
    """
    from scipy import ndimage

    from chromflow.inverse.result import edge_bias_zone

    def load(folder):
        out = {}
        for path in sorted(Path(folder).glob("*.npz")):
            z = np.load(path)
            ok = z["cells"].astype(bool) & np.isfinite(z["rate"]) & np.isfinite(z["truth"])
            out[path.stem] = dict(err=np.abs(z["rate"] - z["truth"]), nv=z["noise_var"], ex=z["excess"], ok=ok,
                                  shift=_shift(z),
                                  zone=edge_bias_zone(z["cells"].astype(bool), cell_nm),
                                  interior=ndimage.distance_transform_edt(z["cells"]) * cell_nm >= interior_nm)
        return out

    def coverage(case, deep, edge, cells):
        f = np.where(case["zone"], edge[0], deep[0])
        g = np.where(case["zone"], edge[1], deep[1])
        sd = np.sqrt(inv.uncertainty_variance(case["nv"], case["ex"], f, g, case["shift"]))
        return float(np.mean(case["err"][cells] <= Z90 * sd[cells]))

    tuning = load(directory)
    settings = [(f, g) for f in factors for g in floors]
    chosen = {}
    for name, in_zone in (("deep", False), ("edge zone", True)):
        covs = [[coverage(c, fg, fg, c["ok"] & (c["zone"] == in_zone)) for c in tuning.values()] for fg in settings]
        order = _choose(covs)
        chosen[name] = settings[order[0]]
        print(f"\n{name}: best (f, g) on {directory}\n")
        print("| f | g | in 0.80-0.95 | " + " | ".join(tuning) + " |")
        print("|---|---|---|" + "---|" * len(tuning))
        for i in order[:5]:
            inside = sum(0.80 <= c <= 0.95 for c in covs[i])
            print(f"| {settings[i][0]:g} | {settings[i][1]:g} | {inside}/{len(tuning)} | "
                  + " | ".join(f"{c:.3f}" for c in covs[i]) + " |")
    # the comparison: one pair for all cells, chosen by the same rule on all cells
    covs = [[coverage(c, fg, fg, c["ok"]) for c in tuning.values()] for fg in settings]
    single = settings[_choose(covs)[0]]
    deep, edge = chosen["deep"], chosen["edge zone"]
    print(f"\nchosen: deep f = {deep[0]:g}, g = {deep[1]:g}; edge zone f = {edge[0]:g}, g = {edge[1]:g}; "
          f"one pair for all cells f = {single[0]:g}, g = {single[1]:g}\n")
    print("| cases | error model | cells | in 0.80-0.95 | range | mean |")
    print("|---|---|---|---|---|---|")
    for label, cases in (("tuning", tuning), ("check", load(check) if check else {})):
        for model, (d, e) in (("one pair (%g, %g) for all cells" % single, (single, single)),
                              ("by zone", (deep, edge))):
            for cells_name in ("all", "interior"):
                cov = [coverage(c, d, e, c["ok"] & (c["interior"] if cells_name == "interior" else True))
                       for c in cases.values()]
                if cov:
                    print(f"| {label} | {model} | {cells_name} | {sum(0.80 <= c <= 0.95 for c in cov)}/{len(cov)} | "
                          f"{min(cov):.3f}-{max(cov):.3f} | {np.mean(cov):.3f} |")
    return chosen


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--table-from" in argv:
        error_model_table(argv[argv.index("--table-from") + 1])
        return
    if "--zones-from" in argv:
        check = argv[argv.index("--check") + 1:] if "--check" in argv else []
        zone_table(argv[argv.index("--zones-from") + 1], check=check[0] if check else None)
        return
    save = None
    if "--save" in argv:
        i = argv.index("--save")
        save = Path(argv[i + 1])
        del argv[i:i + 2]
        save.mkdir(parents=True, exist_ok=True)
    parts = {}
    total = inv._total_uncertainty

    def keep_parts(rate, noise_var, boot_rate, boot_truth, mask, interior, radius, inflation, floor=0.0,
                   mix_shift=0.0):
        if not parts:  # the case's own map comes first; the oracle baselines' runs follow
            parts.update(noise_var=noise_var, inflation=inflation, mix_shift=np.broadcast_to(mix_shift, mask.shape),
                         excess=inv.bootstrap_excess(noise_var, boot_rate, boot_truth, mask, radius),
                         boot_err2=np.where(mask, (boot_rate - boot_truth) ** 2, np.nan), radius=radius)
        return total(rate, noise_var, boot_rate, boot_truth, mask, interior, radius, inflation, floor, mix_shift)

    row_of = A._row
    lines = []

    def row(case, seed, result, truth, fields, cells, seconds, sim):
        out = row_of(case, seed, result, truth, fields, cells, seconds, sim)
        if parts:
            ok = cells & np.isfinite(result.rate) & np.isfinite(truth)
            err = np.abs(result.rate - truth)[ok]
            cov = []
            for f in FACTORS:
                sd = np.sqrt(inv.uncertainty_variance(parts["noise_var"], parts["excess"], f,
                                                      mix_shift=parts["mix_shift"]))[ok]
                cov.append(float(np.mean(err <= Z90 * sd)))
            if save is not None:
                # the smoothed ratio, the mask and the mixed-in share too: error models that use
                # the map's distance from the ratio can be tried offline
                np.savez_compressed(save / f"{case}_s{seed}.npz", rate=result.rate, truth=truth, cells=ok,
                                    noise_var=parts["noise_var"], excess=parts["excess"],
                                    uncertainty=result.uncertainty, ratio=result.ratio, mask=result.mask,
                                    mix_shift=parts["mix_shift"], boot_err2=parts["boot_err2"],
                                    radius=parts["radius"],
                                    ratio_weight=float(result.summary().get("ratio_weight", np.nan)))
            size = f"{result.settings.get('width')}x{result.settings.get('depth')}"
            # one factor, or one per zone (deep / edge-bias zone: the smaller is the deep one)
            f_now = "/".join(f"{v:g}" for v in np.unique(np.asarray(parts["inflation"], dtype=float)))
            lines.append(f"| {case} | {seed} | {size} | {f_now} | "
                         + " | ".join(f"{c:.3f}" for c in cov) + " |")
            print(lines[-1], flush=True)
            parts.clear()
        return out

    inv._total_uncertainty = keep_parts
    A._row = row
    A.main(argv)
    print("\n## Coverage of the nominal 90 % interval by bias factor f\n")
    print("| case | seed | network | f now (deep/zone) | " + " | ".join(f"f={f:g}" for f in FACTORS) + " |")
    print("|---|---|---|---|" + "---|" * len(FACTORS))
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
