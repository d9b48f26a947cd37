#!/usr/bin/env bash
# Start one node of a multi-node torchrun job (c10d rendezvous). Run the same command on every node;
# RDZV_HOST is any one of the nodes (all give the same), ranks are handed out as the nodes join:
#   NNODES=2 RDZV_HOST=node001 GPUS_PER_NODE=8 launch/torchrun_node.sh configs/tiny.yaml
# Extra arguments after the config are dotted overrides, e.g. train.max_steps=1000. The run resumes
# from its latest checkpoint if it has one; MAX_RESTARTS restarts every rank after a failure.
set -euo pipefail
: "${NNODES:?set NNODES}" "${RDZV_HOST:?set RDZV_HOST}"
CONFIG=${1:?usage: launch/torchrun_node.sh CONFIG.yaml [key=value ...]}
shift
exec dist-llm launch "$CONFIG" "$@" --nnodes="$NNODES" --nproc-per-node="${GPUS_PER_NODE:-1}" \
  --rdzv-endpoint="$RDZV_HOST:${RDZV_PORT:-29500}" --rdzv-id="${RDZV_ID:-dist-llm}" \
  --max-restarts="${MAX_RESTARTS:-0}"
