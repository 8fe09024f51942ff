"""Planners (CEM, MPPI, GD, Adam) and objectives against float64 numpy re-derivations."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jepa_jax.planning import cem, gradient, mppi, objectives

H, A = 3, 2


def quadratic_cost(state, goal, actions):
  """state = target (H, A), goal = per-element weights (H, A); actions (N, H, A) -> (N,)."""
  return jnp.sum(goal * jnp.square(actions - state), axis=(1, 2))


def np_quadratic(target, weights, actions):
  return np.sum(weights * (actions - target) ** 2, axis=(1, 2))


def draws(key, i, shape):
  # Independent regeneration of the documented draw schedule: normal(fold_in(key, i)).
  return np.asarray(jax.random.normal(jax.random.fold_in(key, i), shape), np.float64)


def np_sampling_planner(target, weights, key, cfg, refit, init_mean=None, force_mean=True,
                        with_elites=False):
  mean = np.zeros((cfg.horizon, A)) if init_mean is None else np.array(init_mean, np.float64)
  std = np.full((cfg.horizon, A), cfg.var_scale)
  for i in range(cfg.num_iters):
    samples = mean + std * draws(key, i, (cfg.num_samples, cfg.horizon, A))
    if force_mean:
      samples[0] = mean
    lo = -np.inf if cfg.action_low is None else np.asarray(cfg.action_low)
    hi = np.inf if cfg.action_high is None else np.asarray(cfg.action_high)
    samples = np.clip(samples, lo, hi)
    costs = np_quadratic(target, weights, samples)
    idx = np.argsort(costs, kind='stable')[:cfg.num_elites]
    new_mean, new_std = refit(samples[idx], costs[idx])
    mean = cfg.momentum * mean + (1 - cfg.momentum) * new_mean
    std = np.maximum(cfg.momentum * std + (1 - cfg.momentum) * new_std, cfg.min_std)
  if with_elites:
    return mean, std, samples[idx], costs[idx]
  return mean, std


def np_cem_refit(elites, costs):
  return elites.mean(0), elites.std(0, ddof=1)


def np_mppi_weights(costs, temperature):
  w = np.exp(temperature * (costs.min() - costs))  # the reference's score
  return w / w.sum()


def np_mppi_refit(temperature):
  def refit(elites, costs):
    w = np_mppi_weights(costs, temperature)
    mean = np.einsum('k,kha->ha', w, elites) / (w.sum() + 1e-9)
    std = np.sqrt(np.einsum('k,kha->ha', w, (elites - mean) ** 2) / (w.sum() + 1e-9))
    return mean, std
  return refit


@pytest.fixture
def problem():
  rng = np.random.default_rng(0)
  target = rng.uniform(-1, 1, (H, A)).astype(np.float32)
  weights = rng.uniform(0.5, 2.0, (H, A)).astype(np.float32)
  return target, weights


CEM_CONFIGS = [
    cem.CEMConfig(num_samples=64, num_iters=6, num_elites=8, horizon=H, num_execute=H),
    cem.CEMConfig(num_samples=50, num_iters=5, num_elites=5, horizon=H, num_execute=1,
                  var_scale=2.0, momentum=0.3, min_std=0.2, action_low=(-0.5, -0.2),
                  action_high=0.4),
]


@pytest.mark.parametrize('cfg', CEM_CONFIGS)
def test_cem_matches_numpy(problem, cfg):
  target, weights = problem
  key = jax.random.PRNGKey(3)
  plan, info = jax.jit(lambda s, g, k: cem.cem_plan(quadratic_cost, s, g, A, k, cfg))(
      target, weights, key)
  ref_mean, ref_std = np_sampling_planner(target, weights, key, cfg, np_cem_refit)
  np.testing.assert_allclose(plan, ref_mean, atol=1e-5)
  np.testing.assert_allclose(info['final_std'], ref_std, atol=1e-5)
  assert plan.shape == (H, A) and info['best_cost'].shape == (cfg.num_iters,)


def test_cem_converges_on_quadratic(problem):
  target, weights = problem
  cfg = cem.CEMConfig(num_samples=200, num_iters=20, num_elites=20, horizon=H, num_execute=H)
  plan, info = cem.cem_plan(quadratic_cost, target, weights, A, jax.random.PRNGKey(0), cfg)
  np.testing.assert_allclose(plan, target, atol=1e-2)
  assert float(info['best_cost'][-1]) < 1e-3


def test_refit_is_elite_mean_and_unbiased_std():
  elites = np.random.default_rng(1).normal(size=(7, H, A)).astype(np.float32)
  mean, std = cem.cem_refit(jnp.asarray(elites), jnp.zeros(7))
  n = elites.shape[0]
  ref_mean = elites.astype(np.float64).sum(0) / n
  ref_std = np.sqrt(((elites - ref_mean) ** 2).sum(0) / (n - 1))
  np.testing.assert_allclose(mean, ref_mean, atol=1e-6)
  np.testing.assert_allclose(std, ref_std, atol=1e-6)


def test_top_k_elites_are_the_cheapest():
  # Cost = index order reversed: the elites must be the last K samples.
  cfg = cem.CEMConfig(num_samples=12, num_iters=1, num_elites=4, horizon=H, num_execute=H)
  key = jax.random.PRNGKey(5)
  plan, _ = cem.cem_plan(lambda s, g, a: -jnp.arange(a.shape[0], dtype=jnp.float32), None, None,
                         A, key, cfg)
  samples = draws(key, 0, (12, H, A))  # mean 0, std 1
  np.testing.assert_allclose(plan, samples[-4:].mean(0), atol=1e-6)


def test_sample_zero_is_the_mean_and_warm_start():
  init = jnp.asarray(np.random.default_rng(2).normal(size=(H, A)), jnp.float32)
  cfg = cem.CEMConfig(num_samples=32, num_iters=1, num_elites=4, horizon=H, num_execute=H)
  # Cost 0 exactly at the initial mean, > 0 elsewhere: the best sample must be sample 0.
  cost = lambda s, g, a: jnp.sum(jnp.square(a - s), axis=(1, 2))
  _, info = cem.cem_plan(cost, init, None, A, jax.random.PRNGKey(0), cfg, init_mean=init)
  assert float(info['best_cost'][0]) == 0.0
  np.testing.assert_array_equal(info['best_actions'], init)


def test_clipping_keeps_every_candidate_in_the_box():
  low, high = np.array([-0.3, -0.1]), np.array([0.2, 0.5])
  cfg = cem.CEMConfig(num_samples=40, num_iters=3, num_elites=5, horizon=H, num_execute=H,
                      var_scale=3.0, action_low=tuple(low), action_high=tuple(high))
  # Cost = the largest box violation of each candidate (must be 0 for all of them).
  viol = lambda s, g, a: jnp.max(jnp.maximum(a - high, 0) + jnp.maximum(low - a, 0), axis=(1, 2))
  plan, info = cem.cem_plan(viol, None, None, A, jax.random.PRNGKey(1), cfg)
  assert float(jnp.max(info['elite_cost'])) == 0.0
  assert np.all(plan >= low - 1e-6) and np.all(plan <= high + 1e-6)
  assert np.all(np.asarray(info['best_actions']) <= high)


def test_shift_plan():
  plan = jnp.arange(12.0).reshape(1, 6, 2)
  shifted = cem.shift_plan(plan, 2)
  np.testing.assert_array_equal(shifted[0, :4], np.arange(4.0, 12.0).reshape(4, 2))
  np.testing.assert_array_equal(shifted[0, 4:], 0.0)
  np.testing.assert_array_equal(cem.shift_plan(plan, 0), plan)
  with pytest.raises(ValueError, match='num_executed'):
    cem.shift_plan(plan, 7)


def test_bad_configs_raise():
  with pytest.raises(ValueError, match='num_elites'):
    cem.CEMConfig(num_samples=5, num_elites=1)
  with pytest.raises(ValueError, match='num_execute'):
    cem.CEMConfig(horizon=3, num_execute=4)
  with pytest.raises(ValueError, match='temperature'):
    mppi.MPPIConfig(temperature=0.0)
  with pytest.raises(ValueError, match='variant'):
    mppi.MPPIConfig(variant='eval')
  with pytest.raises(ValueError, match='optimizer'):
    gradient.GradientConfig(optimizer='sgdm')
  with pytest.raises(ValueError, match='var_scale'):
    gradient.GradientConfig(var_scale=-1.0)
  with pytest.raises(ValueError, match='init_mean'):
    cem.cem_plan(quadratic_cost, None, None, A, jax.random.PRNGKey(0),
                 cem.CEMConfig(horizon=H, num_execute=H), init_mean=jnp.zeros((2, A)))


def test_mppi_weights_closed_form():
  costs = np.array([0.3, 1.2, 2.0, 0.31])
  w = np.exp(-0.5 * costs) / np.exp(-0.5 * costs).sum()
  np.testing.assert_allclose(mppi.mppi_weights(jnp.asarray(costs, jnp.float32), 0.5), w, rtol=1e-6)


def test_mppi_tdmpc_variant_matches_numpy(problem):
  target, weights = problem
  cfg = mppi.MPPIConfig(num_samples=60, num_iters=5, num_elites=10, horizon=H, num_execute=H,
                        temperature=2.0, var_scale=1.0, variant='tdmpc')
  key = jax.random.PRNGKey(7)
  plan, info = mppi.mppi_plan(quadratic_cost, target, weights, A, key, cfg)
  ref_mean, ref_std = np_sampling_planner(target, weights, key, cfg, np_mppi_refit(2.0))
  np.testing.assert_allclose(plan, ref_mean, atol=1e-5)
  np.testing.assert_allclose(info['final_std'], ref_std, atol=1e-5)


def test_mppi_reference_variant_matches_numpy(problem):
  target, weights = problem
  cfg = mppi.MPPIConfig(num_samples=60, num_iters=4, num_elites=10, horizon=H, num_execute=H)
  assert (cfg.variant, cfg.var_scale, cfg.temperature) == ('reference', 2.0, 0.5)
  key = jax.random.PRNGKey(11)
  plan, info = jax.jit(lambda k: mppi.mppi_plan(quadratic_cost, target, weights, A, k, cfg))(key)
  mean, std, elites, costs = np_sampling_planner(target, weights, key, cfg, np_mppi_refit(0.5),
                                                 force_mean=False, with_elites=True)
  # Read-out: elite k with probability w_k (numpy's choice: first k with u < cdf_k), plus
  # std * one (A,) normal draw shared by every step.
  pick_key, noise_key = mppi.readout_keys(key, cfg.num_iters)
  w = np_mppi_weights(costs, 0.5)
  u = float(jax.random.uniform(pick_key, (), jnp.float32))
  k = int(np.searchsorted(np.cumsum(w) / w.sum(), u, side='right'))
  noise = np.asarray(jax.random.normal(noise_key, (A,)), np.float64)
  np.testing.assert_allclose(info['mean'], mean, atol=1e-5)
  np.testing.assert_allclose(info['final_std'], std, atol=1e-5)
  assert int(info['selected_elite']) == k
  np.testing.assert_allclose(plan, elites[k] + std * noise[None, :], atol=1e-5)
  assert not bool(info['all_nonfinite'])


def test_mppi_reference_has_no_forced_mean_sample():
  # Cost 0 exactly at the initial mean 0: only a forced mean sample reaches it.
  cost = lambda s, g, a: jnp.sum(jnp.square(a), axis=(1, 2))
  for variant, forced in (('reference', False), ('tdmpc', True)):
    cfg = mppi.MPPIConfig(num_samples=16, num_iters=1, num_elites=4, horizon=H, num_execute=H,
                          variant=variant)
    _, info = mppi.mppi_plan(cost, None, None, A, jax.random.PRNGKey(0), cfg)
    assert (float(info['best_cost'][0]) == 0.0) == forced


def test_weighted_choice_frequencies():
  w = jnp.asarray([0.5, 0.0, 0.3, 0.15, 0.05], jnp.float32)
  n = 20000
  picks = jax.vmap(lambda k: mppi.weighted_choice(k, w))(jax.random.split(jax.random.PRNGKey(0), n))
  freq = np.bincount(np.asarray(picks), minlength=5) / n
  sigma = np.sqrt(np.asarray(w) * (1 - np.asarray(w)) / n)
  assert freq[1] == 0.0
  np.testing.assert_array_less(np.abs(freq - np.asarray(w)), 5 * sigma + 1e-12)


def nan_where_first_positive(state, goal, actions):
  """Quadratic cost, NaN (odd samples: -inf) where the first action coordinate is > 0."""
  base = jnp.sum(jnp.square(actions - 0.5), axis=(1, 2))
  bad = jnp.where(jnp.arange(actions.shape[0]) % 2 == 0, jnp.nan, -jnp.inf)
  return jnp.where(actions[:, 0, 0] > 0, bad, base)


PLANNERS = [
    (cem.cem_plan, cem.CEMConfig(num_samples=40, num_iters=3, num_elites=5, horizon=H,
                                 num_execute=H)),
    (mppi.mppi_plan, mppi.MPPIConfig(num_samples=40, num_iters=3, num_elites=5, horizon=H,
                                     num_execute=H)),
    (mppi.mppi_plan, mppi.MPPIConfig(num_samples=40, num_iters=3, num_elites=5, horizon=H,
                                     num_execute=H, variant='tdmpc')),
]


@pytest.mark.parametrize('planner,cfg', PLANNERS)
def test_nonfinite_costs_rank_last(planner, cfg):
  _, info = planner(nan_where_first_positive, None, None, A, jax.random.PRNGKey(2), cfg)
  # Enough finite samples exist every iteration: no elite is a NaN / -inf one.
  assert np.all(np.asarray(info['final_elites'])[:, 0, 0] <= 0)
  assert np.all(np.isfinite(info['best_cost'])) and not bool(info['all_nonfinite'])


@pytest.mark.parametrize('planner,cfg', PLANNERS)
def test_all_nonfinite_costs_are_flagged_and_plan_stays_finite(planner, cfg):
  cost = lambda s, g, a: jnp.where(jnp.arange(a.shape[0]) % 3 == 0, jnp.nan,
                                   jnp.where(jnp.arange(a.shape[0]) % 3 == 1, jnp.inf, -jnp.inf))
  plan, info = jax.jit(lambda k: planner(cost, None, None, A, k, cfg))(jax.random.PRNGKey(0))
  assert bool(info['all_nonfinite'])
  assert np.all(np.isfinite(plan))
  # No information: the distribution is never refitted.
  np.testing.assert_array_equal(info['final_std'], np.full((H, A), cfg.var_scale, np.float32))


def test_gd_nonfinite_steps_are_skipped_and_flagged():
  cfg = gradient.GradientConfig(num_steps=4, lr=1.0, noise_std=0.1, horizon=H, num_execute=H)
  key = jax.random.PRNGKey(3)
  nan_cost = lambda s, g, a: jnp.full((a.shape[0],), jnp.nan) * jnp.sum(a, axis=(1, 2))
  plan, info = gradient.gradient_plan(nan_cost, None, None, A, key, cfg)
  assert bool(info['all_nonfinite'])
  np.testing.assert_allclose(plan, draws(key, cfg.num_steps, (H, A)), atol=1e-7)  # the start
  _, info = gradient.gradient_plan(quadratic_cost, jnp.zeros((H, A)), jnp.ones((H, A)), A, key, cfg)
  assert not bool(info['all_nonfinite'])


def test_gd_is_exact_gradient_descent_on_quadratic(problem):
  target, weights = problem
  lr, steps = 0.1, 7
  key = jax.random.PRNGKey(0)
  for var_scale in (1.0, 0.0):  # the reference's randn start, and the zero start
    cfg = gradient.GradientConfig(num_steps=steps, lr=lr, noise_std=0.0, horizon=H, num_execute=H,
                                  var_scale=var_scale)
    plan, info = gradient.gradient_plan(quadratic_cost, target, weights, A, key, cfg)
    # a_{k+1} = a_k - lr * 2 w (a_k - t)  =>  a_k - t = (1 - 2 lr w)^k (a_0 - t),
    # a_0 = var_scale * randn (the documented draw fold_in(key, num_steps)).
    a0 = var_scale * draws(key, steps, (H, A))
    ref = target + (1 - 2 * lr * weights.astype(np.float64)) ** steps * (a0 - target)
    np.testing.assert_allclose(plan, ref, atol=1e-5)
    ref_cost0 = np_quadratic(target, weights, a0[None])[0]
    np.testing.assert_allclose(info['cost'][0], ref_cost0, rtol=1e-5)
  assert gradient.GradientConfig().var_scale == 1.0


def test_gd_noise_and_clip():
  steps, noise = 5, 0.003
  cfg = gradient.GradientConfig(num_steps=steps, lr=1.0, noise_std=noise, horizon=H, num_execute=H)
  key = jax.random.PRNGKey(4)
  flat = lambda s, g, a: jnp.zeros(a.shape[0])  # zero gradient: only the noise moves the plan
  plan, _ = gradient.gradient_plan(flat, None, None, A, key, cfg)
  ref = draws(key, steps, (H, A)) + noise * sum(draws(key, i, (H, A)) for i in range(steps))
  np.testing.assert_allclose(plan, ref, atol=1e-7)
  clipped = gradient.GradientConfig(num_steps=steps, lr=1.0, noise_std=1.0, horizon=H,
                                    num_execute=H, action_low=-0.01, action_high=0.01,
                                    var_scale=5.0)
  plan, _ = gradient.gradient_plan(flat, None, None, A, key, clipped)
  assert float(jnp.max(jnp.abs(plan))) <= 0.01


def test_adam_first_step_and_minimum(problem):
  target, weights = problem
  one = gradient.GradientConfig(num_steps=1, lr=0.05, noise_std=0.0, optimizer='adam',
                                horizon=H, num_execute=H, var_scale=0.0)
  plan, _ = gradient.gradient_plan(quadratic_cost, target, weights, A, jax.random.PRNGKey(0), one)
  # Adam's bias-corrected first step is lr * g / (|g| + eps) = -lr * sign(a0 - t).
  np.testing.assert_allclose(plan, 0.05 * np.sign(target), atol=1e-6)
  many = gradient.GradientConfig(num_steps=400, lr=0.05, noise_std=0.0, optimizer='adam',
                                 horizon=H, num_execute=H)  # from the reference's randn start
  plan, info = gradient.gradient_plan(quadratic_cost, target, weights, A, jax.random.PRNGKey(0), many)
  np.testing.assert_allclose(plan, target, atol=1e-2)
  assert float(info['cost'][-1]) < 1e-3


@pytest.mark.parametrize('distance', ['l2', 'l1'])
@pytest.mark.parametrize('final_only', [True, False])
def test_objectives_match_numpy(distance, final_only):
  rng = np.random.default_rng(3)
  pred = rng.normal(size=(4, 3, 2, 2, 5)).astype(np.float32)
  goal = rng.normal(size=(2, 2, 5)).astype(np.float32)
  pp = rng.normal(size=(4, 3, 6)).astype(np.float32)
  gp = rng.normal(size=(6,)).astype(np.float32)
  cfg = objectives.ObjectiveConfig(distance=distance, final_step_only=final_only,
                                   proprio_weight=0.1)
  got = objectives.latent_cost(jnp.asarray(pred), jnp.asarray(goal), jnp.asarray(pp),
                               jnp.asarray(gp), cfg)
  f = (lambda d: d ** 2) if distance == 'l2' else np.abs
  steps = slice(2, 3) if final_only else slice(None)
  vis = np.stack([np.mean(f(pred[n, steps].astype(np.float64) - goal)) for n in range(4)])
  pro = np.stack([np.mean(f(pp[n, steps].astype(np.float64) - gp)) for n in range(4)])
  np.testing.assert_allclose(got, vis + 0.1 * pro, rtol=1e-5)
  no_proprio = objectives.latent_cost(jnp.asarray(pred), jnp.asarray(goal), config=cfg)
  np.testing.assert_allclose(no_proprio, vis, rtol=1e-5)
  # The ablation's proprio-only row: the visual term weighted out.
  proprio_only = objectives.latent_cost(
      jnp.asarray(pred), jnp.asarray(goal), jnp.asarray(pp), jnp.asarray(gp),
      dataclasses.replace(cfg, visual_weight=0.0, proprio_weight=1.0))
  np.testing.assert_allclose(proprio_only, pro, rtol=1e-5)


def test_objective_shape_errors():
  with pytest.raises(ValueError, match='goal shape'):
    objectives.sequence_distance(jnp.zeros((2, 3, 4)), jnp.zeros((5,)))
  with pytest.raises(ValueError, match='distance'):
    objectives.ObjectiveConfig(distance='huber')
  with pytest.raises(ValueError, match='weights'):
    objectives.ObjectiveConfig(visual_weight=-1.0)


def test_no_retrace_after_warmup(problem):
  target, weights = problem
  cfg = cem.CEMConfig(num_samples=16, num_iters=2, num_elites=4, horizon=H, num_execute=H)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def plan(state, goal, key, init):
    return cem.cem_plan(quadratic_cost, state, goal, A, key, cfg, init)[0]

  for seed in range(3):  # new values, same shapes: the compiled program is reused
    plan(target + seed, weights, jax.random.PRNGKey(seed), jnp.full((H, A), float(seed)))
  chex.clear_trace_counter()


def test_batched_planner_sharded_equals_single_device(problem):
  target, weights = problem
  cfg = cem.CEMConfig(num_samples=16, num_iters=3, num_elites=4, horizon=H, num_execute=H)
  batched = jax.vmap(lambda s, k: cem.cem_plan(quadratic_cost, s, weights, A, k, cfg)[0])
  episodes = 16
  targets = jnp.asarray(target) + jnp.linspace(-1, 1, episodes)[:, None, None]
  keys = jax.random.split(jax.random.PRNGKey(0), episodes)
  single = jax.jit(batched)(targets, keys)
  devices = jax.devices()
  assert len(devices) == 8, 'tests/conftest.py should provide 8 fake CPU devices'
  shard = NamedSharding(Mesh(np.array(devices), ('data',)), PartitionSpec('data'))
  sharded = jax.jit(batched, in_shardings=shard, out_shardings=shard)(
      jax.device_put(targets, shard), jax.device_put(keys, shard))
  assert len(sharded.sharding.device_set) == 8
  np.testing.assert_allclose(sharded, single, atol=1e-6)
