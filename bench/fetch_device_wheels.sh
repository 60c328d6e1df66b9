#!/usr/bin/env bash
# Downloads bench/device_wheels.txt as wheels for the lent GPU machines (CPython 3.12, x86-64
# manylinux) into WHEELS (default .whl, which git ignores). Run it here, where PyPI is reachable;
# the device's run then carries WHEELS (its `carry` argument) and bench/many_cores.sh or
# bench/gpu_sim.sh installs them there.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
PYTHON=${PYTHON:-python3}
PY_VERSION=${PY_VERSION:-3.12}  # 3.11 for a check on this machine (bench/many_cores.sh)
mkdir -p "$WHEELS"
platforms=()
for tag in manylinux_2_34 manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
    --implementation cp "${platforms[@]}" -d "$WHEELS" -r bench/device_wheels.txt
du -sh "$WHEELS"
