#!/usr/bin/env bash
# Runs a command on every worker of a Cloud TPU VM (pod slice) at once.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh --setup      # copy repo, pip install
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh \
#       python -m experiments.pretrain --config=experiments/configs/wall.py:paper \
#       --workdir=gs://my-bucket/wall/pretrain
#
# Every worker runs the same command; JEPA_JAX_DISTRIBUTED=1 makes
# jepa_jax.distributed.maybe_initialize() call jax.distributed.initialize(), which finds the
# coordinator and the worker ids in the TPU VM metadata. The workdir must be shared (GCS).
# Optional: PROJECT (gcloud project), REPO_DIR (checkout location on the workers, default
# ~/jepa_jax).
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU VM zone}"
repo_dir=${REPO_DIR:-'~/jepa_jax'}
gcloud_args=(--zone="${ZONE}")
[[ -n "${PROJECT:-}" ]] && gcloud_args+=(--project="${PROJECT}")

if [[ $# -lt 1 ]]; then
  echo "usage: TPU_NAME=... ZONE=... $0 (--setup | COMMAND...)" >&2
  exit 2
fi

if [[ "$1" == "--setup" ]]; then
  here=$(cd "$(dirname "$0")/.." && pwd)
  tarball=$(mktemp --suffix=.tar.gz)
  tar -C "${here}" --exclude=.git -czf "${tarball}" .
  gcloud compute tpus tpu-vm scp "${tarball}" "${TPU_NAME}:/tmp/jepa_jax.tar.gz" \
      --worker=all "${gcloud_args[@]}"
  remote="mkdir -p ${repo_dir} && tar -C ${repo_dir} -xzf /tmp/jepa_jax.tar.gz"
  remote+=" && pip install -q 'jax[tpu]' -e ${repo_dir}"
  rm -f "${tarball}"
else
  # Quote each argument so flags survive the remote shell unchanged.
  remote="cd ${repo_dir} && JEPA_JAX_DISTRIBUTED=1 $(printf '%q ' "$@")"
fi
exec gcloud alpha compute tpus tpu-vm ssh "${TPU_NAME}" --worker=all "${gcloud_args[@]}" \
    --command="${remote}"
