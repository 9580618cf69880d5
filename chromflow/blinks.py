"""Merge the blinks of one molecule: repeated localizations in nearby frames become one row.

A fluorophore in SMLM blinks: it is localized in several frames, close in time, at the same
place up to its precision. Counted as they are, these repeats make a density image noisier
than the number of molecules warrants: the number of localizations in a cell is a sum of
random blink counts ``K``, whose variance is ``E[K^2] / E[K]`` times its mean instead of the mean
itself (5 for geometric blinking with 3 blinks on average; relative to the mean, 1.67 times the
variance of a count of molecules). Merging them is the usual first
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

__all__ = ["merge_blinks", "merge_blinks_where_possible", "why_not_mergeable", "merge_note",
           "DEFAULT_MAX_DARK_FRAMES", "DISTANCE_FACTOR", "CHANCE_LAG", "MAX_CHANCE_FRACTION"]

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


def _sorted_keys(x, y, frame, chan, radius, max_lag):
    """The rows sorted by a key of (channel, cell of side ``radius``, frame), and the key steps
    to the 9 neighbouring cells: every pair closer than ``radius`` with a frame lag of at most
    ``max_lag`` lies within one such step, and keys of different channels or cells never meet."""
    cy = np.floor((y - y.min()) / radius).astype(np.int64) + 1    # +1: neighbours never wrap
    cx = np.floor((x - x.min()) / radius).astype(np.int64) + 1
    nyc, nxc = int(cy.max()) + 2, int(cx.max()) + 2
    fr = (frame - frame.min()).astype(np.int64)
    big = int(fr.max()) + int(max_lag) + 2
    keys = ((chan.astype(np.int64) * nyc + cy) * nxc + cx) * big + fr
    order = np.argsort(keys)
    offsets = np.array([(dy * nxc + dx) * big for dy in (-1, 0, 1) for dx in (-1, 0, 1)], np.int64)
    return keys[order], order, offsets


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

        from ._blink_kernels import _groups_in_frame_order, _link_pairs

        lag = max_dark_frames + 1
        keys, order, offsets = _sorted_keys(x, y, frame, chan, radius, CHANCE_LAG + lag)
        xs, ys, oks = x[order], y[order], linkable[order]
        u2 = np.zeros(n) if u is None else (u * u)[order]
        fixed_r2 = radius * radius if max_distance is not None else 0.0
        factor2 = DISTANCE_FACTOR ** 2
        parent = np.arange(n, dtype=np.int64)
        n_links = _link_pairs(keys, xs, ys, u2, oks, offsets, 1, lag, factor2, fixed_r2, 1, parent)
        span = float(np.ptp(frame)) + 1
        if span > CHANCE_LAG + lag:
            # the same test CHANCE_LAG frames later finds pairs that are close by chance (or a
            # molecule that came back); as many join different molecules among the links.
            # Every CHANCE_STRIDE-th localization looks: a count, not the links, is needed
            chance = _link_pairs(keys, xs, ys, u2, oks, offsets, CHANCE_LAG + 1, CHANCE_LAG + lag, factor2,
                                 fixed_r2, CHANCE_STRIDE, np.zeros(0, np.int64))
            chance_fraction = chance * CHANCE_STRIDE * span / (span - CHANCE_LAG) / max(n_links, 1)
        pos = np.empty(n, np.int64)
        pos[order] = np.arange(n)
        by_frame = np.arange(n) if np.all(frame[1:] >= frame[:-1]) else np.argsort(frame, kind="stable")
        group = np.empty(n, np.int64)
        first_rows = np.empty(n, np.int64)
        m = _groups_in_frame_order(parent, pos, by_frame, group, first_rows)
        first_rows = first_rows[:m]
    else:
        group, first_rows, m = np.zeros(0, np.int64), np.zeros(0, np.int64), 0

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
