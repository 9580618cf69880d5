"""The transport boundary layer at a no-flux envelope: a data-driven correction of network maps.

At a no-flux nuclear envelope the steady fields carry a boundary layer: the transport term
``T = lap(mu_d) / 2`` is large over the outer ~0.5 um, where ``lambda = (phi_h - T) / phi_e``.
The coordinate network's fields are smoother than that layer, so the rate channel takes the
missing transport up as a spurious rim of high lambda (docs/inference.md, "What limits the maps
now"). A small mollifier on the data themselves reads the layer without that bias wherever its
footprint lies inside the data, but with far more noise.

The correction keeps the network's map and replaces only the mean of its transport over each
ring of cells at equal distance from the outline by the data's own. Per ring ``k`` (cells
whose kernel footprint lies in the data), the mean of ``delta = (T_data - T_fit) / u_e`` over
the ring, with ``T_fit`` the same operator applied to the fitted fields, so that only the
fields differ. The ring means are trusted only as far as the data show them: their standard
error comes from the scatter of the means of :data:`RING_SECTORS` sectors of each ring (which
keeps the correlation of neighbouring cells' noise out), and the whole profile is scaled by the
positive-part James-Stein factor ``W = 1 - K / chi2``, applied only when ``chi2`` (the profile
over its noise, ``K`` rings) exceeds chance by :data:`PROFILE_Z` standard deviations. Cells
nearer the outline than the first usable ring take its value; the correction ends at
:data:`BOUNDARY_LAYER_DEPTH_UM`, tapering over its last quarter.

Nothing here assumes what lambda does at the envelope: real enrichment of lambda at the lamina
is in the data's transport and in the fit alike, and the ring means take out only their
difference. On rendered SMLM data (counting noise 0.45-0.8 of the signal's spread per 50 nm
cell) the profile is below its noise and the map is left as it is; on low-noise fields the
correction removes most of the rim (measured in docs/inference.md).
"""
from __future__ import annotations

import numpy as np

from ..physics.chromatin import ChromatinModel
from .direct import continue_nearest, footprint_inside, mollified_transport

__all__ = ["boundary_layer_correction", "BOUNDARY_LAYER_DEPTH_UM", "RING_SECTORS", "PROFILE_Z"]

#: how deep the correction reaches (um): about 1.5 times the slower decay length (~0.48 um) of
#: the linearised 4th-order operator at the model's parameters, beyond which the layer is gone
BOUNDARY_LAYER_DEPTH_UM = 0.75
#: sectors (by angle about the data's centroid) per ring, for the ring means' standard error
RING_SECTORS = 8
#: the ring profile must exceed its noise by this many standard deviations of chi^2
PROFILE_Z = 3.0


def _sector_of(valid):
    cy, cx = np.argwhere(valid).mean(axis=0)
    yy, xx = np.indices(valid.shape)
    angle = np.arctan2(yy - cy, xx - cx) + np.pi
    return (angle / (2 * np.pi) * RING_SECTORS).astype(int) % RING_SECTORS


def boundary_layer_correction(phi_h, phi_e, fit_h, fit_e, mask, interior, spacing_nm: float,
                              radius: float = 3.0, kernel: str = "bump",
                              model: ChromatinModel = ChromatinModel(),
                              depth_um: float = BOUNDARY_LAYER_DEPTH_UM, z: float = PROFILE_Z):
    """The ring-mean correction of a network's rate map for the envelope's transport layer.

    Parameters
    ----------
    phi_h, phi_e : (ny, nx) ndarray
        The data (volume fractions).
    fit_h, fit_e : (ny, nx) ndarray
        The fitted fields ``u_h``, ``u_e`` on the same grid (NaN outside the mask allowed).
    mask : (ny, nx) bool ndarray
        The nucleus.
    interior : (ny, nx) bool ndarray
        Its cells with data (the mask without the partial-volume edge band).
    spacing_nm : float
        Grid cell size in nm.
    radius : float
        Mollifier support radius in cells (the fit's).
    kernel : str
        Mollifier profile.
    model : ChromatinModel
    depth_um : float
        How far inside the outline the correction reaches.
    z : float
        Significance the ring profile needs (standard deviations of ``chi2`` above ``K``).

    Returns
    -------
    correction : (ny, nx) float64 ndarray
        To be subtracted from the map (0 outside the mask, deeper than ``depth_um``, and
        everywhere when the profile is not significant).
    info : dict
        ``applied`` (bool), ``weight`` (the factor ``W``), ``chi2``, ``rings`` (``K``),
        ``depth_um``, ``profile`` (per ring: distance in cells, mean, standard error) and
        ``reason`` when nothing was applied.

    Examples
    --------
    Fitted fields that equal the data need no correction:

    >>> m = np.zeros((64, 64), bool); m[8:56, 8:56] = True
    >>> yy, xx = np.indices(m.shape)
    >>> h = 0.3 + 0.05 * np.sin(xx / 5.0); e = 0.25 + 0.02 * np.cos(yy / 7.0)
    >>> c, info = boundary_layer_correction(h, e, h, e, m, m, 50.0)
    >>> bool(np.abs(c).max() < 1e-9), info["applied"]
    (True, False)
    """
    from ..fields import distance_to_outline
    from ..mollifier.kernels import halo as kernel_halo

    mask = np.asarray(mask, bool)
    interior = np.asarray(interior, bool) & mask
    correction = np.zeros(mask.shape)
    info = {"applied": False, "weight": 0.0, "chi2": float("nan"), "rings": 0, "depth_um": float(depth_um),
            "profile": []}
    valid = footprint_inside(interior, kernel_halo(radius))
    if valid.sum() < 4 * RING_SECTORS:
        info["reason"] = "no cells with the kernel's footprint inside the data"
        return correction, info
    spacing_um = float(spacing_nm) / 1000.0
    fit_h = np.where(mask, np.nan_to_num(np.asarray(fit_h, dtype=np.float64)), 0.0)
    fit_e = np.where(mask, np.nan_to_num(np.asarray(fit_e, dtype=np.float64)), 0.0)
    t_data, _ = mollified_transport(phi_h, phi_e, interior, spacing_um, radius, kernel, model)
    t_fit, _ = mollified_transport(fit_h, fit_e, interior, spacing_um, radius, kernel, model)
    delta = (t_data - t_fit) / np.maximum(fit_e, 1e-6)
    dist = distance_to_outline(mask)
    ring = np.floor(dist).astype(int)
    sector = _sector_of(valid)
    last = int(depth_um / spacing_um)
    rings, means, se2 = [], [], []
    for k in np.unique(ring[valid]):
        if k > last:
            break
        cells = valid & (ring == k)
        parts = [delta[cells & (sector == s)].mean() for s in range(RING_SECTORS) if (cells & (sector == s)).sum() >= 3]
        if len(parts) < 4:
            continue
        rings.append(int(k))
        means.append(float(np.mean(parts)))
        se2.append(float(np.var(parts, ddof=1) / len(parts)))
    info["profile"] = [(k, m, float(np.sqrt(s))) for k, m, s in zip(rings, means, se2)]
    n = len(rings)
    info["rings"] = n
    if n < 2:
        info["reason"] = "fewer than two rings with the kernel's footprint inside the data"
        return correction, info
    means, noise = np.asarray(means), float(np.mean(se2))
    power = float((means ** 2).sum())
    chi2 = power / noise if noise > 0 else (np.inf if power > 0 else 0.0)
    info["chi2"] = chi2
    if not chi2 > n + z * np.sqrt(2.0 * n):
        info["reason"] = "the ring profile is within the noise"
        return correction, info
    weight = 1.0 - n / chi2
    info.update(applied=True, weight=weight)
    for k, value in zip(rings, means):
        correction[valid & (ring == k)] = weight * value
    # cells nearer the outline than the first usable ring take the nearest usable cell's value
    correction = continue_nearest(correction, valid)
    depth = dist * spacing_um
    taper = np.clip((depth_um - depth) / (0.25 * depth_um), 0.0, 1.0)
    return np.where(mask, taper * correction, 0.0), info
