"""Multi-process start-up: call `jax.distributed.initialize()` only when the job is multi-process.

Binaries call `maybe_initialize()` first thing (before any JAX computation). It initialises when

* explicit values are passed, or `JAX_COORDINATOR_ADDRESS` is set (with `JAX_NUM_PROCESSES`
  and `JAX_PROCESS_ID`, as `launch/gpu_multihost.sh` and `launch/local_multiprocess.sh` export),
* or `JEPA_JAX_DISTRIBUTED=1` is set (`launch/tpu_pod.sh` does, for every worker of a TPU pod
  slice, where the topology lives in the VM metadata rather than in the environment),
* or a known multi-process cluster is detected from the environment: `TPU_WORKER_HOSTNAMES`
  listing several hosts, SLURM with `SLURM_NTASKS > 1`, or Open MPI with
  `OMPI_COMM_WORLD_SIZE > 1`.

Without an explicit coordinator, JAX's own cluster detection supplies the coordinator, process
count and process id.

A single-process run (a laptop, one GPU host, a single-host TPU VM) does nothing.
"""

from __future__ import annotations

import os

import jax
from absl import logging


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value is None or value == '':
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'environment variable {name}={value!r} must be an integer') from None


def _cluster_is_multiprocess() -> bool:
  if os.environ.get('JEPA_JAX_DISTRIBUTED', '') not in ('', '0'):
    return True
  if len([h for h in os.environ.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1:
    return True
  return (_env_int('SLURM_NTASKS') or 1) > 1 or (_env_int('OMPI_COMM_WORLD_SIZE') or 1) > 1


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
  """Initialises the JAX distributed runtime when the environment asks for it.

  Args:
    coordinator_address: 'host:port' of process 0 (default: `JAX_COORDINATOR_ADDRESS`).
    num_processes: total processes (default: `JAX_NUM_PROCESSES`).
    process_id: this process, in [0, num_processes) (default: `JAX_PROCESS_ID`).

  Returns:
    True when the runtime is (now) initialised, False for a single-process run.
  """
  if jax.distributed.is_initialized():
    return True
  coordinator_address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  num_processes = num_processes if num_processes is not None else _env_int('JAX_NUM_PROCESSES')
  process_id = process_id if process_id is not None else _env_int('JAX_PROCESS_ID')
  if coordinator_address:
    if num_processes == 1:
      return False
    if num_processes is None or process_id is None:
      raise ValueError(f'coordinator {coordinator_address} given, so set JAX_NUM_PROCESSES and '
                       'JAX_PROCESS_ID (or pass num_processes and process_id)')
  elif not _cluster_is_multiprocess():
    return False
  # CPU processes exchange collectives through gloo (TPU/GPU use their own interconnect).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  logging.info('jax.distributed initialised: process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True
