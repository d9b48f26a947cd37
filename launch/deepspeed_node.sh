#!/usr/bin/env bash
# Launch with the DeepSpeed launcher from a hostfile (see launch/hostfile.example).
#   With passwordless SSH, on the first host only (pdsh reaches the others; or DS_LAUNCHER=openmpi|slurm|...):
#     HOSTFILE=launch/hostfile.example launch/deepspeed_node.sh configs/tiny.yaml engine.type=deepspeed
#   Without SSH, on every host (NODE_RANK = its line in the hostfile, from 0):
#     NODE_RANK=1 HOSTFILE=launch/hostfile.example launch/deepspeed_node.sh configs/tiny.yaml engine.type=deepspeed
# MASTER_ADDR defaults to the hostfile's first host.
set -euo pipefail
: "${HOSTFILE:?set HOSTFILE}"
CONFIG=${1:?usage: launch/deepspeed_node.sh CONFIG.yaml [key=value ...]}
shift
args=(--launcher=deepspeed --hostfile="$HOSTFILE" --master-port="${MASTER_PORT:-29500}"
      --ds-launcher="${DS_LAUNCHER:-pdsh}")
if [ -n "${MASTER_ADDR:-}" ]; then args+=(--master-addr="$MASTER_ADDR"); fi
if [ -n "${NODE_RANK:-}" ]; then args+=(--no-ssh --node-rank="$NODE_RANK"); fi
exec dist-llm launch "$CONFIG" "$@" "${args[@]}"
