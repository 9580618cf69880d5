"""Compiled loops of :mod:`chromflow.blinks` (numba), imported on first use.

Linking blinks is a neighbour search followed by connected components. Done with numpy it
materialises every candidate pair (tens of millions for 1e7 localizations, with 18 binary
searches over the whole table); these loops walk the table once per neighbouring cell with two
pointers and join partners in a union-find as they are found, so no pair is ever stored.
"""
from __future__ import annotations

import numpy as np

from ._render_kernels import _jit


@_jit
def _find(parent, i):
    """Root of ``i`` in the union-find forest, halving the path on the way."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@_jit
def _link_pairs(keys, xs, ys, u2, ok, offsets, min_lag, max_lag, factor2, fixed_r2, stride, parent):
    """Join (or, with an empty ``parent``, count) the close pairs of a sorted table.

    ``keys`` are the rows' (channel, cell, frame) keys in ascending order, so a row's partners
    in the cell ``offsets[k]`` away are the run of keys within ``[key + offsets[k] + min_lag,
    key + offsets[k] + max_lag]``; both ends of that run only move forward as the row does.
    A pair is close when its squared distance is at most ``fixed_r2`` (if > 0) or ``factor2``
    times the sum of the squared precisions ``u2``; rows with ``ok`` False are never paired.
    Only every ``stride``-th row looks for partners. Returns the number of close pairs.
    """
    n = keys.shape[0]
    count = 0
    union = parent.shape[0] > 0
    for k in range(offsets.shape[0]):
        off = offsets[k]
        lo = 0
        hi = 0
        for a in range(0, n, stride):
            q_lo = keys[a] + off + min_lag
            q_hi = keys[a] + off + max_lag
            while lo < n and keys[lo] < q_lo:
                lo += 1
            if hi < lo:
                hi = lo
            while hi < n and keys[hi] <= q_hi:
                hi += 1
            if not ok[a]:
                continue
            for b in range(lo, hi):
                if not ok[b]:
                    continue
                dx = xs[a] - xs[b]
                dy = ys[a] - ys[b]
                limit = fixed_r2 if fixed_r2 > 0.0 else factor2 * (u2[a] + u2[b])
                if dx * dx + dy * dy <= limit:
                    count += 1
                    if union:
                        ra = _find(parent, a)
                        rb = _find(parent, b)
                        if ra != rb:
                            if ra < rb:
                                parent[rb] = ra
                            else:
                                parent[ra] = rb
    return count


@_jit
def _groups_in_frame_order(parent, pos, rows_by_frame, group, first_rows):
    """Number the linked groups in the order of their first row by frame.

    ``pos[r]`` is row ``r``'s place in the sorted table that ``parent`` refers to;
    ``rows_by_frame`` lists the rows by (frame, row). Fills ``group`` (per row) and
    ``first_rows`` (per group, its first row); returns the number of groups.
    """
    n = pos.shape[0]
    gid = np.full(n, -1, np.int64)
    m = 0
    for i in range(n):
        r = rows_by_frame[i]
        root = _find(parent, pos[r])
        if gid[root] < 0:
            gid[root] = m
            first_rows[m] = r
            m += 1
        group[r] = gid[root]
    return m
