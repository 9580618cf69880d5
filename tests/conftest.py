"""Shared pytest fixtures for the chromflow test-suite (keep this file small)."""
from pathlib import Path

import pytest

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


@pytest.fixture
def realdata() -> Path:
    """Folder of small localization files written by real SMLM software (see its README.md)."""
    if not REALDATA.is_dir():
        pytest.skip(f"real data folder not found: {REALDATA}")
    return REALDATA
