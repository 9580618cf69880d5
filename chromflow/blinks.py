"""Merge the blinks of one molecule: repeated localizations in nearby frames become one row.

A fluorophore in SMLM blinks: it is localized in several frames, close in time, at the same
place up to its precision. Counted as they are, these repeats make a density image noisier
than the number of molecules warrants: the number of localizations in a cell is a sum of
random blink counts, whose variance is ``E[K^2] / E[K]`` times its mean (1.67 for geometric
blinking with 3 blinks on average) instead of the mean itself. Merging them is the usual first
step of SMLM post-processing (ThunderSTORM "merging", Picasso "link"); it keeps the positions
(each merged row is the precision-weighted mean of its blinks, with the combined precision) and
turns counts of localizations into counts of molecules.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError
from .render import MAX_SIGMA_NM, _source

if TYPE_CHECKING:  # pandas is imported when a table is merged, not with the module
    import pandas as pd

__all__ = ["merge_blinks", "merge_blinks_where_possible", "why_not_mergeable", "merge_note", "DEFAULT_MAX_DARK_FRAMES", "DISTANCE_FACTOR", "CHANCE_LAG", "MAX_CHANCE_FRACTION"]

#: Frames a molecule may stay dark between two of its blinks and still be linked (as Picasso's
#: ``max_dark_time`` and ThunderSTORM's "off frames", whose defaults are 1).
DEFAULT_MAX_DARK_FRAMES = 1
#: Two localizations are linked when their distance is at most this factor times their combined
#: precision ``sqrt(u_a^2 + u_b^2)``: the distance between two independent localizations of
#: one point is Rayleigh-distributed with that scale, and 3.03 is its 99th percentile.
DISTANCE_FACTOR = 3.03
#: Chance links are counted with the same test this many frames apart, where no blink is left.
CHANCE_LAG = 500
#: ... by every this-many-th localization (the count is scaled back).
CHANCE_STRIDE = 4
#: A warning when more than this share of the links may be chance ones.
MAX_CHANCE_FRACTION = 0.10


def _candidate_pairs(x, y, frame, chan, radius, max_lag, min_lag=1, stride=1):
    """Pairs ``(i, j)`` of rows in the same channel, in cells of side ``radius`` next to each
    other, with ``min_lag <= frame[j] - frame[i] <= max_lag``: every pair closer than
    ``radius`` with such a lag is among them, each once (``min_lag >= 1``).

    The rows are sorted by (channel, cell, frame); a row's partners in each of the 9
    neighbouring cells are then one contiguous run, found by binary search. Vectorised, so its
    cost grows as n log n whatever the density per frame. With ``stride`` > 1 only every
    ``stride``-th row (in that order) looks for partners: a sample, for counting.
    """
    cy = np.floor((y - y.min()) / radius).astype(np.int64) + 1    # +1: neighbours never wrap
    cx = np.floor((x - x.min()) / radius).astype(np.int64) + 1
    nyc, nxc = int(cy.max()) + 2, int(cx.max()) + 2
    fr = (frame - frame.min()).astype(np.int64)
    big = int(fr.max()) + max_lag + 2
    comp = ((chan.astype(np.int64) * nyc + cy) * nxc + cx) * big + fr
    order = np.argsort(comp, kind="stable")
    cs = comp[order]
    rows_q = np.arange(0, cs.size, int(stride))
    out_i, out_j = [], []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            q = cs[rows_q] + (dy * nxc + dx) * big
            lo = np.searchsorted(cs, q + min_lag, side="left")
            hi = np.searchsorted(cs, q + max_lag, side="right")
            cnt = hi - lo
            total = int(cnt.sum())
            if total == 0:
                continue
            at = np.repeat(np.arange(rows_q.size), cnt)
            partner = lo[at] + (np.arange(total) - (np.cumsum(cnt) - cnt)[at])
            out_i.append(order[rows_q[at]])
            out_j.append(order[partner])
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_i), np.concatenate(out_j)


def _valid_precision(u) -> np.ndarray:
    u = np.asarray(u, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(u) & (u > 0) & (u <= MAX_SIGMA_NM)


def why_not_mergeable(locs) -> str | None:
    """Why :func:`merge_blinks` cannot merge this table, in words; None when it can.

    A table needs a ``frame`` column and localization precisions (``uncertainty``), and must not
    be merged already (Picasso's *link* writes ``frame_mean``; :func:`merge_blinks` writes
    ``n_localizations``).

    Examples
    --------
    >>> import pandas as pd
    >>> why_not_mergeable(pd.DataFrame({"x": [0.0], "y": [0.0]}))
    'no frame column'
    """
    cols = set(getattr(locs, "columns", ()))
    if "frame" not in cols:
        return "no frame column"
    if {"n_localizations", "frame_mean"} & cols:
        return "already merged by the software that wrote the file"
    if "uncertainty" not in cols:
        return "no localization precision (uncertainty) column"
    if len(locs) and not _valid_precision(locs["uncertainty"].to_numpy(np.float64)).any():
        return f"no valid localization precision (in (0, {MAX_SIGMA_NM:g}] nm)"
    return None


def merge_blinks(locs: "pd.DataFrame", max_dark_frames: int = DEFAULT_MAX_DARK_FRAMES,
                 max_distance: float | None = None) -> "pd.DataFrame":
    """Merge the repeated localizations of each molecule into one row.

    Two localizations are linked when they are in the same channel, in different frames at most
    ``max_dark_frames + 1`` apart, and closer than ``max_distance`` (or, by default, closer than
    :data:`DISTANCE_FACTOR` times their combined precision). Links are followed transitively, so
    a molecule on in frames 10, 11 and 13 is one row.

    Parameters
    ----------
    locs : DataFrame
        Localizations with ``x``, ``y`` (nm) and ``frame``; ``uncertainty`` (nm) is needed
        unless ``max_distance`` is given; ``channel`` keeps channels apart.
    max_dark_frames : int
        Largest number of frames without a localization between two blinks of one molecule.
    max_distance : float, optional
        Fixed linking distance in nm, for every pair; default from each pair's precisions.

    Returns
    -------
    DataFrame
        One row per molecule, sorted by first frame, with the columns of ``locs``: ``x``,
        ``y`` (and ``z``) the mean of the blinks weighted by ``1 / uncertainty^2``;
        ``uncertainty`` the combined precision ``(sum u^-2)^-1/2``; ``frame`` the first frame;
        ``photons`` the sum; ``sigma`` the mean; other columns the first blink's value. A new
        column ``n_localizations`` counts the blinks merged into each row. ``attrs`` are kept,
        with ``merged_blinks`` recording the settings, the counts and ``chance_link_fraction``:
        the links that the same test finds :data:`CHANCE_LAG` frames apart, where no blink is
        left, over the links made (an estimate of the share joining different molecules; NaN for
        acquisitions too short to tell; above :data:`MAX_CHANCE_FRACTION` a warning is given).

    Raises
    ------
    InputError
        No ``frame`` column, non-finite positions, an already merged table (``n_localizations``
        or Picasso's linked ``frame_mean``), or neither ``uncertainty`` nor ``max_distance``.

    Examples
    --------
    >>> import pandas as pd
    >>> locs = pd.DataFrame({"x": [100.0, 102.0, 5000.0], "y": [200.0, 199.0, 300.0],
    ...                      "frame": [1, 2, 2], "uncertainty": [10.0, 10.0, 10.0]})
    >>> merged = merge_blinks(locs)
    >>> merged[["x", "frame", "n_localizations"]].values.tolist()
    [[101.0, 1.0, 2.0], [5000.0, 2.0, 1.0]]
    """
    import pandas as pd
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    source = _source(locs)
    cols = set(getattr(locs, "columns", ()))
    if "frame" not in cols:
        raise InputError("merging blinks needs a 'frame' column (the camera frame of each localization)", source)
    if "n_localizations" in cols or "frame_mean" in cols:
        raise InputError("the localizations are already merged (column 'n_localizations' or 'frame_mean'); "
                         "merge blinks only once", source)
    chance_fraction = float("nan")
    max_dark_frames = int(max_dark_frames)
    if max_dark_frames < 0:
        raise ValueError(f"max_dark_frames must be >= 0, got {max_dark_frames}")
    n = len(locs)
    x = locs["x"].to_numpy(np.float64)
    y = locs["y"].to_numpy(np.float64)
    frame = locs["frame"].to_numpy(np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all() and np.isfinite(frame).all()):
        raise InputError("non-finite x, y or frame values; cannot merge blinks", source)
    u_raw = locs["uncertainty"].to_numpy(np.float64) if "uncertainty" in cols else None
    # rows without a usable precision (missing, <= 0, or absurd: render replaces or refuses
    # those, and says so) are never linked: they stay as they are, for render to see
    linkable = np.ones(n, bool) if u_raw is None else _valid_precision(u_raw)
    u = None if u_raw is None or (n and not linkable.any()) else np.where(linkable, u_raw, 1.0)
    if max_distance is None:
        if u is None:
            raise InputError("merging blinks needs localization precisions (an 'uncertainty' column with "
                             f"values in (0, {MAX_SIGMA_NM:g}] nm) or a fixed max_distance (nm)", source)
        # candidates within the radius that links two localizations of the 99th-percentile precision
        radius = DISTANCE_FACTOR * np.sqrt(2.0) * float(np.quantile(u[linkable], 0.99)) if n else 1.0
    else:
        radius = float(max_distance)
        if not (np.isfinite(radius) and radius > 0):
            raise ValueError(f"max_distance must be a positive number of nm, got {max_distance}")

    if n:
        chan = pd.factorize(locs["channel"])[0] if "channel" in cols else np.zeros(n, np.int64)

        def close(pair):
            i, j = pair
            d2 = (x[i] - x[j]) ** 2 + (y[i] - y[j]) ** 2
            limit2 = radius ** 2 if max_distance is not None else DISTANCE_FACTOR ** 2 * (u[i] ** 2 + u[j] ** 2)
            keep = (d2 <= limit2) & linkable[i] & linkable[j]
            return i[keep], j[keep]

        lag = max_dark_frames + 1
        i, j = close(_candidate_pairs(x, y, frame, chan, radius, lag))
        span = float(np.ptp(frame)) + 1
        if span > CHANCE_LAG + lag:
            # the same test CHANCE_LAG frames later finds pairs that are close by chance (or a
            # molecule that came back); as many join different molecules among the links
            # (every CHANCE_STRIDE-th localization looks: a count, not the links, is needed)
            ci, _ = close(_candidate_pairs(x, y, frame, chan, radius, CHANCE_LAG + lag, CHANCE_LAG + 1,
                                           stride=CHANCE_STRIDE))
            chance = ci.size * CHANCE_STRIDE * span / (span - CHANCE_LAG)
            chance_fraction = chance / max(i.size, 1)
        _, labels = connected_components(coo_matrix((np.ones(i.size, np.int8), (i, j)), shape=(n, n)),
                                         directed=False)
    else:
        labels = np.zeros(0, np.int64)
    # groups numbered in the order of their first blink (frame, then row); labels are 0..k-1
    order = np.arange(n) if np.all(frame[1:] >= frame[:-1]) else np.argsort(frame, kind="stable")
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    m = int(labels.max()) + 1 if n else 0
    first_pos = np.full(m, n, np.int64)
    np.minimum.at(first_pos, labels, rank)
    relabel = np.empty(m, np.int64)
    relabel[np.argsort(first_pos, kind="stable")] = np.arange(m)
    group = relabel[labels]
    first_rows = order[np.sort(first_pos)]

    count = np.bincount(group, minlength=m).astype(np.float64)
    w = np.where(linkable, 1.0 / u ** 2, 1.0) if u is not None else np.ones(n)
    wsum = np.bincount(group, w, minlength=m)
    out = locs.iloc[first_rows].copy()
    for col in ("x", "y", "z"):
        if col in cols:
            out[col] = np.bincount(group, w * locs[col].to_numpy(np.float64), minlength=m) / wsum
    if u_raw is not None:
        # a row of one localization keeps its own precision, valid or not
        out["uncertainty"] = np.where(count == 1, u_raw[first_rows], 1.0 / np.sqrt(wsum))
    if "photons" in cols:
        out["photons"] = np.bincount(group, locs["photons"].to_numpy(np.float64), minlength=m)
    if "sigma" in cols:
        out["sigma"] = np.bincount(group, locs["sigma"].to_numpy(np.float64), minlength=m) / count
    out["n_localizations"] = count.astype(np.int64)
    out = out.reset_index(drop=True)
    out.attrs = {**dict(getattr(locs, "attrs", None) or {}),
                 "merged_blinks": {"max_dark_frames": max_dark_frames,
                                   "max_distance_nm": None if max_distance is None else float(max_distance),
                                   "distance_factor": DISTANCE_FACTOR if max_distance is None else None,
                                   "localizations": int(n), "molecules": int(m),
                                   "chance_link_fraction": float(chance_fraction)}}
    if chance_fraction > MAX_CHANCE_FRACTION:
        warnings.warn(f"{source + ': ' if source else ''}blink merging: about {100 * chance_fraction:.0f} % of "
                      "the links may join different molecules (localizations close by chance: dense data); "
                      "lower max_dark_frames or max_distance", UserWarning, stacklevel=2)
    return out


def merge_note(locs) -> str:
    """What blink merging did to a table, in words (from ``locs.attrs["merged_blinks"]``).

    ``"off"`` when it was not asked for, ``"not merged: <reason>"`` when the table could not be
    merged, else the counts, e.g. ``"1000553 localizations -> 433283 molecules (at most 1 dark
    frame(s) between blinks; ~1.7 % of links by chance)"``.
    """
    info = (getattr(locs, "attrs", None) or {}).get("merged_blinks")
    if info is None:
        return "off"
    if "skipped" in info:
        return f"not merged: {info['skipped']}"
    chance = info.get("chance_link_fraction", float("nan"))
    return (f"{info['localizations']} localizations -> {info['molecules']} molecules (at most "
            f"{info['max_dark_frames']} dark frame(s) between blinks"
            + ("" if not np.isfinite(chance) else f"; ~{100 * chance:.1f} % of links by chance") + ")")


def merge_blinks_where_possible(locs, max_dark_frames: int = DEFAULT_MAX_DARK_FRAMES):
    """:func:`merge_blinks` for tables that allow it; other tables come back as they are.

    What the pipeline (``render.merge_blinks``) and the napari reader do: a table without frames
    or precisions, or one its software merged already, is rendered as it is, and
    ``attrs["merged_blinks"] = {"skipped": reason}`` says why (see :func:`merge_note`).
    """
    reason = why_not_mergeable(locs)
    if reason is None:
        return merge_blinks(locs, max_dark_frames=max_dark_frames)
    out = locs.copy(deep=False)
    out.attrs = {**dict(getattr(locs, "attrs", None) or {}), "merged_blinks": {"skipped": reason}}
    return out
