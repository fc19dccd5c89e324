#!/usr/bin/env bash
# Stage 3 on every GPU of one machine: one shard per GPU, each process sees one GPU only.
#
#   tools/detect_gpus.sh [animal_sound_detector.py flags...]
#
# The shards write into the same output folder (paths.detections) and manifest; a rerun
# resumes each. The number of GPUs is taken from nvidia-smi (or set NGPUS=N).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${NGPUS:-$(nvidia-smi --list-gpus | wc -l)}
if [ "$n" -lt 1 ]; then
  echo "detect_gpus.sh: no GPU found (set NGPUS=N to override)" >&2
  exit 2
fi
pids=()
for k in $(seq 1 "$n"); do
  CUDA_VISIBLE_DEVICES=$((k - 1)) .venv/bin/python animal_sound_detector.py \
      --shard "$k/$n" --set detect.device=cuda -q "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
