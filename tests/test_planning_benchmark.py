"""Planning benchmark: the torch baseline against jepa_jax on the same weights, FLOP counts
against torch's FLOP counter, an end-to-end run at a tiny size (no timing assertions)."""

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip('torch')

from jepa_jax.diagnostics import benchmark  # pylint: disable=g-import-not-at-top
from jepa_jax.diagnostics import torch_reference

TINY = benchmark.PRESETS['tiny']


@pytest.mark.parametrize('readout', ['per_patch', 'first_patch'])
def test_same_cost_for_the_same_actions_and_weights(readout):
  """jepa_jax's planning cost (converted weights, sliding-window unroll, objective) equals the
  torch baseline's, float32, on a non-square grid with proprio, horizon 3."""
  spec = dataclasses.replace(TINY, grid=(2, 3), depth=2, proprio_readout=readout)
  # Weights 10x the reference init, so that the actions move the costs (untrained reference
  # weights barely react to them).
  reference, module, params = benchmark.make_models(spec, seed=1, init_std=0.2)
  parity = benchmark.cost_parity(spec, reference, module, params, num_actions=6, seed=1)
  assert parity['max_rel_diff'] < 1e-4, parity
  # The comparison can fail: costs vary with the actions far more than they differ, and the
  # predicted latents themselves agree to float32 rounding.
  assert parity['cost_spread'] > 1e3 * parity['max_abs_diff'], parity
  assert parity['max_latent_diff'] < 1e-4 * parity['latent_scale'] + 1e-6, parity


def test_same_cost_without_proprio_in_chunks():
  spec = dataclasses.replace(TINY, proprio_emb_dim=0, latent_dim=20, chunk_size=3)
  reference, module, params = benchmark.make_models(spec)
  assert benchmark.cost_parity(spec, reference, module, params)['max_rel_diff'] < 1e-4


def test_torch_reference_has_the_paper_parameter_count():
  """docs/reference.md §3a: 17,626,480 parameters at the paper size (depth 6)."""
  paper = torch_reference.AdaLNPredictor(384, 16, 10, depth=6, heads=16)
  assert sum(p.numel() for p in paper.parameters()) == 17_626_480


@pytest.mark.parametrize('frames', [1, 2])
def test_analytic_flops_match_torch_flop_counter(frames):
  """`adaln_forward_flops` against torch's own count of the reference predictor (attention
  through the math backend so that its matmuls are counted)."""
  spec = dataclasses.replace(TINY, grid=(3, 2), latent_dim=24, depth=2)
  model = torch_reference.AdaLNPredictor(spec.latent_dim, spec.proprio_emb_dim,
                                         spec.action_dim, spec.depth, spec.heads, spec.grid)
  batch = 3
  inputs = (torch.randn(batch, frames, *spec.grid, spec.latent_dim),
            torch.randn(batch, frames, spec.action_dim),
            torch.randn(batch, frames, spec.proprio_emb_dim))
  from torch.nn.attention import SDPBackend, sdpa_kernel  # pylint: disable=g-import-not-at-top
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top
  with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
    model(*inputs)
  want = counter.get_total_flops() / batch
  assert benchmark.adaln_forward_flops(spec.predictor_config(), frames) == want


def test_torch_cem_finds_the_minimum_of_a_quadratic():
  """The torch CEM (sample 0 = mean, top-k, unbiased std) converges to a known optimum."""
  target = torch.tensor([[0.5, -1.0], [1.5, 0.25], [-0.75, 2.0]])
  cost = lambda a: (a - target).square().flatten(1).sum(1)
  plan = torch_reference.cem_plan(cost, 3, 2, num_samples=200, num_iters=15, num_elites=20,
                                  generator=torch.Generator().manual_seed(0))
  np.testing.assert_allclose(plan.numpy(), target.numpy(), atol=0.05)


def test_benchmark_runs_end_to_end_with_every_column():
  spec = dataclasses.replace(TINY, episodes=(2,))
  peaks = dict(n=2048, repeats=10, jax=100.0, torch=50.0, best=100.0)
  logged = []
  result = benchmark.run_benchmark(spec, repeats=1, peaks=peaks, devices=(2,),
                                   log=logged.append)  # one compile: episodes on 2 devices
  rows = result['rows']
  assert [(r['episodes'], r['devices']) for r in rows] == [(2, 2)]
  for row in rows:
    assert set(benchmark.COLUMNS) <= set(row)
    assert row['jax_s_per_plan'] > 0 and row['torch_s_per_plan'] > 0
    assert row['speedup'] == pytest.approx(row['torch_s_per_plan'] / row['jax_s_per_plan'])
    assert row['jax_gflop_per_s'] == pytest.approx(
        benchmark.plan_flops(spec) / row['jax_s_per_plan'] / 1e9)
    assert row['jax_peak_share'] == pytest.approx(row['jax_gflop_per_s'] / 100.0)
    assert row['jax_xla_memory_gb'] > 0
  assert result['parity']['max_rel_diff'] < 1e-4
  assert result['torch']['timed_with'] == (2, 2)
  report = benchmark.format_report([result])
  assert 'parity' in report and 'matmul peak' in report
  assert report.splitlines()[-2] == ' | '.join(benchmark.COLUMNS)
  json.loads(json.dumps(result))  # JSON-ready
  assert any(line.startswith('parity') for line in logged)


def test_interleaved_times_take_the_plans_in_turns():
  """a, b, a, b, a: a load change between minutes hits both sides; each gets its count."""
  calls = []
  plans = {'jax': lambda: calls.append('jax'), 'torch': lambda: calls.append('torch')}
  times = benchmark.interleaved_times(plans, {'jax': 3, 'torch': 2})
  assert calls == ['jax', 'torch', 'jax', 'torch', 'jax']
  assert [len(times['jax']), len(times['torch'])] == [3, 2]
  assert all(t >= 0 for ts in times.values() for t in ts)


def test_device_sweep_uses_the_counts_that_divide_the_episodes():
  assert benchmark.device_counts(8, 8) == [1, 2, 4, 8]
  assert benchmark.device_counts(6, 8) == [1, 2]
  assert benchmark.device_counts(8, 2) == [1, 2]


def test_mfu_peaks_of_the_gpu_check():
  assert benchmark.bf16_peak_tflops('NVIDIA H100 80GB HBM3') == 989.4
  assert benchmark.bf16_peak_tflops('NVIDIA H100 PCIe') == 756.0
  assert benchmark.bf16_peak_tflops('NVIDIA H200') == 989.4
  assert np.isnan(benchmark.bf16_peak_tflops('cpu'))


def test_bad_settings_fail_with_a_clear_message():
  with pytest.raises(ValueError, match='n >= 2048'):
    benchmark.matmul_peaks(n=512)
  with pytest.raises(ValueError, match='heads=3 does not divide'):
    dataclasses.replace(TINY, heads=3)
  with pytest.raises(ValueError, match='dtype'):
    dataclasses.replace(TINY, dtype='float16')


def test_binary_presets_and_overrides(parsed_flags):
  from experiments import bench_planning  # pylint: disable=g-import-not-at-top
  parsed_flags(presets='medium,paper_cpu', samples='32', episodes='1,8', dtype='bfloat16')
  medium, paper = bench_planning.specs_from_flags()
  assert (medium.grid, medium.latent_dim, medium.depth, medium.heads, medium.iters) == (
      (8, 8), 192, 6, 16, 2)
  assert (paper.grid, paper.latent_dim, paper.iters, paper.horizon) == ((16, 16), 384, 1, 2)
  assert medium.samples == paper.samples == 32 and paper.episodes == (1, 8)
  assert paper.dtype == 'bfloat16'
