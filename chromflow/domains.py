"""Classical chromatin-domain analysis of single-channel (H2B) localizations.

The published single-channel workflow of the Shenoy lab (``STORM_Analysis``, Kant et al., Nat.
Commun. 2024), rebuilt on numpy/scipy/scikit-learn:

1. exact duplicate localizations are dropped and the rest randomly thinned by ``downsample``
   (the anchor keeps one localization in 4; ``eps`` and ``min_samples`` are tuned for that
   density);
2. **Voronoi density** of every localization, ``1 / cell area`` (nm^-2), see
   :func:`voronoi_areas`;
3. a **density threshold**: the ``density_percentile``-th percentile of the densities (default
   50, the anchor's demo value); localizations at or above it are *dense*;
4. **DBSCAN** (scikit-learn) on the dense localizations, ``eps`` = 30 nm, ``min_samples`` = 3;
   clusters of at least ``min_cluster_size`` = 35 localizations are kept;
5. the **nucleus boundary**: the localizations are rendered (:func:`chromflow.render`,
   histogram) and segmented (:func:`chromflow.segment_nucleus`); the boundary is the mask's
   outline (marching squares, lightly smoothed). Nucleus area and boundary length are those of
   that polygon, the diameter is area-equivalent;
6. a cluster with any localization within ``peripheral_fraction`` (5 %) of the nucleus radius of
   the boundary is **peripheral** (lamina-associated, LAD); the others are interior domains;
7. per domain: centroid, localizations, area = sum of its localizations' Voronoi cells,
   area-equivalent radius ``R``; for interior domains the spacing ``d`` = mean distance to the
   ``n_neighbours`` (5) nearest interior domain centres, and the rates
   ``gamma_ac = D / d^2``, ``gamma_me = gamma_ac / ((d/R)^2 - 1)``, ``lam = 1 / ((d/R)^2 - 1)``;
8. per nucleus: LAD thickness = LAD area / boundary length, number of domains, mean domain
   diameter.

Where this differs from the MATLAB code, and why:

* Voronoi cell areas come from the Delaunay triangulation (exact, vectorised; see
  :func:`voronoi_areas`) instead of polygons of ``voronoiDiagram``; cells of points on the
  convex hull are unbounded (MATLAB: NaN area) and get density 0 (never dense).
* Domain areas are the summed Voronoi cells of their localizations instead of an alpha shape
  (``boundary(grp, 0.3)``): the same tessellation as the density, no shape parameter, and the
  summed area of a uniformly filled disc is unbiased where the hull of its points is too small.
* The peripheral test uses every localization of the cluster (the anchor: its centroid plus a
  random fifteenth), and the LAD thickness is the total LAD area over the whole boundary length
  (the anchor sums the same ratio over 50 boundary segments).
* The boundary is the outline of the segmented density (the anchor: ``boundary(locs, 0.5)``).

Examples
--------
>>> import chromflow as cf
>>> from chromflow.simulate import simulate_domains
>>> cloud = simulate_domains(seed=0)
>>> dom = cf.analyze_domains(cloud.localizations, downsample=1)
>>> dom.summary["n_domains"] > 10
True
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ._json import jsonable as _jsonable
from ._progress import CancelToken, ProgressCallback, check_cancel, report
from .errors import ChromflowError, InputError

__all__ = ["analyze_domains", "DomainAnalysis", "voronoi_areas", "dbscan_labels", "domain_rates", "cross_check",
           "analyze_domains_file", "publish_all",
           "DOMAIN_COLUMNS", "DOMAIN_OUTPUTS", "DEFAULTS", "domain_output_paths"]

#: The columns of :attr:`DomainAnalysis.domains`, in order.
DOMAIN_COLUMNS = ("y", "x", "n_localizations", "area_nm2", "radius_nm", "spacing_nm", "n_neighbours",
                  "peripheral", "gamma_ac", "gamma_me", "lam", "flag")
#: kind -> file name suffix of what :meth:`DomainAnalysis.save` writes
DOMAIN_OUTPUTS = {"table": "_domains.csv", "summary": "_domains_summary.json", "figure": "_domains.png"}
#: Default settings of :func:`analyze_domains` (the anchor's values; lengths in nm).
DEFAULTS = {
    "density_percentile": 50.0,
    "eps": 30.0,
    "min_samples": 3,
    "min_cluster_size": 35,
    "peripheral_fraction": 0.05,
    "n_neighbours": 5,
    "diffusivity": 1.0,
    "downsample": 4,
    "boundary_pixel_size": None,
    "boundary_smoothing": None,
    "seed": 0,
}
# warn when one cluster covers more than this share of the nucleus area
_ONE_CLUSTER_SHARE = 0.25


def _unique_rows(pts):
    """np.unique(pts, axis=0, return_inverse, return_counts) for (n, 2) floats, several times faster."""
    key = np.ascontiguousarray(pts, dtype=np.float64).view(np.complex128).ravel()  # sorts by (col 0, col 1)
    uniq, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    return np.c_[uniq.real, uniq.imag], inverse.ravel(), counts


# ----------------------------------------------------------------------------------------------
# Voronoi cell areas
# ----------------------------------------------------------------------------------------------
def voronoi_areas(points) -> np.ndarray:
    """Area of the Voronoi cell of every point (nm^2 for points in nm).

    Computed from the Delaunay triangulation: the Voronoi cell of an interior vertex is the sum,
    over its triangles, of the signed areas ``(|ab|^2 cot C + |ac|^2 cot B) / 8`` (the
    "circumcentric" area of Meyer et al. 2003; exact, also for obtuse triangles, because the
    signed parts cancel). This equals the polygon area of the cell of
    :class:`scipy.spatial.Voronoi` (checked in the tests) at a fraction of the time and memory:
    no Voronoi regions are built.

    Parameters
    ----------
    points : array_like, shape (n, 2)
        Coordinates (any consistent unit). Exact duplicates share one cell: each copy gets
        ``cell / multiplicity``. Points that qhull merges with a neighbour (closer than its
        precision) share that neighbour's cell the same way.

    Returns
    -------
    ndarray, shape (n,)
        Cell areas; ``inf`` for points on the convex hull (unbounded cells).

    Raises
    ------
    InputError
        Fewer than 3 distinct points, or all of them on a line.

    Examples
    --------
    >>> yy, xx = np.mgrid[0:5, 0:5]
    >>> a = voronoi_areas(np.c_[yy.ravel(), xx.ravel()] * 10.0)
    >>> float(a[12]), bool(np.isinf(a[0]))
    (100.0, True)
    """
    from scipy.spatial import Delaunay, QhullError

    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise InputError(f"voronoi_areas needs an (n, 2) array, got shape {pts.shape}")
    uniq, inverse, counts = _unique_rows(pts)
    if len(uniq) < 3:
        raise InputError(f"need at least 3 distinct points for a Voronoi tessellation, got {len(uniq)}")
    # centre the coordinates: qhull works in double precision relative to the bounding box
    centred = uniq - uniq.mean(axis=0)
    try:
        tri = Delaunay(centred)
    except QhullError as exc:
        raise InputError(f"cannot triangulate the localizations (all on a line?): {str(exc).splitlines()[0]}") from None
    s = tri.simplices
    a, b, c = centred[s[:, 0]], centred[s[:, 1]], centred[s[:, 2]]
    ab, ac, bc = b - a, c - a, c - b
    twice_area = np.abs(ab[:, 0] * ac[:, 1] - ab[:, 1] * ac[:, 0])
    # dot products at each corner: cot(angle) = dot / twice_area
    dot_a = (ab * ac).sum(1)
    dot_b = (-ab * bc).sum(1)
    dot_c = (ac * bc).sum(1)
    lab, lac, lbc = (ab ** 2).sum(1), (ac ** 2).sum(1), (bc ** 2).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / (8.0 * twice_area)
        part_a = (lab * dot_c + lac * dot_b) * inv
        part_b = (lab * dot_c + lbc * dot_a) * inv
        part_c = (lac * dot_b + lbc * dot_a) * inv
    ok = twice_area > 0
    area = np.zeros(len(uniq))
    np.add.at(area, s[ok, 0], part_a[ok])
    np.add.at(area, s[ok, 1], part_b[ok])
    np.add.at(area, s[ok, 2], part_c[ok])
    area[np.unique(tri.convex_hull)] = np.inf
    share = counts.astype(np.float64)
    if len(tri.coplanar):
        # points qhull did not use (closer to a vertex than its precision): share that vertex's cell
        merged, nearest = tri.coplanar[:, 0], tri.coplanar[:, 2]
        np.add.at(share, nearest, counts[merged])
        area[merged] = area[nearest]
        share[merged] = share[nearest]
    return (area / share)[inverse]


# ----------------------------------------------------------------------------------------------
# result
# ----------------------------------------------------------------------------------------------
@dataclass
class DomainAnalysis:
    """Result of :func:`analyze_domains`.

    Attributes
    ----------
    domains : pandas.DataFrame
        One row per kept cluster (columns :data:`DOMAIN_COLUMNS`): centroid ``y``, ``x`` (nm),
        ``n_localizations`` (of the analysed, thinned set), ``area_nm2`` (summed Voronoi cells),
        ``radius_nm`` (area-equivalent), ``spacing_nm`` (mean distance to the nearest interior
        domain centres), ``n_neighbours`` (how many entered the mean), ``peripheral`` (LAD),
        ``gamma_ac`` (``D / d^2`` in 1/time for ``D`` in um^2/time), ``gamma_me``, ``lam``
        (dimensionless) and ``flag`` (empty when the row is complete; otherwise why a value is
        missing or less reliable).
    summary : dict
        ``n_domains`` (interior), ``n_lads``, ``mean_domain_diameter_nm``, ``lad_thickness_nm``,
        ``nucleus_diameter_nm``, ``nucleus_area_nm2``, ``boundary_length_nm``,
        ``n_localizations`` (read), ``n_analysed``, ``n_dense``, ``density_threshold_per_nm2``,
        ``mean_lam``, ``median_lam``, ``mean_gamma_ac``, ``mean_gamma_me``, ``settings``,
        ``warnings``, ``time_s`` and ``source``.
    boundary : ndarray (m, 2)
        Closed nucleus boundary polygon, ``(y, x)`` in nm.
    points : ndarray (n, 2)
        The analysed localizations ``(y, x)`` in nm (after de-duplication and thinning).
    density : ndarray (n,)
        Voronoi density of each analysed localization (nm^-2; 0 for unbounded hull cells).
    labels : ndarray (n,) int
        Row of :attr:`domains` each localization belongs to, -1 for none.
    dense : ndarray (n,) bool
        Localizations at or above the density threshold.
    """

    domains: pd.DataFrame
    summary: dict
    boundary: np.ndarray
    points: np.ndarray
    density: np.ndarray
    labels: np.ndarray
    dense: np.ndarray
    source: str | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def interior(self) -> pd.DataFrame:
        """The interior (non-LAD) domains."""
        return self.domains[~self.domains["peripheral"]]

    def raster(self, pixel_size: float | None = None):
        """Voronoi density and domain labels on a pixel grid (each pixel takes its cell's values).

        Parameters
        ----------
        pixel_size : float, optional
            Pixel size in nm; default 20 nm, coarser if the image would exceed 4 million pixels.

        Returns
        -------
        density : chromflow.Image
            Density in localizations per um^2 (0 outside the tessellated hull); ``origin`` and
            ``pixel_size`` in nm.
        labels : ndarray of int
            Row of :attr:`domains` (+1; 0 = background) on the same pixels, for napari ``Labels``.
        """
        from scipy.spatial import cKDTree

        from .image import Image

        key = ("raster", pixel_size)
        if key in self._cache:
            return self._cache[key]
        y, x = self.points[:, 0], self.points[:, 1]
        y0, x0, y1, x1 = y.min(), x.min(), y.max(), x.max()
        if pixel_size is None:
            pixel_size = max(20.0, math.sqrt((y1 - y0) * (x1 - x0) / 4e6))
        pixel_size = float(pixel_size)
        ny = int(math.ceil((y1 - y0) / pixel_size)) + 1
        nx = int(math.ceil((x1 - x0) / pixel_size)) + 1
        gy = y0 + pixel_size * np.arange(ny)
        gx = x0 + pixel_size * np.arange(nx)
        tree = cKDTree(self.points)
        grid = np.stack(np.meshgrid(gy, gx, indexing="ij"), axis=-1).reshape(-1, 2)
        dist, nearest = tree.query(grid, workers=-1)
        density = self.density[nearest] * 1e6
        labels = self.labels[nearest] + 1
        # a pixel farther from every localization than the boundary-render pixel is background
        far = dist > max(2 * pixel_size, 100.0)
        density[far] = 0.0
        labels[far] = 0
        image = Image(density.reshape(ny, nx), pixel_size=pixel_size, origin=(float(y0), float(x0)),
                      name="Voronoi density", source=self.source,
                      metadata={"units": "localizations per um^2"})
        out = (image, labels.reshape(ny, nx).astype(np.int32))
        self._cache[key] = out
        return out

    def lam_image(self, pixel_size: float | None = None) -> np.ndarray:
        """``lam`` of the domain under each pixel (NaN off domains, for LADs and flagged rows)."""
        _, labels = self.raster(pixel_size)
        lut = np.concatenate([[np.nan], self.domains["lam"].to_numpy(dtype=float)])
        return lut[labels]

    def figure(self, title: str | None = None):
        """The summary figure (:func:`chromflow.report.make_domains_figure`)."""
        from .report import make_domains_figure

        return make_domains_figure(self, title=title)

    def save(self, out_dir, stem: str | None = None, figure: bool = True, overwrite: bool = True) -> dict:
        """Write ``<stem>_domains.csv``, ``<stem>_domains_summary.json`` and ``<stem>_domains.png``.

        All or nothing: the files are written into a hidden temporary folder inside ``out_dir``
        and moved to their names only when all exist (as :func:`chromflow.pipeline.write_outputs`).

        Parameters
        ----------
        out_dir : str or os.PathLike
            Output folder (created if needed).
        stem : str, optional
            File name stem; default the stem of the source file (or ``"nucleus"``).
        figure : bool
            Also draw and write the figure (otherwise only the table and the summary).
        overwrite : bool
            If False, raise :class:`~chromflow.errors.InputError` when an output exists.

        Returns
        -------
        dict
            ``{kind: Path}`` for ``"table"``, ``"summary"`` (and ``"figure"``).
        """
        stem = stem or (Path(self.source).stem if self.source else "nucleus")
        final = domain_output_paths(stem, out_dir)
        if not figure:
            final.pop("figure")
        if not overwrite:
            existing = [str(p) for p in final.values() if p.exists()]
            if existing:
                raise InputError(f"outputs exist already ({', '.join(existing)}); pass overwrite=True", path=out_dir)

        def write_table(path):
            self.domains.to_csv(path, index_label="domain", float_format="%.6g")

        def write_summary(path):
            Path(path).write_text(json.dumps(_jsonable(self.summary), indent=2) + "\n", encoding="utf-8")

        def write_figure(path):
            self.figure(title=Path(self.source).name if self.source else stem).savefig(path, format="png")

        writers = {"table": write_table, "summary": write_summary, "figure": write_figure}
        return publish_all({k: (final[k], writers[k]) for k in final}, out_dir)


def domain_output_paths(stem: str, out_dir) -> dict:
    """``{kind: Path}`` of the files :meth:`DomainAnalysis.save` writes for ``stem``.

    Examples
    --------
    >>> domain_output_paths("cell1", "out")["table"].as_posix()
    'out/cell1_domains.csv'
    """
    return {kind: Path(out_dir) / f"{stem}{suffix}" for kind, suffix in DOMAIN_OUTPUTS.items()}


def publish_all(files: dict, out_dir) -> dict:
    """Write several files all or nothing: into a hidden temporary folder, then ``os.replace``.

    Parameters
    ----------
    files : dict
        ``{kind: (final_path, writer)}``; ``writer(tmp_path)`` writes one file.
    out_dir : path
        Folder of the final paths (created if needed; removed again on failure if this call
        created it and it is empty).

    Returns
    -------
    dict
        ``{kind: final_path}``.
    """
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".domains.", suffix=".chromflow-tmp", dir=out_dir))
    moved = []
    try:
        tmp = {}
        for kind, (final, writer) in files.items():
            tmp[kind] = tmp_dir / Path(final).name
            writer(tmp[kind])
            if not tmp[kind].exists():
                raise ChromflowError(f"internal: output {Path(final).name} was not written", path=out_dir)
        for kind, (final, _) in files.items():
            os.replace(tmp[kind], final)
            moved.append(Path(final))
    except BaseException:
        for p in moved:
            with contextlib.suppress(OSError):
                p.unlink()
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise
    shutil.rmtree(tmp_dir, ignore_errors=True)
    return {kind: Path(final) for kind, (final, _) in files.items()}


# ----------------------------------------------------------------------------------------------
# pieces
# ----------------------------------------------------------------------------------------------
def _coordinates(locs, source):
    """(points (n, 2) as (y, x) nm, warnings) from a DataFrame or an (n, 2|3) array (y, x[, z])."""
    notes = []
    if isinstance(locs, pd.DataFrame):
        missing = [c for c in ("x", "y") if c not in locs.columns]
        if missing:
            raise InputError(f"localizations have no {' or '.join(repr(c) for c in missing)} column "
                             f"(columns: {', '.join(map(str, locs.columns))})", path=source)
        pts = np.c_[locs["y"].to_numpy(dtype=np.float64), locs["x"].to_numpy(dtype=np.float64)]
        if "z" in locs.columns:
            z = locs["z"].to_numpy(dtype=np.float64)
            z = z[np.isfinite(z)]
            if z.size and z.max() > z.min():
                notes.append("3D localizations: the z column is ignored; the analysis uses the x/y projection")
    else:
        arr = np.asarray(locs, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] not in (2, 3):
            raise InputError(f"localizations must be a DataFrame with x, y columns or an (n, 2) array of (y, x) "
                             f"in nm, got shape {arr.shape}", path=source)
        if arr.shape[1] == 3:
            notes.append("3D localizations: the analysis uses the (y, x) projection of the (z, y, x) array")
            arr = arr[:, 1:]
        pts = arr
    bad = ~np.isfinite(pts).all(axis=1)
    if bad.any():
        raise InputError(f"{int(bad.sum())} localizations have NaN or infinite x/y", path=source)
    return pts, notes


def _nucleus_boundary(points, pixel_size, smoothing, source):
    """Closed boundary polygon (y, x nm) of the nucleus from the localizations.

    Two steps: :func:`chromflow.segment_nucleus` on the rendered counts finds the nucleus (and
    ignores stray localizations around it); the boundary itself is the outline of the pixels
    that hold localizations inside that region (closed with a 2-pixel disc, holes filled), so
    that it follows the outermost localizations rather than the half-maximum of a blurred
    density, which a dense peripheral band pushes outwards.
    """
    from scipy import ndimage
    from scipy.ndimage import gaussian_filter1d
    from skimage.measure import find_contours
    from skimage.morphology import disk

    from .nucleus import DEFAULT_SMOOTHING_NM, segment_nucleus
    from .render import render

    locs = pd.DataFrame({"x": points[:, 1], "y": points[:, 0]})
    locs.attrs["source"] = source
    detect = DEFAULT_SMOOTHING_NM if smoothing is None else float(smoothing)
    # pad the field of view so that the smoothed nucleus never reaches the image border
    pad = 10 * pixel_size + 4 * detect
    fov = (points[:, 0].min() - pad, points[:, 1].min() - pad, points[:, 0].max() + pad, points[:, 1].max() + pad)
    image = render(locs, pixel_size=pixel_size, method="histogram", fov=fov)
    image.source = source
    region = segment_nucleus(image, smoothing=detect)
    region = ndimage.binary_dilation(region, iterations=max(1, int(round(detect / pixel_size))))
    occupied = (np.asarray(image.data) > 0) & region
    r = 2
    occupied = ndimage.binary_closing(np.pad(occupied, r), structure=disk(r))[r:-r, r:-r]
    occupied = ndimage.binary_fill_holes(occupied)
    occupied = ndimage.binary_opening(occupied, structure=disk(1))
    labels, n = ndimage.label(occupied)
    if n > 1:
        occupied = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    contours = find_contours(np.pad(occupied, 1).astype(np.float64), 0.5)
    contour = max(contours, key=len)[:-1] - 1.0
    # marching squares on a pixel mask makes 45-degree staircases: smooth along the outline
    contour = gaussian_filter1d(contour, sigma=2.0, axis=0, mode="wrap")
    poly = np.asarray(image.origin) + contour * pixel_size
    return np.vstack([poly, poly[:1]])


def _polygon_area_length(poly):
    y, x = poly[:, 0], poly[:, 1]
    area = 0.5 * abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])))
    length = float(np.hypot(np.diff(y), np.diff(x)).sum())
    return area, length


def _distance_to_polygon(points, poly, step, near=np.inf):
    """Distance (nm) from each point to the polygon outline, exact (to ``step``) where it is < ``near``.

    A k-d tree of the outline sampled every ``step`` nm answers nearest-outline queries, but
    points deep inside a ring-shaped outline are its worst case (every sample is about equally
    far). So a Euclidean distance transform of the rasterised polygon (pixels of ``4 * step``)
    finds the points that can be within ``near`` of the outline, and only those are queried
    exactly; the others get the (lower-bounded) distance-transform value.
    """
    from scipy import ndimage
    from scipy.spatial import cKDTree
    from skimage.draw import polygon as fill_polygon

    points = np.asarray(points, dtype=np.float64)
    dist = np.full(len(points), np.inf)
    if len(points) == 0:
        return dist
    seg = np.diff(poly, axis=0)
    lengths = np.hypot(seg[:, 0], seg[:, 1])
    samples = [poly[:-1]]
    for k in range(1, int(math.ceil(lengths.max() / step)) if len(lengths) else 1):
        t = k * step / np.maximum(lengths, 1e-12)
        keep = t < 1
        samples.append(poly[:-1][keep] + seg[keep] * t[keep, None])
    samples = np.concatenate(samples)
    candidates = np.ones(len(points), dtype=bool)
    if np.isfinite(near):
        px = 4.0 * step
        lo = np.minimum(poly.min(axis=0), points.min(axis=0)) - 2 * px
        shape = tuple(int(v) for v in np.ceil((np.maximum(poly.max(axis=0), points.max(axis=0)) - lo) / px) + 3)
        inside = np.zeros(shape, dtype=bool)
        rr, cc = fill_polygon((poly[:, 0] - lo[0]) / px, (poly[:, 1] - lo[1]) / px, shape)
        inside[rr, cc] = True
        # distance to the outline: inside to the nearest outside pixel and vice versa
        edt = np.maximum(ndimage.distance_transform_edt(inside), ndimage.distance_transform_edt(~inside)) * px
        idx = np.clip(np.round((points - lo) / px).astype(np.int64), 0, np.array(shape) - 1)
        rough = edt[idx[:, 0], idx[:, 1]]
        # a pixel's value is off by at most about 1.5 pixels from the point's true distance
        candidates = rough <= near + 2 * px
        dist[~candidates] = rough[~candidates]
    if candidates.any():
        dist[candidates], _ = cKDTree(samples).query(points[candidates], workers=-1)
    return dist


def domain_rates(radius_nm, spacing_nm, diffusivity=1.0):
    """Rates of the domain model from domain radius ``R`` and spacing ``d``.

    ``gamma_ac = D / d^2`` (``d`` in um, ``D`` in um^2 per unit time, so ``gamma_ac`` is per unit
    time), ``gamma_me = gamma_ac / ((d/R)^2 - 1)`` and ``lam = gamma_me / gamma_ac =
    1 / ((d/R)^2 - 1)`` (dimensionless, the quantity the rate maps show).

    Parameters
    ----------
    radius_nm, spacing_nm : array_like
        Domain radius and spacing in nm.
    diffusivity : float
        ``D`` in um^2 per unit time.

    Returns
    -------
    gamma_ac, gamma_me, lam : ndarray
        NaN where ``d <= R`` (the formula has no meaning there) or an input is NaN.

    Examples
    --------
    >>> g_ac, g_me, lam = domain_rates(100.0, 300.0)
    >>> round(float(lam), 4), round(float(g_ac), 3)
    (0.125, 11.111)
    """
    r = np.asarray(radius_nm, dtype=np.float64)
    d = np.asarray(spacing_nm, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma_ac = diffusivity / (d / 1000.0) ** 2
        ratio = (d / r) ** 2 - 1.0
        valid = ratio > 0
        lam = np.where(valid, 1.0 / np.where(valid, ratio, 1.0), np.nan)
    return gamma_ac, gamma_ac * lam, lam


def dbscan_labels(points, eps: float = 30.0, min_samples: int = 3) -> np.ndarray:
    """DBSCAN cluster of each point (scikit-learn, KD-tree), -1 for noise.

    Parameters
    ----------
    points : ndarray (n, 2)
        Coordinates in nm.
    eps : float
        Neighbourhood radius in nm.
    min_samples : int
        Points within ``eps`` (the point itself included) that make a core point.

    Returns
    -------
    ndarray of int, shape (n,)

    Examples
    --------
    >>> pts = np.array([[0, 0], [0, 10], [0, 20], [0, 100], [0, 200], [0, 210]], float)
    >>> dbscan_labels(pts, eps=15, min_samples=3).tolist()
    [0, 0, 0, -1, -1, -1]
    """
    from sklearn.cluster import DBSCAN

    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) < min_samples:
        return np.full(len(pts), -1, dtype=np.int64)
    return DBSCAN(eps=eps, min_samples=min_samples, algorithm="kd_tree", n_jobs=-1).fit(pts).labels_.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# the analysis
# ----------------------------------------------------------------------------------------------
def analyze_domains(locs, *, density_percentile: float = 50.0, eps: float = 30.0, min_samples: int = 3,
                    min_cluster_size: int = 35, peripheral_fraction: float = 0.05, n_neighbours: int = 5,
                    diffusivity: float = 1.0, downsample: int = 4, boundary_pixel_size: float | None = None,
                    boundary_smoothing: float | None = None, seed: int = 0,
                    progress: ProgressCallback = None, cancel: CancelToken = None) -> DomainAnalysis:
    """Heterochromatin domains, LADs and domain rates of one single-channel (H2B) nucleus.

    Parameters
    ----------
    locs : pandas.DataFrame or ndarray
        Localizations with columns ``x``, ``y`` in nm (a ``z`` column is ignored, with a
        warning), or an ``(n, 2)`` array of ``(y, x)`` in nm. ``locs.attrs["source"]`` names
        the file in messages.
    density_percentile : float
        Localizations whose Voronoi density is at or above this percentile (0-100) of all
        densities are *dense*. Default 50, the anchor's demo value.
    eps : float
        DBSCAN neighbourhood radius in nm (30).
    min_samples : int
        DBSCAN: localizations (itself included) within ``eps`` that make a core point (3).
    min_cluster_size : int
        Smallest cluster kept, in (analysed) localizations (35).
    peripheral_fraction : float
        A cluster with a localization within this fraction of the nucleus radius of the
        boundary is peripheral (LAD) (0.05).
    n_neighbours : int
        Spacing ``d`` = mean distance to this many nearest interior domain centres (5).
    diffusivity : float
        ``D`` in um^2 per unit time for ``gamma_ac = D / d^2`` (1).
    downsample : int
        Keep one localization in ``downsample`` (random, seeded) after dropping exact duplicates,
        as the anchor does (4); ``eps`` and ``min_samples`` refer to the thinned density. 1 keeps all.
    boundary_pixel_size : float, optional
        Pixel size (nm) of the counts rendered to find the nucleus boundary; default
        ``sqrt(4 / median density)`` (about 4 localizations per pixel), between 5 and 200 nm.
    boundary_smoothing : float, optional
        Smoothing (nm) of the boundary segmentation; default that of
        :func:`chromflow.segment_nucleus` (250 nm).
    seed : int
        Seed of the thinning.
    progress, cancel
        The progress/cancel protocol of :mod:`chromflow._progress` (progress runs 0..100).

    Returns
    -------
    DomainAnalysis

    Raises
    ------
    InputError
        No x/y, NaN coordinates, too few localizations, invalid settings.
    SegmentationError
        No nucleus found in the rendered density.

    Notes
    -----
    Situations without a meaningful answer are reported, never silent:

    * no cluster reaches ``min_cluster_size`` ("no dense region"): an empty table and a
      warning in ``summary["warnings"]``;
    * one cluster covers more than a quarter of the nucleus: a warning (threshold too low?);
    * fewer than ``n_neighbours + 1`` interior domains: spacing from the available ones,
      flagged; a single interior domain has no spacing (NaN, flagged);
    * ``d <= R``: ``gamma_me`` and ``lam`` are NaN and the row is flagged ``d<=R``;
    * exact duplicate localizations are dropped (as the anchor does), counted in a warning;
    * 3D input: x/y only, with a warning.

    Examples
    --------
    >>> from chromflow.simulate import simulate_domains
    >>> cloud = simulate_domains(domain_radius=80.0, spacing=400.0, seed=1)
    >>> dom = analyze_domains(cloud.localizations, downsample=1)
    >>> round(dom.summary["mean_domain_diameter_nm"] / 160.0, 1)       # doctest: +SKIP
    1.0
    """
    from scipy.spatial import cKDTree

    started = time.perf_counter()
    source = (getattr(locs, "attrs", None) or {}).get("source")
    settings = dict(density_percentile=density_percentile, eps=eps, min_samples=min_samples,
                    min_cluster_size=min_cluster_size, peripheral_fraction=peripheral_fraction,
                    n_neighbours=n_neighbours, diffusivity=diffusivity, downsample=downsample,
                    boundary_pixel_size=boundary_pixel_size, boundary_smoothing=boundary_smoothing, seed=seed)
    _check_settings(settings, source)
    report(progress, 0, 100, "reading")
    points, notes = _coordinates(locs, source)
    n_read = len(points)
    points = _unique_rows(points)[0]
    if len(points) < n_read:
        notes.append(f"{n_read - len(points)} exact duplicate localizations dropped (as the anchor does: they "
                     "would share one Voronoi cell)")
    if downsample > 1:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(points), size=len(points) // downsample, replace=False))
        points = points[keep]
    if len(points) < max(min_cluster_size, 10):
        raise InputError(f"too few localizations to analyse: {len(points)} after de-duplication and thinning by "
                         f"{downsample} (need at least {max(min_cluster_size, 10)})", path=source)

    check_cancel(cancel, "domain analysis")
    report(progress, 5, 100, "Voronoi density")
    try:
        areas = voronoi_areas(points)
    except InputError as exc:
        raise InputError(exc.reason, path=source) from None
    with np.errstate(divide="ignore"):
        density = np.where(np.isfinite(areas), 1.0 / areas, 0.0)
    bounded = np.isfinite(areas)
    threshold = float(np.percentile(density[bounded], density_percentile))
    dense = bounded & (density >= threshold)

    check_cancel(cancel, "domain analysis")
    report(progress, 45, 100, "nucleus boundary")
    if boundary_pixel_size is None:
        # about 4 localizations per pixel at the median density: few empty pixels inside the nucleus
        boundary_pixel_size = float(np.clip(round(math.sqrt(4.0 / np.median(density[bounded]))), 5.0, 200.0))
    boundary = _nucleus_boundary(points, boundary_pixel_size, boundary_smoothing, source)
    nucleus_area, boundary_length = _polygon_area_length(boundary)
    nucleus_radius = math.sqrt(nucleus_area / math.pi)

    check_cancel(cancel, "domain analysis")
    report(progress, 55, 100, "DBSCAN")
    dense_idx = np.flatnonzero(dense)
    labels = np.full(len(points), -1, dtype=np.int64)
    cluster = dbscan_labels(points[dense_idx], eps, min_samples)
    n_raw = int(cluster.max()) + 1 if len(cluster) else 0
    sizes = np.bincount(cluster[cluster >= 0], minlength=n_raw)
    kept = np.flatnonzero(sizes >= min_cluster_size)

    check_cancel(cancel, "domain analysis")
    report(progress, 80, 100, "domains")
    # relabel kept clusters 0..k-1 in order of their first localization (deterministic)
    remap = np.full(n_raw + 1, -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    labels[dense_idx] = remap[cluster]  # cluster -1 -> remap[-1] == -1
    in_domain = labels >= 0
    lab = labels[in_domain]
    pts = points[in_domain]
    k = len(kept)
    counts = np.bincount(lab, minlength=k)
    cy = np.bincount(lab, weights=pts[:, 0], minlength=k) / np.maximum(counts, 1)
    cx = np.bincount(lab, weights=pts[:, 1], minlength=k) / np.maximum(counts, 1)
    area = np.bincount(lab, weights=areas[in_domain], minlength=k)
    radius = np.sqrt(area / math.pi)
    peripheral = np.zeros(k, dtype=bool)
    if k:
        limit = peripheral_fraction * nucleus_radius
        dist = _distance_to_polygon(pts, boundary, step=min(5.0, boundary_pixel_size / 4), near=limit)
        min_dist = np.full(k, np.inf)
        np.minimum.at(min_dist, lab, dist)
        peripheral = min_dist <= limit

    flags = [[] for _ in range(k)]
    spacing = np.full(k, np.nan)
    n_used = np.zeros(k, dtype=np.int64)
    interior = np.flatnonzero(~peripheral)
    for i in np.flatnonzero(peripheral):
        flags[i].append("peripheral (LAD): no spacing or rates")
    if len(interior) >= 2:
        m = min(n_neighbours, len(interior) - 1)
        centres = np.c_[cy[interior], cx[interior]]
        dd, _ = cKDTree(centres).query(centres, k=m + 1)
        spacing[interior] = dd[:, 1:].mean(axis=1)
        n_used[interior] = m
        if m < n_neighbours:
            for i in interior:
                flags[i].append(f"only {m} neighbour domain(s) (< {n_neighbours})")
    elif len(interior) == 1:
        flags[interior[0]].append("only one interior domain: no spacing")
    gamma_ac, gamma_me, lam = domain_rates(radius, spacing, diffusivity)
    gamma_ac[peripheral] = np.nan
    for i in interior:
        if np.isfinite(spacing[i]) and spacing[i] <= radius[i]:
            flags[i].append("d<=R: rates undefined")
    table = pd.DataFrame({
        "y": cy, "x": cx, "n_localizations": counts.astype(np.int64), "area_nm2": area, "radius_nm": radius,
        "spacing_nm": spacing, "n_neighbours": n_used, "peripheral": peripheral,
        "gamma_ac": gamma_ac, "gamma_me": gamma_me, "lam": lam, "flag": ["; ".join(f) for f in flags],
    }, columns=list(DOMAIN_COLUMNS))
    table.index.name = "domain"

    warn = list(notes)
    if k == 0:
        warn.append(f"no dense region: no cluster of >= {min_cluster_size} localizations among the "
                    f"{len(dense_idx)} localizations above the density threshold")
    elif area.max() > _ONE_CLUSTER_SHARE * nucleus_area:
        warn.append(f"one cluster covers {100 * area.max() / nucleus_area:.0f}% of the nucleus: the density threshold "
                    "may be too low or eps too large for this density")
    if 0 < len(interior) <= n_neighbours:
        warn.append(f"only {len(interior)} interior domain(s): spacing uses fewer than {n_neighbours} neighbours")
    n_bad = int(sum(np.isfinite(spacing[i]) and spacing[i] <= radius[i] for i in interior))
    if n_bad:
        warn.append(f"{n_bad} domain(s) with d <= R: rates undefined (NaN, flagged)")

    lad_area = float(area[peripheral].sum())
    good_lam = lam[np.isfinite(lam)]
    summary = {
        "n_domains": int(len(interior)),
        "n_lads": int(peripheral.sum()),
        "mean_domain_diameter_nm": float(2 * radius[interior].mean()) if len(interior) else float("nan"),
        "median_domain_diameter_nm": float(2 * np.median(radius[interior])) if len(interior) else float("nan"),
        "mean_spacing_nm": float(np.nanmean(spacing[interior])) if np.isfinite(spacing).any() else float("nan"),
        "lad_thickness_nm": lad_area / boundary_length,
        "lad_area_nm2": lad_area,
        "nucleus_diameter_nm": 2 * nucleus_radius,
        "nucleus_area_nm2": nucleus_area,
        "boundary_length_nm": boundary_length,
        "n_localizations": int(n_read),
        "n_analysed": int(len(points)),
        "n_dense": int(len(dense_idx)),
        "density_threshold_per_nm2": threshold,
        "n_rated": int(good_lam.size),
        "mean_lam": float(good_lam.mean()) if good_lam.size else float("nan"),
        "median_lam": float(np.median(good_lam)) if good_lam.size else float("nan"),
        "mean_gamma_ac": float(np.nanmean(gamma_ac[interior])) if np.isfinite(gamma_ac).any() else float("nan"),
        "mean_gamma_me": float(np.nanmean(gamma_me)) if np.isfinite(gamma_me).any() else float("nan"),
        "rates": "domain rates (single-channel estimate: lam = 1/((d/R)^2 - 1) from domain radius R and spacing d)",
        "settings": settings,
        "warnings": warn,
        "time_s": round(time.perf_counter() - started, 3),
        "source": source,
    }
    for w in warn:
        warnings.warn(f"{source}: {w}" if source else w, UserWarning, stacklevel=2)
    report(progress, 100, 100, "done")
    return DomainAnalysis(domains=table, summary=summary, boundary=boundary, points=points, density=density,
                          labels=labels, dense=dense, source=source)


def _check_settings(s, source):
    def bad(name, expected):
        raise InputError(f"setting {name} must be {expected}, got {s[name]!r}", path=source)

    def number(v):
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)

    def integer(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not (number(s["density_percentile"]) and 0 <= s["density_percentile"] < 100):
        bad("density_percentile", "a number in [0, 100)")
    if s["boundary_pixel_size"] is not None and not (number(s["boundary_pixel_size"]) and s["boundary_pixel_size"] > 0):
        bad("boundary_pixel_size", "null or a positive number of nm")
    for name in ("eps", "diffusivity"):
        if not (number(s[name]) and s[name] > 0):
            bad(name, "a positive number")
    for name, low in (("min_samples", 1), ("min_cluster_size", 1), ("n_neighbours", 1), ("downsample", 1),
                      ("seed", 0)):
        if not (integer(s[name]) and s[name] >= low):
            bad(name, f"an integer >= {low}")
    if not (number(s["peripheral_fraction"]) and 0 <= s["peripheral_fraction"] < 1):
        bad("peripheral_fraction", "a number in [0, 1)")
    if s["boundary_smoothing"] is not None and not (number(s["boundary_smoothing"]) and s["boundary_smoothing"] >= 0):
        bad("boundary_smoothing", "null or a number of nm >= 0")


# ----------------------------------------------------------------------------------------------
# cross-check with a rate map
# ----------------------------------------------------------------------------------------------
def cross_check(result, dom: DomainAnalysis) -> dict:
    """Agreement of a rate map with the domain rates of the same nucleus (Spearman).

    For every interior domain with a finite ``lam``, the rate map's ``lambda`` is averaged over
    the grid cells whose centres lie within the domain's radius of its centre (at least the
    nearest cell), and ranked against the domain's ``lam``.

    Parameters
    ----------
    result : chromflow.RateMapResult
        Rate map (``rate``, ``spacing``, ``origin`` in nm) of the same localizations.
    dom : DomainAnalysis

    Returns
    -------
    dict
        ``spearman`` (rho), ``p_value``, ``n`` (domains compared) and ``note``; rho and p are
        None when fewer than 3 domains fall on finite rate-map cells.

    Examples
    --------
    >>> check = cross_check(result, dom)          # doctest: +SKIP
    >>> check["spearman"], check["n"]             # doctest: +SKIP
    (0.41, 212)
    """
    from scipy.stats import spearmanr

    rate = np.asarray(result.rate, dtype=np.float64)
    spacing = float(np.atleast_1d(result.spacing)[0])
    oy, ox = (float(o) for o in tuple(result.origin)[-2:])
    rows = dom.interior
    rows = rows[np.isfinite(rows["lam"])]
    pinn, classical = [], []
    ny, nx = rate.shape
    for _, row in rows.iterrows():
        iy, ix = (row["y"] - oy) / spacing, (row["x"] - ox) / spacing
        r = max(row["radius_nm"] / spacing, 0.5)
        y0, y1 = int(math.floor(iy - r)), int(math.ceil(iy + r)) + 1
        x0, x1 = int(math.floor(ix - r)), int(math.ceil(ix + r)) + 1
        y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, ny), min(x1, nx)
        if y0 >= y1 or x0 >= x1:
            continue
        gy, gx = np.mgrid[y0:y1, x0:x1]
        near = (gy - iy) ** 2 + (gx - ix) ** 2 <= r ** 2
        if not near.any():
            j = np.argmin((gy - iy) ** 2 + (gx - ix) ** 2)
            near.flat[j] = True
        values = rate[y0:y1, x0:x1][near]
        values = values[np.isfinite(values)]
        if values.size:
            pinn.append(values.mean())
            classical.append(row["lam"])
    n = len(pinn)
    note = ("Spearman rank correlation of the rate map's lambda averaged over each interior domain with the "
            "domain's lam = 1/((d/R)^2 - 1); both come from the same model by different routes")
    if n < 3:
        return {"spearman": None, "p_value": None, "n": n, "note": note + f"; only {n} domain(s) on the map"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho, p = spearmanr(pinn, classical)
    rho = float(rho) if np.isfinite(rho) else None
    p = float(p) if np.isfinite(p) else None
    return {"spearman": rho, "p_value": p, "n": n, "note": note}


def analyze_domains_file(path, out_dir=None, *, overwrite: bool = True, figure: bool = True, rate_result=None,
                         progress: ProgressCallback = None, cancel: CancelToken = None, **settings) -> DomainAnalysis:
    """Read a localization file, analyse its domains and (optionally) write the outputs.

    Parameters
    ----------
    path : str or os.PathLike
        Localizations (ThunderSTORM CSV, Picasso HDF5, plain CSV; see
        :func:`chromflow.read_localizations`).
    out_dir : str or os.PathLike, optional
        When given, ``<stem>_domains.csv``, ``<stem>_domains_summary.json`` and
        ``<stem>_domains.png`` are written there, all or nothing.
    overwrite, figure
        As :meth:`DomainAnalysis.save`.
    rate_result : RateMapResult or path, optional
        A rate map of the same nucleus (``<stem>_result.npz`` of ``chromflow run``): the
        :func:`cross_check` goes into ``summary["cross_check"]`` and the figure.
    **settings
        Keyword arguments of :func:`analyze_domains`.

    Returns
    -------
    DomainAnalysis
        With ``summary["file"]`` and, when written, ``summary["outputs"]``.

    Examples
    --------
    >>> dom = analyze_domains_file("cell.csv", "out/")   # doctest: +SKIP
    """
    from ._validate import check_input_file
    from .io import read_localizations

    path = check_input_file(path, allow_empty=True)
    if not overwrite and out_dir is not None:
        existing = [str(p) for p in domain_output_paths(Path(path).stem, out_dir).values() if p.exists()]
        if existing:
            raise InputError(f"outputs exist already ({', '.join(existing)}); pass overwrite=True", path=out_dir)
    locs = read_localizations(path)
    if len(locs) == 0:
        raise InputError("no localizations in the file", path=path)
    locs.attrs["source"] = str(path)
    dom = analyze_domains(locs, progress=progress, cancel=cancel, **settings)
    dom.summary["file"] = str(path)
    if rate_result is not None:
        if not hasattr(rate_result, "rate"):
            from .inverse import RateMapResult

            rate_result = RateMapResult.load(check_input_file(rate_result))
        dom.summary["cross_check"] = cross_check(rate_result, dom)
    if out_dir is not None:
        check_cancel(cancel, "domain analysis")
        paths = dom.save(out_dir, stem=Path(path).stem, figure=figure, overwrite=overwrite)
        dom.summary["outputs"] = {k: str(v) for k, v in paths.items()}
    return dom
