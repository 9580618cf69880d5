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


@pytest.fixture
def terminal_sigint():
    """SIGINT handled by Python's own handler, as in a terminal. A shell that starts the tests in
    the background hands them SIGINT ignored, which child processes inherit; the Ctrl-C tests
    need the disposition a user's terminal gives."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)
