#!/usr/bin/env bash
# The GPU checks, as one script (run on a lent GPU machine from the repository root; results in $OUT).
#   models.py: paper preset training step, bf16 + channels_last + torch.compile, batch 512: clips/s, MFU
#   train.py : the real Trainer step at growing batch sizes (no compile), and the paper loader on this host's cores
#   the CUDA smoke test of the trainer
# Wheels for packages the GPU image lacks (PyAV, webdataset, soxr, soundfile) are carried in .whl/.
set -u
OUT=${OUT:-/tmp/avssl-gpu}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/src PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; python3 -c "import torch; print(torch.__version__)"; } 2>&1 | tee "$OUT/machine.txt"
timeout 260 python3 benchmarks/models.py --device cuda --batch 512 2>&1 | tee "$OUT/models_gpu.log"
timeout 150 python3 benchmarks/train.py --presets paper --device cuda --parts trainer --steps 5 --max-batch 1024 2>&1 | tee "$OUT/train_gpu.log"
timeout 90 python3 benchmarks/train.py --presets paper --device cuda --parts loader --workers 8 --videos 16 2>&1 | tee "$OUT/loader_gpu_host.log"
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_train.py -k cuda 2>&1 | tee "$OUT/pytest_cuda.log"
