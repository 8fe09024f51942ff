"""Benchmark library: FLOP counts against an analytic matmul count, a tiny sharded row."""

import math

from jepa_jax.planning import benchmark, cem


def analytic_adaln_flops(c, frames):
  """Matmul FLOPs (2 per multiply-add) of one AdaLN predictor call on one sample."""
  d, tokens = c.width, frames * math.prod(c.grid_size)
  hidden = int(d * c.mlp_ratio)
  per_block = (tokens * 2 * (3 * d * d + d * d + 2 * d * hidden)  # qkv, proj, MLP
               + 2 * 2 * tokens * tokens * d                      # scores and weighted values
               + frames * 2 * d * 6 * d)                          # AdaLN modulation
  embed = 2 * tokens * 2 * c.latent_dim * c.latent_dim + frames * 2 * c.action_dim * d
  return c.depth * per_block + embed


def test_predictor_flops_close_to_analytic_count():
  config = benchmark.PREDICTOR_CONFIGS['tiny']
  for frames in (1, 2):
    xla = benchmark.predictor_call_flops(config, frames)
    ref = analytic_adaln_flops(config, frames)
    # XLA also counts norms, softmax and elementwise ops: a little above the matmul count.
    assert ref <= xla <= 1.2 * ref, (frames, xla, ref)


def test_benchmark_row_on_two_devices():
  cfg = cem.CEMConfig(num_samples=4, num_iters=1, num_elites=2, horizon=2, num_execute=2)
  row = benchmark.benchmark_row('tiny', benchmark.PREDICTOR_CONFIGS['tiny'], cfg, episodes=2,
                                devices=2, repeats=1, peak_gflop_per_s=100.0)
  assert row['episodes'] == 2 and row['devices'] == 2 and row['plan_s'] > 0
  assert abs(row['predictor_calls_per_s'] * row['plan_s'] - 2 * 1 * 4 * 2) < 1e-6
  assert abs(row['peak_share'] - row['gflop_per_s'] / 100.0) < 1e-12
  assert 'matmul peak' in benchmark.format_table([row], 100.0)
