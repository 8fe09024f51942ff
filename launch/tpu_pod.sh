#!/usr/bin/env bash
# Runs a command on every worker of a Cloud TPU VM (pod slice) at once.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh --setup      # copy repo, pip install
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh \
#       python -m experiments.pretrain --config=experiments/configs/wall.py:paper \
#       --workdir=gs://my-bucket/wall/pretrain
#   TOPOLOGY=v5p:4x4x4 TPU_NAME=my-v5p-128 ZONE=us-east5-a launch/tpu_pod.sh --check \
#       python -m experiments.pretrain --config=experiments/configs/wall.py:paper_vitg \
#       --workdir=gs://my-bucket/wall/pretrain
#
# --check first compiles the command's programs for the slice TOPOLOGY on this machine
# (python -m experiments.compile_check with the command's --config=... and --config.*
# overrides; it needs libtpu: pip install -e ".[test]") and launches only if every one fits
# the chips' HBM (docs/pods.md). The stage comes from the binary: experiments.pretrain,
# train_wm, train_lewm or plan; any other command checks all of them.
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

check=0
if [[ "${1:-}" == "--check" ]]; then
  check=1
  shift
fi
if [[ $# -lt 1 ]]; then
  echo "usage: [TOPOLOGY=...] TPU_NAME=... ZONE=... $0 (--setup | [--check] COMMAND...)" >&2
  exit 2
fi

if [[ "${check}" == 1 ]]; then
  : "${TOPOLOGY:?set TOPOLOGY to the slice to check, e.g. v5p:4x4x4 (compile_check --help)}"
  config_args=()
  programs=()
  for arg in "$@"; do
    case "${arg}" in
      --config=*|--config.*=*) config_args+=("${arg}") ;;
      experiments.pretrain) programs=(--programs=pretrain) ;;
      experiments.train_wm) programs=(--programs=world_model) ;;
      experiments.train_lewm) programs=(--programs=lewm) ;;
      experiments.plan) programs=(--programs=planning) ;;
    esac
  done
  if [[ ${#config_args[@]} -eq 0 ]]; then
    echo "--check compiles the command's config: give it as --config=FILE:VARIANT" >&2
    exit 2
  fi
  (cd "$(dirname "$0")/.." && python -m experiments.compile_check "${config_args[@]}" \
      --topology="${TOPOLOGY}" "${programs[@]}")
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
