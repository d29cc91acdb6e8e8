"""Shared test fixtures."""

from pathlib import Path

import pytest

# The staged P5 datasets live beside the repository (../shared/data); a stranger's clone has none.
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared() -> Path:
    """The staged shared data directory; skips the test when it is not there."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED} (expected ../shared/data beside the repository)")
    return SHARED
