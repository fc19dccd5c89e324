#!/usr/bin/env bash
# The whole pipeline on a Slurm cluster: stages 1-4 as job arrays of N shards each, then stage
# 5 (vae.py train) as one job. Each waits for the one before to end, however it ended
# (afterany): a shard that failed items, or failed or was cancelled as a whole, still lets
# the next stage take the rest; rerun that shard alone (the line printed at the end), then
# the stages after it, and they take what is new.
#
#   tools/slurm_pipeline.sh [OPTIONS] N_SHARDS [FLAGS for every script, e.g. --config my.yaml]
#
# Options (before N_SHARDS):
#   --gpus G          GPUs: one per stage-3 task (--gres=gpu:1) and G per node for stage 5
#                     (default: $ANIMALVAE_GPUS, else 0: CPUs only, no --gres anywhere)
#   --train-nodes M   nodes for stage 5 (default: 1)
#   --train-procs P   training processes per node (default: G with GPUs, 1 on CPUs)
#   --cpus C          CPUs per task of every job (default: the sbatch files' own)
#   --logs DIR        the jobs' logs (default: logs/)
# Partition, account, memory and time limits: sbatch's own variables (SBATCH_PARTITION,
# SBATCH_ACCOUNT, SBATCH_MEM_PER_NODE, SBATCH_TIMELIMIT), which apply to every job.
#
# Stage 1 is limited by what YouTube lets one address download, not by CPUs: shards on nodes
# that share one public address (NAT) share its rate limit, so more shards need not be faster
# (docs/scaling.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
usage="usage: tools/slurm_pipeline.sh [--gpus G] [--train-nodes M] [--train-procs P] [--cpus C] [--logs DIR] N_SHARDS [FLAGS...]"
gpus=${ANIMALVAE_GPUS:-0}
nodes=1
procs=
cpus=()
logs=logs
while [ $# -gt 0 ]; do
  case $1 in
    --gpus) gpus=${2:?$usage}; shift 2 ;;
    --train-nodes) nodes=${2:?$usage}; shift 2 ;;
    --train-procs) procs=${2:?$usage}; shift 2 ;;
    --cpus) cpus=(--cpus-per-task="${2:?$usage}"); shift 2 ;;
    --logs) logs=${2:?$usage}; shift 2 ;;
    -h|--help) sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "slurm_pipeline.sh: unknown option $1; $usage" >&2; exit 2 ;;
    *) break ;;
  esac
done
n=${1:?$usage}
shift
whole() {  # whole WHAT VALUE LEAST: stop unless VALUE is a whole number >= LEAST
  if ! [[ $2 =~ ^[0-9]+$ ]] || [ "$2" -lt "$3" ]; then
    echo "slurm_pipeline.sh: $1=$2 must be a whole number >= $3; $usage" >&2
    exit 2
  fi
}
whole N_SHARDS "$n" 1
whole --gpus "$gpus" 0
whole --train-nodes "$nodes" 1
whole --train-procs "${procs:-1}" 1
mkdir -p "$logs"
export ANIMALVAE_ROOT=$root
stage=("${cpus[@]}" --parsable --array="1-$n" --export="ALL,SHARDS=$n"
       --output="$logs/%x-%A_%a.out" "$root/tools/slurm_stage.sbatch")

submit() {  # submit NAME AFTER [sbatch options...] -- SCRIPT: a stage's array, after job AFTER
  local name=$1 after=$2
  shift 2
  sbatch --job-name="av-$name" ${after:+--dependency=afterany:$after} "$@"
}
j1=$(sbatch --job-name=av-download "${stage[@]}" download_video.py "$@")
j2=$(submit extract "$j1" "${stage[@]}" video_to_audio.py "$@")
if [ "$gpus" -gt 0 ]; then
  j3=$(submit detect "$j2" --gres=gpu:1 "${stage[@]}" animal_sound_detector.py "$@")
  train=(--gpus-per-node="$gpus" --export="ALL,TRAIN_DEVICE=cuda,NPROC_PER_NODE=${procs:-$gpus}")
else
  j3=$(submit detect "$j2" "${stage[@]}" animal_sound_detector.py "$@")
  train=(--export="ALL,TRAIN_DEVICE=cpu,NPROC_PER_NODE=${procs:-1}")
fi
j4=$(submit features "$j3" "${stage[@]}" preprocess_audio_vae.py "$@")
j5=$(submit train "$j4" "${cpus[@]}" --parsable --nodes="$nodes" "${train[@]}" \
     --output="$logs/%x-%j.out" "$root/tools/slurm_train.sbatch" "$@")
echo "submitted: download $j1, extract $j2, detect $j3, features $j4 ($n shards each), train $j5"
echo "logs: $logs/; where it stands: $root/.venv/bin/python $root/pipeline_status.py $*"
echo "rerun shard K of a stage alone: SHARDS=$n sbatch --array=K $root/tools/slurm_stage.sbatch SCRIPT.py $*"
