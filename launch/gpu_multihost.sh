#!/usr/bin/env bash
# Runs one process per GPU host of a multi-host job. Start it on every host with the same
# COORDINATOR (host 0's address and a free port), the number of hosts and this host's id:
#
#   COORDINATOR=10.0.0.1:1234 NUM_HOSTS=2 HOST_ID=0 launch/gpu_multihost.sh \
#       python -m experiments.pretrain --config=experiments/configs/wall.py:paper \
#       --workdir=/shared/run/pretrain          # on host 0
#   COORDINATOR=10.0.0.1:1234 NUM_HOSTS=2 HOST_ID=1 launch/gpu_multihost.sh ...   # on host 1
#
# Each process drives all GPUs of its host; jepa_jax.distributed.maybe_initialize() reads the
# JAX_* variables set here. The workdir must be on storage every host can see (NFS, GCS).
# Under SLURM, `srun python -m experiments.pretrain ...` works without this script: JAX reads
# the SLURM environment itself.
set -euo pipefail

: "${COORDINATOR:?set COORDINATOR=host:port of host 0}"
: "${NUM_HOSTS:?set NUM_HOSTS to the number of hosts}"
: "${HOST_ID:?set HOST_ID to the index of this host, 0..NUM_HOSTS-1}"
if [[ $# -lt 1 ]]; then
  echo "usage: COORDINATOR=host:port NUM_HOSTS=N HOST_ID=i $0 COMMAND..." >&2
  exit 2
fi

export JAX_COORDINATOR_ADDRESS="${COORDINATOR}"
export JAX_NUM_PROCESSES="${NUM_HOSTS}"
export JAX_PROCESS_ID="${HOST_ID}"
# Let XLA use most of the GPU memory up front (the JAX default is 75%).
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
exec "$@"
