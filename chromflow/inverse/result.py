"""The result of :func:`chromflow.infer_rates`: :class:`RateMapResult` (arrays, diagnostics, files)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from .._json import jsonable as _jsonable
from ..errors import InputError
from ..evaluate import rate_correlation
from ..image import Image
from ..io._atomic import atomic_path

#: Depth (um) inside the nucleus outline to which maps of the held-out simulator's nuclei read
#: lambda too high (+0.1 to +0.3 at the outline, fading by ~0.7 um; docs/inference.md, "What
#: limits the maps now"). The report draws this line dotted on the rate map and napari as a Shapes
#: layer, so that an enrichment along the envelope is not read as biology without a check;
#: ``summary()["mean_rate_deep"]`` averages the map beyond it.
EDGE_BIAS_DEPTH_UM = 0.5


def edge_bias_zone(mask, spacing_nm):
    """Nucleus cells within :data:`EDGE_BIAS_DEPTH_UM` of the outline, where maps of simulated
    nuclei read lambda too high (docs/inference.md, "What limits the maps now").

    Parameters
    ----------
    mask : (ny, nx) bool ndarray
        The nucleus on the rate map's grid.
    spacing_nm : float or None
        Grid cell size in nm. None (or not positive) gives an empty zone.

    Returns
    -------
    (ny, nx) bool ndarray
        The cells whose centre lies at most :data:`EDGE_BIAS_DEPTH_UM` inside the outline (taken
        half a cell outside the centres of the outermost cells).

    Examples
    --------
    >>> mask = np.zeros((40, 40), bool); mask[5:35, 5:35] = True   # 30 cells of 50 nm: 1.5 um
    >>> zone = edge_bias_zone(mask, 50.0)
    >>> int(zone[20, 5:35].sum())    # 10 rings from each side: (k + 0.5) * 50 nm <= 500 nm
    20
    """
    from ..fields import distance_to_outline

    mask = np.asarray(mask, dtype=bool)
    if spacing_nm is None or not np.isfinite(spacing_nm) or spacing_nm <= 0 or not mask.any():
        return np.zeros(mask.shape, bool)
    return mask & (distance_to_outline(mask) * spacing_nm / 1000.0 <= EDGE_BIAS_DEPTH_UM)


#: what :meth:`RateMapResult.summary` puts between the flags of its ``flags`` text (no flag
#: holds it, tested); :func:`split_flags` undoes it
FLAG_SEPARATOR = "; "


def split_flags(text) -> list[str]:
    """The flags of a summary's ``flags`` text (empty for ``""``, None or NaN, as a CSV reads it).

    Examples
    --------
    >>> split_flags("sparse data: x; low reproducibility: y")
    ['sparse data: x', 'low reproducibility: y']
    >>> split_flags(float("nan"))
    []
    """
    return [f for f in text.split(FLAG_SEPARATOR) if f] if isinstance(text, str) else []


__all__ = ["RateMapResult", "EDGE_BIAS_DEPTH_UM", "edge_bias_zone", "FLAG_SEPARATOR", "split_flags"]

_ARRAYS = ("rate", "uncertainty", "residual", "phi_h", "phi_e", "mask", "edge", "ratio")
#: arrays that files of earlier releases may lack, and their defaults
_OPTIONAL = {"edge": lambda mask: np.zeros(mask.shape, bool),
             "ratio": lambda mask: np.full(mask.shape, np.nan)}
_BOOL = ("mask", "edge")


# ---------------------------------------------------------------------------------------------
# result container


def _smallest(values) -> float:
    """The smallest finite number of ``values`` (None, as JSON writes NaN, counts as missing); NaN if none."""
    finite = [float(v) for v in (values or []) if v is not None and np.isfinite(float(v))]
    return min(finite) if finite else float("nan")


@dataclass
class RateMapResult:
    """A rate map ``lambda(y, x)`` and everything needed to judge and reproduce it.

    Attributes
    ----------
    rate : ndarray (ny, nx) float64
        ``lambda = Gamma_me / Gamma_ac`` (dimensionless); NaN outside the mask.
    uncertainty : ndarray (ny, nx) float64
        Standard error of ``rate`` per cell (same units; NaN outside the mask). It includes the
        counting noise of the data (see ``docs/inference.md``, "Uncertainty"); NaN everywhere
        only when uncertainty was switched off.
    residual : ndarray (ny, nx) float64
        Steady-state residual of the fitted fields and rate (units of ``Gamma_ac``); NaN outside.
    phi_h, phi_e : ndarray (ny, nx) float64
        Fitted (smoothed) volume fractions; NaN outside the mask.
    mask : ndarray (ny, nx) bool
        Nucleus.
    edge : ndarray (ny, nx) bool
        Cells of the partial-volume band at the nucleus edge (a subset of ``mask``). They carry
        no weight in the fit; ``rate`` there is the fit's smooth continuation from the interior.
    ratio : ndarray (ny, nx) float64
        The baseline without physics, computed on the same data without the truth: the smoothed
        ratio ``phi_h / phi_e`` at the width two halves of the data choose
        (:func:`chromflow.evaluate.cross_validated_ratio`); NaN outside the mask (and everywhere
        in files of releases before 0.2).
    spacing : float
        Grid cell size, nm.
    origin : tuple of float
        Position (nm) of the centre of cell (0, 0).
    loss_history : dict of str -> list of float
        Loss components per iteration (first ensemble member; empty for direct).
    settings : dict
        Every setting used (JSON-able), to rerun the fit.
    timing : float
        Seconds spent in :func:`infer_rates`.
    device : str
        Where it ran.
    method : str
        ``"pinn"``, ``"direct"`` or ``"autodiff"``.
    source : str or None
        Path of the data the fields came from.
    diagnostics : dict
        What was chosen from the data and how far to trust the map: ``noise`` (per-channel
        noise model), ``stopping`` (the data-chosen stopping point), ``split_half_r`` (correlation
        of the maps of two independent halves of the data: the quality score), ``flags`` (list of
        warnings such as negative or absurd rates).

    Examples
    --------
    >>> import numpy as np
    >>> m = np.ones((4, 4), bool)
    >>> r = RateMapResult(rate=np.full((4, 4), 2.0), uncertainty=np.full((4, 4), np.nan),
    ...                   residual=np.zeros((4, 4)), phi_h=np.full((4, 4), 0.3),
    ...                   phi_e=np.full((4, 4), 0.15), mask=m, spacing=50.0)
    >>> s = r.summary()
    >>> s["median_rate"], round(s["nucleus_area_um2"], 6)
    (2.0, 0.04)
    """

    rate: np.ndarray
    uncertainty: np.ndarray
    residual: np.ndarray
    phi_h: np.ndarray
    phi_e: np.ndarray
    mask: np.ndarray
    spacing: float
    origin: tuple = (0.0, 0.0)
    loss_history: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    timing: float = 0.0
    device: str = "cpu"
    method: str = "direct"
    source: str | None = None
    edge: np.ndarray | None = None
    diagnostics: dict = field(default_factory=dict)
    ratio: np.ndarray | None = None

    def __post_init__(self):
        for name in ("edge", "ratio"):
            if getattr(self, name) is None:
                setattr(self, name, _OPTIONAL[name](np.asarray(self.mask)))
        for name in _ARRAYS:
            arr = np.asarray(getattr(self, name))
            setattr(self, name, arr.astype(bool) if name in _BOOL else arr.astype(np.float64))
        self.spacing = float(self.spacing)
        self.origin = tuple(float(o) for o in self.origin)

    # -- derived ------------------------------------------------------------------------------
    def summary(self) -> dict:
        """Scalar summary (one row of ``summary.csv``).

        Keys: ``mean_rate``, ``median_rate``, ``std_rate``, ``p05_rate``, ``p95_rate``,
        ``mean_uncertainty``, ``median_uncertainty`` (the typical cell's: a few cells of absurd
        lambda can dominate the mean), ``rms_residual``, ``heterochromatin_fraction`` (share of the
        chromatin that is heterochromatin, ``sum phi_h / sum (phi_h + phi_e)`` on the mask),
        ``mean_rate_deep`` (mean over the cells deeper than :data:`EDGE_BIAS_DEPTH_UM` inside the
        outline, free of the edge bias that maps of simulated nuclei show; NaN for a smaller
        nucleus), ``nucleus_area_um2``, ``n_pixels``, ``edge_fraction`` (share of the nucleus in the
        partial-volume band), ``split_half_r`` (quality score: correlation of the maps of two
        independent halves of the data; NaN when not computed), ``flags`` (warnings, ``"; "``
        separated, empty when none), ``method``, ``network`` (the networks' ``width x depth``,
        empty for ``direct``), ``closed_form_weight`` (the networks' share of the closed-form
        reading in the map, NaN for ``direct``; docs/inference.md), ``ratio_weight`` (the
        networks' share of the smoothed ratio ``ratio`` in the map, the ``infer_rates`` option of
        that name: 0 on low-noise fields, 0.4 on rendered counting data; NaN for ``direct``), ``edge_correction`` (the
        weight of the envelope's boundary-layer correction, 0 where the data did not show the
        layer above their noise, NaN for ``direct`` or when it was switched off;
        :mod:`chromflow.inverse.boundary`), ``ratio_sigma_cells`` (the width of the smoothed
        ratio in ``ratio``, grid cells) and ``ratio_map_r`` (the correlation of the map with it
        over the nucleus: how far the physics moved the map from the ratio; for networks the
        map before the share ``ratio_weight`` of the ratio was mixed in, so the mix does not
        inflate it; NaN without it),
        ``halves_independence`` (how much of the noise the two halves of the localizations do not
        share, the smaller of the two channels: ~1 for independent halves, lower when molecules
        are seen in both, below 0.6 their difference was scaled up for the split-half score, the
        uncertainty and the ratio's width; NaN for data fission;
        :func:`chromflow.inverse.noise.half_independence`), ``domain_scale_agreement`` (how well
        the two halves agree on ``phi_h / phi_e`` at the scale of heterochromatin domains,
        :func:`chromflow.evaluate.domain_scale_reproducibility`; NaN for ``direct``), ``effort``
        (the networks' ``"domain"`` when that agreement bought the larger budget and ensemble,
        else ``"standard"``; empty for ``direct``), ``time_s``, ``device``.
        """
        m = self.mask
        lam = self.rate[m]
        lam = lam[np.isfinite(lam)]
        unc = self.uncertainty[m]
        res = self.residual[m]
        h, e = self.phi_h[m], self.phi_e[m]
        stat = (lambda f, a: float(f(a)) if a.size else float("nan"))
        total = float(np.nansum(h) + np.nansum(e))
        deep = self.rate[m & ~edge_bias_zone(m, self.spacing)]
        deep = deep[np.isfinite(deep)]
        return {
            "mean_rate": stat(np.mean, lam),
            "mean_rate_deep": stat(np.mean, deep),
            "median_rate": stat(np.median, lam),
            "std_rate": stat(np.std, lam),
            "p05_rate": stat(lambda a: np.percentile(a, 5), lam),
            "p95_rate": stat(lambda a: np.percentile(a, 95), lam),
            "mean_uncertainty": float(np.nanmean(unc)) if np.isfinite(unc).any() else float("nan"),
            # the typical cell's: where lambda is absurd (flagged) its uncertainty can dominate the mean
            "median_uncertainty": float(np.nanmedian(unc)) if np.isfinite(unc).any() else float("nan"),
            "rms_residual": float(np.sqrt(np.nanmean(res ** 2))) if np.isfinite(res).any() else float("nan"),
            "heterochromatin_fraction": float(np.nansum(h) / total) if total > 0 else float("nan"),
            "nucleus_area_um2": float(m.sum() * (self.spacing / 1000.0) ** 2),
            "n_pixels": int(m.sum()),
            "edge_fraction": float(self.edge[m].mean()) if m.any() else float("nan"),
            "split_half_r": _number(self.diagnostics.get("split_half_r")),
            "flags": FLAG_SEPARATOR.join(self.diagnostics.get("flags", [])),
            "method": self.method,
            "network": (f"{self.settings['width']}x{self.settings['depth']}"
                        if self.method != "direct" and "width" in (self.settings or {}) else ""),
            "closed_form_weight": _number((self.diagnostics.get("training") or {}).get("closed_form_weight")),
            "ratio_weight": _number((self.diagnostics.get("training") or {}).get("ratio_weight")),
            "edge_correction": _number((self.diagnostics.get("boundary_layer") or {}).get("weight")),
            "ratio_sigma_cells": _number((self.diagnostics.get("ratio") or {}).get("sigma_cells")),
            "ratio_map_r": _ratio_map_r(self, m),
            "halves_independence": _smallest((self.diagnostics.get("halves") or {}).get("independence")),
            "domain_scale_agreement": _number((self.diagnostics.get("effort") or {}).get("domain_scale_agreement")),
            "effort": _effort_name(self.diagnostics.get("effort")),
            "time_s": float(self.timing),
            "device": self.device,
        }

    def to_image(self, name: str = "rate") -> Image:
        """One map as a :class:`chromflow.Image` (pixel size and origin in nm).

        ``name``: ``"rate"``, ``"uncertainty"``, ``"residual"``, ``"phi_h"``, ``"phi_e"``, ``"mask"``
        or ``"edge"``.
        """
        if name not in _ARRAYS:
            raise ValueError(f"name must be one of {list(_ARRAYS)}, got {name!r}")
        return Image(getattr(self, name).copy(), pixel_size=self.spacing, origin=self.origin, name=name,
                     source=self.source, metadata={"method": self.method, "quantity": name})

    # -- files --------------------------------------------------------------------------------
    def _meta(self) -> dict:
        return {"spacing": self.spacing, "origin": list(self.origin), "loss_history": self.loss_history,
                "settings": self.settings, "timing": self.timing, "device": self.device,
                "method": self.method, "source": self.source, "diagnostics": self.diagnostics,
                "format": "chromflow.RateMapResult", "version": 2}

    def save(self, path) -> None:
        """Write to ``.npz`` (default) or ``.h5``/``.hdf5``, atomically.

        Arrays are stored as they are (float64, bool); the rest as one JSON string.
        """
        path = os.fspath(path)
        suffix = os.path.splitext(path)[1].lower()
        meta = json.dumps(_jsonable(self._meta()))
        with atomic_path(path) as tmp:
            if suffix in (".h5", ".hdf5"):
                import h5py

                with h5py.File(tmp, "w") as f:
                    for name in _ARRAYS:
                        f.create_dataset(name, data=getattr(self, name), compression="gzip")
                    f.attrs["meta"] = meta
            else:
                with open(tmp, "wb") as fh:
                    np.savez_compressed(fh, meta=np.array(meta), **{n: getattr(self, n) for n in _ARRAYS})

    @classmethod
    def load(cls, path) -> "RateMapResult":
        """Read a file written by :meth:`save`."""
        path = os.fspath(path)
        suffix = os.path.splitext(path)[1].lower()
        try:
            if suffix in (".h5", ".hdf5"):
                import h5py

                with h5py.File(path, "r") as f:
                    arrays = {n: f[n][()] for n in _ARRAYS if n in f}
                    meta = json.loads(f.attrs["meta"])
            else:
                with np.load(path, allow_pickle=False) as z:
                    arrays = {n: z[n] for n in _ARRAYS if n in z.files}
                    meta = json.loads(str(z["meta"]))
            missing = [n for n in _ARRAYS if n not in arrays and n not in _OPTIONAL]
            if missing:
                raise KeyError(f"missing arrays {missing}")
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"not a chromflow rate-map file ({exc})", path) from exc
        if meta.get("format") != "chromflow.RateMapResult":
            raise InputError("not a chromflow rate-map file (missing format tag)", path)
        return cls(**arrays, spacing=meta["spacing"], origin=tuple(meta["origin"]),
                   loss_history=meta["loss_history"], settings=meta["settings"], timing=meta["timing"],
                   device=meta["device"], method=meta["method"], source=meta["source"],
                   diagnostics=meta.get("diagnostics", {}))


def _number(value) -> float:
    """A diagnostic number as a float: NaN where it is absent or stored as JSON null (a NaN reading,
    :func:`chromflow._json.jsonable`)."""
    return float("nan") if value is None else float(value)


def _effort_name(effort) -> str:
    """``"domain"`` / ``"standard"`` from ``diagnostics["effort"]``; empty when absent (direct)."""
    if not effort:
        return ""
    return "domain" if effort.get("larger") else "standard"


def _ratio_map_r(result, cells) -> float:
    """Correlation of the map with the smoothed ratio: for networks that of their own map, before
    the ratio was mixed in (recorded by ``infer_rates``); else of ``rate``."""
    recorded = ((getattr(result, "diagnostics", None) or {}).get("ratio") or {}).get("network_map_r")
    if recorded is not None:
        return _number(recorded)
    return rate_correlation(result.rate, result.ratio, cells)
