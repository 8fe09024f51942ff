"""Planning throughput: CEM over an AdaLN predictor with random params, episodes sharded.

One row = one compiled batched CEM plan (E episodes vmapped, split over a 'data' mesh of
`devices` devices, params replicated): compile time, steady-state seconds per plan (median of
`repeats` calls, each `block_until_ready`), predictor calls per second, achieved GFLOP/s and
its share of the measured f32 matmul peak.

FLOPs: XLA's cost analysis does not multiply while-loop bodies by their trip counts, so the
count of a whole plan would miss the CEM/horizon loops. We instead take the cost analysis of
ONE predictor call (batch 1, a 1-frame and a 2-frame window) and multiply analytically:
`episodes * iters * samples * (flops_1 + (H - 1) * flops_2)` (sampling, top-k and the cost are
negligible next to the predictor).
"""

import statistics
import time

import jax
import jax.numpy as jnp

from jepa_jax import sharding
from jepa_jax.models import predictors
from jepa_jax.planning import cem, evaluate, objectives
from jepa_jax.world_model.model import sliding_window_unroll

# Predictor sizes: 'tiny' = the CPU variant of experiments/configs/wall.py (tiny encoder:
# 4x4 patches of width 96, depth 3), 'paper' = REFERENCE section 3a (16x16x384, depth 6).
PREDICTOR_CONFIGS = {
    'tiny': predictors.AdaLNConfig(latent_dim=96, grid_size=(4, 4), depth=3, num_heads=4),
    'paper': predictors.AdaLNConfig(),
}


def _flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax returns one dict per module
    analysis = analysis[0]
  return float(analysis.get('flops', float('nan')))


def _timed_median(fn, repeats: int) -> float:
  times = []
  for _ in range(max(1, repeats)):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def measure_matmul_peak(n: int = 3072, repeats: int = 5) -> float:
  """Measured f32 GFLOP/s of an `(n, n) @ (n, n)` matmul (2 n^3 FLOPs) on the default device:
  the fastest of `repeats` calls (a peak, robust to other load on a shared machine)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  jax.block_until_ready(matmul(x))
  times = []
  for _ in range(max(1, repeats)):
    t0 = time.perf_counter()
    jax.block_until_ready(matmul(x))
    times.append(time.perf_counter() - t0)
  return 2.0 * n ** 3 / min(times) / 1e9


def predictor_call_flops(config: predictors.AdaLNConfig, frames: int) -> float:
  """FLOPs (XLA cost analysis) of one predictor call on a batch of 1 with `frames` frames."""
  module = predictors.AdaLNPredictor(config)
  z = jax.ShapeDtypeStruct((1, frames) + tuple(config.grid_size) + (config.latent_dim,),
                           jnp.float32)
  a = jax.ShapeDtypeStruct((1, frames, config.action_dim), jnp.float32)
  pe = jax.ShapeDtypeStruct((1, frames, config.proprio_emb_dim), jnp.float32)
  params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros(z.shape),
                                              jnp.zeros(a.shape), jnp.zeros(pe.shape)))
  fn = jax.jit(lambda p, *x: module.apply(p, *x))
  return _flops(fn.lower(params, z, a, pe).compile())


def benchmark_row(name: str, config: predictors.AdaLNConfig, cem_config: cem.CEMConfig,
                  episodes: int, devices: int, repeats: int = 3,
                  peak_gflop_per_s: float = float('nan'), seed: int = 0) -> dict:
  """Times one batched CEM plan; returns the row dict (see the module docstring)."""
  if episodes % devices:
    raise ValueError(f'episodes={episodes} must be a multiple of devices={devices}')
  if devices > len(jax.devices()):
    raise ValueError(f'devices={devices} > {len(jax.devices())} available; set XLA_FLAGS='
                     '--xla_force_host_platform_device_count=8 before importing jax')
  module = predictors.AdaLNPredictor(config)
  key_p, key_s, key_g = jax.random.split(jax.random.PRNGKey(seed), 3)
  latent = tuple(config.grid_size) + (config.latent_dim,)
  pe_dim = config.proprio_emb_dim
  params = module.init(key_p, jnp.zeros((1, 2) + latent), jnp.zeros((1, 2, config.action_dim)),
                       jnp.zeros((1, 2, pe_dim)))['params']

  def unroll(p, z0, pe0, actions):
    return sliding_window_unroll(lambda *x: module.apply({'params': p}, *x), z0, pe0, actions)
  cost_fn = evaluate.latent_planning_cost(unroll, objectives.ObjectiveConfig())

  def plan_one(p, state, goal, key):
    return cem.cem_plan(lambda s, g, a: cost_fn(p, s, g, a), state, goal, config.action_dim,
                        key, cem_config)[0]

  def random_states(key):
    kz, kp = jax.random.split(key)
    return dict(z=jax.random.normal(kz, (episodes,) + latent),
                pe=jax.random.normal(kp, (episodes, pe_dim)))

  mesh = sharding.make_mesh({'data': devices}, jax.devices()[:devices])
  data, rep = sharding.data_sharding(mesh), sharding.replicated(mesh)
  args = (jax.device_put(params, rep), jax.device_put(random_states(key_s), data),
          jax.device_put(random_states(key_g), data),
          jax.device_put(jax.random.split(jax.random.PRNGKey(seed + 1), episodes), data))
  planner = jax.jit(jax.vmap(plan_one, in_axes=(None, 0, 0, 0)),
                    in_shardings=(rep, data, data, data), out_shardings=data)
  t0 = time.perf_counter()
  compiled = planner.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))  # first run (allocations) is not timed
  plan_s = _timed_median(lambda: compiled(*args), repeats)

  h = cem_config.horizon
  calls = episodes * cem_config.num_iters * cem_config.num_samples * h
  flops = episodes * cem_config.num_iters * cem_config.num_samples * (
      predictor_call_flops(config, 1) + (h - 1) * predictor_call_flops(config, 2))
  gflop_per_s = flops / plan_s / 1e9
  return dict(config=name, samples=cem_config.num_samples, iterations=cem_config.num_iters,
              horizon=h, episodes=episodes, devices=devices, compile_s=compile_s, plan_s=plan_s,
              predictor_calls_per_s=calls / plan_s, gflop_per_plan=flops / 1e9,
              gflop_per_s=gflop_per_s, peak_share=gflop_per_s / peak_gflop_per_s)


def format_table(rows: list, peak_gflop_per_s: float) -> str:
  """Plain-text table of benchmark rows."""
  cols = ('config', 'samples', 'iterations', 'horizon', 'episodes', 'devices', 'compile_s',
          'plan_s', 'predictor_calls_per_s', 'gflop_per_s', 'peak_share')
  lines = [f'matmul peak (f32, measured): {peak_gflop_per_s:.1f} GFLOP/s',
           ' | '.join(cols)]
  for row in rows:
    lines.append(' | '.join(f'{row[c]:.4g}' if isinstance(row[c], float) else str(row[c])
                            for c in cols))
  return '\n'.join(lines)
