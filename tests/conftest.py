"""Shared test fixtures."""

from pathlib import Path

import pytest

from peapod.data import Dataset, load_dataset

# The model tests' synthetic world (fixtures `ds`, `indexes`, `models`, shared by test_model*.py and test_cf.py) and
# the serving tests' one tiny trained run (`served_run`, `rec`, shared by test_serve*.py).
pytest_plugins = ["model_fixtures", "serve_run"]

# The staged P5 datasets live beside the repository (../shared/data); a stranger's clone has none.
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared() -> Path:
    """The staged shared data directory; skips the test when it is not there."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED} (expected ../shared/data beside the repository)")
    return SHARED


@pytest.fixture(scope="module")
def demo() -> Dataset:
    """The embedded demo dataset (Amazon Musical Instruments sample), loaded once per test module."""
    return load_dataset("demo")
