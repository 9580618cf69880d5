"""Dock widget that infers the epigenetic rate map lambda(y, x) in a background thread.

The widget is thin over :mod:`chromflow.pipeline`: its controls fill the ``fields`` and
``inference`` sections of the :class:`~chromflow.pipeline.PipelineSettings` that all chromflow
widgets of a viewer share (:func:`~napari_plugin._layers.plugin_settings`), and the work is the
pipeline's own stage functions (:func:`~chromflow.pipeline.segment` when there are no labels,
:func:`~chromflow.pipeline.compute_fields`, :func:`~chromflow.pipeline.infer`) -- the same calls
``chromflow run`` makes, so the same settings (saved here as a JSON config) give the same map.
With a second channel (a euchromatin density layer) the fields are the two-channel ones.

The work runs in a napari ``thread_worker`` generator that yields ``(done, total, message)``
progress tuples, so the viewer stays responsive. *Cancel* sets a :class:`threading.Event` that
the library checks (it raises :class:`chromflow.CancelledError`, leaving nothing half-made) and
calls the worker's ``quit()``. With ``CHROMFLOW_NAPARI_SYNC=1`` the same generator is run in the
calling thread (tests).
"""
from __future__ import annotations

import threading

import numpy as np
from magicgui.widgets import (ComboBox, Container, FileEdit, FloatSpinBox, Label, ProgressBar,
                              PushButton, SpinBox)

from chromflow.errors import CancelledError, InputError
from chromflow.inverse.result import _number
from chromflow.pipeline import INFERENCE_EFFORTS, INFERENCE_METHODS, PipelineSettings
from chromflow.report import EDGE_BIAS_DEPTH_UM, edge_bias_zone

from ._layers import (RATE_LEGEND, image_from_layer, nucleus_contours, plugin_settings,
                      report_error, robust_contrast_limits, show_legend,
                      show_scale_bar)
from ._widgets import (ScrollableContainer, WorkerCallbacks, _is_density_candidate, _is_labels, _layer_choices,
                       _refresh_on_layer_change, layer_base_name, steps_in_thread, upsert_layer)

__all__ = ["InferWidget", "inference_steps", "result_layers", "negative_rate_warning",
           "INFER_METHODS", "DEVICES"]

INFER_METHODS = INFERENCE_METHODS
DEVICES = ("auto", "cpu", "cuda")
#: the inference options that have a control, and the library defaults they start from
_OPTIONAL = ("iterations", "ensemble", "effort", "radius")
#: the *ratio mix* control: the library's ``ratio_weight="auto"``, 0, or a share from a settings file
_RATIO_MIX_CHOICES = ("auto", "off")


def library_default(method: str, key: str):
    """The default of inference option ``key`` for ``method`` in :mod:`chromflow.inverse`, or None.

    None also means that the method does not use the option (``direct`` has no iterations).
    """
    from chromflow.inverse import DEFAULTS

    return DEFAULTS.get(method, {}).get(key)


def inference_steps(image, mask, settings: PipelineSettings, euchromatin=None, cancel=None):
    """Generator: the pipeline's segment -> fields -> infer stages, yielding progress.

    The library calls run in a helper thread that reports through a queue; this generator
    turns those reports into ``yield (done, total, message)``, which is what napari's generator
    workers forward to the GUI thread. Closing the generator (``worker.quit()``) sets ``cancel``
    and waits for the library to stop at its next check.

    Parameters
    ----------
    image : chromflow.Image
        Density image (the heterochromatin channel when ``euchromatin`` is given).
    mask : ndarray of bool or None
        Nucleus mask of the image's shape; None segments with
        :func:`chromflow.pipeline.segment` and ``settings.segmentation``.
    settings : chromflow.pipeline.PipelineSettings
        The ``fields`` and ``inference`` sections are used as :func:`chromflow.pipeline.compute_fields`
        and :func:`chromflow.pipeline.infer` use them in ``chromflow run``.
    euchromatin : chromflow.Image, optional
        Second channel (euchromatin mark) on the pixels of ``image``: two-channel fields.
    cancel : threading.Event, optional
        Set to stop the work.

    Yields
    ------
    tuple
        ``(done, total, message)``.

    Returns
    -------
    chromflow.RateMapResult
        Via ``StopIteration.value`` (napari's ``returned`` signal).
    """
    from chromflow.pipeline import compute_fields, infer, segment

    cancel = cancel if cancel is not None else threading.Event()

    def work(report):
        the_mask = mask
        if the_mask is None:
            report(0, 0, "segmenting nucleus")
            the_mask = segment(image, settings)
        report(0, 0, "computing chromatin fields")
        fields = compute_fields(image, np.asarray(the_mask, dtype=bool), settings, euchromatin)
        return infer(fields, settings, progress=report, cancel=cancel)

    return (yield from steps_in_thread(work, cancel, "chromflow-infer"))


def result_layers(result, base: str, source=None, settings: PipelineSettings | None = None) -> list:
    """napari layer-data tuples for a :class:`chromflow.RateMapResult`.

    Every layer gets ``scale = spacing``, ``translate = origin`` and ``units`` nm, so it lies
    exactly over the density image it came from and the scale bar reads um. The rate map's
    contrast limits are the 1st and 99th percentiles inside the nucleus and it shows its
    colorbar; the uncertainty (when the result has a finite one), the smoothed ``phi_h / phi_e``
    without physics (``result.ratio``, on the rate's contrast limits) and the residual start
    hidden above it; the nucleus is a Shapes layer of smooth outlines (:func:`nucleus_contours`), and a
    thinner yellow one runs :data:`chromflow.report.EDGE_BIAS_DEPTH_UM` inside it (between the
    two, maps of simulated nuclei read lambda too high; docs/inference.md).

    Returns
    -------
    list of tuple
        ``(data, kwargs, layer_type)``, bottom to top: rate, uncertainty (if finite), ratio (if
        finite), residual,
        outline, edge-bias line (when the nucleus is deeper than that).
    """
    spacing = float(np.atleast_1d(result.spacing)[0])
    scale = (spacing, spacing)
    translate = tuple(float(o) for o in result.origin)
    mask = np.asarray(result.mask, dtype=bool)
    common = {"scale": scale, "translate": translate, "units": ("nm", "nm")}
    run_settings = settings.to_dict() if settings is not None else None

    def meta(kind, **extra):
        return {"kind": kind, "chromflow_result": result, "source": source, "base": base,
                "chromflow_settings": run_settings, **extra}

    rate = np.asarray(result.rate, dtype=float)
    layers = [(rate, {**common, "name": f"{base} rate", "colormap": "viridis",
                      "contrast_limits": robust_contrast_limits(rate, mask), "opacity": 1.0,
                      "colorbar_visible": True,
                      "metadata": meta("rate", units="Gamma_me / Gamma_ac", legend=RATE_LEGEND)},
               "image")]
    uncertainty = getattr(result, "uncertainty", None)
    # a single fit without spread (all NaN): no layer rather than an empty one; otherwise it
    # lies above the rate, hidden, with its own colorbar: its eye button swaps the two maps
    if uncertainty is not None and np.isfinite(np.asarray(uncertainty, dtype=float)[mask]).any():
        uncertainty = np.asarray(uncertainty, dtype=float)
        layers.append((uncertainty, {**common, "name": f"{base} rate uncertainty",
                                     "colormap": "magma", "visible": False, "colorbar_visible": True,
                                     # not on top of the rate's colorbar when both are shown
                                     "colorbar_position": "top_left",
                                     "contrast_limits": robust_contrast_limits(uncertainty, mask),
                                     "metadata": meta("uncertainty", units="Gamma_me / Gamma_ac")},
                       "image"))
    ratio = getattr(result, "ratio", None)
    # the baseline without physics, on the rate's colour scale: its eye button compares the two
    if ratio is not None and np.isfinite(np.asarray(ratio, dtype=float)[mask]).any():
        sigma = _number((result.diagnostics.get("ratio") or {}).get("sigma_cells"))
        layers.append((np.asarray(ratio, dtype=float),
                       {**common, "name": f"{base} smoothed phi_h/phi_e (no physics)", "colormap": "viridis",
                        "visible": False, "contrast_limits": layers[0][1]["contrast_limits"],
                        "metadata": meta("ratio", sigma_cells=sigma)}, "image"))
    residual = getattr(result, "residual", None)
    if residual is not None:
        residual = np.asarray(residual, dtype=float)
        lo, hi = robust_contrast_limits(np.abs(residual), mask, 0.0, 99.0)
        layers.append((residual, {**common, "name": f"{base} residual", "colormap": "bwr",
                                  "visible": False, "contrast_limits": (-hi, hi),
                                  "metadata": meta("residual")}, "image"))
    outlines = nucleus_contours(mask, spacing, translate)
    layers.append((outlines, {"name": f"{base} outline", "shape_type": "polygon",
                              "edge_color": "white", "face_color": "transparent",
                              "edge_width": max(spacing * 0.6, 1.0), "opacity": 1.0,
                              "units": ("nm", "nm"), "metadata": meta("outline")}, "shapes"))
    # the line EDGE_BIAS_DEPTH_UM inside the outline: between them, maps of simulated nuclei
    # read lambda too high (the report draws the same line dotted)
    inner = mask & ~edge_bias_zone(mask, spacing)
    if inner.any():
        layers.append((nucleus_contours(inner, spacing, translate),
                       {"name": f"{base} edge-bias line", "shape_type": "polygon",
                        "edge_color": "yellow", "face_color": "transparent",
                        "edge_width": max(spacing * 0.3, 1.0), "opacity": 0.7, "units": ("nm", "nm"),
                        "metadata": meta("edge_bias", depth_um=EDGE_BIAS_DEPTH_UM)}, "shapes"))
    return layers


def negative_rate_warning(result) -> str | None:
    """A message when lambda < 0 somewhere in the nucleus (a rate ratio cannot be), else None."""
    rate = np.asarray(result.rate, dtype=float)[np.asarray(result.mask, dtype=bool)]
    rate = rate[np.isfinite(rate)]
    negative = int(np.count_nonzero(rate < 0))
    if negative == 0:
        return None
    advice = ("the direct method divides noisy derivatives: try a larger radius, or method pinn"
              if result.method == "direct" else "try a larger radius or more iterations")
    return (f"Infer rates: lambda < 0 in {negative} of {rate.size} nucleus cells "
            f"({100.0 * negative / rate.size:.1f} %, min {rate.min():.3g}); a ratio of rates "
            f"cannot be negative, these cells are noise ({advice})")


class InferWidget(WorkerCallbacks, ScrollableContainer):
    """Infer the rate map of a density image (+ a second channel, + nucleus labels).

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer to work in (injected by napari).

    Notes
    -----
    Controls start at the pipeline's defaults (``PipelineSettings()`` and
    ``chromflow.inverse.DEFAULTS``). A control left at the library's default is stored as None
    in the settings (= "the library default", as in a CLI config); *iterations*, *ensemble*,
    *effort* and *ratio mix* are disabled for methods that do not use them (``direct``).
    """

    TITLE = "Infer rates"
    START_PROGRESS_MAX = 1

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.settings = plugin_settings(napari_viewer)
        fs, inf = self.settings.fields, self.settings.inference
        self.image = ComboBox(label="density image",
                              choices=_layer_choices(napari_viewer, _is_density_candidate),
                              tooltip="one channel: total chromatin; two channels: the "
                              "heterochromatin mark")
        self.euchromatin = ComboBox(label="euchromatin (2nd channel)", nullable=True,
                                    choices=_layer_choices(napari_viewer, _is_density_candidate),
                                    tooltip="a density of a euchromatin mark on the same pixels; "
                                    "empty: one channel, split by the density rule")
        self.nucleus_labels = ComboBox(label="nucleus labels", nullable=True,
                                       choices=_layer_choices(napari_viewer, _is_labels),
                                       tooltip="label > 0 is nucleus; empty: segment automatically")
        self.grid = SpinBox(label="grid (cells)", value=fs.grid, min=16, max=1024, step=8)
        self.method = ComboBox(label="method", choices=list(INFER_METHODS), value=inf.method)
        # the values shown are set from the library's defaults by _show_settings below
        self.radius = FloatSpinBox(label="radius (cells, 0 = auto)", min=0.0, max=64.0, step=0.5,
                                   tooltip="mollifier support radius in grid cells: larger "
                                   "smooths noise more and blurs fine structure more")
        self.device = ComboBox(label="device", choices=list(DEVICES), value=inf.device)
        self.iterations = SpinBox(label="iterations", min=1, max=1_000_000, step=100)
        self.ensemble = SpinBox(label="ensemble", min=1, max=32,
                                tooltip="fits with seeds seed, seed+1, ..., averaged into the map; at the "
                                "library's default the library takes 3 for domain-scale data (docs/inference.md, "
                                "'Effort')")
        self.effort = ComboBox(label="effort", choices=list(INFERENCE_EFFORTS),
                               tooltip="auto: 2000 steps and 3 fits where the data's halves resolve "
                               "domain-scale structure, else the defaults; standard: never (faster); "
                               "domain: always. Iterations and ensemble set away from their defaults stay "
                               "(docs/inference.md, 'Effort')")
        self.ratio_weight = ComboBox(label="ratio mix", choices=list(_RATIO_MIX_CHOICES),
                                     tooltip="auto: mix a share of the smoothed phi_h/phi_e into the map, from "
                                     "the data's noise share (0 on low-noise fields, up to 0.4 on rendered "
                                     "counts); off: the network's own map (docs/inference.md, 'Mixing in the "
                                     "smoothed ratio'). Other shares come from a settings file.")
        self.seed = SpinBox(label="seed", value=inf.seed, min=0, max=2**31 - 1)
        self.settings_file = FileEdit(label="settings file", mode="w", filter="*.json",
                                      tooltip="the JSON config of chromflow run/batch --config")
        self.load_button = PushButton(text="Load settings")
        self.save_button = PushButton(text="Save settings")
        self.run_button = PushButton(text="Infer rates")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(value="")
        files = Container(widgets=[self.load_button, self.save_button], layout="horizontal",
                          labels=False)
        super().__init__(widgets=[self.image, self.euchromatin, self.nucleus_labels, self.grid,
                                  self.method, self.radius, self.device, self.iterations,
                                  self.ensemble, self.effort, self.ratio_weight, self.seed, self.settings_file, files,
                                  self.run_button, self.cancel_button, self.progress, self.status])
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.load_button.changed.connect(lambda _=None: self.load_settings(self.settings_file.value))
        self.save_button.changed.connect(lambda _=None: self.save_settings(self.settings_file.value))
        self.image.changed.connect(self._pick_matching_layers)
        self.method.changed.connect(self._on_method_changed)
        _refresh_on_layer_change(napari_viewer, self.image, self.euchromatin, self.nucleus_labels)
        self.worker = None
        self._cancel_event = threading.Event()
        self._base = ""
        self._source = None
        self._run_settings = None
        napari_viewer.layers.events.inserted.connect(self._on_layer_inserted)
        show_scale_bar(napari_viewer)
        self._show_settings()
        self._pick_matching_layers()

    # -- settings <-> controls -------------------------------------------------------------------
    def _show_settings(self):
        """Set the controls from the shared settings (None: the library default)."""
        fs, inf = self.settings.fields, self.settings.inference
        self.grid.value = fs.grid
        self.method.value = inf.method
        self.device.value = inf.device if inf.device in DEVICES else "auto"
        self.seed.value = inf.seed
        self._on_method_changed(keep_values=True)

    def _on_method_changed(self, _=None, keep_values=False):
        method = self.method.value
        inf = self.settings.inference
        for key in _OPTIONAL:
            control = getattr(self, key)
            default = library_default(method, key)
            # direct ignores iterations (and fits once): greyed out rather than silently unused
            control.enabled = default is not None or key == "radius"
            chosen = getattr(inf, key) if keep_values else None
            value = chosen if chosen is not None else default
            if key == "radius" and value == "auto":   # the library picks the radius from the cell size
                value = 0.0
            if value is not None:
                control.value = value
        self._show_ratio_mix(library_default(method, "ratio_weight"), inf.ratio_weight if keep_values else None)
        if method == "direct":
            self.radius.tooltip = ("direct: closed form on the data mollified over this radius "
                                   "(grid cells); too small a radius gives noisy, even negative lambda")

    def update_settings(self) -> PipelineSettings:
        """Write the controls into the shared settings and return them (validated)."""
        fs, inf = self.settings.fields, self.settings.inference
        fs.grid = int(self.grid.value)
        inf.method = self.method.value
        inf.device = self.device.value
        inf.seed = int(self.seed.value)
        for key in _OPTIONAL:
            control = getattr(self, key)
            default = library_default(inf.method, key)
            value = control.value if control.enabled else None
            if key == "radius" and default is None:
                default = library_default("direct", "radius")
            if key == "radius" and value is not None and value <= 0:
                value = "auto"
            setattr(inf, key, None if value is None or value == default else value)
        mix = self.ratio_weight.value if self.ratio_weight.enabled else None
        inf.ratio_weight = None if mix in (None, "auto") else 0.0 if mix == "off" else float(mix)
        return self.settings.validate()

    def _show_ratio_mix(self, default, chosen):
        """*ratio mix*: greyed out where the method has no mix (``direct``); a share other than
        auto / off (from a settings file) is shown as one more choice, so that it is kept."""
        self.ratio_weight.enabled = default is not None
        value = default if chosen is None else chosen
        if value is None or value == "auto":
            label = "auto"
        elif float(value) == 0.0:
            label = "off"
        else:
            label = f"{float(value):g}"
        choices = list(_RATIO_MIX_CHOICES) + ([label] if label not in _RATIO_MIX_CHOICES else [])
        self.ratio_weight.choices = choices
        self.ratio_weight.value = label

    def save_settings(self, path) -> None:
        """Save the shared settings as the JSON config that ``chromflow run --config`` reads."""
        try:
            self.update_settings().to_json(path)
        except Exception as error:  # noqa: BLE001
            report_error(error, "Save settings")
            return
        self.status.value = f"settings saved to {path}"

    def load_settings(self, path) -> None:
        """Load a JSON config (as written by :meth:`save_settings` or for the CLI) into the widgets."""
        try:
            loaded = PipelineSettings.from_json(path)
        except Exception as error:  # noqa: BLE001
            report_error(error, "Load settings")
            return
        for section in ("render", "segmentation", "fields", "inference"):
            setattr(self.settings, section, getattr(loaded, section))
        self._show_settings()
        self.status.value = f"settings loaded from {path}"

    # -- layer choices ---------------------------------------------------------------------------
    def _on_layer_inserted(self, event):
        # a nucleus segmented after this widget was opened becomes the default mask
        if self.nucleus_labels.value is None and _is_labels(event.value):
            self._pick_matching_layers()

    def _pick_matching_layers(self, _=None):
        image = self.image.value
        if image is None:
            return
        for layer in self.nucleus_labels.choices:
            if layer is not None and layer.metadata.get("image_layer") == image.name:
                self.nucleus_labels.value = layer
                break
        # another channel of the same file: the euchromatin mark (the next channel after this)
        channels = image.metadata.get("channels") or []
        if image.metadata.get("channel") is not None and len(channels) >= 2:
            for layer in self.euchromatin.choices:
                if (layer is not None and layer is not image
                        and layer.metadata.get("source") == image.metadata.get("source")
                        and layer.metadata.get("channel") is not None):
                    self.euchromatin.value = layer
                    break

    # -- run / cancel ----------------------------------------------------------------------------
    def run(self, _=None):
        """Start inference on the chosen layers (in a thread unless CHROMFLOW_NAPARI_SYNC=1)."""
        if self.worker is not None:
            return None
        layer = self.image.value
        try:
            if layer is None:
                raise InputError("choose a density image first")
            settings = self.update_settings().copy()  # a snapshot: the controls may move on
            image = image_from_layer(layer)
            euchromatin = None
            if self.euchromatin.value is not None:
                if self.euchromatin.value is layer:
                    raise InputError("the euchromatin channel is the density image itself; choose "
                                     "another layer or leave it empty")
                euchromatin = image_from_layer(self.euchromatin.value)
                if (euchromatin.shape != image.shape
                        or not np.isclose(euchromatin.pixel_size, image.pixel_size)):
                    raise InputError(f"euchromatin layer {self.euchromatin.value.name!r} "
                                     f"({euchromatin.shape}, {euchromatin.pixel_size:g} nm pixels) "
                                     f"does not match {layer.name!r} ({image.shape}, "
                                     f"{image.pixel_size:g} nm pixels); render both channels with "
                                     "the same pixel size", image.source)
            mask = None
            if self.nucleus_labels.value is not None:
                mask = np.asarray(self.nucleus_labels.value.data) > 0
                if mask.shape != image.shape:
                    raise InputError(f"labels {self.nucleus_labels.value.name!r} have shape {mask.shape}"
                                     f" but the image has {image.shape}", image.source)
        except Exception as error:  # noqa: BLE001
            report_error(error, "Infer rates")
            return None
        self._base = layer_base_name(layer)
        self._source = layer.metadata.get("source")
        self._run_settings = settings
        self._cancel_event = threading.Event()
        steps = inference_steps(image, mask, settings, euchromatin, cancel=self._cancel_event)
        return self._start(steps)

    # -- worker callbacks (GUI thread) -----------------------------------------------------------
    def _on_outcome(self, outcome):
        self._outcome_seen = True
        kind, value = outcome
        if kind == "ok":
            self._on_result(value)
        else:
            self._on_error(value)

    def _on_result(self, result):
        from napari.utils.notifications import show_warning

        try:
            added = [upsert_layer(self.viewer, data, kwargs, kind) for data, kwargs, kind
                     in result_layers(result, self._base, self._source, self._run_settings)]
        except Exception as error:  # noqa: BLE001
            report_error(error, "Infer rates")
            return
        rate = next(layer for layer in added if layer.metadata.get("kind") == "rate")
        # the map, not the labels, is what the layer controls and the colorbar then show
        self.viewer.layers.selection.active = rate
        show_legend(self.viewer)
        show_scale_bar(self.viewer)
        self.status.value = "done"
        self.progress.value = self.progress.max
        for message in _result_warnings(result):
            show_warning(message)

    def _on_error(self, error):
        if isinstance(error, CancelledError):
            self._on_aborted()
        else:
            self.status.value = "failed"
            report_error(error, "Infer rates")

def _result_warnings(result) -> list:
    """Messages for the user about a finished result: negative lambda, the library's flags."""
    messages = []
    negative = negative_rate_warning(result)
    if negative:
        messages.append(negative)
    # quality flags of the library, wherever it puts them (summary or settings), shown as text
    try:
        summary = dict(result.summary())
    except Exception:  # noqa: BLE001 - a summary that fails is reported by the results panel
        summary = {}
    for source in (summary, getattr(result, "settings", None) or {}):
        flags = source.get("flags") if isinstance(source, dict) else None
        if flags:
            text = ", ".join(map(str, flags)) if isinstance(flags, (list, tuple, set)) else str(flags)
            messages.append(f"Infer rates: quality flags: {text}")
            break
    return messages


