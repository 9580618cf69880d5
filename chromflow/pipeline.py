"""The end-to-end pipeline: one input file -> density, nucleus, fields, rate map, report.

This is the single pipeline behind ``chromflow run``, ``chromflow batch`` and the napari
plugin. It is split into stage functions (:func:`load_input`, :func:`segment`,
:func:`compute_fields`, :func:`infer`, :func:`summarize`) so that an interactive front end can
call them one at a time and show intermediate results, and into a compute part
(:func:`process`) that keeps everything in memory and a write part (:func:`write_outputs`)
that publishes all files at the end. A failure or a cancel before the end therefore leaves
no new file behind.

Outputs per input file ``<stem>.<ext>`` (see :func:`output_paths`):

=========================  ==============================================================
``<stem>_density.tif``     density image (localizations per pixel, or the input TIFF), nm
``<stem>_mask.tif``        nucleus mask (bool; ImageJ sees 0/255), same pixels as the density
``<stem>_rate.tif``        rate map ``lambda`` on the field grid (float32, NaN outside)
``<stem>_uncertainty.tif`` uncertainty of ``lambda`` on the field grid (not written when
                           the uncertainty was switched off: never an all-NaN file)
``<stem>_ratio.tif``       the baseline without physics on the same grid: the smoothed
                           ``phi_h / phi_e`` at the width two halves of the data choose
                           (``result.ratio``; not written when it could not be made)
``<stem>_result.npz``      the full :class:`~chromflow.inverse.RateMapResult`
``<stem>_report.png``      the summary figure (:func:`chromflow.report.make_report`)
``<stem>_summary.json``    the summary row returned by :func:`run_file`
=========================  ==============================================================
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import inspect
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from ._json import jsonable as _jsonable
from ._progress import CancelToken, ProgressCallback, check_cancel, report
from .errors import ChromflowError, InputError, OutputError
from ._validate import check_input_file
from .blinks import DEFAULT_MAX_DARK_FRAMES, merge_note
from .fields import MAX_GRID, MIN_GRID
from .image import Image
from .io._atomic import atomic_path

__all__ = [
    "RenderSettings", "SegmentationSettings", "FieldSettings", "InferenceSettings",
    "PipelineSettings", "LoadedInput", "PipelineRun",
    "LOCALIZATION_SUFFIXES", "IMAGE_SUFFIXES", "OUTPUT_KINDS",
    "load_input", "segment", "compute_fields", "infer", "summarize", "process", "process_file", "rows_in_channel",
    "output_paths", "write_outputs", "run_file", "resolve_device",
    "MAX_GRID", "PLAUSIBLE_NUCLEUS_AREA_UM2", "check_single_object", "check_out_dir", "sweep_stale_temporaries",
    "check_device",
]

LOCALIZATION_SUFFIXES = (".csv", ".txt", ".tsv", ".hdf5", ".h5")
IMAGE_SUFFIXES = (".tif", ".tiff")
#: kind -> file name suffix of the outputs written per input
OUTPUT_KINDS = {
    "density": "_density.tif",
    "mask": "_mask.tif",
    "rate": "_rate.tif",
    "uncertainty": "_uncertainty.tif",
    "ratio": "_ratio.tif",
    "result": "_result.npz",
    "report": "_report.png",
    "summary": "_summary.json",
}
INFERENCE_METHODS = ("pinn", "direct", "autodiff")
#: ``inference.effort`` values: :data:`chromflow.inverse.EFFORTS` (kept here so that reading settings
#: does not import torch; a test holds the two equal)
INFERENCE_EFFORTS = ("auto", "standard", "domain")
#: Nucleus areas (um^2) taken as plausible; outside this range the pipeline warns. Mammalian
#: nuclei are ~50-400 um^2; set ``segmentation.nucleus_area_um2`` for other cells.
PLAUSIBLE_NUCLEUS_AREA_UM2 = (10.0, 1000.0)
#: The segmented nucleus must hold at least this share of the localizations found in all dense
#: objects of the image (unless ``segmentation.allow_several_objects``).
MIN_OBJECT_SHARE = 0.5
#: Other dense objects count when they hold at least this share of the nucleus' localizations.
MIN_OTHER_OBJECT = 0.1
#: Temporary folders of :func:`write_outputs` end with this suffix.
TEMP_SUFFIX = ".chromflow-tmp"
RENDER_METHODS = ("gaussian", "histogram")

# share of the progress bar each stage gets (inference dominates the run time)
_STAGE_WEIGHTS = {"read": 5, "segment": 3, "fields": 4, "infer": 80, "report": 4, "write": 4}
_STAGE_START = {}
_acc = 0
for _name, _w in _STAGE_WEIGHTS.items():
    _STAGE_START[_name] = _acc
    _acc += _w
_PROGRESS_TOTAL = _acc
del _acc, _name, _w


# ----------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------
@dataclass
class RenderSettings:
    """How localizations are read and become a density image.

    Every ``None`` means "the library's default", read when the pipeline runs (see
    :meth:`PipelineSettings.resolved`), so that defaults live in one place.

    Attributes
    ----------
    pixel_size : float or None
        Pixel size of the rendered density in nm; starts at :func:`chromflow.render`'s default
        (20 nm, read from its signature; None means the same). For TIFF inputs it is used only
        when the file does not record a pixel size.
    method : {"gaussian", "histogram"}
        Each localization as a Gaussian blob, or counted in its pixel.
    sigma : float or None
        Gaussian width in nm; None lets :func:`chromflow.render` use each localization's
        precision (or its own default).
    columns : dict or None
        Column mapping for tables whose names chromflow does not recognise: standard name ->
        name in the file, e.g. ``{"x": "X_nm", "y": "Y_nm"}`` (``read_localizations(columns=)``;
        command line ``--columns x=X_nm,y=Y_nm``).
    units : str or None
        Length unit of the coordinates when the header does not say (``"nm"``, ``"um"``,
        ``"px"``); overrides the header (command line ``--units``).
    camera_pixel_size : float or None
        Camera pixel size in nm, for coordinates in camera pixels (ThunderSTORM ``x [px]``,
        ``units="px"``) or a Picasso file without its ``.yaml`` (command line
        ``--camera-pixel-size``).
    merge_blinks : bool
        Merge each molecule's repeated localizations in nearby frames into one before rendering
        (:func:`chromflow.blinks.merge_blinks`), so that the density counts molecules (on by
        default; tables without a ``frame`` or ``uncertainty`` column, or already merged by
        their software, are rendered as they are, and the summary says so).
    max_dark_frames : int
        Frames a molecule may stay dark between two blinks and still be merged (default 1, as
        Picasso's and ThunderSTORM's linking).
    """

    pixel_size: float | None = field(default_factory=lambda: _library_default("render", "pixel_size"))
    method: str = "gaussian"
    sigma: float | None = None
    columns: dict | None = None
    units: str | None = None
    camera_pixel_size: float | None = None
    merge_blinks: bool = True
    max_dark_frames: int = DEFAULT_MAX_DARK_FRAMES


@dataclass
class SegmentationSettings:
    """Nucleus segmentation (:func:`chromflow.segment_nucleus`) and its plausibility checks.

    Attributes
    ----------
    threshold : float or None
        Density threshold in the image's units; None = automatic (Otsu).
    smoothing : float or None
        Gaussian smoothing before thresholding, in nm; None = the segmenter's default (250 nm).
    min_area_um2 : float or None
        Smallest accepted nucleus in um^2; None = the segmenter's default (1 um^2).
    nucleus_area_um2 : (float, float) or None
        Plausible nucleus areas in um^2: a nucleus outside this range gives a warning. None =
        :data:`PLAUSIBLE_NUCLEUS_AREA_UM2` (10 to 1000 um^2, mammalian nuclei).
    allow_several_objects : bool
        Accept an image where the segmented nucleus holds less than half of the localizations
        found in all dense objects (several cells, bacteria...); by default such an image is
        refused (see :func:`check_single_object`). Command line ``--allow-several-objects``.
    """

    threshold: float | None = None
    smoothing: float | None = None
    min_area_um2: float | None = None
    nucleus_area_um2: tuple | None = None
    allow_several_objects: bool = False


@dataclass
class FieldSettings:
    """Density -> chromatin volume fractions (:func:`chromflow.chromatin_fields`).

    Attributes
    ----------
    grid : int or None
        Number of grid cells along the longer side of the nucleus box (at most
        :data:`MAX_GRID`); starts at :func:`chromflow.chromatin_fields`' default (128, read from
        its signature; None means the same).
    total_mean : float or None
        Mean total chromatin fraction ``phi_h + phi_e`` in the nucleus; None = default.
    split : {"density", "uniform"} or None
        Rule splitting one-channel density into ``phi_h`` and ``phi_e`` (see
        :func:`chromflow.chromatin_fields`); None = its default (``"density"``).
    split_range : (float, float) or None
        Heterochromatin share at the low and high density percentiles (``split="density"``).
    margin : float or None
        Padding around the nucleus box, as a fraction of its side.
    smoothing : float or None
        Gaussian smoothing of the fields in nm.
    euchromatin : str or None
        Path of a second file (localizations or TIFF) with a euchromatin mark.
    heterochromatin_channel, euchromatin_channel : int, str or None
        For tables with a ``channel`` column: the values marking the two channels. Setting
        ``euchromatin_channel`` turns two-channel mode on; rows of ``heterochromatin_channel``
        (default: every other channel) make the heterochromatin density.
    background : "auto", float or None
        Background per pixel subtracted from each channel's density (see
        :func:`chromflow.chromatin_fields`); ``"auto"`` measures it far outside the nucleus,
        0 subtracts nothing; None = the library default (``"auto"``).
    """

    grid: int | None = field(default_factory=lambda: _library_default("chromatin_fields", "grid"))
    total_mean: float | None = None
    split: str | None = None
    split_range: tuple | None = None
    margin: float | None = None
    smoothing: float | None = None
    euchromatin: str | None = None
    heterochromatin_channel: int | str | None = None
    euchromatin_channel: int | str | None = None
    background: str | float | None = None


@dataclass
class InferenceSettings:
    """Rate-map inference (:func:`chromflow.infer_rates`).

    Attributes
    ----------
    method : {"pinn", "direct", "autodiff"}
        Mollified PINN, direct mollified inversion, or the autodiff PINN baseline.
    iterations : int or None
        Training iterations (PINN methods); None = default.
    radius : float or None
        Mollifier support radius in grid cells; None = default.
    backbone : str or None
        Backbone network name (e.g. ``"mlp"``, ``"piratenet"``); None = default.
    ensemble : int or None
        Independently seeded fits averaged into the map (networks); None = default.
    effort : {"auto", "standard", "domain"} or None
        Networks: ``"auto"`` (the default) gives data whose two halves resolve domain-scale
        structure 2000 steps and an ensemble of 3, ``"standard"`` never (faster), ``"domain"``
        always; ``iterations`` and ``ensemble`` set here stay. None = default. Ignored by
        ``direct``. See docs/inference.md, "Effort".
    ratio_weight : "auto", float or None
        Networks: the share (0-1) of the smoothed phi_h/phi_e (``<stem>_ratio.tif``) mixed into
        the rate map. ``"auto"`` (the default) takes it from the data's noise share: 0 on
        low-noise fields, up to 0.4 on rendered counting data; ``0`` keeps the network's own
        map. None = default. Ignored by ``direct``. See docs/inference.md, "Mixing in the
        smoothed ratio".
    uncertainty : bool or None
        Compute the uncertainty map (False skips it: faster); None = the library's default.
    optimizer : str or None
        ``"adam"`` or ``"soap"``; None = default.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    seed : int
        Seed of every random step.
    """

    method: str = "pinn"
    iterations: int | None = None
    radius: float | None = None
    backbone: str | None = None
    ensemble: int | None = None
    effort: str | None = None
    ratio_weight: str | float | None = None
    uncertainty: bool | None = None
    optimizer: str | None = None
    device: str = "auto"
    seed: int = 0


def _library_default(function: str, name: str):
    """Default of parameter ``name`` of ``chromflow.render`` or ``chromflow.chromatin_fields``.

    The two settings every front end shows as a number (pixel size, grid) start at the value
    of the function that uses them, read when the settings are made: one place for each.
    """
    if function == "render":
        from .render import render as func
    else:
        from .fields import chromatin_fields as func
    return _default_of(func, name)


def _default_of(func, name):
    """Default value of parameter ``name`` of ``func`` (``inspect.Parameter.empty`` if none)."""
    parameter = inspect.signature(func).parameters.get(name)
    return inspect.Parameter.empty if parameter is None else parameter.default


def _is_number(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


# section -> key -> (check, expectation in words); None passes for the Optional fields
_CHECKS = {
    "render": {
        "pixel_size": (lambda v: v is None or (_is_number(v) and math.isfinite(v) and v > 0),
                       "null or a positive number of nm"),
        "method": (lambda v: v in RENDER_METHODS, f"one of {', '.join(RENDER_METHODS)}"),
        "sigma": (lambda v: v is None or (_is_number(v) and math.isfinite(v) and v > 0), "null or a positive number of nm"),
        "columns": (lambda v: v is None or (isinstance(v, dict) and all(isinstance(k, str) and isinstance(c, str)
                                                                        for k, c in v.items())),
                    "null or an object standard name -> column name, e.g. {\"x\": \"X_nm\"}"),
        "units": (lambda v: v is None or isinstance(v, str), "null or a length unit (nm, um, px...)"),
        "camera_pixel_size": (lambda v: v is None or (_is_number(v) and math.isfinite(v) and v > 0),
                              "null or a positive number of nm"),
        "merge_blinks": (lambda v: isinstance(v, bool), "true or false"),
        "max_dark_frames": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    },
    "segmentation": {
        "threshold": (lambda v: v is None or (_is_number(v) and math.isfinite(v)), "null or a number"),
        "smoothing": (lambda v: v is None or (_is_number(v) and math.isfinite(v) and v >= 0), "null or a number of nm >= 0"),
        "min_area_um2": (lambda v: v is None or (_is_number(v) and math.isfinite(v) and v >= 0),
                         "null or a number of um^2 >= 0"),
        "nucleus_area_um2": (lambda v: v is None or (isinstance(v, (list, tuple)) and len(v) == 2
                                                     and all(_is_number(x) and x >= 0 for x in v) and v[0] <= v[1]),
                             "null or two numbers of um^2 [min, max]"),
        "allow_several_objects": (lambda v: isinstance(v, bool), "true or false"),
    },
    "fields": {
        "grid": (lambda v: v is None or (_is_int(v) and MIN_GRID <= v <= MAX_GRID),
                 f"null or an integer from {MIN_GRID} to {MAX_GRID}"),
        "total_mean": (lambda v: v is None or (_is_number(v) and 0 < v < 1), "null or a number in (0, 1)"),
        "split": (lambda v: v is None or v in ("density", "uniform"), "null, density or uniform"),
        "split_range": (lambda v: v is None or (isinstance(v, (list, tuple)) and len(v) == 2
                                                and all(_is_number(x) and 0 <= x <= 1 for x in v)),
                        "null or two numbers in [0, 1]"),
        "margin": (lambda v: v is None or (_is_number(v) and 0 <= v <= 1), "null or a number in [0, 1]"),
        "smoothing": (lambda v: v is None or (_is_number(v) and math.isfinite(v) and v >= 0), "null or a number of nm >= 0"),
        "euchromatin": (lambda v: v is None or isinstance(v, (str, os.PathLike)), "null or a file path"),
        "heterochromatin_channel": (lambda v: v is None or _is_int(v) or isinstance(v, str), "null, an integer or a string"),
        "euchromatin_channel": (lambda v: v is None or _is_int(v) or isinstance(v, str), "null, an integer or a string"),
        "background": (lambda v: v is None or v == "auto" or (_is_number(v) and math.isfinite(v) and v >= 0),
                       "null, \"auto\" or a number >= 0 per pixel"),
    },
    "inference": {
        "method": (lambda v: v in INFERENCE_METHODS, f"one of {', '.join(INFERENCE_METHODS)}"),
        "iterations": (lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1"),
        "radius": (lambda v: v is None or v == "auto" or (_is_number(v) and math.isfinite(v) and v > 0),
                   "null, \"auto\" or a positive number of grid cells"),
        "backbone": (lambda v: v is None or isinstance(v, str), "null or a backbone name"),
        "ensemble": (lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1"),
        "effort": (lambda v: v is None or v in INFERENCE_EFFORTS, f"null or one of {', '.join(INFERENCE_EFFORTS)}"),
        "ratio_weight": (lambda v: v is None or v == "auto" or (_is_number(v) and 0 <= v <= 1),
                         "null, \"auto\" or a number from 0 to 1"),
        "uncertainty": (lambda v: v is None or isinstance(v, bool), "null, true or false"),
        "optimizer": (lambda v: v is None or isinstance(v, str), "null or an optimizer name"),
        "device": (lambda v: isinstance(v, str) and (v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit())),
                   "auto, cpu, cuda or cuda:N"),
        "seed": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    },
}
# settings that do not change the numbers a run produces (left out of the fingerprint)
_NOT_IN_FINGERPRINT = {("inference", "device")}


@dataclass
class PipelineSettings:
    """Every setting of the pipeline, in four sections, with a JSON round trip.

    Parameters
    ----------
    render, segmentation, fields, inference
        The sections; see :class:`RenderSettings`, :class:`SegmentationSettings`,
        :class:`FieldSettings`, :class:`InferenceSettings`.

    Examples
    --------
    >>> s = PipelineSettings()
    >>> s.fields.grid = 64
    >>> PipelineSettings.from_dict(s.to_dict()) == s
    True
    >>> s.fingerprint() == PipelineSettings.from_dict(s.to_dict()).fingerprint()
    True

    A config file may give only the keys it changes::

        {"render": {"pixel_size": 15}, "inference": {"method": "direct"}}
    """

    render: RenderSettings = field(default_factory=RenderSettings)
    segmentation: SegmentationSettings = field(default_factory=SegmentationSettings)
    fields: FieldSettings = field(default_factory=FieldSettings)
    inference: InferenceSettings = field(default_factory=InferenceSettings)

    _SECTIONS = {"render": RenderSettings, "segmentation": SegmentationSettings,
                 "fields": FieldSettings, "inference": InferenceSettings}

    def __post_init__(self):
        self.validate()

    def validate(self, source=None) -> "PipelineSettings":
        """Raise :class:`~chromflow.errors.InputError` on the first invalid value."""
        if isinstance(self.fields.split_range, list):  # JSON gives lists; keep one form for ==
            self.fields.split_range = tuple(self.fields.split_range)
        if isinstance(self.segmentation.nucleus_area_um2, list):
            self.segmentation.nucleus_area_um2 = tuple(self.segmentation.nucleus_area_um2)
        for section, checks in _CHECKS.items():
            values = getattr(self, section)
            for key, (ok, expected) in checks.items():
                value = getattr(values, key)
                if not ok(value):
                    raise InputError(f"setting {section}.{key} must be {expected}, got {value!r}", path=source)
        return self

    def to_dict(self) -> dict:
        """Nested plain dict (JSON-ready)."""
        out = dataclasses.asdict(self)
        eu = out["fields"]["euchromatin"]
        if eu is not None:
            out["fields"]["euchromatin"] = os.fspath(eu)
        return out

    @classmethod
    def from_dict(cls, data: dict, source=None) -> "PipelineSettings":
        """Build settings from a (possibly partial) nested dict; unknown keys are errors.

        Parameters
        ----------
        data : dict
            ``{"render": {...}, "segmentation": {...}, "fields": {...}, "inference": {...}}``;
            missing sections and keys keep their defaults.
        source : str, optional
            The config file the dict came from, named in error messages.
        """
        if not isinstance(data, dict):
            raise InputError(f"settings must be a JSON object with sections {', '.join(cls._SECTIONS)}, "
                             f"got {type(data).__name__}", path=source)
        sections = {}
        for name, values in data.items():
            if name not in cls._SECTIONS:
                raise InputError(f"unknown settings section {name!r} (known: {', '.join(cls._SECTIONS)})", path=source)
            if values is None:
                values = {}
            if not isinstance(values, dict):
                raise InputError(f"settings section {name!r} must be an object, got {type(values).__name__}", path=source)
            known = {f.name for f in dataclasses.fields(cls._SECTIONS[name])}
            for key in values:
                if key not in known:
                    raise InputError(f"unknown setting {name}.{key} (known: {', '.join(sorted(known))})", path=source)
            sections[name] = cls._SECTIONS[name](**values)
        settings = cls.__new__(cls)
        for name, klass in cls._SECTIONS.items():
            setattr(settings, name, sections.get(name, klass()))
        return settings.validate(source)

    def to_json(self, path) -> None:
        """Write the settings as indented JSON (atomically)."""
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_json(cls, path) -> "PipelineSettings":
        """Read settings from a JSON config file (errors name the file and the key).

        A relative ``fields.euchromatin`` path is taken relative to the config file's folder.
        """
        path = os.fspath(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError("config file not found", path=path) from None
        except OSError as exc:
            raise InputError(f"cannot read config file ({exc.strerror})", path=path) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", path=path) from None
        settings = cls.from_dict(data, source=path)
        eu = settings.fields.euchromatin
        if eu is not None and not os.path.isabs(eu):
            # a path in a config file means a path next to that file, wherever the command runs
            settings.fields.euchromatin = os.path.join(os.path.dirname(os.path.abspath(path)), eu)
        return settings

    def copy(self) -> "PipelineSettings":
        return PipelineSettings.from_dict(self.to_dict())

    def resolved(self) -> "PipelineSettings":
        """A copy in which every ``None`` is replaced by the library default it stands for.

        The defaults are read now from the functions that own them (:func:`chromflow.render`,
        :func:`chromflow.segment_nucleus`, :func:`chromflow.chromatin_fields`,
        :data:`chromflow.inverse.DEFAULTS` and :func:`chromflow.infer_rates`), never copied,
        so a front end (napari, ``--help``) shows the numbers a run will use. Settings that
        mean "automatic" (``segmentation.threshold``, ``render.sigma``, ``fields.smoothing``)
        stay ``None``.

        Examples
        --------
        >>> PipelineSettings().resolved().fields.grid
        128
        """
        from .fields import chromatin_fields
        from .inverse import DEFAULTS, infer_rates
        from .nucleus import DEFAULT_MIN_AREA_NM2, DEFAULT_SMOOTHING_NM
        from .render import render

        out = self.copy()
        if out.render.pixel_size is None:
            out.render.pixel_size = float(_default_of(render, "pixel_size"))
        seg = out.segmentation
        if seg.smoothing is None:
            seg.smoothing = float(DEFAULT_SMOOTHING_NM)
        if seg.min_area_um2 is None:
            seg.min_area_um2 = float(DEFAULT_MIN_AREA_NM2) / 1e6
        if seg.nucleus_area_um2 is None:
            seg.nucleus_area_um2 = tuple(PLAUSIBLE_NUCLEUS_AREA_UM2)
        fs = out.fields
        for key in ("grid", "total_mean", "split", "split_range", "margin", "background"):
            if getattr(fs, key) is None:
                value = _default_of(chromatin_fields, key)
                setattr(fs, key, tuple(value) if isinstance(value, (list, tuple)) else value)
        inf = out.inference
        method_defaults = DEFAULTS.get(inf.method, {})
        for key in ("iterations", "radius", "ensemble", "effort", "ratio_weight"):
            if getattr(inf, key) is None and key in method_defaults:
                setattr(inf, key, method_defaults[key])
        for key in ("backbone", "optimizer", "uncertainty"):
            if getattr(inf, key) is None and inf.method != "direct":
                value = _default_of(infer_rates, key)
                setattr(inf, key, None if value is inspect.Parameter.empty else value)
        return out.validate()

    def fingerprint(self) -> str:
        """Stable hash (16 hex digits) of the settings that change results, plus the version.

        The device is left out (CPU and GPU answer the same question); the chromflow version
        is included, so an upgrade recomputes cached results. Combine with a content hash of
        the input to decide whether a finished output can be reused.
        """
        data = self.resolved().to_dict()  # None and the default it stands for are the same run
        for section, key in _NOT_IN_FINGERPRINT:
            data[section].pop(key, None)
        data["chromflow"] = __version__
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# stages
# ----------------------------------------------------------------------------------------------
@dataclass
class LoadedInput:
    """What :func:`load_input` read: the density to segment and, optionally, a euchromatin mark.

    Attributes
    ----------
    density : Image
        Density image (heterochromatin channel in two-channel mode), pixel size in nm.
    euchromatin : Image or None
        Euchromatin density on the same pixels, when a second channel was given.
    n_localizations : int or None
        Number of localizations read (None for image inputs).
    n_molecules : int or None
        Rows left after blink merging (``render.merge_blinks``), or None.
    blinks : str or None
        What blink merging did, in words (``"off"``, ``"not merged: ..."`` or the counts).
    source : str
        Path of the input file.
    kind : {"localizations", "image"}
    half : tuple of Image or None
        One half of the localizations rendered on the same pixels (see :func:`half_of_frames`).
    """

    density: Image
    euchromatin: Image | None
    n_localizations: int | None
    source: str
    kind: str
    #: ``(density, euchromatin)`` of one half of the localizations (alternate blocks of
    #: :data:`HALF_FRAME_BLOCK` frames) on the same pixels, or None (images; tables without
    #: frames, or too few of them). :func:`compute_fields` turns it into ``fields.half``.
    half: tuple | None = None
    #: rows after blink merging (one per molecule), or None when the blinks were not merged
    n_molecules: int | None = None
    #: what blink merging did, in words (None for images)
    blinks: str | None = None


@dataclass
class PipelineRun:
    """Everything :func:`process` computed, kept in memory until :func:`write_outputs`."""

    loaded: LoadedInput
    mask: np.ndarray
    fields: Any
    result: Any
    settings: PipelineSettings
    summary: dict
    figure: Any = None
    timings: dict = field(default_factory=dict)


def resolve_device(device: str) -> str:
    """The device name a run will use (``"auto"`` -> ``"cuda"`` with a GPU, else ``"cpu"``).

    A string wrapper of :func:`chromflow.training.resolve_device`, the one place devices are
    chosen, for summaries and file records.
    """
    from .training import resolve_device as _resolve_torch_device

    return str(_resolve_torch_device(device))


def check_device(device: str) -> str:
    """:func:`resolve_device`, with a missing device as an :class:`~chromflow.errors.InputError`.

    Called before any work, so that ``--device cuda`` on a machine without a GPU fails at once,
    in one line, with nothing written.
    """
    try:
        return resolve_device(device)
    except ValueError as exc:
        raise InputError(f"{exc} (option --device, config key inference.device)") from None


def _input_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in LOCALIZATION_SUFFIXES:
        return "localizations"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    raise InputError(f"unsupported file type {path.suffix!r}; expected localizations "
                     f"({', '.join(LOCALIZATION_SUFFIXES)}) or an image ({', '.join(IMAGE_SUFFIXES)})", path=path)


#: Localizations spanning less than this (nm, the larger of the x and y extents) cannot hold a
#: nucleus: coordinates in um (or camera pixels) read as nm.
MIN_EXTENT_NM = 1000.0
#: ... and more than this (nm, 1 mm) no field of view: coordinates in nm read as um or mm.
MAX_EXTENT_NM = 1.0e6
_UNITS_HINT = "set their unit with --units (config key render.units), e.g. --units um"


#: frames per block of the split into halves: a molecule's blinks (consecutive frames) stay in
#: one half, so the halves are independent. Measured on the held-out simulator's 1e6 file: the
#: halves' difference has 1.9x the variance the 3x3 high-pass estimate gives at 100-frame
#: blocks, 2.0x at 1000, 0.28x at alternate frames (blinks shared by both halves)
HALF_FRAME_BLOCK = 100
#: the split needs this many blocks, so that each half samples the whole acquisition
MIN_HALF_BLOCKS = 10


def half_of_frames(locs, block: int = HALF_FRAME_BLOCK):
    """The localizations of one half of the acquisition: frames in even blocks of ``block``.

    Both halves then hold independent draws of the same structure (blinks of one molecule stay
    together), so their maps differ only by counting noise: :func:`chromflow.infer_rates` uses
    the half for its split-half refit (the noise part of the uncertainty and ``split_half_r``).

    Parameters
    ----------
    locs : DataFrame
        Localizations with a ``frame`` column.
    block : int
        Frames per block.

    Returns
    -------
    DataFrame or None
        The even blocks' localizations; None without a ``frame`` column or with fewer than
        :data:`MIN_HALF_BLOCKS` blocks.

    Examples
    --------
    >>> import pandas as pd
    >>> locs = pd.DataFrame({"frame": range(2000), "x": 0.0, "y": 0.0})
    >>> len(half_of_frames(locs))
    1000
    >>> half_of_frames(locs.assign(frame=0)) is None
    True
    """
    if "frame" not in getattr(locs, "columns", ()):
        return None
    frames = np.asarray(locs["frame"].to_numpy(), dtype=np.float64)
    if frames.size == 0 or not np.isfinite(frames).all():
        return None
    blocks = np.floor((frames - frames.min()) / block)
    if blocks.max() + 1 < MIN_HALF_BLOCKS:
        return None
    return locs[blocks % 2 == 0]


def _quiet_render(locs, settings, fov):
    """Render one half of the localizations; its warnings repeat the full table's, already given."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _render(locs, settings, fov=fov, name="half")


def _read_table(path: Path, settings: PipelineSettings | None = None):
    from .io import read_localizations

    rs = (settings or PipelineSettings()).render
    locs = read_localizations(path, columns=rs.columns, units=rs.units, pixel_size=rs.camera_pixel_size)
    if len(locs) == 0:
        raise InputError("no localizations in the file", path=path)
    _check_extent(locs, path)
    if rs.merge_blinks:
        from .blinks import merge_blinks_where_possible

        locs = merge_blinks_where_possible(locs, rs.max_dark_frames)
    return locs


def _check_extent(locs, path):
    """Refuse coordinates whose extent no nucleus has: the usual cause is a wrong length unit."""
    span = max(float(locs["x"].max() - locs["x"].min()), float(locs["y"].max() - locs["y"].min()))
    if span < MIN_EXTENT_NM:
        raise InputError(f"the localizations span only {span:.3g} nm, too small for a nucleus "
                         f"(< {MIN_EXTENT_NM:g} nm): are the coordinates in um or camera pixels? "
                         f"{_UNITS_HINT}, or --camera-pixel-size NM for pixels", path=path)
    if span > MAX_EXTENT_NM:
        raise InputError(f"the localizations span {span / 1e6:.3g} mm, more than any field of view: are the "
                         f"coordinates in nm but labelled or read as um? {_UNITS_HINT.replace('um', 'nm')}",
                         path=path)


def _fov_of(image: Image):
    """Field of view (y_min, x_min, y_max, x_max) in nm covering exactly the pixels of ``image``."""
    oy, ox = image.origin[-2:]
    ny, nx = image.shape[-2:]
    p = image.pixel_size
    return (oy - p / 2, ox - p / 2, oy + (ny - 0.5) * p, ox + (nx - 0.5) * p)


def _render(locs, settings: PipelineSettings, fov=None, name="", source=None) -> Image:
    from .render import render

    rs = settings.render
    options = {} if rs.pixel_size is None else {"pixel_size": rs.pixel_size}
    image = render(locs, method=rs.method, sigma=rs.sigma, fov=fov, **options)
    image.name = name or image.name
    image.source = source if source is not None else image.source
    return image


def rows_in_channel(locs, value) -> np.ndarray:
    """Rows whose ``channel`` is ``value`` (bool array): numerically for a numeric column (1 matches
    1 and 1.0), else as text. (Text for every row took ~0.1 s per million rows.) The one channel
    match of the pipeline and the napari reader."""
    import pandas as pd

    col = locs["channel"]
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if number is not None:
            return col.to_numpy() == number
    return (col.astype(str) == str(value)).to_numpy()


def _select_channel(locs, value, path):
    rows = locs[rows_in_channel(locs, value)]
    if len(rows) == 0:
        found = ", ".join(sorted(locs["channel"].astype(str).unique()))
        raise InputError(f"no localizations in channel {value!r} (channels in the file: {found})", path=path)
    return rows


def _read_tiff(path: Path, settings: PipelineSettings) -> Image:
    """A TIFF with its own pixel size; settings.render.pixel_size only when the file has none."""
    from .io import DEFAULT_PIXEL_SIZE_NM, read_image

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = read_image(path)
    missing = any(issubclass(w.category, UserWarning) for w in caught) and image.pixel_size == DEFAULT_PIXEL_SIZE_NM
    for w in caught:
        if not (missing and issubclass(w.category, UserWarning)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if missing:
        pixel_size = settings.render.pixel_size
        if pixel_size is None:
            pixel_size = settings.resolved().render.pixel_size
        warnings.warn(f"{path}: no pixel size in the file; using render.pixel_size = "
                      f"{pixel_size:g} nm (set it with --pixel-size)", UserWarning, stacklevel=3)
        image = Image(image.data, pixel_size=pixel_size, origin=image.origin, name=image.name,
                      source=image.source, metadata=image.metadata)
    if np.asarray(image.data).dtype == bool:
        raise InputError("a binary (true/false) image, not a density: this looks like a mask; give the density "
                         "image (localizations per pixel or intensities)", path=path)
    return image


def _load_euchromatin_file(path, density: Image, settings: PipelineSettings) -> Image:
    path = check_input_file(path, allow_empty=True)
    if _input_kind(path) == "localizations":
        locs = _read_table(path, settings)
        return _render(locs, settings, fov=_fov_of(density), name=f"{path.stem} euchromatin", source=str(path))
    image = _read_tiff(path, settings)
    if image.shape != density.shape or not np.isclose(image.pixel_size, density.pixel_size):
        raise InputError(f"euchromatin image ({image.shape}, {image.pixel_size:g} nm pixels) does not match the "
                         f"density image ({density.shape}, {density.pixel_size:g} nm pixels)", path=path)
    return image


def load_input(path, settings: PipelineSettings | None = None) -> LoadedInput:
    """Read one input file into a density image (and a euchromatin image in two-channel mode).

    Localization tables are rendered at ``settings.render.pixel_size``; TIFF images are read
    as they are. In two-channel mode (``settings.fields.euchromatin_channel`` for a table with
    a ``channel`` column, or ``settings.fields.euchromatin`` naming a second file) both
    channels are rendered on the same pixels.

    Parameters
    ----------
    path : str or os.PathLike
        Localizations (ThunderSTORM CSV, Picasso HDF5, plain CSV) or a TIFF image.
    settings : PipelineSettings, optional

    Returns
    -------
    LoadedInput

    Examples
    --------
    >>> loaded = load_input("cell.csv")          # doctest: +SKIP
    >>> loaded.density.pixel_size                # doctest: +SKIP
    20.0
    """
    settings = settings or PipelineSettings()
    path = check_input_file(path, allow_empty=True)
    kind = _input_kind(path)
    fs = settings.fields
    euchromatin = None
    n_locs = n_molecules = blinks = None
    half = None
    if kind == "localizations":
        locs = _read_table(path, settings)
        merged = locs.attrs.get("merged_blinks", {})
        n_locs = int(merged.get("localizations", len(locs)))
        n_molecules = int(merged["molecules"]) if "molecules" in merged else None
        blinks = merge_note(locs)
        if fs.euchromatin_channel is not None:
            if "channel" not in locs.columns:
                raise InputError(f"a euchromatin channel ({fs.euchromatin_channel!r}; --euchromatin-channel, config "
                                 "fields.euchromatin_channel) was set but the table has no 'channel' column", path=path)
            eu_locs = _select_channel(locs, fs.euchromatin_channel, path)
            if fs.heterochromatin_channel is not None:
                het_locs = _select_channel(locs, fs.heterochromatin_channel, path)
            else:
                het_locs = locs[~rows_in_channel(locs, fs.euchromatin_channel)]
                if len(het_locs) == 0:
                    raise InputError("every localization is in the euchromatin channel; no heterochromatin channel",
                                     path=path)
            # render all channels together once to fix a common field of view, then each on it
            fov = _fov_of(_render(locs, settings))
            density = _render(het_locs, settings, fov=fov, name=path.stem, source=str(path))
            euchromatin = _render(eu_locs, settings, fov=fov, name=f"{path.stem} euchromatin", source=str(path))
            het_half, eu_half = half_of_frames(het_locs), half_of_frames(eu_locs)
            if het_half is not None and eu_half is not None and len(het_half) and len(eu_half):
                half = (_quiet_render(het_half, settings, fov), _quiet_render(eu_half, settings, fov))
        else:
            density = _render(locs, settings, name=path.stem, source=str(path))
            # a euchromatin file has no frames in common with the table: no half then
            part = half_of_frames(locs) if fs.euchromatin is None else None
            if part is not None and len(part):
                half = (_quiet_render(part, settings, _fov_of(density)), None)
    else:
        density = _read_tiff(path, settings)
        density.name = density.name or path.stem
        density.source = str(path)
        if density.ndim != 2:
            raise InputError(f"expected a 2D (y, x) image, got shape {density.shape}", path=path)
    if fs.euchromatin is not None:
        if euchromatin is not None:
            raise InputError("both a euchromatin channel and a euchromatin file were given; use one", path=path)
        euchromatin = _load_euchromatin_file(fs.euchromatin, density, settings)
    data = np.asarray(density.data, dtype=float)
    if data.size == 0 or not np.isfinite(data).all():
        raise InputError("density image is empty or has non-finite values", path=path)
    return LoadedInput(density=density, euchromatin=euchromatin, n_localizations=n_locs, source=str(path), kind=kind,
                       half=half, n_molecules=n_molecules, blinks=blinks)


def segment(density: Image, settings: PipelineSettings | None = None) -> np.ndarray:
    """Nucleus mask of ``density`` with the segmentation settings (bool, same shape).

    Besides :func:`chromflow.segment_nucleus`, the mask is checked for plausibility:
    :func:`check_single_object` refuses an image of several cells (unless
    ``segmentation.allow_several_objects``), and a nucleus area outside
    ``segmentation.nucleus_area_um2`` gives a warning.

    Raises
    ------
    SegmentationError
        No nucleus, or several objects of comparable size; the message names the settings
        that change the outcome.
    """
    from .errors import SegmentationError
    from .nucleus import segment_nucleus

    settings = settings or PipelineSettings()
    ss = settings.segmentation
    options = {k: v for k, v in (("threshold", ss.threshold), ("smoothing", ss.smoothing)) if v is not None}
    if ss.min_area_um2 is not None:
        options["min_area"] = ss.min_area_um2 * 1e6  # nm^2
    try:
        mask = np.asarray(segment_nucleus(density, **options), dtype=bool)
    except SegmentationError as exc:
        reason = exc.reason.replace("min_area (", "segmentation.min_area_um2 (")
        if "constant" in reason or "empty" in reason:
            reason += ("; if the file holds localizations, check their unit (--units, config render.units) "
                       "and the pixel size (--pixel-size)")
        elif "threshold" not in reason:
            reason += ("; settings that change the segmentation: segmentation.threshold, segmentation.smoothing "
                       "(nm), segmentation.min_area_um2 in a --config file")
        raise SegmentationError(reason, exc.path) from None
    if not ss.allow_several_objects:
        check_single_object(density, mask, smoothing=ss.smoothing, threshold=ss.threshold)
    area_um2 = float(mask.sum()) * (density.pixel_size / 1000.0) ** 2
    low, high = ss.nucleus_area_um2 if ss.nucleus_area_um2 is not None else PLAUSIBLE_NUCLEUS_AREA_UM2
    if not low <= area_um2 <= high:
        where = f"{density.source}: " if density.source else ""
        warnings.warn(f"{where}nucleus area {area_um2:.3g} um^2 is outside the plausible range {low:g}-{high:g} "
                      "um^2; check the pixel size and units, or set segmentation.nucleus_area_um2 for these cells",
                      UserWarning, stacklevel=2)
    return mask


def check_single_object(density: Image, mask, smoothing: float | None = None, threshold: float | None = None,
                        min_share: float = MIN_OBJECT_SHARE) -> int:
    """Refuse an image in which the segmented nucleus is one of several comparable objects.

    The dense objects are the connected regions of the segmenter's detection image (the
    density smoothed by ``smoothing`` nm, thresholded as :func:`chromflow.segment_nucleus`
    does). Objects holding at least :data:`MIN_OTHER_OBJECT` (10 %) of the nucleus'
    localizations count; when the nucleus holds less than ``min_share`` (half) of the
    localizations of all counted objects, the image is not one nucleus (a field of
    bacteria, several cells) and :class:`~chromflow.errors.SegmentationError` is raised.

    Parameters
    ----------
    density : Image
        The density image that was segmented.
    mask : ndarray of bool
        The nucleus found in it.
    smoothing, threshold : float, optional
        The segmentation settings used (None: the segmenter's defaults).
    min_share : float
        Smallest share of the localizations the nucleus must hold.

    Returns
    -------
    int
        Number of counted objects (1 for a lone nucleus).

    Examples
    --------
    >>> import numpy as np
    >>> from chromflow import Image
    >>> yy, xx = np.indices((200, 200))
    >>> cells = sum(((yy - cy) ** 2 + (xx - cx) ** 2 < 20 ** 2) for cy, cx in [(50, 50), (50, 150), (150, 100)])
    >>> image = Image(5.0 * cells + 0.1, pixel_size=20.0)
    >>> check_single_object(image, (yy - 50) ** 2 + (xx - 50) ** 2 < 20 ** 2)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    SegmentationError: 3 dense objects of comparable size ...
    """
    from scipy import ndimage

    from .errors import SegmentationError
    from .nucleus import DEFAULT_SMOOTHING_NM, _log_otsu

    data = np.asarray(density.data, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    sigma = (DEFAULT_SMOOTHING_NM if smoothing is None else float(smoothing)) / density.pixel_size
    detect = ndimage.gaussian_filter(data, sigma) if sigma > 0 else data
    level = _log_otsu(detect) if threshold is None else float(threshold)
    labels, n = ndimage.label(ndimage.binary_fill_holes(detect > level) | mask)
    if n <= 1:
        return 1
    mass = ndimage.sum(np.clip(data, 0, None), labels, np.arange(1, n + 1))
    nucleus_labels = np.unique(labels[mask])
    nucleus_labels = nucleus_labels[nucleus_labels > 0]
    nucleus_mass = float(mass[nucleus_labels - 1].sum())
    others = [m for i, m in enumerate(mass, start=1) if i not in nucleus_labels and m >= MIN_OTHER_OBJECT * nucleus_mass]
    total = nucleus_mass + float(sum(others))
    share = nucleus_mass / total if total > 0 else 1.0
    if others and share < min_share:
        raise SegmentationError(
            f"{1 + len(others)} dense objects of comparable size (the segmented one holds {100 * share:.0f}% of their "
            f"localizations): this does not look like one nucleus (several cells, or bacteria?). Crop the field "
            "to one nucleus, or accept it with --allow-several-objects (config segmentation.allow_several_objects)",
            density.source)
    return 1 + len(others)


def compute_fields(density: Image, mask, settings: PipelineSettings | None = None, euchromatin: Image | None = None,
                   half: tuple | None = None):
    """Chromatin volume fractions on the inference grid (:class:`chromflow.ChromatinFields`).

    ``half`` (:attr:`LoadedInput.half`): the same fields from one half of the localizations,
    on the same grid and mask, become ``fields.half`` for the split-half refit of
    :func:`chromflow.infer_rates`; ``fields.settings["half"]`` says whether it was used.
    """
    from .fields import chromatin_fields

    fs = (settings or PipelineSettings()).fields
    options = {} if fs.grid is None else {"grid": fs.grid}
    if euchromatin is not None:
        options["euchromatin"] = euchromatin
    if fs.total_mean is not None:
        options["total_mean"] = fs.total_mean
    for key in ("split", "split_range", "margin", "smoothing", "background"):
        value = getattr(fs, key)
        if value is not None:
            options[key] = tuple(value) if key == "split_range" else value
    with _hints(_FIELD_HINTS):
        fields = chromatin_fields(density, mask, **options)
    if half is not None and (half[1] is None) == (euchromatin is None):
        try:
            part = chromatin_fields(half[0], mask, **{**options, **({} if half[1] is None else
                                                                    {"euchromatin": half[1]})})
        except ChromflowError as exc:       # a half too sparse to make fields: no split-half refit
            fields.settings["half"] = f"not used: {exc.reason}"
        else:
            ok = part.phi_h.shape == fields.phi_h.shape and np.isfinite(part.phi_h).all() \
                and np.isfinite(part.phi_e).all()
            if ok:
                fields.half = (part.phi_h, part.phi_e)
                fields.settings["half"] = f"alternate blocks of {HALF_FRAME_BLOCK} frames"
    return fields


# words of a library error -> the settings that change the outcome (so that a hint leads somewhere)
_FIELD_HINTS = {
    "smaller pixel size": "--pixel-size, config render.pixel_size",
    "fewer than 4 grid cells": "--grid, config fields.grid",
    "total_mean": "config fields.total_mean",
}
_INFER_HINTS = {
    "finer grid or a smaller radius": "--grid, config fields.grid; config inference.radius",
    "phi_e must be > 0": "use --method pinn, or smooth the fields with config fields.smoothing (nm)",
}


@contextlib.contextmanager
def _hints(hints):
    """Re-raise a chromflow error with the options and config keys that change its outcome."""
    try:
        yield
    except ChromflowError as exc:
        for words, hint in hints.items():
            if words in exc.reason and hint not in exc.reason:
                raise type(exc)(f"{exc.reason} ({hint})", exc.path) from None
        raise


def infer(fields, settings: PipelineSettings | None = None, progress: ProgressCallback = None,
          cancel: CancelToken = None):
    """Rate map from the fields with the inference settings (:class:`chromflow.RateMapResult`)."""
    from .inverse import infer_rates

    from .models import BACKBONES
    from .training import OPTIMIZERS

    s = (settings or PipelineSettings()).inference
    # names checked here so that a typo in a config file is a user error, not a crash
    if s.backbone is not None and s.backbone.lower() not in BACKBONES:
        raise InputError(f"setting inference.backbone must be one of {', '.join(sorted(BACKBONES))}, got {s.backbone!r}",
                         path=getattr(fields, "source", None))
    if s.optimizer is not None and s.optimizer.lower() not in OPTIMIZERS:
        raise InputError(f"setting inference.optimizer must be one of {', '.join(OPTIMIZERS)}, got {s.optimizer!r}",
                         path=getattr(fields, "source", None))
    # None = the library's default: only what the user set is passed (one place for defaults)
    options = {k: v for k, v in (("iterations", s.iterations), ("radius", s.radius), ("backbone", s.backbone),
                                 ("ensemble", s.ensemble), ("optimizer", s.optimizer),
                                 ("uncertainty", s.uncertainty)) if v is not None}
    if s.method != "direct":                # networks only: direct fits once, in closed form
        options.update({k: v for k, v in (("effort", s.effort), ("ratio_weight", s.ratio_weight)) if v is not None})
    if "uncertainty" in options and "uncertainty" not in inspect.signature(infer_rates).parameters:
        raise InputError("setting inference.uncertainty (--no-uncertainty) needs a chromflow whose infer_rates "
                         "has an uncertainty option; leave it unset", path=getattr(fields, "source", None))
    with _hints(_INFER_HINTS):
        return infer_rates(fields, method=s.method, device=s.device, seed=s.seed, progress=progress,
                           cancel=cancel, **options)


def _domain_stats(phi_h, phi_e, mask, spacing_nm):
    """Connected heterochromatin domains (phi_h > phi_e, 4-connected) inside the nucleus."""
    from scipy import ndimage

    domains = (np.asarray(phi_h) > np.asarray(phi_e)) & np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(domains)
    if n == 0:
        return 0, float("nan"), float("nan")
    areas_um2 = np.bincount(labels.ravel())[1:] * (spacing_nm / 1000.0) ** 2
    mean_area = float(areas_um2.mean())
    return int(n), mean_area, float(2000.0 * math.sqrt(mean_area / math.pi))


def _background_keys(background) -> dict:
    values = [None, None] if background is None else list(np.atleast_1d(background)) + [None]
    return {"background_h": values[0], "background_e": values[1]}


def summarize(loaded: LoadedInput, mask, fields, result, settings: PipelineSettings, timings=None) -> dict:
    """The summary row of one run (flat dict of numbers and strings, JSON- and CSV-ready).

    Keys: ``file``, ``stem``, ``status`` (``"ok"``), ``kind``, ``two_channel``, ``split`` (how
    ``phi_h``/``phi_e`` were obtained: measured in two channels, or assumed by the split rule),
    ``n_localizations``, ``n_molecules`` and ``blinks`` (blink merging: rows after it, and what
    it did in words), ``background_h`` and ``background_e`` (per pixel, subtracted from each
    channel's density: ``fields.background``; None when none was),
    ``pixel_size_nm``, ``image_shape``, ``nucleus_area_um2`` (mask pixels
    of the density image times the pixel area), ``grid`` (``"ny x nx"`` as ``"64x64"``),
    ``grid_spacing_nm``; the rate statistics of :meth:`RateMapResult.summary` (``mean_rate``,
    ``median_rate``, ``std_rate``, ``p05_rate``, ``p95_rate``, ``mean_uncertainty``, ``median_uncertainty``,
    ``rms_residual``, ``heterochromatin_fraction`` = ``sum phi_h / sum (phi_h + phi_e)`` in the
    nucleus, ``n_pixels`` (grid cells in the nucleus), ``method``, ``device``, ``time_s``);
    the heterochromatin domains: ``n_domains``, ``domain_area_um2`` and ``domain_diameter_nm``
    (mean area of the 4-connected regions of the grid where ``phi_h > phi_e``, and the diameter
    of a disc of that area); ``seed``, ``settings_fingerprint``, ``chromflow_version``,
    ``finished`` (ISO time), ``time_<stage>_s`` per stage and ``time_total_s``.
    """
    grid_mask = np.asarray(result.mask, dtype=bool)
    spacing = float(np.atleast_1d(result.spacing)[0])
    n_domains, domain_area, domain_diameter = _domain_stats(result.phi_h, result.phi_e, grid_mask, spacing)
    pixel_size = loaded.density.pixel_size
    row = {
        "file": loaded.source,
        "stem": Path(loaded.source).stem,
        "status": "ok",
        "kind": loaded.kind,
        "two_channel": loaded.euchromatin is not None,
        "n_localizations": loaded.n_localizations,
        "n_molecules": loaded.n_molecules,
        "blinks": loaded.blinks,
        **_background_keys((fields.settings or {}).get("background")),
        "pixel_size_nm": pixel_size,
        "image_shape": "x".join(str(n) for n in loaded.density.shape),
        "nucleus_area_um2": float(np.count_nonzero(mask)) * (pixel_size / 1000.0) ** 2,
        "grid": "x".join(str(n) for n in np.shape(result.rate)),
        "grid_spacing_nm": spacing,
        # single channel: phi_h/phi_e are an assumption of the split rule, not a measurement
        "split": ("two channels (phi_h and phi_e measured)" if loaded.euchromatin is not None else
                  f"{settings.fields.split or 'density'} rule (single channel: phi_h/phi_e assumed from density; "
                  "see chromflow domains for the single-channel domain rates)"),
    }
    stats = dict(result.summary())
    # the grid's area is coarser than the image's: keep both, the image's under the plain name
    stats["nucleus_area_grid_um2"] = stats.pop("nucleus_area_um2", float("nan"))
    row.update(stats)
    row.update({
        "n_domains": n_domains,
        "domain_area_um2": domain_area,
        "domain_diameter_nm": domain_diameter,
        "seed": settings.inference.seed,
        "settings_fingerprint": settings.fingerprint(),
        "chromflow_version": __version__,
        "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    })
    for stage, seconds in (timings or {}).items():
        row[f"time_{stage}_s"] = round(float(seconds), 4)
    if timings:
        row["time_total_s"] = round(float(sum(timings.values())), 4)
    return {k: _jsonable(v) for k, v in row.items()}


# ----------------------------------------------------------------------------------------------
# compute, then write
# ----------------------------------------------------------------------------------------------
class _Stages:
    """Times the stages, checks for cancel between them and maps progress onto one bar."""

    def __init__(self, progress, cancel):
        self.progress, self.cancel, self.timings = progress, cancel, {}

    @contextlib.contextmanager
    def stage(self, name):
        check_cancel(self.cancel, name)
        report(self.progress, _STAGE_START[name], _PROGRESS_TOTAL, name)
        start = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - start
        report(self.progress, _STAGE_START[name] + _STAGE_WEIGHTS[name], _PROGRESS_TOTAL, f"{name} done")

    def inner(self, name):
        """A progress callback for the inside of a stage (e.g. training iterations)."""
        if self.progress is None:
            return None
        start, weight = _STAGE_START[name], _STAGE_WEIGHTS[name]

        def forward(done, total, message=""):
            frac = min(max(done / total, 0.0), 1.0) if total else 0.0
            self.progress(start + int(weight * frac), _PROGRESS_TOTAL, f"{name} {done}/{total} {message}".rstrip())
        return forward


def process(loaded: LoadedInput, settings: PipelineSettings | None = None, progress: ProgressCallback = None,
            cancel: CancelToken = None, figure: bool = True, _stages=None) -> PipelineRun:
    """Segment, compute fields, infer and summarize an already loaded input, in memory.

    Parameters
    ----------
    loaded : LoadedInput
        From :func:`load_input` (or built by hand from an image in memory).
    settings : PipelineSettings, optional
    progress, cancel
        The progress/cancel protocol of :mod:`chromflow._progress`; progress runs 0..100.
    figure : bool
        Draw the report figure as well.

    Returns
    -------
    PipelineRun
    """
    settings = (settings or PipelineSettings()).validate()
    stages = _stages or _Stages(progress, cancel)
    with stages.stage("segment"):
        mask = segment(loaded.density, settings)
    with stages.stage("fields"):
        fields = compute_fields(loaded.density, mask, settings, loaded.euchromatin, loaded.half)
    with stages.stage("infer"):
        result = infer(fields, settings, progress=stages.inner("infer"), cancel=cancel)
    fig = None
    if figure:
        with stages.stage("report"):
            from .report import make_report

            fig = make_report(loaded.density, mask, result, title=Path(loaded.source).name)
    check_cancel(cancel, "pipeline")
    summary = summarize(loaded, mask, fields, result, settings, stages.timings)
    return PipelineRun(loaded=loaded, mask=mask, fields=fields, result=result, settings=settings,
                       summary=summary, figure=fig, timings=stages.timings)


def process_file(path, settings: PipelineSettings | None = None, progress: ProgressCallback = None,
                 cancel: CancelToken = None, figure: bool = True) -> PipelineRun:
    """:func:`load_input` then :func:`process`; nothing is written."""
    settings = settings or PipelineSettings()
    check_device(settings.inference.device)
    stages = _Stages(progress, cancel)
    with stages.stage("read"):
        loaded = load_input(path, settings)
    return process(loaded, settings, progress, cancel, figure=figure, _stages=stages)


def output_paths(path, out_dir) -> dict:
    """``{kind: Path}`` of the files :func:`run_file` writes for input ``path`` into ``out_dir``.

    Examples
    --------
    >>> output_paths("data/cell1.csv", "out")["rate"].as_posix()
    'out/cell1_rate.tif'
    """
    stem = Path(path).stem
    return {kind: Path(out_dir) / f"{stem}{suffix}" for kind, suffix in OUTPUT_KINDS.items()}


def check_out_dir(out_dir) -> Path:
    """``out_dir`` as a Path, checked before any work: a folder (or creatable) and writable.

    Raises :class:`~chromflow.errors.OutputError` when it is a file, lies under a file, or
    cannot be written. Nothing is created.
    """
    out_dir = Path(out_dir)
    probe = out_dir
    while not probe.exists():  # the nearest existing parent decides whether it can be created
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "the output folder is a file" if probe == out_dir else f"{probe} is a file, not a folder"
        raise OutputError(f"{what}; give a folder with --out", path=out_dir)
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into {'the output folder' if probe == out_dir else probe} "
                          "(permission denied); give another folder with --out", path=out_dir)
    return out_dir


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def sweep_stale_temporaries(out_dir, stem: str | None = None) -> int:
    """Remove temporary folders that killed runs left in ``out_dir``; return how many.

    :func:`write_outputs` names its temporary folder ``.<stem>.<pid>.<random>.chromflow-tmp``;
    a folder whose process is gone (``kill -9``, a power cut) is stale and removed. With
    ``stem``, only the folders of that input are looked at. Folders of running processes,
    and folders of another machine's process (same pid space unknown), are left alone unless
    their process id does not exist here.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return 0
    removed = 0
    pattern = f".{stem}.*{TEMP_SUFFIX}" if stem is not None else f".*{TEMP_SUFFIX}"
    for path in out_dir.glob(pattern):
        parts = path.name[: -len(TEMP_SUFFIX)].rsplit(".", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            continue  # not a name this version writes
        if stem is not None and parts[0] != f".{stem}":
            continue
        if not _pid_alive(int(parts[1])) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def write_outputs(run: PipelineRun, out_dir, overwrite: bool = True, cancel: CancelToken = None) -> dict:
    """Write every output of ``run`` into ``out_dir``, all or nothing.

    The files are first written into a hidden temporary folder inside ``out_dir``; only when
    all of them exist are they moved (``os.replace``, atomic per file) to their final names.
    On any error the temporary folder is removed (and ``out_dir`` too, if this call created
    it and it is empty); an operating-system error (disk full, permission denied) becomes an
    :class:`~chromflow.errors.OutputError`. Temporary folders of earlier, killed runs on the
    same input are removed first (:func:`sweep_stale_temporaries`).

    Returns
    -------
    dict
        ``{kind: Path}`` as :func:`output_paths`.
    """
    from .io import write_image

    started = time.perf_counter()
    final = output_paths(run.loaded.source, out_dir)
    if not overwrite:
        existing = [str(p) for p in final.values() if p.exists()]
        if existing:
            raise InputError(f"outputs exist already ({', '.join(existing)}); pass overwrite=True", path=out_dir)
    out_dir = check_out_dir(out_dir)
    stem = Path(run.loaded.source).stem
    created_dirs = []  # the folders this call creates, deepest last
    probe = out_dir
    while not probe.exists():
        created_dirs.append(probe)
        probe = probe.parent
    moved = []
    tmp_dir = None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        sweep_stale_temporaries(out_dir, stem)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{stem}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=out_dir))
        tmp = {kind: tmp_dir / p.name for kind, p in final.items()}
        result = run.result
        # maps on the rate's grid, besides the rate: kind -> (values, layer name, units). Never an
        # all-NaN file: an uncertainty switched off, or a ratio that could not be made, is left out
        maps = {"rate": (result.rate, "rate", "Gamma_me / Gamma_ac"),
                "uncertainty": (result.uncertainty, "uncertainty", "Gamma_me / Gamma_ac"),
                "ratio": (result.ratio, "smoothed phi_h / phi_e (no physics)", "dimensionless, compare with lambda")}
        missing = [kind for kind, (values, _, _) in maps.items()
                   if kind != "rate" and not np.isfinite(np.asarray(values, dtype=float)).any()]
        for kind in missing:
            del maps[kind], tmp[kind]
        density = run.loaded.density
        # float32: the ImageJ flavour of TIFF, which Fiji opens with its calibration
        write_image(Image(np.asarray(density.data, dtype=np.float32), pixel_size=density.pixel_size,
                          origin=density.origin, name=density.name), tmp["density"])
        write_image(Image(np.asarray(run.mask, dtype=bool), pixel_size=density.pixel_size, origin=density.origin,
                          name=f"{density.name} mask", metadata={"units": "True inside the nucleus"}), tmp["mask"])
        spacing = float(np.atleast_1d(result.spacing)[0])
        origin = tuple(float(o) for o in result.origin)
        for kind, (values, name, units) in maps.items():
            write_image(Image(np.asarray(values, dtype=np.float32), pixel_size=spacing, origin=origin,
                              name=name, metadata={"units": units}), tmp[kind])
        result.save(tmp["result"])
        figure = run.figure
        if figure is None:
            from .report import make_report

            figure = make_report(density, run.mask, result, title=Path(run.loaded.source).name)
        figure.savefig(tmp["report"], format="png")
        # the summary is written last so that it can carry the time spent writing
        timings = dict(run.timings, write=time.perf_counter() - started)
        run.summary.update(time_write_s=round(timings["write"], 4),
                           time_total_s=round(float(sum(timings.values())), 4), out_dir=str(out_dir))
        summary = dict(run.summary)
        tmp["summary"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        check_cancel(cancel, "writing outputs")
        for kind, path in tmp.items():
            if not path.exists():
                raise ChromflowError(f"internal: output {path.name} was not written", path=out_dir)
        for kind, path in tmp.items():
            os.replace(path, final[kind])
            moved.append(final[kind])
        for kind in missing:
            # such a map of an earlier run would no longer match this rate map
            with contextlib.suppress(FileNotFoundError):
                final[kind].unlink()
            final.pop(kind)
    except BaseException as exc:
        # a failure while moving (rare: the folder vanished) -> take back what was moved
        for p in moved:
            with contextlib.suppress(OSError):
                p.unlink()
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        for folder in created_dirs:  # deepest first; only if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(exc, OSError):
            what = exc.strerror or str(exc) or type(exc).__name__
            raise OutputError(f"cannot write the outputs ({what}); nothing was written", path=out_dir) from None
        raise
    shutil.rmtree(tmp_dir, ignore_errors=True)
    return final


def run_file(path, out_dir, settings: PipelineSettings | None = None, progress: ProgressCallback = None,
             cancel: CancelToken = None, overwrite: bool = True) -> dict:
    """Run the whole pipeline on one file and write its outputs; return the summary row.

    Reads the input (localizations are rendered, TIFFs read), segments the nucleus, builds
    the chromatin fields, infers the rate map, draws the report and then writes all outputs
    at once (see the module docstring for the list). Any error or a cancel before the end
    leaves no new file in ``out_dir``.

    Parameters
    ----------
    path : str or os.PathLike
        Input file (see :func:`load_input`).
    out_dir : str or os.PathLike
        Output folder (created if needed).
    settings : PipelineSettings, optional
        Defaults to ``PipelineSettings()``.
    progress : callable, optional
        ``progress(done, total, message)`` with ``total == 100``.
    cancel : callable or threading.Event, optional
        When it reports true, the run stops with :class:`~chromflow.errors.CancelledError`.
    overwrite : bool
        If False, raise :class:`~chromflow.errors.InputError` when an output exists.

    Returns
    -------
    dict
        The summary row (:func:`summarize`) plus ``out_dir``.

    Raises
    ------
    InputError, SegmentationError, GridError, CancelledError
        Bad input, no usable nucleus, a grid too small for the kernel, or a cancel.

    Examples
    --------
    >>> row = run_file("cell.csv", "out/")          # doctest: +SKIP
    >>> row["status"], row["mean_rate"]             # doctest: +SKIP
    ('ok', 1.21)
    """
    settings = (settings or PipelineSettings()).validate()
    check_out_dir(out_dir)  # before the work, not after it
    check_device(settings.inference.device)
    if not overwrite:
        existing = [str(p) for p in output_paths(path, out_dir).values() if p.exists()]
        if existing:
            raise InputError(f"outputs exist already ({', '.join(existing)}); pass overwrite=True", path=out_dir)
    stages = _Stages(progress, cancel)
    with stages.stage("read"):
        loaded = load_input(path, settings)
    run = process(loaded, settings, progress, cancel, figure=True, _stages=stages)
    with stages.stage("write"):
        write_outputs(run, out_dir, overwrite=overwrite, cancel=cancel)
    return run.summary
