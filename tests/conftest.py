"""Shared fixtures: small images, the shared real data (skipped cleanly when ../shared is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

try:  # the layer test (ast only) runs without torch; every other test needs it
    import torch
except ImportError:  # pragma: no cover
    torch = None
else:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", min(2, os.cpu_count() or 1))))
os.environ.setdefault("LVLM_OFFLINE", "1")  # tests never touch the network

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LVLM_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache_session(tmp_path_factory):
    """Weights are looked up in (and ONNX exports written to) an empty cache, so no test depends on what a
    machine has downloaded or writes to the user's cache; session-wide, so module fixtures get it too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LVLM_HOME", str(tmp_path_factory.getbasetemp() / "lvlm_home"))
        yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """The same cache for every test, even after a test changed LVLM_HOME."""
    monkeypatch.setenv("LVLM_HOME", str(tmp_path_factory.getbasetemp() / "lvlm_home"))


@pytest.fixture
def rgb_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    img[10:30, 20:40] = (250, 30, 30)
    return img


def shared_file(*parts: str) -> Path:
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not available (../shared is absent)")
    return p


@pytest.fixture
def nuclei_paths():
    return shared_file("nuclei", "img2d.tif"), shared_file("nuclei", "mask2d.tif")


@pytest.fixture
def quokka_path():
    return shared_file("quokka", "quokka.jpg")
