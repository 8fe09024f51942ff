r"""Planning throughput: jepa_jax's jitted CEM against a PyTorch baseline, same weights, same run.

  python -m experiments.bench_planning --presets=small,medium,paper_cpu --out=/tmp/bench.json
  python -m experiments.bench_planning --presets=paper_gpu            # on a GPU (bf16, 300 x 30)
  python -m experiments.bench_planning --presets=paper_cpu --samples=16 --episodes=1,2,4,8
  python -m experiments.bench_planning --grid=8,8 --latent_width=192 --depth=6 --heads=16 \
      --samples=300 --iters=2 --horizon=6

Presets (jepa_jax/diagnostics/benchmark.py PRESETS): small = 4x4x64 depth 2, 4 heads, 3 iterations;
medium = 8x8x192 depth 6, 16 heads, 2 iterations; paper_cpu = 16x16x384 depth 6, 16 heads, 64
samples, 1 iteration, horizon 2; paper_gpu = the paper's 300 x 30, horizon 6, bf16, 1 and 8
episodes; tiny = a test size. All with 300 samples, 10 elites, horizon 6, proprio on unless
stated; every size and budget flag below overrides the presets. Episodes are sharded over 1, 2,
4, 8 devices (the device sweep; on a CPU, 8 fake devices are created when XLA_FLAGS does not set
a count). torch runs with --torch_threads intra-op threads (default: the available cores).
See the library docstring (jepa_jax/diagnostics/benchmark.py) for what every column means.
"""

import dataclasses
import os

if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  # Must happen before jax is imported: fake CPU devices for the device sweep.
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                             + ' --xla_force_host_platform_device_count=8').strip()

from absl import flags  # pylint: disable=g-import-not-at-top

from experiments import cli
from jepa_jax import outputs
from jepa_jax.diagnostics import benchmark

_PRESETS = flags.DEFINE_list('presets', ['small'],
                             f'Benchmarks to run, from {sorted(benchmark.PRESETS)}.')
_GRID = flags.DEFINE_list('grid', None, 'Override: patch grid H,W.')
_LATENT_DIM = flags.DEFINE_integer('latent_width', None, 'Override: latent channels Dv.')
_DEPTH = flags.DEFINE_integer('depth', None, 'Override: predictor depth.')
_HEADS = flags.DEFINE_integer('heads', None, 'Override: attention heads.')
_PROPRIO = flags.DEFINE_integer('proprio_emb_dim', None,
                                'Override: proprio embedding channels (0 = proprio off).')
_SAMPLES = flags.DEFINE_integer('samples', None, 'Override: CEM samples per iteration.')
_ITERS = flags.DEFINE_integer('iters', None, 'Override: CEM iterations.')
_ELITES = flags.DEFINE_integer('elites', None, 'Override: CEM elites.')
_HORIZON = flags.DEFINE_integer('horizon', None, 'Override: planning horizon.')
_EPISODES = flags.DEFINE_list('episodes', None, 'Override: episode batch sizes of the sweep.')
_DTYPE = flags.DEFINE_enum('dtype', None, sorted(benchmark.DTYPES),
                           'Override: compute dtype (bfloat16 on accelerators; float32 default).')
_READOUT = flags.DEFINE_enum('proprio_readout', None, ['per_patch', 'first_patch'],
                             'Override: proprio prediction per patch (the reference) or of the '
                             'first patch.')
_CHUNK = flags.DEFINE_integer('chunk_size', None,
                             'Override: jepa_jax scores the candidates this many at a time '
                             '(0 = automatic: cache-sized chunks on a CPU, all at once on an '
                             'accelerator).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed jepa_jax plans per row (median).')
_TORCH_REPEATS = flags.DEFINE_integer('torch_repeats', None,
                                      'Timed torch plans (median); default --repeats.')
_TORCH = flags.DEFINE_bool('torch', True, 'Time the PyTorch baseline too.')
_TORCH_THREADS = flags.DEFINE_integer('torch_threads', None,
                                      'torch intra-op threads (default: the available cores).')
_PEAK_N = flags.DEFINE_integer('peak_n', 2048, 'Matmul size of the peak (>= 2048).')
_PEAK_REPEATS = flags.DEFINE_integer('peak_repeats', 10, 'Matmul peak: best of (>= 10).')
_MAX_DEVICES = flags.DEFINE_integer('max_devices', None, 'Largest device count of the sweep.')
_OUT = flags.DEFINE_string('out', None, 'Write the results to this JSON file.')

_OVERRIDES = dict(grid=_GRID, latent_dim=_LATENT_DIM, depth=_DEPTH, heads=_HEADS,
                  proprio_emb_dim=_PROPRIO, samples=_SAMPLES, iters=_ITERS, elites=_ELITES,
                  horizon=_HORIZON, episodes=_EPISODES, dtype=_DTYPE,
                  proprio_readout=_READOUT, chunk_size=_CHUNK)


def specs_from_flags() -> list:
  unknown = sorted(set(_PRESETS.value) - set(benchmark.PRESETS))
  if unknown:
    raise ValueError(f'unknown --presets {unknown}; choose from {sorted(benchmark.PRESETS)}')
  overrides = {k: f.value for k, f in _OVERRIDES.items() if f.value is not None}
  for key in ('grid', 'episodes'):
    if key in overrides:
      overrides[key] = tuple(int(v) for v in overrides[key])
  return [dataclasses.replace(benchmark.PRESETS[p], **overrides) for p in _PRESETS.value]


def main(argv):
  del argv
  specs = specs_from_flags()
  log = lambda s: print(s, flush=True)
  dtype = specs[0].dtype
  peaks = benchmark.matmul_peaks(_PEAK_N.value, _PEAK_REPEATS.value, dtype, _TORCH.value)
  log(f'matmul peak ({dtype}): jax {peaks["jax"]:.1f} GFLOP/s, torch '
      f'{peaks.get("torch", float("nan")):.1f} GFLOP/s')
  results = []
  for spec in specs:
    log(f'--- {spec.name}: {spec.samples} samples x {spec.iters} iterations, horizon '
        f'{spec.horizon}, {spec.dtype}, {benchmark.plan_flops(spec) / 1e9:.1f} GFLOP per plan')
    results.append(benchmark.run_benchmark(
        spec, repeats=_REPEATS.value, torch_repeats=_TORCH_REPEATS.value, with_torch=_TORCH.value,
        peaks=peaks, max_devices=_MAX_DEVICES.value, torch_threads=_TORCH_THREADS.value,
        log=log))
  # Measured again at the end, keeping the faster: on a shared machine one measurement can
  # land in a busy moment and understate the peak.
  again = benchmark.matmul_peaks(_PEAK_N.value, _PEAK_REPEATS.value, dtype, _TORCH.value)
  peaks = {k: max(v, again[k]) for k, v in peaks.items()}
  for result in results:
    result['peaks'] = peaks
    for row in result['rows']:
      row['jax_peak_share'] = row['jax_gflop_per_s'] / peaks['best']
      row['torch_peak_share'] = row['torch_gflop_per_s'] / peaks['best']
  log(benchmark.format_report(results))
  if _OUT.value:
    outputs.write_json(_OUT.value, dict(results=results))


if __name__ == '__main__':
  cli.run(main)
