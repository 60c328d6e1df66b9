#!/usr/bin/env bash
# Issue 16's many-core figures, on a lent device machine (16 cores; its GPU is not used), in one
# call: Quorum against Flower 1.42 at P = 10M, N = 25 and 2 (bench/round_time.py), then Quorum's
# P = 250M round against its transfer floor in each mode (bench/round_memory.py). That machine
# reaches no package index: the wheels of bench/device_wheels.txt travel in WHEELS (default .whl;
# `bash bench/fetch_device_wheels.sh` here first). The device tool's call, about 5 minutes:
#     run(command="QUORUM_REVISION=<commit> bash bench/many_cores.sh",
#         carry=[".whl"], timeout_s=480)   # <commit> written out: no git history travels
# Logs, the machine's facts and a tarball of the results' JSON and the runs' logs go to OUT
# (default device-results), each step's as soon as it ends. The same script runs here for a
# check of the wheel set, at small sizes (bench/README.md, "Many cores on a lent machine"):
#     PARAMS=1000000 NODES=2 MEMORY_PARAMS=20000000 ROUNDS=4 bash bench/many_cores.sh
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
OUT=${OUT:-device-results}
SITE=${SITE:-/tmp/site}
PARAMS=${PARAMS:-10000000}
NODES=${NODES:-25 2}  # the issue's cell first: a cut run keeps it
MEMORY_PARAMS=${MEMORY_PARAMS:-250000000}
ROUNDS=${ROUNDS:-6}
MEMORY_ROUNDS=${MEMORY_ROUNDS:-4}
mkdir -p "$OUT"
# By the list, not *.whl: a wheel of another version left in WHEELS would stop pip.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --find-links "$WHEELS" --target "$SITE" -r bench/device_wheels.txt || exit 1
# The carried wheels come before the image's own packages, in this shell and in every process
# the benchmarks start (bench/common.py's child_env keeps PYTHONPATH); Flower's CLIs are in
# $SITE/bin.
export PYTHONPATH="$SITE" PATH="$SITE/bin:$PATH" QUORUM_BENCH_BIN="$SITE/bin" PYTHONUNBUFFERED=1
# Every entry point the runs use, imported first: a package of the image at a version the
# carried ones refuse fails here in seconds, not minutes into a run.
{
    echo "cores $(nproc), revision ${QUORUM_REVISION:-unknown}"
    free -m | head -2
    python3 - <<'PY'
import importlib, importlib.metadata as md, sys
for name in ("quorum.server_process", "quorum.cli", "bench.round_time", "bench.round_memory",
             "flwr.superlink.cli.flower_superlink", "flwr.supernode.cli.flower_supernode",
             "flwr.cli.app", "flwr.superlink.cli.flwr_serverapp"):
    importlib.import_module(name)
names = ("grpcio", "protobuf", "flwr", "numpy", "torch", "typing-extensions", "rich", "pathspec",
         "packaging", "requests", "httpx", "annotated-doc", "click", "typer")
print("python", sys.version.split()[0], *(f"{n} {md.version(n)}" for n in names))
PY
} > "$OUT/machine.txt" 2>&1
status=$?
cat "$OUT/machine.txt"
[ $status -eq 0 ] || exit 1
collect() {
    find bench/work -maxdepth 2 \( -name '*.log' -o -name '*.out' \) -size -4M -print0 |
        tar -czf "$OUT/results.tar.gz" bench/results --null -T - 2>/dev/null
}
# shellcheck disable=SC2086  # NODES is a list
timeout -k 15 250 python3 bench/round_time.py --params "$PARAMS" --nodes $NODES \
    --rounds "$ROUNDS" --timeout 170 > "$OUT/round_time.log" 2>&1 || status=1
tail -n 15 "$OUT/round_time.log"
collect
timeout -k 15 150 python3 bench/round_memory.py --params "$MEMORY_PARAMS" --nodes 2 \
    --rounds "$MEMORY_ROUNDS" --modes sync async secagg --timeout 70 \
    > "$OUT/round_memory.log" 2>&1 || status=1
tail -n 8 "$OUT/round_memory.log"
collect
exit $status
