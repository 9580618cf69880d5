"""From density fields to single-molecule localization tables (simulated SMLM data).

The model of an experiment, kept simple and explicit:

* emitters are placed with probability proportional to the density (uniformly inside a pixel);
* each emitter blinks ``K`` times, ``K`` geometric with mean ``blinks`` (so ``K >= 1``); its blinks
  fall in nearby frames (gaps geometric, mean 2 frames) after a uniformly drawn first frame;
* each localization has its own precision: ``uncertainty = sigma / sqrt(photons)`` (the leading
  Thompson/Mortensen term, ``sigma`` the PSF width), with the uncertainty log-normal with the
  requested mean and spread; the reported position is the emitter's plus Gaussian noise of that
  standard deviation in x and in y;
* a fraction ``background`` of the localizations is uniform over the field of view.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError

__all__ = ["sample_localizations"]

COLUMNS = ["id", "frame", "x", "y", "sigma", "photons", "uncertainty"]


def _lognormal(rng, mean, spread, size):
    if spread <= 0:
        return np.full(size, float(mean))
    s2 = np.log1p((spread / mean) ** 2)
    return rng.lognormal(np.log(mean) - 0.5 * s2, np.sqrt(s2), size)


def _one_channel(rng, density, pixel_size, n, precision, blinks, background, frames, psf_sigma, origin):
    ny, nx = density.shape
    n_bg = int(round(background * n))
    n_sig = n - n_bg
    total = density.sum()
    if n_sig > 0 and not total > 0:
        raise InputError("density has no positive pixel to place emitters in")
    # blink counts per emitter, drawn until they cover n_sig localizations; the last one is cut
    counts = np.zeros(0, dtype=np.int64)
    while counts.sum() < n_sig:
        more = rng.geometric(1.0 / blinks, size=max(16, int(1.2 * (n_sig - counts.sum()) / blinks) + 16))
        counts = np.concatenate([counts, more])
    csum = np.cumsum(counts)
    n_em = int(np.searchsorted(csum, n_sig) + 1) if n_sig > 0 else 0
    counts = counts[:n_em]
    if n_em:
        counts[-1] -= csum[n_em - 1] - n_sig
    # emitter positions: pixel chosen with probability ~ density, uniform inside it
    cdf = np.cumsum(density.ravel() / total) if n_em else np.zeros(1)
    flat = np.minimum(np.searchsorted(cdf, rng.random(n_em) * cdf[-1], side="right"), density.size - 1)
    iy, ix = np.divmod(flat, nx)
    ey = origin[0] + (iy + rng.random(n_em) - 0.5) * pixel_size
    ex = origin[1] + (ix + rng.random(n_em) - 0.5) * pixel_size
    emitter = np.repeat(np.arange(n_em), counts)
    # frames: first blink uniform, then small geometric gaps; wrapped into [1, frames]
    first = rng.integers(1, frames + 1, n_em)
    gaps = rng.geometric(0.5, n_sig)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if n_em else np.zeros(0, np.int64)
    gaps[starts] = 0
    within = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[starts] if n_em else np.zeros(0), counts)
    frame_sig = (first[emitter] - 1 + within) % frames + 1
    # background: uniform over the field of view
    y0, x0 = origin[0] - 0.5 * pixel_size, origin[1] - 0.5 * pixel_size
    by = y0 + rng.random(n_bg) * ny * pixel_size
    bx = x0 + rng.random(n_bg) * nx * pixel_size
    frame_bg = rng.integers(1, frames + 1, n_bg)
    # per-localization precision from photons and PSF width
    sigma = psf_sigma * np.clip(1 + 0.05 * rng.standard_normal(n), 0.7, 1.3)
    uncertainty = _lognormal(rng, precision[0], precision[1], n)
    photons = (sigma / uncertainty) ** 2
    true_y = np.concatenate([ey[emitter], by])
    true_x = np.concatenate([ex[emitter], bx])
    y = true_y + uncertainty * rng.standard_normal(n)
    x = true_x + uncertainty * rng.standard_normal(n)
    return pd.DataFrame({
        "frame": np.concatenate([frame_sig, frame_bg]).astype(np.int64),
        "x": x, "y": y, "sigma": sigma, "photons": photons, "uncertainty": uncertainty,
        "emitter": np.concatenate([emitter, -np.ones(n_bg, dtype=np.int64)]),
    })


def sample_localizations(density, pixel_size: float, n_localizations, precision=(15.0, 5.0),
                         blinks: float = 3.0, background: float = 0.02, frames: int = 10000,
                         psf_sigma: float = 130.0, seed: int = 0, origin=(0.0, 0.0)) -> pd.DataFrame:
    """Simulate a localization table from one density map, or one per channel.

    Parameters
    ----------
    density : (ny, nx) ndarray or sequence of them
        Non-negative emitter density per pixel (any scale). A sequence gives multi-channel data
        with a ``channel`` column (0, 1, ...): e.g. ``[phi_h, phi_e]`` for a heterochromatin
        mark (channel 0) and a euchromatin mark (channel 1).
    pixel_size : float
        Pixel size of ``density`` in nm.
    n_localizations : int or sequence of int
        Number of localizations (per channel), background included; exact.
    precision : (float, float)
        Mean and standard deviation in nm of the localization precision (log-normal).
    blinks : float
        Mean number of localizations per emitter (>= 1).
    background : float
        Fraction of the localizations spread uniformly over the field of view.
    frames : int
        Number of camera frames; ``frame`` runs from 1 like ThunderSTORM's.
    psf_sigma : float
        Mean PSF width in nm (each localization's ``sigma`` varies by 5 %).
    seed : int
        Random seed; the same seed gives the same table.
    origin : (float, float)
        Position in nm ``(y, x)`` of the centre of pixel ``(0, 0)``.

    Returns
    -------
    pandas.DataFrame
        Columns ``id`` (1..n), ``frame``, ``x``, ``y`` (nm), ``sigma`` (nm), ``photons``,
        ``uncertainty`` (nm), ``emitter`` (ground-truth emitter index within the channel, -1 for
        background) and ``channel`` for multi-channel input; sorted by frame.
        ``attrs``: ``source="simulated"``, ``format="simulated"``, ``pixel_size=None``.

    Examples
    --------
    >>> import numpy as np
    >>> df = sample_localizations(np.ones((32, 32)), pixel_size=50.0, n_localizations=1000, seed=1)
    >>> len(df), int(df["frame"].min()) >= 1
    (1000, True)
    """
    multi = not (isinstance(density, np.ndarray) and density.ndim == 2)
    densities = list(density) if multi else [density]
    densities = [np.asarray(d, dtype=np.float64) for d in densities]
    if not densities:
        raise InputError("no density given")
    if isinstance(n_localizations, (Sequence, np.ndarray)):
        counts = [int(c) for c in n_localizations]
    else:
        counts = [int(n_localizations)] * len(densities)
    if len(counts) != len(densities):
        raise InputError(f"{len(counts)} localization counts for {len(densities)} channels")
    for d in densities:
        if d.ndim != 2:
            raise InputError(f"density must be a 2D (y, x) array, got shape {d.shape}")
        if not np.all(np.isfinite(d)) or np.any(d < 0):
            raise InputError("density must be finite and >= 0")
    if any(c < 0 for c in counts):
        raise InputError(f"n_localizations must be >= 0, got {counts}")
    pixel_size = float(pixel_size)
    if not pixel_size > 0:
        raise InputError(f"pixel_size must be > 0 nm, got {pixel_size}")
    if not (precision[0] > 0 and precision[1] >= 0):
        raise InputError(f"precision must be (mean > 0, spread >= 0) nm, got {precision}")
    if not blinks >= 1:
        raise InputError(f"blinks (mean localizations per emitter) must be >= 1, got {blinks}")
    if not 0 <= background <= 1:
        raise InputError(f"background must be a fraction in [0, 1], got {background}")
    if int(frames) < 1:
        raise InputError(f"frames must be >= 1, got {frames}")
    rng = np.random.default_rng(seed)
    parts = []
    for c, (d, n) in enumerate(zip(densities, counts)):
        part = _one_channel(rng, d, pixel_size, n, precision, float(blinks), float(background), int(frames),
                            float(psf_sigma), (float(origin[0]), float(origin[1])))
        if multi:
            part["channel"] = np.int64(c)
        parts.append(part)
    df = pd.concat(parts, ignore_index=True)
    df = df.sort_values("frame", kind="stable").reset_index(drop=True)
    df.insert(0, "id", np.arange(1, len(df) + 1, dtype=np.int64))
    df.attrs = {"source": "simulated", "format": "simulated", "pixel_size": None}
    return df
