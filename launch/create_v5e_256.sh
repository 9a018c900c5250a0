#!/usr/bin/env bash
# Bring up a TPU v5e-256 slice (64 hosts x 4 chips) and install bitembed-jax on every host.
#
#   PROJECT=my-project ZONE=us-west4-a TPU_NAME=embed launch/create_v5e_256.sh [--spot] [--queued] [--dry-run]
#
# --spot: Spot capacity (preemptible; training resumes from its last checkpoint when restarted).
# --queued: request through a queued resource (waits in line for capacity instead of failing).
# --dry-run or DRY_RUN=1: print the gcloud commands only. GIT_URL/GIT_REF: install from git instead of
# copying this checkout. Then start training with `python3 launch/tpu.py run -- bitembed-jax train ...`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"

for arg in "$@"; do
  case "$arg" in
    --dry-run) export DRY_RUN=1 ;;
    --spot) export SPOT=1 ;;
    --queued) export QUEUED=1 ;;
    *) echo "usage: $0 [--spot] [--queued] [--dry-run]" >&2; exit 2 ;;
  esac
done
export ACCELERATOR="${ACCELERATOR:-v5litepod-256}" RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}"

"$py" "$here/tpu.py" create
"$py" "$here/tpu.py" wait  # a no-op unless queued
"$py" "$here/tpu.py" install
