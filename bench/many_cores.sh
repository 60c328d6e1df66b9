#!/usr/bin/env bash
# Issue 16's many-core figures, on a lent device machine (16 cores; its GPU is not used), in one
# call: Quorum against Flower 1.42 at P = 10M, N = 2 and 25 (bench/round_time.py), then Quorum's
# P = 250M round against its transfer floor in each mode (bench/round_memory.py). That machine
# reaches no package index: the wheels of bench/device_wheels.txt travel in WHEELS (default .whl;
# `bash bench/fetch_device_wheels.sh` here first). The device tool's call, about 6 minutes:
#     run(command="QUORUM_REVISION=<commit> bash bench/many_cores.sh",
#         carry=[".whl"], timeout_s=540)   # <commit> written out: no git history travels
# Logs, the machine's facts and the results' JSON (one tarball) go to OUT (default
# device-results). The same script runs here for a check of the wheel set, at small sizes:
#     PARAMS=1000000 NODES=2 MEMORY_PARAMS=20000000 ROUNDS=4 bash bench/many_cores.sh
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
OUT=${OUT:-device-results}
SITE=${SITE:-/tmp/site}
PARAMS=${PARAMS:-10000000}
NODES=${NODES:-2 25}
MEMORY_PARAMS=${MEMORY_PARAMS:-250000000}
ROUNDS=${ROUNDS:-6}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHEELS"/*.whl || exit 1
# The carried wheels come before the image's own packages, in this shell and in every process
# the benchmarks start (bench/common.py's child_env keeps PYTHONPATH); Flower's CLIs are in
# $SITE/bin.
export PYTHONPATH="$SITE" PATH="$SITE/bin:$PATH" QUORUM_BENCH_BIN="$SITE/bin" PYTHONUNBUFFERED=1
{
    echo "cores $(nproc), revision ${QUORUM_REVISION:-unknown}"
    free -m | head -2
    python3 -c "import sys, grpc, google.protobuf as pb, flwr, numpy, torch
print('python', sys.version.split()[0], 'grpcio', grpc.__version__, 'protobuf', pb.__version__,
      'flwr', flwr.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__)"
} 2>&1 | tee "$OUT/machine.txt"
status=0
# shellcheck disable=SC2086  # NODES is a list
timeout 330 python3 bench/round_time.py --params "$PARAMS" --nodes $NODES --rounds "$ROUNDS" \
    --timeout 200 > "$OUT/round_time.log" 2>&1 || status=1
tail -n 15 "$OUT/round_time.log"
timeout 170 python3 bench/round_memory.py --params "$MEMORY_PARAMS" --nodes 2 --rounds "$ROUNDS" \
    --modes sync async secagg --timeout 80 > "$OUT/round_memory.log" 2>&1 || status=1
tail -n 8 "$OUT/round_memory.log"
tar -czf "$OUT/results.tar.gz" bench/results 2>/dev/null
exit $status
