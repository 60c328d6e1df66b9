#!/usr/bin/env bash
# GPU check of the simulator: MNIST, 100 virtual sites on one host, fits on one GPU through one
# CUDA context, with 1 and with 4 slots (concurrent fits).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
# The wheels of bench/device_wheels.txt (bash bench/fetch_device_wheels.sh), by the list.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --find-links .whl --target /tmp/site -r bench/device_wheels.txt || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee $OUT/gpu.txt
python3 -c "import torch, grpc, google.protobuf as p; print(torch.__version__, torch.cuda.get_device_name(), grpc.__version__, p.__version__)"
for slots in 4 1; do
  timeout 200 python3 -m quorum sim --config examples/mnist/sim.toml --report $OUT/mnist-gpu-$slots.json \
    --set site.device=\"cuda\" --set sim.hosts=1 --set sim.slots_per_host=$slots --set sim.baselines=false \
    --set sim.output_dir=/tmp/mnist-gpu-$slots --set run.rounds=20 > $OUT/mnist-gpu-$slots.log 2>&1
  echo "slots=$slots rc=$?"; tail -4 $OUT/mnist-gpu-$slots.log
  grep -h "event=\(site_failed\|task_failed\)" /tmp/mnist-gpu-$slots/work/logs/host-0.log | head -3
  python3 -c "
import json; r=json.load(open('$OUT/mnist-gpu-$slots.json')); t=[x['wall_time_s'] for x in r['rounds']]
d=[b-a for a,b in zip(t,t[1:])]; d.sort(); print('slots=$slots', r['status'], 'final', r['final'], 'median round s', d[len(d)//2] if d else None, 'hosts', [(h['peak_rss_mb'], h['built_at_end']) for h in r['hosts']])
" 2>&1 | tail -2
done
