"""Dock widget that infers the epigenetic rate map lambda(y, x) in a background thread.

The work (chromatin fields, then :func:`chromflow.infer_rates`) runs in a napari
``thread_worker`` generator that yields ``(done, total, message)`` progress tuples, so the viewer
stays responsive. *Cancel* sets a :class:`threading.Event` that the library checks (it raises
:class:`chromflow.CancelledError`, leaving nothing half-made) and calls the worker's ``quit()``.
With ``CHROMFLOW_NAPARI_SYNC=1`` the same generator is run in the calling thread (tests).
"""
from __future__ import annotations

import queue
import threading

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton, SpinBox

from chromflow.errors import CancelledError, InputError

from ._layers import image_from_layer, report_error, robust_contrast_limits, run_synchronously
from ._widgets import _is_density_candidate, _layer_choices, _refresh_on_layer_change, upsert_layer

__all__ = ["InferWidget", "inference_steps", "result_layers", "INFER_METHODS", "DEVICES"]

INFER_METHODS = ("pinn", "direct", "autodiff")
DEVICES = ("auto", "cpu", "cuda")


def inference_steps(image, mask, grid=128, method="pinn", device="auto", seed=0,
                    iterations=None, ensemble=None, cancel=None):
    """Generator: chromatin fields + rate inference, yielding progress, returning the result.

    The library call runs in a helper thread that reports through a queue; this generator turns
    those reports into ``yield (done, total, message)``, which is what napari's generator workers
    forward to the GUI thread. Closing the generator (``worker.quit()``) sets ``cancel`` and
    waits for the library to stop at its next check.

    Parameters
    ----------
    image : chromflow.Image
        Density image.
    mask : ndarray of bool or None
        Nucleus mask of the image's shape; None segments automatically.
    grid, method, device, seed, iterations, ensemble
        Passed to :func:`chromflow.chromatin_fields` (``grid``) and :func:`chromflow.infer_rates`;
        None keeps the library's default.
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
    import chromflow as cf

    cancel = cancel if cancel is not None else threading.Event()
    reports: queue.Queue = queue.Queue()
    outcome: dict = {}

    def work():
        try:
            the_mask = mask
            if the_mask is None:
                reports.put((0, 0, "segmenting nucleus"))
                the_mask = cf.segment_nucleus(image)
            reports.put((0, 0, "computing chromatin fields"))
            fields = cf.chromatin_fields(image, np.asarray(the_mask, dtype=bool), grid=grid)
            options = {key: int(value) for key, value in
                       (("iterations", iterations), ("ensemble", ensemble)) if value is not None}
            outcome["result"] = cf.infer_rates(
                fields, method=method, device=device, seed=seed,
                progress=lambda done, total, msg="": reports.put((done, total, msg)),
                cancel=cancel, **options)
        except BaseException as error:  # noqa: BLE001 - re-raised in the generator's thread
            outcome["error"] = error
        finally:
            reports.put(None)

    thread = threading.Thread(target=work, name="chromflow-infer", daemon=True)
    thread.start()
    try:
        while (item := reports.get()) is not None:
            yield item
    finally:
        if thread.is_alive():  # closed early: worker.quit() or an exception
            cancel.set()
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def result_layers(result, base: str, source=None) -> list:
    """napari layer-data tuples for a :class:`chromflow.RateMapResult`.

    Every layer gets ``scale = spacing`` and ``translate = origin`` (nm) of the result grid, so it
    lies exactly over the density image it came from. The rate map's contrast limits are the 1st
    and 99th percentiles inside the nucleus; uncertainty and residual start hidden.

    Returns
    -------
    list of tuple
        ``(data, kwargs, layer_type)`` for rate, uncertainty, residual (those present) and the
        nucleus outline.
    """
    spacing = float(result.spacing)
    scale = (spacing, spacing)
    translate = tuple(float(o) for o in result.origin)
    mask = np.asarray(result.mask, dtype=bool)
    common = {"scale": scale, "translate": translate}

    def meta(kind):
        return {"kind": kind, "chromflow_result": result, "source": source, "base": base}

    rate = np.asarray(result.rate, dtype=float)
    layers = [(rate, {**common, "name": f"{base} rate", "colormap": "viridis",
                      "contrast_limits": robust_contrast_limits(rate, mask), "opacity": 0.9,
                      "metadata": meta("rate")}, "image")]
    uncertainty = getattr(result, "uncertainty", None)
    # a single fit has no spread (all NaN): no layer rather than an empty one
    if uncertainty is not None and np.isfinite(uncertainty).any():
        uncertainty = np.asarray(uncertainty, dtype=float)
        layers.append((uncertainty, {**common, "name": f"{base} rate uncertainty",
                                     "colormap": "magma", "visible": False,
                                     "contrast_limits": robust_contrast_limits(uncertainty, mask),
                                     "metadata": meta("uncertainty")}, "image"))
    residual = getattr(result, "residual", None)
    if residual is not None:
        residual = np.asarray(residual, dtype=float)
        lo, hi = robust_contrast_limits(np.abs(residual), mask, 0.0, 99.0)
        layers.append((residual, {**common, "name": f"{base} residual", "colormap": "bwr",
                                  "visible": False, "contrast_limits": (-hi, hi),
                                  "metadata": meta("residual")}, "image"))
    layers.append((mask.astype(np.uint8), {**common, "name": f"{base} outline", "contour": 1,
                                           "opacity": 1.0, "metadata": meta("outline")}, "labels"))
    return layers


class InferWidget(Container):
    """Infer the rate map of a density image + nucleus labels, with progress and cancel.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer to work in (injected by napari).
    """

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.image = ComboBox(label="density image",
                              choices=_layer_choices(napari_viewer, _is_density_candidate))
        self.nucleus_labels = ComboBox(label="nucleus labels", nullable=True,
                               choices=_layer_choices(napari_viewer, _is_labels),
                               tooltip="label > 0 is nucleus; empty: segment automatically")
        self.grid = SpinBox(label="grid (cells)", value=128, min=16, max=1024, step=8)
        self.method = ComboBox(label="method", choices=list(INFER_METHODS), value="pinn")
        self.device = ComboBox(label="device", choices=list(DEVICES), value="auto")
        self.iterations = SpinBox(label="iterations", value=800, min=1, max=1_000_000, step=100)
        self.ensemble = SpinBox(label="ensemble", value=1, min=1, max=32,
                                tooltip="fits with seeds seed, seed+1, ...; their spread is the "
                                "uncertainty map (needs >= 2)")
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.run_button = PushButton(text="Infer rates")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(value="")
        super().__init__(widgets=[self.image, self.nucleus_labels, self.grid, self.method, self.device,
                                  self.iterations, self.ensemble, self.seed, self.run_button,
                                  self.cancel_button, self.progress, self.status])
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.image.changed.connect(self._pick_matching_labels)
        _refresh_on_layer_change(napari_viewer, self.image, self.nucleus_labels)
        self.worker = None
        self._cancel_event = threading.Event()
        self._base = ""
        self._source = None
        napari_viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self._pick_matching_labels()

    def _on_layer_inserted(self, event):
        # a nucleus segmented after this widget was opened becomes the default mask
        if self.nucleus_labels.value is None and _is_labels(event.value):
            self._pick_matching_labels()

    def _pick_matching_labels(self, _=None):
        image = self.image.value
        if image is None:
            return
        for layer in self.nucleus_labels.choices:
            if layer is not None and layer.metadata.get("image_layer") == image.name:
                self.nucleus_labels.value = layer
                return

    # -- run / cancel ----------------------------------------------------------------------------
    def run(self, _=None):
        """Start inference on the chosen layers (in a thread unless CHROMFLOW_NAPARI_SYNC=1)."""
        if self.worker is not None:
            return None
        layer = self.image.value
        try:
            if layer is None:
                raise InputError("choose a density image first")
            image = image_from_layer(layer)
            mask = None
            if self.nucleus_labels.value is not None:
                mask = np.asarray(self.nucleus_labels.value.data) > 0
                if mask.shape != image.shape:
                    raise InputError(f"labels {self.nucleus_labels.value.name!r} have shape {mask.shape}"
                                     f" but the image has {image.shape}", image.source)
        except Exception as error:  # noqa: BLE001
            report_error(error, "Infer rates")
            return None
        self._base = layer.name.removesuffix(" density")
        self._source = layer.metadata.get("source")
        self._cancel_event = threading.Event()
        steps = inference_steps(image, mask, grid=self.grid.value, method=self.method.value,
                                device=self.device.value, seed=self.seed.value,
                                iterations=self.iterations.value, ensemble=self.ensemble.value,
                                cancel=self._cancel_event)
        self._set_running(True)
        self._outcome_seen = False
        if run_synchronously():
            self._run_here(steps)
            return None
        from napari.qt.threading import create_worker

        self.worker = create_worker(_guarded, steps, _start_thread=False, _ignore_errors=True)
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(self._on_outcome)
        self.worker.aborted.connect(self._on_aborted)
        self.worker.finished.connect(self._on_finished)
        self.worker.start()
        return self.worker

    def _run_here(self, steps):
        guarded = _guarded(steps)
        try:
            while True:
                self._on_progress(next(guarded))
        except StopIteration as stop:
            self._on_outcome(stop.value)
        finally:
            self._on_finished()

    def cancel(self, _=None):
        """Ask the running inference to stop; nothing is added to the viewer."""
        self._cancel_event.set()
        self.status.value = "cancelling..."
        if self.worker is not None:
            self.worker.quit()

    # -- worker callbacks (GUI thread) -----------------------------------------------------------
    def _on_progress(self, item):
        done, total, message = item
        if total > 0:
            self.progress.max = int(total)
            self.progress.value = min(int(done), int(total))
        self.status.value = str(message)

    def _on_outcome(self, outcome):
        self._outcome_seen = True
        kind, value = outcome
        if kind == "ok":
            self._on_result(value)
        else:
            self._on_error(value)

    def _on_result(self, result):
        try:
            for data, kwargs, kind in result_layers(result, self._base, self._source):
                upsert_layer(self.viewer, data, kwargs, kind)
        except Exception as error:  # noqa: BLE001
            report_error(error, "Infer rates")
            return
        self.status.value = "done"
        self.progress.value = self.progress.max

    def _on_error(self, error):
        if isinstance(error, CancelledError):
            self._on_aborted()
        else:
            self.status.value = "failed"
            report_error(error, "Infer rates")

    def _on_aborted(self):
        from napari.utils.notifications import show_info

        self._outcome_seen = True
        self.status.value = "cancelled"
        show_info("Infer rates: cancelled; no layers were changed")

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
            self.progress.max, self.progress.value = 1, 0
            self.status.value = "starting..."


def _guarded(steps):
    """Run ``steps`` to the end, returning ``("ok", result)`` or ``("error", exception)``.

    Errors travel as values rather than exceptions because superqt's generator worker treats a
    ``RuntimeError`` (which torch raises for device problems) as "worker deleted" and drops it.
    """
    try:
        return ("ok", (yield from steps))
    except Exception as error:  # noqa: BLE001 - reported by the widget
        return ("error", error)


def _is_labels(layer) -> bool:
    return getattr(layer, "_type_string", "") == "labels"
