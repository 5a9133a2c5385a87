"""Shared fixtures: test SavedModels built once per session, sample photos, image folders."""

from __future__ import annotations

import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLES_DIR = ROOT / "samples"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def sample_jpeg() -> bytes:
    return (SAMPLES_DIR / "cat.jpg").read_bytes()


@pytest.fixture(scope="session")
def probe_model(tmp_path_factory) -> str:
    from tests.savedmodels import GridProbe, save

    return save(GridProbe(), str(tmp_path_factory.mktemp("models") / "probe"))


@pytest.fixture(scope="session")
def failing_model(tmp_path_factory) -> str:
    from tests.savedmodels import Failing, save

    return save(Failing(), str(tmp_path_factory.mktemp("models") / "failing"))
