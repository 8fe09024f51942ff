"""Ahead-of-time compilation for TPU slices on a CPU host: does a stage fit the pod it is for?

With `libtpu` installed the TPU compiler runs on any host (docs/reference.md §11):
`topology('v5p:4x4x4')` describes a 64-chip, 16-host slice without hardware, the config's `mesh`
section is laid over its devices, and each stage's real program (built from the config exactly
as training and planning build it: `pretrain.train.stage_parts`, `world_model.train.stage_parts`,
`lewm.train.stage_parts`, `planning.mpc.compile_episodes`) is traced with `ShapeDtypeStruct`s
carrying the shardings the partition rules give (`training.abstract_state`), lowered and
compiled for that TPU. Nothing is allocated and no data or checkpoint is read.

Per program, per chip (`Report`):
  param_bytes   parameters + optimiser state (+ EMA target, frozen encoder) one chip holds, from
                the shardings the compiled executable takes its inputs in (so a sharding XLA
                replicated instead shows up here);
  temp_bytes    XLA's temporaries (activations, gradients, workspace);
  total_bytes   arguments + outputs - donated aliases + temporaries (memory_analysis());
  flops         matmul / convolution FLOPs of one call, counted on the program's jaxpr with
                every loop's trip count, divided over the chips (XLA's cost_analysis counts a
                loop body once: a 30-iteration CEM plan would read as one iteration);
  roofline_s    flops / the chip's bf16 peak: a lower bound on the step (or plan batch) time.
A program that does not fit is reported with the compiler's verdict (it refuses to compile a
program whose HBM need exceeds the chip's); `not_fitting_message` turns that into one line.

Traces are made under `cpu_blocking.compile_target('tpu')`, so CPU-only choices (cache-sized
attention blocks, candidate chunks) stay out of TPU programs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import re
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax import envs, sharding, training
from jepa_jax.models import cpu_blocking, vit
from jepa_jax.planning import evaluate, mpc
from jepa_jax.planning import run as planning_run
from jepa_jax.planning.config import as_planning_config

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation: HBM bytes and dense bf16 FLOP/s per chip (public spec sheets,
  docs/reference.md §11); `accelerator` names its slices in `TPU_ACCELERATOR_TYPE` (with the
  chip count times `cores_per_chip`)."""
  hbm_bytes: float
  bf16_flops: float
  accelerator: str
  cores_per_chip: int = 1


CHIPS = {
    'v4': Chip(32 * GiB, 275e12, 'v4', cores_per_chip=2),
    'v5e': Chip(16 * GiB, 197e12, 'v5litepod'),
    'v5p': Chip(95 * GiB, 459e12, 'v5p', cores_per_chip=2),
    'v6e': Chip(32 * GiB, 918e12, 'v6e'),
}
# Slice shapes: chips per dimension, 3-D tori for v4 / v5p, 2-D for v5e / v6e; libtpu needs
# whole hosts (multiples of 2x2 chips).
SHAPE_DIMS = {'v4': 3, 'v5e': 2, 'v5p': 3, 'v6e': 2}
EXAMPLE_TOPOLOGIES = ('v5e:2x2', 'v5e:2x4', 'v5e:4x4', 'v5e:8x8', 'v5e:16x16', 'v5p:2x2x1',
                      'v5p:2x2x2', 'v5p:4x4x4', 'v5p:4x4x8', 'v5p:8x8x8', 'v6e:2x2', 'v6e:4x4',
                      'v6e:8x8', 'v6e:16x16', 'v4:2x2x1', 'v4:2x2x4', 'v4:4x4x4')
TOPOLOGY_HELP = (f'a TPU slice FAMILY:SHAPE, FAMILY one of {", ".join(CHIPS)} and SHAPE its chips '
                 f'per dimension (AxB for v5e / v6e, AxBxC for v4 / v5p, whole 2x2 hosts), '
                 f'e.g. {", ".join(EXAMPLE_TOPOLOGIES)}')
PROGRAMS = ('pretrain', 'world_model', 'lewm', 'planning')


@dataclasses.dataclass(frozen=True)
class Topology:
  """A TPU slice: its name, chip generation, compile-only devices (a `--devices` prefix of the
  slice's), chips and hosts they span. On v4 a device is one of a chip's two TensorCores."""
  name: str
  family: str
  chip: Chip
  devices: tuple
  devices_per_chip: int

  @property
  def num_hosts(self) -> int:
    return len({d.process_index for d in self.devices})

  @property
  def num_chips(self) -> float:
    return len(self.devices) / self.devices_per_chip

  @property
  def hbm_per_device(self) -> float:
    return self.chip.hbm_bytes / self.devices_per_chip

  @property
  def flops_per_device(self) -> float:
    return self.chip.bf16_flops / self.devices_per_chip


def _quiet_libtpu(accelerator_type: str) -> None:
  """Tells libtpu it is on a one-host CPU machine, so it neither probes the cloud metadata
  server nor warns about missing TPU workers; several processes may load it at once (tests)."""
  for key, value in (('TPU_SKIP_MDS_QUERY', '1'), ('TPU_WORKER_HOSTNAMES', 'localhost'),
                     ('TPU_ACCELERATOR_TYPE', accelerator_type),
                     ('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')):
    os.environ.setdefault(key, value)


def topology(name: str, num_devices: int | None = None) -> Topology:
  """The slice `name` (see TOPOLOGY_HELP), or its first `num_devices` devices (1: one chip).

  Raises:
    ValueError: one line naming the bad name (or device count) and the supported names.
    ModuleNotFoundError: libtpu is not installed.
  """
  match = re.fullmatch(r'(v4|v5e|v5p|v6e):(\d+(?:x\d+)*)', str(name))
  shape = tuple(int(n) for n in match.group(2).split('x')) if match else ()
  if not match or len(shape) != SHAPE_DIMS[match.group(1)] or min(shape) < 1:
    raise ValueError(f'unknown TPU topology {name!r}; give {TOPOLOGY_HELP}')
  family = match.group(1)
  chip = CHIPS[family]
  if importlib.util.find_spec('libtpu') is None:
    raise ModuleNotFoundError('compiling for a TPU topology needs libtpu: pip install '
                              '-e ".[test]" (or "jax[tpu]" at the installed jax version)')
  _quiet_libtpu(f'{chip.accelerator}-{math.prod(shape) * chip.cores_per_chip}')
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    devices = tuple(topologies.get_topology_desc(platform='tpu', topology_name=name).devices)
  except Exception as e:  # pylint: disable=broad-except  # libtpu raises JaxRuntimeError
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f'TPU topology {name!r} is not a slice libtpu knows ({reason}); give '
                     f'{TOPOLOGY_HELP}') from None
  per_chip = len(devices) // math.prod(shape)
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f'--devices={num_devices}: {name} has {len(devices)} devices; give 1 to '
                       f'{len(devices)}')
    devices = devices[:num_devices]
  return Topology(name=name, family=family, chip=chip, devices=devices,
                  devices_per_chip=per_chip)


# ----------------------------------------------------------------------------- FLOP count

_LOOP_COUNT = {'scan': lambda params: params['length']}


def _sub_jaxprs(params: dict) -> list:
  found = []
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, jax.extend.core.ClosedJaxpr):
        found.append(item.jaxpr)
      elif isinstance(item, jax.extend.core.Jaxpr):
        found.append(item)
  return found


def matmul_flops(jaxpr) -> float:
  """FLOPs of the matrix products (dot_general) and convolutions of one call of `jaxpr` (a
  Jaxpr or ClosedJaxpr), 2 per multiply-add, with scans counted `length` times and the larger
  branch of a `cond`; a `while` loop's body counts once (its trip count is not static)."""
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      (contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
    elif name == 'conv_general_dilated':
      rhs = eqn.invars[1].aval.shape  # (out features, in features / groups, *window) by spec
      spec = eqn.params['dimension_numbers'].rhs_spec
      per_output = math.prod(rhs[d] for d in spec[1:])  # in features per group x window
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output
    else:
      inner = [matmul_flops(sub) for sub in _sub_jaxprs(eqn.params)]
      if not inner:
        continue
      if name == 'cond':
        total += max(inner)
      else:
        total += _LOOP_COUNT.get(name, lambda params: 1)(eqn.params) * sum(inner)
  return total


# ----------------------------------------------------------------------------- programs


@dataclasses.dataclass(frozen=True)
class Program:
  """One compiled program of a stage, ready to lower.

  name: a PROGRAMS entry. fn: the jitted function with its shardings. args: its arguments as
  ShapeDtypeStructs with shardings; the first `num_param_args` are parameters / optimiser
  state, the rest data. work: steps (1) or plans per call, in `unit`. remedy: what to change
  when it does not fit.
  """
  name: str
  fn: Callable
  args: tuple
  num_param_args: int
  work: float
  unit: str
  remedy: str


def _on(tree: Any, where: jax.sharding.Sharding) -> Any:
  """ShapeDtypeStructs of `tree`'s leaves placed by `where`."""
  return jax.tree_util.tree_map(
      lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=where), tree)


def _sds(shape, dtype) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(int(n) for n in shape), dtype)


def _check_batch(batch: int, mesh: jax.sharding.Mesh, num_hosts: int, what: str) -> None:
  """One-line error unless `batch` splits over the mesh's data axes and the slice's hosts."""
  training.per_host_batch_size(batch, mesh, what)
  if batch % num_hosts:
    raise ValueError(f'{what}={batch} must be divisible by the {num_hosts} hosts of the slice; '
                     f'change {what}')


def _fsdp_remedy(mesh: jax.sharding.Mesh) -> str:
  if mesh.shape.get('data', 1) > 1 or 'fsdp' not in mesh.shape:
    return ('shard parameters and optimiser state over the chips: --config.mesh.data=1 '
            '--config.mesh.fsdp=-1 (with partition_rules sharding the kernels over fsdp), or a '
            'smaller batch')
  return 'use a larger slice, or a smaller batch'


def _encoder_shapes(encoder: vit.ViTEncoder) -> Any:
  """Parameter shapes of `encoder` (one tubelet of zeros at its image size)."""
  cfg = encoder.config
  clip = _sds((1, cfg.tubelet_size, cfg.image_size, cfg.image_size, cfg.in_channels),
              jnp.float32)
  return jax.eval_shape(lambda key, x: encoder.init(key, x)['params'],
                        jax.random.PRNGKey(0), clip)


def _env_stats(env) -> dict:
  """Normalisation statistics of the right shapes (actions (A,), proprio (P,)): the programs
  depend on their shapes only."""
  return {'action_mean': np.zeros(env.action_dim, np.float32),
          'action_std': np.ones(env.action_dim, np.float32),
          'proprio_mean': np.zeros(env.proprio_dim, np.float32),
          'proprio_std': np.ones(env.proprio_dim, np.float32)}


def _clip_batch(config: Any, batch_size: int, env) -> dict:
  """A stage-2 / LeWM training batch: num_hist + num_pred frames at the data's image size."""
  from jepa_jax.data import trajectories  # pylint: disable=g-import-not-at-top
  data = trajectories.as_data_config(config.data)
  frames, size = data.num_hist + data.num_pred, data.image_size
  return {'observations': _sds((batch_size, frames, size, size, 3), jnp.uint8),
          'actions': _sds((batch_size, frames, data.frameskip * env.action_dim), jnp.float32),
          'proprio': _sds((batch_size, frames, env.proprio_dim), jnp.float32)}


def _train_program(name: str, config: Any, mesh: jax.sharding.Mesh, num_hosts: int,
                   parts: dict, batch: dict, frozen: tuple = ()) -> Program:
  """A stage's donated train step as `run_stage` jits it (`training.jit_step`)."""
  rules = training.partition_rules(config)
  state = training.abstract_state(parts['init_fn'], int(config.seed), mesh, rules)
  frozen = tuple(jax.tree_util.tree_map(
      lambda leaf, where: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=where), f,
      sharding.param_shardings(f, mesh, rules)) for f in frozen)
  batch_size = jax.tree_util.tree_leaves(batch)[0].shape[0]
  _check_batch(batch_size, mesh, num_hosts, f'{name}.batch_size')
  step = training.jit_step(parts['step_fn'], jax.tree_util.tree_map(lambda s: s.sharding, state),
                           tuple(jax.tree_util.tree_map(lambda s: s.sharding, f) for f in frozen),
                           mesh)
  batch = _on(batch, sharding.data_sharding(mesh))
  return Program(name=name, fn=step, args=(state, *frozen, batch), num_param_args=1 + len(frozen),
                 work=1, unit='steps', remedy=_fsdp_remedy(mesh))


def pretrain_program(config: Any, mesh: jax.sharding.Mesh, num_hosts: int) -> Program:
  """Stage 1's train step (V-JEPA, `pretrain.train.stage_parts`) on a batch of
  `pretrain.batch_size` clips with their multi-block masks."""
  from jepa_jax.pretrain import train as pretrain_train  # pylint: disable=g-import-not-at-top
  models, cfg, parts = pretrain_train.stage_parts(config)
  size = config.data.image_size
  batch = {'observations': _sds((cfg.batch_size, cfg.num_frames, size, size, 3), jnp.uint8),
           'masks': tuple({'context_idx': _sds((cfg.batch_size, num_context), jnp.int32),
                           'target_idx': _sds((cfg.batch_size, num_target), jnp.int32)}
                          for num_context, num_target in models.mask_counts)}
  return _train_program('pretrain', config, mesh, num_hosts, parts, batch)


def stage2_encoder(config: Any, dtype) -> tuple[vit.ViTEncoder, tuple, tuple]:
  """The frozen encoder stage 2 reads, without reading it: `(ViTEncoder, pixel_mean,
  pixel_std)`. encoder_source 'pretrain': stage 1's encoder and normalisation (what it
  exports); 'export': the export's stored architecture when `encoder_export` is a folder, else
  the paper's DINOv2-S/14 (what the `paper` variant converts)."""
  if config.encoder_source == 'export':
    from jepa_jax.world_model import model as model_lib  # pylint: disable=g-import-not-at-top
    if config.encoder_export and os.path.isdir(config.encoder_export):
      encoder, _, mean, std = model_lib.load_encoder(config.encoder_export, dtype)
      return encoder, mean, std
    return vit.ViTEncoder(vit.dinov2_config('small'), dtype), vit.IMAGENET_MEAN, vit.IMAGENET_STD
  from jepa_jax.pretrain import train as pretrain_train  # pylint: disable=g-import-not-at-top
  cfg = pretrain_train.as_pretrain_config(config.pretrain)
  vit_config = pretrain_train.build_models(config).vit_config
  return vit.ViTEncoder(vit_config, dtype), tuple(cfg.pixel_mean), tuple(cfg.pixel_std)


def _three_stage_model(config: Any, env, dtype):
  """Stage 2's WorldModel (frozen encoder of `stage2_encoder`) computing in `dtype`."""
  from jepa_jax.world_model import train as wm_train  # pylint: disable=g-import-not-at-top
  encoder, mean, std = stage2_encoder(config, dtype)
  return wm_train.assemble_model(config, encoder, mean, std, _env_stats(env), dtype)


def world_model_program(config: Any, mesh: jax.sharding.Mesh, num_hosts: int) -> Program:
  """Stage 2's train step (`world_model.train.stage_parts`) on the frozen encoder."""
  from jepa_jax.world_model import train as wm_train  # pylint: disable=g-import-not-at-top
  env = envs.get(config.env)
  cfg = wm_train.as_world_model_config(config.world_model)
  model = _three_stage_model(config, env, training.DTYPES[cfg.dtype])
  return _train_program('world_model', config, mesh, num_hosts, wm_train.stage_parts(config, model),
                        _clip_batch(config, cfg.batch_size, env),
                        frozen=(_encoder_shapes(model.encoder),))


def _lewm_model(config: Any, env):
  from jepa_jax.lewm import train as lewm_train  # pylint: disable=g-import-not-at-top
  return lewm_train.build_model(lewm_train.as_lewm_config(config.get('lewm')), _env_stats(env),
                                config.data.frameskip)


def lewm_program(config: Any, mesh: jax.sharding.Mesh, num_hosts: int) -> Program:
  """LeWorldModel's train step (`lewm.train.stage_parts`), encoder and predictor together."""
  from jepa_jax.lewm import train as lewm_train  # pylint: disable=g-import-not-at-top
  env = envs.get(config.env)
  batch_size = lewm_train.as_lewm_config(config.get('lewm')).batch_size
  return _train_program('lewm', config, mesh, num_hosts,
                        lewm_train.stage_parts(config, _lewm_model(config, env)),
                        _clip_batch(config, batch_size, env))


def _planning_model(config: Any, env) -> tuple[Any, Any]:
  """`(WorldModel, parameter shapes)` stage 3 plans with, as `load_world_model` restores it
  (float32): LeWM's for `method='lewm'`, stage 2's otherwise."""
  from jepa_jax.data import trajectories  # pylint: disable=g-import-not-at-top
  from jepa_jax.world_model import model as model_lib  # pylint: disable=g-import-not-at-top
  data = trajectories.as_data_config(config.data)
  key = jax.random.PRNGKey(0)
  if config.get('method', 'three_stage') == 'lewm':
    from jepa_jax.lewm import train as lewm_train  # pylint: disable=g-import-not-at-top
    model = _lewm_model(config, env)
    return model, jax.eval_shape(
        lambda k: lewm_train.init_params(model, k, data.num_hist + data.num_pred), key)
  model = _three_stage_model(config, env, jnp.float32)
  trainable = jax.eval_shape(
      lambda k: model_lib.init_trainable_params(model, k, data.num_hist + data.num_pred - 1), key)
  return model, {'encoder': _encoder_shapes(model.encoder), **trainable}


def planning_program(config: Any, mesh: jax.sharding.Mesh, num_hosts: int) -> Program:
  """Stage 3's compiled program (`mpc.compile_episodes`): one batch of episodes (the
  `planning.episode_batch_size`, or all `num_episodes`, rounded up to the data-parallel chips
  as `evaluate.evaluate` does) planned with the config's planner and budget, episodes split
  over the data axes, the world model replicated."""
  del num_hosts  # episodes are placed by the program, not loaded per host
  env = envs.get(config.env)
  planning = as_planning_config(config.planning)
  model, params = _planning_model(config, env)
  agent = planning_run.make_agent(config, env, planning, (model, params))
  data_devices = math.prod(mesh.shape[a] for a in sharding.batch_axes(mesh))
  episodes = min(planning.episode_batch_size or planning.num_episodes, planning.num_episodes)
  padded = -(-episodes // data_devices) * data_devices
  split = sharding.data_sharding(mesh)
  keys = jax.eval_shape(lambda: evaluate.episode_keys(0, padded))
  args = (_on(params, sharding.replicated(mesh)),
          _on(_sds((padded, env.state_dim), jnp.float32), split),
          _on(_sds((padded, env.state_dim), jnp.float32), split), _on(keys, split))
  return Program(
      name='planning', fn=mpc.compile_episodes(env, agent, planning, mesh), args=args,
      num_param_args=1, work=episodes * mpc.num_plans(planning, env, agent.frameskip),
      unit='plans', remedy=('plan fewer episodes per call (--config.planning.episode_batch_size), '
                            'score the candidates in chunks (--config.planning.cost_chunk_size), '
                            'or use more chips'))


BUILDERS = {'pretrain': pretrain_program, 'world_model': world_model_program,
            'lewm': lewm_program, 'planning': planning_program}


# ----------------------------------------------------------------------------- compiling


@dataclasses.dataclass
class Report:
  """One program compiled for one slice (bytes and FLOPs per device; see the module doc).

  fits: the compiler accepted it and `total_bytes` <= the device's HBM. When the compiler
  refused it, `total_bytes` is the need it reported (None if it named none) and `error` its
  sentence. work / unit: steps or plans per call; rate: work per second at `roofline_s`.
  """
  program: str
  topology: str
  devices: int
  chips: float
  hosts: int
  mesh: dict
  hbm_bytes: float
  param_bytes: float
  param_bytes_total: float
  temp_bytes: float | None
  total_bytes: float | None
  flops: float
  roofline_s: float
  work: float
  unit: str
  compile_s: float
  fits: bool
  remedy: str
  error: str = ''

  @property
  def rate(self) -> float:
    return self.work / self.roofline_s if self.roofline_s > 0 else float('inf')


_SIZE_UNITS = {'': 1, 'K': 2 ** 10, 'M': 2 ** 20, 'G': 2 ** 30, 'T': 2 ** 40}


def _needed_bytes(message: str) -> float | None:
  """The HBM need in a TPU compiler out-of-memory message ('... temporaries (48.00G) exceeds
  available HBM (15.75G)' or 'Used 20.5G of 15.75G hbm'), or None."""
  match = (re.search(r'\((\d+(?:\.\d+)?)([KMGT]?)\) exceeds', message)
           or re.search(r'Used (\d+(?:\.\d+)?)([KMGT]?) of', message))
  return float(match.group(1)) * _SIZE_UNITS[match.group(2)] if match else None


def device_bytes(args: Any, shardings: Any) -> float:
  """Bytes one device holds of `args` laid out by `shardings` (matching pytrees)."""
  return float(sum(math.prod(where.shard_shape(arg.shape)) * np.dtype(arg.dtype).itemsize
                   for arg, where in zip(jax.tree_util.tree_leaves(args),
                                         jax.tree_util.tree_leaves(shardings))))


def global_bytes(args: Any) -> float:
  """Bytes of `args` (arrays or ShapeDtypeStructs) over the whole slice."""
  return float(sum(math.prod(arg.shape) * np.dtype(arg.dtype).itemsize
                   for arg in jax.tree_util.tree_leaves(args)))


@contextlib.contextmanager
def no_persistent_cache() -> Iterator[None]:
  """Compiles inside are not written to JAX's persistent compilation cache (when one is set,
  e.g. by the tests): a TPU executable cannot be loaded back on a host without TPU chips, so a
  later run would warn and compile again. (Whether the cache is used at all is decided once
  per process; the minimum compile time to write an entry is read at every write.)"""
  minimum = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update('jax_persistent_cache_min_compile_time_secs', float('inf'))
  try:
    yield
  finally:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', minimum)


def compile_program(program: Program, topo: Topology, mesh: jax.sharding.Mesh) -> Report:
  """Traces, lowers and compiles `program` for `topo`; the compiler's out-of-memory refusal
  becomes a Report with fits=False, any other compiler error a one-line ValueError."""
  start = time.perf_counter()
  with cpu_blocking.compile_target('tpu'):
    traced = program.fn.trace(*program.args)
    lowered = traced.lower()
  flops = matmul_flops(traced.jaxpr) / mesh.size
  params = program.args[:program.num_param_args]
  common = dict(
      program=program.name, topology=topo.name, devices=len(topo.devices), chips=topo.num_chips,
      hosts=topo.num_hosts, mesh=dict(mesh.shape), hbm_bytes=topo.hbm_per_device,
      param_bytes_total=global_bytes(params), flops=flops,
      roofline_s=flops / topo.flops_per_device, work=program.work, unit=program.unit,
      remedy=program.remedy)
  try:
    with no_persistent_cache():
      compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except  # XLA raises JaxRuntimeError
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if 'RESOURCE_EXHAUSTED' not in message:
      raise ValueError(f'{program.name}: the TPU compiler rejected the program for {topo.name} '
                       f'({message})') from None
    return Report(**common, param_bytes=device_bytes(params, jax.tree_util.tree_map(
        lambda arg: arg.sharding, params)), temp_bytes=None, total_bytes=_needed_bytes(message),
                  compile_s=time.perf_counter() - start, fits=False, error=message)
  memory = compiled.memory_analysis()
  total = (memory.argument_size_in_bytes + memory.output_size_in_bytes
           - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
  in_shardings = compiled.input_shardings[0][:program.num_param_args]
  return Report(**common, param_bytes=device_bytes(params, in_shardings),
                temp_bytes=float(memory.temp_size_in_bytes), total_bytes=float(total),
                compile_s=time.perf_counter() - start, fits=total <= topo.hbm_per_device)


def check(config: Any, topology_name: str, programs=PROGRAMS,
          num_devices: int | None = None) -> list[Report]:
  """Compiles `programs` (PROGRAMS entries) of `config` for the slice `topology_name` (or its
  first `num_devices` devices) on the config's mesh and partition rules."""
  unknown = [p for p in programs if p not in BUILDERS]
  if unknown or not programs:
    raise ValueError(f'unknown programs {unknown}; choose among {", ".join(PROGRAMS)}')
  topo = topology(topology_name, num_devices)
  mesh = sharding.make_mesh(dict(config.mesh), devices=topo.devices)
  return [compile_program(BUILDERS[name](config, mesh, topo.num_hosts), topo, mesh)
          for name in programs]


# ----------------------------------------------------------------------------- reporting


def _size(num_bytes: float | None) -> str:
  if num_bytes is None:
    return '?'
  return f'{num_bytes / GiB:.2f} GiB' if num_bytes >= 0.1 * GiB else f'{num_bytes / 2**20:.1f} MiB'


def _duration(seconds: float) -> str:
  return f'{seconds * 1e3:.3g} ms' if seconds < 1 else f'{seconds:.3g} s'


TABLE_HEADER = ('| program | slice | chips | hosts | mesh | params + opt. state / chip (of total) '
                '| temporaries / chip | total / chip | HBM / chip | fits | GFLOP / chip | roofline '
                '| at roofline | compile |')


def table_row(report: Report) -> str:
  """One markdown row of TABLE_HEADER."""
  mesh = ' x '.join(f'{axis} {size}' for axis, size in report.mesh.items())
  chips = f'{report.chips:g}' + (f' ({report.devices} cores)' if report.devices != report.chips
                                 else '')
  rate = f'{report.rate:.3g} {report.unit}/s'
  if report.unit == 'plans':  # what one plan costs one chip, next to a GPU's time per plan
    rate += f' ({_duration(report.roofline_s * report.chips / report.work)} of a chip per plan)'
  return (f'| {report.program} | {report.topology} | {chips} | {report.hosts} | {mesh} '
          f'| {_size(report.param_bytes)} ({_size(report.param_bytes_total)}) '
          f'| {_size(report.temp_bytes)} | {_size(report.total_bytes)} '
          f'| {_size(report.hbm_bytes)} | {"yes" if report.fits else "NO"} '
          f'| {report.flops / 1e9:.4g} | {_duration(report.roofline_s)} | {rate} '
          f'| {report.compile_s:.0f} s |')


def not_fitting_message(report: Report) -> str:
  """One line: the program, its per-chip need against the chip's HBM, and what to change."""
  return (f'{report.program} does not fit {report.topology} (mesh {report.mesh}): it needs '
          f'{_size(report.total_bytes)} per chip, a {report.topology.split(":")[0]} chip has '
          f'{_size(report.hbm_bytes)} of HBM; {report.remedy}')
