"""Write the sample data of chromflow: a simulated nucleus with a known rate map, in real formats.

Usage::

    python sample_data/make_sample_data.py [OUT_DIR] [--seed 0] [--n-localizations 45000]

Deterministic: the same seed gives the same files. See sample_data/README.md for what is written.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from chromflow.simulate import make_sample_data


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default=str(Path(__file__).resolve().parent),
                        help="folder to write into (default: this script's folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-localizations", type=int, default=45_000,
                        help="localizations over both channels")
    parser.add_argument("--grid", type=int, default=128, help="simulation grid, cells per side")
    args = parser.parse_args(argv)
    paths = make_sample_data(args.out_dir, seed=args.seed, n_localizations=args.n_localizations, grid=args.grid)
    for role, path in paths.items():
        print(f"{role:>13}  {path}  ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
