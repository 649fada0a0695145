"""Fixtures shared across test modules; the plain helper functions they build on are in helpers.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import tiny_config, write_config, write_image_folder


@pytest.fixture
def config_path(tmp_path: Path, monkeypatch) -> Path:
    """A tiny ``train.py`` config (convnet2 on a 2-class folder of 16×16 images) in ``tmp_path``, the working
    directory for the test."""
    monkeypatch.chdir(tmp_path)
    return write_config(tmp_path / "tiny.yaml", tiny_config(write_image_folder(tmp_path / "images", per_class=4)))
