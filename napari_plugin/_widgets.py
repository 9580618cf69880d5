"""Dock widgets for the first steps: render localizations and segment the nucleus.

Each widget is a :class:`magicgui.widgets.Container` built with the viewer; the buttons call
plain methods (:meth:`RenderWidget.render`, :meth:`SegmentWidget.segment`) that scripts and tests
can call directly. All computation is done by :mod:`chromflow`.
"""
from __future__ import annotations

import queue
import threading

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSlider, FloatSpinBox, Label, PushButton

from ._layers import (NM_UNITS, image_from_layer, layer_type, plugin_settings, report_error,
                      show_scale_bar)
from ._reader import localization_layers

__all__ = ["RenderWidget", "SegmentWidget", "ScrollableContainer", "RENDER_METHODS", "upsert_layer",
           "layer_base_name"]

RENDER_METHODS = ("gaussian", "histogram")

# display properties that napari sets on a layer but does not take in add_*()
_SET_AFTER = ("contour", "colorbar_visible", "colorbar_position")


def upsert_layer(viewer, data, kwargs: dict, layer_type: str):
    """Update the layer called ``kwargs["name"]`` in place, or add it when there is none.

    Updating keeps the layer's place in the list and the user's display settings, which is what
    one wants when re-rendering or moving a threshold slider. A layer of another type with the
    same name is replaced.
    """
    kwargs = dict(kwargs)
    kwargs.setdefault("units", NM_UNITS)
    after = {key: kwargs.pop(key) for key in _SET_AFTER if key in kwargs}
    layer = _update_or_add(viewer, data, kwargs, layer_type)
    if "contour" in after:
        layer.contour = after["contour"]
    if "colorbar_visible" in after and getattr(layer, "colorbar", None) is not None:
        # taller than napari's 150 px default: room for three or four tick labels
        layer.colorbar.size = (20, 260)
        layer.colorbar.font_size = 11
        layer.colorbar.position = after.get("colorbar_position", "top_right")
        layer.colorbar.visible = bool(after["colorbar_visible"])
    return layer


def _update_or_add(viewer, data, kwargs, kind):
    name = kwargs["name"]
    if name in viewer.layers:
        layer = viewer.layers[name]
        if kind == "shapes":
            # a new set of outlines: replace the layer, keeping its place in the list
            index = list(viewer.layers).index(layer)
            viewer.layers.remove(layer)
            new = viewer.add_shapes(data, **kwargs)
            viewer.layers.move(list(viewer.layers).index(new), index)
            return new
        if layer_type(layer) == kind:
            # metadata and placement first: listeners of the data event (the results panel)
            # then see the new data with its new metadata
            for key in ("metadata", "scale", "translate", "units"):
                if key in kwargs:
                    setattr(layer, key, kwargs[key])
            layer.data = data
            if kind == "image" and "contrast_limits" in kwargs:
                layer.contrast_limits = kwargs["contrast_limits"]
            elif kind == "image":
                layer.reset_contrast_limits()
            return layer
        viewer.layers.remove(layer)
    return getattr(viewer, f"add_{kind}")(data, **kwargs)


def guarded_steps(steps):
    """Run ``steps`` to the end, returning ``("ok", result)`` or ``("error", exception)``.

    Errors travel as values rather than exceptions because superqt's generator worker treats a
    ``RuntimeError`` (which torch raises for device problems) as "worker deleted" and drops it.
    """
    try:
        return ("ok", (yield from steps))
    except Exception as error:  # noqa: BLE001 - reported by the widget
        return ("error", error)


def steps_in_thread(work, cancel, name: str = "chromflow-worker"):
    """Generator: run ``work(report)`` in a helper thread and yield what it reports.

    ``report(done, total, message)`` puts progress on a queue; this generator turns it into
    ``yield (done, total, message)``, which napari's generator workers forward to the GUI
    thread, and returns ``work``'s result (``StopIteration.value``), re-raising its error here.
    Closing the generator early (``worker.quit()``, an exception) sets ``cancel`` and waits for
    the library to stop at its next check.
    """
    reports: queue.Queue = queue.Queue()
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = work(lambda done, total, message="": reports.put((done, total, message)))
        except BaseException as error:  # noqa: BLE001 - re-raised in the generator's thread
            outcome["error"] = error
        finally:
            reports.put(None)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while (item := reports.get()) is not None:
            yield item
    finally:
        if thread.is_alive():
            cancel.set()
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


class WorkerCallbacks:
    """The run/cancel life cycle that the threaded widgets share (GUI-thread callbacks).

    A widget sets ``TITLE`` (for notifications), ``START_PROGRESS_MAX`` and has ``status``,
    ``progress``, ``run_button``, ``cancel_button``, ``worker``, ``_cancel_event`` and
    ``_outcome_seen``; it implements ``_on_outcome``.
    """

    TITLE = "chromflow"
    START_PROGRESS_MAX = 1

    def _start(self, steps):
        """Run the generator ``steps``: in a napari worker thread, or here when the environment
        asks for synchronous runs (tests). Returns the worker (None when run here)."""
        from ._layers import run_synchronously

        self._set_running(True)
        self._outcome_seen = False
        if run_synchronously():
            guarded = guarded_steps(steps)
            try:
                while True:
                    self._on_progress(next(guarded))
            except StopIteration as stop:
                self._on_outcome(stop.value)
            finally:
                self._on_finished()
            return None
        from napari.qt.threading import create_worker

        self.worker = create_worker(guarded_steps, steps, _start_thread=False, _ignore_errors=True)
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(self._on_outcome)
        self.worker.aborted.connect(self._on_aborted)
        self.worker.finished.connect(self._on_finished)
        self.worker.start()
        return self.worker

    def cancel(self, _=None):
        """Ask the running work to stop; nothing is added to the viewer."""
        self._cancel_event.set()
        self.status.value = "cancelling..."
        if self.worker is not None:
            self.worker.quit()

    def _on_progress(self, item):
        done, total, message = item
        if total > 0:
            self.progress.max = int(total)
            self.progress.value = min(int(done), int(total))
        self.status.value = str(message)

    def _on_aborted(self):
        from napari.utils.notifications import show_info

        self._outcome_seen = True
        self.status.value = "cancelled"
        show_info(f"{self.TITLE}: cancelled; no layers were changed")

    def _on_finished(self):
        # after quit() the worker emits neither "returned" nor "aborted" when the generator
        # had already ended (the library raised CancelledError first): report the cancel here
        if not self._outcome_seen:
            self._on_aborted()
        self.worker = None
        self._set_running(False)

    def _set_running(self, running: bool):
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        if running:
            self.progress.max, self.progress.value = self.START_PROGRESS_MAX, 0
            self.status.value = "starting..."


class ScrollableContainer(Container):
    """A magicgui container that napari docks inside its scroll area.

    magicgui's ``scrollable=True`` puts the controls in a ``QScrollArea``, but ``native`` is
    still the inner widget, and napari docks ``native``: the scroll area is lost and every
    control counts towards the window's minimum height (four docks needed 1232 px). Here
    ``native`` is the scroll area (magicgui's public ``root_native_widget``), so a dock can be
    as short as the screen allows and scrolls instead.
    """

    #: a docked panel keeps at least this many pixels of height (or its whole content if less)
    MIN_VISIBLE_HEIGHT = 200
    #: True: the panel takes the height left over by the others (results); False: at most its
    #: content's height (a form of controls)
    EXPANDING = False

    def __init__(self, **kwargs):
        from qtpy.QtWidgets import QSizePolicy

        super().__init__(scrollable=True, **kwargs)
        policy = QSizePolicy.Policy.Expanding if self.EXPANDING else QSizePolicy.Policy.Maximum
        self.root_native_widget.setSizePolicy(QSizePolicy.Policy.Preferred, policy)
        self.fit_minimum_height()

    def fit_minimum_height(self):
        """Minimum height: the content's, up to :attr:`MIN_VISIBLE_HEIGHT` (call after adding controls)."""
        content = self.root_native_widget.widget().minimumSizeHint().height()
        # + the frame, + a few px for styles that grow the controls once the dock is shown
        slack = 2 * self.root_native_widget.frameWidth() + 8
        self.root_native_widget.setMinimumHeight(min(content + slack, self.MIN_VISIBLE_HEIGHT))

    @property
    def native(self):
        return self.root_native_widget

    @property
    def inner_layout(self):
        """The Qt layout holding the controls (inside the scroll area)."""
        return self.root_native_widget.widget().layout()


def layer_base_name(layer) -> str:
    """The name results of ``layer`` are named after: the file's stem for reader layers."""
    return layer.metadata.get("base") or layer.name.removesuffix(" density")


def _layer_choices(viewer, predicate):
    def choices(_widget=None):
        return [layer for layer in viewer.layers if predicate(layer)]
    return choices


def _refresh_on_layer_change(viewer, *combos):
    def refresh(_event=None):
        for combo in combos:
            combo.reset_choices()
    viewer.layers.events.inserted.connect(refresh)
    viewer.layers.events.removed.connect(refresh)
    viewer.layers.events.reordered.connect(refresh)
    return refresh


def _has_localizations(layer) -> bool:
    return "localizations" in getattr(layer, "metadata", {})


def _is_image(layer) -> bool:
    return layer_type(layer) == "image" and layer.rgb is False


def _is_labels(layer) -> bool:
    return layer_type(layer) == "labels"


def _is_density_candidate(layer) -> bool:
    # chromflow's own outputs (rate maps, ...) are not inputs to segmentation or inference
    return _is_image(layer) and layer.metadata.get("kind") not in {
        "rate", "uncertainty", "ratio", "residual", "true_rate"}


class RenderWidget(ScrollableContainer):
    """Render (or re-render) an opened localization file as a density image or points.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer to work in (injected by napari).

    Notes
    -----
    The localizations come from the ``localizations`` DataFrame that the chromflow reader keeps
    in the layer metadata, so any layer opened by the reader can be re-rendered at another pixel
    size or shown as points. The widget follows the layer selected in the layer list and shows
    that layer's pixel size. The controls are the ``render`` section of the shared
    :func:`~napari_plugin._layers.plugin_settings`. The channels of a multi-channel file are
    re-rendered together, so that they keep sharing their pixels.
    """

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.settings = plugin_settings(napari_viewer)
        self.source = ComboBox(label="localizations",
                               choices=_layer_choices(napari_viewer, _has_localizations),
                               tooltip="a layer opened by the chromflow reader")
        self.pixel_size = FloatSpinBox(label="pixel size (nm)", value=self.settings.render.pixel_size,
                                       min=1.0, max=1000.0, step=1.0)
        self.method = ComboBox(label="method", choices=list(RENDER_METHODS),
                               value=self.settings.render.method)
        self.merge_blinks = CheckBox(label="merge blinks (one molecule, nearby frames)",
                                     value=self.settings.render.merge_blinks,
                                     tooltip="render molecules: the repeated localizations of one molecule in "
                                             "nearby frames become one, as chromflow run does")
        self.as_points = CheckBox(label="show as points (slow for millions)", value=False)
        self.run_button = PushButton(text="Render")
        super().__init__(widgets=[self.source, self.pixel_size, self.method, self.merge_blinks, self.as_points,
                                  self.run_button])
        self.run_button.changed.connect(self.render)
        self.source.changed.connect(self._follow_source)
        _refresh_on_layer_change(napari_viewer, self.source)
        napari_viewer.layers.selection.events.active.connect(self._follow_selection)
        show_scale_bar(napari_viewer)
        self._follow_source()

    def _follow_selection(self, event=None):
        # the layer the user clicks in the layer list becomes the one to re-render
        layer = self.viewer.layers.selection.active
        if layer is not None and _has_localizations(layer) and layer in self.source.choices:
            self.source.value = layer

    def _follow_source(self, _=None):
        layer = self.source.value
        if layer is not None and layer_type(layer) == "image":
            self.pixel_size.value = float(layer.scale[-1])

    def render(self, _=None):
        """Render the chosen localizations with the current settings; returns the layer or None."""
        layer = self.source.value
        if layer is None:
            report_error(ValueError("open a localization file first (File > Open)"), "Render")
            return None
        render = self.settings.render
        render.pixel_size, render.method = float(self.pixel_size.value), self.method.value
        render.merge_blinks = bool(self.merge_blinks.value)
        metadata = layer.metadata
        # all channels of a multi-channel file together (on common pixels), else this layer's
        locs = metadata.get("all_localizations", metadata["localizations"])
        base = metadata.get("base") or layer.name.removesuffix(" density").removesuffix(" localizations")
        try:
            self.settings.validate()
            layers = localization_layers(
                locs, as_points=self.as_points.value, pixel_size=render.pixel_size,
                method=render.method, sigma=render.sigma, name=base, source=metadata.get("source"),
                split_channels="channel" in metadata, merge_blinks=render.merge_blinks,
                max_dark_frames=render.max_dark_frames)
        except Exception as error:  # noqa: BLE001 - shown to the user, layers untouched
            report_error(error, "Render")
            return None
        out = [upsert_layer(self.viewer, data, kwargs, kind) for data, kwargs, kind in layers]
        # the layer that was chosen (its channel), or the first
        return next((new for new in out if new.name == layer.name), out[0])


class SegmentWidget(ScrollableContainer):
    """Segment the nucleus of a density image into an editable Labels layer.

    Moving the threshold slider previews the mask live (the Labels layer is updated in place);
    the Labels layer can then be edited with napari's paint/erase tools, and the inference
    widget uses the labels as they are then (label > 0 is nucleus).

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer to work in (injected by napari).
    """

    #: milliseconds of slider stillness before a preview is computed (keeps dragging smooth)
    PREVIEW_DELAY_MS = 120

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.settings = plugin_settings(napari_viewer)
        self.image = ComboBox(label="image",
                              choices=_layer_choices(napari_viewer, _is_density_candidate))
        self.auto_threshold = CheckBox(label="automatic threshold", value=True)
        self.threshold = FloatSlider(label="threshold", min=0.0, max=1.0, value=0.5, step=0.001,
                                     enabled=False, tooltip="density above which a pixel is "
                                     "nucleus (same units as the image)")
        self.live_preview = CheckBox(label="live preview", value=True)
        self.run_button = PushButton(text="Segment")
        self.status = Label(value="")
        super().__init__(widgets=[self.image, self.auto_threshold, self.threshold,
                                  self.live_preview, self.run_button, self.status])
        self.run_button.changed.connect(self.segment)
        self.auto_threshold.changed.connect(self._on_auto_changed)
        self.threshold.changed.connect(self._schedule_preview)
        self.image.changed.connect(self._on_image_changed)
        _refresh_on_layer_change(napari_viewer, self.image)
        show_scale_bar(napari_viewer)
        self._timer = None
        self._on_image_changed()

    # -- slider range follows the image ---------------------------------------------------------
    def _on_image_changed(self, _=None):
        layer = self.image.value
        if layer is None:
            return
        data = np.asarray(layer.data, dtype=float)
        finite = data[np.isfinite(data)]
        # the threshold applies to the smoothed density, whose peak is far below the few
        # hottest raw pixels: the 99th percentile keeps the useful range on the slider
        top = float(np.percentile(finite, 99)) if finite.size else 1.0
        top = top if top > 0 else 1.0
        with self.threshold.changed.blocked():
            self.threshold.max = top
            self.threshold.step = top / 1000
            self.threshold.value = min(max(self.threshold.value, 0.0), top)

    def _on_auto_changed(self, auto):
        self.threshold.enabled = not auto
        self._schedule_preview()

    def _schedule_preview(self, _=None):
        if not self.live_preview.value or self.image.value is None:
            return
        from qtpy.QtCore import QTimer

        if self._timer is None:
            self._timer = QTimer()
            self._timer.setSingleShot(True)
            self._timer.timeout.connect(self.segment)
        self._timer.start(self.PREVIEW_DELAY_MS)

    # -- the work ------------------------------------------------------------------------------
    def segment(self, _=None):
        """Segment the chosen image; returns the Labels layer, or None on failure.

        On failure (no nucleus at this threshold, ...) the message is shown as a notification and
        an existing Labels layer is left as it was.
        """
        from chromflow.pipeline import segment

        layer = self.image.value
        if layer is None:
            report_error(ValueError("open or render a density image first"), "Segment")
            return None
        threshold = None if self.auto_threshold.value else float(self.threshold.value)
        self.settings.segmentation.threshold = threshold
        try:
            image = image_from_layer(layer)
            mask = segment(image, self.settings)
        except Exception as error:  # noqa: BLE001 - shown to the user, layers untouched
            self.status.value = "no nucleus found"
            report_error(error, "Segment")
            return None
        base = layer.name.removesuffix(" density")
        # drawn as its outline (contour 2 pixels): a filled, tinted mask would change the colours
        # of every map under it (layer controls > contour 0 fills it again for painting)
        kwargs = {"name": f"{base} nucleus", "scale": tuple(layer.scale),
                  "translate": tuple(layer.translate), "opacity": 0.8, "contour": 2,
                  "metadata": {"kind": "nucleus", "source": layer.metadata.get("source"),
                               "image_layer": layer.name, "threshold": threshold}}
        labels = upsert_layer(self.viewer, np.asarray(mask, dtype=np.uint8), kwargs, "labels")
        area_um2 = float(np.count_nonzero(mask)) * float(layer.scale[-1]) ** 2 / 1e6
        self.status.value = f"nucleus: {area_um2:.1f} um^2"
        return labels
