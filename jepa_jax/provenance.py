"""What a result was computed with: package versions, interpreter, machine and XLA settings.

`describe_run()` is written next to every `results.json` / `summary.json`. The CPU model and its
vector ISA matter: XLA:CPU picks kernels (and float summation orders) by the ISA it finds, so
the same command and seed can differ in the last bits across machines, and CEM amplifies those
bits into different plans (docs/results.md, "What is bit-reproducible").
"""

import importlib.metadata
import os
import platform
import subprocess
import sys
from typing import Optional

# Distribution names (as pip knows them) whose versions a result depends on.
PACKAGES = ('jax', 'jaxlib', 'jax-cuda12-plugin', 'libtpu', 'flax', 'optax', 'orbax-checkpoint',
            'chex', 'numpy', 'scipy', 'grain', 'tensorflow-datasets', 'torch')
# CPU flags that change which XLA:CPU kernels run.
ISA_FLAGS = ('sse4_2', 'avx', 'avx2', 'fma', 'avx512f', 'avx512_bf16', 'avx512_vnni',
             'amx_bf16', 'amx_tile', 'asimd', 'sve')
# Environment variables that change numerics or devices.
ENV_VARS = ('XLA_FLAGS', 'JAX_PLATFORMS', 'JAX_ENABLE_X64', 'JAX_DEFAULT_MATMUL_PRECISION',
            'CUDA_VISIBLE_DEVICES', 'OMP_NUM_THREADS')


def package_versions() -> dict:
  """`{distribution: version}` of the installed PACKAGES (absent ones are left out)."""
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return versions


def cpu_info(path: str = '/proc/cpuinfo') -> dict:
  """CPU model and the ISA_FLAGS it has, from `/proc/cpuinfo` (Linux); platform's otherwise."""
  model, flags = None, set()
  try:
    with open(path) as f:
      for line in f:
        key, _, value = line.partition(':')
        key = key.strip()
        if key in ('model name', 'Model', 'cpu model') and model is None:
          model = value.strip()
        elif key in ('flags', 'Features') and not flags:
          flags = set(value.split())
  except OSError:
    pass
  return dict(model=model or platform.processor() or None,
              isa=[flag for flag in ISA_FLAGS if flag in flags])


def _git_commit() -> Optional[str]:
  """The commit of the checkout this package runs from (+ '-dirty'), or None outside git."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(['git', 'describe', '--always', '--dirty', '--abbrev=12'], cwd=here,
                         capture_output=True, text=True, timeout=5, check=True)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() or None


def describe_run() -> dict:
  """A JSON-able description of this process's software and machine.

  Keys: packages, python, platform, cpu {model, isa}, cpu_count, usable_cpus, jax {backend,
  devices, process_count}, env (the ENV_VARS that are set), code (git describe or None).
  """
  import jax  # here, not at import: describing a run must not pick the backend early

  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    usable = os.cpu_count()
  return dict(
      packages=package_versions(),
      python=sys.version.split()[0],
      platform=platform.platform(),
      cpu=cpu_info(),
      cpu_count=os.cpu_count(),
      usable_cpus=usable,
      jax=dict(backend=jax.default_backend(), devices=[str(d) for d in jax.devices()],
               process_count=jax.process_count()),
      env={name: os.environ[name] for name in ENV_VARS if name in os.environ},
      code=_git_commit(),
  )
