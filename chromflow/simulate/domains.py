"""Synthetic single-channel nuclei with known domains, for tests of :func:`chromflow.analyze_domains`.

A disc-shaped nucleus filled with uniformly scattered localizations (background chromatin),
plus denser discs of known radius on a jittered hexagonal lattice of known spacing (interior
heterochromatin domains), plus a denser band of known thickness along the boundary (LADs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["SimulatedDomains", "simulate_domains"]


@dataclass
class SimulatedDomains:
    """A synthetic nucleus and the answers :func:`chromflow.analyze_domains` should find.

    Attributes
    ----------
    localizations : pandas.DataFrame
        Columns ``x``, ``y`` (nm), shuffled.
    centres : ndarray (k, 2)
        True domain centres ``(y, x)`` in nm.
    domain_radius : float
        Radius of every domain disc, nm.
    spacing : ndarray (k,)
        True spacing of each domain: mean distance to its 5 nearest true centres (nm), the
        definition the analysis uses.
    lam : ndarray (k,)
        ``1 / ((spacing / domain_radius)^2 - 1)``.
    lattice_spacing : float
        Nearest-neighbour distance of the lattice before jitter, nm.
    band_thickness : float
        Radial thickness of the peripheral band, nm.
    lad_thickness : float
        Band area / nucleus circumference (what ``lad_thickness_nm`` measures), nm.
    nucleus_radius : float
        nm.
    centre : tuple
        ``(y, x)`` of the nucleus centre, nm.
    """

    localizations: pd.DataFrame
    centres: np.ndarray
    domain_radius: float
    spacing: np.ndarray
    lam: np.ndarray
    lattice_spacing: float
    band_thickness: float
    lad_thickness: float
    nucleus_radius: float
    centre: tuple


def _uniform_disc(rng, n, radius):
    r = radius * np.sqrt(rng.random(n))
    t = 2 * np.pi * rng.random(n)
    return np.c_[r * np.sin(t), r * np.cos(t)]


def _uniform_annulus(rng, n, r_in, r_out):
    r = np.sqrt(r_in ** 2 + (r_out ** 2 - r_in ** 2) * rng.random(n))
    t = 2 * np.pi * rng.random(n)
    return np.c_[r * np.sin(t), r * np.cos(t)]


def simulate_domains(nucleus_radius: float = 2000.0, domain_radius: float = 80.0, spacing: float = 480.0,
                     jitter: float = 0.05, band_thickness: float = 80.0, domain_density: float = 0.015,
                     band_density: float | None = None, background_density: float = 0.003,
                     clearance: float = 250.0, n_neighbours: int = 5, centre=(5000.0, 5000.0),
                     seed: int = 0) -> SimulatedDomains:
    """A synthetic H2B-like nucleus with domains of known radius and spacing and a LAD band.

    Parameters
    ----------
    nucleus_radius : float
        Radius of the disc nucleus, nm.
    domain_radius : float
        Radius of each interior domain, nm.
    spacing : float
        Nearest-neighbour distance of the hexagonal lattice of domain centres, nm.
    jitter : float
        Standard deviation of the random displacement of each centre, as a fraction of ``spacing``.
    band_thickness : float
        Radial thickness of the dense band along the boundary, nm (0: no band).
    domain_density, band_density, background_density : float
        Localizations per nm^2 in domains, in the band (default ``domain_density``) and
        everywhere in the nucleus (the background lies under the domains too).
    clearance : float
        Gap kept between the domain discs and the band (or the boundary), nm.
    n_neighbours : int
        Neighbours in the definition of the true spacing.
    centre : (float, float)
        Nucleus centre ``(y, x)``, nm.
    seed : int
        Seed of every random draw.

    Returns
    -------
    SimulatedDomains

    Notes
    -----
    The defaults put about 45 % of the localizations in the domains and the band (6 times
    denser than the background), so the anchor's median density threshold separates them;
    a cloud where the dense part holds more than half the localizations needs a lower
    ``density_percentile``.

    Examples
    --------
    >>> sim = simulate_domains(domain_radius=100.0, spacing=500.0, seed=0)
    >>> sim.localizations.columns.tolist(), round(sim.domain_radius)
    (['x', 'y'], 100)
    """
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    band_density = domain_density if band_density is None else band_density
    # hexagonal lattice: every site has 6 neighbours at `spacing`
    reach = nucleus_radius - band_thickness - clearance - domain_radius
    n = int(math.ceil(reach / spacing)) + 2
    i, j = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    lattice = np.c_[(j * math.sqrt(3) / 2).ravel(), (i + 0.5 * j).ravel()] * spacing
    offset = rng.uniform(-0.5, 0.5, 2) * spacing
    sites = lattice + offset + rng.normal(0.0, jitter * spacing, lattice.shape)
    sites = sites[np.hypot(sites[:, 0], sites[:, 1]) <= reach]
    parts = [_uniform_disc(rng, rng.poisson(background_density * math.pi * nucleus_radius ** 2), nucleus_radius)]
    for c in sites:
        parts.append(c + _uniform_disc(rng, rng.poisson(domain_density * math.pi * domain_radius ** 2),
                                       domain_radius))
    if band_thickness > 0:
        r_in = nucleus_radius - band_thickness
        n_band = rng.poisson(band_density * math.pi * (nucleus_radius ** 2 - r_in ** 2))
        parts.append(_uniform_annulus(rng, n_band, r_in, nucleus_radius))
    pts = np.concatenate(parts)
    pts = pts[rng.permutation(len(pts))] + np.asarray(centre, dtype=float)
    locs = pd.DataFrame({"x": pts[:, 1], "y": pts[:, 0]})
    locs.attrs["source"] = f"simulate_domains(seed={seed})"
    if len(sites) > n_neighbours:
        dd, _ = cKDTree(sites).query(sites, k=n_neighbours + 1)
        true_spacing = dd[:, 1:].mean(axis=1)
    else:
        true_spacing = np.full(len(sites), np.nan)
    lam = 1.0 / ((true_spacing / domain_radius) ** 2 - 1.0)
    r_in = nucleus_radius - band_thickness
    lad = (nucleus_radius ** 2 - r_in ** 2) / (2 * nucleus_radius)
    return SimulatedDomains(localizations=locs, centres=sites + np.asarray(centre, dtype=float),
                            domain_radius=float(domain_radius), spacing=true_spacing, lam=lam,
                            lattice_spacing=float(spacing), band_thickness=float(band_thickness),
                            lad_thickness=float(lad), nucleus_radius=float(nucleus_radius),
                            centre=tuple(float(c) for c in centre))
