"""Compare conditions (e.g. control vs TSA) across many nuclei, as the anchor does.

Nuclei are grouped by condition from the file name (the part before the last ``_``:
``ctrl_01.csv`` -> ``ctrl``, ``TSA_day2_7.csv`` -> ``TSA_day2``) or from a sample sheet (a CSV
with columns ``file`` and ``condition``). Per nucleus, a log-normal is fitted to the domains'
``gamma_ac`` and ``gamma_me`` (the anchor's ``logNfit``); per condition the nuclei's values are
summarised as mean +- SD, and conditions are compared with a rank test (Mann-Whitney U for two,
Kruskal-Wallis for more), with the p-value and the number of nuclei. The same works on the
rate maps' batch table (``summary.csv``: ``mean_rate``, ``median_rate``, ...).

Examples
--------
>>> from chromflow.conditions import condition_from_name
>>> condition_from_name("data/TSA_day2_07.csv")
'TSA_day2'
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ChromflowError, InputError

__all__ = ["condition_from_name", "read_sample_sheet", "assign_conditions", "fit_lognormal", "nucleus_rates",
           "compare_conditions", "conditions_figure", "write_conditions", "run_domains_batch",
           "DOMAIN_VALUES", "RATE_VALUES"]

#: per-nucleus values compared between conditions for domain analyses
DOMAIN_VALUES = ("gamma_ac_median", "gamma_me_median", "median_lam", "mean_domain_diameter_nm", "lad_thickness_nm")
#: ... and for rate maps (columns of the batch summary.csv; ``mean_rate_deep`` leaves out the
#: 0.5 um along the envelope where maps of simulated nuclei read lambda high)
RATE_VALUES = ("mean_rate", "mean_rate_deep", "median_rate")


def condition_from_name(path) -> str:
    """The condition of a file from its name: the stem up to its last ``_`` (the whole stem if none).

    Examples
    --------
    >>> condition_from_name("ctrl_01.csv"), condition_from_name("nucleus.csv")
    ('ctrl', 'nucleus')
    """
    stem = Path(str(path)).stem
    return stem.rsplit("_", 1)[0] if "_" in stem.strip("_") else stem


def read_sample_sheet(path) -> dict:
    """``{file name: condition}`` from a CSV with columns ``file`` and ``condition``.

    ``file`` may be a name or a path; it is matched by name (and by stem).

    Raises
    ------
    InputError
        Missing file or columns, empty conditions, or one file listed with two conditions.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("sample sheet not found", path=path)
    try:
        sheet = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the sample sheet as CSV ({exc})", path=path) from None
    sheet.columns = [str(c).strip().lower() for c in sheet.columns]
    if not {"file", "condition"} <= set(sheet.columns):
        raise InputError(f"sample sheet needs columns 'file' and 'condition', has {', '.join(sheet.columns)}",
                         path=path)
    sheet = sheet.dropna(subset=["file"])
    if sheet["condition"].isna().any() or (sheet["condition"].str.strip() == "").any():
        bad = sheet.loc[sheet["condition"].isna() | (sheet["condition"].fillna("").str.strip() == ""), "file"]
        raise InputError(f"no condition for {', '.join(bad.astype(str))}", path=path)
    mapping: dict = {}
    for file, condition in zip(sheet["file"].str.strip(), sheet["condition"].str.strip()):
        name = Path(file).name
        if mapping.get(name, condition) != condition:
            raise InputError(f"{name} is listed with two conditions ({mapping[name]!r}, {condition!r})", path=path)
        mapping[name] = condition
    return mapping


def assign_conditions(files, sample_sheet=None) -> list:
    """The condition of each file: from the sample sheet (path or dict) or from the file name.

    Raises
    ------
    InputError
        A sample sheet is given but does not list a file.
    """
    if sample_sheet is None:
        return [condition_from_name(f) for f in files]
    mapping = sample_sheet if isinstance(sample_sheet, dict) else read_sample_sheet(sample_sheet)
    by_stem = {Path(k).stem: v for k, v in mapping.items()}
    out, missing = [], []
    for f in files:
        name = Path(str(f)).name
        condition = mapping.get(name, by_stem.get(Path(name).stem))
        if condition is None:
            missing.append(name)
        out.append(condition)
    if missing:
        raise InputError(f"the sample sheet lists no condition for {', '.join(missing)}",
                         path=None if isinstance(sample_sheet, dict) else sample_sheet)
    return out


def fit_lognormal(values) -> tuple:
    """Maximum-likelihood log-normal fit: ``(mu, sigma, n)`` of ``log(values)``.

    Non-finite and non-positive values are left out; ``mu`` and ``sigma`` are NaN for fewer
    than 2 values. The median of the fit is ``exp(mu)``, its mean ``exp(mu + sigma^2 / 2)``.

    Examples
    --------
    >>> mu, sigma, n = fit_lognormal(np.exp([0.0, 1.0, 2.0]))
    >>> round(mu, 6), round(sigma, 6), n
    (1.0, 0.816497, 3)
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size < 2:
        return float("nan"), float("nan"), int(v.size)
    logs = np.log(v)
    return float(logs.mean()), float(logs.std()), int(v.size)   # the MLE of a log-normal (ddof 0)


def nucleus_rates(dom) -> dict:
    """Per-nucleus values of a :class:`~chromflow.DomainAnalysis` (or its domains table + summary).

    Returns
    -------
    dict
        ``n_domains``, log-normal fits ``gamma_ac_mu``, ``gamma_ac_sigma``, ``gamma_ac_median``
        (``exp(mu)``), ``gamma_ac_mean`` and the same for ``gamma_me``; ``median_lam``,
        ``mean_domain_diameter_nm``, ``lad_thickness_nm``, ``nucleus_diameter_nm``.
    """
    table, summary = (dom.domains, dom.summary) if hasattr(dom, "domains") else dom
    interior = table[~table["peripheral"].astype(bool)] if len(table) else table
    row = {"n_domains": int(len(interior))}
    for name in ("gamma_ac", "gamma_me"):
        mu, sigma, n = fit_lognormal(interior[name] if len(interior) else [])
        row.update({f"{name}_mu": mu, f"{name}_sigma": sigma, f"{name}_n": n,
                    f"{name}_median": math.exp(mu) if math.isfinite(mu) else float("nan"),
                    f"{name}_mean": math.exp(mu + sigma ** 2 / 2) if math.isfinite(mu) else float("nan")})
    lam = interior["lam"].to_numpy(dtype=float) if len(interior) else np.zeros(0)
    lam = lam[np.isfinite(lam)]
    row["median_lam"] = float(np.median(lam)) if lam.size else float("nan")
    for key in ("mean_domain_diameter_nm", "lad_thickness_nm", "nucleus_diameter_nm"):
        value = summary.get(key)
        row[key] = float("nan") if value is None else float(value)
    return row


def compare_conditions(table: pd.DataFrame, values=DOMAIN_VALUES, condition: str = "condition"):
    """Per-condition mean +- SD and rank tests between conditions, over nuclei.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per nucleus with a ``condition`` column and the ``values`` columns.
    values : sequence of str
        Columns to compare (missing columns are skipped).
    condition : str
        Name of the condition column.

    Returns
    -------
    per_condition : pandas.DataFrame
        One row per (condition, value): ``n`` (nuclei with a finite value), ``mean``, ``sd``
        (ddof 1), ``median``.
    tests : pandas.DataFrame
        One row per value: ``test`` (``"mann-whitney"`` for two conditions, ``"kruskal"`` for
        more), ``statistic``, ``p_value``, ``n`` (nuclei per condition, as ``"ctrl=5, TSA=6"``),
        ``note`` (why a test was not run: one condition, or fewer than 2 nuclei in one).

    Examples
    --------
    >>> t = pd.DataFrame({"condition": ["a"] * 4 + ["b"] * 4, "x": [1, 2, 3, 4, 11, 12, 13, 14]})
    >>> per, tests = compare_conditions(t, ["x"])
    >>> tests.loc[0, "test"], round(float(tests.loc[0, "p_value"]), 4)
    ('mann-whitney', 0.0286)
    """
    from scipy.stats import kruskal, mannwhitneyu

    if condition not in table.columns:
        raise InputError(f"no {condition!r} column in the table")
    per_rows, test_rows = [], []
    groups = list(dict.fromkeys(table[condition].astype(str)))
    for value in values:
        if value not in table.columns:
            continue
        samples = {}
        for g in groups:
            v = pd.to_numeric(table.loc[table[condition].astype(str) == g, value], errors="coerce").to_numpy(float)
            v = v[np.isfinite(v)]
            samples[g] = v
            per_rows.append({"condition": g, "value": value, "n": int(v.size),
                             "mean": float(v.mean()) if v.size else float("nan"),
                             "sd": float(v.std(ddof=1)) if v.size > 1 else float("nan"),
                             "median": float(np.median(v)) if v.size else float("nan")})
        n_text = ", ".join(f"{g}={samples[g].size}" for g in groups)
        usable = [g for g in groups if samples[g].size >= 2]
        row = {"value": value, "test": None, "statistic": float("nan"), "p_value": float("nan"), "n": n_text,
               "note": ""}
        if len(groups) < 2:
            row["note"] = "one condition: nothing to compare"
        elif len(usable) < len(groups):
            row["note"] = "fewer than 2 nuclei with a value in " + ", ".join(g for g in groups if g not in usable)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if len(groups) == 2:
                    res = mannwhitneyu(samples[groups[0]], samples[groups[1]], alternative="two-sided")
                    row["test"] = "mann-whitney"
                else:
                    res = kruskal(*(samples[g] for g in groups))
                    row["test"] = "kruskal"
            row["statistic"], row["p_value"] = float(res.statistic), float(res.pvalue)
        test_rows.append(row)
    return pd.DataFrame(per_rows), pd.DataFrame(test_rows)


def conditions_figure(table: pd.DataFrame, values=DOMAIN_VALUES, condition: str = "condition", tests=None,
                      domains: dict | None = None, title: str | None = None):
    """Per value: each nucleus as a dot per condition and the condition mean +- SD, with the test's p.

    With ``domains`` (``{condition: per-domain gamma_me values}``) a first panel shows the
    pooled distributions of ``gamma_me`` per condition (log scale) with their log-normal fits.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = [v for v in values if v in table.columns]
    groups = list(dict.fromkeys(table[condition].astype(str)))
    n_panels = len(values) + (1 if domains else 0)
    fig = Figure(figsize=(3.6 * max(n_panels, 1), 3.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, max(n_panels, 1), gridspec_kw=dict(wspace=0.45, left=0.06, right=0.98,
                                                                           bottom=0.2, top=0.82)))
    colors = [f"C{i}" for i in range(len(groups))]
    k = 0
    if domains:
        ax = axes[0]
        for g, color in zip(groups, colors):
            v = np.asarray(domains.get(g, []), dtype=float)
            v = v[np.isfinite(v) & (v > 0)]
            if v.size < 2:
                continue
            logs = np.log10(v)
            ax.hist(logs, bins=30, density=True, histtype="step", color=color, label=f"{g} ({v.size})")
            mu, sigma, _ = fit_lognormal(v)
            grid = np.linspace(logs.min(), logs.max(), 200)
            # the log-normal's density of log10(x): normal with mean mu/ln10, sd sigma/ln10
            m, s = mu / math.log(10), sigma / math.log(10)
            if s > 0:
                ax.plot(grid, np.exp(-0.5 * ((grid - m) / s) ** 2) / (s * math.sqrt(2 * math.pi)), color=color, lw=1)
        ax.set_xlabel("log10 gamma_me (per domain)")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
        ax.set_title("pooled domains", fontsize=9)
        k = 1
    rng = np.random.default_rng(0)
    test_by_value = {} if tests is None or len(tests) == 0 else tests.set_index("value").to_dict("index")
    for ax, value in zip(axes[k:], values):
        for i, (g, color) in enumerate(zip(groups, colors)):
            v = pd.to_numeric(table.loc[table[condition].astype(str) == g, value], errors="coerce").to_numpy(float)
            v = v[np.isfinite(v)]
            ax.scatter(i + rng.uniform(-0.12, 0.12, v.size), v, s=12, color=color, alpha=0.7)
            if v.size:
                sd = v.std(ddof=1) if v.size > 1 else 0.0
                ax.errorbar(i + 0.3, v.mean(), yerr=sd, fmt="o", color="black", capsize=4, ms=4)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, rotation=30, fontsize=8)
        ax.set_xlim(-0.5, len(groups) - 0.3)
        t = test_by_value.get(value)
        p = t["p_value"] if t else float("nan")
        ax.set_title(f"{value}\n" + (f"{t['test']} p = {p:.3g}" if t and np.isfinite(p) else "no test"), fontsize=9)
    fig.suptitle(title or "conditions: nuclei (dots), mean ± SD (black)", fontsize=10)
    return fig


def write_conditions(table: pd.DataFrame, out_dir, values=DOMAIN_VALUES, kind: str = "domains",
                     condition: str = "condition", domains: dict | None = None) -> dict:
    """Write ``conditions_<kind>.csv`` (per condition), ``condition_tests_<kind>.csv`` and
    ``conditions_<kind>.png``, all or nothing; return ``{name: Path}``."""
    from .domains import publish_all

    per, tests = compare_conditions(table, values, condition)
    out_dir = Path(out_dir)
    files = {
        "per_condition": (out_dir / f"conditions_{kind}.csv", lambda p: per.to_csv(p, index=False, float_format="%.6g")),
        "tests": (out_dir / f"condition_tests_{kind}.csv", lambda p: tests.to_csv(p, index=False, float_format="%.6g")),
        "figure": (out_dir / f"conditions_{kind}.png",
                   lambda p: conditions_figure(table, values, condition, tests, domains,
                                               title=f"{kind}: nuclei (dots), condition mean ± SD (black)")
                   .savefig(p, format="png")),
    }
    return publish_all(files, out_dir)


def run_domains_batch(in_dir, out_dir, pattern: str | None = None, recursive: bool = False,
                      sample_sheet=None, progress=None, **settings) -> pd.DataFrame:
    """:func:`chromflow.analyze_domains` on every localization file of a folder, then conditions.

    Each file's outputs go to ``out_dir/<relative folder>/<stem>_domains.*``; a failing file
    becomes a ``"failed"`` row and the batch goes on. ``domains_summary.csv`` gets one row per
    nucleus (the summary numbers, the log-normal fits of :func:`nucleus_rates`, the condition);
    with two or more conditions, :func:`write_conditions` adds the per-condition table, the
    tests and the figure.

    Parameters
    ----------
    in_dir, out_dir : path
    pattern, recursive
        As :func:`chromflow.batch.find_inputs`.
    sample_sheet : path or dict, optional
        Conditions from a CSV (``file``, ``condition``); default: from the file names.
    progress : callable, optional
        ``progress(done, total, message)`` after each file.
    **settings
        Keyword arguments of :func:`chromflow.analyze_domains`.

    Returns
    -------
    pandas.DataFrame
        The rows of ``domains_summary.csv``.
    """
    from .batch import find_inputs
    from .domains import analyze_domains_file, publish_all
    from .pipeline import LOCALIZATION_SUFFIXES

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    files = [f for f in find_inputs(in_dir, pattern=pattern, recursive=recursive, exclude=out_dir)
             if f.suffix.lower() in LOCALIZATION_SUFFIXES]
    if not files:
        raise InputError("no localization file to analyse (domains need localizations, not images)", path=in_dir)
    conditions = assign_conditions(files, sample_sheet)
    rows, pooled = [], {}
    for i, (path, cond) in enumerate(zip(files, conditions)):
        rel = path.relative_to(in_dir)
        start = time.perf_counter()
        row = {"input": str(rel), "condition": cond}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                dom = analyze_domains_file(path, out_dir / rel.parent, **settings)
            s = dom.summary
            row.update(status="ok", error=None, n_localizations=s["n_localizations"], n_lads=s["n_lads"],
                       mean_spacing_nm=s["mean_spacing_nm"], warnings=" | ".join(s["warnings"]) or None)
            row.update(nucleus_rates(dom))
            pooled.setdefault(cond, []).extend(dom.interior["gamma_me"].to_numpy(dtype=float).tolist())
        except ChromflowError as exc:
            row.update(status="failed", error=str(exc))
        row["time_s"] = round(time.perf_counter() - start, 3)
        rows.append(row)
        if progress is not None:
            progress(i + 1, len(files), f"{rel}: {row['status']}")
    table = pd.DataFrame(rows)
    files_out = {"summary": (out_dir / "domains_summary.csv",
                             lambda p: table.to_csv(p, index=False, float_format="%.6g"))}
    publish_all(files_out, out_dir)
    ok = table[table["status"] == "ok"]
    if ok["condition"].nunique() >= 1 and len(ok):
        write_conditions(ok, out_dir, DOMAIN_VALUES, kind="domains", domains=pooled)
    return table
