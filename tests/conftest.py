"""Shared pytest fixtures for the chromflow test-suite (keep this file small)."""
from pathlib import Path

import pytest

# Small files written by real SMLM software (Picasso, ThunderSTORM), copied with their licences
# from the project's shared/realdata folder so that a clean clone tests them too.
REALDATA = Path(__file__).resolve().parent / "data" / "realdata"


@pytest.fixture
def realdata() -> Path:
    """Folder of small localization files written by real SMLM software (see its README.md)."""
    assert REALDATA.is_dir(), f"real data folder missing from the repository: {REALDATA}"
    return REALDATA
