#!/usr/bin/env bash
# Start one node of a multi-node data-parallel job with torchrun's static rendezvous.
# Run the same command on every node, changing only NODE_RANK:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 GPUS_PER_NODE=8 launch/torchrun_node.sh configs/tiny.yaml
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 GPUS_PER_NODE=8 launch/torchrun_node.sh configs/tiny.yaml
# Extra arguments after the config are dotted overrides, e.g. train.max_steps=1000.
set -euo pipefail
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${MASTER_ADDR:?set MASTER_ADDR}"
CONFIG=${1:?usage: launch/torchrun_node.sh CONFIG.yaml [key=value ...]}
shift
exec python -m torch.distributed.run \
  --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="${GPUS_PER_NODE:-1}" \
  --master_addr="$MASTER_ADDR" --master_port="${MASTER_PORT:-29500}" \
  -m dist_llm.cli train "$CONFIG" "launch.nnodes=$NNODES" "launch.nproc_per_node=${GPUS_PER_NODE:-1}" \
  checkpoint.resume=auto "$@"
