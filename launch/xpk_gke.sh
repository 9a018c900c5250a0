#!/usr/bin/env bash
# bitembed-jax on GKE with xpk (https://github.com/AI-Hypercomputer/xpk), for users on Kubernetes.
# xpk makes the GKE cluster with TPU node pools and runs one pod per TPU host; jax finds the slice and
# (multi-slice) the other slices from the environment GKE sets, so the training command is unchanged.
#
#   launch/xpk_gke.sh [--dry-run] cluster   # GKE cluster with NUM_SLICES x TPU_TYPE node pools
#   launch/xpk_gke.sh [--dry-run] train     # the training workload
#   launch/xpk_gke.sh [--dry-run] status    # workloads and their state
#   launch/xpk_gke.sh [--dry-run] delete    # delete the workload (the cluster stays: `xpk cluster delete`)
#
# Env: PROJECT ZONE CLUSTER (required); WORKLOAD (bitembed-train) TPU_TYPE (v5litepod-256) NUM_SLICES (1)
# SPOT=1 (else on-demand); train: WORKDIR INIT_MODEL TRAIN_FILES (gs:// paths) CONFIG MAX_RESTARTS (10).
# Image: by default xpk layers this checkout onto BASE_IMAGE (python:3.11) and the pods pip install at
# start; set DOCKER_IMAGE to a prebuilt image with bitembed-jax installed and this checkout as its working
# directory to skip that (faster on big pods).
# --dry-run or DRY_RUN=1 prints the xpk commands only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."  # xpk layers the current directory into the image

step=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) export DRY_RUN=1 ;;
    cluster|train|status|delete) step="$arg" ;;
    *) step="" ; break ;;
  esac
done
if [[ -z "$step" ]]; then echo "usage: $0 [--dry-run] cluster|train|status|delete" >&2; exit 2; fi

: "${PROJECT:?set PROJECT}" "${ZONE:?set ZONE}" "${CLUSTER:?set CLUSTER (the GKE cluster name)}"
workload="${WORKLOAD:-bitembed-train}"
tpu_type="${TPU_TYPE:-v5litepod-256}"
slices="${NUM_SLICES:-1}"
where=(--cluster="$CLUSTER" --project="$PROJECT" --zone="$ZONE")
py="${PYTHON:-python3}"

q() { "$py" -c 'import shlex, sys; print(shlex.join(sys.argv[1:]))' "$@"; }  # shell-quote, readably

run() {  # print the exact command, run it unless DRY_RUN
  echo "+ $(q "$@")"
  if [[ "${DRY_RUN:-0}" != 1 ]]; then
    command -v "$1" >/dev/null || { echo "$1 not found on PATH (pip install xpk)" >&2; exit 1; }
    "$@"
  fi
}

case "$step" in
  cluster)
    capacity=(--on-demand); [[ "${SPOT:-0}" == 1 ]] && capacity=(--spot)
    run xpk cluster create "${where[@]}" --tpu-type="$tpu_type" --num-slices="$slices" "${capacity[@]}"
    ;;
  train)
    : "${WORKDIR:?set WORKDIR (gs://...)}" "${INIT_MODEL:?set INIT_MODEL}" "${TRAIN_FILES:?set TRAIN_FILES}"
    train=(bitembed-jax train --config "${CONFIG:-configs/qwen3_0p6b_pretrain.py}" --workdir "$WORKDIR"
           --config.init.model="$INIT_MODEL" --config.data.train_files="$TRAIN_FILES"
           --config.mesh.num_slices="$slices")
    if [[ -n "${DOCKER_IMAGE:-}" ]]; then
      image=(--docker-image="$DOCKER_IMAGE"); cmd="$(q "${train[@]}")"
    else
      image=(--base-docker-image="${BASE_IMAGE:-python:3.11}" --script-dir=.)
      cmd="pip install -q -r requirements.txt -e \".[tpu]\" gcsfs && $(q "${train[@]}")"
    fi
    # restarts after a preemption or host failure resume from the last checkpoint in WORKDIR
    run xpk workload create "${where[@]}" --workload="$workload" --tpu-type="$tpu_type" \
      --num-slices="$slices" "${image[@]}" --max-restarts="${MAX_RESTARTS:-10}" --command="$cmd"
    ;;
  status) run xpk workload list "${where[@]}" ;;
  delete) run xpk workload delete "${where[@]}" --workload="$workload" ;;
esac
