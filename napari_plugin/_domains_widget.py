"""Dock widget "Chromatin domains": the classical single-channel domain analysis in napari.

Thin over :func:`chromflow.analyze_domains`: it takes the localizations that the chromflow
reader keeps in a layer's metadata, runs the analysis in a ``thread_worker`` generator that
yields ``(done, total, message)`` progress (Cancel stops it at the library's next check), and
adds the Voronoi density image (scale in nm), a Labels layer of the domains coloured by their
``lam`` (with a ``lam`` image layer carrying the colour bar), the LAD band, the nucleus
boundary, and a table of the domains that *Export* writes as ``<stem>_domains.csv``,
``<stem>_domains_summary.json`` and ``<stem>_domains.png`` (all or nothing). With
``CHROMFLOW_NAPARI_SYNC=1`` the work runs in the calling thread (tests).
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from magicgui.widgets import (ComboBox, Container, FileEdit, FloatSpinBox, Label, ProgressBar, PushButton,
                              SpinBox, Table)

from chromflow.errors import CancelledError, InputError

from ._layers import image_layer_kwargs, report_error
from ._widgets import (WorkerCallbacks, _has_localizations, _layer_choices, _refresh_on_layer_change,
                       steps_in_thread, upsert_layer)

__all__ = ["DomainsWidget", "domain_steps", "domain_layers", "lam_colors"]

#: colour of LAD (peripheral) domains and of domains without a rate in the Labels layer
LAD_COLOR = (0.17, 0.63, 0.17, 1.0)
UNRATED_COLOR = (0.6, 0.6, 0.6, 1.0)
SINGLE_CHANNEL_NOTE = ("single channel: these domain rates are the single-channel estimate of lambda "
                       "(a rate map from one channel assumes phi_h/phi_e from density)")


def domain_steps(locs, settings: dict, cancel=None):
    """Generator: :func:`chromflow.analyze_domains` in a helper thread, yielding progress.

    Yields ``(done, total, message)``; returns the :class:`chromflow.DomainAnalysis` (via
    ``StopIteration.value``). Closing the generator sets ``cancel``.
    """
    from chromflow.domains import analyze_domains

    cancel = cancel if cancel is not None else threading.Event()

    def work(report):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # shown in the status instead
            return analyze_domains(locs, progress=report, cancel=cancel, **settings)

    return (yield from steps_in_thread(work, cancel, "chromflow-domains"))


def lam_colors(dom, cmap: str = "plasma") -> tuple:
    """``({label: rgba}, (lam_min, lam_max))`` for the domains' Labels layer.

    Label ``i + 1`` is row ``i`` of ``dom.domains``; interior domains are coloured by ``lam``
    on ``cmap`` between the 1st and 99th percentiles, LADs green, unrated domains grey.
    """
    from matplotlib import colormaps

    table = dom.domains
    lam = table["lam"].to_numpy(dtype=float)
    finite = lam[np.isfinite(lam)]
    lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    hi = hi if hi > lo else lo + 1e-12
    cm = colormaps[cmap]
    colors = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for i, (value, lad) in enumerate(zip(lam, table["peripheral"].to_numpy(dtype=bool))):
        if lad:
            colors[i + 1] = LAD_COLOR
        elif np.isfinite(value):
            colors[i + 1] = tuple(float(c) for c in cm(float(np.clip((value - lo) / (hi - lo), 0, 1))))
        else:
            colors[i + 1] = UNRATED_COLOR
    return colors, (float(lo), float(hi))


def domain_layers(dom, base: str) -> list:
    """napari layer-data tuples of a :class:`chromflow.DomainAnalysis`, in nm world coordinates.

    The Voronoi density (image, log colour scale), the domain ``lam`` as an image with a colour
    bar, the domains as Labels coloured by ``lam`` (LADs green, unrated grey), the LAD band
    (Labels) and the nucleus boundary (Shapes path).
    """
    from napari.utils.colormaps import DirectLabelColormap

    density, labels = dom.raster()
    meta = {"kind": "domains", "chromflow_domains": dom, "source": dom.source, "base": base}
    common = {"scale": density.scale, "translate": density.translate}
    values = np.asarray(density.data, dtype=np.float32)
    positive = values[values > 0]
    limits = tuple(float(v) for v in np.percentile(positive, [2, 99.5])) if positive.size else (0.0, 1.0)
    colors, (lo, hi) = lam_colors(dom)
    lam_px = dom.lam_image().astype(np.float32)
    peripheral = np.concatenate([[False], dom.domains["peripheral"].to_numpy(dtype=bool)])
    lads = peripheral[labels].astype(np.uint8)
    return [
        (values, image_layer_kwargs(density, name=f"{base} Voronoi density", colormap="turbo",
                                    contrast_limits=limits if limits[1] > limits[0] else None,
                                    metadata={**meta, "kind": "domain_density",
                                              "units": "localizations per um^2"}), "image"),
        (lam_px, {**common, "name": f"{base} domain lam", "colormap": "plasma", "contrast_limits": (lo, hi),
                  "visible": False, "metadata": {**meta, "kind": "domain_lam"}}, "image"),
        (labels, {**common, "name": f"{base} domains", "colormap": DirectLabelColormap(color_dict=colors),
                  "opacity": 0.8, "metadata": {**meta, "kind": "domain_labels", "lam_limits": (lo, hi)}}, "labels"),
        (lads, {**common, "name": f"{base} LADs", "opacity": 0.6, "visible": False,
                "metadata": {**meta, "kind": "lads"}}, "labels"),
        ([dom.boundary], {"name": f"{base} nucleus boundary", "shape_type": "path", "edge_color": "red",
                          "edge_width": 2 * density.pixel_size, "metadata": {**meta, "kind": "boundary"}}, "shapes"),
    ]


class DomainsWidget(WorkerCallbacks, Container):
    """Classical chromatin-domain analysis of an opened localization file.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer to work in (injected by napari).
    """

    TITLE = "Chromatin domains"
    START_PROGRESS_MAX = 100

    def __init__(self, napari_viewer):
        from chromflow.domains import DEFAULTS

        self.viewer = napari_viewer
        self.layer = ComboBox(label="localizations", choices=_layer_choices(napari_viewer, _has_localizations),
                              tooltip="a layer opened by the chromflow reader (it keeps the localizations)")
        self.percentile = FloatSpinBox(label="density percentile", value=DEFAULTS["density_percentile"],
                                       min=0.0, max=99.9, step=5.0)
        self.eps = FloatSpinBox(label="DBSCAN eps (nm)", value=DEFAULTS["eps"], min=0.1, max=10_000.0)
        self.min_samples = SpinBox(label="DBSCAN min points", value=DEFAULTS["min_samples"], min=1, max=1000)
        self.min_size = SpinBox(label="min domain size (locs)", value=DEFAULTS["min_cluster_size"], min=1,
                                max=1_000_000)
        self.peripheral = FloatSpinBox(label="LAD zone (x nucleus radius)", value=DEFAULTS["peripheral_fraction"],
                                       min=0.0, max=0.99, step=0.01)
        self.neighbours = SpinBox(label="spacing neighbours", value=DEFAULTS["n_neighbours"], min=1, max=100)
        self.downsample = SpinBox(label="keep 1 in", value=DEFAULTS["downsample"], min=1, max=1000,
                                  tooltip="random thinning, as the anchor (4); 1 keeps every localization")
        self.seed = SpinBox(label="seed", value=DEFAULTS["seed"], min=0, max=2**31 - 1)
        self.run_button = PushButton(text="Analyse domains")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=100, value=0)
        self.status = Label(value="")
        self.table = Table(value={"data": [], "columns": []})
        self.out_dir = FileEdit(label="export folder", mode="d")
        self.export_button = PushButton(text="Export table + summary + figure", enabled=False)
        super().__init__(widgets=[self.layer, self.percentile, self.eps, self.min_samples, self.min_size,
                                  self.peripheral, self.neighbours, self.downsample, self.seed, self.run_button,
                                  self.cancel_button, self.progress, self.status, self.table, self.out_dir,
                                  self.export_button])
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.export_button.changed.connect(self.export)
        _refresh_on_layer_change(napari_viewer, self.layer)
        self.worker = None
        self.result = None
        self._cancel_event = threading.Event()
        self._base = ""
        self._outcome_seen = False

    def settings(self) -> dict:
        """The keyword arguments of :func:`chromflow.analyze_domains` set in the widget."""
        return {"density_percentile": float(self.percentile.value), "eps": float(self.eps.value),
                "min_samples": int(self.min_samples.value), "min_cluster_size": int(self.min_size.value),
                "peripheral_fraction": float(self.peripheral.value), "n_neighbours": int(self.neighbours.value),
                "downsample": int(self.downsample.value), "seed": int(self.seed.value)}

    # -- run / cancel ----------------------------------------------------------------------------
    def run(self, _=None):
        """Analyse the chosen layer's localizations (in a thread unless CHROMFLOW_NAPARI_SYNC=1)."""
        if self.worker is not None:
            return None
        layer = self.layer.value
        if layer is None:
            report_error(InputError("choose a layer with localizations (open a localization file with "
                                    "the chromflow reader)"), "Chromatin domains")
            return None
        locs = layer.metadata["localizations"]
        self._base = layer.name.removesuffix(" density")
        self._cancel_event = threading.Event()
        steps = domain_steps(locs, self.settings(), cancel=self._cancel_event)
        return self._start(steps)

    def export(self, _=None):
        """Write the table, summary and figure of the last analysis into the export folder."""
        if self.result is None:
            return None
        try:
            out = Path(self.out_dir.value)
            stem = Path(self.result.source).stem if self.result.source else self._base.replace(" ", "_")
            paths = self.result.save(out, stem=stem)
        except Exception as error:  # noqa: BLE001
            report_error(error, "Chromatin domains export")
            return None
        self.status.value = f"wrote {', '.join(p.name for p in paths.values())}"
        return paths

    # -- worker callbacks (GUI thread) -----------------------------------------------------------
    def _on_outcome(self, outcome):
        self._outcome_seen = True
        kind, value = outcome
        if kind != "ok":
            if isinstance(value, CancelledError):
                self._on_aborted()
            else:
                self.status.value = "failed"
                report_error(value, "Chromatin domains")
            return
        try:
            for data, kwargs, layer_type in domain_layers(value, self._base):
                upsert_layer(self.viewer, data, kwargs, layer_type)
            lam_layer = self.viewer.layers[f"{self._base} domain lam"]
            lam_layer.colorbar.visible = True
        except Exception as error:  # noqa: BLE001
            report_error(error, "Chromatin domains")
            return
        self.result = value
        table = value.domains.reset_index()
        self.table.value = {"data": table.round(6).astype(object).where(table.notna(), None).values.tolist(),
                            "index": list(range(len(table))), "columns": list(table.columns)}
        s = value.summary
        lo, hi = self.viewer.layers[f"{self._base} domains"].metadata["lam_limits"]
        note = f"; {len(s['warnings'])} warning(s): {s['warnings'][0]}" if s["warnings"] else ""
        self.status.value = (f"{s['n_domains']} domains, {s['n_lads']} LADs; domain colours: lam {lo:.3g} (dark) to "
                             f"{hi:.3g} (yellow), LADs green, unrated grey. {SINGLE_CHANNEL_NOTE}{note}")
        self.progress.value = self.progress.max
        self.export_button.enabled = True
