"""benchmarks/halves_independence.py tells independent frame halves from molecules seen in both."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from halves_independence import grid_scale, measure  # noqa: E402


def _table(rng, n, returns: bool):
    """Molecules uniform over 6 x 6 um, each on in one frame of 4000; with ``returns``, each also
    again at a random later frame (a dye that switches on again), 10 nm precision each time."""
    xy = rng.uniform(0, 6000, (n, 2))
    frames = rng.integers(1, 4001, n)
    rows = [(xy, frames)]
    if returns:
        rows.append((xy, rng.integers(1, 4001, n)))
    parts = [pd.DataFrame({"x": p[:, 0] + 10 * rng.standard_normal(n), "y": p[:, 1] + 10 * rng.standard_normal(n),
                           "frame": f, "uncertainty": 10.0}) for p, f in rows]
    return pd.concat(parts, ignore_index=True).sort_values("frame")


@pytest.mark.parametrize("returns", [False, True])
def test_the_peak_across_halves_shows_molecules_seen_in_both(tmp_path, returns):
    path = tmp_path / "locs.csv"
    _table(np.random.default_rng(1), 20_000, returns).to_csv(path, index=False)
    m = measure(path)
    if returns:
        # about half of the returns land in the other half of the frames: a peak across as
        # high as within (~0.4 at this density: one extra pair per molecule, against ~0.7 pairs
        # within 20 nm by chance)
        assert m["peak_cross"] > 0.25 and m["peak_within"] > 0.25
    else:
        assert abs(m["peak_cross"]) < 0.1 and abs(m["peak_within"]) < 0.1


def _disc_table(rng, n, returns: bool):
    """Molecules in a 2.5 um disc (a nucleus to segment) plus sparse background over 8 x 8 um."""
    r, t = 2500 * np.sqrt(rng.random(n)), 2 * np.pi * rng.random(n)
    xy = np.stack([4000 + r * np.cos(t), 4000 + r * np.sin(t)], axis=1)
    rows = [(xy, rng.integers(1, 4001, n))] + ([(xy, rng.integers(1, 4001, n))] if returns else [])
    parts = [pd.DataFrame({"x": p[:, 0] + 10 * rng.standard_normal(n), "y": p[:, 1] + 10 * rng.standard_normal(n),
                           "frame": f, "uncertainty": 10.0}) for p, f in rows]
    parts.append(pd.DataFrame({"x": rng.uniform(0, 8000, 2000), "y": rng.uniform(0, 8000, 2000),
                               "frame": rng.integers(1, 4001, 2000), "uncertainty": 10.0}))
    return pd.concat(parts, ignore_index=True).sort_values("frame")


def test_grid_scale_reads_lower_when_molecules_return(tmp_path):
    """The script's grid-scale line: the pipeline's fields and halves, and the library's test of
    them. Molecules seen twice, in either half, share part of the noise between the halves."""
    out = {}
    for returns in (False, True):
        path = tmp_path / f"locs_{returns}.csv"
        _disc_table(np.random.default_rng(1), 40_000, returns).to_csv(path, index=False)
        out[returns] = grid_scale(path)
    assert np.isfinite(out[False]["phi_h"]) and np.isfinite(out[True]["phi_h"])
    assert out[True]["phi_h"] < out[False]["phi_h"] - 0.08


def test_grid_scale_variance_factor_read_from_the_whole_data_matches_the_halves(tmp_path):
    """Known answer from the data themselves: with independent halves, ``A - X`` carries the
    whole data's noise variance, the part neighbouring cells share included. The factor that
    ``noise_correlation`` reads from the whole data alone must give the same variance (a
    two-channel table, so both fields are linear in the counts)."""
    rng = np.random.default_rng(1)
    table = pd.concat([_disc_table(rng, 60_000, False).assign(channel=c) for c in (0, 1)]).sort_values("frame")
    path = tmp_path / "two_channel.csv"
    table.to_csv(path, index=False)
    g = grid_scale(path, euchromatin_channel=1)
    for name in ("phi_h", "phi_e"):
        # rendering and resampling share noise between cells: the high-pass alone misses ~half
        assert g[f"{name}_halves_factor"] > 1.5 and g[f"{name}_rho"] > 0.1, g
        assert abs(g[f"{name}_factor"] / g[f"{name}_halves_factor"] - 1) < 0.15, g
