"""Merging the blinks of one molecule (chromflow.blinks)."""
import numpy as np
import pandas as pd
import pytest

from chromflow import InputError
from chromflow.blinks import DISTANCE_FACTOR, merge_blinks


def _blinking(n_mol=400, mean_blinks=3.0, precision=8.0, frames=4000, gap_p=1.0, seed=0, side=20000.0):
    """Molecules at known places, each localized in a geometric number of frames whose gaps are
    1 + geometric(gap_p) - 1 frames (gap_p = 1: consecutive frames)."""
    rng = np.random.default_rng(seed)
    my, mx = rng.random(n_mol) * side, rng.random(n_mol) * side
    k = rng.geometric(1.0 / mean_blinks, n_mol)
    idx = np.repeat(np.arange(n_mol), k)
    gaps = rng.geometric(gap_p, idx.size)
    starts = np.concatenate([[0], np.cumsum(k)[:-1]])
    gaps[starts] = 0
    csum = np.cumsum(gaps)
    frame = rng.integers(1, frames, n_mol)[idx] + csum - np.repeat(csum[starts], k)
    u = precision * np.exp(0.2 * rng.standard_normal(idx.size))
    locs = pd.DataFrame({"x": mx[idx] + u * rng.standard_normal(idx.size),
                         "y": my[idx] + u * rng.standard_normal(idx.size),
                         "frame": frame.astype(np.int64), "uncertainty": u,
                         "photons": np.full(idx.size, 100.0), "molecule": idx})
    return locs.sort_values("frame", kind="stable").reset_index(drop=True), mx, my


def test_merged_rows_are_the_molecules():
    locs, mx, my = _blinking()
    merged = merge_blinks(locs)
    # every merged row holds the blinks of exactly one molecule; with consecutive frames a
    # molecule splits only where a link falls outside the 99 % distance (rarely: others bridge it)
    assert 400 <= len(merged) <= 404
    assert merged["n_localizations"].sum() == len(locs)
    assert (locs.groupby("molecule")["frame"].size().sort_index().to_numpy()
            == merged.groupby("molecule")["n_localizations"].sum().sort_index().to_numpy()).all()
    mol = merged["molecule"].to_numpy()
    assert np.unique(mol).size == 400
    # position: the precision-weighted mean of the blinks is closer to the truth than one blink
    err = np.hypot(merged["x"] - mx[mol], merged["y"] - my[mol])
    assert np.median(err) < 8.0
    k = merged["n_localizations"].to_numpy()
    # combined precision of k blinks of ~8 nm each
    ratio = merged["uncertainty"].to_numpy() * np.sqrt(k) / 8.0
    assert 0.8 < np.median(ratio) < 1.2
    assert np.allclose(merged["photons"], 100.0 * k)
    assert merged["frame"].is_monotonic_increasing
    assert merged.attrs["merged_blinks"]["molecules"] == len(merged)


def test_dark_frames_link_blinks_across_gaps():
    # blinks separated by up to a few dark frames: 0 dark frames splits molecules, 3 joins them
    locs, _, _ = _blinking(gap_p=0.5, seed=1)
    tight = merge_blinks(locs, max_dark_frames=0)
    loose = merge_blinks(locs, max_dark_frames=8)
    assert len(tight) > 440
    assert 400 <= len(loose) <= 404
    # never two molecules in one row
    assert loose.groupby("molecule").size().max() == 1


def test_links_match_brute_force_components():
    """The compiled neighbour search joins exactly the connected components of all close pairs."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(3)
    n = 700
    locs = pd.DataFrame({"x": rng.random(n) * 400, "y": rng.random(n) * 300,
                         "frame": np.sort(rng.integers(0, 40, n)), "uncertainty": rng.uniform(3, 12, n),
                         "channel": rng.integers(0, 2, n)})
    x, y, f, u, c = (locs[k].to_numpy() for k in ("x", "y", "frame", "uncertainty", "channel"))
    for dark in (0, 2):
        close = ((x[:, None] - x[None]) ** 2 + (y[:, None] - y[None]) ** 2
                 <= DISTANCE_FACTOR ** 2 * (u[:, None] ** 2 + u[None] ** 2))
        lag = abs(f[:, None] - f[None])
        pairs = np.triu(close & (lag >= 1) & (lag <= dark + 1) & (c[:, None] == c[None]), 1)
        i, j = np.nonzero(pairs)
        k, labels = connected_components(coo_matrix((np.ones(i.size), (i, j)), shape=(n, n)), directed=False)
        merged = merge_blinks(locs.assign(row=np.arange(n)), max_dark_frames=dark)
        assert len(merged) == k and k < n
        # each merged row's first blink is the first row of a component, and sizes agree
        sizes = np.bincount(labels)
        assert sorted(merged["n_localizations"].tolist()) == sorted(sizes.tolist())
        assert (sizes[labels[merged["row"].to_numpy()]] == merged["n_localizations"].to_numpy()).all()


def test_channels_are_never_merged():
    locs = pd.DataFrame({"x": [100.0, 100.0], "y": [100.0, 100.0], "frame": [1, 2],
                         "uncertainty": [10.0, 10.0], "channel": [0, 1]})
    assert len(merge_blinks(locs)) == 2
    assert len(merge_blinks(locs.assign(channel=0))) == 1


def test_same_frame_and_far_apart_stay_separate():
    locs = pd.DataFrame({"x": [0.0, 5.0, 0.0, 300.0], "y": [0.0, 0.0, 0.0, 0.0], "frame": [1, 1, 5, 6],
                         "uncertainty": [10.0, 10.0, 10.0, 10.0]})
    merged = merge_blinks(locs, max_dark_frames=1)
    # same frame: two molecules; frame 5 is 3 dark frames after 1; frame 6 is 300 nm away
    assert merged["n_localizations"].tolist() == [1, 1, 1, 1]
    fixed = merge_blinks(locs, max_dark_frames=4, max_distance=4.0)
    assert fixed["n_localizations"].tolist() == [2, 1, 1]


def test_bad_tables_are_refused():
    locs = pd.DataFrame({"x": [0.0, 1.0], "y": [0.0, 1.0], "frame": [1, 2], "uncertainty": [5.0, 5.0]})
    locs.attrs["source"] = "cell.csv"
    with pytest.raises(InputError, match="cell.csv.*'frame'"):
        merge_blinks(locs.drop(columns="frame"))
    with pytest.raises(InputError, match="uncertainty"):
        merge_blinks(locs.drop(columns="uncertainty"))
    assert len(merge_blinks(locs.drop(columns="uncertainty"), max_distance=5.0)) == 1
    with pytest.raises(InputError, match="already merged"):
        merge_blinks(merge_blinks(locs))
    with pytest.raises(InputError, match="non-finite"):
        merge_blinks(locs.assign(x=[np.nan, 1.0]))
    assert len(merge_blinks(locs.iloc[:0])) == 0


def test_rows_without_a_usable_precision_are_never_merged():
    # an absurd (1e7 nm), missing or zero precision: the row stays as it is, for render to flag
    locs = pd.DataFrame({"x": [0.0, 1.0, 2.0, 0.5, 1.5], "y": [0.0] * 5, "frame": [1, 2, 3, 4, 5],
                         "uncertainty": [10.0, 1e7, np.nan, 0.0, 10.0]})
    merged = merge_blinks(locs, max_dark_frames=3)
    assert merged["n_localizations"].tolist() == [2, 1, 1, 1]
    assert merged["uncertainty"].tolist()[1] == 1e7 and np.isnan(merged["uncertainty"].tolist()[2])
    assert merged["x"].tolist() == [0.75, 1.0, 2.0, 0.5]
    from chromflow.blinks import merge_blinks_where_possible, why_not_mergeable

    assert why_not_mergeable(locs.assign(uncertainty=1e7)).startswith("no valid localization precision")
    same = merge_blinks_where_possible(locs.assign(uncertainty=1e7))
    assert len(same) == 5 and same.attrs["merged_blinks"]["skipped"].startswith("no valid")


def test_chance_links_are_estimated_and_warned_about():
    # no blinking at all: every link is between different molecules, close by chance, so the
    # estimate (the same test 500 frames apart) must read ~1 and warn; real blinks read ~0
    rng = np.random.default_rng(7)
    n = 60_000
    dense = pd.DataFrame({"x": rng.random(n) * 3000, "y": rng.random(n) * 3000,
                          "frame": np.sort(rng.integers(1, 3000, n)), "uncertainty": np.full(n, 20.0)})
    with pytest.warns(UserWarning, match="links may join different molecules"):
        merged = merge_blinks(dense)
    assert 0.8 < merged.attrs["merged_blinks"]["chance_link_fraction"] < 1.25
    locs, _, _ = _blinking(frames=4000)
    sparse = merge_blinks(locs)
    assert sparse.attrs["merged_blinks"]["chance_link_fraction"] < 0.02
    # too short an acquisition to look 500 frames apart: not known
    assert np.isnan(merge_blinks(locs.assign(frame=locs["frame"] % 300)).attrs["merged_blinks"]["chance_link_fraction"])
