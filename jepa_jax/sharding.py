"""Device meshes and partition rules: where every parameter and batch array lives.

Sharding is data: a `Mesh` with named axes (`data`, `fsdp`, `model`, ...) plus a list of
partition rules `(regex, spec)` decides the layout; the same jitted code then runs on one CPU,
8 fake CPU devices, a GPU host or a TPU pod slice.

A rule's regex is searched (`re.search`) in the '/'-joined parameter path, e.g.
`encoder/blocks_0/attn/qkv/kernel`; the first matching rule wins. Its spec has one entry per
leading array dimension: `None` (replicate), a mesh axis name, or a tuple of axis names.
A mesh axis is only used for a dimension it divides; otherwise that dimension is replicated,
so one rule table serves every model size. Because optax states mirror the parameter tree
(paths like `opt_state/0/mu/encoder/.../kernel`), the same rules also shard optimiser moments.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Mesh axes that split the batch dimension of input arrays (FSDP is data parallel too).
BATCH_AXES = ('data', 'fsdp')

Rules = Sequence[tuple[str, tuple]]


def make_mesh(axes: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
  """Builds a named device mesh.

  Args:
    axes: ordered mapping axis name -> size, e.g. `{'data': -1, 'fsdp': 2}`; at most one size
      may be -1, meaning "all remaining devices".
    devices: devices to use (default: all `jax.devices()`, across every host).

  Returns:
    A `Mesh` whose device array has shape `tuple(axes.values())` (with -1 resolved).
  """
  devices = list(jax.devices() if devices is None else devices)
  names = tuple(axes)
  sizes = [int(s) for s in axes.values()]
  if not names:
    raise ValueError('make_mesh needs at least one axis, e.g. {"data": -1}')
  if sizes.count(-1) > 1:
    raise ValueError(f'mesh axes {dict(axes)}: only one axis may be -1 (the rest of the devices)')
  if any(s < 1 and s != -1 for s in sizes):
    raise ValueError(f'mesh axes {dict(axes)}: sizes must be positive or -1')
  known = math.prod(s for s in sizes if s != -1)
  if len(devices) % known:
    raise ValueError(f'mesh axes {dict(axes)} need a multiple of {known} devices, '
                     f'but {len(devices)} are available; change the mesh sizes')
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != len(devices):
    raise ValueError(f'mesh axes {dict(axes)} use {math.prod(sizes)} devices, but '
                     f'{len(devices)} are available; make the sizes multiply to the device count '
                     'or set one axis to -1')
  # create_device_mesh orders devices by physical topology on TPU; elsewhere it reshapes.
  device_array = mesh_utils.create_device_mesh(sizes, devices=devices)
  return Mesh(device_array, names)


def path_to_str(path: Sequence[Any]) -> str:
  """'/'-joins a jax tree path (dict keys, attribute names, sequence indices)."""
  parts = []
  for entry in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return '/'.join(parts)


def _axis_size(mesh: Mesh, entry) -> int:
  names = entry if isinstance(entry, tuple) else (entry,)
  for name in names:
    if name not in mesh.shape:
      raise ValueError(f'partition rule uses mesh axis {name!r}, but the mesh has axes '
                       f'{tuple(mesh.shape)}; fix the rule or the mesh config')
  return math.prod(mesh.shape[n] for n in names)


def partition_spec_for(path: str, shape: Sequence[int], rules: Rules, mesh: Mesh) -> PartitionSpec:
  """PartitionSpec for one array from the first rule whose regex is found in `path`.

  Args:
    path: '/'-joined parameter path.
    shape: the array's shape.
    rules: list of `(regex, spec)`; spec entries are None, an axis name or a tuple of names.
    mesh: the mesh the spec refers to.

  Returns:
    A spec of length <= rank; dimensions the chosen mesh axes do not divide are replicated.
  """
  for pattern, spec in rules:
    if re.search(pattern, path):
      break
  else:
    raise ValueError(f'no partition rule matches parameter {path!r}; add a catch-all rule '
                     "('.*', ()) at the end of the rules")
  # Lists (e.g. from JSON or ConfigDicts) mean the same as tuples.
  spec = tuple(tuple(e) if isinstance(e, list) else e for e in spec)
  if len(spec) > len(shape):
    raise ValueError(f'partition rule {pattern!r} gives {len(spec)} entries {spec} for parameter '
                     f'{path!r} of rank {len(shape)} (shape {tuple(shape)}); shorten the spec '
                     'or make the regex more specific')
  entries = []
  for dim, entry in zip(shape, spec):
    if entry is not None and dim % _axis_size(mesh, entry):
      entry = None  # axis does not divide this dimension: keep it whole on every device
    entries.append(entry)
  return PartitionSpec(*entries)


def param_shardings(params: Any, mesh: Mesh, rules: Rules) -> Any:
  """Pytree of `NamedSharding` matching `params` (arrays or `jax.ShapeDtypeStruct`s)."""
  def one(path, leaf):
    return NamedSharding(mesh, partition_spec_for(path_to_str(path), np.shape(leaf), rules, mesh))
  return jax.tree_util.tree_map_with_path(one, params)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  """The mesh axes (among 'data', 'fsdp') that split the batch dimension."""
  return tuple(a for a in BATCH_AXES if a in mesh.shape)


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding for batch arrays: leading axis split over ('data', 'fsdp'), the rest replicated."""
  axes = batch_axes(mesh)
  return NamedSharding(mesh, PartitionSpec(axes if axes else None))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding that keeps a full copy of an array on every device of `mesh`."""
  return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Places a host-local batch on the mesh as global arrays split along the batch axis.

  Each process passes its own slice `(B_local, ...)`; the global batch is
  `(B_local * process_count, ...)` (`jax.make_array_from_process_local_data`), so the same call
  works on one host and on a pod.
  """
  sharding = data_sharding(mesh)
  num_shards = math.prod(mesh.shape[a] for a in batch_axes(mesh))

  def one(x):
    x = np.asarray(x)
    global_batch = x.shape[0] * jax.process_count() if x.ndim else 0
    if x.ndim == 0 or global_batch % num_shards:
      raise ValueError(f'batch array of shape {x.shape} cannot be split over {num_shards} '
                       f'data-parallel devices (global batch {global_batch}); use a batch size '
                       f'divisible by {num_shards}')
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree_util.tree_map(one, batch)
