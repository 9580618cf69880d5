"""benchmarks/halves_independence.py tells independent frame halves from molecules seen in both."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from halves_independence import measure  # noqa: E402


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
