from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from tests.e2e.cli import Deployment, run_settings


@pytest.fixture
def deployment(tmp_path: pathlib.Path) -> Iterator[Deployment]:
    d = Deployment(tmp_path, run_settings())
    try:
        yield d
    finally:
        d.stop()
