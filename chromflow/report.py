"""A one-page figure of a pipeline run: density, nucleus, fields, rate map and its diagnostics.

The figure is built on matplotlib's Agg canvas directly (no ``pyplot``), so it never needs a
display, never touches the global figure list and is safe in worker processes and threads.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .inverse.result import EDGE_BIAS_DEPTH_UM, _number, _ratio_map_r, edge_bias_zone
from .io._atomic import atomic_path

__all__ = ["make_report", "make_domains_figure", "report_caption", "wrap_caption", "nice_scale_bar_length",
           "REPORT_PANELS", "EDGE_BIAS_DEPTH_UM", "edge_bias_zone"]

#: Titles of the panels of :func:`make_report`, in reading order.
REPORT_PANELS = (
    "density",
    "nucleus mask",
    "heterochromatin phi_h",
    "euchromatin phi_e",
    "rate lambda",
    "smoothed phi_h/phi_e (no physics)",
    "uncertainty",
    "residual",
)
#: the panels' grid (rows, columns) and the page width, inches
_LAYOUT, _PAGE_WIDTH_IN = (2, 4), 18.0


#: characters per caption line: 9 pt text across the 18 in page
CAPTION_WIDTH = 226
#: height of one caption line, inches (9 pt at line spacing 1.3)
CAPTION_LINE_IN = 0.17
# the page of a one-line caption, inches: its height, the margin under the panels, the panels'
# top and the caption's baseline below the page's top edge
_PAGE_IN, _BOTTOM_IN, _PANELS_TOP_IN, _CAPTION_IN = 8.2, 0.164, 0.738, 0.533


def wrap_caption(caption: str, width: int = CAPTION_WIDTH) -> str:
    """Break a report caption into lines of at most ``width`` characters, preferably between its
    ``" | "``-separated parts, so that no part of it runs off the page.

    Examples
    --------
    >>> wrap_caption("pinn | split-half r = 0.9", width=80)
    'pinn | split-half r = 0.9'
    >>> print(wrap_caption("pinn | a long part | another part", width=20))
    pinn | a long part |
    another part
    """
    import textwrap

    lines, line = [], ""
    for part in caption.split(" | "):
        joined = part if not line else f"{line} | {part}"
        if len(joined) <= width:
            line = joined
            continue
        if line:
            lines.append(line + " |")
        # a part longer than a line is broken between words
        pieces = textwrap.wrap(part, width) or [""]
        lines += pieces[:-1]
        line = pieces[-1]
    lines.append(line)
    return "\n".join(lines)


def report_caption(result) -> str:
    """One line under the title: method, quality score, edge band and any flags of ``result``.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> r = SimpleNamespace(method="pinn", diagnostics={"split_half_r": 0.91, "flags": []},
    ...                     edge=None, mask=None)
    >>> report_caption(r)
    'pinn | split-half reproducibility r = 0.91 (1 = a map that repeats exactly)'
    """
    diag = getattr(result, "diagnostics", None) or {}
    parts = [str(getattr(result, "method", ""))]
    r = diag.get("split_half_r")
    if r is not None and np.isfinite(r):
        parts.append(f"split-half reproducibility r = {r:.2f} (1 = a map that repeats exactly)")
    halves = diag.get("halves") or {}
    if max(halves.get("scale", [1.0])) > 1.0:
        parts.append(f"the halves share noise (independence {min(halves['independence']):.2f}: molecules seen in "
                     "both); their difference was scaled up")
    ratio = diag.get("ratio") or {}
    rate, smooth = getattr(result, "rate", None), getattr(result, "ratio", None)
    if rate is not None and smooth is not None and np.isfinite(_number(ratio.get("sigma_cells"))):
        # the number summary()["ratio_map_r"] gives: for networks their own map's agreement,
        # recorded before the ratio was mixed in (the mix would raise it without the physics)
        r_ratio = _ratio_map_r(result, getattr(result, "mask", None))
        if np.isfinite(r_ratio):
            parts.append(f"map vs smoothed phi_h/phi_e without physics (width {ratio['sigma_cells']:.1f} cells "
                         f"from the halves): r = {r_ratio:.2f}")
    weight = _number((diag.get("training") or {}).get("ratio_weight"))
    if np.isfinite(weight) and weight > 0:
        parts.append(f"the map mixes in {weight:.2f} of that smoothed ratio (noisy data; its shift is in the "
                     "uncertainty)")
    effort = diag.get("effort") or {}
    if effort.get("larger"):
        # the reason says why: the halves' agreement (auto) or the caller's choice; the agreement
        # itself may be absent (NaN, JSON null) on cells too wide for the domain band
        parts.append(f"larger effort: {effort['ensemble']} fits of up to {effort['iterations']} steps "
                     f"({effort.get('reason', '')})")
    split = diag.get("split")
    if split is not None and split != "two-channel":
        parts.append(f"single channel: phi_h/phi_e from the '{split}' rule, an assumption (docs/domains.md)")
    edge, mask = getattr(result, "edge", None), getattr(result, "mask", None)
    if edge is not None and mask is not None and np.any(edge):
        parts.append(f"edge band (dashed): {100 * np.sum(edge) / max(np.sum(mask), 1):.0f} % of the nucleus")
    layer = diag.get("boundary_layer") or {}
    if layer.get("applied"):
        parts.append(f"envelope transport layer corrected within {layer.get('depth_um', 0):g} um of the outline "
                     f"(weight {layer.get('weight', 0):.2f})")
    if mask is not None and np.any(edge_bias_zone(mask, getattr(result, "spacing", None))):
        if layer.get("applied"):
            left = "less after the correction; "
        elif layer.get("reason"):
            left = f"not corrected: {layer['reason']}; "
        else:
            left = ""
        parts.append(f"dotted: {EDGE_BIAS_DEPTH_UM:g} um inside the outline; outside it lambda may read high "
                     f"({left}docs/inference.md)")
    flags = diag.get("flags") or []
    if flags:
        parts.append("WARNING: " + "; ".join(flags))
    return " | ".join(parts)


def nice_scale_bar_length(width_um: float, fraction: float = 0.2) -> float:
    """A round scale-bar length (1, 2 or 5 times a power of ten) near ``fraction * width_um``.

    Parameters
    ----------
    width_um : float
        Width of the panel in micrometres.
    fraction : float
        Target bar length as a fraction of the width.

    Returns
    -------
    float
        Bar length in micrometres, never longer than ``fraction * width_um``.

    Examples
    --------
    >>> nice_scale_bar_length(10.0)
    2.0
    >>> nice_scale_bar_length(2.56)
    0.5
    """
    target = float(width_um) * fraction
    if not np.isfinite(target) or target <= 0:
        raise ValueError(f"width must be a positive number of um, got {width_um}")
    power = 10.0 ** math.floor(math.log10(target))
    for step in (5.0, 2.0, 1.0):
        if step * power <= target * (1 + 1e-9):
            return step * power
    return power  # unreachable: 1 * power <= target by construction


def _extent_um(shape, spacing_nm, origin_nm):
    """imshow extent (left, right, bottom, top) in um for pixel centres at ``origin + i * spacing``."""
    ny, nx = shape[-2:]
    oy, ox = float(origin_nm[-2]), float(origin_nm[-1])
    s = float(spacing_nm)
    left, right = ox - s / 2, ox + (nx - 0.5) * s
    top, bottom = oy - s / 2, oy + (ny - 0.5) * s
    # y grows downwards as in the array: top of the panel is row 0
    return (left / 1000.0, right / 1000.0, bottom / 1000.0, top / 1000.0)


def _format_um(length_um: float) -> str:
    if length_um >= 1:
        return f"{length_um:g} µm"
    return f"{length_um * 1000:g} nm"


def _add_scale_bar(ax, extent, color="white"):
    from matplotlib.font_manager import FontProperties
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    width_um = abs(extent[1] - extent[0])
    length = nice_scale_bar_length(width_um)
    bar = AnchoredSizeBar(ax.transData, length, _format_um(length), "lower right", pad=0.4,
                          color=color, frameon=False, size_vertical=width_um / 100.0,
                          fontproperties=FontProperties(size=8))
    bar.set_gid("scale_bar")
    bar.length_um = length  # kept on the artist so tests and callers can read the bar back
    ax.add_artist(bar)
    return bar


def _robust_limits(values, symmetric=False):
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return (0.0, 1.0)
    if symmetric:
        m = float(np.percentile(np.abs(finite), 99))
        return (-m, m) if m > 0 else (-1.0, 1.0)
    lo, hi = (float(v) for v in np.percentile(finite, [1, 99]))
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def _masked(values, mask):
    out = np.array(values, dtype=float, copy=True)
    if mask is not None:
        out[~np.asarray(mask, dtype=bool)] = np.nan
    return out


def make_report(density_image, mask, result, path=None, title=None):
    """Draw the summary figure of one pipeline run and optionally write it as a PNG.

    Eight panels (:data:`REPORT_PANELS`): the density image, the nucleus mask outlined on it,
    the fractions ``phi_h`` and ``phi_e``; the rate map ``lambda`` beside the smoothed
    ``phi_h / phi_e`` without physics (``result.ratio``) on the same colour scale, the rate
    uncertainty and the steady-state residual. Every panel has a scale bar (its length read from
    the pixel size of the image or the grid spacing of the result) and a colour bar with units.

    Parameters
    ----------
    density_image : chromflow.Image
        Rendered or loaded density; ``pixel_size`` and ``origin`` in nm.
    mask : ndarray of bool
        Nucleus mask on the pixels of ``density_image``.
    result : chromflow.RateMapResult
        Inference result with ``phi_h``, ``phi_e``, ``rate``, ``ratio`` (optional), ``residual``,
        ``uncertainty`` (arrays on the field grid), ``mask``, ``spacing`` (nm per grid cell) and
        ``origin`` (nm).
    path : str or os.PathLike, optional
        Where to write the figure as PNG (atomically: a temporary file renamed on success).
    title : str, optional
        Figure title; defaults to the image name.

    Returns
    -------
    matplotlib.figure.Figure
        The figure, drawn on an Agg canvas.

    Examples
    --------
    >>> fig = make_report(image, mask, result, "cell_report.png")   # doctest: +SKIP
    >>> [ax.get_title() for ax in fig.axes[::2]]                     # doctest: +SKIP
    ['density', 'nucleus mask', ...]
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    density = np.asarray(density_image.data, dtype=float)
    if density.ndim == 3:  # a z-stack: show the sum projection
        density = density.sum(axis=0)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != density.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the density shape {density.shape}")
    image_extent = _extent_um(density.shape, density_image.pixel_size, density_image.origin)
    grid_extent = _extent_um(np.shape(result.rate), result.spacing, result.origin)
    grid_mask = np.asarray(result.mask, dtype=bool)

    # a fixed layout: matplotlib's constrained layout would double the time of drawing the page;
    # the caption is wrapped to the page's width, and each extra line moves the panels down
    caption = wrap_caption(report_caption(result))
    extra_in = CAPTION_LINE_IN * caption.count("\n")
    height = _PAGE_IN + extra_in
    fig = Figure(figsize=(_PAGE_WIDTH_IN, height), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(*_LAYOUT, gridspec_kw=dict(left=0.01, right=0.96, bottom=_BOTTOM_IN / height,
                                                    top=1 - (_PANELS_TOP_IN + extra_in) / height, wspace=0.32,
                                                    hspace=0.14))
    density_unit = density_image.metadata.get("units", "localizations / pixel") if density_image.metadata else "localizations / pixel"
    lo, hi = _robust_limits(density)
    residual = _masked(result.residual, grid_mask)
    phi_h, phi_e = _masked(result.phi_h, grid_mask), _masked(result.phi_e, grid_mask)
    # volume fractions on a fixed 0..phi_max scale so reports of different cells compare
    phi_max = max([0.7] + [float(np.nanmax(f)) for f in (phi_h, phi_e) if np.isfinite(f).any()])
    rate = _masked(result.rate, grid_mask)
    rate_limits = _robust_limits(rate)
    # the baseline without physics on the rate's colour scale, so the two read side by side
    ratio = _masked(getattr(result, "ratio", np.full(grid_mask.shape, np.nan)), grid_mask)
    width = _number(((getattr(result, "diagnostics", None) or {}).get("ratio") or {}).get("sigma_cells"))
    # its width (cells) was chosen by the data's two halves (chromflow.evaluate.cross_validated_ratio)
    ratio_unit = f"φ_h / φ_e, width {width:.1f} cells" if np.isfinite(width) else "φ_h / φ_e (dimensionless)"
    panels = [
        (density, image_extent, "magma", (lo, hi), density_unit),
        (density, image_extent, "gray", (lo, hi), density_unit),
        (phi_h, grid_extent, "viridis", (0.0, phi_max), "volume fraction"),
        (phi_e, grid_extent, "viridis", (0.0, phi_max), "volume fraction"),
        (rate, grid_extent, "plasma", rate_limits, "Γ_me / Γ_ac (dimensionless)"),
        (ratio, grid_extent, "plasma", rate_limits, ratio_unit),
        (_masked(result.uncertainty, grid_mask), grid_extent, "cividis", _robust_limits(_masked(result.uncertainty, grid_mask)), "standard error of λ"),
        (residual, grid_extent, "RdBu_r", _robust_limits(residual, symmetric=True), "1 / acetylation time"),
    ]
    rate_ax = axes.flat[REPORT_PANELS.index("rate lambda")]
    for ax, name, (values, extent, cmap, (vmin, vmax), unit) in zip(axes.flat, REPORT_PANELS, panels):
        shown = ax.imshow(values, extent=extent, origin="upper", cmap=cmap, vmin=vmin, vmax=vmax,
                          interpolation="nearest")
        ax.set_facecolor("black")
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
        colorbar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
        colorbar.set_label(unit)
        # the diverging map is white at 0: a white bar would vanish there
        _add_scale_bar(ax, extent, color="black" if cmap == "RdBu_r" else "white")
        if not np.isfinite(values).any():  # e.g. the uncertainty of a single fit
            ax.text(0.5, 0.5, "not computed\n(uncertainty switched off)" if name == "uncertainty"
                    else "not available", transform=ax.transAxes, ha="center", va="center", color="white")

    def outline(ax, region, extent, **style):
        # the iso-line at 0.5 of ``region``, through the pixel centres of an image of ``extent``
        ny, nx = region.shape
        ys = np.linspace(extent[3], extent[2], ny + 1)[:-1] + (extent[2] - extent[3]) / (2 * ny)
        xs = np.linspace(extent[0], extent[1], nx + 1)[:-1] + (extent[1] - extent[0]) / (2 * nx)
        return ax.contour(xs, ys, region.astype(float), levels=[0.5], **style)

    # the mask as an outline on the density, so a user can judge the segmentation by eye
    if mask.any():
        outline(axes.flat[1], mask, image_extent, colors="cyan", linewidths=1.2)
    # the edge band (no weight in the fit: the rate there is a continuation) on the rate map
    edge = getattr(result, "edge", None)
    if edge is not None and np.any(edge):
        outline(rate_ax, grid_mask & ~np.asarray(edge, bool), grid_extent, colors="white", linewidths=0.8,
                linestyles="dashed")
    # where simulated nuclei show a spurious rise of lambda along the envelope (EDGE_BIAS_DEPTH_UM)
    deep = grid_mask & ~edge_bias_zone(grid_mask, result.spacing)
    if deep.any() and (grid_mask & ~deep).any():
        outline(rate_ax, deep, grid_extent, colors="white", linewidths=0.8,
                linestyles="dotted").set_gid("edge_bias_zone")
    fig.suptitle(title if title is not None else (density_image.name or "chromflow report"))
    # the caption's last line sits where a one-line caption always sat, above the panels' titles
    fig.text(0.5, 1 - (_CAPTION_IN + extra_in) / height, caption, ha="center", va="bottom", fontsize=9,
             linespacing=1.3,
             color="darkred" if (getattr(result, "diagnostics", None) or {}).get("flags") else "black")
    if path is not None:
        path = os.fspath(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    return fig


def _cross_check_line(check) -> str:
    if not check:
        return ""
    if check.get("spearman") is None:
        return f"\nrate map vs domain λ: not comparable ({check.get('n', 0)} domains on the map)"
    return (f"\nrate map λ vs domain λ: Spearman {check['spearman']:.2f} (p = {check['p_value']:.2g}, "
            f"n = {check['n']} domains)")


def make_domains_figure(dom, path=None, title=None):
    """Draw the figure of a classical domain analysis (:func:`chromflow.analyze_domains`).

    Two panels with scale bars: the Voronoi density map (log scale, localizations per um^2)
    with the nucleus boundary, and the domains coloured by their ``lam`` (colour bar), the LADs
    in green, domains without a rate in grey, the boundary in red. The summary numbers are in
    the title.

    Parameters
    ----------
    dom : chromflow.DomainAnalysis
    path : str or os.PathLike, optional
        Where to write the figure as PNG (atomically).
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = make_domains_figure(dom, "cell_domains.png")   # doctest: +SKIP
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap, LogNorm
    from matplotlib.figure import Figure

    density, labels = dom.raster()
    extent = _extent_um(density.shape, density.pixel_size, density.origin)
    fig = Figure(figsize=(13.0, 6.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, gridspec_kw=dict(left=0.01, right=0.93, bottom=0.02, top=0.86, wspace=0.25))
    values = np.asarray(density.data, dtype=float)
    positive = values[values > 0]
    lo, hi = (np.percentile(positive, [2, 99.5]) if positive.size else (1.0, 10.0))
    hi = max(hi, lo * 1.01)
    shown = axes[0].imshow(np.where(values > 0, values, np.nan), extent=extent, origin="upper", cmap="jet",
                           norm=LogNorm(vmin=lo, vmax=hi), interpolation="nearest")
    fig.colorbar(shown, ax=axes[0], fraction=0.046, pad=0.03).set_label("Voronoi density (localizations / µm²)")
    axes[0].set_title("Voronoi density")

    table = dom.domains
    lam = table["lam"].to_numpy(dtype=float) if len(table) else np.zeros(0)
    peripheral = table["peripheral"].to_numpy(dtype=bool) if len(table) else np.zeros(0, bool)
    lab = np.asarray(labels)
    lam_px = np.concatenate([[np.nan], lam])[lab]
    lad_px = np.concatenate([[False], peripheral])[lab]
    unrated_px = (lab > 0) & ~lad_px & ~np.isfinite(lam_px)
    axes[1].imshow(np.zeros_like(values), extent=extent, origin="upper", cmap="gray", vmin=0, vmax=1)
    axes[1].imshow(np.where(lad_px, 1.0, np.nan), extent=extent, origin="upper",
                   cmap=ListedColormap(["#2ca02c"]), vmin=0, vmax=1, interpolation="nearest")
    axes[1].imshow(np.where(unrated_px, 1.0, np.nan), extent=extent, origin="upper",
                   cmap=ListedColormap(["#9a9a9a"]), vmin=0, vmax=1, interpolation="nearest")
    vmin, vmax = _robust_limits(lam)
    shown = axes[1].imshow(lam_px, extent=extent, origin="upper", cmap="plasma", vmin=vmin, vmax=vmax,
                           interpolation="nearest")
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.03).set_label("domain λ = 1/((d/R)² − 1)")
    axes[1].set_title("domains (λ), LADs (green), unrated (grey)")
    for ax in axes:
        ax.plot(dom.boundary[:, 1] / 1000.0, dom.boundary[:, 0] / 1000.0, color="red", lw=1.0)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_facecolor("black")
        ax.set_xticks([])
        ax.set_yticks([])
        _add_scale_bar(ax, extent)
    s = dom.summary

    def fmt(v, spec=".0f"):
        return "n/a" if v is None or not np.isfinite(v) else format(v, spec)
    fig.suptitle(f"{title or dom.source or 'domains'}\n{s['n_domains']} domains, mean diameter "
                 f"{fmt(s['mean_domain_diameter_nm'])} nm, spacing {fmt(s['mean_spacing_nm'])} nm, "
                 f"median λ {fmt(s['median_lam'], '.3f')}; {s['n_lads']} LADs, thickness "
                 f"{fmt(s['lad_thickness_nm'])} nm; nucleus {fmt(s['nucleus_diameter_nm'])} nm"
                 + _cross_check_line(s.get("cross_check")), fontsize=11)
    if path is not None:
        with atomic_path(os.fspath(path)) as tmp:
            fig.savefig(tmp, format="png")
    return fig
