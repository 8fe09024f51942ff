#!/usr/bin/env bash
# Runs N CPU processes on this machine as one multi-process JAX job (jax.distributed over
# localhost), to test multi-host code paths (per-process data, make_array_from_process_local_data,
# orbax multi-process checkpoints) without a cluster.
#
#   launch/local_multiprocess.sh NUM_PROCESSES DEVICES_PER_PROCESS COMMAND...
#   launch/local_multiprocess.sh 2 4 python -m experiments.pretrain \
#       --config=experiments/configs/wall.py:smoke --workdir=/tmp/mp/pretrain
#
# Each process sees DEVICES_PER_PROCESS fake CPU devices; jepa_jax.distributed.maybe_initialize()
# reads JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID. Output lines are prefixed
# with the process id; the exit status is non-zero if any process fails. If a process dies, the
# others stop after JEPA_JAX_PEER_TIMEOUT_S seconds (default 30) and process 0 says, in one line,
# which one stopped and the step the same command resumes from (jepa_jax/distributed.py).
set -euo pipefail

if [[ $# -lt 3 ]]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS COMMAND..." >&2
  exit 2
fi
num_processes=$1
devices_per_process=$2
shift 2
port=${JAX_PORT:-$((20000 + RANDOM % 20000))}

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup INT TERM

for ((i = 0; i < num_processes; i++)); do
  (
    export JAX_PLATFORMS=cpu
    export XLA_FLAGS="--xla_force_host_platform_device_count=${devices_per_process}"
    export JAX_COORDINATOR_ADDRESS="localhost:${port}"
    export JAX_NUM_PROCESSES="${num_processes}"
    export JAX_PROCESS_ID="${i}"
    # Gloo prints a line each time it connects a group of devices; nothing to act on. Its
    # threads can write two such lines into each other, so match the message anywhere.
    "$@" 2>&1 | sed -u -e '/is connected to [0-9]* peer ranks/d' -e "s/^/[process ${i}] /"
    exit "${PIPESTATUS[0]}"
  ) &
  pids+=($!)
done

status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=1
done
exit "$status"
