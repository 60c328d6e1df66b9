"""The generated code in quorum/proto/ matches what scripts/gen_proto.py makes from proto/."""

from __future__ import annotations

import importlib.util
import pathlib
from collections.abc import Callable

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "quorum" / "proto"


def _generate() -> Callable[[pathlib.Path], list[pathlib.Path]]:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("proto")
    paths = _generate()(out)
    assert paths, "gen_proto.generate produced no files"
    assert all(p.parent == out / "quorum" / "proto" for p in paths)
    return {p.name: p.read_bytes() for p in paths}


def test_every_proto_source_is_generated(generated: dict[str, bytes]) -> None:
    sources = sorted(p.stem for p in (ROOT / "proto" / "quorum" / "v1").glob("*.proto"))
    assert sources
    for stem in sources:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert f"{stem}{suffix}" in generated


def test_committed_proto_code_is_not_stale(generated: dict[str, bytes]) -> None:
    stale = [
        name
        for name, data in sorted(generated.items())
        if not (COMMITTED / name).exists() or (COMMITTED / name).read_bytes() != data
    ]
    assert not stale, f"quorum/proto is stale for {stale}: run `make proto` and commit the result"


def test_no_orphaned_generated_files_are_committed(generated: dict[str, bytes]) -> None:
    committed = sorted(p.name for p in COMMITTED.glob("*_pb2*.py*"))
    assert committed == sorted(generated)
