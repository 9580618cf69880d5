"""The ``chromflow`` command: ``run`` one file, ``batch`` a folder, ``demo`` on sample data.

Exit codes: 0 success; 1 ``batch`` finished but some files failed; 2 a chromflow error
(bad input, no nucleus, bad settings, outputs that cannot be written...) or a command-line
usage error; 130 cancelled with Ctrl-C; 143 stopped by SIGTERM (no partial outputs are left
either way). A chromflow error is printed as one line, ``chromflow: error: <path>: <reason>``,
without a traceback; warnings as ``chromflow: warning: <message>``; any other exception is a
bug and propagates with its traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import warnings
from pathlib import Path

import numpy as np

from . import __version__
from .errors import CancelledError, ChromflowError, InputError

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FAILED_FILES", "EXIT_ERROR", "EXIT_CANCELLED",
           "EXIT_TERMINATED"]

EXIT_OK = 0
EXIT_FAILED_FILES = 1
EXIT_ERROR = 2
EXIT_CANCELLED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM

CONFIG_HELP = ("JSON settings file: an object with the sections render, segmentation, fields and inference, "
               "giving only the keys to change, e.g. {\"fields\": {\"grid\": 64}}; every key is listed in "
               "docs/cli.md. Options given on the command line win over the file")


class _HelpFormatter(argparse.HelpFormatter):
    """Shows ``(default: X)`` after every option that has a real default (not None or off)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" not in text and action.default not in (None, False, argparse.SUPPRESS)
                and action.option_strings and not isinstance(action.default, bool)):
            text += " (default: %(default)s)"
        return text


def _int_at_least(minimum):
    """An argparse type: a whole number >= ``minimum``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _ratio_weight(text):
    """``auto`` or a number from 0 to 1 (``--ratio-weight``)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return value


def _column_mapping(text):
    """``x=X_nm,y=Y_nm`` -> {"x": "X_nm", "y": "Y_nm"}."""
    mapping = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"expected NAME=COLUMN pairs separated by commas (x=X_nm,y=Y_nm), "
                                             f"got {text!r}")
        mapping[key.strip()] = value.strip()
    return mapping


def _defaults():
    """The settings a run uses when nothing is given (read from the library, for --help)."""
    from .pipeline import PipelineSettings

    return PipelineSettings().resolved()

# Demo settings, chosen on the sample nucleus (45 000 localizations: sparse, so the kernel is
# wide). The full demo is the mollified PINN (the network smooths by itself: no field smoothing;
# correlation with the truth 0.75-0.86 over seeds, ~10 s on an H100); --fast is the closed-form
# direct inversion on smoothed fields (0.75, seconds on a laptop CPU).
DEMO_FULL = {"render": {"pixel_size": 50.0}, "fields": {"grid": 64},
             "inference": {"method": "pinn", "radius": 8.0}}
DEMO_FAST = {"render": {"pixel_size": 50.0}, "fields": {"grid": 48, "smoothing": 200.0},
             "inference": {"method": "direct", "radius": 5.0}}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``chromflow`` command."""
    d = _defaults()
    parser = argparse.ArgumentParser(
        prog="chromflow", formatter_class=_HelpFormatter,
        description="Epigenetic reaction-rate maps from super-resolution images of chromatin.",
        epilog="Exit codes: 0 ok, 1 some batch files failed, 2 error, 130 cancelled (Ctrl-C), 143 terminated "
               "(SIGTERM).")
    parser.add_argument("-V", "--version", action="version", version=f"chromflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{run,batch,domains,demo}")
    sub.required = True

    run = sub.add_parser("run", help="process one file (localizations or TIFF)", formatter_class=_HelpFormatter,
                         description="Run the whole pipeline on one file and write its outputs into --out.")
    run.add_argument("file", type=Path, help="localizations (.csv ThunderSTORM/plain, .hdf5 Picasso) or a .tif image")
    run.add_argument("--out", "-o", type=Path, required=True, help="output folder (created if needed)")
    run.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)
    _add_settings_options(run, d)
    _add_device(run)
    run.add_argument("--euchromatin", type=Path, metavar="FILE", help="second file with a euchromatin mark")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary")

    batch = sub.add_parser("batch", help="process every matching file of a folder", formatter_class=_HelpFormatter,
                           description="Process a folder of files (in parallel with Dask) into --out, with a "
                                       "summary.csv. Files that are not localization tables or images (a "
                                       "README.txt, a LICENSE) are skipped, and listed.")
    batch.add_argument("in_dir", type=Path, metavar="DIR", help="input folder")
    batch.add_argument("--out", "-o", type=Path, required=True, help="output folder")
    batch.add_argument("--pattern", metavar="GLOB", help="file name pattern, e.g. '*.csv' (default: all supported)")
    batch.add_argument("--recursive", "-r", action="store_true", help="also look in sub-folders")
    batch.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)
    batch.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler address (default: a local cluster)")
    batch.add_argument("--workers", type=_positive_int, metavar="N",
                       help="number of local workers (default: one per GPU, else one per CPU core)")
    _add_device(batch)
    _add_settings_options(batch, d)
    batch.add_argument("--force", action="store_true",
                       help="accept settings that differ from those the output folder was made with "
                            "(every file is recomputed)")
    batch.add_argument("--retry-failed", action="store_true",
                       help="retry files whose failure an earlier run recorded (default: only if they changed)")
    batch.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary line")
    _add_batch_conditions_options(batch)

    _add_domains_parser(sub)

    demo = sub.add_parser("demo", help="run the pipeline on the bundled sample data", formatter_class=_HelpFormatter,
                          description="Run the pipeline on sample data with a known rate map and report the "
                                      "correlation of the recovered rate with the truth.")
    demo.add_argument("--out", "-o", type=Path,
                      help="output folder (default: chromflow-demo in the system's temporary folder)")
    demo.add_argument("--fast", action="store_true", help="small grid and the direct method (seconds)")
    _add_device(demo)
    demo.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return parser


def _add_domains_parser(sub):
    """The ``domains`` subcommand: the classical single-channel domain analysis."""
    from .domains import DEFAULTS

    dom = sub.add_parser(
        "domains", help="classical chromatin-domain analysis of one localization file (single channel)",
        description="Voronoi density, DBSCAN domains, LADs and domain rates (Kant et al. 2024) of one "
                    "localization file; writes <stem>_domains.csv, <stem>_domains_summary.json and "
                    "<stem>_domains.png into --out, all or nothing.")
    dom.add_argument("file", type=Path, help="localizations (.csv ThunderSTORM/plain, .hdf5 Picasso)")
    dom.add_argument("--out", "-o", type=Path, required=True, help="output folder (created if needed)")
    dom.add_argument("--percentile", type=float, metavar="P", default=DEFAULTS["density_percentile"],
                     help="density threshold: percentile of the Voronoi densities (default %(default)g)")
    dom.add_argument("--eps", type=float, metavar="NM", default=DEFAULTS["eps"],
                     help="DBSCAN radius in nm (default %(default)g)")
    dom.add_argument("--min-samples", type=int, metavar="N", default=DEFAULTS["min_samples"],
                     help="DBSCAN core-point count (default %(default)d)")
    dom.add_argument("--min-size", type=int, metavar="N", default=DEFAULTS["min_cluster_size"],
                     help="smallest domain, in localizations (default %(default)d)")
    dom.add_argument("--peripheral-fraction", type=float, metavar="F", default=DEFAULTS["peripheral_fraction"],
                     help="LAD if within F x nucleus radius of the boundary (default %(default)g)")
    dom.add_argument("--neighbours", type=int, metavar="N", default=DEFAULTS["n_neighbours"],
                     help="spacing = mean distance to N nearest domains (default %(default)d)")
    dom.add_argument("--downsample", type=int, metavar="N", default=DEFAULTS["downsample"],
                     help="keep one localization in N, as the anchor does (default %(default)d; 1 keeps all)")
    dom.add_argument("--seed", type=int, metavar="S", default=DEFAULTS["seed"], help="seed of the thinning")
    dom.add_argument("--rate-map", type=Path, metavar="NPZ",
                     help="<stem>_result.npz of 'chromflow run' on the same file: report how the rate map's lambda "
                          "averaged over each domain ranks against the domain lam (Spearman)")
    dom.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary")


def _cmd_domains(args) -> int:
    import warnings

    from .domains import analyze_domains_file

    bar = _ProgressBar(not args.quiet, desc=args.file.name)
    try:
        with _ctrl_c_cancels() as cancel, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the same lines are printed below
            dom = analyze_domains_file(
                args.file, args.out, progress=bar, cancel=cancel, density_percentile=args.percentile, eps=args.eps,
                min_samples=args.min_samples, min_cluster_size=args.min_size,
                peripheral_fraction=args.peripheral_fraction, n_neighbours=args.neighbours,
                downsample=args.downsample, seed=args.seed, rate_result=args.rate_map)
    finally:
        bar.close()
    if not args.quiet:
        s = dom.summary

        def fmt(v, spec=".0f"):
            return "n/a" if v is None or not np.isfinite(v) else format(v, spec)
        print(f"chromflow: wrote domain analysis of {args.file} to {args.out}")
        for kind, path in s.get("outputs", {}).items():
            print(f"  {kind:<8s} {path}")
        print(f"  nucleus diameter {fmt(s['nucleus_diameter_nm'])} nm; {s['n_localizations']} localizations "
              f"({s['n_analysed']} analysed); {s['n_domains']} domains, mean diameter "
              f"{fmt(s['mean_domain_diameter_nm'])} nm, spacing {fmt(s['mean_spacing_nm'])} nm; "
              f"{s['n_lads']} LADs, thickness {fmt(s['lad_thickness_nm'])} nm; {fmt(s['time_s'], '.1f')} s")
        print(f"  domain rates (the single-channel estimate): median lam {fmt(s['median_lam'], '.4f')} over "
              f"{s['n_rated']} domains")
        check = s.get("cross_check")
        if check:
            rho = "n/a" if check["spearman"] is None else f"{check['spearman']:.3f} (p = {check['p_value']:.3g})"
            print(f"  rate map lambda vs domain lam: Spearman {rho} over {check['n']} domains")
        for w in s["warnings"]:
            print(f"  warning: {w}", file=sys.stderr)
    return EXIT_OK


def _add_device(parser):
    parser.add_argument("--device", help="auto (CUDA when available), cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help="CPU threads for torch (per worker in batch; default: torch's own)")


def _add_settings_options(parser, d):
    """The pipeline settings options of run and batch; ``d``: the resolved default settings."""
    from .inverse import DEFAULTS as library_defaults
    from .inverse import DOMAIN_SCALE_EFFORT as larger
    from .pipeline import INFERENCE_EFFORTS
    parser.add_argument("--pixel-size", type=float, metavar="NM",
                        help=f"render pixel size in nm (TIFF: used only when the file records none; "
                             f"default: {d.render.pixel_size:g})")
    parser.add_argument("--method", choices=("pinn", "direct", "autodiff"),
                        help=f"inference method (default: {d.inference.method})")
    parser.add_argument("--iterations", type=int, metavar="N",
                        help=f"training iterations (default: {d.inference.iterations}; "
                             f"{larger['iterations']} where the data resolve domain-scale structure, "
                             "docs/inference.md 'Effort')")
    parser.add_argument("--grid", type=int, metavar="N",
                        help=f"grid cells along the longer side of the nucleus, 16 to 2048 (default: {d.fields.grid})")
    parser.add_argument("--seed", type=int, metavar="S", help=f"random seed (default: {d.inference.seed})")
    parser.add_argument("--euchromatin-channel", metavar="VALUE",
                        help="value of the 'channel' column marking euchromatin (two-channel tables)")
    parser.add_argument("--ensemble", type=_positive_int, metavar="N",
                        help=f"independently seeded fits averaged into the map (default: {d.inference.ensemble}; "
                             f"{larger['ensemble']} where the data resolve domain-scale structure)")
    parser.add_argument("--effort", choices=INFERENCE_EFFORTS,
                        help=f"networks (default: {library_defaults['pinn']['effort']}): 'auto' gives data whose halves resolve domain-scale structure "
                             f"{larger['iterations']} steps and {larger['ensemble']} fits, 'standard' never (faster), "
                             "'domain' always; --iterations and --ensemble given stay (docs/inference.md 'Effort')")
    parser.add_argument("--ratio-weight", type=_ratio_weight, metavar="auto|W",
                        help=f"networks (default: {library_defaults['pinn']['ratio_weight']}): share W (0-1) of the smoothed "
                             "phi_h/phi_e mixed into the rate map; 'auto' takes it from the data's noise share (0 on "
                             "low-noise fields, up to 0.4 on rendered counts), 0 keeps the network's own map "
                             "(docs/inference.md 'Mixing in the smoothed ratio')")
    parser.add_argument("--no-uncertainty", action="store_true",
                        help="skip the uncertainty map (faster; config inference.uncertainty = false)")
    parser.add_argument("--columns", type=_column_mapping, metavar="x=NAME,y=NAME",
                        help="column names of a table chromflow does not recognise, e.g. x=X_nm,y=Y_nm "
                             "(also z, frame, photons, sigma, uncertainty, channel)")
    parser.add_argument("--units", metavar="UNIT",
                        help="length unit of the coordinates when the header does not say or says wrong: "
                             "nm, um or px (default: from the header, else nm)")
    parser.add_argument("--camera-pixel-size", type=float, metavar="NM",
                        help="camera pixel size in nm, for coordinates in camera pixels (ThunderSTORM "
                             "'x [px]', --units px) or a Picasso file without its .yaml")
    parser.add_argument("--no-merge-blinks", action="store_true",
                        help="render every localization as it is; by default the blinks of one molecule "
                             "(nearby frames, within 3 precisions) are merged first (config render.merge_blinks)")
    parser.add_argument("--max-dark-frames", type=_non_negative_int, metavar="N",
                        help=f"frames a molecule may stay dark between two merged blinks "
                             f"(default: {d.render.max_dark_frames})")
    parser.add_argument("--allow-several-objects", action="store_true",
                        help="accept an image whose nucleus is one of several dense objects (cells, bacteria); "
                             "refused by default")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM: unwinds like a second Ctrl-C (cleanup runs)."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _terminate_unwinds():
    """SIGTERM (``kill``, a job scheduler) unwinds the command like Ctrl-C: every temporary file
    is removed on the way out and the exit code is 143."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _ctrl_c_cancels():
    """First Ctrl-C sets the yielded Event (the pipeline stops at its next check); a second one
    interrupts at once; SIGTERM interrupts at once. Either way no partial output is left
    (outputs are published last)."""
    cancel = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield cancel
        return

    def handler(signum, frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        print("\nchromflow: stopping after the current step (Ctrl-C again to abort at once)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        with _terminate_unwinds():
            yield cancel
    finally:
        signal.signal(signal.SIGINT, previous)


class _ProgressBar:
    """A tqdm bar driven by the ``progress(done, total, message)`` protocol."""

    def __init__(self, enabled: bool, desc: str = ""):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.name = desc
            self.bar = tqdm(total=100, desc=desc, unit="%", file=sys.stderr, leave=False,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")

    def __call__(self, done, total, message=""):
        if self.bar is None:
            return
        if total and self.bar.total != total:
            self.bar.total = total
        self.bar.n = done
        self.bar.set_description_str(f"{self.name}: {message}" if message else self.name, refresh=False)
        self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _settings_from_args(args):
    from .pipeline import PipelineSettings

    settings = PipelineSettings.from_json(args.config) if getattr(args, "config", None) else PipelineSettings()
    overrides = {
        ("render", "pixel_size"): getattr(args, "pixel_size", None),
        ("inference", "method"): getattr(args, "method", None),
        ("inference", "iterations"): getattr(args, "iterations", None),
        ("fields", "grid"): getattr(args, "grid", None),
        ("inference", "device"): getattr(args, "device", None),
        ("inference", "seed"): getattr(args, "seed", None),
        ("fields", "euchromatin"): None if getattr(args, "euchromatin", None) is None else str(args.euchromatin),
        ("fields", "euchromatin_channel"): _channel_value(getattr(args, "euchromatin_channel", None)),
        ("inference", "ensemble"): getattr(args, "ensemble", None),
        ("inference", "effort"): getattr(args, "effort", None),
        ("inference", "ratio_weight"): getattr(args, "ratio_weight", None),
        ("inference", "uncertainty"): False if getattr(args, "no_uncertainty", False) else None,
        ("render", "columns"): getattr(args, "columns", None),
        ("render", "units"): getattr(args, "units", None),
        ("render", "camera_pixel_size"): getattr(args, "camera_pixel_size", None),
        ("render", "merge_blinks"): False if getattr(args, "no_merge_blinks", False) else None,
        ("render", "max_dark_frames"): getattr(args, "max_dark_frames", None),
        ("segmentation", "allow_several_objects"): True if getattr(args, "allow_several_objects", False) else None,
    }
    for (section, key), value in overrides.items():
        if value is not None:
            setattr(getattr(settings, section), key, value)
    # command-line values are checked like a config file's, naming the option
    try:
        settings.validate()
    except InputError as exc:
        raise InputError(f"invalid option: {exc.reason}") from None
    _check_device(settings.inference.device, remote=getattr(args, "scheduler", None) not in (None, "synchronous"))
    return settings


def _check_device(device, remote=False):
    """Fail before any work (and before any file is made) when the device does not exist here."""
    if remote:  # the cluster's workers have their own devices
        return
    from .pipeline import check_device

    check_device(device)


def _channel_value(text):
    if text is None:
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def _print_summary(row, out_dir, stream=None):
    stream = stream or sys.stdout
    from .inverse.result import split_flags
    from .pipeline import output_paths

    print(f"chromflow: wrote outputs of {row['file']} to {out_dir}", file=stream)
    for kind, path in output_paths(row["file"], out_dir).items():
        print(f"  {kind:<12s} {path}", file=stream)

    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)
    print(f"  nucleus {fmt(row.get('nucleus_area_um2'), '.1f')} um^2, grid {row.get('grid')} "
          f"({fmt(row.get('grid_spacing_nm'), '.1f')} nm), method {row.get('method')} on {row.get('device')}, "
          f"{fmt(row.get('time_total_s'), '.1f')} s", file=stream)
    print(f"  rate lambda: mean {fmt(row.get('mean_rate'), '.3f')} ({fmt(row.get('mean_rate_deep'), '.3f')} deeper "
          f"than 0.5 um), median {fmt(row.get('median_rate'), '.3f')}; "
          f"heterochromatin fraction {fmt(row.get('heterochromatin_fraction'), '.3f')}; "
          f"{row.get('n_domains')} domains, mean {fmt(row.get('domain_area_um2'), '.4f')} um^2", file=stream)
    if row.get("blinks") not in (None, "off"):
        print(f"  blinks: {row['blinks']}", file=stream)
    r = row.get("split_half_r")
    if isinstance(r, (int, float)) and np.isfinite(r):
        print(f"  quality: split-half reproducibility r = {r:.2f} (1 = a map that repeats exactly)", file=stream)
    from .inverse.noise import MIN_HALF_INDEPENDENCE

    s = row.get("halves_independence")
    if isinstance(s, (int, float)) and np.isfinite(s) and s < MIN_HALF_INDEPENDENCE:
        print(f"  note: the two halves of the frames share noise (independence {s:.2f}; molecules seen in both, "
              "e.g. dyes that switch on again): their difference was scaled up for the quality score, "
              "the uncertainty and the ratio's width", file=stream)
    r_ratio, width = row.get("ratio_map_r"), row.get("ratio_sigma_cells")
    if isinstance(r_ratio, (int, float)) and np.isfinite(r_ratio):
        print(f"  without physics: phi_h/phi_e smoothed over {width:.1f} cells (chosen by the halves, "
              f"{row.get('stem', '<stem>')}_ratio.tif) correlates r = {r_ratio:.2f} with the map", file=stream)
    for flag in split_flags(row.get("flags")):
        print(f"  WARNING: {flag}", file=stream)
    if not row.get("two_channel", True):
        rule = str(row.get("split") or "density rule").split(" (")[0]
        print(f"  note: single channel: phi_h/phi_e are assumed from the density ({rule}), not measured; "
              "'chromflow domains' gives the classical single-channel domain rates", file=stream)


# ----------------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------------
def _cmd_run(args) -> int:
    from .pipeline import run_file
    from .training import set_threads

    set_threads(args.threads)

    settings = _settings_from_args(args)
    bar = _ProgressBar(not args.quiet, desc=args.file.name)
    try:
        with _ctrl_c_cancels() as cancel:
            row = run_file(args.file, args.out, settings=settings, progress=bar, cancel=cancel)
    finally:
        bar.close()
    if not args.quiet:
        _print_summary(row, args.out)
    return EXIT_OK


def _add_batch_conditions_options(batch):
    batch.add_argument("--domains", action="store_true",
                       help="run the classical domain analysis (chromflow domains) on every localization file "
                            "instead of rate maps; writes domains_summary.csv")
    batch.add_argument("--sample-sheet", type=Path, metavar="CSV",
                       help="conditions of the files (CSV with columns file, condition); default: the file name "
                            "up to its last '_'. Writes conditions_<kind>.csv/.png and condition_tests_<kind>.csv")


def _batch_conditions(args, table) -> None:
    """After a rate-map batch: compare conditions on the nuclei's mean/median rate."""
    from .conditions import RATE_VALUES, assign_conditions, write_conditions

    done = table[table["status"].isin(["ok", "skipped"])].copy() if len(table) else table
    if not len(done):
        return
    done["condition"] = assign_conditions(done["input"], args.sample_sheet)
    if done["condition"].nunique() < 2 and args.sample_sheet is None:
        return  # one condition from the file names: nothing to compare, nothing to write
    paths = write_conditions(done, args.out, RATE_VALUES, kind="rates")
    if not args.quiet:
        print(f"chromflow: conditions {', '.join(sorted(done['condition'].unique()))}: {paths['tests']}")


def _cmd_batch_domains(args) -> int:
    from .conditions import run_domains_batch

    bar = _ProgressBar(not args.quiet, desc="domains")
    try:
        table = run_domains_batch(args.in_dir, args.out, pattern=args.pattern, recursive=args.recursive,
                                  sample_sheet=args.sample_sheet, progress=bar)
    finally:
        bar.close()
    failed = int((table["status"] == "failed").sum())
    if not args.quiet:
        print(f"chromflow: {len(table)} file(s): {len(table) - failed} analysed, {failed} failed; "
              f"summary in {Path(args.out) / 'domains_summary.csv'}")
        for _, row in table[table["status"] == "failed"].iterrows():
            print(f"  failed: {row['input']}: {row['error']}", file=sys.stderr)
    return EXIT_FAILED_FILES if failed else EXIT_OK


def _cmd_batch(args) -> int:
    import os

    from .batch import run_batch

    if args.threads:  # local worker processes start torch with this many threads
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    if getattr(args, "domains", False):
        return _cmd_batch_domains(args)

    settings = _settings_from_args(args)
    with _terminate_unwinds():
        table = run_batch(args.in_dir, args.out, pattern=args.pattern, recursive=args.recursive, settings=settings,
                          scheduler=args.scheduler, workers=args.workers, device=args.device,
                          progress=not args.quiet, retry_failed=args.retry_failed, force=args.force)
    status = table["status"] if "status" in table else []
    processed = int((status == "ok").sum()) if len(table) else 0
    skipped = int((status == "skipped").sum()) if len(table) else 0
    failed = int((status == "failed").sum()) if len(table) else 0
    if not args.quiet:
        print(f"chromflow: {len(table)} file(s): {processed} processed, {skipped} skipped (done before), "
              f"{failed} failed; summary in {Path(args.out) / 'summary.csv'}")
        n, kinds = flag_counts(table)
        if n:
            print(f"chromflow: {n} map(s) flagged ({', '.join(f'{k}: {v}' for k, v in kinds.items())}); "
                  "the 'flags' column of summary.csv says which")
    # failures are printed even with --quiet: a silent exit code 1 leaves the user guessing
    for _, row in table[table["status"] == "failed"].iterrows() if failed else []:
        print(f"  failed: {row['input']}: {row['error']}", file=sys.stderr)
    _batch_conditions(args, table)
    return EXIT_FAILED_FILES if failed else EXIT_OK


def flag_counts(table) -> tuple[int, dict]:
    """Rows of a batch table that carry a flag, and how many carry each kind (the words before a
    flag's first ':').

    Examples
    --------
    >>> import pandas as pd
    >>> flag_counts(pd.DataFrame({"flags": ["sparse data: x; low reproducibility: y", "", None,
    ...                                     "sparse data: z"]}))
    (2, {'sparse data': 2, 'low reproducibility': 1})
    """
    from .inverse.result import split_flags

    rows = [split_flags(text) for text in table["flags"]] if "flags" in getattr(table, "columns", ()) else []
    counts: dict[str, int] = {}
    for flags in rows:
        for kind in dict.fromkeys(flag.split(":")[0].strip() for flag in flags):
            counts[kind] = counts.get(kind, 0) + 1
    return sum(1 for flags in rows if flags), counts


def sample_data_dir() -> Path | None:
    """The ``sample_data/`` folder of a source checkout, or None when not there."""
    folder = Path(__file__).resolve().parent.parent / "sample_data"
    return folder if folder.is_dir() else None


DEMO_INPUT = "nucleus_two_channel.csv"
DEMO_TRUTH = "nucleus_rate_truth.tif"


def find_sample_data(cache_dir) -> Path:
    """Folder holding the demo's input and true rate map.

    The ``sample_data/`` folder of a source checkout when it has them; otherwise they are
    generated once with :func:`chromflow.simulate.make_sample_data` (seed 0) into ``cache_dir``.
    """
    folder = sample_data_dir()
    if folder is not None and (folder / DEMO_INPUT).is_file() and (folder / DEMO_TRUTH).is_file():
        return folder
    cache_dir = Path(cache_dir)
    if not ((cache_dir / DEMO_INPUT).is_file() and (cache_dir / DEMO_TRUTH).is_file()):
        from .simulate import make_sample_data

        make_sample_data(cache_dir, seed=0)
    return cache_dir


# rate_correlation lives in chromflow.evaluate (metrics and baselines); kept importable from here
from .evaluate import rate_correlation  # noqa: E402,F401


def run_demo(out_dir, fast: bool = False, device=None, progress=None, cancel=None) -> dict:
    """Run the pipeline on the two-channel sample nucleus and compare with its true rate map.

    Parameters
    ----------
    out_dir : path
        Output folder (the sample data are generated into ``out_dir/sample_data`` when the
        source checkout's ``sample_data/`` is not there).
    fast : bool
        :data:`DEMO_FAST` settings (direct method, 48-cell grid) instead of :data:`DEMO_FULL`.
    device : str, optional
        Inference device (default ``"auto"``).
    progress, cancel
        The progress/cancel protocol.

    Returns
    -------
    dict
        ``summary`` (the run's summary row), ``correlation``, ``n_compared``, ``baselines``
        (:func:`chromflow.evaluate.compare` on the same fields and cells: the smoothed ratio and
        the direct inversion, each tuned on the truth; ``cv_ratio_corr``, the smoothed ratio at
        the width the data's halves chose, ``result.ratio``), ``input``, ``truth``, ``out_dir``.
    """
    from .evaluate import compare, truth_on_grid
    from .io import read_image
    from .pipeline import PipelineSettings, process_file, write_outputs

    out_dir = Path(out_dir)
    folder = find_sample_data(out_dir / "sample_data")
    settings = PipelineSettings.from_dict(DEMO_FAST if fast else DEMO_FULL)
    settings.fields.euchromatin_channel = 1  # the sample's channel 1 is the euchromatin mark
    if device is not None:
        settings.inference.device = device
    settings.validate()
    run = process_file(folder / DEMO_INPUT, settings, progress=progress, cancel=cancel)
    truth = read_image(folder / DEMO_TRUTH, allow_nan=True)
    # the map's correlation beside the trivial baselines on the same cells (docs/evaluate.md)
    row = compare(run.result, truth, run.fields)
    correlation, n = row["corr"], row["n_cells"]
    baselines = {k: row[k] for k in ("ratio_corr", "ratio_sigma", "direct_corr", "direct_radius", "potential_corr",
                                     "potential_width_nm")}
    # the smoothed ratio whose width the data chose (result.ratio), on the same cells
    true = truth_on_grid(truth, run.result.rate.shape, run.result.spacing, run.result.origin)
    cells = run.fields.mask & np.isfinite(true) & np.isfinite(run.result.rate)
    baselines["cv_ratio_corr"] = rate_correlation(run.result.ratio, true, cells)
    run.summary.update(truth_correlation=correlation, ratio_truth_correlation=row["ratio_corr"],
                       direct_truth_correlation=row["direct_corr"],
                       potential_truth_correlation=row["potential_corr"],
                       cv_ratio_truth_correlation=baselines["cv_ratio_corr"])
    write_outputs(run, out_dir, cancel=cancel)
    return {"summary": run.summary, "correlation": correlation, "n_compared": n, "baselines": baselines,
            "input": folder / DEMO_INPUT, "truth": folder / DEMO_TRUTH, "out_dir": out_dir}


def default_demo_dir() -> Path:
    """``chromflow-demo`` in the system's temporary folder: the demo never writes into a clone."""
    import tempfile

    return Path(tempfile.gettempdir()) / "chromflow-demo"


def _cmd_demo(args) -> int:
    from .training import set_threads

    set_threads(args.threads)
    out = args.out if args.out is not None else default_demo_dir()
    if args.device is not None:
        _check_device(args.device)
    bar = _ProgressBar(not args.quiet, desc="demo")
    try:
        with _ctrl_c_cancels() as cancel:
            outcome = run_demo(out, fast=args.fast, device=args.device, progress=bar, cancel=cancel)
    finally:
        bar.close()
    _print_summary(outcome["summary"], outcome["out_dir"])
    print(f"chromflow: sample {outcome['input']} (truth: {outcome['truth']})")
    print(f"chromflow: Pearson correlation of the recovered rate with the true rate: "
          f"{outcome['correlation']:.3f} over {outcome['n_compared']} grid cells")
    b = outcome["baselines"]
    print(f"chromflow: baselines on the same fields and cells, each tuned on the truth: smoothed phi_h/phi_e "
          f"{b['ratio_corr']:.3f} (sigma {b['ratio_sigma']:g} cells), direct inversion {b['direct_corr']:.3f} "
          f"(radius {b['direct_radius']:g} cells), closed form with a smooth potential {b['potential_corr']:.3f} "
          f"(width {b['potential_width_nm']:g} nm); without the truth, the smoothed phi_h/phi_e at the width "
          f"the data's halves chose (<stem>_ratio.tif) {b['cv_ratio_corr']:.3f}")
    if outcome["correlation"] < b["ratio_corr"]:
        n = outcome["summary"].get("n_localizations")
        count = f" ({n:,} localizations)" if isinstance(n, int) else ""
        print(f"chromflow: on this sparse sample{count} the smoothed ratio reads the rate better than the map: "
              "with ~1e5 localizations or fewer per nucleus the physics has little to add (docs/inference.md, "
              "'Measured accuracy')")
    return EXIT_OK


def main(argv=None) -> int:
    """Entry point of the ``chromflow`` command; returns the exit code.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; defaults to ``sys.argv[1:]``.

    Examples
    --------
    >>> main(["run", "cell.csv", "--out", "results", "--quiet"])   # doctest: +SKIP
    0
    """
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse already printed
        return int(exc.code or 0)
    except KeyboardInterrupt:  # Ctrl-C while starting up
        print("chromflow: cancelled; no outputs were written", file=sys.stderr)
        return EXIT_CANCELLED
    commands = {"run": _cmd_run, "batch": _cmd_batch, "domains": _cmd_domains, "demo": _cmd_demo}
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return commands[args.command](args)
    except (CancelledError, KeyboardInterrupt) as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "cancelled"
        if args.command == "batch":  # finished files are kept; a rerun resumes
            print(f"chromflow: {what}; finished files are kept, rerun the same command to resume",
                  file=sys.stderr)
        else:
            print(f"chromflow: {what}; no outputs were written", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_CANCELLED
    except ChromflowError as exc:
        print(f"chromflow: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings as one line each, ``chromflow: warning: ...`` (no source line, no file name)."""
    text = " ".join(str(message).split())
    print(f"chromflow: warning: {text}", file=file or sys.stderr, flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
