"""Results panel: summary numbers, histogram of the rate inside the nucleus, export.

The panel is scrollable and its table as tall as its rows, so every number is readable and the
docked panels fit a 1920x1080 screen.

The panel follows the rate-map layers that the inference widget adds (``metadata["kind"] ==
"rate"``); choosing one shows the numbers of :meth:`chromflow.RateMapResult.summary` and a
histogram of lambda inside the nucleus. *Export* writes the result's layers as TIFF
(:func:`chromflow.io.write_image`, pixel size and origin kept) and the summary as CSV, all
atomically.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, FileEdit, Label, PushButton, Table

from chromflow.errors import InputError
from chromflow.image import Image
from chromflow.io import atomic_path

from ._layers import RATE_LEGEND, report_error, robust_contrast_limits
from ._widgets import ScrollableContainer, _layer_choices, _refresh_on_layer_change

__all__ = ["ResultsWidget", "export_result_layers", "EXPORT_SUFFIXES"]

#: file-name suffix per result layer kind (``<base><suffix>``), after the CLI's naming
EXPORT_SUFFIXES = {"rate": "_rate.tif", "uncertainty": "_rate_uncertainty.tif", "ratio": "_ratio.tif",
                   "residual": "_residual.tif", "outline": "_mask.tif"}


def _is_rate_layer(layer) -> bool:
    return layer.metadata.get("kind") == "rate" and "chromflow_result" in layer.metadata


def _result_layers_of(viewer, rate_layer) -> dict:
    """The layers that came from the same inference run as ``rate_layer``, by kind."""
    result = rate_layer.metadata["chromflow_result"]
    return {layer.metadata["kind"]: layer for layer in viewer.layers
            if layer.metadata.get("chromflow_result") is result
            and layer.metadata.get("kind") in EXPORT_SUFFIXES}


def _summary_row(result) -> dict:
    summary = dict(result.summary())
    # one CSV row: keep numbers and strings, write anything else as its text
    return {key: (value if isinstance(value, (int, float, str, np.number, type(None)))
                  else str(value)) for key, value in summary.items()}


def export_result_layers(viewer, rate_layer, out_dir) -> list:
    """Write the layers of one inference run as TIFF and its summary as CSV.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    rate_layer : napari.layers.Image
        A rate-map layer added by the inference widget.
    out_dir : str or os.PathLike
        Folder for ``<base>_rate.tif``, ``<base>_rate_uncertainty.tif``, ``<base>_residual.tif``,
        ``<base>_mask.tif`` (the run's nucleus mask on the result grid), ``<base>_summary.csv``
        and ``<base>_settings.json`` (the pipeline settings of the run, a config for
        ``chromflow run --config``) (created when missing).

    Returns
    -------
    list of pathlib.Path
        The files written. The layer data are written as they are now (edits included), with
        the pixel size (nm) and origin of the result grid.
    """
    import pandas as pd

    from chromflow.io import write_image

    if not _is_rate_layer(rate_layer):
        raise InputError(f"layer {rate_layer.name!r} is not a chromflow rate map")
    out_dir = Path(os.fspath(out_dir))
    base = rate_layer.metadata.get("base") or rate_layer.name.removesuffix(" rate")
    written = []
    result = rate_layer.metadata["chromflow_result"]
    for kind, layer in _result_layers_of(viewer, rate_layer).items():
        if kind == "outline":
            # the outline is drawn from the mask the run used: export that mask, on its grid
            image = result.to_image("mask")
            image.data = np.asarray(image.data, dtype=np.uint8)
        else:
            image = Image(np.asarray(layer.data), pixel_size=float(layer.scale[-1]),
                          origin=tuple(float(t) for t in layer.translate), name=layer.name,
                          source=layer.metadata.get("source"))
        path = out_dir / f"{base}{EXPORT_SUFFIXES[kind]}"
        out_dir.mkdir(parents=True, exist_ok=True)
        write_image(image, path)
        written.append(path)
    path = out_dir / f"{base}_summary.csv"
    row = {"name": base, "source": rate_layer.metadata.get("source"),
           **_summary_row(rate_layer.metadata["chromflow_result"])}
    with atomic_path(path) as tmp:
        pd.DataFrame([row]).to_csv(tmp, index=False)
    written.append(path)
    settings = rate_layer.metadata.get("chromflow_settings")
    if settings is not None:
        from chromflow.pipeline import PipelineSettings

        path = out_dir / f"{base}_settings.json"
        PipelineSettings.from_dict(settings).to_json(path)
        written.append(path)
    return written


class ResultsWidget(ScrollableContainer):
    """Summary, histogram and export of a rate map.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer to work in (injected by napari).
    """

    EXPANDING = True
    MIN_VISIBLE_HEIGHT = 300

    def __init__(self, napari_viewer):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.viewer = napari_viewer
        self.rate_layer = ComboBox(label="rate map",
                                   choices=_layer_choices(napari_viewer, _is_rate_layer))
        self.summary_table = Table(value={"quantity": [], "value": []})
        self.out_dir = FileEdit(label="export to", mode="d", value=Path.home())
        self.export_button = PushButton(text="Export TIFF + CSV")
        self.status = Label(value="")
        super().__init__(widgets=[self.rate_layer, self.summary_table, self.out_dir,
                                  self.export_button, self.status])
        self.figure = Figure(figsize=(4, 2.2), layout="constrained")
        self.axes = self.figure.add_subplot()
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(180)
        self.inner_layout.insertWidget(2, self.canvas)
        self.fit_minimum_height()
        self.rate_layer.changed.connect(self._watch)
        self._watched = None
        self.export_button.changed.connect(self.export)
        refresh_choices = _refresh_on_layer_change(napari_viewer, self.rate_layer)
        napari_viewer.layers.events.inserted.connect(self._follow_new_rate_layer)
        refresh_choices()
        self._watch()

    def _watch(self, layer=None):
        """Refresh now and whenever the chosen rate layer is recomputed (updated in place)."""
        if self._watched is not None:
            self._watched.events.data.disconnect(self.refresh)
        self._watched = self.rate_layer.value
        if self._watched is not None:
            self._watched.events.data.connect(self.refresh)
        self.refresh()

    def _follow_new_rate_layer(self, event):
        layer = event.value
        if _is_rate_layer(layer):
            self.rate_layer.reset_choices()
            self.rate_layer.value = layer

    def histogram_values(self) -> np.ndarray:
        """Finite rate values inside the nucleus of the chosen rate map (empty without one)."""
        layer = self.rate_layer.value
        if layer is None:
            return np.empty(0)
        rate = np.asarray(layer.data, dtype=float)
        mask = np.asarray(layer.metadata["chromflow_result"].mask, dtype=bool)
        return rate[mask & np.isfinite(rate)]

    def refresh(self, _=None):
        """Redraw the summary table and the histogram for the chosen rate map."""
        layer = self.rate_layer.value
        self.axes.clear()
        if layer is None:
            self.summary_table.value = {"quantity": [], "value": []}
            self.axes.set_axis_off()
            self.canvas.draw_idle()
            return
        row = _summary_row(layer.metadata["chromflow_result"])
        self.summary_table.value = {
            "quantity": list(row),
            "value": [f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)
                      for v in row.values()]}
        self._fit_table_to_rows()
        values = self.histogram_values()
        self.axes.set_axis_on()
        if values.size:
            # the 1st-99th percentile range, like the layer's contrast: a few rim cells with
            # extreme lambda would otherwise squeeze the histogram into one bar
            self.axes.hist(values, bins=50, range=robust_contrast_limits(values), color="#3b7dd8")
            self.axes.axvline(float(np.median(values)), color="k", lw=1, ls="--",
                              label=f"median {np.median(values):.3g}")
            self.axes.legend(fontsize=8, frameon=False)
        self.axes.set_xlabel(RATE_LEGEND)
        self.axes.set_ylabel("grid cells (1st-99th pct)")
        self.axes.set_title(layer.name, fontsize=9)
        self.canvas.draw_idle()

    #: the table grows to show this many rows at most; beyond, it scrolls
    MAX_TABLE_ROWS = 30

    def _fit_table_to_rows(self):
        """Make the table tall enough to show every row (the panel scrolls, not the table)."""
        table = self.summary_table.native
        # compact rows, no row numbers: a dozen numbers fit in a docked panel
        table.verticalHeader().setVisible(False)
        table.verticalHeader().setDefaultSectionSize(table.fontMetrics().height() + 6)
        table.resizeColumnsToContents()
        rows = min(table.rowCount(), self.MAX_TABLE_ROWS)
        height = (table.horizontalHeader().height() + 2 * table.frameWidth()
                  + sum(table.rowHeight(i) for i in range(rows)))
        # long values (flags) may need the horizontal scroll bar, which appears only after layout:
        # always keep its room
        height += table.horizontalScrollBar().sizeHint().height()
        table.setMinimumHeight(height)

    def export(self, _=None):
        """Export the chosen rate map's layers and summary to the folder; returns the paths."""
        layer = self.rate_layer.value
        try:
            if layer is None:
                raise InputError("no rate map to export: run 'Infer reaction rates' first")
            written = export_result_layers(self.viewer, layer, self.out_dir.value)
        except Exception as error:  # noqa: BLE001
            report_error(error, "Export")
            return []
        from napari.utils.notifications import show_info

        self.status.value = f"wrote {len(written)} files"
        show_info(f"chromflow: wrote {len(written)} files to {self.out_dir.value}")
        return written
