"""Shared fixtures.

Real data sets are read from ``$INSTEMBED_DATA`` (default ``../shared/data`` beside the
checkout). A test that needs one uses the ``shared_data`` fixture: outside CI a missing data set
skips with the reason; under CI (``CI=true``) it fails the run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("INSTEMBED_DATA", REPO.parent / "shared" / "data"))


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def shared_data():
    """Return a function ``get(name) -> Path`` for a shared data set (skip/fail when absent)."""

    def get(name: str) -> Path:
        path = data_root() / name
        if not path.is_dir():
            msg = f"shared data set {name!r} not found at {path} (set INSTEMBED_DATA)"
            if _under_ci():
                pytest.fail(msg + " -- required under CI")
            pytest.skip(msg)
        return path

    return get
