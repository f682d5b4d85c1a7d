"""Shared fixtures: every test gets its own T2_HOME; tiny random models are built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def t2_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point T2_HOME at a fresh temporary directory so no test touches the user's data."""
    home = tmp_path / "t2home"
    monkeypatch.setenv("T2_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("T2_DEBUG", raising=False)
    return home
