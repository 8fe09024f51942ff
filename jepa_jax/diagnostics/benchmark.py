"""Planning throughput of jepa_jax against a PyTorch baseline doing the same work.

One benchmark = one predictor size and planner budget (`BenchSpec`). The same randomly
initialised weights (reference init) run in both implementations: the torch baseline
(`torch_reference`, docs/reference.md §3a and §5) owns them and our converter
(`jepa_jax.convert.convert_reference_predictor`) turns its state dict into our pytree, so both
planners evaluate the same predictor. A parity line checks once that both give the same cost
for the same action batch.

jepa_jax side: the public planner path, `jax.jit(vmap(cem.cem_plan))` over
`agent.latent_planning_cost` (the planning agent's cost; candidates scored `chunk_size` at a
time when > 0) of the AdaLN predictor unrolled by `world_model.model.cached_window_unroll`
(the reference's sliding window, one frame pass less; same result);
E episodes sharded over a 'data' mesh of `devices` devices (the device sweep), params
replicated. Compile (`lower().compile()`) is timed apart from the steady state (median of
`repeats` calls after one untimed call, each `block_until_ready`; the torch plans of the
first row are timed in turns with it, so a change of machine load hits both). torch side:
`torch_reference.cem_plan` under `inference_mode`, one episode per plan as in the reference,
`torch.set_num_threads(available cores)` unless told otherwise, CUDA when present (bf16 autocast when the compute
dtype is bf16).

s/plan is per episode (a batched plan of E episodes counts E plans). FLOPs are an analytic
count of the reference predictor's matmuls (`adaln_forward_flops`: dense attention, as the
reference computes it) times the predictor calls of a plan; both implementations get the same
count (the reference's work), so their GFLOP/s ratio is their speed ratio. jepa_jax does less
work for the same result (frame-causal attention block by block, and step 1 of every unroll
reuses step 0's keys/values: 2H - 2 frame passes per sequence instead of 2H - 1), so its
GFLOP/s is an effective rate. The matmul peak is
the best of `repeats` `(n, n) @ (n, n)` products (n >= 2048) in JAX and in torch; peak shares
are against the larger of the two. MFU (bf16 runs on a listed GPU): achieved TFLOP/s over the
data-sheet dense bf16 peak (`BF16_PEAK_TFLOPS`). Memory: the compiled plan's XLA memory
analysis (temp + argument bytes, per device) and, where the device reports it (GPU), the
process's peak bytes in use after the plans; torch reports `max_memory_allocated` on CUDA only.
"""

import dataclasses
import math
import os
import statistics
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax import convert, sharding
from jepa_jax.convert import torch_io
from jepa_jax.models import predictors
from jepa_jax.planning import agent, cem, objectives
from jepa_jax.world_model.model import cached_window_unroll

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
GB = 1e9
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's data sheets, by a substring
# of the JAX device kind (checked in order): the MFU denominator of bf16 runs.
BF16_PEAK_TFLOPS = (('H100 PCIe', 756.0), ('H100', 989.4), ('H200', 989.4), ('H800', 989.4),
                    ('A100', 312.0))


def bf16_peak_tflops(device_kind: str) -> float:
  """Data-sheet dense bf16 peak of an accelerator (NaN when not in `BF16_PEAK_TFLOPS`)."""
  return next((peak for name, peak in BF16_PEAK_TFLOPS if name in device_kind), float('nan'))


@dataclasses.dataclass(frozen=True)
class BenchSpec:
  """Predictor size and planner budget of one benchmark.

  grid: patch grid (H, W); latent_dim: Dv; depth, heads: predictor blocks and heads;
  proprio_emb_dim: Pe (0 = proprio off); action_dim: A. samples N, iters, elites K, horizon:
  CEM budget. episodes: batch sizes of the device sweep. dtype: 'float32' | 'bfloat16'
  (compute dtype of both implementations). proprio_readout: 'per_patch' (the reference) or
  'first_patch' (see `predictors.AdaLNConfig`). chunk_size: jepa_jax scores the N candidates
  this many at a time (bounds the plan's memory; 0 = the planner's automatic choice,
  `chunking.cpu_chunk_size`: cache-sized chunks on a CPU, all at once on an accelerator).
  """
  grid: tuple = (16, 16)
  latent_dim: int = 384
  depth: int = 6
  heads: int = 16
  proprio_emb_dim: int = 16
  action_dim: int = 10
  # The planner budget defaults to the paper's CEM (declared once, in cem.CEMConfig).
  samples: int = cem.CEMConfig.num_samples
  iters: int = cem.CEMConfig.num_iters
  elites: int = cem.CEMConfig.num_elites
  horizon: int = cem.CEMConfig.horizon
  episodes: tuple = (1,)
  dtype: str = 'float32'
  proprio_readout: str = 'per_patch'
  chunk_size: int = 0

  def __post_init__(self):
    if self.dtype not in DTYPES:
      raise ValueError(f'dtype={self.dtype!r} must be one of {sorted(DTYPES)}')
    if (self.latent_dim + self.proprio_emb_dim) % self.heads:
      raise ValueError(f'heads={self.heads} does not divide the token width '
                       f'{self.latent_dim + self.proprio_emb_dim}; change heads or latent_dim')
    self.cem_config()  # validates the planner budget

  @property
  def name(self) -> str:
    h, w = self.grid
    return f'{h}x{w}x{self.latent_dim} d{self.depth} h{self.heads}'

  def predictor_config(self) -> predictors.AdaLNConfig:
    return predictors.AdaLNConfig(latent_dim=self.latent_dim, proprio_emb_dim=self.proprio_emb_dim,
                                  action_dim=self.action_dim, depth=self.depth,
                                  num_heads=self.heads, grid_size=tuple(self.grid),
                                  proprio_readout=self.proprio_readout)

  def cem_config(self) -> cem.CEMConfig:
    return cem.CEMConfig(num_samples=self.samples, num_iters=self.iters,
                         num_elites=self.elites, horizon=self.horizon,
                         num_execute=self.horizon)


# The rows of issue 15 (300 samples, 10 elites, horizon 6, proprio on, unless stated), the
# paper size on GPU at the paper's budget, and a tiny size for tests and dry runs.
PRESETS = {
    'tiny': BenchSpec(grid=(2, 2), latent_dim=16, depth=1, heads=2, proprio_emb_dim=4,
                      action_dim=4, samples=8, iters=2, elites=2, horizon=3),
    'small': BenchSpec(grid=(4, 4), latent_dim=64, depth=2, heads=4, iters=3),
    'medium': BenchSpec(grid=(8, 8), latent_dim=192, depth=6, heads=16, iters=2),
    'paper_cpu': BenchSpec(samples=64, iters=1, horizon=2),
    'paper_gpu': BenchSpec(dtype='bfloat16', episodes=(1, 8)),
}


def available_cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def import_torch(threads: Optional[int] = None):
  """torch; `threads` (when given) sets its intra-op thread count."""
  torch = torch_io.import_torch()
  if threads:
    torch.set_num_threads(threads)
  return torch


def torch_device(torch) -> str:
  return 'cuda' if torch.cuda.is_available() else 'cpu'


# --------------------------------------------------------------------------------- FLOPs


def adaln_forward_flops(config: predictors.AdaLNConfig, frames: int) -> float:
  """Matmul FLOPs (2 per multiply-add) of one AdaLN predictor call on ONE sample of `frames`
  frames: embed, action encoder, per block qkv / dense attention scores and values / proj /
  MLP / modulation, output projection. Norms, softmax and elementwise ops are not counted."""
  width, embed = config.width, config.embed_dim or config.latent_dim
  tokens = frames * math.prod(config.grid_size)
  hidden = int(width * config.mlp_ratio)
  per_block = (2 * tokens * width * (3 * width + width + 2 * hidden)
               + 2 * 2 * tokens * tokens * width
               + 2 * frames * width * 6 * width)
  return (config.depth * per_block + 2 * tokens * 2 * config.latent_dim * embed
          + 2 * frames * config.action_dim * width)


def plan_flops(spec: BenchSpec) -> float:
  """FLOPs of one episode's CEM plan: iters * samples * (one 1-frame + (H-1) 2-frame calls)."""
  config = spec.predictor_config()
  per_sequence = (adaln_forward_flops(config, 1)
                  + (spec.horizon - 1) * adaln_forward_flops(config, 2))
  return spec.iters * spec.samples * per_sequence


# ----------------------------------------------------------------------------- matmul peak


def best_time(fn: Callable[[], Any], repeats: int, sync: Callable[[Any], Any]) -> float:
  """Fastest of `repeats` timed calls (after one untimed warm-up); `sync` waits for a result."""
  sync(fn())
  return min(interleaved_times({'fn': lambda: sync(fn())}, {'fn': repeats})['fn'])


def matmul_peaks(n: int = 2048, repeats: int = 10, dtype: str = 'float32',
                 with_torch: bool = True) -> dict:
  """GFLOP/s of an `(n, n) @ (n, n)` product (2 n^3 FLOPs), best of `repeats`, in JAX and in
  torch on their default devices; the best of the two is the machine's peak."""
  if n < 2048 or repeats < 10:
    raise ValueError(f'matmul peak needs n >= 2048 and repeats >= 10 to be a peak, got n={n}, '
                     f'repeats={repeats}')
  flops = 2.0 * n ** 3
  x = jax.random.normal(jax.random.PRNGKey(0), (n, n), DTYPES[dtype])
  matmul = jax.jit(lambda a: a @ a)
  peaks = dict(n=n, repeats=repeats,
               jax=flops / best_time(lambda: matmul(x), repeats, jax.block_until_ready) / GB)
  if with_torch:
    torch = import_torch()
    device = torch_device(torch)
    tdtype = torch.bfloat16 if dtype == 'bfloat16' else torch.float32
    y = torch.randn(n, n, device=device, dtype=tdtype)
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    peaks['torch'] = flops / best_time(lambda: y @ y, repeats, lambda _: sync()) / GB
  peaks['best'] = max(v for k, v in peaks.items() if k in ('jax', 'torch'))
  return peaks


# ------------------------------------------------------------------ shared weights and costs


def make_models(spec: BenchSpec, seed: int = 0, init_std: float = 0.02):
  """(torch AdaLN predictor with reference init, our AdaLNPredictor, its params) sharing the
  same weights: the torch state dict converted by our reference-checkpoint converter.
  init_std: std of the Linear weights (the reference's 0.02; tests use larger ones)."""
  torch = import_torch()
  from jepa_jax.diagnostics import torch_reference  # pylint: disable=g-import-not-at-top
  config = spec.predictor_config()
  torch.manual_seed(seed)
  reference = torch_reference.AdaLNPredictor(
      spec.latent_dim, spec.proprio_emb_dim, spec.action_dim, spec.depth, spec.heads,
      spec.grid, mlp_ratio=config.mlp_ratio, init_std=init_std,
      modulation_std=10 * init_std, proprio_readout=spec.proprio_readout).eval()
  checkpoint = {'predictor': reference.state_dict()}
  if spec.proprio_emb_dim:  # the converter wants the proprio encoder; planning never uses it
    checkpoint['proprio_encoder'] = {
        'patch_embed.weight': torch.zeros(spec.proprio_emb_dim, 2, 1),
        'patch_embed.bias': torch.zeros(spec.proprio_emb_dim)}
  _, params = convert.convert_reference_predictor(checkpoint, 'adaln', num_heads=spec.heads,
                                                  grid_size=tuple(spec.grid))
  module = predictors.AdaLNPredictor(config, DTYPES[spec.dtype])
  return reference, module, params['predictor']


def jax_unroll(module):
  """`unroll(params, z0 (n, H, W, Dv), pe0 (n, Pe) | None, actions (n, Hz, A)) -> (z, pe)`:
  the planner's unroll of `module` (`cached_window_unroll`, what `WorldModel.unroll` runs for
  the AdaLN predictor: the sliding window of 2 with step 0's keys/values reused in step 1)."""

  def unroll(params, z0, pe0, actions):
    return cached_window_unroll(lambda *x, **window: module.apply({'params': params}, *x,
                                                                  **window), z0, pe0, actions)
  return unroll


def jax_cost_fn(module, chunk_size: int = 0,
                objective: objectives.ObjectiveConfig = objectives.ObjectiveConfig()):
  """`cost(params, state, goal, actions (N, H, A)) -> (N,)`: the planning agent's cost
  (`agent.latent_planning_cost`) over the sliding-window unroll of `module`."""
  return agent.latent_planning_cost(jax_unroll(module), objective, chunk_size)


def random_state(spec: BenchSpec, key, batch: Sequence[int] = ()) -> dict:
  """{'z': (*batch, H, W, Dv), 'pe': (*batch, Pe) | None} standard normal."""
  kz, kp = jax.random.split(key)
  z = jax.random.normal(kz, tuple(batch) + tuple(spec.grid) + (spec.latent_dim,))
  pe = (jax.random.normal(kp, tuple(batch) + (spec.proprio_emb_dim,))
        if spec.proprio_emb_dim else None)
  return dict(z=z, pe=pe)


def _torch_tensors(torch, reference, tree: dict) -> dict:
  device = next(reference.parameters()).device
  return {k: None if v is None else torch.as_tensor(np.array(v), device=device)
          for k, v in tree.items()}


def torch_unroll_fn(reference, state: dict, dtype: str = 'float32'):
  """`unroll(actions (N, Hz, A) torch) -> (z, pe)` of the torch baseline from `state`
  (numpy/jax {'z', 'pe'}), broadcast over the N candidates; bf16 autocast for 'bfloat16'."""
  torch = import_torch()
  from jepa_jax.diagnostics import torch_reference  # pylint: disable=g-import-not-at-top
  state = _torch_tensors(torch, reference, state)
  z0, pe0 = state['z'], state['pe']
  device_type = z0.device.type

  def unroll(actions):
    n = actions.shape[0]
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=dtype == 'bfloat16'):
      z, pe = torch_reference.sliding_window_unroll(
          reference, z0.expand(n, *z0.shape),
          None if pe0 is None else pe0.expand(n, *pe0.shape), actions)
    return z.float(), None if pe is None else pe.float()
  return unroll


def torch_cost_fn(reference, state: dict, goal: dict, proprio_weight: float = 0.1,
                  dtype: str = 'float32'):
  """`cost(actions (N, H, A) torch) -> (N,)` of the torch baseline from numpy/jax states."""
  torch = import_torch()
  from jepa_jax.diagnostics import torch_reference  # pylint: disable=g-import-not-at-top
  unroll = torch_unroll_fn(reference, state, dtype)
  goal = _torch_tensors(torch, reference, goal)
  return lambda actions: torch_reference.latent_cost(*unroll(actions), goal['z'], goal['pe'],
                                                     proprio_weight)


def cost_parity(spec: BenchSpec, reference, module, params, num_actions: int = 8,
                seed: int = 0) -> dict:
  """Both implementations on the same `(num_actions, H, A)` action batch, float32.

  Returns max_abs_diff / max_rel_diff of the costs, cost_spread (their std over the actions:
  the costs do depend on the actions), max_latent_diff of the final predicted latents and
  latent_scale (their std), so a difference is read against the size of what is compared."""
  torch = import_torch()
  ks, kg, ka = jax.random.split(jax.random.PRNGKey(seed + 7), 3)
  state, goal = random_state(spec, ks), random_state(spec, kg)
  actions = jax.random.normal(ka, (num_actions, spec.horizon, spec.action_dim))
  f32 = predictors.AdaLNPredictor(module.config, jnp.float32)
  ours = np.asarray(jax.jit(jax_cost_fn(f32, spec.chunk_size))(params, state, goal, actions),
                    np.float64)
  z0 = jnp.broadcast_to(state['z'], (num_actions,) + state['z'].shape)
  pe0 = None if state['pe'] is None else jnp.broadcast_to(state['pe'], (num_actions,)
                                                         + state['pe'].shape)
  our_z = np.asarray(jax.jit(jax_unroll(f32))(params, z0, pe0, actions)[0][:, -1])
  with torch.inference_mode():
    torch_actions = torch.as_tensor(np.array(actions),
                                    device=next(reference.parameters()).device)
    theirs = torch_cost_fn(reference, state, goal)(torch_actions).double().cpu().numpy()
    their_z = torch_unroll_fn(reference, state)(torch_actions)[0][:, -1].cpu().numpy()
  diff = np.abs(ours - theirs)
  return dict(num_actions=num_actions, max_abs_diff=float(diff.max()),
              max_rel_diff=float((diff / np.maximum(np.abs(theirs), 1e-12)).max()),
              mean_cost=float(theirs.mean()), cost_spread=float(theirs.std()),
              max_latent_diff=float(np.abs(our_z - their_z).max()),
              latent_scale=float(their_z.std()))


# ----------------------------------------------------------------------------- timing


def jax_planner(spec: BenchSpec, module, params, episodes: int, devices: int, seed: int = 0
                ) -> tuple[Callable[[], None], dict]:
  """Compiles one batched CEM plan of `episodes` episodes sharded over `devices`, runs it once
  untimed (allocations), and returns `(plan, info)`: `plan()` runs it and waits for the
  result; info holds compile_s (`lower().compile()`) and xla_memory_gb (temp + argument
  bytes per device)."""
  if episodes % devices:
    raise ValueError(f'episodes={episodes} must be a multiple of devices={devices}')
  if devices > len(jax.devices()):
    raise ValueError(f'devices={devices} > {len(jax.devices())} available; set XLA_FLAGS='
                     '--xla_force_host_platform_device_count=8 before importing jax')
  cost_fn = jax_cost_fn(module, spec.chunk_size)
  cem_config = spec.cem_config()

  def plan_one(p, state, goal, key):
    return cem.cem_plan(lambda s, g, a: cost_fn(p, s, g, a), state, goal, spec.action_dim,
                        key, cem_config)[0]

  mesh = sharding.make_mesh({'data': devices}, jax.devices()[:devices])
  data, rep = sharding.data_sharding(mesh), sharding.replicated(mesh)
  ks, kg = jax.random.split(jax.random.PRNGKey(seed))
  args = (jax.device_put(params, rep),
          jax.device_put(random_state(spec, ks, (episodes,)), data),
          jax.device_put(random_state(spec, kg, (episodes,)), data),
          jax.device_put(jax.random.split(jax.random.PRNGKey(seed + 1), episodes), data))
  planner = jax.jit(jax.vmap(plan_one, in_axes=(None, 0, 0, 0)),
                    in_shardings=(rep, data, data, data), out_shardings=data)
  t0 = time.perf_counter()
  compiled = planner.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  plan = lambda: jax.block_until_ready(compiled(*args))
  plan()
  memory = compiled.memory_analysis()
  return plan, dict(
      compile_s=compile_s,
      xla_memory_gb=(memory.temp_size_in_bytes + memory.argument_size_in_bytes) / GB
      if memory is not None else float('nan'))


def jax_device_peak_gb() -> float:
  """The process's peak bytes in use on the first device so far, in GB (NaN where the device
  reports none, e.g. a CPU)."""
  return (jax.devices()[0].memory_stats() or {}).get('peak_bytes_in_use', float('nan')) / GB


def torch_planner(spec: BenchSpec, reference, seed: int = 0, threads: Optional[int] = None
                  ) -> tuple[Callable[[], None], dict]:
  """The torch baseline's plan of one episode, warmed up by one cost evaluation of N
  candidates (allocations, kernel selection): `(plan, info)`, `plan()` runs it and waits;
  info: device, threads (`threads` intra-op threads, default the available cores) and a
  `peak_gb()` reader (CUDA `max_memory_allocated` since the warm-up; NaN on a CPU)."""
  torch = import_torch(threads or available_cores())
  from jepa_jax.diagnostics import torch_reference  # pylint: disable=g-import-not-at-top
  device = torch_device(torch)
  reference = reference.to(device)
  ks, kg = jax.random.split(jax.random.PRNGKey(seed))
  cost = torch_cost_fn(reference, random_state(spec, ks), random_state(spec, kg),
                       dtype=spec.dtype)
  generator = torch.Generator(device=device).manual_seed(seed)
  sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)

  def plan():
    with torch.inference_mode():
      torch_reference.cem_plan(cost, spec.horizon, spec.action_dim, spec.samples, spec.iters,
                               spec.elites, generator=generator, device=device)
    sync()

  with torch.inference_mode():
    cost(torch.zeros(spec.samples, spec.horizon, spec.action_dim, device=device))
  sync()
  if device == 'cuda':
    torch.cuda.reset_peak_memory_stats()
  peak_gb = ((lambda: torch.cuda.max_memory_allocated() / GB) if device == 'cuda'
             else (lambda: float('nan')))
  return plan, dict(device=device, threads=torch.get_num_threads(), peak_gb=peak_gb)


def interleaved_times(plans: dict[str, Callable[[], Any]], repeats: dict[str, int]
                      ) -> dict[str, list[float]]:
  """Wall seconds of `repeats[name]` calls of each `plans[name]` (each call waits for its
  result), taken in turns (a, b, a, b, ...): on a shared machine the load changes between
  minutes, and a change then slows both sides alike instead of one (measured on this 2-core
  CPU: the same plan 7.1 s and 8.7 s minutes apart)."""
  wanted = {name: max(1, repeats[name]) for name in plans}
  times = {name: [] for name in plans}
  while any(len(times[name]) < wanted[name] for name in plans):
    for name, plan in plans.items():
      if len(times[name]) < wanted[name]:
        t0 = time.perf_counter()
        plan()
        times[name].append(time.perf_counter() - t0)
  return times


# ----------------------------------------------------------------------------- the run


def device_counts(episodes: int, max_devices: int, counts: Sequence[int] = (1, 2, 4, 8)) -> list:
  """The `counts` that divide `episodes` and are at most `max_devices`."""
  return [d for d in counts if d <= max_devices and episodes % d == 0]


def run_benchmark(spec: BenchSpec, *, repeats: int = 3, torch_repeats: Optional[int] = None,
                  with_torch: bool = True, peaks: Optional[dict] = None,
                  max_devices: Optional[int] = None, devices: Optional[Sequence[int]] = None,
                  torch_threads: Optional[int] = None, seed: int = 0,
                  log: Callable[[str], None] = lambda s: None) -> dict:
  """Runs one benchmark (see the module docstring); returns the JSON-ready result:
  spec, flops_method, plan_gflop (per episode), peaks, parity, torch (timing), rows (one per
  episodes x devices: s/plan for both, ratio, compile, GFLOP/s, peak shares, memory).
  The sweep covers `devices` (default 1, 2, 4, 8) that divide the episodes and are at most
  `max_devices` (default: all devices). torch_threads: see `torch_planner`. The torch
  baseline is timed once, in turns with the sweep's first row (`interleaved_times`)."""
  reference, module, params = make_models(spec, seed)
  parity = cost_parity(spec, reference, module, params, seed=seed)
  log(parity_line(parity))
  flops = plan_flops(spec)
  torch_plan, torch_info, torch_timing = None, None, None
  if with_torch:
    torch_plan, torch_info = torch_planner(spec, reference, seed, torch_threads)
  best_peak = peaks['best'] if peaks else float('nan')
  device_kind = jax.devices()[0].device_kind
  mfu_peak = bf16_peak_tflops(device_kind) if spec.dtype == 'bfloat16' else float('nan')
  rows = []
  max_devices = len(jax.devices()) if max_devices is None else max_devices
  for episodes in spec.episodes:
    for count in device_counts(episodes, max_devices, devices or (1, 2, 4, 8)):
      jax_plan, timing = jax_planner(spec, module, params, episodes, count, seed)
      plans, counts = {'jax': jax_plan}, {'jax': repeats}
      if torch_plan is not None and torch_timing is None:
        # The baseline is timed in turns with the sweep's first row and serves every row.
        plans['torch'], counts['torch'] = torch_plan, torch_repeats or repeats
      times = interleaved_times(plans, counts)
      if 'torch' in times:
        torch_timing = dict(plan_s=statistics.median(times['torch']),
                            peak_gb=torch_info['peak_gb'](), device=torch_info['device'],
                            threads=torch_info['threads'], timed_with=(episodes, count))
        log(f'torch ({torch_timing["device"]}, {torch_timing["threads"]} threads, timed in '
            f'turns with the {episodes}-episode {count}-device row): '
            f'{torch_timing["plan_s"]:.4g} s/plan')
      plan_s = statistics.median(times['jax']) / episodes
      torch_s = torch_timing['plan_s'] if torch_timing else float('nan')
      row = dict(predictor=spec.name, samples=spec.samples, iters=spec.iters,
                 horizon=spec.horizon, dtype=spec.dtype, episodes=episodes, devices=count,
                 jax_s_per_plan=plan_s, torch_s_per_plan=torch_s, speedup=torch_s / plan_s,
                 jax_compile_s=timing['compile_s'],
                 jax_gflop_per_s=flops / plan_s / GB, torch_gflop_per_s=flops / torch_s / GB,
                 jax_xla_memory_gb=timing['xla_memory_gb'],
                 jax_device_peak_gb=jax_device_peak_gb(),
                 torch_peak_gb=torch_timing['peak_gb'] if torch_timing else float('nan'))
      row['jax_peak_share'] = row['jax_gflop_per_s'] / best_peak
      row['torch_peak_share'] = row['torch_gflop_per_s'] / best_peak
      row['jax_tflop_per_s'] = row['jax_gflop_per_s'] / 1e3
      row['jax_mfu'] = row['jax_tflop_per_s'] / mfu_peak
      row['torch_mfu'] = row['torch_gflop_per_s'] / 1e3 / mfu_peak
      rows.append(row)
      log(format_rows([row]).splitlines()[-1])
  return dict(spec=dataclasses.asdict(spec), plan_gflop=flops / GB,
              flops_method='analytic matmul count of the reference predictor (dense attention)'
                           ' x predictor calls; the same for both implementations',
              peaks=peaks, parity=parity, torch=torch_timing, rows=rows,
              jax_backend=jax.default_backend(), jax_devices=len(jax.devices()),
              device_kind=device_kind, mfu_peak_tflops=mfu_peak)


COLUMNS = ('predictor', 'samples', 'iters', 'horizon', 'dtype', 'episodes', 'devices',
           'jax_s_per_plan', 'torch_s_per_plan', 'speedup', 'jax_compile_s', 'jax_gflop_per_s',
           'torch_gflop_per_s', 'jax_peak_share', 'torch_peak_share', 'jax_tflop_per_s',
           'jax_mfu', 'torch_mfu', 'jax_xla_memory_gb', 'jax_device_peak_gb', 'torch_peak_gb')


def parity_line(parity: dict) -> str:
  return (f'parity (float32, {parity["num_actions"]} action sequences): max |cost_jax - '
          f'cost_torch| {parity["max_abs_diff"]:.3g} (relative {parity["max_rel_diff"]:.3g}; '
          f'costs {parity["mean_cost"]:.4g} +- {parity["cost_spread"]:.3g}), max |final latent '
          f'difference| {parity["max_latent_diff"]:.3g} (latent std {parity["latent_scale"]:.3g})')


def format_rows(rows: Sequence[dict]) -> str:
  """Header line + one ' | '-separated line per row (floats to 4 significant digits)."""
  lines = [' | '.join(COLUMNS)]
  for row in rows:
    lines.append(' | '.join(f'{row[c]:.4g}' if isinstance(row[c], float) else str(row[c])
                            for c in COLUMNS))
  return '\n'.join(lines)


def format_report(results: Sequence[dict]) -> str:
  """Peaks, parity lines and the table of every benchmark's rows."""
  lines = []
  peaks = next((r['peaks'] for r in results if r['peaks']), None)
  if peaks:
    lines.append(f'matmul peak ({peaks["n"]}x{peaks["n"]}, best of {peaks["repeats"]}): '
                 f'jax {peaks["jax"]:.1f} GFLOP/s, torch {peaks.get("torch", float("nan")):.1f}'
                 f' GFLOP/s; shares are of {peaks["best"]:.1f}')
  for r in results:
    name = r['rows'][0]['predictor'] if r['rows'] else r['spec']
    lines.append(f'{name} {parity_line(r["parity"])}')
  if results:
    lines.append(f'FLOPs: {results[0]["flops_method"]}')
    r = results[0]
    lines.append(f'MFU: against the {r["device_kind"]} dense bf16 peak of '
                 f'{r["mfu_peak_tflops"]:.1f} TFLOP/s (data sheet; NaN: not a bf16 run on a '
                 'listed accelerator)')
  lines.append(format_rows([row for r in results for row in r['rows']]))
  return '\n'.join(lines)
