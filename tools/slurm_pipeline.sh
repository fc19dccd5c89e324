#!/usr/bin/env bash
# Submit stages 1-4 as four Slurm job arrays of N shards each, each stage waiting for the one
# before to finish (afterany: a shard with failed items still lets the next stage take the
# rest), and print where the run stands at the end.
#
#   tools/slurm_pipeline.sh 16 --config config.yaml
#
# Stage 1 is limited by what YouTube lets one address download, not by CPUs: shards on nodes
# that share one public address (NAT) share its rate limit, so more shards need not be faster
# (docs/scaling.md). Stage 3 asks for one GPU per shard.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:?usage: tools/slurm_pipeline.sh N_SHARDS [FLAGS for every stage...]}
shift
mkdir -p logs
array="--array=1-$n"
j1=$(sbatch --parsable "$array" --job-name=av-download tools/slurm_stage.sbatch download_video.py "$@")
j2=$(sbatch --parsable "$array" --job-name=av-extract --dependency=afterany:"$j1" \
     tools/slurm_stage.sbatch video_to_audio.py "$@")
j3=$(sbatch --parsable "$array" --job-name=av-detect --dependency=afterany:"$j2" --gres=gpu:1 \
     tools/slurm_stage.sbatch animal_sound_detector.py "$@")
j4=$(sbatch --parsable "$array" --job-name=av-features --dependency=afterany:"$j3" \
     tools/slurm_stage.sbatch preprocess_audio_vae.py "$@")
echo "submitted: download $j1, extract $j2, detect $j3, features $j4 ($n shards each)"
echo "follow it with: .venv/bin/python pipeline_status.py $*"
