"""Regenerate quorum/proto/ from proto/quorum/v1/*.proto (run by `make proto`).

The proto sources are mapped onto the package path quorum/proto so that the generated modules
import each other as `quorum.proto.<name>_pb2`.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ROOT / "proto" / "quorum" / "v1"


def generate(out_root: pathlib.Path) -> list[pathlib.Path]:
    """Writes the generated modules under out_root/quorum/proto and returns their paths."""
    (out_root / "quorum" / "proto").mkdir(parents=True, exist_ok=True)
    protos = sorted(SOURCES.glob("*.proto"))
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-Iquorum/proto={SOURCES}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[f"quorum/proto/{p.name}" for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_root / "quorum" / "proto").glob("*_pb2*.py*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT)
    generated = generate(parser.parse_args().out)
    print("\n".join(str(p) for p in generated), file=sys.stderr)


if __name__ == "__main__":
    main()
