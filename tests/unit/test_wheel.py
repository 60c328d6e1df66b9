"""The wheel that README's pip install path builds carries everything the package serves or
reads at run time: the dashboard and API-docs assets, the bundled data, the generated protocol
code, its type marker and the `quorum` command."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_wheel_carries_the_assets_the_data_and_the_command(tmp_path: pathlib.Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("quorum_fl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "quorum/py.typed",
        "quorum/proto/federation_pb2.py",
        "quorum/admin/docs_assets/swagger-ui-bundle.js",
        "quorum/admin/docs_assets/redoc.standalone.js",
        "quorum/data/heart_disease/PROVENANCE.md",
        "quorum/data/tinyshakespeare/input.txt",
    ):
        assert expected in names, expected
    assert any(n.startswith("quorum/admin/dashboard/static/") for n in names)
    assert any(n.startswith("quorum/data/mnist/") for n in names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "quorum = quorum.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert not any(n.startswith(("tests/", "examples/", "bench/")) for n in names)
