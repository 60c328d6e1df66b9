#!/usr/bin/env bash
# The GPU checks of a session that is lent a GPU, in one go (see bench/README.md):
# DP-SGD steps through TorchTask + PrivacyLedger, and the GPT baseline on one GPU (plain torch
# and single-rank DeepSpeed). The GPU machine has torch but none of Quorum's other dependencies:
# the wheels of bench/device_wheels.txt (bench/fetch_device_wheels.sh), hjson and a DeepSpeed
# wheel built here travel in WHEELS (default .whl) and MNIST in MNIST_DIR (default
# .gpudata/mnist). Results go to OUT (default gpu-results).
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
MNIST_DIR=${MNIST_DIR:-.gpudata/mnist}
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --find-links "$WHEELS" --target /tmp/site -r bench/device_wheels.txt hjson deepspeed || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 DS_BUILD_OPS=0 DS_ACCELERATOR=cuda
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
status=0
timeout 240 python3 bench/gpu_dp_step.py --mnist-dir "$MNIST_DIR" --json "$OUT/gpu_dp_step.json" \
    2>&1 | tee "$OUT/gpu_dp_step.log" || status=1
if [ -f bench/gpu_baseline.py ]; then
    timeout 240 python3 bench/gpu_baseline.py --json "$OUT/gpu_baseline.json" \
        2>&1 | tee "$OUT/gpu_baseline.log" || status=1
fi
exit $status
