"""The dashboard's files: the vendored chart library is the one its provenance note names, and
every file the page needs is package data (so it is in the wheel)."""

from __future__ import annotations

import hashlib
import pathlib
import re
import tomllib

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "quorum/admin/dashboard"
STATIC = PACKAGE / "static"


def test_vendored_files_match_their_provenance() -> None:
    note = (STATIC / "vendor/PROVENANCE").read_text()
    listed = dict(re.findall(r"^\s+(\S+)\s+sha256 ([0-9a-f]{64})$", note, re.MULTILINE))
    assert set(listed) == {"uPlot.iife.min.js", "uPlot.min.css"}
    for name, digest in listed.items():
        assert hashlib.sha256((STATIC / "vendor" / name).read_bytes()).hexdigest() == digest
    assert "MIT" in (STATIC / "vendor/LICENSE.uPlot").read_text()


def test_every_static_file_is_package_data() -> None:
    pyproject = tomllib.loads((PACKAGE.parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["quorum.admin.dashboard"]
    covered = {p for pattern in patterns for p in PACKAGE.glob(pattern) if p.is_file()}
    files = {p for p in STATIC.rglob("*") if p.is_file()}
    assert files and files == covered
