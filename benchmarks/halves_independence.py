"""Do two halves of the frames hold independent molecules? Pair correlation within and across halves.

chromflow's split-half refit (the quality score ``split_half_r``, the noise part of the
uncertainty, the stopping step) and the width of ``result.ratio`` take the localizations of two
halves of the acquisition (``chromflow.pipeline.half_of_frames``: blocks of frames) as
independent draws. They are not when a dye switches on again much later: blink merging links
only nearby frames, so such a molecule is counted in both halves.

This script measures it on any localization file. After blink merging (as ``chromflow run``
does), it counts pairs of molecules by distance, within one half and across the two halves,
and prints their pair correlation ``g(r)`` (pairs per unit area, relative to 160-240 nm). Both
carry the sample's own clustering; a molecule seen twice adds a peak at distances of the
localization precision. The summary is the peak over its neighbouring bin,
``g(< 2 precisions) - g(2-4 precisions)``, within and across halves: ~0 across means
independent halves; across as large as within means molecules return anywhere in the
acquisition.

It then prints what ``chromflow run`` acts on: the same test at the scale of the grid cells
(``chromflow.inverse.noise.half_independence`` per channel, default pipeline settings, any
number of objects accepted), where a molecule seen in both halves and structure that the grid
resolves are told apart by binning (docs/inference.md, "When the halves are not independent").
Beside it, per channel, the noise's correlation between neighbouring cells and cells two apart
as ``chromflow.inverse.noise.noise_correlation`` reads it from the whole data, and the check the
halves allow: the variance of ``A - X`` (the whole data's noise variance, for independent halves)
over the high-pass reading, against the ``variance_factor`` read (docs/inference.md, "Noise that
neighbouring cells share").

Usage::

    python benchmarks/halves_independence.py FILE [FILE ...] [--block 100] [--no-merge]
        [--euchromatin-channel VALUE] [--grid N]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import chromflow as cf  # noqa: E402
from chromflow.inverse.noise import MIN_HALF_INDEPENDENCE  # noqa: E402
from chromflow.pipeline import HALF_FRAME_BLOCK, half_of_frames  # noqa: E402

#: distance bins (nm) of the table; the last one is the reference level
EDGES_NM = (0, 10, 20, 30, 40, 60, 80, 120, 160, 240)


def pair_correlation(a, b, edges, same: bool):
    """Pairs per unit area in each distance bin (unordered pairs within one set when ``same``)."""
    ta, tb = cKDTree(a), cKDTree(b)
    counts = np.array([ta.count_neighbors(tb, r) for r in edges], dtype=float)
    if same:
        counts = (counts - len(a)) / 2.0        # no self pairs, each pair once
    return np.diff(counts) / (np.pi * np.diff(np.asarray(edges, float) ** 2))


def measure(path, block: int = HALF_FRAME_BLOCK, merge: bool = True) -> dict:
    locs = cf.read_localizations(path)
    mol = cf.merge_blinks(locs) if merge else locs
    half = half_of_frames(mol, block)
    if half is None:
        raise SystemExit(f"{path}: no frame column or too few blocks of {block} frames")
    other = mol.drop(half.index)
    a, b = half[["x", "y"]].to_numpy(), other[["x", "y"]].to_numpy()
    within = 0.5 * (pair_correlation(a, a, EDGES_NM, True) + pair_correlation(b, b, EDGES_NM, True))
    cross = pair_correlation(a, b, EDGES_NM, False)
    # each relative to its own level at the reference bin: g = 1 there
    within, cross = within / within[-1], cross / cross[-1]
    precision = float(np.nanmedian(locs["uncertainty"])) if "uncertainty" in locs else 10.0
    near = [2 * precision, 4 * precision]
    fine = (0.0, near[0], near[1])

    def peak(x, y, same):
        g = pair_correlation(x, y, fine, same) / pair_correlation(x, y, (160.0, 240.0), same)[0]
        return float(g[0] - g[1])

    return {"file": str(path), "localizations": len(locs), "molecules": len(mol), "frames": int(locs["frame"].max()),
            "precision_nm": precision, "within": within, "cross": cross,
            "peak_within": 0.5 * (peak(a, a, True) + peak(b, b, True)), "peak_cross": peak(a, b, False)}


def grid_scale(path, euchromatin_channel=None, grid=None) -> dict:
    """``half_independence`` of each channel on the grid ``chromflow run`` would use (NaN when
    the file has no usable halves)."""
    from scipy import ndimage

    from chromflow import pipeline as pl
    from chromflow.inverse.noise import estimate_noise, half_independence, local_level, noise_correlation

    settings = pl.PipelineSettings()
    settings.segmentation.allow_several_objects = True
    settings.fields.euchromatin_channel = euchromatin_channel
    settings.fields.grid = grid
    loaded = pl.load_input(path, settings)
    mask = pl.segment(loaded.density, settings)
    fields = pl.compute_fields(loaded.density, mask, settings, loaded.euchromatin, loaded.half)
    region = fields.mask & ~fields.edge
    out = {"grid": fields.phi_h.shape[0], "spacing_nm": fields.spacing}
    for name, whole, part in zip(("phi_h", "phi_e"), (fields.phi_h, fields.phi_e), fields.half or (None, None)):
        out[name] = float("nan") if part is None else half_independence(whole, part, region)
        nc = noise_correlation(whole, region)
        out[f"{name}_rho"], out[f"{name}_rho2"], out[f"{name}_factor"] = nc.rho, nc.rho2, nc.variance_factor
        out[f"{name}_halves_factor"] = float("nan")
        if part is not None:
            # A - X = (A - B) / 2: noise only; a 9-cell local mean takes out any slow offset
            diff = np.where(fields.mask, part - whole, 0.0)
            diff = diff - ndimage.uniform_filter(diff, 9)
            read = estimate_noise(whole, region).variance(local_level(whole, region))
            out[f"{name}_halves_factor"] = float(np.mean(diff[region] ** 2) / np.mean(read[region]))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--block", type=int, default=HALF_FRAME_BLOCK, help="frames per block of the halves")
    parser.add_argument("--no-merge", action="store_true", help="keep every localization (no blink merging)")
    parser.add_argument("--euchromatin-channel", default=None,
                        help="value of the channel column that holds the euchromatin mark (two-channel files)")
    parser.add_argument("--grid", type=int, default=None, help="grid cells per side (default: the pipeline's)")
    args = parser.parse_args(argv)
    for path in args.files:
        m = measure(path, args.block, not args.no_merge)
        print(f"\n## {m['file']}\n\n{m['localizations']} localizations, {m['molecules']} after merging, "
              f"{m['frames']} frames, median precision {m['precision_nm']:.1f} nm, halves by blocks of {args.block} "
              "frames\n")
        print("| distance (nm) | g within a half | g across halves |\n|---|---|---|")
        for lo, hi, w, c in zip(EDGES_NM[:-1], EDGES_NM[1:], m["within"], m["cross"]):
            print(f"| {lo}-{hi} | {w:.2f} | {c:.2f} |")
        p = m["precision_nm"]
        print(f"\npeak g(< {2 * p:.0f} nm) - g({2 * p:.0f}-{4 * p:.0f} nm): within a half {m['peak_within']:.2f}, "
              f"across halves {m['peak_cross']:.2f} (about 0 across: independent halves)")
        channel = args.euchromatin_channel
        channel = int(channel) if channel is not None and channel.lstrip("-").isdigit() else channel
        g = grid_scale(path, channel, args.grid)
        print(f"\ngrid scale ({g['grid']} x {g['grid']} cells of {g['spacing_nm']:.1f} nm): half_independence "
              f"phi_h {g['phi_h']:.2f}, phi_e {g['phi_e']:.2f} (~1 independent; below "
              f"{MIN_HALF_INDEPENDENCE} chromflow scales the halves' difference up)")
        for name in ("phi_h", "phi_e"):
            print(f"{name}: noise correlation {g[name + '_rho']:.2f} between neighbouring cells, "
                  f"{g[name + '_rho2']:.2f} between cells two apart, variance over the "
                  f"high-pass reading {g[name + '_factor']:.2f} (noise_correlation) against "
                  f"{g[name + '_halves_factor']:.2f} (the halves)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
