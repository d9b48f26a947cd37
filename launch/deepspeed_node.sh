#!/usr/bin/env bash
# Launch with the DeepSpeed launcher from a hostfile (see launch/hostfile.example).
#   With passwordless SSH, on the first host only:
#     HOSTFILE=launch/hostfile.example MASTER_ADDR=node001 launch/deepspeed_node.sh configs/tiny.yaml engine.type=deepspeed
#   Without SSH, on every host (NODE_RANK = its line in the hostfile, from 0):
#     NODE_RANK=1 HOSTFILE=... MASTER_ADDR=node001 launch/deepspeed_node.sh configs/tiny.yaml engine.type=deepspeed
set -euo pipefail
: "${HOSTFILE:?set HOSTFILE}" "${MASTER_ADDR:?set MASTER_ADDR}"
CONFIG=${1:?usage: launch/deepspeed_node.sh CONFIG.yaml [key=value ...]}
shift
nodes=$(grep -cv '^\s*\(#\|$\)' "$HOSTFILE")
slots=$(grep -v '^\s*\(#\|$\)' "$HOSTFILE" | head -1 | sed -n 's/.*slots=\([0-9]*\).*/\1/p')
args=(--hostfile="$HOSTFILE" --master_addr="$MASTER_ADDR" --master_port="${MASTER_PORT:-29500}" --no_local_rank)
if [ -n "${NODE_RANK:-}" ]; then args+=(--no_ssh --node_rank="$NODE_RANK"); fi
exec deepspeed "${args[@]}" --module dist_llm.cli train "$CONFIG" \
  "launch.nnodes=$nodes" "launch.nproc_per_node=$slots" checkpoint.resume=auto "$@"
