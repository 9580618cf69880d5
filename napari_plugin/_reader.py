"""napari reader: ThunderSTORM / plain CSV, Picasso HDF5 and TIFF, placed in nm.

Localizations open as a rendered density image (a points layer with millions of points makes
napari crawl); :func:`read_layers` with ``as_points=True`` gives a points layer instead, and the
*Render localizations* widget switches between the two for an open layer. Every layer carries
``scale`` (nm per pixel) and ``translate`` (nm of the centre of pixel (0, 0)), so density images,
masks and rate maps line up in napari's world coordinates (nm).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from chromflow.blinks import merge_blinks_where_possible, merge_note
from chromflow.pipeline import RenderSettings, rows_in_channel

from ._layers import NM_UNITS, image_layer_kwargs, report_error

__all__ = ["get_reader", "read_layers", "localization_layers", "rows_to_draw", "channel_values", "pixel_fov",
           "DEFAULT_PIXEL_SIZE_NM",
           "LOCALIZATION_SUFFIXES", "IMAGE_SUFFIXES"]

#: Pixel size (nm) of the density image rendered when localizations are opened: the pipeline's
#: default (``chromflow.pipeline.RenderSettings().pixel_size``), so napari and the CLI agree.
DEFAULT_PIXEL_SIZE_NM = RenderSettings().pixel_size
#: Blink merging when a file is opened: the pipeline's default, for the same reason.
DEFAULT_MERGE_BLINKS = RenderSettings().merge_blinks
DEFAULT_MAX_DARK_FRAMES = RenderSettings().max_dark_frames
LOCALIZATION_SUFFIXES = (".csv", ".hdf5", ".h5")
IMAGE_SUFFIXES = (".tif", ".tiff")


def get_reader(path):
    """npe2 reader hook: a function that reads ``path``, or None when it is not ours.

    Parameters
    ----------
    path : str or list of str
        What the user dropped. One file with a suffix in :data:`LOCALIZATION_SUFFIXES` or
        :data:`IMAGE_SUFFIXES` is accepted; stacks of several files are left to other readers.

    Returns
    -------
    callable or None
        ``reader(path) -> list of (data, kwargs, layer_type)``.

    Examples
    --------
    >>> get_reader("cell.csv") is not None
    True
    >>> get_reader("notes.txt") is None
    True
    """
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    suffix = Path(os.fspath(path)).suffix.lower()
    if suffix not in LOCALIZATION_SUFFIXES + IMAGE_SUFFIXES:
        return None
    return _read_for_napari


def _read_for_napari(path):
    """Reader used by napari: errors become notifications, not tracebacks."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    try:
        return read_layers(path)
    except Exception as error:  # noqa: BLE001 - every failure must reach the user as a message
        report_error(error, f"chromflow could not open {os.fspath(path)}")
        # napari's sentinel for "handled, nothing to add": no second reader is tried
        return [(None,)]


def read_layers(path, as_points: bool = False, pixel_size: float = DEFAULT_PIXEL_SIZE_NM,
                method: str = "gaussian", merge_blinks: bool = DEFAULT_MERGE_BLINKS,
                max_dark_frames: int = DEFAULT_MAX_DARK_FRAMES) -> list:
    """Read a localization table or TIFF into napari layer-data tuples.

    Parameters
    ----------
    path : str or os.PathLike
        ThunderSTORM / plain CSV, Picasso ``.hdf5`` (with its ``.yaml``) or TIFF.
    as_points : bool
        Localizations as a points layer (coordinates in nm) instead of a rendered image.
    pixel_size : float
        Pixel size in nm of the rendered density image (localizations only).
    method : {"gaussian", "histogram"}
        Rendering method, passed to :func:`chromflow.render`.
    merge_blinks, max_dark_frames
        Merge each molecule's blinks before rendering, as ``chromflow run`` does
        (``RenderSettings.merge_blinks``, on by default).

    Returns
    -------
    list of tuple
        ``[(data, kwargs, layer_type)]``; ``kwargs["metadata"]`` keeps ``source`` (the path)
        and, for localizations, ``localizations`` (the DataFrame, for re-rendering).

    Raises
    ------
    chromflow.InputError
        When the file cannot be read (the message names the file and the problem).

    Examples
    --------
    >>> [(data, kwargs, kind)] = read_layers("cell.csv")    # doctest: +SKIP
    >>> kind, kwargs["scale"]                               # doctest: +SKIP
    ('image', (20.0, 20.0))
    """
    import chromflow as cf

    path = Path(os.fspath(path))
    if path.suffix.lower() in IMAGE_SUFFIXES:
        # NaN is how chromflow marks "outside the nucleus" in exported rate maps
        image = cf.read_image(path, allow_nan=True)
        image.name = image.name or path.stem
        kwargs = image_layer_kwargs(image, name=path.stem)
        kwargs["metadata"]["source"] = str(path)
        return [(image.data, kwargs, "image")]
    locs = cf.read_localizations(path)
    return localization_layers(locs, as_points=as_points, pixel_size=pixel_size, method=method,
                               name=path.stem, source=str(path), merge_blinks=merge_blinks,
                               max_dark_frames=max_dark_frames)


def localization_layers(locs, as_points: bool = False, pixel_size: float = DEFAULT_PIXEL_SIZE_NM,
                        method: str = "gaussian", name: str | None = None,
                        source: str | None = None, sigma: float | None = None,
                        split_channels: bool = True, merge_blinks: bool = DEFAULT_MERGE_BLINKS,
                        max_dark_frames: int = DEFAULT_MAX_DARK_FRAMES) -> list:
    """Layer-data tuples for a localization table: density image(s) or a points layer.

    A table with a ``channel`` column holding two or more values (a heterochromatin and a
    euchromatin mark, say) gives one density image per channel, all rendered on the same
    pixels (the field of view of all localizations), so that any two of them can be given to
    the inference widget as the two channels.

    Parameters
    ----------
    locs : pandas.DataFrame
        Localizations with ``x``, ``y`` in nm (as from :func:`chromflow.read_localizations`).
    as_points : bool
        Points layer (``(y, x)`` in nm, point size = localization precision when known).
    pixel_size : float
        Density-image pixel size in nm (``RenderSettings.pixel_size``).
    method : str
        :func:`chromflow.render` method (``RenderSettings.method``).
    name, source : str, optional
        Layer name and source path (default: from ``locs.attrs``).
    sigma : float, optional
        Fixed Gaussian width in nm (``RenderSettings.sigma``); None: each localization's precision.
    split_channels : bool
        One image per value of a ``channel`` column (default); False renders all rows together.
    merge_blinks : bool
        Render molecules: each molecule's blinks merged first
        (:func:`chromflow.blinks.merge_blinks_where_possible`, ``RenderSettings.merge_blinks``);
        ``metadata["blinks"]`` says what was done. ``metadata["localizations"]`` keeps the
        table as read, for re-rendering and the domain analysis.
    max_dark_frames : int
        ``RenderSettings.max_dark_frames``.

    Returns
    -------
    list of tuple
        ``(data, kwargs, layer_type)`` tuples: one per channel (``metadata["channel"]`` set
        when there are several), or one points layer.

    Examples
    --------
    >>> [kwargs["name"] for _, kwargs, _ in localization_layers(two_channel_locs, name="cell")]  # doctest: +SKIP
    ['cell channel 0 density', 'cell channel 1 density']
    """
    import chromflow as cf

    source = source if source is not None else locs.attrs.get("source")
    name = name or (Path(source).stem if source else "localizations")
    if as_points:
        metadata = {"source": source, "localizations": locs, "format": locs.attrs.get("format"),
                    "kind": "localizations"}
        coords = locs[["y", "x"]].to_numpy(dtype=float)
        if "uncertainty" in locs and np.isfinite(locs["uncertainty"]).any():
            # a marker as wide as twice the precision reads as "where the molecule may be"
            size = float(2 * np.nanmedian(locs["uncertainty"].to_numpy(dtype=float)))
        else:
            size = 2 * float(pixel_size)
        kwargs = {"name": f"{name} localizations", "size": size, "border_width": 0,
                  "face_color": "magenta", "units": NM_UNITS, "metadata": metadata}
        return [(coords, kwargs, "points")]
    drawn, drawn_meta = rows_to_draw(locs, merge_blinks, max_dark_frames)
    channels = channel_values(locs) if split_channels else []
    if len(channels) < 2:
        parts = [(None, locs, drawn, f"{name} density")]
        fov = None
    else:
        parts = [(c, locs[rows_in_channel(locs, c)], drawn[rows_in_channel(drawn, c)],
                  f"{name} channel {c} density") for c in channels]
        # every channel on the pixels of all localizations: same shape, same origin
        fov = pixel_fov(cf.render(locs, pixel_size=pixel_size, method="histogram"))
    layers = []
    for channel, rows, drawn_rows, layer_name in parts:
        image = cf.render(drawn_rows, pixel_size=pixel_size, method=method, sigma=sigma, fov=fov)
        image.name = layer_name
        image.metadata = {**image.metadata, "source": source, "localizations": rows,
                          "format": locs.attrs.get("format"), "kind": "density",
                          "pixel_size": image.pixel_size, "render_method": method, **drawn_meta,
                          "base": name}
        if channel is not None:
            image.metadata.update(channel=channel, channels=list(channels), all_localizations=locs)
        layers.append((image.data, image_layer_kwargs(image, colormap="gray"), "image"))
    return layers


def rows_to_draw(locs, merge_blinks: bool = DEFAULT_MERGE_BLINKS, max_dark_frames: int = DEFAULT_MAX_DARK_FRAMES):
    """The rows a density layer is rendered from, and the metadata that says so.

    Returns ``(rows, {"blinks": ..., "units": ...})``: the table with each molecule's blinks merged
    where it allows it (:func:`chromflow.blinks.merge_blinks_where_possible`), or as it is; what
    merging did, in words; and the units of the rendered values.
    """
    rows = merge_blinks_where_possible(locs, max_dark_frames) if merge_blinks else locs
    merged = "molecules" in rows.attrs.get("merged_blinks", {})
    return rows, {"blinks": merge_note(rows),
                  "units": "molecules per pixel (blinks merged)" if merged else "localizations per pixel"}


def channel_values(locs) -> list:
    """The distinct values of the ``channel`` column, sorted (empty without the column).

    Examples
    --------
    >>> import pandas as pd
    >>> channel_values(pd.DataFrame({"x": [0, 1], "y": [0, 1], "channel": [1, 0]}))
    [0, 1]
    """
    if "channel" not in getattr(locs, "columns", ()):
        return []
    values = locs["channel"].dropna().unique().tolist()
    return sorted(values, key=lambda v: (isinstance(v, str), v))


def pixel_fov(image) -> tuple:
    """``(y_min, x_min, y_max, x_max)`` in nm covering exactly the pixels of ``image``.

    Passing it as ``fov`` to :func:`chromflow.render` renders other localizations on the very
    same pixels.
    """
    oy, ox = image.origin[-2:]
    ny, nx = image.shape[-2:]
    p = image.pixel_size
    return (oy - p / 2, ox - p / 2, oy + (ny - 0.5) * p, ox + (nx - 0.5) * p)
