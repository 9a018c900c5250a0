#!/usr/bin/env bash
# Multi-slice example: 2 x v5e-256 (512 chips) as one queued resource, install, then train across slices.
# The data axis of the mesh spans the slices (data-parallel over the data-center network); fsdp/tensor
# stay inside a slice, so the only change to a one-slice run is --config.mesh.num_slices.
#
#   PROJECT=my-project ZONE=us-west4-a TPU_NAME=embed-ms \
#   WORKDIR=gs://my-bucket/runs/ms1 INIT_MODEL=gs://my-bucket/models/qwen3-0.6b-bitnet \
#   TRAIN_FILES=gs://my-bucket/data/pairs-00.jsonl,gs://my-bucket/data/pairs-01.jsonl \
#   launch/multislice_v5e.sh [--spot] [--dry-run]
#
# SLICES (default 2), CONFIG (default configs/qwen3_0p6b_pretrain.py). --dry-run or DRY_RUN=1 prints only.
# Afterwards: `python3 launch/tpu.py logs --slices 2`, `... stop --slices 2`, `... delete --slices 2`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"

for arg in "$@"; do
  case "$arg" in
    --dry-run) export DRY_RUN=1 ;;
    --spot) export SPOT=1 ;;
    *) echo "usage: $0 [--spot] [--dry-run]" >&2; exit 2 ;;
  esac
done
export SLICES="${SLICES:-2}" ACCELERATOR="${ACCELERATOR:-v5litepod-256}"
export RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}"
config="${CONFIG:-configs/qwen3_0p6b_pretrain.py}"
: "${WORKDIR:?set WORKDIR (a gs:// path every host can reach)}"
: "${INIT_MODEL:?set INIT_MODEL (the converted encoder, e.g. gs://.../qwen3-0.6b-bitnet)}"
: "${TRAIN_FILES:?set TRAIN_FILES (comma-separated JSONL/Parquet paths)}"

"$py" "$here/tpu.py" create
"$py" "$here/tpu.py" wait
"$py" "$here/tpu.py" install
"$py" "$here/tpu.py" run -- bitembed-jax train --config "$config" --workdir "$WORKDIR" \
  --config.init.model="$INIT_MODEL" --config.data.train_files="$TRAIN_FILES" \
  --config.mesh.num_slices="$SLICES"
