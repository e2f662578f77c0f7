"""Shared fixtures. Real data lives in ../shared/data (or $PATHKIT_TEST_DATA); never copied into the repo."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_root() -> Path:
    env = os.environ.get("PATHKIT_TEST_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: real slides, TCGA tables, a real embedding bag. Skips when absent."""
    root = _shared_root()
    if not root.is_dir():
        pytest.skip(f"real test data not found at {root} (set PATHKIT_TEST_DATA to the shared/data folder)")
    return root


@pytest.fixture(scope="session")
def shared_fixtures(shared_data) -> Path:
    """../shared/fixtures: reference outputs (e.g. the Prov-GigaPath slide encoder)."""
    root = shared_data.parent / "fixtures"
    if not root.is_dir():
        pytest.skip(f"reference fixtures not found at {root}")
    return root


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Tests never download: the HF hub is offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
