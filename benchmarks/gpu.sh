#!/usr/bin/env bash
# The GPU check (issue 21), one command from the repository root, under 8 minutes on one GPU, no network:
#   AVSSL_SHARED_DATA=/path/to/shared/data bash benchmarks/gpu.sh        # results and SUMMARY.md in $OUT
#   bash benchmarks/gpu.sh --dry-run                                     # the same steps on the CPU, toy sizes
# 1. ingest the real AVE-PM training clips (avepm/pretrain.txt) at the paper preset (raw frames + PCM audio)
# 2. models.py: the paper preset's training step, compiled, bf16, channels_last, batch 512: clips/s and MFU
# 3. train.py loader: clips/s per loader worker on those shards, and against the loader as of 6ac834b
# 4. train.py e2e: `avssl pretrain` (compiled, bf16) with the new loader on all host cores but one:
#    clips/s and data-wait share (the shards listed repeatedly so that every worker has whole batches)
# 5. one summary table (targets: MFU >= 35 %, data-wait < 5 %)
# Wheels for packages the GPU image lacks (PyAV, webdataset, soxr, soundfile) are carried in .whl/.
set -u
DRY=0; [ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-/tmp/avssl-gpu}; mkdir -p "$OUT"
DATA=${AVSSL_SHARED_DATA:-$PWD/../shared/data}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/src PYTHONUNBUFFERED=1
[ -f "$DATA/avepm/pretrain.txt" ] || { echo "no real clips at $DATA (set AVSSL_SHARED_DATA)"; exit 2; }
CORES=$(nproc); W=$(( CORES > 1 ? CORES - 1 : 1 ))
LIST="$DATA/avepm/pretrain.txt"
if [ $DRY = 1 ]; then  # CPU: 12 clips, batch 4, one worker, eager fp32; checks the plumbing, not the speed
  LIST="$OUT/dry.txt"; { echo "# dry run"; grep -v '^#' "$DATA/avepm/pretrain.txt" | head -12 | sed "s|^|$DATA/avepm/|"; } > "$LIST"
  W=1; DEV=(--device cpu); MODELS=(--throughput --preset tiny --batch 8 --no-compile --warmup 1 --steps 2)
  E2E=(--batch 4 --e2e-steps 2 --loader-batch 4 --loader-batches 2 --rounds 1 --replicate-to 16); TM=900; TT=900
else
  DEV=(--device cuda); MODELS=(--device cuda --batch 512); TM=200; TT=330
  E2E=(--compile --e2e-steps 40 --loader-batch 64 --loader-batches 8 --rounds 2 --replicate-to $(( 2 * 512 * W )))
fi
WS="1"; [ $W -gt 1 ] && WS="1 $W"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no GPU"; echo "cores $CORES"
  python3 -c "import torch; print(torch.__version__)"; uptime; } 2>&1 | tee "$OUT/machine.txt"
timeout $TM python3 benchmarks/models.py "${MODELS[@]}" 2>&1 | tee "$OUT/models.log"
timeout $TT python3 benchmarks/train.py --presets paper "${DEV[@]}" --parts loader e2e --workers $WS \
  --e2e-workers $W --videos-from "$LIST" --storage jpeg/flac raw/pcm "${E2E[@]}" 2>&1 | tee "$OUT/train.log"
python3 - "$OUT" <<'PY' | tee "$OUT/SUMMARY.md"
import json, re, sys
from pathlib import Path
out = Path(sys.argv[1])
models = next((json.loads(l) for l in reversed((out / "models.log").read_text().splitlines()) if l.startswith("{")), {})
train = (out / "train.log").read_text()
loop = re.findall(r"^\| steps \d+-\d+ \| (\d+) \| ([\d.]+) \| ([\d.]+)% \|", train, re.M)
worker = re.findall(r"^\| raw/pcm \| [\d.]+ \| [\d.]+ \| 1 \| \d+ \([^)]*\) \| (\d+) \| ([\d.]+) \|", train, re.M)
peak, gflop = models.get("peak_flops"), models.get("train_gflops_per_clip")
rows = [("compiled bf16 training step (models.py), clips/s", f"{models.get('clips_per_s', float('nan')):.0f}", ""),
        ("its MFU", f"{100 * models['mfu']:.1f} %" if models.get("mfu") else "n/a", ">= 35 %"),
        ("loader clips/s per worker core (raw/pcm), ratio to 6ac834b's",
         f"{worker[0][0]}, {worker[0][1]}x" if worker else "n/a", ">= 425")]
if loop:
    w, rate, wait = loop[-1]
    mfu = f"{100 * float(rate) * gflop * 1e9 / peak:.1f} %" if peak and gflop else "n/a"
    rows += [(f"pretrain loop clips/s ({w} loader workers)", rate, ""), ("pretrain loop MFU", mfu, ">= 35 %"),
             ("pretrain loop data-wait share", f"{wait} %", "< 5 %")]
print(f"| {models.get('device', '?')} | measured | target |\n|---|---:|---:|")
for name, value, target in rows:
    print(f"| {name} | {value} | {target} |")
PY
