"""The wheels carried to a device machine (bench/device_wheels.txt, bench/many_cores.sh) are
versions this checkout accepts: pyproject's ranges, and the runtimes its generated code was
made for. A pin left behind by a change of either fails here, not on a lent machine's clock."""

from __future__ import annotations

import pathlib
import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = pathlib.Path(__file__).resolve().parents[2]


def pins() -> dict[str, Version]:
    found: dict[str, Version] = {}
    for line in (REPO / "bench" / "device_wheels.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            found[canonicalize_name(name)] = Version(version)
    return found


def test_every_pin_is_exact_and_named_once() -> None:
    lines = [
        line
        for line in (REPO / "bench" / "device_wheels.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[0-9][0-9A-Za-z.]*", line) for line in lines)
    assert len(pins()) == len(lines)


def test_pins_are_within_pyprojects_ranges() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [
        Requirement(text)
        for text in [*project["dependencies"], *project["optional-dependencies"]["bench"]]
    ]
    carried = pins()
    checked = 0
    for requirement in wanted:
        version = carried.get(canonicalize_name(requirement.name))
        if version is not None:
            assert requirement.specifier.contains(version), (requirement, version)
            checked += 1
    # The ones whose image versions Quorum cannot take, and Flower itself, are carried.
    assert {"protobuf", "grpcio", "typer", "pydantic", "blake3", "flwr"} <= set(carried)
    assert checked >= 6


def test_grpc_and_protobuf_pins_run_the_generated_code() -> None:
    proto = REPO / "quorum" / "proto"
    stub = (proto / "federation_pb2_grpc.py").read_text()
    grpc_made = re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", stub)
    assert grpc_made is not None
    assert pins()["grpcio"] >= Version(grpc_made.group(1))
    messages = (proto / "federation_pb2.py").read_text()
    gencode = re.search(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),"
        r"\s*(\d+),",
        messages,
    )
    assert gencode is not None
    major, minor, patch = (int(part) for part in gencode.groups())
    protobuf = pins()["protobuf"]
    # protobuf's runtime takes gencode of its own major version, no newer than itself.
    assert protobuf.major == major
    assert protobuf >= Version(f"{major}.{minor}.{patch}")
