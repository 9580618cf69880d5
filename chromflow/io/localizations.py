"""Read and write single-molecule localization tables (ThunderSTORM CSV, Picasso HDF5, plain CSV).

Every reader returns a :class:`pandas.DataFrame` with the standard chromflow columns

====================  ==========================================================
``x``, ``y``          position in nm (float64); origin = centre of camera pixel (0, 0)
``z``                 axial position in nm (only when the file has one)
``frame``             camera frame (int64), kept as written (ThunderSTORM counts from 1,
                      Picasso from 0)
``photons``           detected photons of the localization
``sigma``             PSF width (standard deviation) in nm
``uncertainty``       lateral localization precision in nm
``channel``           channel / probe label (int or str), when the file has one
====================  ==========================================================

followed by every other column of the file under its lower-case name (``chi2``, ``offset``,
``bg``, ``lpx`` ...), lengths converted to nm. ``df.attrs`` holds ``source`` (the path),
``format`` and ``pixel_size`` (nm, or ``None`` when the format does not need one).
See ``docs/formats.md`` for the quirks of each format.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from .._validate import check_input_file, check_pixel_size
from ._atomic import atomic_path

__all__ = ["read_localizations", "write_localizations", "sniff_localizations", "STANDARD_COLUMNS",
           "LENGTH_UNITS_NM"]

#: Standard columns, in the order readers put them first.
STANDARD_COLUMNS = ("x", "y", "z", "frame", "photons", "sigma", "uncertainty", "channel")

# Standard columns that are lengths (converted to nm) and that must be numeric.
_LENGTH_COLUMNS = ("x", "y", "z", "sigma", "uncertainty")
_NUMERIC_COLUMNS = ("x", "y", "z", "frame", "photons", "sigma", "uncertainty")

#: Length units understood in headers and in ``units=``, as nm per unit. ``px`` is special:
#: it needs the pixel size.
LENGTH_UNITS_NM = {
    "nm": 1.0, "nanometer": 1.0, "nanometers": 1.0, "nanometre": 1.0, "nanometres": 1.0,
    "um": 1000.0, "\u00b5m": 1000.0, "\u03bcm": 1000.0, "micron": 1000.0, "microns": 1000.0,
    "micrometer": 1000.0, "micrometers": 1000.0, "micrometre": 1000.0, "micrometres": 1000.0,
    "mm": 1.0e6, "m": 1.0e9, "a": 0.1, "\u00c5": 0.1, "angstrom": 0.1,
}
_PIXEL_UNITS = {"px", "pix", "pixel", "pixels", "camera pixel", "camera pixels"}

_FORMATS = ("auto", "thunderstorm", "picasso", "csv")

# ThunderSTORM's own column names -> chromflow names (the unit in brackets is parsed apart).
_THUNDERSTORM_NAMES = {
    "intensity": "photons",
    "uncertainty": "uncertainty",
    "uncertainty_xy": "uncertainty",
}

# Plain CSV: normalised header name (lower case, no spaces/underscores/dashes/dots) -> standard.
_CSV_ALIASES = {
    "x": ("x", "xpos", "posx", "positionx", "xposition", "xcoord", "xcoordinate", "xcenter",
          "xcentre", "xc", "x0"),
    "y": ("y", "ypos", "posy", "positiony", "yposition", "ycoord", "ycoordinate", "ycenter",
          "ycentre", "yc", "y0"),
    "z": ("z", "zpos", "posz", "positionz", "zposition", "zcoord", "zcoordinate", "zc", "z0"),
    "frame": ("frame", "frames", "framenumber", "frameindex", "frameid", "frameno", "framenr"),
    "photons": ("photons", "photon", "intensity", "photoncount", "nphotons", "numphotons"),
    "sigma": ("sigma", "psfsigma", "psfwidth", "sigmaxy"),
    "uncertainty": ("uncertainty", "uncertaintyxy", "precision", "locprecision",
                    "localizationprecision", "localisationprecision", "lp"),
    "channel": ("channel", "ch", "probe"),
}
_CSV_ALIAS_LOOKUP = {alias: std for std, aliases in _CSV_ALIASES.items() for alias in aliases}

# "x [nm]", "x (nm)", "x_nm", "x nm"-style headers: name and unit apart.
_BRACKET_UNIT = re.compile(r"^(?P<name>.*?)\s*[\[(]\s*(?P<unit>[^\])]*?)\s*[\])]\s*$")
_SUFFIX_UNIT = re.compile(r"^(?P<name>.*?)[ _](?P<unit>nm|um|\u00b5m|\u03bcm|px|pix|pixels?|microns?)$",
                          re.IGNORECASE)


# Where the reader's options are set, named in error messages (API, command line, config file).
_COLUMNS_HINT = ("map them with columns={'x': NAME, 'y': NAME} (command line: --columns x=NAME,y=NAME; "
                 "config: render.columns)")
_PIXEL_HINT = "pixel_size= (command line: --camera-pixel-size NM; config: render.camera_pixel_size)"
_UNITS_HINT = "set the unit with units= (command line: --units; config: render.units)"


# ----------------------------------------------------------------------------- helpers
def _normalise_unit(unit: str) -> str:
    return unit.strip().strip('"').strip().lower() if unit is not None else ""


def _unit_factor(unit: str, column: str, pixel_size: float | None, path) -> float:
    """nm per ``unit`` for a length column; raise a clear error for px without a pixel size."""
    u = _normalise_unit(unit)
    if u in ("", "nm"):
        return 1.0
    if u in LENGTH_UNITS_NM:
        return LENGTH_UNITS_NM[u]
    if u.lower() in {k.lower() for k in LENGTH_UNITS_NM}:
        return {k.lower(): v for k, v in LENGTH_UNITS_NM.items()}[u.lower()]
    if u in _PIXEL_UNITS:
        if pixel_size is None:
            raise InputError(f"column {column!r} is in camera pixels ({unit!r}); give the camera pixel size "
                             f"to convert it to nm: {_PIXEL_HINT}", path)
        return float(pixel_size)
    raise InputError(f"unknown length unit {unit!r} for column {column!r}; known units: nm, um "
                     f"(\u00b5m, micron), mm, m, px (with the camera pixel size); {_UNITS_HINT}", path)



def _read_head(path: Path, nbytes: int = 65536) -> str:
    with open(path, "rb") as fh:
        raw = fh.read(nbytes)
    return raw.decode("utf-8-sig", errors="replace")


def _first_line(path: Path) -> str:
    head = _read_head(path)
    line = head.splitlines()[0] if head.strip() else ""
    return line


def _delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in (",", "\t", ";")}
    best = max(counts, key=counts.get)
    if counts[best] == 0:
        # one column, or whitespace-separated: let the C parser split on runs of blanks
        return r"\s+"
    return best


def _split_header(header_line: str, sep: str) -> list[str]:
    # Quotes in headers are sometimes mangled (a whole header line quoted as one field with doubled
    # inner quotes); names never contain quotes or separators, so drop the quotes and split.
    line = header_line.replace('"', "").replace("'", "")
    parts = re.split(sep, line.strip()) if sep == r"\s+" else line.split(sep)
    return [p.strip() for p in parts]


def _read_table(path: Path, sep: str, names: list[str]) -> pd.DataFrame:
    """Read the data rows (after one header line) with the pandas C parser."""
    try:
        df = pd.read_csv(path, sep=sep, skiprows=1, header=None, names=names, engine="c",
                         skipinitialspace=True, encoding="utf-8-sig", index_col=False,
                         on_bad_lines="error")
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=names)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"cannot parse as a delimited table ({exc})", path) from None
    if len(df):
        _check_last_line(path, sep, len(names))
    return df


def _check_last_line(path: Path, sep: str, n_fields: int) -> None:
    """Refuse a file whose last line has fewer fields than the header: a truncated file.

    pandas fills the missing fields with NaN and reads a number cut in the middle as a valid
    one (``3183`` of ``31836.993``), so the row would pass silently.
    """
    import csv

    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 65536))
        tail = fh.read().decode("utf-8", errors="replace")
    lines = [line for line in tail.splitlines() if line.strip()]
    if not lines:
        return
    last = lines[-1]
    if sep == r"\s+":
        fields = last.split()
    else:
        fields = next(csv.reader([last], delimiter=sep))
    if len(fields) < n_fields:
        ends = "" if tail.endswith(("\n", "\r")) else " and no line end"
        raise InputError(f"the last line has {len(fields)} of {n_fields} fields{ends}: the file looks truncated "
                         "(an interrupted copy or export?); export it again, or delete its last line", path)


def _unique_names(names: list[str], path) -> list[str]:
    seen = set()
    for n in names:
        if n in seen:
            raise InputError(f"column {n!r} appears twice in the header", path)
        seen.add(n)
    return names


def _coerce_numeric(df: pd.DataFrame, path) -> None:
    for col in _NUMERIC_COLUMNS:
        if col not in df.columns or pd.api.types.is_numeric_dtype(df[col]):
            continue
        if pd.api.types.is_bool_dtype(df[col]):
            raise InputError(f"column {col!r} is boolean, expected numbers", path)
        converted = pd.to_numeric(df[col], errors="coerce")
        bad = converted.isna() & df[col].notna()
        if bad.any():
            first = df[col][bad].iloc[0]
            raise InputError(f"column {col!r} has {int(bad.sum())} non-numeric value(s) "
                             f"(first: {first!r})", path)
        df[col] = converted


def _finalise(df: pd.DataFrame, path, fmt: str, pixel_size, on_invalid: str) -> pd.DataFrame:
    """Common checks and dtypes for every reader; standard columns first."""
    missing = [c for c in ("x", "y") if c not in df.columns]
    if missing:
        raise InputError(f"no {' or '.join(missing)} column found; columns found: "
                         f"{list(df.columns)}; {_COLUMNS_HINT}", path)
    _coerce_numeric(df, path)
    if len(df) == 0:
        raise InputError("file has no localizations (header only)", path)

    coords = [c for c in ("x", "y", "z") if c in df.columns]
    values = df[coords].to_numpy(dtype=np.float64)
    invalid = ~np.isfinite(values).all(axis=1)
    n_invalid = int(invalid.sum())
    if n_invalid:
        if on_invalid == "drop":
            df = df.loc[~invalid].reset_index(drop=True)
            if len(df) == 0:
                raise InputError(f"all {n_invalid} rows have NaN/inf coordinates", path)
        else:
            raise InputError(f"{n_invalid} row(s) have NaN or infinite coordinates "
                             f"({', '.join(coords)}); remove those rows from the file (in Python: "
                             "read_localizations(..., on_invalid='drop') skips them)", path)

    for col in ("x", "y", "z", "photons", "sigma", "uncertainty"):
        if col in df.columns:
            df[col] = df[col].astype(np.float64)
    if "frame" in df.columns:
        frame = df["frame"].to_numpy(dtype=np.float64)
        if not np.isfinite(frame).all():
            raise InputError(f"column 'frame' has {int((~np.isfinite(frame)).sum())} missing or "
                             "non-finite value(s)", path)
        if not np.array_equal(frame, np.round(frame)):
            if fmt == "picasso" and ({"n", "std_frame"} & set(df.columns) or "group" in df.columns):
                # Picasso "link" / "pick" / clustering: a row merges several localizations and
                # 'frame' is their mean frame; keep it, under a name that says so
                df = df.rename(columns={"frame": "frame_mean"})
            else:
                raise InputError("column 'frame' has non-integer values (a camera frame is a whole number)", path)
        else:
            df["frame"] = frame.astype(np.int64)
    for col in ("channel", "id"):  # labels written as 1.0, 2.0 ... by some exporters
        if col in df.columns and pd.api.types.is_float_dtype(df[col]):
            values = df[col].to_numpy()
            if np.isfinite(values).all() and np.array_equal(values, np.round(values)):
                df[col] = values.astype(np.int64)

    order = [c for c in STANDARD_COLUMNS if c in df.columns]
    order += [c for c in df.columns if c not in order]
    # a new frame that shares the columns (pandas' copy-on-write copies a column only when it
    # is written): a deep copy here took ~0.5 s for 1e6 rows, mostly consolidating the blocks
    df = df[order]
    df.attrs = {"source": str(path), "format": fmt, "pixel_size": pixel_size}
    return df


def _apply_unit_overrides(units, path) -> dict:
    """``units=`` as a dict standard column -> unit; a single string applies to every length."""
    if units is None:
        return {}
    if isinstance(units, str):
        return {c: units for c in _LENGTH_COLUMNS}
    if not isinstance(units, dict):
        raise InputError(f"units must be a unit string or a dict column -> unit, got {units!r}", path)
    return {str(k): v for k, v in units.items()}


# ----------------------------------------------------------------------------- ThunderSTORM
def _parse_bracket_header(name: str) -> tuple[str, str | None]:
    m = _BRACKET_UNIT.match(name)
    if m:
        return m.group("name").strip(), m.group("unit").strip()
    return name.strip(), None


def _read_thunderstorm(path: Path, columns, units, pixel_size, on_invalid) -> pd.DataFrame:
    header = _first_line(path)
    sep = _delimiter(header)
    raw_names = _split_header(header, sep)
    parsed = [_parse_bracket_header(n) for n in raw_names]
    names = [n.lower() for n, _ in parsed]
    _unique_names(names, path)
    df = _read_table(path, sep, names)

    unit_of = {n: u for n, (_, u) in zip(names, parsed)}
    overrides = _apply_unit_overrides(units, path)
    rename = {n: _THUNDERSTORM_NAMES.get(n, n) for n in names}
    if columns:  # explicit mapping standard -> file name (with or without the unit part)
        for std, src in columns.items():
            key = _parse_bracket_header(str(src))[0].lower()
            if key not in names:
                raise InputError(f"column {src!r} (for {std!r}) not found; columns found: {raw_names}", path)
            rename[key] = std
    if "uncertainty" in names and "uncertainty_xy" in names:
        rename["uncertainty_xy"] = "uncertainty_xy"  # both present: keep the plain one as standard
    df = df.rename(columns=rename)
    if len(set(df.columns)) != len(df.columns):
        raise InputError(f"columns map onto the same name: {list(df.columns)}", path)

    # Convert every length-like column (anything with a length unit in brackets) to nm.
    for src, dst in rename.items():
        unit = overrides.get(dst, unit_of.get(src))
        if unit is None:
            continue
        u = _normalise_unit(unit)
        is_length = (dst in _LENGTH_COLUMNS or u in LENGTH_UNITS_NM or u in _PIXEL_UNITS
                     or u.lower() in {k.lower() for k in LENGTH_UNITS_NM})
        if not is_length:
            continue  # photon, ADU, ... : values kept as they are
        factor = _unit_factor(unit, dst, pixel_size, path)
        if factor != 1.0:
            _coerce_numeric_one(df, dst, path)
            df[dst] = df[dst] * factor
    if "sigma" not in df.columns and {"sigma1", "sigma2"} <= set(df.columns):
        # astigmatic 3D fits report two widths; their mean is the lateral PSF width
        df["sigma"] = (pd.to_numeric(df["sigma1"]) + pd.to_numeric(df["sigma2"])) / 2.0
    return _finalise(df, path, "thunderstorm", pixel_size, on_invalid)


def _coerce_numeric_one(df, col, path):
    if not pd.api.types.is_numeric_dtype(df[col]):
        converted = pd.to_numeric(df[col], errors="coerce")
        bad = converted.isna() & df[col].notna()
        if bad.any():
            raise InputError(f"column {col!r} has {int(bad.sum())} non-numeric value(s) "
                             f"(first: {df[col][bad].iloc[0]!r})", path)
        df[col] = converted


# ----------------------------------------------------------------------------- plain CSV
def _csv_name_and_unit(name: str) -> tuple[str, str | None]:
    base, unit = _parse_bracket_header(name)
    if unit is None:
        m = _SUFFIX_UNIT.match(base)
        if m:
            base, unit = m.group("name"), m.group("unit")
    return base, unit


def _normalised(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", name.lower())


def _read_plain_csv(path: Path, columns, units, pixel_size, on_invalid) -> pd.DataFrame:
    header = _first_line(path)
    sep = _delimiter(header)
    raw_names = _split_header(header, sep)
    _unique_names(raw_names, path)
    df = _read_table(path, sep, raw_names)
    overrides = _apply_unit_overrides(units, path)

    rename: dict[str, str] = {}
    unit_of: dict[str, str | None] = {}
    if columns:
        for std, src in columns.items():
            if src not in raw_names:
                matches = [n for n in raw_names if n.lower() == str(src).lower()]
                if not matches:
                    raise InputError(f"column {src!r} (for {std!r}) not found; columns found: "
                                     f"{raw_names}", path)
                src = matches[0]
            rename[src] = std
            unit_of[std] = _csv_name_and_unit(src)[1]
    taken = set(rename.values())
    for name in raw_names:
        if name in rename:
            continue
        base, unit = _csv_name_and_unit(name)
        std = _CSV_ALIAS_LOOKUP.get(_normalised(base))
        if std is not None and std not in taken:
            rename[name] = std
            unit_of[std] = unit
            taken.add(std)
        else:
            # keep it, lower case; "sx [nm]" style names lose nothing useful but the brackets
            rename[name] = name.lower()
    df = df.rename(columns=rename)
    if len(set(df.columns)) != len(df.columns):
        raise InputError(f"several columns map onto the same name: {list(df.columns)}", path)
    for col in _LENGTH_COLUMNS:
        if col not in df.columns:
            continue
        unit = overrides.get(col, unit_of.get(col))
        factor = _unit_factor(unit or "nm", col, pixel_size, path)
        if factor != 1.0:
            _coerce_numeric_one(df, col, path)
            df[col] = df[col] * factor
    return _finalise(df, path, "csv", pixel_size, on_invalid)


# ----------------------------------------------------------------------------- Picasso
def _yaml_loader():
    import yaml

    class _Lenient(yaml.SafeLoader):
        """SafeLoader that turns unknown tags (Picasso writes some python ones) into plain data."""

    def _any_tag(loader, tag_suffix, node):
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    _Lenient.add_multi_constructor("", _any_tag)
    return _Lenient


def _pixelsize_from_documents(documents) -> float | None:
    """The last ``Pixelsize`` found in a list of YAML documents (Picasso appends one per step)."""
    found = None
    for doc in documents:
        if isinstance(doc, dict) and doc.get("Pixelsize") is not None:
            found = doc["Pixelsize"]
    return found


def _picasso_yaml_pixel_size(yaml_path: Path):
    import yaml

    if not yaml_path.is_file():
        return None
    try:
        with open(yaml_path, encoding="utf-8") as fh:
            documents = list(yaml.load_all(fh, Loader=_yaml_loader()))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot parse the Picasso metadata file ({exc})", yaml_path) from None
    return _pixelsize_from_documents(documents)


def _picasso_hdf5_pixel_size(h5) -> float | None:
    """Pixel size from newer Picasso files that keep the metadata inside the HDF5."""
    import h5py
    import yaml

    found = None
    for obj in (h5, h5.get("locs")):
        if obj is not None and "Pixelsize" in obj.attrs:
            found = obj.attrs["Pixelsize"]
    meta = h5.get("metadata")
    if meta is None:
        return None if found is None else float(np.asarray(found).ravel()[0])
    if "Pixelsize" in meta.attrs:
        found = meta.attrs["Pixelsize"]
    if isinstance(meta, h5py.Dataset):
        value = meta[()]
        items = value.ravel().tolist() if isinstance(value, np.ndarray) else [value]
        documents = []
        for item in items:
            if isinstance(item, bytes):
                item = item.decode("utf-8", errors="replace")
            if isinstance(item, str):
                try:
                    documents.extend(yaml.load_all(item, Loader=_yaml_loader()))
                except yaml.YAMLError:
                    continue
        value = _pixelsize_from_documents(documents)
        found = value if value is not None else found
    elif isinstance(meta, h5py.Group):
        for key in sorted(meta.keys()):
            sub = meta[key]
            if "Pixelsize" in sub.attrs:
                found = sub.attrs["Pixelsize"]
        if "Pixelsize" in meta and isinstance(meta["Pixelsize"], h5py.Dataset):
            found = meta["Pixelsize"][()]
    if found is None:
        return None
    return float(np.asarray(found).ravel()[0])


def _picasso_group_table(group, path) -> pd.DataFrame:
    """Old Picasso/pandas files store ``/locs`` as a pandas (PyTables) group: read it without PyTables."""
    import h5py

    if "table" in group and isinstance(group["table"], h5py.Dataset) and group["table"].dtype.names:
        table = group["table"][()]
        data = {}
        for name in table.dtype.names:
            if name == "index":
                continue
            col = table[name]
            if col.ndim == 2:  # values_block_N: several columns in one block, names in the attrs
                kind = group["table"].attrs.get(f"{name}_kind")
                labels = _pytables_block_names(kind, col.shape[1])
                if labels is None:
                    raise InputError("Picasso/pandas table layout with unnamed value blocks is not "
                                     "supported; re-save the file from Picasso", path)
                for j, label in enumerate(labels):
                    data[label] = col[:, j]
            else:
                data[name] = col
        return pd.DataFrame(data)
    blocks = sorted(k for k in group.keys() if re.fullmatch(r"block\d+_items", k))
    if blocks:  # pandas "fixed" format
        data = {}
        for items_key in blocks:
            items = [i.decode() if isinstance(i, bytes) else str(i) for i in group[items_key][()]]
            values = group[items_key.replace("_items", "_values")][()]
            values = values.reshape(len(values), -1) if values.ndim == 1 else values
            if values.shape[1] != len(items):
                values = values.T
            for j, name in enumerate(items):
                data[name] = values[:, j]
        return pd.DataFrame(data)
    raise InputError(f"'/locs' is a group with an unknown layout (members: {list(group.keys())})", path)


def _pytables_block_names(kind, ncols):
    # PyTables stores the block's column names pickled; only plain, unpickled lists are accepted
    if kind is None:
        return None
    try:
        names = [k.decode() if isinstance(k, bytes) else str(k) for k in np.asarray(kind).ravel()]
    except Exception:
        return None
    return names if len(names) == ncols else None


def _read_picasso(path: Path, columns, units, pixel_size, on_invalid) -> pd.DataFrame:
    import h5py

    if units is not None:
        raise InputError("a length unit (units=, --units, config render.units) does not apply to Picasso files: "
                         "x, y, lpx, lpy, sx, sy are in camera pixels (converted with the pixel size; to give it: "
                         f"{_PIXEL_HINT}) and z is in nm", path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"not a readable HDF5 file ({exc})", path) from None
    with h5:
        if "locs" not in h5:
            raise InputError(f"no '/locs' dataset (Picasso localizations); HDF5 members: {list(h5.keys())}",
                             path)
        locs = h5["locs"]
        if isinstance(locs, h5py.Dataset):
            arr = locs[()]
            if arr.dtype.names is None:
                raise InputError("'/locs' is not a table (structured dataset)", path)
            data = {name: arr[name] for name in arr.dtype.names}
            df = pd.DataFrame({k: (v.astype(v.dtype.newbyteorder("=")) if v.dtype.byteorder not in "=|"
                                   else v) for k, v in data.items()})
        else:
            df = _picasso_group_table(locs, path)
        h5_pixel = _picasso_hdf5_pixel_size(h5)

    df.columns = [str(c).lower() for c in df.columns]
    if len(df) == 0 and not {"x", "y"} - set(df.columns):
        raise InputError("file has no localizations (empty '/locs')", path)
    yaml_path = path.with_suffix(".yaml")
    file_pixel = _picasso_yaml_pixel_size(yaml_path)
    if file_pixel is None:
        file_pixel = h5_pixel
    file_pixel = check_pixel_size(file_pixel, yaml_path) if file_pixel is not None else None
    if pixel_size is not None:
        if file_pixel is not None and not math.isclose(file_pixel, pixel_size, rel_tol=1e-9):
            warnings.warn(f"{path}: pixel_size={pixel_size} nm overrides the file's Pixelsize "
                          f"{file_pixel} nm", UserWarning, stacklevel=3)
        ps = pixel_size
    elif file_pixel is not None:
        ps = file_pixel
    else:
        raise InputError(f"Picasso file without a pixel size: the metadata file {yaml_path.name} is "
                         "missing (or has no 'Pixelsize') and the HDF5 has no /metadata; give the camera "
                         f"pixel size in nm: {_PIXEL_HINT}", path)
    if columns:
        rename = {}
        for std, src in columns.items():
            if str(src).lower() not in df.columns:
                raise InputError(f"column {src!r} (for {std!r}) not found; columns found: "
                                 f"{list(df.columns)}", path)
            rename[str(src).lower()] = std
        df = df.rename(columns=rename)

    # Picasso keeps x, y and the per-axis widths/precisions in camera pixels, pixel centres at
    # integers (pixel k spans k-0.5..k+0.5), which is already chromflow's origin: only scale.
    # z is written by Picasso in nm and is left as it is.
    for col in ("x", "y", "lpx", "lpy", "sx", "sy", "std_x", "std_y"):
        if col in df.columns:
            df[col] = df[col].astype(np.float64) * ps
    if "uncertainty" not in df.columns and {"lpx", "lpy"} <= set(df.columns):
        df["uncertainty"] = (df["lpx"] + df["lpy"]) / 2.0
    if "sigma" not in df.columns and {"sx", "sy"} <= set(df.columns):
        df["sigma"] = (df["sx"] + df["sy"]) / 2.0
    if "z" in df.columns:
        df["z"] = df["z"].astype(np.float64)
    return _finalise(df, path, "picasso", ps, on_invalid)


# ----------------------------------------------------------------------------- sniffing
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def sniff_localizations(path, columns=None) -> str | None:
    r"""Why ``path`` is not a localization table, or None when it may be one.

    Looks at the content, not only the suffix, to tell data from the other files of a data
    folder (a ``LICENSE.txt``, a ``README.txt``): an HDF5 file must carry the HDF5 signature;
    a text file is a table when its first line names an x and a y column (ThunderSTORM
    ``"x [nm]"``, ``x``, ``x_nm``, ``X (um)``, or a name given in ``columns``), or when a row
    of as many fields, mostly numbers, follows it. An empty file counts as a (broken) table,
    so that it is reported rather than skipped. Reads at most 64 kB.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "LICENSE.txt").write_text("MIT License\n\nCopyright (c) 2024\n")
    >>> sniff_localizations(d / "LICENSE.txt")
    'text, not a table (no x and y columns, no rows of numbers)'
    >>> _ = (d / "locs.csv").write_text('"x [nm]","y [nm]"\n1,2\n')
    >>> sniff_localizations(d / "locs.csv") is None
    True
    """
    path = Path(os.fspath(path))
    try:
        with open(path, "rb") as fh:
            raw = fh.read(65536)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if path.suffix.lower() in (".hdf5", ".h5", ".hdf"):
        return None if raw.startswith(_HDF5_SIGNATURE) else "not an HDF5 file"
    if not raw.strip():
        return None  # an empty export: an input that fails, with its own message
    if b"\x00" in raw:
        return "binary content, not a text table"
    lines = [line for line in raw.decode("utf-8-sig", errors="replace").splitlines() if line.strip()]
    header = lines[0]
    sep = _delimiter(header)
    names = _split_header(header, sep)
    if len(names) >= 2 and len(lines) > 1 and _numeric_row(lines[1], sep, len(names)):
        return None  # a header, then a row of numbers under it: a table, whatever its names
    wanted = {str(v).lower() for k, v in (columns or {}).items() if k in ("x", "y")}
    found = set()
    for name in names:
        base = _parse_bracket_header(name)[0]
        if name.lower() in wanted or base.lower() in wanted:
            found.add(name.lower())
            continue
        std = _CSV_ALIAS_LOOKUP.get(_normalised(_csv_name_and_unit(name)[0])) or _CSV_ALIAS_LOOKUP.get(
            _normalised(base))
        if std in ("x", "y"):
            found.add(std)
    if len(found) >= 2:
        return None
    return "text, not a table (no x and y columns, no rows of numbers)"


def _numeric_row(line: str, sep: str, n_fields: int) -> bool:
    """True when ``line`` has ``n_fields`` fields, most of them numbers."""
    fields = line.split() if sep == r"\s+" else line.replace('"', "").split(sep)
    if len(fields) != n_fields:
        return False
    numbers = 0
    for field in fields:
        try:
            float(field)
            numbers += 1
        except ValueError:
            pass
    return numbers * 2 >= n_fields


# ----------------------------------------------------------------------------- public API
def _detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".hdf5", ".h5", ".hdf"):
        return "picasso"
    if suffix in (".csv", ".tsv", ".txt", ".xls", ".dat", ""):
        header = _first_line(path)
        return "thunderstorm" if re.search(r"\[[^\]]+\]", header) else "csv"
    raise InputError(f"cannot tell the format from the suffix {suffix!r}; pass format="
                     "'thunderstorm', 'picasso' or 'csv'", path)


def read_localizations(path, format="auto", columns=None, units=None, pixel_size=None,
                       on_invalid="raise") -> pd.DataFrame:
    """Read a localization table into a DataFrame with positions in nm.

    Parameters
    ----------
    path : str or os.PathLike
        ThunderSTORM CSV (comma or tab separated), Picasso ``.hdf5`` (with its ``.yaml``), or a
        plain delimited table.
    format : {"auto", "thunderstorm", "picasso", "csv"}
        ``"auto"``: ``.hdf5``/``.h5`` -> Picasso; ``.csv``/``.tsv``/``.txt`` -> ThunderSTORM when
        the header carries bracketed units (``"x [nm]"``), else plain CSV.
    columns : dict, optional
        Standard name -> name in the file, e.g. ``{"x": "X_pos", "y": "Y_pos"}``. Unmapped
        columns are recognised by common names (``x``, ``x_nm``, ``"x (nm)"``, ``X`` ...).
    units : str or dict, optional
        Length unit of the coordinates (``"nm"``, ``"um"``, ``"px"`` ...): one string for every
        length column, or ``{"x": "um", ...}``. Overrides units found in the header. Plain CSV
        columns without a unit are taken as nm.
    pixel_size : float, optional
        Camera pixel size in nm: needed for ``px`` units, and for a Picasso file whose ``.yaml``
        is missing (given, it overrides the file's ``Pixelsize``, with a warning if they differ).
    on_invalid : {"raise", "drop"}
        What to do with rows whose coordinates are NaN or infinite.

    Returns
    -------
    pandas.DataFrame
        Columns ``x, y`` (nm, float64) and, when present, ``z, frame, photons, sigma,
        uncertainty, channel``, then the file's other columns (lower case). ``df.attrs`` has
        ``source``, ``format`` and ``pixel_size`` (nm or ``None``).

    Raises
    ------
    chromflow.errors.InputError
        Missing or empty file, no x/y column, NaN coordinates, unknown unit, non-numeric
        values, bad pixel size; the message starts with the path.

    Examples
    --------
    >>> import chromflow as cf
    >>> locs = cf.read_localizations("cell_locs.hdf5")          # doctest: +SKIP
    >>> locs[["x", "y", "uncertainty"]].describe()               # doctest: +SKIP
    >>> locs = cf.read_localizations("table.csv", columns={"x": "X_pos", "y": "Y_pos"},
    ...                              units="um")                 # doctest: +SKIP
    """
    path = Path(os.fspath(path))
    if format not in _FORMATS:
        raise InputError(f"unknown format {format!r}; choose one of {_FORMATS}", path)
    if on_invalid not in ("raise", "drop"):
        raise InputError(f"on_invalid must be 'raise' or 'drop', got {on_invalid!r}", path)
    check_input_file(path, "a localization file")
    pixel_size = check_pixel_size(pixel_size, path)
    if columns is not None and not isinstance(columns, dict):
        raise InputError(f"columns must be a dict standard name -> file column, got {columns!r}", path)
    if format == "auto":
        format = _detect_format(path)
    if format in ("thunderstorm", "csv") and not _read_head(path).strip():
        raise InputError("file is empty", path)
    reader = {"thunderstorm": _read_thunderstorm, "picasso": _read_picasso,
              "csv": _read_plain_csv}[format]
    return reader(path, columns, units, pixel_size, on_invalid)


# ----------------------------------------------------------------------------- writers
_TS_UNITS = {"x": "x [nm]", "y": "y [nm]", "z": "z [nm]", "sigma": "sigma [nm]",
             "photons": "intensity [photon]", "offset": "offset [photon]",
             "bkgstd": "bkgstd [photon]", "uncertainty": "uncertainty [nm]",
             "uncertainty_xy": "uncertainty_xy [nm]", "uncertainty_z": "uncertainty_z [nm]",
             "sigma1": "sigma1 [nm]", "sigma2": "sigma2 [nm]"}
_TS_ORDER = ("id", "frame", "x", "y", "z", "sigma", "sigma1", "sigma2", "photons", "offset",
             "bkgstd", "chi2", "uncertainty", "uncertainty_xy", "uncertainty_z")


def _check_table(df, path) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"expected a pandas DataFrame, got {type(df).__name__}", path)
    missing = [c for c in ("x", "y") if c not in df.columns]
    if missing:
        raise InputError(f"table has no {' or '.join(missing)} column; columns: {list(df.columns)}", path)
    bad = [c for c in df.columns if any(ch in str(c) for ch in '",\t\n\r')]
    if bad:
        raise InputError(f"column names with quotes, commas, tabs or newlines cannot be written: {bad}",
                         path)
    return df


def _write_thunderstorm(df: pd.DataFrame, path: Path) -> None:
    cols = [c for c in _TS_ORDER if c in df.columns] + [c for c in df.columns if c not in _TS_ORDER]
    header = ",".join(f'"{_TS_UNITS.get(c, c)}"' for c in cols)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(header + "\n")
            _write_csv_body(df[cols], fh)


def _write_csv_body(df: pd.DataFrame, fh, chunk_rows: int = 250_000) -> None:
    """Data rows, comma separated, floats as their shortest exact repr (read back bit for bit)."""
    numeric = all(pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c])
                  for c in df.columns)
    if not numeric:  # text columns may need quoting: let pandas do it (same float repr, slower)
        df.to_csv(fh, header=False, index=False, lineterminator="\n")
        return
    # repr of Python floats is the shortest round-trip form; joining columns by hand is about
    # twice as fast as DataFrame.to_csv for millions of rows
    for start in range(0, len(df), chunk_rows):
        part = df.iloc[start:start + chunk_rows]
        cols = [list(map(repr if part[c].dtype.kind == "f" else str, part[c].tolist()))
                for c in part.columns]
        fh.write("\n".join(map(",".join, zip(*cols))))
        fh.write("\n")


def _write_plain_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(",".join(str(c) for c in df.columns) + "\n")
            _write_csv_body(df, fh)


def _write_picasso(df: pd.DataFrame, path: Path, pixel_size: float) -> None:
    import h5py
    import yaml

    from .. import __version__

    n = len(df)
    fields: list[tuple[str, np.ndarray]] = []

    def px(values):
        return np.asarray(values, dtype=np.float64) / pixel_size

    frame = df["frame"].to_numpy() if "frame" in df.columns else np.zeros(n)
    fields.append(("frame", np.asarray(frame, dtype=np.uint32)))
    fields.append(("x", px(df["x"]).astype(np.float32)))
    fields.append(("y", px(df["y"]).astype(np.float32)))
    if "photons" in df.columns:
        fields.append(("photons", df["photons"].to_numpy(np.float32)))
    for axis in ("sx", "sy"):
        src = axis if axis in df.columns else ("sigma" if "sigma" in df.columns else None)
        if src is not None:
            fields.append((axis, px(df[src]).astype(np.float32)))
    if "bg" in df.columns:
        fields.append(("bg", df["bg"].to_numpy(np.float32)))
    for axis in ("lpx", "lpy"):
        src = axis if axis in df.columns else ("uncertainty" if "uncertainty" in df.columns else None)
        if src is not None:
            fields.append((axis, px(df[src]).astype(np.float32)))
    if "z" in df.columns:
        fields.append(("z", df["z"].to_numpy(np.float32)))  # Picasso keeps z in nm
    written = {name for name, _ in fields} | {"sigma", "uncertainty"}
    skipped = []
    for col in df.columns:
        if col in written:
            continue
        values = df[col].to_numpy()
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_integer_dtype(values):
            fields.append((str(col), values.astype(np.int32)))
        elif pd.api.types.is_float_dtype(values):
            fields.append((str(col), values.astype(np.float32)))
        else:
            skipped.append(col)
    if skipped:
        warnings.warn(f"{path}: Picasso files hold numbers only; columns not written: {skipped}",
                      UserWarning, stacklevel=3)
    table = np.empty(n, dtype=[(name, arr.dtype) for name, arr in fields])
    for name, arr in fields:
        table[name] = arr

    x_px, y_px = table["x"], table["y"]
    info = {
        "Generated by": f"chromflow {__version__}",
        "Pixelsize": float(pixel_size),
        "Frames": int(frame.max()) + 1 if n else 0,
        "Width": int(np.floor(x_px.max() + 0.5)) + 1 if n else 0,
        "Height": int(np.floor(y_px.max() + 0.5)) + 1 if n else 0,
        "Byte Order": "<",
        "Data Type": "uint16",
    }
    yaml_path = path.with_suffix(".yaml")
    # Both files are written completely before either is moved into place.
    with atomic_path(path) as tmp_h5, atomic_path(yaml_path) as tmp_yaml:
        with h5py.File(tmp_h5, "w") as h5:
            h5.create_dataset("locs", data=table)
        with open(tmp_yaml, "w", encoding="utf-8") as fh:
            yaml.safe_dump_all([info], fh, default_flow_style=False, sort_keys=False)


def write_localizations(df, path, format="thunderstorm", pixel_size=None) -> Path:
    """Write a localization table in a real SMLM format, atomically.

    Parameters
    ----------
    df : pandas.DataFrame
        Table with at least ``x``, ``y`` in nm (as returned by :func:`read_localizations`).
    path : str or os.PathLike
        Output file. For ``"picasso"`` a ``.yaml`` with the same stem is written beside it.
    format : {"thunderstorm", "picasso", "csv"}
        ``"thunderstorm"``: comma-separated with quoted ``"name [unit]"`` headers (nm, photon);
        ``"picasso"``: HDF5 ``locs`` structured dataset in camera pixels (float32) plus the
        ``.yaml`` with ``Pixelsize``; ``"csv"``: plain CSV with the chromflow column names (nm).
    pixel_size : float, optional
        Camera pixel size in nm; needed for ``"picasso"`` (taken from ``df.attrs["pixel_size"]``
        when not given).

    Returns
    -------
    pathlib.Path
        The path written.

    Examples
    --------
    >>> import pandas as pd, tempfile, pathlib
    >>> df = pd.DataFrame({"x": [10.5, 2000.25], "y": [7.0, 33.0], "frame": [1, 2]})
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "locs.csv"
    >>> _ = write_localizations(df, out, format="thunderstorm")
    >>> read_localizations(out)["x"].tolist()
    [10.5, 2000.25]
    """
    path = Path(os.fspath(path))
    df = _check_table(df, path)
    if format == "thunderstorm":
        _write_thunderstorm(df, path)
    elif format == "csv":
        _write_plain_csv(df, path)
    elif format == "picasso":
        if pixel_size is None:
            pixel_size = df.attrs.get("pixel_size")
        if pixel_size is None:
            raise InputError("writing Picasso HDF5 needs pixel_size= (nm per camera pixel): Picasso "
                             "stores coordinates in camera pixels", path)
        pixel_size = check_pixel_size(pixel_size, path)
        _write_picasso(df, path, pixel_size)
    else:
        raise InputError(f"unknown format {format!r}; choose 'thunderstorm', 'picasso' or 'csv'", path)
    return path
