r"""Planning throughput table for the tiny and the paper-size AdaLN predictor (random params).

  python -m experiments.bench_planning --out=/tmp/bench_planning.json
  python -m experiments.bench_planning --configs=paper --paper_samples=16 --paper_iters=1

Rows for every (episodes, devices) pair with devices dividing episodes; devices are fake CPU
devices (8 are created when XLA_FLAGS does not set a count) and shard the episodes. The
defaults are cut down (tiny: the tiny config's 100 x 10; paper: 16 samples x 1 iteration,
horizon 2, at most 2 episodes) so the table finishes on a 2-core CPU in minutes.
"""

import json
import os

if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  # Must happen before jax is imported: fake CPU devices for the device-count sweep.
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                             + ' --xla_force_host_platform_device_count=8').strip()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from jepa_jax.planning import benchmark, cem

_OUT = flags.DEFINE_string('out', None, 'Write the rows (and the matmul peak) to this JSON file.')
_CONFIGS = flags.DEFINE_list('configs', ['tiny', 'paper'], 'Predictor sizes: tiny, paper.')
_EPISODES = flags.DEFINE_list('episodes', ['1', '2', '4', '8'], 'Episode batch sizes.')
_DEVICES = flags.DEFINE_list('devices', ['1', '2', '4', '8'], 'Device counts.')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Timed plans per row (median).')
_HORIZON = flags.DEFINE_integer('horizon', 6, 'Planning horizon H.')
_TINY_SAMPLES = flags.DEFINE_integer('tiny_samples', 100, 'CEM samples, tiny predictor.')
_TINY_ITERS = flags.DEFINE_integer('tiny_iters', 10, 'CEM iterations, tiny predictor.')
_PAPER_SAMPLES = flags.DEFINE_integer('paper_samples', 16, 'CEM samples, paper predictor.')
_PAPER_ITERS = flags.DEFINE_integer('paper_iters', 1, 'CEM iterations, paper predictor.')
_PAPER_HORIZON = flags.DEFINE_integer('paper_horizon', 2, 'Horizon of the paper-size rows.')
_MAX_PAPER_EPISODES = flags.DEFINE_integer('max_paper_episodes', 2,
                                           'Skip paper-size rows with more episodes.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  unknown = set(_CONFIGS.value) - set(benchmark.PREDICTOR_CONFIGS)
  if unknown:
    raise app.UsageError(f'unknown --configs {sorted(unknown)}; choose from '
                         f'{sorted(benchmark.PREDICTOR_CONFIGS)}')
  peak = benchmark.measure_matmul_peak()
  print(f'matmul peak (first measurement): {peak:.1f} GFLOP/s', flush=True)
  rows = []
  for name in _CONFIGS.value:
    paper = name == 'paper'
    horizon = _PAPER_HORIZON.value if paper else _HORIZON.value
    samples = _PAPER_SAMPLES.value if paper else _TINY_SAMPLES.value
    cem_config = cem.CEMConfig(
        num_samples=samples, num_iters=_PAPER_ITERS.value if paper else _TINY_ITERS.value,
        num_elites=min(10, samples), horizon=horizon, num_execute=horizon)
    for episodes in map(int, _EPISODES.value):
      if paper and episodes > _MAX_PAPER_EPISODES.value:
        continue
      for devices in map(int, _DEVICES.value):
        if devices > episodes or episodes % devices:
          continue
        row = benchmark.benchmark_row(name, benchmark.PREDICTOR_CONFIGS[name], cem_config,
                                      episodes, devices, _REPEATS.value, peak)
        rows.append(row)
        print(benchmark.format_table([row], peak).splitlines()[-1], flush=True)
  # Measured again at the end, keeping the faster: on a shared machine one measurement can
  # land in a busy moment and understate the peak.
  peak = max(peak, benchmark.measure_matmul_peak())
  for row in rows:
    row['peak_share'] = row['gflop_per_s'] / peak
  print(benchmark.format_table(rows, peak))
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      json.dump(dict(matmul_peak_gflop_per_s=peak, rows=rows), f, indent=2)


if __name__ == '__main__':
  app.run(main)
