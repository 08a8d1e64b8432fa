"""Shared fixtures. Real-format files come from ../shared/data (beside the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; required in CI (CI=true), skipped with a reason elsewhere when absent."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"shared data folder missing: {SHARED_DATA}")
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


def pytest_sessionstart(session: pytest.Session) -> None:
    """In CI the real-format fixtures of ../shared/data must be there: stop rather than skip tests."""
    if os.environ.get("CI", "").lower() == "true" and not SHARED_DATA.is_dir():
        pytest.exit(f"CI=true but the shared data folder is missing: {SHARED_DATA}", returncode=1)
