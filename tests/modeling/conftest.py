"""Fixtures of the modeling tests that load the real text encoder."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """PH_CACHE_DIR for the module: models are unpacked, exported and their embeddings
    stored here, not in ~/.cache."""
    folder = tmp_path_factory.mktemp("ph-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PH_CACHE_DIR", str(folder))
        yield folder
